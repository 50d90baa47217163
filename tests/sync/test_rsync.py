"""Sync over rsync through an ssh alias, against a real sshd on 127.0.0.1 (started by conftest).

This is the route for jobs without a bucket: the run folder on the cluster itself.
"""
from __future__ import annotations

import os
import shutil

import pytest

from launcher import manifest
from launcher.sync import SyncError, sync_rsync

CKPT = {"model.safetensors": 400_000, "optimizer.pt": 150_000, "trainer_state.json": 700,
        "tokenizer/tokenizer.json": 3_000}


def test_rsync_copies_complete_checkpoints_then_only_new_ones(sshd, remote_run, ckpt, tmp_path):
    ckpt(remote_run / "checkpoints/checkpoint-2", CKPT)
    ckpt(remote_run / "checkpoints/checkpoint-4", CKPT)
    (remote_run / "checkpoints/checkpoint-6").mkdir()  # still being written: no manifest
    (remote_run / "checkpoints/checkpoint-6/model.safetensors").write_bytes(b"y" * 5000)
    (remote_run / "logs").mkdir()
    (remote_run / "logs/job.log").write_text("step 4\n")
    to = tmp_path / "home"

    r = sync_rsync(sshd.host, str(remote_run), to, ssh_config=sshd.ssh_config, progress=False)
    assert r.checkpoints == ["checkpoints/checkpoint-2", "checkpoints/checkpoint-4"]
    assert len(r.copied) == 2 * len(CKPT) and r.skipped == 0
    for c in r.checkpoints:
        assert manifest.verify(to / c) == []
        assert (to / c / "manifest.json").read_bytes() == (remote_run / c / "manifest.json").read_bytes()
    assert not (to / "checkpoints/checkpoint-6").exists()
    assert not (to / "logs").exists()
    assert not (to / ".sync").exists()  # the staging folder goes after a clean pass

    again = sync_rsync(sshd.host, str(remote_run), to, ssh_config=sshd.ssh_config, progress=False)
    assert again.copied == [] and again.skipped == 2 * len(CKPT)

    ckpt(remote_run / "checkpoints/checkpoint-6", CKPT)
    # The trainer rotates checkpoint-2 away (save_total_limit); the local copy stays.
    shutil.rmtree(remote_run / "checkpoints/checkpoint-2")
    third = sync_rsync(sshd.host, str(remote_run), to, ssh_config=sshd.ssh_config, progress=False)
    assert sorted(third.copied) == sorted(f"checkpoints/checkpoint-6/{f}" for f in CKPT)
    assert third.checkpoints == ["checkpoints/checkpoint-4", "checkpoints/checkpoint-6"]
    assert manifest.verify(to / "checkpoints/checkpoint-2") == []
    assert manifest.latest_complete(to / "checkpoints").name == "checkpoint-6"


def test_rsync_corrupted_file_is_reported_and_checkpoint_left_incomplete(sshd, remote_run, ckpt, tmp_path):
    ckpt(remote_run / "final", CKPT)
    target = remote_run / "final/model.safetensors"
    data = bytearray(target.read_bytes())
    data[10] ^= 0x01  # the same size: only sha256 sees it
    target.write_bytes(bytes(data))
    to = tmp_path / "home"
    with pytest.raises(SyncError) as e:
        sync_rsync(sshd.host, str(remote_run), to, ssh_config=sshd.ssh_config, progress=False)
    assert str(e.value) == (f"{sshd.host}:{remote_run}/final/model.safetensors: sha256 does not match its manifest "
                            f"(fetched twice); checkpoint final left incomplete")
    assert not (to / "final/manifest.json").exists()
    assert not (to / "final/model.safetensors").exists()
    # The other files arrived and verified; once the source is right, only the bad one moves.
    assert sorted(e.value.result.copied) == sorted(f"final/{f}" for f in CKPT if f != "model.safetensors")
    ckpt(remote_run / "final", CKPT)  # the same seed rewrites the same bytes
    r = sync_rsync(sshd.host, str(remote_run), to, ssh_config=sshd.ssh_config, progress=False)
    assert r.copied == ["final/model.safetensors"] and r.skipped == len(CKPT) - 1
    assert manifest.verify(to / "final") == []


def test_rsync_interrupted_then_resumed(sshd, remote_run, ckpt, tmp_path):
    folder = remote_run / "checkpoints/checkpoint-3"
    ckpt(folder, CKPT)
    hidden = folder / "optimizer.pt"
    os.rename(hidden, remote_run / "optimizer.pt.away")  # the copy of this file fails
    to = tmp_path / "home"
    with pytest.raises(SyncError, match=r"checkpoint-3/optimizer\.pt: listed in its manifest but missing"):
        sync_rsync(sshd.host, str(remote_run), to, ssh_config=sshd.ssh_config, progress=False)
    assert manifest.latest_complete(to / "checkpoints") is None
    os.rename(remote_run / "optimizer.pt.away", hidden)
    r = sync_rsync(sshd.host, str(remote_run), to, ssh_config=sshd.ssh_config, progress=False)
    assert r.copied == ["checkpoints/checkpoint-3/optimizer.pt"] and r.skipped == len(CKPT) - 1
    assert manifest.verify(to / "checkpoints/checkpoint-3") == []
    assert not (to / ".sync").exists()


def test_rsync_watch_until_the_job_ends(sshd, remote_run, ckpt, tmp_path):
    ckpt(remote_run / "checkpoints/checkpoint-1", CKPT)
    calls = []

    def done() -> bool:
        calls.append(1)
        if len(calls) == 2:  # the job finishes between two polls
            ckpt(remote_run / "final", {"adapter_model.safetensors": 20_000})
        return len(calls) >= 2

    # The folder as SkyPilot names it on a node: relative to the login's home.
    r = sync_rsync(sshd.host, f"~/{remote_run.relative_to(sshd.home)}", tmp_path / "home", ssh_config=sshd.ssh_config,
                   watch=True, done=done, interval=0.05, progress=False)
    assert r.checkpoints == ["checkpoints/checkpoint-1", "final"]
    assert manifest.verify(tmp_path / "home/final") == []


def test_rsync_unreachable_host_is_one_line(sshd, tmp_path):
    cfg = tmp_path / "ssh_config"
    cfg.write_text("Host gone-cluster\n  HostName 127.0.0.1\n  Port 9\n  StrictHostKeyChecking no\n")
    with pytest.raises(SyncError, match=r"^rsync from gone-cluster:/x failed: ssh: connect to host 127.0.0.1 port 9: Connection refused$") as e:
        sync_rsync("gone-cluster", "/x", tmp_path / "home", ssh_config=cfg, progress=False)
    assert "\n" not in str(e.value)
