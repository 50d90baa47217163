"""Google Cloud TPU VMs through SkyPilot (`--tpu v3-8 --zone europe-west4-a`).

TPU Research Cloud grants quota per zone, so the zone can be pinned; `--spot` gives a
preemptible TPU (what TRC quotas usually are) through SkyPilot managed jobs. A TPU VM cannot be
stopped, only deleted, so autostop always tears it down.

Before launching, a preflight asks the TPU API (google-cloud-tpu) whether the accelerator type
is offered in the chosen zone for the user's project: a wrong zone fails in one line instead of
after minutes of provisioning retries.
"""
from __future__ import annotations

import os

from launcher.backends import register
from launcher.backends.base import BackendError
from launcher.backends.sky import SkyBackend


@register
class GCPBackend(SkyBackend):
    name = "gcp"
    summary = "Google Cloud TPU VMs (TPU Research Cloud grants included)"
    infra = "gcp"
    cannot = {"gpu": "cloud gcp is for TPU VMs here: give a TPU type (--tpu v3-8), or rent GPUs with --cloud lambda, runpod or aws"}

    def check(self, spec) -> None:
        super().check(spec)
        if not spec.resources.is_tpu:
            raise BackendError("cloud gcp is for TPU VMs here: give a TPU type, e.g. --tpu v3-8 --zone europe-west4-a")

    def preflight(self, spec) -> None:
        super().preflight(spec)
        if spec.resources.zone:
            tpu_offered(spec.resources.accelerators, spec.resources.zone, project=_project())


def _project() -> str | None:
    return os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("CLOUDSDK_CORE_PROJECT")


def tpu_offered(accelerator: str, zone: str, *, project: str | None, client=None) -> None:
    """Raise BackendError unless `accelerator` (tpu-v3-8) is offered in `zone` for `project`."""
    wanted = accelerator.lower().removeprefix("tpu-")
    if client is None:
        try:
            from google.cloud import tpu_v2
        except ImportError:
            raise BackendError("the TPU preflight needs google-cloud-tpu: pip install google-cloud-tpu") from None
        client = tpu_v2.TpuClient()
    if not project:
        raise BackendError("no Google Cloud project: set GOOGLE_CLOUD_PROJECT (or `gcloud config set project ...`)")
    parent = f"projects/{project}/locations/{zone}"
    try:
        offered = sorted(t.type_ for t in client.list_accelerator_types(parent=parent))
    except Exception as e:  # google.api_core errors: permission denied, unknown zone ...
        raise BackendError(f"TPU preflight for {zone} in project {project}: {str(e).splitlines()[0]}") from None
    if wanted not in offered:
        raise BackendError(f"TPU {accelerator} is not offered in zone {zone} for project {project}"
                           + (f" (offered there: {', '.join(offered)})" if offered else "")
                           + "; pick the zone of your quota with --zone")
