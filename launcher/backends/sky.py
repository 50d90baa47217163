"""The SkyPilot-backed backend shared by every rented-machine cloud (Lambda, RunPod, AWS, GCP, Slurm).

A job spec becomes a SkyPilot task (from `task_templates/gpu.yaml` or `tpu.yaml`), is validated by
SkyPilot's schema and optimizer before anything is spent, and is launched on a cluster named
`launcher-<job id>` (so `down --idle/--all` can tell ours from the user's other clusters), with
autostop after the job's idle minutes and `down=True`: Lambda, RunPod, spot machines and TPU VMs
cannot be stopped, only torn down (SkyPilot accepts a plain autostop there and then hangs in
"autostopping"), and a stopped VM still bills its disk. `--spot` goes through SkyPilot managed
jobs, which relaunch a preempted job; the trainer then resumes from its last checkpoint.

Per-cloud modules (`lambda_.py`, `runpod.py`, ...) subclass this with their name and what they
cannot do. Only `launcher.sky_api` imports SkyPilot.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import yaml

from launcher.backends.base import Backend, BackendError
from launcher.sync import SyncResult

if TYPE_CHECKING:
    from launcher.spec import JobSpec
    from launcher.state import Job

TEMPLATES = Path(__file__).resolve().parents[2] / "task_templates"
MASK = "****"
# Private registry logins SkyPilot reads for `image_id: docker:...`; all three go together.
REGISTRY_SECRETS = ("SKYPILOT_DOCKER_USERNAME", "SKYPILOT_DOCKER_PASSWORD", "SKYPILOT_DOCKER_SERVER")
NODE_OUT = ".launcher-out"  # the run folder on the node, inside the task's workdir

# SkyPilot job states -> ours (launcher/state.py).
_CLUSTER_JOB_STATES = {
    "INIT": "PENDING", "PENDING": "PENDING", "SETTING_UP": "PREPARING", "RUNNING": "RUNNING",
    "SUCCEEDED": "SUCCEEDED", "CANCELLED": "CANCELLED", "FAILED": "FAILED", "FAILED_SETUP": "FAILED",
    "FAILED_DRIVER": "FAILED",
}
_MANAGED_JOB_STATES = {
    "PENDING": "PENDING", "SUBMITTED": "PENDING", "STARTING": "PREPARING", "RUNNING": "RUNNING",
    "RECOVERING": "PREPARING", "CANCELLING": "STOPPING", "SUCCEEDED": "SUCCEEDED", "CANCELLED": "CANCELLED",
    "FAILED": "FAILED", "FAILED_SETUP": "FAILED", "FAILED_PRECHECKS": "FAILED", "FAILED_NO_RESOURCE": "FAILED",
    "FAILED_CONTROLLER": "FAILED",
}


def cluster_name(job_id: str) -> str:
    from launcher.sky_api import PREFIX

    return f"{PREFIX}{job_id}"


class SkyBackend(Backend):
    name: ClassVar[str]
    infra: ClassVar[str]  # SkyPilot's name for the cloud
    uses_image: ClassVar[bool] = True  # Slurm has no container: the entry runs on the node
    needs_modules = ("sky",)
    needs_accelerators: ClassVar[bool] = True  # a rented machine without a GPU/TPU is a mistake that bills

    # -- rendering ---------------------------------------------------------------------------
    def secret_values(self, spec: "JobSpec") -> dict[str, str]:
        """The job's secrets that are set in this shell (values never leave memory but to SkyPilot)."""
        names = list(spec.secrets)
        if all(os.environ.get(n) for n in REGISTRY_SECRETS):
            names += [n for n in REGISTRY_SECRETS if n not in names]
        return {n: os.environ[n] for n in names if os.environ.get(n)}

    def image(self, spec: "JobSpec") -> str | None:
        if not self.uses_image:
            return None
        try:
            from launcher.build import recorded_image
        except ImportError as e:
            raise BackendError(f"cloud {self.name} runs the job in its image, but image builds are unavailable ({e})") from None
        ref = recorded_image(spec)
        if not ref:
            raise BackendError(f"image for job {spec.name} was never built: run `launcher build JOB.yaml --push` first")
        return ref

    def infra_string(self, spec: "JobSpec") -> str:
        r = spec.resources
        parts = [self.infra, r.region or ("*" if r.zone else None), r.zone]
        return "/".join(p for p in parts if p)

    def autodown(self, spec: "JobSpec") -> bool:
        # Every cloud here either cannot stop (Lambda, RunPod, spot, TPU) or bills a stopped
        # machine's disk; checkpoints come home first (sync before down), so always tear down.
        return True

    def render(self, spec: "JobSpec", job_file: Path, *, secrets: dict[str, str], image: str | None) -> dict:
        """The SkyPilot task (a plain dict) for `spec`; `job_file` is the user's job file."""
        r = spec.resources
        template = "tpu.yaml" if r.is_tpu else "gpu.yaml"
        task = yaml.safe_load((TEMPLATES / template).read_text())
        res = task["resources"]
        task["name"] = spec.name
        res["infra"] = self.infra_string(spec)
        if r.accelerators:
            res["accelerators"] = r.accelerators
        else:
            del res["accelerators"]
        res["use_spot"] = bool(r.spot)
        res["disk_size"] = r.disk_size
        if image:
            res["image_id"] = f"docker:{image}"
        else:
            del res["image_id"]
        if r.spot:
            del res["autostop"]  # managed jobs: the jobs controller owns the cluster's lifetime
        else:
            res["autostop"] = {"idle_minutes": r.idle_minutes, "down": self.autodown(spec)}
        task["num_nodes"] = r.num_nodes
        task["workdir"] = str(job_file.resolve().parent)
        envs = task["envs"]
        envs.update({k: str(v) for k, v in spec.env.items()})
        envs["LAUNCHER_JOB"] = job_file.name
        envs["LAUNCHER_OUT"] = f"{NODE_OUT}/{spec.name}"
        envs["LAUNCHER_PYTHON"] = self.node_python()
        task["secrets"] = dict(secrets)
        if not task["secrets"]:
            del task["secrets"]
        return task

    def node_python(self) -> str:
        return "python3"

    # -- the Backend interface ---------------------------------------------------------------
    def check(self, spec: "JobSpec") -> None:
        super().check(spec)
        if spec.resources.cloud != self.name:
            raise BackendError(f"resources.cloud is {spec.resources.cloud}, not {self.name}")
        if spec.resources.docker:
            raise BackendError("resources.docker: only for cloud local; cloud jobs always run in the image")
        if spec.resources.spot and not spec.outputs.bucket:
            raise BackendError("resources.spot: a preempted job is relaunched on a new machine and resumes from "
                               "the checkpoints in its bucket; set outputs.bucket (s3://... or gs://...)")
        if not spec.resources.accelerators and self.needs_accelerators:
            raise BackendError(f"cloud {self.name}: resources.accelerators is empty; give one, e.g. --gpus A100:1")

    def check_travels(self, spec: "JobSpec", job_file: Path) -> None:
        """Local data and model paths must lie in the job file's folder: that folder (the task's
        workdir) is all that is uploaded, and a path outside it would fail only on the paid machine."""
        base = job_file.resolve().parent
        for field, value, path in spec.local_inputs(base):
            if path != base and base not in path.parents:
                raise BackendError(f"{field}: {value} is outside {base}, the job file's folder, which is all that "
                                   f"travels to the {self.name} machine; move it into that folder")

    def validate(self, spec: "JobSpec", job_file: Path, *, secrets: dict[str, str], image: str | None) -> tuple[dict, dict]:
        from launcher import sky_api

        self.check_travels(spec, job_file)
        task = self.render(spec, job_file, secrets=secrets, image=image)
        try:
            plan = sky_api.validate(task, optimize=self.optimize_offline)
        except sky_api.SkyError as e:
            raise BackendError(f"cloud {self.name}: {e}") from None
        return task, plan

    optimize_offline: ClassVar[bool] = True  # Slurm's "catalog" is the live cluster: validated at launch

    def dry_run(self, spec: "JobSpec", job_file: Path) -> str:
        """The rendered SkyPilot task with secrets masked, and SkyPilot's verdict on it."""
        secrets = {k: MASK for k in self.secret_values(spec)}
        image = self._image_or_placeholder(spec)
        task, plan = self.validate(spec, Path(job_file), secrets=secrets, image=image)
        missing = [n for n in spec.secrets if n not in secrets]
        lines = [f"# SkyPilot task for job {spec.name} on {self.name} (secrets masked)", yaml.safe_dump(task, sort_keys=False).rstrip()]
        lines.append("# validation: schema OK" + (f"; optimizer OK: {plan['resources']}" if "instance" in plan else ""))
        if plan.get("price_per_hour") is not None:
            lines.append(f"# price: ${plan['price_per_hour']:.2f}/hour from the catalog")
        if missing:
            lines.append(f"# not set in your shell, so not passed: {', '.join(missing)}")
        lines.append("# nothing was launched")
        return "\n".join(lines)

    def _image_or_placeholder(self, spec: "JobSpec") -> str | None:
        """The built image; for a dry run, a placeholder that still validates when none is built yet."""
        if not self.uses_image:
            return None
        try:
            return self.image(spec)
        except BackendError:
            return f"{spec.image.registry or 'REGISTRY'}/{spec.image.name}:NOT-BUILT-YET"

    def preflight(self, spec: "JobSpec") -> None:
        """Checks that need the user's account (credentials); run at submit, not at dry run."""
        from launcher import sky_api

        try:
            ok = sky_api.enabled_clouds(self.infra)
        except sky_api.SkyError as e:
            raise BackendError(str(e)) from None
        if not ok:
            raise BackendError(f"cloud {self.name} is not enabled in SkyPilot (no working credentials): "
                               f"set them up, then check with `sky check {self.infra}`")

    def submit(self, job: "Job", spec: "JobSpec", *, detach: bool = True) -> "Job":
        from launcher import sky_api, state

        job_file = Path(job.extra.get("job_file") or "job.yaml")
        self.check(spec)
        image = self.image(spec)
        secrets = self.secret_values(spec)
        task, plan = self.validate(spec, job_file, secrets=secrets, image=image)
        self.preflight(spec)
        cluster = cluster_name(job.id)
        extra = dict(job.extra, node_out=task["envs"]["LAUNCHER_OUT"], managed=bool(spec.resources.spot))
        price = plan.get("price_per_hour")
        try:
            if spec.resources.spot:
                sky_job = sky_api.jobs_launch(task, cluster)
            else:
                sky_job, _ = sky_api.launch(task, cluster, idle_minutes=spec.resources.idle_minutes,
                                            down=self.autodown(spec))
        except sky_api.SkyError as e:
            raise BackendError(str(e)) from None
        extra["sky_job_id"] = sky_job
        job = state.update(job.id, cluster=cluster, price_per_hour=price, accelerators=spec.resources.accelerators,
                           state="PENDING", started=time.time(), extra=extra)
        print(f"{job.id}: SkyPilot job {sky_job} on cluster {cluster}"
              + (f", ${price:.2f}/hour" if price is not None else ""), file=sys.stderr, flush=True)
        return job

    def _sky_state(self, job: "Job") -> str | None:
        from launcher import sky_api

        sky_job = job.extra.get("sky_job_id")
        if sky_job is None:
            return None
        if job.extra.get("managed"):
            raw = sky_api.jobs_status(sky_job)
            return _MANAGED_JOB_STATES.get(raw, raw) if raw else None
        raw = sky_api.job_status(job.cluster, sky_job)
        return _CLUSTER_JOB_STATES.get(raw, raw) if raw else None

    def status(self, job: "Job", *, finalize: bool = True) -> "Job":
        """Refresh from SkyPilot; a job seen ending is synced home and its cluster taken down."""
        from launcher import sky_api, state

        if not job.done:
            try:
                new = self._sky_state(job)
            except sky_api.SkyError as e:
                raise BackendError(str(e)) from None
            if new is None:
                # The cluster is gone (autodown, or torn down outside the launcher) before we saw the end.
                return state.update(job.id, state="STOPPED", ended=job.ended or time.time(),
                                    extra=dict(job.extra, finalized=True))
            changes: dict = {"state": new}
            if new == "RUNNING" and not job.extra.get("running_since"):
                changes["extra"] = dict(job.extra, running_since=time.time())
            if new in ("SUCCEEDED", "FAILED", "CANCELLED"):
                changes.update(ended=time.time(), exit_code=0 if new == "SUCCEEDED" else 1)
            job = state.update(job.id, **changes)
        # Also a job that an earlier look (a sync's) saw end without finalizing it.
        if finalize and job.done and not job.extra.get("finalized"):
            job = self._finalize(job)
        return job

    def _finalize(self, job: "Job") -> "Job":
        """A job just ended: bring its checkpoints home, then take its cluster down."""
        from launcher import sky_api, state

        if not job.extra.get("managed"):
            try:
                alive = bool(job.cluster) and bool(sky_api.clusters([job.cluster]))
            except sky_api.SkyError as e:
                raise BackendError(str(e)) from None
            if not alive:  # gone already: autodown, `down --idle`, or by hand
                return state.update(job.id, extra=dict(job.extra, finalized=True))
            try:
                self.sync(job, Path(job.output_dir))
            except BackendError as e:
                print(f"{job.id}: last sync failed ({e}); the cluster is kept for `launcher sync {job.id}`",
                      file=sys.stderr)
                return job
            try:
                sky_api.down(job.cluster)
            except sky_api.SkyError as e:
                print(f"{job.id}: {e}", file=sys.stderr)
        return state.update(job.id, extra=dict(job.extra, finalized=True))

    def logs(self, job: "Job", *, follow: bool = False) -> int:
        from launcher import sky_api

        sky_job = job.extra.get("sky_job_id")
        if sky_job is None:
            raise BackendError(f"{job.id} never reached SkyPilot (state {job.state}); nothing to show")
        try:
            if job.extra.get("managed"):
                return sky_api.jobs_tail_logs(sky_job, follow=follow)
            return sky_api.tail_logs(job.cluster, sky_job, follow=follow)
        except sky_api.SkyError as e:
            raise BackendError(str(e)) from None

    def checkpoints_only_on_machine(self, spec: "JobSpec") -> bool:
        # With a bucket the trainer uploads each checkpoint; a spot job without one is refused.
        return not spec.outputs.bucket and not spec.resources.spot

    def remote_run_dir(self, job: "Job") -> str:
        """The run folder on the node, relative to the ssh user's home (SkyPilot syncs workdir there)."""
        return f"sky_workdir/{job.extra.get('node_out', NODE_OUT)}"

    def sync(self, job: "Job", to: Path, *, watch: bool = False) -> SyncResult:
        from launcher import sky_api, sync as sync_lib
        from launcher.spec import JobSpec

        spec = JobSpec.model_validate(yaml.safe_load(job.spec_yaml))

        def done() -> bool:
            return self.status(job_now(), finalize=False).done

        def job_now() -> "Job":
            from launcher import state

            return state.get(job.id) or job

        if spec.outputs.bucket:
            from launcher.storage import join

            url = join(spec.outputs.bucket, spec.name)  # where the trainer uploads (BUCKET/JOB NAME/...)
            return sync_lib.sync_bucket(url, to, watch=watch, done=done)
        if job.extra.get("managed"):
            raise BackendError(f"{job.id} is a spot job without outputs.bucket: its checkpoints live only on a "
                               f"machine that can be preempted; set outputs.bucket to sync them")
        return sync_lib.sync_rsync(job.cluster, self.remote_run_dir(job), to,
                                   ssh_config=sky_api.ssh_config(job.cluster), watch=watch, done=done)

    def down(self, job: "Job") -> "Job":
        """Stop the job (SIGTERM: the trainer saves), bring checkpoints home, tear the cluster down."""
        from launcher import sky_api, state

        if not job.done:
            try:
                job = self.status(job, finalize=False)  # it may have ended since we last looked
            except BackendError:
                pass
        try:
            if job.extra.get("managed"):
                if job.extra.get("sky_job_id") is not None:
                    sky_api.jobs_cancel(job.extra["sky_job_id"])
                return state.update(job.id, state="CANCELLED", ended=job.ended or time.time(),
                                    extra=dict(job.extra, finalized=True))
            alive = job.cluster and sky_api.clusters([job.cluster])
            if alive and not job.done and job.extra.get("sky_job_id") is not None:
                try:  # SIGTERM: the trainer saves a checkpoint, which the sync below brings home
                    sky_api.cancel(job.cluster, job.extra["sky_job_id"])
                except sky_api.SkyError as e:
                    print(f"{job.id}: cancel failed ({e}); taking the cluster down all the same", file=sys.stderr)
            if alive:
                try:
                    self.sync(job, Path(job.output_dir))
                except BackendError as e:
                    print(f"{job.id}: sync before down failed: {e}", file=sys.stderr)
                try:
                    sky_api.down(job.cluster)
                except sky_api.SkyError:
                    if sky_api.clusters([job.cluster]):
                        raise  # else another `down` (a watcher's, autodown) finished first
        except sky_api.SkyError as e:
            raise BackendError(str(e)) from None
        new_state = job.state if job.done else "CANCELLED"
        return state.update(job.id, state=new_state, ended=job.ended or time.time(),
                            extra=dict(job.extra, finalized=True))
