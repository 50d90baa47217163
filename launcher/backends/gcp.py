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

from launcher.backends.base import BackendError
from launcher.backends.sky import SkyBackend


class GCPBackend(SkyBackend):
    name = "gcp"
    infra = "gcp"
    cannot = frozenset({"gpu", "stop"})

    def check(self, spec) -> None:
        super().check(spec)
        if not spec.resources.is_tpu:
            raise BackendError("cloud gcp is for TPU VMs here: give a TPU type, e.g. --tpu v3-8 --zone europe-west4-a")
        from trainers.tpu.flags import FlagError, tpu_shape

        try:
            hosts = tpu_shape(spec.resources.accelerators)[1]
        except FlagError as e:
            raise BackendError(str(e)) from None
        bucket = spec.outputs.bucket or ""
        if hosts > 1 and not bucket.startswith("gs://"):
            # EasyLM's hosts write one train state together: only a bucket they all reach will do,
            # and it fails on the pod, after data prep, without one.
            raise BackendError(f"{spec.resources.accelerators} is a pod of {hosts} hosts: they save one train state "
                               f"together into outputs.bucket, which must be gs://... (now: {bucket or 'not set'})")
        if spec.resources.spot and not bucket.startswith("gs://"):
            # A relaunched TPU VM resumes from EasyLM's train state, which only a gs:// bucket holds.
            raise BackendError(f"--spot on a TPU: a preempted VM is relaunched and resumes from EasyLM's train state "
                               f"in outputs.bucket, which must be gs://... (now: {bucket or 'not set'})")
        if spec.model.startswith("package:"):
            raise BackendError(f"model {spec.model}: the TPU image has no Python model packages; give the model as a "
                               f"Hugging Face folder inside the job's folder (it travels with it) or a .gguf file")

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


BACKEND = GCPBackend()
