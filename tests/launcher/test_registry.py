"""The provider registry: every backend module is found, and every capability a backend says it
lacks is refused, with that provider's own message, by the one check every backend runs."""
import copy
import pkgutil

import pytest

import launcher.backends as backends
from launcher.backends.base import CAPABILITIES, wanted
from launcher.backends.local_docker import BACKEND as LOCAL_DOCKER
from launcher.errors import BackendError
from launcher.spec import JobSpec, SpecError, load_spec

# One request per capability, each asking for that capability alone.
REQUESTS = {
    "gpu": {"resources": {"accelerators": "A100:1"}},
    "tpu": {"method": "full", "resources": {"accelerators": "tpu-v3-8"}},
    "spot": {"resources": {"accelerators": "A100:1", "spot": True}},
    "multi_node": {"resources": {"accelerators": "A100:1", "num_nodes": 2}},
    "docker": {"resources": {"accelerators": "A100:1", "docker": True}},
    "bucket": {"resources": {"accelerators": "A100:1"}, "outputs": {"bucket": "s3://b/runs"}},
    "region": {"resources": {"accelerators": "A100:1", "region": "us-east-1"}},
    "idle": {"resources": {"accelerators": "A100:1", "idle_minutes": 5}},
}


def request(cloud: str, cap: str) -> JobSpec:
    data = copy.deepcopy(REQUESTS[cap])
    data.setdefault("resources", {})["cloud"] = cloud
    return JobSpec.model_validate(data)


def test_every_module_in_the_package_is_registered():
    modules = {m.name for m in pkgutil.iter_modules(backends.__path__)}
    providers = modules - {"base", "sky", "local_docker"}  # the interface, the SkyPilot base, a local variant
    assert {m.removesuffix("_") for m in providers} == set(backends.names())
    assert backends.names()[0] == "local"


def test_each_request_asks_for_exactly_its_capability():
    for cap in CAPABILITIES:
        asked = {c for c, on in wanted(request("local", cap)).items() if on}
        assert asked - {"gpu"} == ({cap} - {"gpu"}), cap  # every request but tpu's names a GPU


CASES = [(b, cap) for b in [*backends.all_backends(), LOCAL_DOCKER] for cap in sorted(b.cannot)]


@pytest.mark.parametrize("backend,cap", CASES, ids=[f"{b.name}-{c}" for b, c in CASES])
def test_declared_incapability_is_refused_with_the_providers_message(backend, cap):
    assert cap in CAPABILITIES, f"{backend.name} declares an unknown capability {cap!r}"
    cloud = "local" if backend is LOCAL_DOCKER else backend.name
    spec = request(cloud, cap)
    if backend is LOCAL_DOCKER:
        spec.resources.docker = True
    if "gpu" in backend.cannot and cap != "gpu":  # a TPU-only provider: the same request on a TPU
        spec = JobSpec.model_validate({**spec.model_dump(), "method": "full",
                                       "resources": {**spec.resources.model_dump(), "accelerators": "tpu-v3-8"}})
    with pytest.raises(BackendError) as e:
        backend.check(spec)
    assert str(e.value) == backend.cannot[cap]
    assert "\n" not in str(e.value)


def test_messages_are_the_providers_own():
    messages = [m for b in backends.all_backends() for m in b.cannot.values()]
    assert len(messages) == len(set(messages))


@pytest.mark.parametrize("cloud", ["aws", "lambda", "runpod"])
def test_a_capability_not_declared_is_not_refused_as_one(cloud):
    backend = backends.get_backend(cloud)
    for cap in set(CAPABILITIES) - set(backend.cannot) - {"docker"}:
        spec = request(cloud, cap)
        if cap == "spot":
            if "bucket" in backend.cannot:  # spot resumes from a bucket: refused as the bucket it needs
                continue
            spec.outputs.bucket = "s3://b/runs"
        try:
            backend.check(spec)
        except BackendError as e:
            assert str(e) not in {m for b in backends.all_backends() for m in b.cannot.values()}, (cap, str(e))


def test_unknown_cloud_names_the_choices():
    with pytest.raises(BackendError, match=r"unknown cloud 'lamdba'; choose one of local, .*\(did you mean lambda\?\)"):
        backends.get_backend("lamdba")


def test_spec_checks_the_cloud_against_the_registry(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text("resources:\n  cloud: runpd\n")
    with pytest.raises(SpecError, match=r":2: resources.cloud: must be one of .*did you mean 'runpod'"):
        load_spec(p, clouds=backends.names())
    assert load_spec(p).resources.cloud == "runpd"  # the ground floor itself knows no providers


def test_launcher_clouds_lists_every_provider_and_what_it_cannot_do():
    from click.testing import CliRunner

    from launcher.cli import main

    r = CliRunner().invoke(main, ["clouds"])
    assert r.exit_code == 0, r.output
    rows = {line.split()[0]: line for line in r.output.splitlines()[1:] if line.strip()}
    assert set(rows) == set(backends.names())
    for b in backends.all_backends():
        assert all(cap in rows[b.name] for cap in b.cannot), rows[b.name]
