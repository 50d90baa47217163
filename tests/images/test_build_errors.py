"""`launcher build`'s user-facing failures and its content tag, without building anything."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from launcher.build import IMAGE_FILES, BuildError, build, content_tag, recorded_image, require_image
from launcher.spec import JobSpec

REPO = Path(__file__).resolve().parents[2]


def _copy(tmp: Path) -> Path:
    for entry in sorted(set(IMAGE_FILES["gpu"]) | set(IMAGE_FILES["tpu"])):
        src = REPO / entry
        if src.is_dir():
            shutil.copytree(src, tmp / entry, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            (tmp / entry).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tmp / entry)
    return tmp


def test_content_tag_follows_code_pins_and_base_but_not_caches(tmp_path):
    repo = _copy(tmp_path)
    spec = JobSpec()
    tag = content_tag(spec, repo)
    assert tag.startswith("gpu-") and tag == content_tag(spec, repo)
    (repo / "launcher/__pycache__").mkdir(exist_ok=True)
    (repo / "launcher/__pycache__/x.cpython-311.pyc").write_bytes(b"junk")
    assert content_tag(spec, repo) == tag  # bytecode is not part of the image
    with open(repo / "images/gpu/requirements.txt", "a") as f:
        f.write("# a comment\n")
    tag2 = content_tag(spec, repo)
    assert tag2 != tag
    assert content_tag(JobSpec.model_validate({"image": {"base": "ubuntu:24.04"}}), repo) != tag2
    assert content_tag(JobSpec.model_validate({"image": {"tag": "v1"}}), repo) == "v1"
    tpu = JobSpec.model_validate({"method": "full", "resources": {"cloud": "gcp", "accelerators": "tpu-v3-8"}})
    assert content_tag(tpu, repo).startswith("tpu-")


def test_no_engine_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    with pytest.raises(BuildError, match="no Docker engine answers") as e:
        build(JobSpec(), REPO, push=False, progress=False)
    assert "\n" not in str(e.value)


def test_push_needs_a_registry():
    with pytest.raises(BuildError, match="image.registry: not set"):
        build(JobSpec(), REPO, push=True, progress=False)


def test_never_built_is_reported():
    spec = JobSpec.model_validate({"image": {"registry": "ghcr.io/someone"}})
    assert recorded_image(spec, REPO) is None
    with pytest.raises(BuildError, match="launcher build JOB.yaml --push"):
        require_image(spec, REPO)
