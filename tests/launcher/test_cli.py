"""The CLI: help, init, dry runs and every bad-input path gives one line and a non-zero exit."""
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from launcher.cli import main

from common import REPO
QUICKSTART = REPO / "examples/quickstart/job.yaml"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_help_imports_nothing_heavy():
    # `launcher --help` must stay fast: no pydantic, skypilot, torch or transformers behind it.
    code = ("import sys; from launcher.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('sky', 'torch', 'transformers', 'pydantic', 'docker', 'boto3') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "HEAVY []" in out
    for cmd in ("init", "prep", "build", "submit", "status", "logs", "sync", "down"):
        assert cmd in out


def test_every_command_explains_itself():
    for cmd in ("init", "prep", "build", "submit", "status", "logs", "sync", "down"):
        r = run(cmd, "--help")
        assert r.exit_code == 0
        assert len(r.output.splitlines()) > 5


def test_init_writes_a_valid_file_and_will_not_overwrite(tmp_path):
    target = tmp_path / "job.yaml"
    assert run("init", target).exit_code == 0
    assert "learning_rate" in target.read_text()
    r = run("init", target)
    assert r.exit_code == 2 and "exists" in r.output
    # Every field is valid as written; what it still lacks is data, and the dry run says so.
    r = run("submit", target, "--dry-run")
    assert r.exit_code == 2 and r.output.startswith("error: data.sources: no source given"), r.output
    pairs = QUICKSTART.parent / "data" / "instructions.jsonl"
    r = run("submit", target, "--dry-run", "--set", f"data.sources=[{{path: {pairs}, input: instruction, output: response}}]")
    assert r.exit_code == 0, r.output


def test_dry_run_shows_overrides_and_masks_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "secret-value-123")
    r = run("submit", QUICKSTART, "--dry-run", "--set", "train.learning_rate=2e-5", "--set", "train.warmup_steps=12")
    assert r.exit_code == 0, r.output
    assert "learning_rate: 2.0e-05" in r.output
    assert "warmup_steps: 12" in r.output
    assert "WANDB_API_KEY=***" in r.output
    assert "secret-value-123" not in r.output


@pytest.mark.parametrize("args, expected", [
    (["submit", "missing.yaml"], "no such file"),
    (["submit", "{bad}", "--dry-run"], "invalid YAML"),
    (["submit", "{dup}", "--dry-run"], "job.yaml:4: train.max_steps: given twice"),
    (["submit", "{unknown}", "--dry-run"], "did you mean 'learning_rate'"),
    (["submit", "{wrongtype}", "--dry-run"], "train.max_steps"),
    (["submit", "{quick}", "--dry-run", "--set", "train.learning_rate=-0.1"], "train.learning_rate: must be > 0"),
    (["submit", "{quick}", "--dry-run", "--cloud", "lamda"], "did you mean lambda"),
    (["submit", "{quick}", "--dry-run", "--tpu", "v3-8", "--cloud", "lambda"], "Lambda has no TPUs; TPUs are on Google Cloud"),
    (["submit", "{quick}", "--dry-run", "--spot"], "cloud local cannot do spot"),
    (["logs", "no-such-job"], "no job 'no-such-job'"),
    (["status", "no-such-job"], "no job 'no-such-job'"),
    (["down", "no-such-job"], "no job 'no-such-job'"),
    (["down"], "exactly one of"),
    # outputs.bucket: only what launcher.storage opens as a bucket; a bare name is a folder on the machine
    (["submit", "{quick}", "--dry-run", "--set", "outputs.bucket=my-bucket"], "--set outputs.bucket: expected s3://"),
    (["submit", "{quick}", "--dry-run", "--set", "outputs.bucket=s3:/my-bucket"], "(got 's3:/my-bucket')"),
    (["submit", "{quick}", "--dry-run", "--set", "outputs.bucket=ftp://x"], "(got 'ftp://x')"),
    # the pre-flight check: a job that would fail at once on what it reads
    (["submit", "{quick}", "--dry-run", "--set", "data.sources=[]"], "error: data.sources: no source given"),
    (["submit", "{quick}", "--set", "data.sources=[]"], "error: data.sources: no source given"),
    (["submit", "{quick}", "--dry-run", "--set", "data.sources=[{path: nope.jsonl}]"],
     "error: data.sources[0].path: nope.jsonl: no such file or folder"),
    (["submit", "{quick}", "--dry-run", "--set", "data.sources=[{path: data/*.nope}]"],
     "error: data.sources[0].path: data/*.nope matches no file"),
    (["submit", "{quick}", "--dry-run", "--set", "model=./nomodel"], "error: model: ./nomodel: no such file or folder"),
    (["submit", "{quick}", "--set", "model=./nomodel"], "error: model: ./nomodel: no such file or folder"),
    (["submit", "{quick}", "--dry-run", "--tpu", "v3-8", "--gpus", "A100:1"], "--tpu v3-8 and --gpus A100:1 conflict"),
    (["submit", "{quick}", "--dry-run", "--set", "data.clean.min_chars=500", "--set", "data.clean.max_chars=100"],
     "data.clean: min_chars (500) is more than max_chars (100)"),
    (["submit", "{quick}", "--dry-run", "--idle-minutes", "5"], "cloud local tears no machine down"),
    (["submit", "{quick}", "--dry-run", "--gpus", "A100:0"], "error: --gpus A100:0: resources.accelerators: the count must be at least 1"),
    (["estimate", "{quick}", "--cloud", "lamda"], "--cloud lamda: unknown cloud 'lamda'"),
    (["estimate", "{quick}", "--cloud", "local"], "--cloud local: no prices for it"),
    (["estimate", "{quick}", "--cloud", "slurm"], "--cloud slurm: no prices for it"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, expected):
    files = {
        "{bad}": "train: [unclosed\n",
        "{dup}": "name: x\ntrain:\n  max_steps: 10\n  max_steps: 20\n",
        "{unknown}": "train:\n  learning_rat: 1\n",
        "{wrongtype}": "train:\n  max_steps: many\n",
    }
    real = []
    for a in args:
        if a in files:
            p = tmp_path / "job.yaml"
            p.write_text(files[a])
            a = str(p)
        real.append(str(QUICKSTART) if a == "{quick}" else a)
    r = subprocess.run([sys.executable, "-m", "launcher.cli", *real], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert expected in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_an_error_in_a_set_names_the_set_not_a_line_of_the_file(tmp_path):
    r = subprocess.run([sys.executable, "-m", "launcher.cli", "submit", str(QUICKSTART), "--dry-run",
                        "--set", "train.learning_rate=-1"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == "error: --set train.learning_rate: must be > 0 (got -1)", r.stderr
    # the file's own value keeps its line
    job = tmp_path / "job.yaml"
    job.write_text(QUICKSTART.read_text().replace("learning_rate: 1.0e-3", "learning_rate: -1"))
    (tmp_path / "data").symlink_to(QUICKSTART.parent / "data")
    r = subprocess.run([sys.executable, "-m", "launcher.cli", "submit", str(job), "--dry-run"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and f"{job}:31: train.learning_rate: must be > 0" in r.stderr, r.stderr


def test_a_set_of_a_text_field_takes_the_text_as_typed():
    r = run("submit", QUICKSTART, "--dry-run", "--set", "data.prompt_template=User: {input} Assistant:",
            "--set", "env.FOO=123", "--set", "env.ON=true", "--set", "name=007")
    assert r.exit_code == 0, r.output
    shown = yaml.safe_load(r.output.split("# valid: yes\n", 1)[1].split("\n#", 1)[0])
    assert shown["data"]["prompt_template"] == "User: {input} Assistant:"
    assert shown["env"] == {"FOO": "123", "ON": "true"} and shown["name"] == "007"


def test_env_in_the_file_takes_numbers_and_booleans_as_their_text(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(QUICKSTART.read_text() + "env: {OMP_NUM_THREADS: 4, DEBUG: true, SCALE: 0.5}\n")
    (tmp_path / "data").symlink_to(QUICKSTART.parent / "data")
    r = run("submit", job, "--dry-run")
    assert r.exit_code == 0, r.output
    assert "OMP_NUM_THREADS: '4'" in r.output and "DEBUG: 'true'" in r.output and "SCALE: '0.5'" in r.output


def test_init_says_the_split_is_normalised(tmp_path):
    run("init", tmp_path / "job.yaml")
    comment = next(l for l in (tmp_path / "job.yaml").read_text().splitlines() if "Train/validation ratio" in l)
    assert "normalised" in comment and "need not add up to 1" in comment


def test_job_ids_are_prefixes_not_patterns_and_an_ambiguous_one_lists_its_matches(tmp_path):
    from launcher import state

    for jid in ("hunt-a83fec", "hunt-a9b1c2"):
        state.save(state.Job(id=jid, name="hunt", cloud="local", spec_yaml="", output_dir=str(tmp_path), state="FAILED"))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "launcher.cli", *args], capture_output=True, text=True, cwd=tmp_path)

    for typed in ("%", "hunt_a83fec", "hunt-a_3fec", "_"):
        r = cli("status", typed)
        assert r.returncode == 2 and f"no job {typed!r}" in r.stderr, (typed, r.stderr)
    r = cli("down", "%")
    assert r.returncode == 2 and "no job '%'" in r.stderr, r.stderr
    r = cli("status", "hunt-a")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "'hunt-a' is ambiguous" in r.stderr and "hunt-a83fec" in r.stderr and "hunt-a9b1c2" in r.stderr
    r = cli("status", "hunt-a8")
    assert r.returncode == 0 and "hunt-a83fec" in r.stdout and "hunt-a9b1c2" not in r.stdout, r.stderr


def test_cloud_help_lists_the_registry():
    from launcher import backends
    from launcher.estimate import catalog_clouds

    r = run("estimate", "--help")
    assert f"Price only this cloud ({', '.join(catalog_clouds())})" in " ".join(r.output.split())
    assert "vast" in catalog_clouds() and "local" not in catalog_clouds()
    r = run("submit", "--help")
    assert f"({', '.join(backends.names()[1:])})" in " ".join(r.output.split())


def test_status_with_no_jobs():
    r = run("status")
    assert r.exit_code == 0 and "no jobs yet" in r.output


def test_down_stops_the_jobs_watcher_and_nothing_else(tmp_path):
    """`launcher down JOB` ends the background `sync JOB --watch` (its whole session) before its own
    last sync, and leaves a process that merely reuses a recorded pid alone."""
    import time
    from types import SimpleNamespace

    from launcher import watch

    sleeper = "import subprocess, sys; subprocess.run(['sleep', '60'])"
    watcher = subprocess.Popen([sys.executable, "-c", sleeper, "sync", "q-1", "--watch"], start_new_session=True)
    other = subprocess.Popen([sys.executable, "-c", sleeper, "sync", "q-2", "--watch"], start_new_session=True)
    try:
        time.sleep(0.5)
        grandchild = subprocess.run(["pgrep", "-g", str(watcher.pid), "sleep"], capture_output=True, text=True).stdout.split()
        assert grandchild  # the rsync stand-in, in the watcher's session
        watch.stop(SimpleNamespace(id="q-1", extra={"watcher_pid": watcher.pid}))
        assert watcher.wait(5) is not None
        time.sleep(0.2)
        assert subprocess.run(["ps", "-p", grandchild[0]], capture_output=True).returncode != 0
        watch.stop(SimpleNamespace(id="q-1", extra={"watcher_pid": other.pid}))  # not q-1's watch
        assert other.poll() is None
    finally:
        for p in (watcher, other):
            if p.poll() is None:
                subprocess.run(["pkill", "-g", str(p.pid)])
                p.wait(5)


def test_down_idle_with_no_cloud_job_says_nothing_to_do_and_checks_the_duration(tmp_path, monkeypatch):
    monkeypatch.setenv("LAUNCHER_HOME", str(tmp_path / "home"))
    r = subprocess.run([sys.executable, "-m", "launcher.cli", "down", "--idle", "30m"], capture_output=True, text=True)
    assert r.returncode == 0 and "torn down: nothing" in r.stdout, (r.stdout, r.stderr)
    r = subprocess.run([sys.executable, "-m", "launcher.cli", "down", "--idle", "abc"], capture_output=True, text=True)
    assert r.returncode == 2 and "--idle abc: expected a duration" in r.stderr, r.stderr


def test_try_commands_refuse_a_failed_job_and_a_zero_token_answer(tmp_path, monkeypatch):
    from launcher import state

    monkeypatch.setenv("LAUNCHER_HOME", str(tmp_path / "home"))
    job = state.save(state.Job(id="ft-1", name="ft", cloud="local", spec_yaml="", output_dir=str(tmp_path / "run"),
                               extra={"error": "training failed: CUDA out of memory"}))
    state.transition(job.id, "FAILED")
    for args in (["export", "ft-1", "--gguf", "q8_0"], ["generate", "ft-1", "hi"], ["chat", "ft-1"]):
        r = subprocess.run([sys.executable, "-m", "launcher.cli", *args], capture_output=True, text=True, input="")
        assert r.returncode == 2 and r.stderr.strip() == (
            "error: job ft-1 failed: training failed: CUDA out of memory; it made no final model (`launcher logs ft-1` "
            "says what happened; submit the job again to go on from its last checkpoint)"), r.stderr
    r = subprocess.run([sys.executable, "-m", "launcher.cli", "generate", str(tmp_path), "hi", "--max-new-tokens", "0"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--max-new-tokens" in r.stderr, r.stderr
