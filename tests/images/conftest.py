"""Fixtures for the image tests: a Docker engine, a local base image, a local registry, a wheelhouse.

`.ci/docker.sh` (idempotent) installs and starts what is missing; it is stopped at the end of the
session only if this session started it. The wheelhouse is the GPU image's pins downloaded with
this machine's pip (the CPU torch wheel standing in for CUDA torch), kept under the docker state
folder so that one CI run downloads it once. The GPU image is built and pushed once per session.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from common import REPO
STATE = Path(os.environ.get("LAUNCHER_DOCKER_STATE", "/tmp/launcher-docker"))
WHEELHOUSE = STATE / "wheelhouse"
# The values a job's secrets have while the images build (the same in test_gpu_image.py).
SECRETS = {"WANDB_API_KEY": "wandb-secret-5f1e9c2a77", "HF_TOKEN": "hf_secretToken8d41b0c3"}


def _engine_up() -> bool:
    return subprocess.run(["docker", "-H", "unix:///var/run/docker.sock", "info"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def docker_env() -> dict[str, str]:
    started = not _engine_up()
    proc = subprocess.run(["bash", str(REPO / ".ci/docker.sh")], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f".ci/docker.sh failed:\n{proc.stderr[-3000:]}")
    env = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    os.environ["DOCKER_HOST"] = env["DOCKER_HOST"]
    yield env
    if started:
        subprocess.run(["bash", str(REPO / ".ci/docker.sh"), "stop"], timeout=120)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    """Every pinned wheel the GPU image installs, from this machine's pip (offline build source)."""
    reqs = [REPO / "images/gpu/requirements.txt", REPO / "images/gpu/models.txt"]
    pins = [ln.split("==") for f in reqs for ln in f.read_text().splitlines() if "==" in ln and not ln.startswith("#")]
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    have = {_norm(p.name.split("-")[0]) + "==" + p.name.split("-")[1].split("+")[0] for p in WHEELHOUSE.glob("*.whl")}
    if any(f"{_norm(n)}=={v}" not in have for n, v in pins):
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "-d", str(WHEELHOUSE), *[a for f in reqs for a in ("-r", str(f))]]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            pytest.fail(f"pip download of the wheelhouse failed:\n{proc.stderr[-3000:]}")
    return WHEELHOUSE


@pytest.fixture(scope="session")
def image_spec_data(docker_env, wheelhouse) -> dict:
    """The `image:` section every image test uses: local base, local registry, offline wheelhouse."""
    return {"base": docker_env["LAUNCHER_TEST_BASE"], "registry": f"{docker_env['LAUNCHER_TEST_REGISTRY']}/tests",
            "wheelhouse": str(wheelhouse)}


@pytest.fixture(scope="session")
def gpu_image(image_spec_data, tmp_path_factory):
    """The GPU image of this working tree, built (or reused by its content tag) and pushed."""
    from launcher.build import build
    from launcher.spec import JobSpec

    home = tmp_path_factory.mktemp("build-home")
    saved = {k: os.environ.get(k) for k in [*SECRETS, "LAUNCHER_HOME"]}
    os.environ.update({**SECRETS, "LAUNCHER_HOME": str(home)})  # a job's secrets, set while it builds
    try:
        spec = JobSpec.model_validate({"image": image_spec_data})
        image = build(spec, REPO, push=True, progress=False)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    if image.image_id is None:  # in the registry from an earlier session, gone from the engine
        import docker

        pulled = docker.from_env(timeout=600).images.pull(f"{image.repository}@{image.digest}")
        pulled.tag(image.repository, image.tag)
        image.image_id = pulled.id
    return image, home
