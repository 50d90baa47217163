"""`--cloud local --docker`: run a job inside the GPU image on this machine's Docker engine.

The point is to run exactly what a cloud machine runs (the same image, the same entry command,
host networking as SkyPilot uses) before paying for one. `submit` builds the image if its content
tag is missing (launcher/build.py; unchanged code costs nothing), then starts one detached
container:

    python -m trainers.entry OUT/job.yaml --out OUT --base-dir JOB_DIR

Folders are mounted at the same paths inside as outside (the run folder read-write, the job file's
folder and any data or model path read-only), so every path in the job means the same thing in
the container as on the host. The container runs as the calling user, so the run folder stays
theirs. Secrets are passed as environment at run time only, never into the image.

The local backend (launcher/backends/local.py) delegates here when `resources.docker` is true.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from launcher import state
from launcher.backends.base import Backend, BackendError
from launcher.sync import SyncResult
from launcher.errors import EXIT_STOPPED
from launcher.spec import write_resolved

STOP_GRACE_S = 180  # the same grace as a bare local job: the trainer saves a checkpoint first
LABEL = "launcher.job"


def _client():
    from launcher.build import BuildError, docker_client

    try:
        return docker_client()
    except BuildError as e:
        raise BackendError(str(e)) from None


def _container(client, job):
    import docker.errors

    cid = job.extra.get("container")
    if not cid:
        return None
    try:
        return client.containers.get(cid)
    except docker.errors.NotFound:
        return None


def _mounts(spec, out: Path, base: Path) -> dict[str, dict]:
    """Host folders the job reads or writes, each mounted at the same path in the container."""
    ro: set[Path] = {base}
    for _field, _value, p in spec.local_inputs(base):
        ro.add(p if p.is_dir() else p.parent)
    volumes = {str(p.resolve()): {"bind": str(p.resolve()), "mode": "ro"} for p in ro if p.exists()}
    volumes[str(out.resolve())] = {"bind": str(out.resolve()), "mode": "rw"}
    return volumes


def _environment(spec) -> dict[str, str]:
    env = dict(spec.env)
    env.update({k: os.environ[k] for k in spec.secrets if os.environ.get(k)})
    # No passwd entry for the calling uid in the image: give the job a writable home.
    # PYTHONSAFEPATH: the working folder (the job's) is never a place our modules are imported from
    env.update({"HOME": "/tmp", "HF_HOME": "/tmp/hf", "PYTHONUNBUFFERED": "1", "PYTHONSAFEPATH": "1"})
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "WANDB_MODE"):
        if k in os.environ and k not in env:
            env[k] = os.environ[k]
    return env


class LocalDockerBackend(Backend):
    """Not a cloud of its own (so not registered): `cloud: local` with `resources.docker` set."""

    name = "local-docker"
    cannot = {
        "tpu": "cloud local --docker runs the GPU image; TPU jobs run on Google Cloud: --tpu v3-8",
        "spot": "cloud local --docker cannot do spot machines: drop --spot",
        "multi_node": "cloud local --docker is one machine: resources.num_nodes must be 1",
        "region": "cloud local --docker cannot choose a region or zone: drop --region/--zone",
        "idle": "cloud local --docker tears no machine down: drop --idle-minutes (resources.idle_minutes)",
        "bucket": "cloud local --docker writes checkpoints to the run folder on this machine and uploads to no bucket: "
                  "drop outputs.bucket",
    }

    def _plan(self, job_or_none, spec, job_file: Path):
        base = job_file.resolve().parent
        out = spec.output_dir(base).resolve()
        model_cache = Path(os.environ.get("LAUNCHER_MODEL_CACHE", state.home() / "models")).expanduser().resolve()
        volumes = _mounts(spec, out, base)
        volumes[str(model_cache)] = {"bind": "/launcher/models", "mode": "rw"}
        command = ["python", "-m", "trainers.entry", str(out / "job.yaml"), "--out", str(out), "--base-dir", str(base)]
        return out, base, volumes, command

    def dry_run(self, spec, job_file: Path, *, fresh: bool = False) -> str:
        from launcher.build import content_tag, repository

        out, base, volumes, command = self._plan(None, spec, Path(job_file))
        secrets = {k: ("***" if os.environ.get(k) else "(not set)") for k in spec.secrets}
        mounts = " ".join(f"-v {h}:{v['bind']}:{v['mode']}" for h, v in sorted(volumes.items()))
        lines = ["# cloud local --docker: runs inside the GPU image on the local Docker engine",
                 f"# image: {repository(spec)}:{content_tag(spec)} (built first if missing)",
                 f"# output: {out}",
                 f"# docker run --net=host --user {os.getuid()}:{os.getgid()} {mounts} IMAGE {' '.join(command)}",
                 "# secrets from your environment: " + (", ".join(f"{k}={v}" for k, v in secrets.items()) or "none"),
                 "# valid: yes", spec.to_yaml()]
        return "\n".join(lines)

    def submit(self, job, spec, *, detach: bool = True):
        from launcher.build import BuildError, build

        self.check(spec)
        job_file = Path(job.extra.get("job_file") or Path(job.output_dir) / "job.yaml")
        client = _client()
        try:
            image = build(spec, push=False, progress=True)
        except BuildError as e:
            raise BackendError(str(e)) from None
        out, base, volumes, command = self._plan(job, spec, job_file)
        from launcher import runlock

        owner = runlock.holder(out)  # the entry command in the container takes the lock itself
        if owner:
            raise runlock.FolderBusy(out, None if owner == "?" else owner)
        (out / "logs").mkdir(parents=True, exist_ok=True)
        write_resolved(spec, out)
        env = _environment(spec)
        env["LAUNCHER_MODEL_CACHE"] = "/launcher/models"
        env["LAUNCHER_JOB_ID"] = job.id
        device_requests = None
        if spec.resources.accelerators:  # a GPU: needs the NVIDIA container toolkit, as on a cloud VM
            from docker.types import DeviceRequest

            device_requests = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
        import docker.errors

        try:
            container = client.containers.run(
                image.tagged, command, detach=True, name=f"launcher-{job.id}", labels={LABEL: job.id},
                volumes=volumes, environment=env, network_mode="host", user=f"{os.getuid()}:{os.getgid()}",
                working_dir=str(out), device_requests=device_requests, shm_size="1g",
            )
        except docker.errors.APIError as e:
            raise BackendError(f"docker could not start the job: {str(e.explanation or e).splitlines()[0]}") from None
        return state.transition(job.id, "PREPARING", started=time.time(), cluster=None,
                            log_path=str(out / "logs" / "job.log"),
                            extra={**job.extra, "docker": True, "container": container.id, "image": image.tagged})

    def status(self, job):
        if job.done:
            return job
        client = _client()
        container = _container(client, job)
        if container is None:
            return state.transition(job.id, "FAILED", extra={**job.extra, "error": "its container disappeared"})
        container.reload()
        if container.status in ("created", "running", "restarting", "paused"):
            try:  # the entry command in the container says which stage it is in
                if (Path(job.output_dir) / ".stage").read_text().strip() == "training":
                    return state.transition(job.id, "TRAINING")
            except OSError:
                pass
            return job
        code = container.attrs["State"]["ExitCode"]
        self._save_logs(container, job)
        final = "SUCCEEDED" if code == 0 else "STOPPED" if (code == EXIT_STOPPED or job.state == "STOPPING") else "FAILED"
        extra = dict(job.extra)
        if final == "FAILED":
            from launcher.backends.local import failure_reason

            extra["error"] = failure_reason(code, Path(job.output_dir), Path(job.log_path) if job.log_path else None)
        job = state.transition(job.id, final, exit_code=code, extra=extra)
        container.remove(force=True)
        return job

    def _save_logs(self, container, job) -> None:
        path = Path(job.log_path or Path(job.output_dir) / "logs" / "job.log")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(container.logs(stdout=True, stderr=True))

    def logs(self, job, *, follow: bool = False) -> int:
        client = _client()
        container = _container(client, job)
        if container is None:  # finished and removed: its output was saved in the run folder
            path = Path(job.log_path or Path(job.output_dir) / "logs" / "job.log")
            if path.exists():
                sys.stdout.write(path.read_text(errors="replace"))
            return self.status(state.get(job.id)).exit_code or 0
        if follow:
            for chunk in container.logs(stream=True, follow=True):
                sys.stdout.write(chunk.decode("utf-8", "replace"))
                sys.stdout.flush()
            return self.status(state.get(job.id)).exit_code or 0
        sys.stdout.write(container.logs().decode("utf-8", "replace"))
        return 0

    def sync(self, job, to: Path, *, watch: bool = False) -> SyncResult:
        # The run folder is a bind mount: the files are already on this machine.
        from launcher.sync import sync_run_folder

        return sync_run_folder(Path(job.output_dir), Path(to), job.id)

    def down(self, job, *, force=False):
        job = self.status(job)
        if job.done:
            return job
        client = _client()
        container = _container(client, job)
        state.transition(job.id, "STOPPING")
        if container is not None:
            container.stop(timeout=STOP_GRACE_S)  # SIGTERM: the trainer saves and exits 75, else SIGKILL
        return self.status(state.get(job.id))


BACKEND = LocalDockerBackend()
