"""The one small interface every place a job can run implements.

A backend puts a job somewhere (`submit`), reports on it (`status`), shows its output (`logs`),
brings its checkpoints home (`sync`) and stops it (`down`). It says what it cannot do in `cannot`,
so the CLI refuses an impossible request up front, with one line, before anything is spent.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from launcher.errors import BackendError

if TYPE_CHECKING:
    from launcher.spec import JobSpec
    from launcher.state import Job

# Things a backend may be unable to do; checked against the spec before submit.
CAPABILITIES = {
    "gpu": "GPUs (resources.accelerators like A100:1)",
    "tpu": "TPUs (resources.accelerators like tpu-v3-8)",
    "spot": "spot or preemptible machines (resources.spot)",
    "multi_node": "several nodes (resources.num_nodes > 1)",
    "docker": "running the job inside our Docker image",
    "stop": "stopping a machine while keeping its disk (only tear-down)",
    "bucket": "mounting or uploading to a bucket (outputs.bucket)",
    "region": "choosing a region or zone",
}


@dataclass
class SyncResult:
    copied: list[str]
    skipped: int
    checkpoints: list[str]  # complete, verified checkpoints now present locally


class Backend:
    name: ClassVar[str]
    cannot: ClassVar[frozenset[str]] = frozenset()

    def check(self, spec: "JobSpec") -> None:
        """Raise BackendError naming the first thing this backend cannot do for `spec`."""
        r = spec.resources
        wants = {
            "tpu": r.is_tpu,
            "gpu": bool(r.accelerators) and not r.is_tpu,
            "spot": r.spot,
            "multi_node": r.num_nodes > 1,
            "docker": r.docker,
            "bucket": bool(spec.outputs.bucket),
            "region": bool(r.region or r.zone),
        }
        for cap, wanted in wants.items():
            if wanted and cap in self.cannot:
                raise BackendError(f"cloud {self.name} cannot do {CAPABILITIES[cap]}")

    def dry_run(self, spec: "JobSpec", job_file: Path) -> str:
        """What submit would run, secrets masked, and whether it validates; launches nothing."""
        raise NotImplementedError

    def submit(self, job: "Job", spec: "JobSpec", *, detach: bool = True) -> "Job":
        raise NotImplementedError

    def status(self, job: "Job") -> "Job":
        """Refresh and return the job record (state, exit code, times)."""
        raise NotImplementedError

    def logs(self, job: "Job", *, follow: bool = False) -> int:
        """Print the job's output; with follow, until it ends. Returns the job's exit code or 0."""
        raise NotImplementedError

    def sync(self, job: "Job", to: Path, *, watch: bool = False) -> SyncResult:
        raise NotImplementedError

    def checkpoints_only_on_machine(self, spec: "JobSpec") -> bool:
        """Whether the job's checkpoints live only on a machine that goes away by itself when idle
        (autodown). A detached submit then leaves `launcher sync JOB --watch` running here, so that
        they come home before the machine goes."""
        return False

    def down(self, job: "Job") -> "Job":
        """Stop the job cleanly (the trainer saves first) and release what it holds. A backend whose
        machine holds checkpoints also takes `force` (tear down even if the last sync fails)."""
        raise NotImplementedError


def get_backend(cloud: str) -> Backend:
    """The backend for a cloud name; imports only that backend's module."""
    import importlib

    module = {"lambda": "lambda_"}.get(cloud, cloud)
    try:
        mod = importlib.import_module(f"launcher.backends.{module}")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("launcher.backends"):
            raise BackendError(f"unknown cloud {cloud!r}") from None
        raise BackendError(f"cloud {cloud} needs the cloud extra: pip install 'llm-launcher[cloud]' ({e.name} is missing)") from None
    return mod.BACKEND
