"""The GPU image, for real: built offline from a wheelhouse on a debootstrap base, pushed to a local
registry, pulled back by digest, and training the quickstart job inside a container.

Order matters and is kept: the pull test removes the local image (and with it the engine's own
chain of cached build steps) and pulls it back by digest, as a fresh machine would; the layer-reuse
test then rebuilds after a code change with only that pulled image to take its layers from.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launcher import manifest

pytestmark = [pytest.mark.docker, pytest.mark.slow]

from common import REPO
SECRETS = {"WANDB_API_KEY": "wandb-secret-5f1e9c2a77", "HF_TOKEN": "hf_secretToken8d41b0c3"}
DEP_LAYERS = 6  # base, venv, COPY + RUN pinned requirements, COPY + RUN models: all before our code


def _client():
    import docker

    return docker.from_env(timeout=600)


def _quickstart(tmp: Path, steps: int = 2) -> Path:
    """The quickstart job, cut to a few steps, in a folder of its own (its data next to it)."""
    src = REPO / "examples/quickstart"
    job_dir = tmp / "job"
    shutil.copytree(src / "data", job_dir / "data")
    job = yaml.safe_load((src / "job.yaml").read_text())
    job["train"].update(max_steps=steps, save_steps=steps, eval_steps=steps, warmup_steps=0, sample_prompts=1)
    job["outputs"] = {"dir": str(tmp / "out")}
    (job_dir / "job.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
    return job_dir / "job.yaml"


def _check_checkpoint(out: Path, steps: int) -> None:
    ckpt = out / "checkpoints" / f"checkpoint-{steps}"
    assert (ckpt / manifest.MANIFEST).exists(), f"no complete checkpoint in {out}: {sorted(p.name for p in out.rglob('*'))[:40]}"
    assert manifest.verify(ckpt) == []
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["global_step"] == steps


def test_pull_by_digest_and_train_quickstart(gpu_image, tmp_path):
    image, _ = gpu_image
    client = _client()
    client.images.remove(image.image_id, force=True)
    pulled = client.images.pull(f"{image.repository}@{image.digest}")
    assert pulled.id == image.image_id  # the same config, hence the same image
    pulled.tag(image.repository, image.tag)  # later tests (the CLI) find it by its content tag

    job = _quickstart(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    logs = client.containers.run(
        f"{image.repository}@{image.digest}",
        ["python", "-m", "trainers.entry", str(job), "--out", str(out)],
        volumes={str(job.parent): {"bind": str(job.parent), "mode": "ro"}, str(out): {"bind": str(out), "mode": "rw"}},
        environment={"HOME": "/tmp", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", **SECRETS},
        user=f"{os.getuid()}:{os.getgid()}", network_mode="none", remove=True, stdout=True, stderr=True,
    )
    assert logs, "the entry command printed nothing"
    _check_checkpoint(out, 2)


@pytest.fixture(scope="module")
def changed_image(gpu_image, image_spec_data, tmp_path_factory):
    """The image rebuilt after a one-line code change, with the job's secrets set in this process.
    Runs after the pull test: the only cache left is the image pulled back by digest."""
    from launcher.build import build, content_tag, write_context
    from launcher.spec import JobSpec

    image, home = gpu_image
    repo = write_context(("gpu",), tmp_path_factory.mktemp("repo"), REPO)
    with open(repo / "trainers/entry.py", "a") as f:
        f.write("# a one-line code change\n")
    spec = JobSpec.model_validate({"image": image_spec_data})
    assert content_tag(spec, repo) != image.tag
    saved = {k: os.environ.get(k) for k in [*SECRETS, "LAUNCHER_HOME"]}
    os.environ.update({**SECRETS, "LAUNCHER_HOME": str(home)})
    try:
        rebuilt = build(spec, repo, push=False, progress=False)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    log = (home / "logs" / f"build-{rebuilt.tag}.log").read_text()
    yield rebuilt, log
    _client().images.remove(rebuilt.tagged, force=True)


def test_code_change_reuses_dependency_layers(gpu_image, changed_image):
    image, _ = gpu_image
    rebuilt, log = changed_image
    assert rebuilt.built
    client = _client()
    old = client.images.get(image.image_id).attrs["RootFS"]["Layers"]
    new = client.images.get(rebuilt.image_id).attrs["RootFS"]["Layers"]
    assert len(old) == len(new) > DEP_LAYERS
    assert new[:DEP_LAYERS] == old[:DEP_LAYERS], "a code change rebuilt dependency layers"
    assert new != old
    # The pinned-dependency step itself came from the cache.
    req_step = log.split("RUN pip install", 1)[1]
    assert req_step.splitlines()[0].endswith("requirements.txt")
    assert " ---> Using cache" in req_step.split("Step ", 1)[0], "the pinned dependencies were reinstalled"


def test_no_secret_in_history_config_or_build_log(gpu_image, changed_image):
    image, home = gpu_image
    rebuilt, log = changed_image
    client = _client()
    for img in (image.image_id, rebuilt.image_id):
        history = json.dumps(client.api.history(img))
        config = json.dumps(client.images.get(img).attrs)
        assert "WHEELHOUSE=" in history  # build arguments do show in the history: a secret one would too
        for name, value in SECRETS.items():
            assert value not in history, f"{name} leaked into docker history"
            assert value not in config, f"{name} leaked into the image config"
    assert "Step 1/" in log and "Successfully built" in log
    for path in (home / "logs").glob("build-*.log"):
        text = path.read_text()
        for name, value in SECRETS.items():
            assert value not in text, f"{name} leaked into the build log {path.name}"


def test_existing_tag_is_not_built_again(gpu_image, image_spec_data, monkeypatch):
    from launcher.build import build, recorded_image
    from launcher.spec import JobSpec

    image, home = gpu_image
    monkeypatch.setenv("LAUNCHER_HOME", str(home))
    spec = JobSpec.model_validate({"image": image_spec_data})
    again = build(spec, REPO, push=True, progress=False)  # in the registry already
    assert (again.built, again.pushed, again.digest) == (False, False, image.digest)
    local = build(spec, REPO, push=False, progress=False)  # present locally
    assert local.built is False and local.image_id == image.image_id
    assert recorded_image(spec, REPO) == f"{image.repository}@{image.digest}"


def test_cli_submit_local_docker(gpu_image, image_spec_data, tmp_path):
    job = _quickstart(tmp_path)
    sets = [f"--set=image.{k}={v}" for k, v in image_spec_data.items()]
    env = {**os.environ, "LAUNCHER_HOME": str(tmp_path / "home"), **SECRETS}
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "submit", str(job), "--cloud", "local", "--docker", *sets],
                          capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SUCCEEDED" in proc.stdout
    _check_checkpoint(tmp_path / "out", 2)
    assert (tmp_path / "out/logs/job.log").read_text().strip(), "the container's output was not kept"
