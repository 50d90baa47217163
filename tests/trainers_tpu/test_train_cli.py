"""`python -m trainers.tpu.train` refuses bad input with one line and exit code 2, before any TPU work.

These run without EasyLM: every check happens before EasyLM is started.
"""
from __future__ import annotations

import json
import subprocess
import sys

from tpu_test_helpers import write_prepared


def run_train(tmp_path, job: dict, data=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(job))
    data = data or write_prepared(tmp_path / "data", 4, 1)
    return subprocess.run([sys.executable, "-m", "trainers.tpu.train", str(path), "--data", str(data),
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)


def base_job(model) -> dict:
    return {"name": "tpu-cli", "model": str(model), "method": "full", "data": {"max_length": 32},
            "resources": {"cloud": "gcp", "accelerators": "tpu-v3-8"}}


def test_bad_inputs_exit_2_with_one_line(tiny_llama, tmp_path):
    cases = [
        ({**base_job(tiny_llama), "train": {"learning_rate": -1}}, "train.learning_rate"),
        ({**base_job(tiny_llama), "resources": {"cloud": "gcp", "accelerators": "tpu-v9-8"}}, "unknown TPU type"),
        ({**base_job(tiny_llama), "train": {"lr_scheduler_type": "linear"}}, "train.lr_scheduler_type"),
        ({**base_job(tiny_llama), "data": {"max_length": 100000}}, "data.max_length"),
        ({**base_job(tiny_llama), "model": str(tmp_path)}, "config.json"),
    ]
    for i, (job, words) in enumerate(cases):
        r = run_train(tmp_path / str(i), job, data=write_prepared(tmp_path / f"d{i}", 4, 1))
        assert r.returncode == 2, (words, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], (words, r.stderr)
        assert "Traceback" not in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_train(tmp_path / "e", base_job(tiny_llama), data=empty)
    assert r.returncode == 2 and "train.jsonl: not found" in r.stderr


def test_hub_ids_are_downloaded_on_the_vm_and_cached(tiny_llama, tmp_path, monkeypatch):
    import shutil

    job = {**base_job("someorg/tiny-llama"), "train": {"sample_prompts": 0}}
    # Offline (nothing listens on port 9): one line naming the model, before any data work.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "2")
    r = run_train(tmp_path / "offline", job)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "model someorg/tiny-llama: cannot download it from the hub" in lines[0], r.stderr
    assert "downloading someorg/tiny-llama from the hub" in r.stdout
    # A finished download in the run folder is reused: the run goes on to the data (empty here).
    cached = tmp_path / "cached" / "run" / "tpu" / "hub" / "someorg--tiny-llama"
    shutil.copytree(tiny_llama, cached)
    (cached / ".complete").write_text("{}")
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_train(tmp_path / "cached", job, data=empty)
    assert r.returncode == 2 and "train.jsonl: not found" in r.stderr, r.stderr
    assert "downloading" not in r.stdout and "memory plan per chip on v3-8" in r.stdout


def test_refused_train_field_names_it(tiny_llama, tmp_path):
    r = run_train(tmp_path, {**base_job(tiny_llama), "train": {"optim": "adafactor"}})
    assert r.returncode == 2 and r.stderr.strip().startswith("error: train.optim: 'adafactor' is not available on TPU")


def test_a_finished_run_meets_a_job_with_other_training_settings(tiny_llama, tmp_path):
    """The TPU trainer's final/ records its job: the same job again has nothing to do, one with
    another learning rate is refused naming it (not handed the old model as done)."""
    from launcher.manifest import write_manifest
    from launcher.spec import load_spec, write_resolved

    job = {**base_job(tiny_llama), "train": {"learning_rate": 1e-4}}
    (tmp_path / "j.yaml").write_text(json.dumps(job))
    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")
    write_resolved(load_spec(tmp_path / "j.yaml"), final)
    write_manifest(final, extra={"trainer": "tpu"})
    same = run_train(tmp_path, {**job, "train": {"learning_rate": 1e-4, "logging_steps": 3}})
    assert same.returncode == 0 and "complete already; nothing to do" in same.stdout, same.stderr
    other = run_train(tmp_path, {**job, "train": {"learning_rate": 3e-4}})
    assert other.returncode == 2, other.stdout
    assert other.stderr.strip().splitlines() == [
        f"error: {final} was trained with other settings than this job (train.learning_rate (0.0001 -> 0.0003)); "
        "`launcher submit --fresh` to train it anew (the old run folder is set aside)"]
