"""What checkpoint sync's guarantees cost, against plain copies measured in the same run.

Verification (sha256 of every file), .tmp renames and the manifest-last order make `launcher sync`
slower than a blind copy; this prints by how much, for a checkpoint of --mb megabytes:
- S3 (moto server on loopback): sync_bucket vs boto3's download_file of the same objects;
- local folders: sync_local vs shutil.copytree;
- a second sync with nothing new vs the first one (the cost of a --watch poll).

    python bench/sync_throughput.py --mb 128
Needs boto3 and moto[server] (the dev extra). Numbers are ratios; the seconds are only context.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launcher.manifest import write_manifest  # noqa: E402
from launcher.storage import upload_tree  # noqa: E402
from launcher.sync import sync_bucket, sync_local  # noqa: E402


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=128, help="checkpoint size in MB")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sync-bench-"))
    run = work / "run" / "checkpoints" / "checkpoint-1"
    run.mkdir(parents=True)
    sizes = {"model.safetensors": args.mb * 6 // 10, "optimizer.pt": args.mb * 4 // 10}
    for name, mb in sizes.items():
        (run / name).write_bytes(os.urandom(mb << 20))
    (run / "trainer_state.json").write_text("{}")
    write_manifest(run)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from services import moto_server

    with moto_server() as url:
        os.environ.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="bench",
                          AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
        import boto3
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="bench")
        upload_tree(run, "s3://bench/job/checkpoints/checkpoint-1")
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="bench", Prefix="job/")["Contents"]]

        def plain_s3():
            for k in keys:
                dest = work / "plain-s3" / k
                dest.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file("bench", k, str(dest))

        base_s3 = timed(plain_s3)
        ours_s3 = timed(lambda: sync_bucket("s3://bench/job", work / "ours-s3", progress=False))
        noop_s3 = timed(lambda: sync_bucket("s3://bench/job", work / "ours-s3", progress=False))

    base_local = timed(lambda: shutil.copytree(work / "run", work / "plain-local"))
    ours_local = timed(lambda: sync_local(work / "run", work / "ours-local", progress=False))
    noop_local = timed(lambda: sync_local(work / "run", work / "ours-local", progress=False))
    shutil.rmtree(work)

    print(f"checkpoint of {args.mb} MB")
    print(f"S3    sync_bucket / boto3 download_file  = {ours_s3 / base_s3:5.2f}x  ({ours_s3:.2f}s vs {base_s3:.2f}s)")
    print(f"S3    second sync (nothing new) / first  = {noop_s3 / ours_s3:5.3f}x  ({noop_s3:.3f}s)")
    print(f"local sync_local / shutil.copytree       = {ours_local / base_local:5.2f}x  "
          f"({ours_local:.2f}s vs {base_local:.2f}s)")
    print(f"local second sync (nothing new) / first  = {noop_local / ours_local:5.3f}x  ({noop_local:.3f}s)")


if __name__ == "__main__":
    main()
