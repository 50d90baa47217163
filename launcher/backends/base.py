"""The one small interface every place a job can run implements.

A backend puts a job somewhere (`submit`), reports on it (`status`), shows its output (`logs`),
brings its checkpoints home (`sync`) and stops it (`down`). It says what it cannot do in `cannot`,
so the CLI refuses an impossible request up front, with one line, before anything is spent.
"""
from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from launcher.errors import BackendError

if TYPE_CHECKING:
    from launcher.spec import JobSpec
    from launcher.state import Job
    from launcher.sync import SyncResult

# Things a backend may be unable to do. A backend's `cannot` maps each to its own message, and
# `Backend.check` is the one place that turns a request needing one into that message.
CAPABILITIES = {
    "gpu": "GPUs (resources.accelerators like A100:1)",
    "tpu": "TPUs (resources.accelerators like tpu-v3-8)",
    "spot": "spot or preemptible machines (resources.spot)",
    "multi_node": "several nodes (resources.num_nodes > 1)",
    "docker": "running the job inside our Docker image",
    "bucket": "mounting or uploading to a bucket (outputs.bucket)",
    "region": "choosing a region or zone",
    "idle": "tearing a machine down when idle (resources.idle_minutes)",
}


def wanted(spec: "JobSpec") -> dict[str, bool]:
    """Which capabilities `spec` asks for."""
    r = spec.resources
    return {
        "tpu": r.is_tpu,
        "gpu": bool(r.accelerators) and not r.is_tpu,
        "spot": r.spot,
        "multi_node": r.num_nodes > 1,
        "docker": r.docker,
        "bucket": bool(spec.outputs.bucket),
        "region": bool(r.region or r.zone),
        # Changed from the default, not merely present: `launcher init` writes every field's default.
        "idle": r.idle_minutes != type(r).model_fields["idle_minutes"].default,
    }


class Backend:
    name: ClassVar[str]
    summary: ClassVar[str] = ""  # one line for `launcher clouds`
    rents_machines: ClassVar[bool] = False  # a machine that bills while it runs (not this one)
    needs_modules: ClassVar[tuple[str, ...]] = ()  # what must be installed to talk to it (checked by the CLI)
    # capability -> the message a user gets for asking this provider for it (CAPABILITIES)
    cannot: ClassVar[dict[str, str]] = {}

    def check(self, spec: "JobSpec") -> None:
        """Raise BackendError with this provider's message for the first thing it cannot do for `spec`.
        Subclasses add their own checks after calling this; none skips it."""
        for cap, asked in wanted(spec).items():
            if asked and cap in self.cannot:
                raise BackendError(self.cannot[cap])

    def check_inputs(self, spec: "JobSpec", job_file: Path) -> None:
        """Raise BackendError (one line naming the field) for a job that would fail at once on what
        it reads: no data source, or a local path (data, a model or tokenizer folder) that is not
        there. `submit` and `submit --dry-run` both run it, for every backend, so a dry run that
        passes is a job that starts. Hub ids, `package:` models and `url:` sources are not looked up."""
        if not spec.data.sources:
            raise BackendError("data.sources: no source given, so there is nothing to train on; add one, "
                               "e.g. `sources: [{path: data/train.jsonl, input: prompt, output: answer}]`")
        base = job_file.resolve().parent
        for field, value, path in spec.local_inputs(base):
            if not path.exists():
                raise BackendError(f"{field}: {value}: no such file or folder ({path})")
            if re.search(r"[*?\[]", value) and not _glob_files(base, value):
                raise BackendError(f"{field}: {value} matches no file (in {path})")

    def dry_run(self, spec: "JobSpec", job_file: Path, *, fresh: bool = False) -> str:
        """What submit would run, secrets masked, and whether it validates; launches nothing. `fresh`:
        as `submit --fresh` would run it, after the earlier run folder is set aside (no resuming)."""
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

    def down(self, job: "Job", *, force: bool = False) -> "Job":
        """Stop the job cleanly (the trainer saves first) and release what it holds. `force`: where
        a machine holds checkpoints, tear it down even if the last sync fails (else it is kept)."""
        raise NotImplementedError


def _glob_files(base: Path, pattern: str) -> list[Path]:
    """The files a data.sources glob names, as data prep reads it (relative to the job's folder)."""
    full = Path(pattern).expanduser()
    return [Path(p) for p in glob.glob(str(full if full.is_absolute() else base / full), recursive=True)
            if Path(p).is_file()]


def get_backend(cloud: str) -> Backend:
    """The registered backend of a cloud name (launcher.backends)."""
    from launcher.backends import get_backend as registered

    return registered(cloud)
