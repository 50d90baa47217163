"""How much a one-line code change costs to rebuild the GPU image, as a ratio to a cold build.

Both builds run here, now, on the same engine, base image and wheelhouse (.ci/docker.sh sets them
up; the wheelhouse is the one the image tests download):

    python bench/image_rebuild.py [--wheelhouse /tmp/launcher-docker/wheelhouse]

Prints the cold build time (no cache), the rebuild time after a one-line change to our code, and
their ratio. The dependency layers are reused, so the ratio should be small (a few percent).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheelhouse", default="/tmp/launcher-docker/wheelhouse")
    args = ap.parse_args()
    env = dict(line.split("=", 1) for line in subprocess.run(
        ["bash", str(ROOT / ".ci/docker.sh")], check=True, capture_output=True, text=True).stdout.splitlines() if "=" in line)
    os.environ["DOCKER_HOST"] = env["DOCKER_HOST"]

    from launcher.build import build, docker_client, write_context
    from launcher.spec import JobSpec

    spec = JobSpec.model_validate({"image": {"name": "llm-launcher-bench", "base": env["LAUNCHER_TEST_BASE"],
                                             "wheelhouse": args.wheelhouse}})
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LAUNCHER_HOME"] = str(Path(tmp) / "home")
        repo = write_context(("gpu",), Path(tmp) / "repo", ROOT)
        t = time.perf_counter()
        cold = build(spec, repo, push=False, progress=False, nocache=True)
        cold_s = time.perf_counter() - t
        with open(repo / "trainers/entry.py", "a") as f:
            f.write("# a one-line code change\n")
        t = time.perf_counter()
        warm = build(spec, repo, push=False, progress=False)
        warm_s = time.perf_counter() - t
        client = docker_client()
        for image in (warm, cold):
            client.images.remove(image.tagged, force=True)
    print(f"cold build (no cache):           {cold_s:7.1f} s")
    print(f"rebuild after a one-line change: {warm_s:7.1f} s")
    print(f"ratio rebuild / cold:            {warm_s / cold_s:7.3f}")


if __name__ == "__main__":
    main()
