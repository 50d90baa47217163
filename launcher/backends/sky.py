"""The SkyPilot-backed backend shared by every rented-machine cloud (Lambda, RunPod, AWS, GCP, Slurm).

A job spec becomes a SkyPilot task (from `task_templates/gpu.yaml` or `tpu.yaml`), is validated by
SkyPilot's schema and optimizer before anything is spent, and is launched on a cluster named
`launcher-<job id>`, recorded in our state store before provisioning starts (`down --idle/--all`
act only on clusters recorded there, never on a name pattern), with
autostop after the job's idle minutes and `down=True`: Lambda, RunPod, spot machines and TPU VMs
cannot be stopped, only torn down (SkyPilot accepts a plain autostop there and then hangs in
"autostopping"), and a stopped VM still bills its disk. `--spot` goes through SkyPilot managed
jobs, which relaunch a preempted job; the trainer then resumes from the newest checkpoint in
the job's bucket.

The node runs the fully resolved job (`launcher.spec.write_resolved`: every command-line override
applied), which travels as a file mount to `.launcher/job.yaml` in the workdir; the user's own
job file travels with the workdir but is never run.

Per-cloud modules (`lambda_.py`, `runpod.py`, ...) subclass this with their name and what they
cannot do. Only `launcher.sky_api` imports SkyPilot.
"""
from __future__ import annotations

import importlib.util
import os
import re
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
# Where the resolved job file lands on the node, relative to the workdir: SkyPilot copies it there
# (a file mount) after the workdir, so the user's own job file is uploaded too but never run.
NODE_JOB = ".launcher/job.yaml"
# A run folder at home smaller than this may travel with the workdir (logs, a prepared data
# report); above it, `check_travels` asks for it to be left out of the upload.
UPLOAD_WARN_BYTES = 50_000_000
PID_FILE = "entry.pid"  # in the run folder on the node: `down` sends SIGTERM to this process
STOP_TIMEOUT_S = int(os.environ.get("LAUNCHER_STOP_TIMEOUT", "600"))  # `down`: wait this long for the stop checkpoint

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


def _spec_of(job: "Job") -> "JobSpec":
    """The job as it was submitted (the record keeps its resolved spec)."""
    from launcher.spec import JobSpec

    return JobSpec.model_validate(yaml.safe_load(job.spec_yaml))


def _bytes(folder: Path) -> int:
    """What a folder uploads: its files, not what its links point to."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def cluster_name(job_id: str) -> str:
    from launcher.sky_api import PREFIX

    return f"{PREFIX}{job_id}"


# module -> the distribution that installs it, where the names differ
_DIST = {"flash_attn": "flash-attn", "llama_cpp": "llama-cpp-python", "tensorboardX": "tensorboardx"}


def _image_packages() -> set[str] | None:
    """The distributions the GPU image installs (its pins), or None where the file is not at hand."""
    pins = Path(__file__).resolve().parents[2] / "images" / "gpu" / "requirements.txt"
    try:
        lines = pins.read_text().splitlines()
    except OSError:
        return None
    names = (re.split(r"[=<>!~\[; ]", ln.strip(), maxsplit=1)[0] for ln in lines)
    return {n.lower().replace("_", "-") for n in names if n and not n.startswith(("#", "-"))}


def _link_outside(folder: Path, base: Path) -> Path | None:
    """The first link under `folder` (a file or a folder) that points outside `base`."""
    for root, dirs, files in os.walk(folder):
        for name in sorted(dirs) + sorted(files):
            p = Path(root) / name
            if p.is_symlink() and not Path(os.path.realpath(p)).is_relative_to(base):
                return p
    return None


class SkyBackend(Backend):
    name: ClassVar[str]
    infra: ClassVar[str]  # SkyPilot's name for the cloud
    uses_image: ClassVar[bool] = True  # Slurm has no container: the entry runs on the node
    needs_modules = ("sky",)
    rents_machines = True
    needs_accelerators: ClassVar[bool] = True  # a rented machine without a GPU/TPU is a mistake that bills

    # -- rendering ---------------------------------------------------------------------------
    def secret_values(self, spec: "JobSpec") -> dict[str, str]:
        """The job's secrets that are set in this shell (values never leave memory but to SkyPilot)."""
        names = list(spec.secrets)
        if all(os.environ.get(n) for n in REGISTRY_SECRETS):
            names += [n for n in REGISTRY_SECRETS if n not in names]
        return {n: os.environ[n] for n in names if os.environ.get(n)}

    def image(self, spec: "JobSpec", job_file: Path | str = "JOB.yaml") -> str | None:
        if not self.uses_image:
            return None
        try:
            from launcher.build import recorded_image
        except ImportError as e:
            raise BackendError(f"cloud {self.name} runs the job in its image, but image builds are unavailable ({e})") from None
        ref = recorded_image(spec)
        if not ref:
            raise BackendError(f"image for job {spec.name} was never built: run `launcher build {job_file} --push` first")
        return ref

    def infra_string(self, spec: "JobSpec") -> str:
        r = spec.resources
        parts = [self.infra, r.region or ("*" if r.zone else None), r.zone]
        return "/".join(p for p in parts if p)

    def autodown(self, spec: "JobSpec") -> bool:
        # Every cloud here either cannot stop (Lambda, RunPod, spot, TPU) or bills a stopped
        # machine's disk; checkpoints come home first (sync before down), so always tear down.
        return True

    def render(self, spec: "JobSpec", job_file: Path, *, secrets: dict[str, str], image: str | None,
               resolved: Path, resume: bool = True) -> dict:
        """The SkyPilot task (a plain dict) for `spec`; `job_file` is the user's job file (its folder is
        the workdir), `resolved` the fully resolved job (`launcher.spec.write_resolved`), which the
        node runs: every command-line override reaches the machine."""
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
        if not r.is_tpu and self.uses_image and (plan := self.disk_plan(spec, job_file)):
            needed, parts = plan
            total = sum(parts.values()) / 1e9
            if "disk_size" not in r.model_fields_set:
                res["disk_size"] = max(r.disk_size, needed)
            elif r.disk_size < total:
                raise BackendError(f"resources.disk_size: {r.disk_size} GB is less than the {total:.0f} GB this run "
                                   f"needs on the machine ({', '.join(f'{k} {v / 1e9:.0f}' for k, v in parts.items())}); "
                                   f"raise it to {needed}, or lower train.save_total_limit")
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
        envs["LAUNCHER_JOB"] = NODE_JOB
        task["file_mounts"] = {NODE_JOB: str(resolved)}
        envs["LAUNCHER_OUT"] = f"{NODE_OUT}/{spec.name}"
        home_ckpt = self.home_checkpoint(spec, job_file) if resume else None
        if home_ckpt is not None:  # the trainer finds it in its run folder and resumes from it
            task["file_mounts"][f"{NODE_OUT}/{spec.name}/checkpoints/{home_ckpt.name}"] = str(home_ckpt)
        envs["LAUNCHER_PYTHON"] = self.node_python()
        task["secrets"] = dict(secrets)
        if not task["secrets"]:
            del task["secrets"]
        return task

    def node_python(self) -> str:
        return "python3"

    def home_checkpoint(self, spec: "JobSpec", job_file: Path) -> Path | None:
        """The newest complete checkpoint synced home from an earlier run of this job, which a new
        machine resumes from: a job whose machine was lost (preempted, died, torn down by hand) and
        is submitted again continues where its checkpoints at home end, as a local job does. With
        a bucket the trainer fetches from the bucket instead; the TPU trainer resumes from EasyLM's
        own train state in its gs:// bucket."""
        if spec.outputs.bucket or spec.resources.is_tpu:
            return None
        from launcher.manifest import latest_complete

        return latest_complete(spec.output_dir(job_file.resolve().parent) / "checkpoints")

    def _resume_line(self, ckpt: Path) -> str:
        return (f"resumes from {ckpt.name} synced home ({ckpt}, {_bytes(ckpt) / 1e6:.0f} MB), uploaded with the job; "
                "to start over instead, submit with --fresh")

    # -- the Backend interface ---------------------------------------------------------------
    def check(self, spec: "JobSpec") -> None:
        super().check(spec)
        if spec.resources.cloud != self.name:
            raise BackendError(f"resources.cloud is {spec.resources.cloud}, not {self.name}")
        if spec.resources.docker:
            raise BackendError("resources.docker: only for cloud local; cloud jobs always run in the image")
        bucket = spec.outputs.bucket
        if bucket and not bucket.startswith(("s3://", "gs://")):
            raise BackendError(f"outputs.bucket: {bucket} is a folder on the {self.name} machine, which goes with the "
                               "machine (preempted or torn down); give a bucket: s3://BUCKET/PREFIX or gs://BUCKET/PREFIX")
        if spec.resources.spot and not spec.outputs.bucket:
            kinds = "gs://..." if "gpu" in self.cannot else "s3://... or gs://..."  # a TPU resumes from gs:// only
            raise BackendError("resources.spot: a preempted job is relaunched on a new machine and resumes from "
                               f"the checkpoints in its bucket; set outputs.bucket ({kinds})")
        if not spec.resources.accelerators and self.needs_accelerators:
            example = "--tpu v3-8" if "gpu" in self.cannot else "--gpus A100:1"
            raise BackendError(f"cloud {self.name}: resources.accelerators is empty; give one, e.g. {example}")
        if self.uses_image and spec.resources.accelerators and not spec.resources.is_tpu:
            self._check_trainer(spec)

    def _check_trainer(self, spec: "JobSpec") -> None:
        """What the GPU trainer would refuse when it starts on the machine (a setting its image has
        no package for, bf16 on a GPU without it, FSDP of an adapter), refused before the machine
        is rented and the data prepared on it, not after."""
        from launcher.estimate import GPUS
        from trainers.gpu.train import InputError, check_method, resolve_attention, resolve_precision

        packages = _image_packages()
        installed = (lambda m: _DIST.get(m, m) in packages) if packages is not None else (lambda m: True)
        gpu = GPUS.get((spec.resources.accelerator_name or "").lower())
        try:
            check_method(spec, cuda=True, installed=lambda m: True)  # what no machine would take
            resolve_precision(spec.train.precision, cuda=True, bf16_ok=gpu.bf16 if gpu else True)
        except InputError as e:
            raise BackendError(f"{e} (on {spec.resources.accelerators})") from None
        try:
            check_method(spec, cuda=True, installed=installed)
            resolve_attention(spec.train.attn_implementation, cuda=True, installed=installed)
        except InputError as e:
            raise BackendError(f"{e} (in the GPU image (images/gpu/requirements.txt))") from None

    def disk_plan(self, spec: "JobSpec", job_file: Path) -> tuple[int, dict[str, float]] | None:
        """The GPU machine's disk need (launcher.estimate.gpu_disk_plan); None when the model's
        config cannot be had here (offline): the disk then stays as set."""
        from launcher import estimate

        try:
            shape = estimate.model_shape(spec.model, job_file.resolve().parent, exact=False)
        except estimate.EstimateError:
            return None
        return estimate.gpu_disk_plan(shape, spec)

    def check_travels(self, spec: "JobSpec", job_file: Path) -> None:
        """Local data and model paths must lie in the job file's folder: that folder (the task's
        workdir) is all that is uploaded, and a path outside it would fail only on the paid machine.
        And the run folder at home must not travel with it: by default (`runs/{name}`) it lies in
        that folder, and after a first run it holds checkpoints and a final model, which a second
        submit would upload whole, for nothing (the node writes its own run folder)."""
        base = job_file.resolve().parent
        for field, value, path in spec.local_inputs(base):
            if path != base and base not in path.parents:
                raise BackendError(f"{field}: {value} is outside {base}, the job file's folder, which is all that "
                                   f"travels to the {self.name} machine; move it into that folder")
        self._left_behind(spec, job_file)
        home = spec.output_dir(base).resolve()
        if base not in home.parents or not home.is_dir():
            return
        size = _bytes(home)
        if size < UPLOAD_WARN_BYTES:
            return
        from launcher import sky_api

        rel = home.relative_to(base)
        excluded = sky_api.upload_excluded(base)
        if any(p.as_posix() in excluded for p in (rel, *rel.parents) if p != Path(".")):
            return
        raise BackendError(f"outputs.dir: {rel} ({size / 1e6:.0f} MB of an earlier run) lies in {base}, the job "
                           f"file's folder, which is uploaded whole to the {self.name} machine; keep it out of the "
                           f"upload with a line `/{rel.parts[0]}/` in {base / '.skyignore'} (or in .gitignore, in a git "
                           f"repository), or set outputs.dir to a folder outside it")

    def check_inputs(self, spec: "JobSpec", job_file: Path) -> None:
        super().check_inputs(spec, job_file)
        if importlib.util.find_spec("sky") is not None:  # without SkyPilot the CLI refuses this cloud next
            self.check_travels(spec, job_file)

    def _left_behind(self, spec: "JobSpec", job_file: Path) -> None:
        """An input the workdir's .skyignore (or .gitignore) leaves out of the upload is missing on
        the machine: refused here rather than after the machine is paid for."""
        from launcher.backends.base import _glob_files

        base = job_file.resolve().parent
        inside = [(f, v, p) for f, v, p in spec.local_inputs(base) if p == base or base in p.parents]
        if not inside:
            return
        from launcher import sky_api

        excluded = sky_api.upload_excluded(base)

        def out(p: Path) -> bool:
            rel = p.resolve().relative_to(base)
            return any(q.as_posix() in excluded for q in (rel, *rel.parents) if q != Path("."))

        for field, value, path in inside:
            files = _glob_files(base, value) if any(c in value for c in "*?[") else []
            if out(path) or (files and all(out(f) for f in files)):
                ignore = base / ".skyignore" if (base / ".skyignore").exists() else "git's ignore rules (.gitignore)"
                raise BackendError(f"{field}: {value} is left out of the upload to the {self.name} machine by "
                                   f"{ignore}, so the job would not find it there; take it out of the upload's exclusions")
            link = _link_outside(path, base) if path.is_dir() else None
            if link is not None:
                # the upload (rsync -a) carries a link as a link: on the machine it points at nothing
                raise BackendError(f"{field}: {link.relative_to(base)} is a link to {os.path.realpath(link)}, outside "
                                   f"{base}; the upload to the {self.name} machine carries the link, not what it points "
                                   "to: copy or move that data into the folder")

    def validate(self, spec: "JobSpec", job_file: Path, *, secrets: dict[str, str], image: str | None,
                 resolved: Path, resume: bool = True) -> tuple[dict, dict]:
        from launcher import sky_api

        self.check_travels(spec, job_file)
        task = self.render(spec, job_file, secrets=secrets, image=image, resolved=resolved, resume=resume)
        try:
            plan = sky_api.validate(task, optimize=self.optimize_offline)
        except sky_api.SkyError as e:
            raise BackendError(f"cloud {self.name}: {e}") from None
        return task, plan

    optimize_offline: ClassVar[bool] = True  # Slurm's "catalog" is the live cluster: validated at launch

    def dry_run(self, spec: "JobSpec", job_file: Path, *, fresh: bool = False) -> str:
        """The rendered SkyPilot task with secrets masked, the job file the machine will run, and
        SkyPilot's verdict on it."""
        from launcher import state
        from launcher.spec import write_resolved

        secrets = {k: MASK for k in self.secret_values(spec)}
        image, image_note = self._image_or_placeholder(spec, job_file)
        resolved = write_resolved(spec, state.home() / "dry-run" / spec.name)
        task, plan = self.validate(spec, Path(job_file), secrets=secrets, image=image, resolved=resolved,
                                   resume=not fresh)
        missing = [n for n in spec.secrets if n not in secrets]
        lines = [f"# SkyPilot task for job {spec.name} on {self.name} (secrets masked)", yaml.safe_dump(task, sort_keys=False).rstrip()]
        lines.append(f"# {NODE_JOB}, the job file the machine runs (every override applied, secrets only named):")
        lines += [f"#| {l}" for l in resolved.read_text().splitlines()]
        lines.append("# validation: schema OK" + (f"; optimizer OK: {plan['resources']}" if "instance" in plan else ""))
        if plan.get("price_per_hour") is not None:
            lines.append(f"# price: ${plan['price_per_hour']:.2f}/hour from the catalog")
        disk = None if spec.resources.is_tpu or not self.uses_image else self.disk_plan(spec, Path(job_file))
        if disk:
            lines.append(f"# disk: {task['resources']['disk_size']} GB; at its fullest the run holds "
                         + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in disk[1].items()) + " GB")
        if image_note:
            lines.append(image_note)
        lines += self._command_lines(spec)
        home_ckpt = None if fresh else self.home_checkpoint(spec, Path(job_file))
        if home_ckpt is not None:
            lines.append(f"# {self._resume_line(home_ckpt)}")
        if spec.resources.spot:
            lines.append(f"# --spot: a SkyPilot managed job. When the machine is preempted, SkyPilot's jobs controller "
                         f"relaunches it on a new one, and the trainer resumes from the newest complete checkpoint "
                         f"in {spec.outputs.bucket}; `launcher down JOB` cancels it")
        if missing:
            lines.append(f"# not set in your shell, so not passed: {', '.join(missing)}")
        lines.append("# nothing was launched")
        return "\n".join(lines)

    def _command_lines(self, spec: "JobSpec") -> list[str]:
        """The commands the node runs, as the dry run shows them."""
        out = f"{NODE_OUT}/{spec.name}"
        lines = [f"# on the machine: python -m trainers.entry {NODE_JOB} --out {out} --base-dir .",
                 f"#   1. python -m dataprep {out}/job.yaml --out {out}/data --base-dir ."]
        if spec.resources.is_tpu:
            from trainers.tpu.flags import tpu_shape

            devices, hosts = tpu_shape(spec.resources.accelerators)
            lines.append(f"#   2. python -m trainers.tpu.train {out}/job.yaml --data {out}/data --out {out}   "
                         f"(EasyLM full fine-tune on {devices} devices, {hosts} host(s); its flags are written to "
                         f"{out}/tpu/flags.txt before it starts)")
        else:
            lines.append(f"#   2. python -m trainers.gpu.train {out}/job.yaml --data {out}/data --out {out}   "
                         f"(under `accelerate launch` for several GPUs or nodes)")
        return lines

    def _image_or_placeholder(self, spec: "JobSpec", job_file: Path) -> tuple[str | None, str | None]:
        """The built image; for a dry run, a placeholder that still validates when none is built yet,
        and a line saying what to run first."""
        if not self.uses_image:
            return None, None
        try:
            ref = self.image(spec, job_file)
            return ref, f"# image: built and pushed ({ref})"
        except BackendError as e:
            placeholder = f"{spec.image.registry or 'REGISTRY'}/{spec.image.name}:NOT-BUILT-YET"
            return placeholder, (f"# image: NOT built and pushed yet ({e}); the machine pulls it, so "
                                 f"`launcher build {job_file} --push` must run before submit"
                                 + ("" if spec.image.registry else " (set image.registry first)"))

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
        from launcher.spec import write_resolved

        job_file = Path(job.extra.get("job_file") or "job.yaml")
        self.check(spec)
        image = self.image(spec, job_file)
        secrets = self.secret_values(spec)
        resolved = write_resolved(spec, state.home() / "jobs" / job.id)
        task, plan = self.validate(spec, job_file, secrets=secrets, image=image, resolved=resolved)
        self.preflight(spec)
        home_ckpt = self.home_checkpoint(spec, job_file)
        if home_ckpt is not None:
            from launcher import sync as sync_lib

            # This job continues the run at home: its checkpoints come back into the same folder.
            # Handed over before the launch, not after: a Ctrl-C during it leaves SkyPilot launching
            # in the background, and that job's checkpoints must still be let in here.
            sync_lib.hand_over(home_ckpt.parent.parent, job.id)
            print(f"{job.id}: {self._resume_line(home_ckpt)}", file=sys.stderr, flush=True)
        cluster = cluster_name(job.id)
        price = plan.get("price_per_hour")
        # The record names the cluster before anything is provisioned: from here on, whatever
        # happens to this process, `status`, `down JOB` and `down --idle` can find the machine.
        job = state.update(job.id, cluster=cluster, price_per_hour=price, accelerators=spec.resources.accelerators,
                           state="PENDING", started=time.time(),
                           extra=dict(job.extra, node_out=task["envs"]["LAUNCHER_OUT"], managed=bool(spec.resources.spot),
                                      resolved_job=str(resolved)))

        def record_request(rid: str) -> None:
            state.update(job.id, extra=dict(state.get(job.id).extra, launch_request=rid))

        try:
            if spec.resources.spot:
                sky_job = sky_api.jobs_launch(task, cluster, on_request=record_request)
            else:
                sky_job, _ = sky_api.launch(task, cluster, idle_minutes=spec.resources.idle_minutes,
                                            down=self.autodown(spec), on_request=record_request)
        except sky_api.SkyError as e:
            return self._failed_launch(state.get(job.id), e)
        except BaseException:  # Ctrl-C: SkyPilot's API server goes on launching without us
            print(f"{job.id}: SkyPilot goes on launching cluster {cluster} in the background, and it bills until "
                  f"it is down: `launcher status {job.id}` shows it, `launcher down {job.id}` stops it and takes "
                  f"it down", file=sys.stderr, flush=True)
            raise
        job = state.update(job.id, extra=dict(state.get(job.id).extra, sky_job_id=sky_job))
        print(f"{job.id}: SkyPilot job {sky_job} on cluster {cluster}"
              + (f", ${price:.2f}/hour" if price is not None else ""), file=sys.stderr, flush=True)
        return job

    def _failed_launch(self, job: "Job", err: Exception) -> "Job":
        """A launch that failed part-way may have left a machine (with no autostop yet: SkyPilot
        sets it last). One that runs our job is kept; one that does not is taken down here."""
        from launcher import sky_api, state

        if job.extra.get("managed"):
            state.update(job.id, state="FAILED", ended=time.time())
            raise BackendError(str(err)) from None
        try:
            alive = bool(sky_api.clusters([job.cluster]))
            jobs = sky_api.queue(job.cluster) if alive else []
        except sky_api.SkyError:
            alive, jobs = True, []
        if jobs:  # the job was submitted before the failure: it runs, and autostop is set
            sky_job = max(j["job_id"] for j in jobs)
            print(f"{job.id}: {err}; the job was submitted all the same (SkyPilot job {sky_job})", file=sys.stderr)
            return state.update(job.id, extra=dict(job.extra, sky_job_id=sky_job))
        if alive:
            print(f"{job.id}: launch failed ({err}); taking cluster {job.cluster} down", file=sys.stderr, flush=True)
            try:
                sky_api.down(job.cluster)
            except sky_api.SkyError as e2:
                state.update(job.id, state="FAILED", ended=time.time())
                raise BackendError(f"{err}; and cluster {job.cluster} could not be taken down ({e2}): it may still "
                                   f"bill; retry with `launcher down {job.id}`") from None
        state.update(job.id, state="FAILED", ended=time.time(), extra=dict(job.extra, finalized=True))
        raise BackendError(str(err)) from None

    def _adopt(self, job: "Job") -> tuple["Job", str | None]:
        """A job whose submit was interrupted before SkyPilot answered: what became of its launch?
        Returns the job (with `sky_job_id` once SkyPilot has one) and a state when it has none."""
        from launcher import sky_api, state

        if job.extra.get("managed"):
            found = [j for j in sky_api.jobs_queue() if j.get("job_name") == job.cluster]
            if found:
                sky_job = max(j["job_id"] for j in found)
                return state.update(job.id, extra=dict(job.extra, sky_job_id=sky_job)), None
        elif job.cluster and sky_api.clusters([job.cluster]):
            try:
                jobs = sky_api.queue(job.cluster)
            except sky_api.SkyError:
                jobs = []  # still provisioning: no job table yet
            if jobs:
                sky_job = max(j["job_id"] for j in jobs)
                return state.update(job.id, extra=dict(job.extra, sky_job_id=sky_job)), None
            return job, "PREPARING"
        rid = job.extra.get("launch_request")
        if rid and sky_api.request_running(rid):
            return job, "PREPARING"
        if not rid and time.time() - job.created < 300:
            return job, "PENDING"  # its submit is still checking the request (another process)
        return job, "FAILED"  # the launch ended without a cluster or a job

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
                new = None
                if job.extra.get("sky_job_id") is None:
                    job, new = self._adopt(job)
                if new is None:
                    new = self._sky_state(job)
            except sky_api.SkyError as e:
                raise BackendError(str(e)) from None
            if new == "FAILED" and job.extra.get("sky_job_id") is None:
                return state.update(job.id, state="FAILED", ended=job.ended or time.time(),
                                    extra=dict(job.extra, finalized=True))
            if new is None:
                # The cluster is gone (autodown, or torn down outside the launcher) before we saw the end.
                bucket = _spec_of(job).outputs.bucket
                why = ("its cluster was gone before the launcher saw the job end (autodown after it ended, or the "
                       "machine was lost or taken down outside the launcher); if it had not finished, submit it "
                       f"again: it continues from its newest checkpoint {'in ' + bucket if bucket else 'synced home'}")
                return state.update(job.id, state="STOPPED", ended=job.ended or time.time(),
                                    extra=dict(job.extra, finalized=True, error=why))
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

        if job.extra.get("sky_job_id") is None and not job.done:
            job = self.status(job, finalize=False)  # a submit interrupted while launching: find its job
        sky_job = job.extra.get("sky_job_id")
        if sky_job is None and job.done:  # refused or failed before SkyPilot ran anything: there is no log
            why = job.reason or "it ended before SkyPilot started it"
            raise BackendError(f"{job.id} never ran on a machine, so it has no log ({job.state.lower()}: {why})")
        if sky_job is None:
            raise BackendError(f"{job.id} has no SkyPilot job yet (state {job.state}); try again in a minute")
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

        spec = _spec_of(job)
        sync_lib.claim(to, job.id)

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

    def down(self, job: "Job", *, force: bool = False) -> "Job":
        """Stop the job (SIGTERM: the trainer saves), bring its checkpoints home, tear the cluster down.

        A failed last sync keeps the cluster (nothing is lost) unless `force`.
        """
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
            rid = job.extra.get("launch_request")
            if job.extra.get("sky_job_id") is None and rid and sky_api.request_running(rid):
                print(f"{job.id}: cancelling its launch, still running in SkyPilot", file=sys.stderr, flush=True)
                sky_api.request_cancel(rid)
            alive = job.cluster and sky_api.clusters([job.cluster])
            if alive and not job.done and job.extra.get("sky_job_id") is not None:
                job = self._stop_and_wait(job)
            if alive:
                try:
                    self.sync(job, Path(job.output_dir))
                except BackendError as e:
                    if not force:
                        raise BackendError(
                            f"{job.id}: the last sync failed ({e}); cluster {job.cluster} is kept so that nothing is "
                            f"lost (it still bills): fix that, then `launcher down {job.id}` again, or "
                            f"`launcher down {job.id} --force` to tear it down anyway, losing what did not "
                            f"arrive") from None
                    print(f"{job.id}: the last sync failed ({e}); tearing down anyway (--force)", file=sys.stderr)
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

    def _stop_and_wait(self, job: "Job") -> "Job":
        """SIGTERM to the entry command on the node (it passes it on: the trainer saves a checkpoint
        and exits 75), then wait, bounded, for the job to end. SkyPilot's own cancel is the fallback:
        it also sends SIGTERM, but to the job driver, which does not wait for the trainer."""
        from launcher import sky_api, state

        print(f"{job.id}: stopping the trainer (SIGTERM); it saves a checkpoint before it exits",
              file=sys.stderr, flush=True)
        if not self._sigterm(job):
            try:
                sky_api.cancel(job.cluster, job.extra["sky_job_id"])
            except sky_api.SkyError as e:
                print(f"{job.id}: cancel failed ({e})", file=sys.stderr)
        t0 = last = time.time()
        ended = None
        while time.time() - t0 < STOP_TIMEOUT_S:
            try:
                ended = self._sky_state(job)
            except sky_api.SkyError:
                ended = None
            if ended is None or ended in ("SUCCEEDED", "FAILED", "CANCELLED"):
                break
            if time.time() - last >= 15:
                last = time.time()
                print(f"{job.id}: waiting for the stop checkpoint ({last - t0:.0f}s of at most {STOP_TIMEOUT_S}s)",
                      file=sys.stderr, flush=True)
            time.sleep(3)
        else:
            print(f"{job.id}: the trainer did not stop within {STOP_TIMEOUT_S}s; cancelling it", file=sys.stderr)
            try:
                sky_api.cancel(job.cluster, job.extra["sky_job_id"])
            except sky_api.SkyError as e:
                print(f"{job.id}: cancel failed ({e})", file=sys.stderr)
        done = "SUCCEEDED" if ended == "SUCCEEDED" else "CANCELLED"
        return state.update(job.id, state=done, ended=time.time(), exit_code=0 if done == "SUCCEEDED" else 75)

    def _sigterm(self, job: "Job") -> bool:
        """SIGTERM to the entry command, by the pid it left in its run folder, over SkyPilot's ssh alias."""
        import subprocess

        from launcher import sky_api

        pid_file = f"{self.remote_run_dir(job)}/{PID_FILE}"  # may hold a glob (Slurm): the remote shell expands it
        cmd = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "-F", str(sky_api.ssh_config(job.cluster)),
               job.cluster, f"kill -TERM $(cat {pid_file})"]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return False
        if p.returncode != 0:
            print(f"{job.id}: could not signal the trainer over ssh ({(p.stderr.strip().splitlines() or ['?'])[-1]}); "
                  f"asking SkyPilot to cancel the job", file=sys.stderr)
        return p.returncode == 0
