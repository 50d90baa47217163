"""`launcher build`'s user-facing failures and its content tag, without building anything."""
from __future__ import annotations

from pathlib import Path

import pytest

from launcher.build import BuildError, build, content_tag, recorded_image, require_image, write_context
from launcher.spec import JobSpec

from common import REPO


def _copy(tmp: Path) -> Path:
    return write_context(("gpu", "tpu"), tmp, REPO)


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


@pytest.fixture
def ecr(monkeypatch):
    """Amazon ECR's API on loopback (moto in server mode), with throwaway credentials."""
    from services import moto_server

    with moto_server() as url:
        yield from _aws_env(url, monkeypatch)


def _aws_env(url, monkeypatch):
    for k, v in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    import boto3
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # it caches the credentials it found first
    yield url


def test_ecr_login_comes_from_boto3_and_creates_the_repository(ecr):
    import base64

    import boto3

    from launcher.build import registry_auth

    auth = registry_auth("123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/llm")
    client = boto3.client("ecr", region_name="eu-west-1")
    token = base64.b64decode(client.get_authorization_token()["authorizationData"][0]["authorizationToken"]).decode()
    assert f"{auth['username']}:{auth['password']}" == token and auth["username"] == "AWS"
    repos = [r["repositoryName"] for r in client.describe_repositories()["repositories"]]
    assert repos == ["team/llm"]  # ECR refuses a push into a repository that does not exist
    assert registry_auth("123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/llm") == auth  # exists now: fine


def test_ecr_without_credentials_is_one_line(ecr, monkeypatch, tmp_path):
    from launcher.build import registry_auth

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(BuildError, match=r"Amazon ECR \(us-east-2\): Unable to locate credentials") as e:
        registry_auth("123456789012.dkr.ecr.us-east-2.amazonaws.com/llm")
    assert "\n" not in str(e.value)


def test_registry_login_from_skypilot_variables(monkeypatch):
    from launcher.build import registry_auth

    monkeypatch.setenv("SKYPILOT_DOCKER_USERNAME", "me")
    monkeypatch.setenv("SKYPILOT_DOCKER_PASSWORD", "pw")
    assert registry_auth("ghcr.io/me/llm") == {"username": "me", "password": "pw"}
    monkeypatch.delenv("SKYPILOT_DOCKER_PASSWORD")
    assert registry_auth("ghcr.io/me/llm") is None  # Docker's own login then
