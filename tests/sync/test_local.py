"""`sync_local` (the --cloud local route) while a writer saves checkpoints the way the trainer does."""
from __future__ import annotations

import threading
import time

import pytest

from launcher import manifest
from launcher.sync import SyncError, sync_local

CKPT = {"model.safetensors": 200_000, "optimizer.pt": 90_000, "trainer_state.json": 500}


def test_watch_follows_a_live_run_and_never_copies_a_half_written_checkpoint(ckpt, tmp_path):
    run, to = tmp_path / "runs/job", tmp_path / "copy"
    ckpt(run / "checkpoints/checkpoint-1", CKPT)
    finished = threading.Event()
    seen_incomplete = []

    def trainer():
        for step in (2, 3):
            folder = run / "checkpoints" / f"checkpoint-{step}"
            for rel, size in CKPT.items():  # files appear one by one, the manifest last
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                (folder / rel).write_bytes(b"\1" * size)
                time.sleep(0.03)
                # Whatever the sync did meanwhile, it must not show this checkpoint as complete.
                if (to / folder.relative_to(run) / "manifest.json").exists():
                    seen_incomplete.append(step)
            manifest.write_manifest(folder)
        ckpt(run / "final", {"adapter_model.safetensors": 30_000})
        finished.set()

    t = threading.Thread(target=trainer)
    t.start()
    r = sync_local(run, to, watch=True, done=finished.is_set, interval=0.02, progress=False)
    t.join()
    assert seen_incomplete == []
    assert r.checkpoints == ["checkpoints/checkpoint-1", "checkpoints/checkpoint-2", "checkpoints/checkpoint-3", "final"]
    for c in r.checkpoints:
        assert manifest.verify(to / c) == []
    # Each file was copied exactly once over all the polls.
    assert len(r.copied) == len(set(r.copied)) == 3 * len(CKPT) + 1


def test_progress_bar_and_refusals(ckpt, tmp_path, capfd):
    run = tmp_path / "run"
    ckpt(run / "final", CKPT)
    r = sync_local(run, tmp_path / "copy", progress=True)
    assert r.checkpoints == ["final"]
    err = capfd.readouterr().err
    assert "sync" in err and str(run) in err
    for inside in (run, run / "copy"):
        with pytest.raises(SyncError, match="inside the run folder"):
            sync_local(run, inside)
    with pytest.raises(ValueError, match="needs done="):
        sync_local(run, tmp_path / "copy", watch=True)


def test_watch_retries_a_failed_pass_until_the_last_one(ckpt, tmp_path, capfd):
    run, to = tmp_path / "run", tmp_path / "copy"
    folder = run / "checkpoints/checkpoint-5"
    ckpt(folder, CKPT)
    (folder / "optimizer.pt").rename(tmp_path / "optimizer.pt")  # listed, not there yet
    calls = []

    def done() -> bool:
        calls.append(1)
        if len(calls) == 3:
            (tmp_path / "optimizer.pt").rename(folder / "optimizer.pt")
        return len(calls) >= 3

    r = sync_local(run, to, watch=True, done=done, interval=0.01, progress=False)
    assert r.checkpoints == ["checkpoints/checkpoint-5"]
    assert sorted(r.copied) == sorted(f"checkpoints/checkpoint-5/{f}" for f in CKPT)
    assert manifest.verify(to / "checkpoints/checkpoint-5") == []
    assert capfd.readouterr().err.count("optimizer.pt: listed in its manifest but missing (retrying in 0.01s)") == 2

    # Still wrong when the job has ended: the last pass fails, naming the file.
    (folder / "optimizer.pt").unlink()
    (to / "checkpoints/checkpoint-5/manifest.json").unlink()
    (to / "checkpoints/checkpoint-5/optimizer.pt").unlink()
    with pytest.raises(SyncError, match="checkpoint-5/optimizer.pt: listed in its manifest but missing$"):
        sync_local(run, to, watch=True, done=lambda: True, interval=0.01, progress=False)


def _cli(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "launcher.cli", *map(str, args)], capture_output=True, text=True, timeout=120)


def test_a_local_jobs_sync_claims_its_folder_and_mends_what_went_missing_there(ckpt, tmp_path, launcher_home):
    """Through the CLI: a second job's run is refused in a folder that holds the first's (the two
    would mix their checkpoints and replace final/); and a file deleted or cut short in the copy
    comes back on the next sync, although the copy's manifest says it is complete."""
    from launcher import state

    for job_id in ("ft-aaaaaa", "ft-bbbbbb"):
        run = tmp_path / "runs" / job_id
        ckpt(run / "checkpoints/checkpoint-2", CKPT)
        ckpt(run / "final", {"adapter_model.safetensors": 30_000, "adapter_config.json": 300})
        state.transition(state.save(state.Job(id=job_id, name="ft", cloud="local", spec_yaml="",
                                              output_dir=str(run))).id, "SUCCEEDED")
    to = tmp_path / "home-copy"
    assert _cli("sync", "ft-aaaaaa", "--to", to).returncode == 0
    r = _cli("sync", "ft-bbbbbb", "--to", to)
    assert r.returncode == 2 and f"{to} holds job ft-aaaaaa's run" in r.stderr, r.stderr
    (to / "final/adapter_config.json").unlink()
    with open(to / "checkpoints/checkpoint-2/optimizer.pt", "ab") as f:
        f.write(b"x")
    r = _cli("sync", "ft-aaaaaa", "--to", to)
    assert r.returncode == 0 and r.stdout.startswith("2 files copied"), r.stdout + r.stderr
    assert manifest.verify(to / "final") == [] and manifest.verify(to / "checkpoints/checkpoint-2") == []
