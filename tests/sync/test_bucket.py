"""Sync from a bucket on a real S3-compatible server (moto, loopback) and a GCS emulator.

The trainer's side (`upload_tree` after each checkpoint) fills the bucket; `sync_bucket` brings
checkpoints home: complete ones only, incrementally, verified, resumable, corruption reported.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher import manifest
from launcher.storage import StorageError, download_tree, latest_checkpoint, open_store, upload_tree
from launcher.sync import SyncError, sync_bucket

CKPT = {"model.safetensors": 300_000, "optimizer.pt": 120_000, "trainer_state.json": 900,
        "tokenizer/tokenizer.json": 5_000}


def publish(ckpt, run: Path, url: str, step: int, sizes=CKPT) -> Path:
    folder = run / "checkpoints" / f"checkpoint-{step}"
    ckpt(folder, sizes)
    upload_tree(folder, f"{url}/checkpoints/checkpoint-{step}")
    return folder


def test_sync_copies_complete_checkpoints_then_only_new_ones(s3, ckpt, tmp_path):
    client, bucket = s3
    url = f"s3://{bucket}/my-job"
    run = tmp_path / "run"
    publish(ckpt, run, url, 10)
    publish(ckpt, run, url, 20)
    ckpt(run / "final", {"adapter_model.safetensors": 50_000, "tokenizer/vocab.json": 2_000})
    upload_tree(run / "final", f"{url}/final")
    # A checkpoint the trainer is still uploading: files there, manifest not yet.
    client.put_object(Bucket=bucket, Key="my-job/checkpoints/checkpoint-30/model.safetensors", Body=b"x" * 1000)

    to = tmp_path / "home"
    r = sync_bucket(url, to, progress=False)
    assert r.checkpoints == ["checkpoints/checkpoint-10", "checkpoints/checkpoint-20", "final"]
    assert r.skipped == 0 and len(r.copied) == 2 * len(CKPT) + 2
    for c in r.checkpoints:
        assert manifest.verify(to / c) == []
        assert (to / c / "manifest.json").read_bytes() == (run / c / "manifest.json").read_bytes()
    assert not (to / "checkpoints" / "checkpoint-30").exists()
    assert manifest.latest_complete(to / "checkpoints").name == "checkpoint-20"
    assert not list(to.rglob("*.tmp"))

    # Nothing new: nothing fetched. A new checkpoint: only its files.
    again = sync_bucket(url, to, progress=False)
    assert again.copied == [] and again.skipped == 2 * len(CKPT) + 2
    publish(ckpt, run, url, 30)
    third = sync_bucket(url, to, progress=False)
    assert sorted(third.copied) == sorted(f"checkpoints/checkpoint-30/{f}" for f in CKPT)
    assert manifest.verify(to / "checkpoints" / "checkpoint-30") == []


def test_interrupted_sync_resumes_and_skips_verified_files(s3, ckpt, tmp_path):
    client, bucket = s3
    url = f"s3://{bucket}/job"
    folder = publish(ckpt, tmp_path / "run", url, 5)
    # The transfer breaks on one file (gone from the server): the sync fails naming that file, the
    # checkpoint is not complete here, and the files that did arrive and verify stay.
    key = "job/checkpoints/checkpoint-5/tokenizer/tokenizer.json"
    client.delete_object(Bucket=bucket, Key=key)
    to = tmp_path / "home"
    with pytest.raises(SyncError, match=r"checkpoint-5/tokenizer/tokenizer\.json: listed in its manifest but missing") as e:
        sync_bucket(url, to, progress=False)
    local = to / "checkpoints" / "checkpoint-5"
    assert not (local / "manifest.json").exists()
    assert manifest.latest_complete(to / "checkpoints") is None
    done_before = set(e.value.result.copied)
    assert done_before == {f"checkpoints/checkpoint-5/{f}" for f in CKPT if not f.startswith("tokenizer/")}

    client.upload_file(str(folder / "tokenizer/tokenizer.json"), bucket, key)
    r = sync_bucket(url, to, progress=False)
    assert r.copied == ["checkpoints/checkpoint-5/tokenizer/tokenizer.json"]
    assert r.skipped == len(CKPT) - 1
    assert manifest.verify(local) == []


def test_sync_killed_mid_file_resumes_from_the_partial_copy(s3, ckpt, tmp_path):
    _, bucket = s3
    url = f"s3://{bucket}/big"
    publish(ckpt, tmp_path / "run", url, 1, {"model.safetensors": 48 << 20, "config.json": 500})
    to = tmp_path / "home"
    code = f"from launcher.sync import sync_bucket; sync_bucket({url!r}, {str(to)!r}, progress=False)"
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    partial = to / "checkpoints/checkpoint-1/model.safetensors.tmp"
    end = time.time() + 60
    while time.time() < end and proc.poll() is None:
        if partial.exists() and partial.stat().st_size > 0:
            break
        time.sleep(0.002)
    assert proc.poll() is None, "the sync finished before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kept, inode = partial.stat().st_size, partial.stat().st_ino
    assert 0 < kept < 48 << 20
    assert not (to / "checkpoints/checkpoint-1/manifest.json").exists()

    r = sync_bucket(url, to, progress=False)
    assert "checkpoints/checkpoint-1/model.safetensors" in r.copied
    assert manifest.verify(to / "checkpoints/checkpoint-1") == []
    assert not partial.exists()
    # Continued in place (the same file, appended to with a ranged GET), not fetched from byte 0.
    assert (to / "checkpoints/checkpoint-1/model.safetensors").stat().st_ino == inode


def test_corrupted_file_is_refetched_once_then_reported(s3, ckpt, tmp_path):
    client, bucket = s3
    url = f"s3://{bucket}/job"
    run = tmp_path / "run"
    publish(ckpt, run, url, 1)
    folder = publish(ckpt, run, url, 2)
    # Same size, different bytes: only the sha256 can tell.
    bad = bytearray((folder / "optimizer.pt").read_bytes())
    bad[1234] ^= 0xFF
    client.put_object(Bucket=bucket, Key="job/checkpoints/checkpoint-2/optimizer.pt", Body=bytes(bad))

    to = tmp_path / "home"
    with pytest.raises(SyncError) as e:
        sync_bucket(url, to, progress=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"s3://{bucket}/job/checkpoints/checkpoint-2/optimizer.pt: sha256 does not match its manifest" in msg
    assert e.value.result.checkpoints == ["checkpoints/checkpoint-1"]
    assert manifest.verify(to / "checkpoints/checkpoint-1") == []
    assert not (to / "checkpoints/checkpoint-2/manifest.json").exists()
    assert not (to / "checkpoints/checkpoint-2/optimizer.pt").exists()
    assert not (to / "checkpoints/checkpoint-2/optimizer.pt.tmp").exists()
    assert manifest.latest_complete(to / "checkpoints").name == "checkpoint-1"


def test_corrupted_partial_copy_is_fetched_again(s3, ckpt, tmp_path):
    _, bucket = s3
    url = f"s3://{bucket}/job"
    folder = publish(ckpt, tmp_path / "run", url, 7)
    to = tmp_path / "home"
    # A partial copy whose bytes went bad (a disk error, another tool): resuming it cannot verify,
    # so the file is fetched again from the start and then verifies.
    tmp = to / "checkpoints/checkpoint-7/model.safetensors.tmp"
    tmp.parent.mkdir(parents=True)
    tmp.write_bytes(b"\0" * 100_000)
    r = sync_bucket(url, to, progress=False)
    assert "checkpoints/checkpoint-7/model.safetensors" in r.copied
    assert (to / "checkpoints/checkpoint-7/model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert manifest.verify(to / "checkpoints/checkpoint-7") == []


def test_resaved_checkpoint_replaces_the_local_copy(s3, ckpt, tmp_path):
    _, bucket = s3
    url = f"s3://{bucket}/job"
    run = tmp_path / "run"
    publish(ckpt, run, url, 4)
    to = tmp_path / "home"
    sync_bucket(url, to, progress=False)
    # After a preemption the trainer saves checkpoint-4 again, with other weights.
    folder = run / "checkpoints/checkpoint-4"
    (folder / "model.safetensors").write_bytes(os.urandom(300_000))
    manifest.write_manifest(folder)
    upload_tree(folder, f"{url}/checkpoints/checkpoint-4")
    (to / "checkpoints/checkpoint-4/leftover.bin").write_bytes(b"from some earlier copy")
    r = sync_bucket(url, to, progress=False)
    assert r.copied == ["checkpoints/checkpoint-4/model.safetensors"]
    assert not (to / "checkpoints/checkpoint-4/leftover.bin").exists()
    assert (to / "checkpoints/checkpoint-4/manifest.json").read_bytes() == (folder / "manifest.json").read_bytes()
    assert manifest.verify(to / "checkpoints/checkpoint-4") == []


def test_upload_tree_writes_the_manifest_last_and_replaces_an_old_one(tmp_path, ckpt):
    src = tmp_path / "ckpt"
    ckpt(src, CKPT)
    dest = tmp_path / "bucket" / "job" / "final"
    uploaded = upload_tree(src, f"file://{dest}")
    assert uploaded[-1] == "manifest.json" and len(uploaded) == len(CKPT) + 1
    mtimes = {p.relative_to(dest).as_posix(): p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()}
    assert max(mtimes.values()) == mtimes["manifest.json"]
    assert manifest.verify(dest) == []
    with pytest.raises(Exception, match="no manifest.json"):
        upload_tree(tmp_path / "bucket", f"file://{tmp_path}/elsewhere")


def test_bad_manifest_and_path_escape_are_refused(s3, tmp_path):
    client, bucket = s3
    evil = {"version": 1, "files": {"../../outside.txt": {"size": 3, "sha256": "0" * 64}}}
    client.put_object(Bucket=bucket, Key="job/checkpoints/checkpoint-1/manifest.json", Body=json.dumps(evil).encode())
    client.put_object(Bucket=bucket, Key="job/checkpoints/checkpoint-2/manifest.json", Body=b"{not json")
    with pytest.raises(SyncError, match="checkpoint-1/manifest.json: not a valid manifest") as e:
        sync_bucket(f"s3://{bucket}/job", tmp_path / "home", progress=False)
    assert "checkpoint-2/manifest.json: not a valid manifest" in str(e.value)
    assert not (tmp_path / "outside.txt").exists()


def test_storage_problems_are_one_line(s3, tmp_path, monkeypatch):
    with pytest.raises(SyncError, match=r"^s3://no-such-bucket-x/job: bucket no-such-bucket-x does not exist$"):
        sync_bucket("s3://no-such-bucket-x/job", tmp_path / "a", progress=False)
    with pytest.raises(SyncError, match="unsupported storage URL"):
        sync_bucket("ftp://host/x", tmp_path / "a", progress=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(SyncError, match=r"^s3://b/job: cannot reach the S3 endpoint") as e:
        sync_bucket("s3://b/job", tmp_path / "a", progress=False)
    assert "\n" not in str(e.value)


def test_missing_credentials_are_one_line(tmp_path, monkeypatch):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
              "GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST"):
        monkeypatch.delenv(k, raising=False)
    # No file, no instance metadata: nothing may leave this machine looking for credentials.
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    with pytest.raises(SyncError, match=r"^s3://b/job: no AWS credentials \(set AWS_ACCESS_KEY_ID"):
        sync_bucket("s3://b/job", tmp_path / "a", progress=False)
    with pytest.raises(SyncError, match=r"^gs://b/job: no Google Cloud credentials \(run `gcloud auth"):
        sync_bucket("gs://b/job", tmp_path / "a", progress=False)


def test_gcs_round_trip_with_watch(gcs, ckpt, tmp_path):
    _, name = gcs
    url = f"gs://{name}/tpu-job"
    run = tmp_path / "run"
    publish(ckpt, run, url, 100)
    to = tmp_path / "home"
    # The job "ends" after the second poll; a checkpoint that lands before that arrives too.
    polls = []

    def done() -> bool:
        polls.append(1)
        if len(polls) == 2:
            ckpt(run / "final", {"flax_params.msgpack": 80_000})
            upload_tree(run / "final", f"{url}/final")
        return len(polls) >= 2

    r = sync_bucket(url, to, watch=True, done=done, interval=0.05, progress=False)
    assert r.checkpoints == ["checkpoints/checkpoint-100", "final"]
    assert "final/flax_params.msgpack" in r.copied
    for c in r.checkpoints:
        assert manifest.verify(to / c) == []
    assert open_store(url).list()["final/manifest.json"] > 0


def test_trainer_resumes_from_the_latest_checkpoint_in_the_bucket(s3, ckpt, tmp_path):
    """What a relaunched spot job does on a fresh machine: find and fetch its newest checkpoint."""
    client, bucket = s3
    url = f"s3://{bucket}/job"
    run = tmp_path / "run"
    assert latest_checkpoint(f"{url}/checkpoints") is None
    for step in (9, 10):
        publish(ckpt, run, url, step)
    client.put_object(Bucket=bucket, Key="job/checkpoints/checkpoint-11/model.safetensors", Body=b"half")
    latest = latest_checkpoint(f"{url}/checkpoints")
    assert latest == f"{url}/checkpoints/checkpoint-10"  # by step, not by name; 11 has no manifest
    fresh = tmp_path / "fresh/checkpoints/checkpoint-10"
    download_tree(latest, fresh)
    assert manifest.latest_complete(tmp_path / "fresh/checkpoints") == fresh

    client.put_object(Bucket=bucket, Key="job/checkpoints/checkpoint-9/optimizer.pt", Body=b"bad")
    with pytest.raises(StorageError, match=r"checkpoint-9/optimizer\.pt: does not match its manifest"):
        download_tree(f"{url}/checkpoints/checkpoint-9", tmp_path / "other")
    assert not (tmp_path / "other/manifest.json").exists()
