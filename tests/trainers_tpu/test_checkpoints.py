"""Which EasyLM train state a rerun resumes from, and which milestones are pruned (no EasyLM needed).

EasyLM writes its train state in place with nothing that says it finished; easylm_main writes a
`complete_<step>.json` marker after each save. Only marked states whose file exists count. On disk
stay the newest complete train state (resume) and the newest milestone params in bf16 (exports).
"""
from __future__ import annotations

import json

from fsspec.implementations.local import LocalFileSystem

from trainers.tpu.easylm_main import _prune, newest_checkpoint


def mark(run, step, milestone=True, with_file=True):
    suffix = f"_{step}" if milestone else ""
    if with_file:
        for name in (f"streaming_train_state{suffix}", f"dataset{suffix}.pkl", f"metadata{suffix}.pkl"):
            (run / name).write_bytes(b"x")
        if milestone:
            (run / f"streaming_params_{step}").write_bytes(b"p")
    (run / (f"complete_{step}.json" if milestone else "complete.json")).write_text(json.dumps(
        {"step": step, "train_state": f"streaming_train_state{suffix}", "dataset": f"dataset{suffix}.pkl",
         "metadata": f"metadata{suffix}.pkl"}))


def test_newest_complete_train_state_wins(tmp_path):
    run = tmp_path / "run"
    assert newest_checkpoint(str(run)) is None  # no folder yet: a fresh start
    run.mkdir()
    (run / "streaming_train_state_30").write_bytes(b"half-written, no marker")
    mark(run, 10)
    mark(run, 20)
    mark(run, 25, milestone=False)  # the SIGTERM save
    mark(run, 40, with_file=False)  # a marker whose files were pruned away
    ck = newest_checkpoint(str(run))
    assert ck["step"] == 25 and ck["train_state"] == str(run / "streaming_train_state")
    assert ck["dataset"] == str(run / "dataset.pkl")


def test_prune_keeps_one_train_state_and_the_newest_params(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for step in (2, 4, 6, 8):
        mark(run, step)
    _prune(LocalFileSystem(), str(run), keep=2)
    left = sorted(p.name for p in run.iterdir())
    assert left == ["complete_6.json", "complete_8.json", "dataset_8.pkl", "metadata_8.pkl",
                    "streaming_params_6", "streaming_params_8", "streaming_train_state_8"]
    assert newest_checkpoint(str(run))["step"] == 8  # resume still has its state
    # The end (or SIGTERM) save is complete: no milestone train state is needed any more.
    mark(run, 9, milestone=False)
    _prune(LocalFileSystem(), str(run), keep=2, final=True)
    left = sorted(p.name for p in run.iterdir())
    assert left == ["complete.json", "complete_6.json", "complete_8.json", "dataset.pkl", "metadata.pkl",
                    "streaming_params_6", "streaming_params_8", "streaming_train_state"]
    assert newest_checkpoint(str(run))["step"] == 9
