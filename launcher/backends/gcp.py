"""Google Cloud TPU VMs through SkyPilot (`--tpu v3-8 --zone europe-west4-a`).

TPU Research Cloud grants quota per zone, so the zone can be pinned; `--spot` gives a
preemptible TPU (what TRC quotas usually are) through SkyPilot managed jobs. A TPU VM cannot be
stopped, only deleted, so autostop always tears it down.

Before launching, a preflight asks the TPU API (google-cloud-tpu) whether the accelerator type
is offered in the chosen zone for the user's project: a wrong zone fails in one line instead of
after minutes of provisioning retries.

Before anything is rendered, `tpu_report` checks the job against what the TPU trainer will do: every
`train:` field EasyLM cannot honour is refused; the model's config (a local folder, or a hub id's
config.json, fetched once and cached) gives the per-chip memory plan (`launcher.tpu_plan`), refused
with the smallest TPU that fits when nothing does; the disk plan sets `disk_size` (or refuses a
`resources.disk_size` too small for a run without a gs:// bucket); the dry-run shows all of it with
the hub download and the exact EasyLM command.
"""
from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from launcher.backends import register
from launcher.backends.base import BackendError
from launcher.backends.sky import NODE_OUT, SkyBackend
from launcher.tpu_plan import runtime_version

REPO = Path(__file__).resolve().parents[2]


@dataclass
class TpuReport:
    lines: list[str] = field(default_factory=list)
    disk_size: int | None = None


@register
class GCPBackend(SkyBackend):
    name = "gcp"
    summary = "Google Cloud TPU VMs (TPU Research Cloud grants included)"
    infra = "gcp"
    cannot = {
        "gpu": "cloud gcp is for TPU VMs here: give a TPU type (--tpu v3-8), or rent GPUs with --cloud lambda, runpod or aws",
        # Separate TPU VMs would each train the whole job into one train state; the hosts of a pod
        # slice are what trains as one here.
        "multi_node": "several TPU VMs do not train one job together: resources.num_nodes must be 1; for more chips "
                      "take a larger slice (e.g. --tpu v3-32, a pod of 4 hosts)",
    }

    def check(self, spec) -> None:
        super().check(spec)
        if not spec.resources.is_tpu:
            raise BackendError("cloud gcp is for TPU VMs here: give a TPU type, e.g. --tpu v3-8 --zone europe-west4-a")
        from trainers.tpu import flags as tpu_flags

        try:
            hosts = tpu_flags.tpu_shape(spec.resources.accelerators)[1]
        except tpu_flags.FlagError as e:
            raise BackendError(str(e)) from None
        try:
            tpu_flags.check_train_fields(spec)  # needs no model config: refused even when its config is unknown
        except tpu_flags.FlagError as e:
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

    def render(self, spec, job_file: Path, *, secrets: dict[str, str], image: str | None, resolved: Path,
               resume: bool = True) -> dict:
        report = tpu_report(spec, Path(job_file), hf_token=bool(secrets.get("HF_TOKEN")))
        task = super().render(spec, job_file, secrets=secrets, image=image, resolved=resolved, resume=resume)
        if report.disk_size:
            task["resources"]["disk_size"] = report.disk_size
        task["resources"]["accelerator_args"] = {"runtime_version": runtime_version(spec.resources.accelerators)}
        return task

    # The report is made again where it is shown (plain arithmetic on a cached config, no state
    # kept on the registry's shared backend between calls).
    def _report(self, spec, job_file: Path) -> TpuReport:
        return tpu_report(spec, Path(job_file), hf_token=bool(self.secret_values(spec).get("HF_TOKEN")))

    def dry_run(self, spec, job_file: Path, *, fresh: bool = False) -> str:
        out = super().dry_run(spec, job_file, fresh=fresh)
        plan = "\n".join(f"# {line}" for line in self._report(spec, job_file).lines)
        return out.replace("# nothing was launched", plan + "\n# nothing was launched")

    def submit(self, job, spec, *, detach: bool = True):
        job = super().submit(job, spec, detach=detach)
        for line in self._report(spec, Path(job.extra.get("job_file") or "job.yaml")).lines[:8]:
            print(f"{job.id}: {line}", file=sys.stderr)
        return job

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


def _image_packages() -> set[str]:
    """The model packages the images install (images/gpu/models.txt, also the TPU image's)."""
    names = set()
    for line in (REPO / "images" / "gpu" / "models.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(re.split(r"[=<>!~ ]", line, maxsplit=1)[0].lower().replace("-", "_"))
    return names


def tpu_report(spec, job_file: Path, *, hf_token: bool) -> TpuReport:
    """What the TPU trainer will do with this job, or BackendError for what it cannot (one line)."""
    from launcher import tpu_plan
    from trainers.tpu import flags as tpu_flags

    report = TpuReport()
    if not spec.resources.is_tpu:
        return report
    tpu_type = spec.resources.accelerators.lower().removeprefix("tpu-").split(":")[0]
    try:
        notes = tpu_flags.check_train_fields(spec)
    except tpu_flags.FlagError as e:
        raise BackendError(str(e)) from None
    base = job_file.resolve().parent
    model = spec.model
    hub = False
    if model.startswith("package:"):
        name = model.split(":", 1)[1]
        if name.lower().replace("-", "_") not in _image_packages():
            raise BackendError(f"model: {model} is not in the TPU image (it has the packages of images/gpu/models.txt: "
                               f"{', '.join(sorted(_image_packages()))}); use a hub id or a local folder")
        report.lines.append(f"model: {model}, shipped in the image; converted from GGUF to HF on the VM")
    elif not (base / model).expanduser().exists() and not model.startswith((".", "/", "~")) and not model.endswith(".gguf"):
        hub = True
        report.lines.append(f"download: {model} from the hub on the TPU VM (config, tokenizer, safetensors) into "
                            f"{NODE_OUT}/{spec.name}/tpu/hub/{model.replace('/', '--')}, then converted to EasyLM params; "
                            + ("HF_TOKEN passed as a secret" if hf_token else
                               "HF_TOKEN not set: a gated model (meta-llama/...) will fail to download"))
    cfg, source = tpu_plan.model_config(model, base)
    if cfg is None:
        report.lines.append(f"memory plan: not computed ({source})")
        report.lines += notes
        return report
    try:
        tpu_flags.llama_shape(cfg)
        mem = tpu_flags.memory_plan(spec, tpu_type, cfg)
    except (tpu_flags.FlagError, tpu_flags.ModelConfigError) as e:
        raise BackendError(str(e)) from None
    report.lines.append(f"model config: {source}")
    report.lines += mem.lines()

    shape = tpu_plan.LlamaShape.from_hf_config(cfg)
    gs = bool(spec.outputs.bucket and spec.outputs.bucket.startswith("gs://"))
    limit = spec.train.save_total_limit
    disk = tpu_plan.disk_plan(shape, hub_download=hub, bucket=gs, accumulate=mem.setup.accumulate,
                              exports=limit if limit else 10)
    report.lines += disk.lines()
    if limit is None and not gs:
        report.lines.append("  (train.save_total_limit unset: milestone params counted as 10)")
    if "disk_size" in spec.resources.model_fields_set:
        if spec.resources.disk_size * tpu_plan.GB < disk.total:
            raise BackendError(f"resources.disk_size: {spec.resources.disk_size} GB is less than the "
                               f"{disk.total / tpu_plan.GB:.0f} GB this run needs on the TPU VM "
                               + ("" if gs else "without a gs:// bucket ")
                               + f"({', '.join(f'{k} {v / tpu_plan.GB:.0f}' for k, v in disk.parts.items())}); "
                               + f"raise it to {disk.size_gb}"
                               + ("" if gs else " or set outputs.bucket to gs://... (train states then go there)"))
        report.lines.append(f"  resources.disk_size {spec.resources.disk_size} GB as set (enough)")
    else:
        report.disk_size = disk.size_gb

    work = f"{NODE_OUT}/{spec.name}/tpu"
    if spec.train.max_steps > 0:
        tokens, when = 1, ""
    else:
        tokens, when = 10 ** 9, " (total_steps, lr_decay_steps and eval_steps shown for 1e9 training tokens: " \
                                "the trainer sets them from the token count after data prep)"
    dtype = cfg.get("torch_dtype") if cfg.get("torch_dtype") in ("float16", "bfloat16") else "float32"
    try:  # what only the model's config decides (data.max_length against its positions)
        cmd = tpu_flags.command(spec, tpu_type, work, python="python3", model_config=cfg,
                                params_path=f"{work}/params/base-MODELKEY-{dtype}.streaming", train_tokens=tokens,
                                val_tokens=10 ** 6 if spec.train.do_eval else 0)
    except (tpu_flags.FlagError, tpu_flags.ModelConfigError) as e:
        raise BackendError(str(e)) from None
    report.lines.append("EasyLM command" + when + ":")
    report.lines.append("  " + " ".join(shlex.quote(c) for c in cmd))
    report.lines += notes
    return report

