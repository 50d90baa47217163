"""What a trainer on a fresh machine does first (`storage.fetch_newer_checkpoint`), against S3
(moto) and GCS (gcp-storage-emulator) on loopback; and why a sync never writes into a folder that
holds another run (`sync.claim`).
"""
from __future__ import annotations


import pytest

from launcher import manifest
from launcher.storage import StorageError, fetch_newer_checkpoint, upload_tree
from launcher.sync import OWNER, SyncError, claim

CKPT = {"model.safetensors": 200_000, "optimizer.pt": 80_000, "trainer_state.json": 700}


@pytest.fixture(params=["s3", "gcs"])
def bucket_url(request):
    _, name = request.getfixturevalue(request.param)
    return f"{'s3' if request.param == 's3' else 'gs'}://{name}/runs/my-job/checkpoints"


def test_fresh_machine_gets_the_newest_complete_checkpoint(bucket_url, ckpt, tmp_path):
    for step in (2, 4):
        ckpt(tmp_path / "up" / f"checkpoint-{step}", CKPT)
        upload_tree(tmp_path / "up" / f"checkpoint-{step}", f"{bucket_url}/checkpoint-{step}")
    ckpt(tmp_path / "up" / "checkpoint-6", CKPT)  # saved but its upload died before the manifest
    upload_tree(tmp_path / "up" / "checkpoint-6", f"{bucket_url}/checkpoint-6")
    from launcher.storage import open_store

    open_store(f"{bucket_url}/checkpoint-6").delete("manifest.json")

    local = tmp_path / "machine" / "checkpoints"
    got = fetch_newer_checkpoint(bucket_url, local)
    assert got == local / "checkpoint-4" and manifest.verify(got) == []
    assert fetch_newer_checkpoint(bucket_url, local) is None  # the local one is as new: nothing moves


def test_a_newer_local_checkpoint_wins(bucket_url, ckpt, tmp_path):
    ckpt(tmp_path / "up" / "checkpoint-2", CKPT)
    upload_tree(tmp_path / "up" / "checkpoint-2", f"{bucket_url}/checkpoint-2")
    local = tmp_path / "machine" / "checkpoints"
    ckpt(local / "checkpoint-3", CKPT)
    assert fetch_newer_checkpoint(bucket_url, local) is None
    assert not (local / "checkpoint-2").exists()


def test_a_corrupted_upload_is_not_resumed_from(s3, ckpt, tmp_path):
    client, bucket = s3
    url = f"s3://{bucket}/runs/my-job/checkpoints"
    ckpt(tmp_path / "up" / "checkpoint-2", CKPT)
    upload_tree(tmp_path / "up" / "checkpoint-2", f"{url}/checkpoint-2")
    client.put_object(Bucket=bucket, Key="runs/my-job/checkpoints/checkpoint-2/optimizer.pt", Body=b"garbage")
    local = tmp_path / "machine" / "checkpoints"
    with pytest.raises(StorageError, match="optimizer.pt"):
        fetch_newer_checkpoint(url, local)
    assert not (local / "checkpoint-2" / "manifest.json").exists()  # incomplete: no resume trusts it
    assert manifest.latest_complete(local) is None


def test_sync_refuses_a_folder_holding_another_run(ckpt, tmp_path):
    out = tmp_path / "runs" / "quickstart"
    claim(out, "quickstart-aaaaaa")  # the first job's sync makes the folder its own
    assert (out / OWNER).read_text().strip() == "quickstart-aaaaaa"
    ckpt(out / "final", {"adapter_model.safetensors": 1000})
    claim(out, "quickstart-aaaaaa")  # the same job again: fine
    with pytest.raises(SyncError) as e:
        claim(out, "quickstart-bbbbbb")
    msg = str(e.value)
    assert "holds job quickstart-aaaaaa's run" in msg and "--to" in msg and "\n" not in msg
    assert manifest.verify(out / "final") == []  # untouched

    unowned = tmp_path / "runs" / "local-run"  # a run made some other way, without our record
    ckpt(unowned / "checkpoints" / "checkpoint-2", CKPT)
    with pytest.raises(SyncError, match="holds another run"):
        claim(unowned, "quickstart-cccccc")
    claim(tmp_path / "runs" / "empty", "quickstart-cccccc")  # an empty or new folder is taken
