"""The TPU preflight: is this accelerator type offered in this zone for this project?

The TPU API itself cannot be reached from here, so its client is stood in for by an object that
answers `list_accelerator_types` with the google-cloud-tpu library's own request and response
types: the request is built and checked by the library (a malformed parent would fail), and the
answer is real `tpu_v2.AcceleratorType` messages.
"""
from __future__ import annotations

import pytest

from google.cloud import tpu_v2  # noqa: E402  (the cloud extra must include google-cloud-tpu)

from launcher.backends.base import BackendError  # noqa: E402
from launcher.backends.gcp import tpu_offered  # noqa: E402

OFFERED = {"europe-west4-a": ["v2-8", "v3-8", "v3-32"], "us-central2-b": ["v4-8", "v4-16"]}


class TpuApi:
    """Answers like the TPU API for two zones of a project; unknown zones are an API error."""

    def __init__(self):
        self.requests = []

    def list_accelerator_types(self, parent: str):
        request = tpu_v2.ListAcceleratorTypesRequest(parent=parent)
        self.requests.append(request)
        zone = request.parent.split("/")[-1]
        if zone not in OFFERED:
            raise RuntimeError(f"400 Invalid location: {zone}")
        return [tpu_v2.AcceleratorType(name=f"{request.parent}/acceleratorTypes/{t}", type_=t) for t in OFFERED[zone]]


def test_offered_in_zone():
    api = TpuApi()
    tpu_offered("tpu-v3-8", "europe-west4-a", project="my-trc", client=api)
    assert api.requests[0].parent == "projects/my-trc/locations/europe-west4-a"


def test_not_offered_in_zone_names_what_is():
    with pytest.raises(BackendError) as e:
        tpu_offered("tpu-v3-8", "us-central2-b", project="my-trc", client=TpuApi())
    msg = str(e.value)
    assert "not offered in zone us-central2-b" in msg and "v4-8" in msg and "\n" not in msg


def test_unknown_zone_is_one_line():
    with pytest.raises(BackendError, match="Invalid location"):
        tpu_offered("tpu-v3-8", "mars-north1-a", project="my-trc", client=TpuApi())


def test_no_project():
    with pytest.raises(BackendError, match="GOOGLE_CLOUD_PROJECT"):
        tpu_offered("tpu-v3-8", "europe-west4-a", project=None, client=TpuApi())
