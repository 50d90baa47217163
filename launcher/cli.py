"""`launcher`: the command line. Each command is a thin shell over one module.

Only click and the standard library are imported at the top: `launcher --help` must answer in
well under a second, so the spec (pydantic), skypilot, docker, torch and transformers are imported
inside the commands that need them.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from launcher.errors import EXIT_BAD_INPUT, LauncherError


class UserError(click.ClickException):
    """One line on stderr and a non-zero exit; never a traceback."""

    exit_code = EXIT_BAD_INPUT

    def show(self, file=None):
        click.secho(f"error: {self.format_message()}", err=True, fg="red")


def _fail_cleanly(fn):
    """Turn the errors users cause into one line each."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from launcher.errors import LauncherError

        try:
            return fn(*args, **kwargs)
        except LauncherError as e:  # every module's own, dataprep's DataError included
            raise UserError(str(e)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


class _CloudsOption(click.Option):
    """An option whose help lists clouds from the provider registry, filled in only when help is
    shown: reading the registry imports the spec (pydantic), too slow for every start."""

    def get_help_record(self, ctx):
        if "{providers}" in (self.help or ""):
            from launcher import backends

            self.help = self.help.format(providers=", ".join(backends.names()[1:]))  # every cloud but local
        elif "{priced}" in (self.help or ""):
            from launcher.estimate import catalog_clouds

            self.help = self.help.format(priced=", ".join(catalog_clouds()))
        return super().get_help_record(ctx)


def _overrides(fn):
    """The flags that override the job file, shared by every command that reads one."""
    opts = [
        click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE",
                     help="Override any field, e.g. --set train.learning_rate=2e-5 (repeatable)."),
        click.option("--idle-minutes", type=int, help="Tear down after this many idle minutes (resources.idle_minutes)."),
        click.option("--zone", help="Zone (resources.zone); pin it for TPU Research Cloud grants."),
        click.option("--region", help="Region (resources.region)."),
        click.option("--spot/--no-spot", default=None, help="Spot/preemptible machines, relaunched and resumed (resources.spot)."),
        click.option("--tpu", metavar="TYPE", help="A TPU VM, e.g. v3-8 (sets cloud gcp and resources.accelerators tpu-TYPE)."),
        click.option("--gpus", metavar="GPU:N", help="GPUs, e.g. A100:1 or H100:8 (resources.accelerators)."),
        click.option("--cloud", metavar="CLOUD", cls=_CloudsOption,
                     help="Where it runs (resources.cloud; default from the file, else local): local or a provider "
                          "({providers}); `launcher clouds` says what each is."),
    ]
    for opt in opts:
        fn = opt(fn)
    return fn


def load_job(job_file: str, *, sets=(), cloud=None, gpus=None, tpu=None, spot=None, region=None, zone=None,
             idle_minutes=None, docker=None, **_):
    """The validated spec for a job file with the command line's overrides applied."""
    from launcher import backends
    from launcher.spec import SpecError, load_spec, parse_set

    overrides = parse_set(sets)
    flags = {}  # field -> the option that set it, for errors that name it
    if tpu is not None and gpus is not None:
        raise SpecError(f"--tpu {tpu} and --gpus {gpus} conflict: a job runs on a TPU or on GPUs; give one of them")
    if cloud is not None:
        try:
            backends.get_backend(cloud)
        except backends.BackendError as e:
            raise SpecError(f"--cloud {cloud}: {e}") from None
        overrides.append(("resources.cloud", cloud))
    if tpu is not None:
        tpu_clouds = [b.name for b in backends.all_backends() if "tpu" not in b.cannot]
        if cloud is not None and cloud not in tpu_clouds:
            raise SpecError(f"--tpu {tpu}: {backends.get_backend(cloud).cannot['tpu']}; drop --cloud {cloud}")
        tpu = tpu.lower().removeprefix("tpu-")
        overrides += [("resources.cloud", cloud or tpu_clouds[0]), ("resources.accelerators", f"tpu-{tpu}")]
        flags["resources.accelerators"] = f"--tpu {tpu}"
    if gpus is not None:
        overrides.append(("resources.accelerators", gpus))
        flags["resources.accelerators"] = f"--gpus {gpus}"
    for field, value in (("spot", spot), ("region", region), ("zone", zone), ("idle_minutes", idle_minutes),
                         ("docker", docker)):
        if value is not None:
            overrides.append((f"resources.{field}", value))
            flags[f"resources.{field}"] = f"--{field.replace('_', '-')}" + ("" if isinstance(value, bool) else f" {value}")
    return load_spec(job_file, overrides, clouds=backends.names(), flags=flags)


def _backend(cloud: str):
    """The backend for `cloud`, after checking that what it needs is installed: the cloud backends
    import SkyPilot only when they first talk to a cloud, deep inside a call."""
    import importlib.util

    from launcher.backends import get_backend

    backend = get_backend(cloud)
    missing = [m for m in backend.needs_modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"cloud {cloud} needs the cloud extra, which is not installed here "
                        f"({', '.join(missing)} missing): pip install 'llm-launcher[cloud]'")
    return backend


def _job_or_fail(job_id: str):
    from launcher import state

    jobs = state.matching(job_id) if job_id else []
    if len(jobs) > 1:
        raise UserError(f"{job_id!r} is ambiguous: it starts {len(jobs)} job ids ({', '.join(j.id for j in jobs)}); "
                        "give more of the id")
    job = jobs[0] if jobs else None
    if job is None:
        known = [j.id for j in state.all_jobs()]
        import difflib

        hint = difflib.get_close_matches(job_id, known, n=1)
        raise UserError(f"no job {job_id!r}" + (f"; did you mean {hint[0]}?" if hint else "; `launcher status` lists jobs"))
    return job


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="llm-launcher")
def main():
    """From raw text to a fine-tuned LLM, on this machine or a rented GPU/TPU, and back.

    \b
    A job is one YAML file:  launcher init job.yaml
    Prepare its data:        launcher prep job.yaml
    Run it here:             launcher submit job.yaml            (--cloud local, the default)
    Run it on a cloud GPU:   launcher submit job.yaml --cloud lambda --gpus A100:1
    Run it on a TPU VM:      launcher submit job.yaml --tpu v3-8 --zone europe-west4-a --set method=full
    Will it fit, what cost:  launcher estimate job.yaml --gpus A100:1   (launcher clouds: where)
    Follow and fetch:        launcher status | launcher logs -f JOB | launcher sync JOB
    Stop paying:             launcher down JOB | launcher down --idle 30m
    Use the model:           launcher export JOB --gguf q4_k_m | launcher chat JOB
    """


@main.command()
@click.argument("job_file", default="job.yaml")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(job_file, force):
    """Write a job file with every field, its default and what it means.

    Edit it, then `launcher submit JOB_FILE --dry-run` to check it.
    """
    from launcher.spec import commented_yaml

    p = Path(job_file)
    if p.is_dir():
        raise UserError(f"{job_file} is a folder; give a file name, e.g. {p / 'job.yaml'}")
    if p.exists() and not force:
        raise UserError(f"{job_file} exists; use --force to overwrite")
    if not p.parent.is_dir():
        raise UserError(f"{job_file}: the folder {p.parent} does not exist; create it first (mkdir -p {p.parent})")
    try:
        p.write_text(commented_yaml())
    except OSError as e:
        raise UserError(f"{job_file}: cannot write it ({e.strerror})") from None
    click.echo(f"wrote {job_file}: edit model, data.sources and train, then `launcher submit {job_file}`")


@main.command()
def clouds():
    """List where jobs can run (resources.cloud / --cloud) and what each provider cannot do."""
    from rich.console import Console
    from rich.table import Table

    from launcher import backends

    table = Table(box=None, pad_edge=False)
    for col in ("CLOUD", "WHAT IT IS", "CANNOT"):
        table.add_column(col)
    for b in backends.all_backends():
        table.add_row(b.name, b.summary, ", ".join(sorted(b.cannot)) or "-")
    Console(width=160).print(table)


@main.command()
@click.argument("job_file")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (default: OUTPUTS.DIR/data).")
@click.option("--skip-bad", is_flag=True, help="Quarantine bad rows/files into rejects.jsonl instead of stopping.")
@click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE", help="Override any field (repeatable).")
@_fail_cleanly
def prep(job_file, out, skip_bad, sets):
    """Prepare the job's data: ingest, clean, deduplicate, cluster, split, tokenize, pack.

    Writes train/val JSONL and packed Arrow, a report (Markdown, JSON, PNGs) and rejects.jsonl
    with every dropped row and why. A re-run with the same inputs reuses the cache.
    """
    spec = load_job(job_file, sets=sets)
    base = Path(job_file).resolve().parent
    out_dir = Path(out) if out else spec.output_dir(base) / "data"
    from dataprep.pipeline import prepare

    report = prepare(spec, out_dir, base, skip_bad=skip_bad)
    click.echo(f"prepared data in {out_dir} ({report.get('summary', 'see report.md')})")


@main.command()
@click.argument("job_file")
@click.option("--push/--no-push", default=None, help="Push to image.registry (default: push when a registry is set).")
@click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE", help="Override any field (repeatable).")
@_fail_cleanly
def build(job_file, push, sets):
    """Build the Docker image this job needs (GPU or TPU), tag it by content, push it.

    The tag is a hash of what goes into the image, so an unchanged image is never rebuilt; the
    pushed digest is recorded so that `submit` runs exactly that image.
    """
    spec = load_job(job_file, sets=sets)
    from launcher.build import build as build_image

    repo_root = Path(__file__).resolve().parent.parent
    image = build_image(spec, repo_root, push=bool(spec.image.registry) if push is None else push)
    click.echo(f"image {getattr(image, 'ref', image)}")


@main.command()
@click.argument("job_file")
@_overrides
@click.option("--docker", is_flag=True, default=None, help="cloud local: run inside the GPU image on the local Docker engine.")
@click.option("--dry-run", is_flag=True, help="Show what would run (secrets masked) and validate it; launch nothing.")
@click.option("--detach", "-d", is_flag=True, help="Return once the job is submitted instead of following its logs.")
@click.option("--no-watch", is_flag=True,
              help="With --detach, on a cloud job without outputs.bucket: do not leave `launcher sync JOB --watch` "
                   "running here (its checkpoints then go with the cluster at autodown unless you sync them).")
@click.option("--force", is_flag=True, help="Submit even when the memory estimate says the job cannot fit its accelerator.")
@click.option("--fresh", is_flag=True,
              help="Start from step 0: move an earlier run folder of this job aside (kept, renamed with the date) "
                   "instead of resuming from its checkpoints, which a job run again does by default.")
@_fail_cleanly
def submit(job_file, dry_run, detach, no_watch, force, fresh, **flags):
    """Run a job: prepare its data, then train, on this machine or a cloud machine.

    \b
    Examples:
      launcher submit job.yaml                      # here, in the background, then follow logs
      launcher submit job.yaml --cloud lambda --gpus A100:1
      launcher submit job.yaml --cloud aws --gpus A10G:1 --spot --set outputs.bucket=s3://BUCKET/runs
                                                    # relaunched, resumed from the bucket if preempted
      launcher submit job.yaml --tpu v3-8 --zone europe-west4-a --set method=full   # TPUs: full fine-tunes
      launcher submit job.yaml --dry-run --set train.max_steps=10
      launcher submit job.yaml --fresh              # changed settings: start over, keep the old run aside

    A job submitted again with the same name continues from the newest complete checkpoint in its
    run folder (or its bucket), here and on a cloud machine alike; --fresh starts it over.
    """
    from launcher import state
    from launcher.runlock import FolderBusy

    from launcher.backends import get_backend

    spec = load_job(job_file, **flags)
    registered = get_backend(spec.resources.cloud)
    registered.check(spec)  # what the provider cannot do, before anything else
    registered.check_inputs(spec, Path(job_file))  # a job that would fail at once on what it reads: the same for a dry run
    if not dry_run and not force:
        _estimate_lines(spec, job_file, dry_run=False)  # needs no cloud extra: a job that cannot fit says so first
    backend = _backend(spec.resources.cloud)
    out_dir = spec.output_dir(Path(job_file).resolve().parent).resolve()
    if fresh and spec.outputs.bucket:
        raise LauncherError(f"--fresh: the trainer resumes from the checkpoints in {spec.outputs.bucket}/{spec.name}, "
                            f"which stay where they are; give this run another name (--set name=...)")
    if dry_run:
        if fresh and out_dir.is_dir():
            click.echo(f"# --fresh: {out_dir} would be moved aside (renamed with the date) and the job start from step 0")
        click.echo(backend.dry_run(spec, Path(job_file), fresh=fresh))
        _estimate_lines(spec, job_file, dry_run=True)
        return
    if fresh:
        from launcher import runlock

        moved = runlock.set_aside(out_dir, "submit --fresh")  # FolderBusy while a job still writes there
        if moved is not None:
            earlier = state.folder_moved(out_dir, moved)
            click.echo(f"--fresh: moved the earlier run folder to {moved}" + (f" ({', '.join(earlier)} now point there)"
                       if earlier else "") + "; this job starts from step 0", err=True)
    job = state.Job(id=state.new_id(spec.name), name=spec.name, cloud=spec.resources.cloud,
                    spec_yaml=spec.to_yaml(), output_dir=str(out_dir),
                    accelerators=spec.resources.accelerators, extra={"job_file": str(Path(job_file).resolve())})
    state.save(job)
    try:
        job = backend.submit(job, spec, detach=detach)
    except FolderBusy:
        state.delete(job.id)  # refused before anything ran or was written: nothing to remember
        raise
    except BaseException as e:
        now = state.get(job.id)
        if now.cluster and not now.done:  # a recorded machine may still come up: its record stays live for status/down
            raise
        reason = str(e).splitlines()[0] if isinstance(e, LauncherError) else f"submit failed: {type(e).__name__}: {e}"
        state.transition(job.id, "FAILED", extra={**job.extra, "error": reason})
        raise
    click.echo(f"submitted {job.id} ({job.cloud}{', ' + job.cluster if job.cluster else ''}); output in {job.output_dir}")
    if detach:
        click.echo(f"follow with `launcher logs -f {job.id}`; stop with `launcher down {job.id}`")
        if backend.checkpoints_only_on_machine(spec):
            if no_watch:
                click.echo(f"warning: no outputs.bucket: checkpoints stay on {job.cluster}, which goes down "
                           f"{spec.resources.idle_minutes} idle minutes after the job; `launcher sync {job.id}` before that")
            else:
                from launcher import watch

                log = watch.start(job)
                click.echo(f"checkpoints come home as they are saved: `launcher sync {job.id} --watch` runs in the "
                           f"background (log: {log}), then takes the cluster down when the job ends")
        return
    try:
        code = backend.logs(job, follow=True)
    except KeyboardInterrupt:
        _still_running(backend, spec, state.get(job.id), no_watch)
        sys.exit(130)
    job = backend.status(state.get(job.id))
    click.echo(f"{job.id}: {job.state}" + (f" ({job.reason})" if job.state == "FAILED" and job.reason else ""))
    sys.exit(0 if job.state == "SUCCEEDED" else (code or 1))


def _estimate_lines(spec, job_file, *, dry_run: bool) -> None:
    """submit's memory check on a cloud (refuses what cannot fit), and the estimate in a dry run."""
    from launcher import estimate as est

    try:
        if dry_run:
            e = est.estimate(spec, Path(job_file))
            click.echo("\n".join(f"# {l}".rstrip() for l in ["estimate (launcher estimate):", *e.lines]))
        else:
            est.check_fits(spec, Path(job_file))
    except est.DoesNotFit:
        raise
    except est.EstimateError as e:  # e.g. a hub model's config offline: not a reason to refuse the job
        click.echo(f"# estimate: not available: {e}" if dry_run else f"warning: no memory check: {e}", err=not dry_run)


ESTIMATE_HELP = """Memory per device, training time and cost of a job, before anything is spent.

\b
The model's shape comes from its config only (local folder, .gguf metadata, package:NAME, or a hub
id's config.json: cached, else fetched once); parameters are counted exactly on PyTorch's meta
device when transformers is installed (else by formula; the first line says which).
\b
Memory rows (per device; formulas and sources in launcher/estimate.py):
  weights       full: fp32 master weights + autocast's half copy; lora: frozen base in the
                training precision; qlora: NF4 4.127 bits/param for the linears, rest fp32
  gradients     4 bytes per trainable parameter
  optimizer     AdamW 8 B/param (two fp32 moments); 8-bit variants 2; paged: same, may spill to CPU
  lora adapter  the fp32 adapter, r x (d_in + d_out) per adapted layer
  activations   what each block keeps for backward (batch x sequence x hidden x layers), one
                block input per layer with gradient checkpointing, s x s scores with eager
                attention, and the logits (fp32 for the loss)
  overhead      CUDA context and workspaces (~1 GiB) + 5% allocator fragmentation
  verdict       the total against the device's memory; if over, what alone would make it fit
\b
Time: training tokens (prepared data's report.json if present, else raw sources' size / 4) x
FLOPs per token (6N full, 4N LoRA/QLoRA, +2N with checkpointing, + attention) / (devices x
datasheet peak x --mfu).
\b
Cost table columns (accelerators that fit, and the one asked for, marked *; cheapest first):
  CLOUD, ACCELERATORS, INSTANCE   SkyPilot's cheapest instance for that accelerator and count
  MEM/DEVICE    the estimate per device / the device's memory;  FITS  yes or NO
  $/H, SPOT $/H on-demand and spot price per hour, all nodes (SkyPilot's catalog; offline: the
                catalog excerpts in launcher/catalogs)
  TIME          estimated run time on that row's devices;  TOTAL, SPOT TOTAL  $/h x time
  NOTE          TPU rows train a full fine-tune (EasyLM); tpu-v3-8 is free under a TPU Research
                Cloud grant
"""


@main.command(help=ESTIMATE_HELP)
@click.argument("job_file")
@click.option("--gpus", metavar="GPU:N", help="Estimate for these GPUs, e.g. A100:1 (resources.accelerators).")
@click.option("--tpu", metavar="TYPE", help="Estimate for a TPU slice, e.g. v3-8.")
@click.option("--cloud", metavar="CLOUD", cls=_CloudsOption, help="Price only this cloud ({priced}).")
@click.option("--mfu", type=click.FloatRange(0.01, 1.0), default=0.4, show_default=True,
              help="Assumed fraction of the accelerator's peak FLOP/s the training reaches.")
@click.option("--offline", is_flag=True, help="Never fetch a hub model's config.json.")
@click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE", help="Override any field (repeatable).")
@_fail_cleanly
def estimate(job_file, gpus, tpu, cloud, mfu, offline, sets):
    from launcher import estimate as est

    spec = load_job(job_file, sets=sets, gpus=gpus, tpu=tpu, cloud=cloud)  # an unknown cloud: submit's own line
    priced = est.catalog_clouds()
    if cloud is not None and cloud not in priced:
        raise UserError(f"--cloud {cloud}: no prices for it (it has no price catalog); price one of {', '.join(priced)}, "
                        "or leave --cloud out for all of them")
    clouds = [cloud] if cloud else None
    click.echo("\n".join(est.estimate(spec, Path(job_file), online=not offline, mfu=mfu, clouds=clouds).lines))


def _still_running(backend, spec, job, no_watch: bool) -> None:
    """Ctrl-C while following a job stops the following, not the job: say so, and keep its
    checkpoints from going with the machine at autodown."""
    if not backend.rents_machines:
        click.echo(f"{job.id} runs on in the background: `launcher logs -f {job.id}` follows it again, "
                   f"`launcher down {job.id}` stops it", err=True)
        return
    click.echo(f"{job.id} runs on, on {job.cluster}, and bills until it ends: `launcher logs -f {job.id}` follows it "
               f"again, `launcher down {job.id}` stops it (after a last checkpoint and sync)", err=True)
    if backend.checkpoints_only_on_machine(spec):
        if no_watch:
            click.echo(f"warning: no outputs.bucket: its checkpoints are only on {job.cluster}, which autodown deletes "
                       f"{spec.resources.idle_minutes} idle minutes after the job; `launcher sync {job.id}` before that",
                       err=True)
        else:
            from launcher import watch

            log = watch.start(job)
            click.echo(f"its checkpoints come home as they are saved: `launcher sync {job.id} --watch` runs in the "
                       f"background (log: {log}) and takes the cluster down when the job ends", err=True)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


@main.command()
@click.argument("job_id", required=False)
@click.option("--all", "show_all", is_flag=True, help="Include finished jobs older than a day.")
@_fail_cleanly
def status(job_id, show_all):
    """Show jobs: cloud, accelerators, state, running time and cost so far."""
    from rich.console import Console
    from rich.table import Table

    from launcher import state
    from launcher.backends import BackendError, all_backends

    jobs = [_job_or_fail(job_id)] if job_id else state.all_jobs()
    if not show_all and not job_id:
        cutoff = time.time() - 86400
        jobs = [j for j in jobs if not j.done or (j.ended or j.created) > cutoff]
    table = Table(box=None, pad_edge=False)
    for col in ("JOB", "CLOUD", "ACCELERATORS", "STATE", "TIME", "COST", "EXIT", "OUTPUT"):
        table.add_column(col)
    notes = []
    rented = {b.name for b in all_backends() if b.rents_machines}
    for j in jobs:
        if not j.done:
            try:
                j = _backend(j.cloud).status(j)
            except (BackendError, UserError) as e:
                notes.append(f"{j.id}: state unknown: {e.format_message() if isinstance(e, UserError) else e}")
        if j.state in ("FAILED", "STOPPED") and j.reason:
            notes.append(f"{j.id} {j.state.lower()}: {j.reason}")
        elif j.extra.get("orphaned") and not j.done:
            notes.append(f"{j.id}: its supervisor was killed but its processes (data prep or trainer) still run; "
                         f"`launcher down {j.id}` stops it")
        # a cloud job with no cluster named ended before anything was provisioned: it rented nothing
        unpriced = "?" if j.cloud in rented and (j.cluster or not j.done) else "$0"
        cost = f"${j.price_per_hour * j.runtime() / 3600:.2f}" if j.price_per_hour else unpriced
        table.add_row(j.id, j.cloud + (f" ({j.cluster})" if j.cluster else ""), j.accelerators or "-", j.state,
                      _duration(j.runtime()), cost, "" if j.exit_code is None else str(j.exit_code), j.output_dir)
    if not jobs:
        click.echo("no jobs yet: `launcher submit job.yaml`")
        return
    Console(width=200).print(table)
    for note in notes:
        click.echo(note)


@main.command()
@click.argument("job_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
@_fail_cleanly
def logs(job_id, follow):
    """Print a job's output (data prep and training); -f follows it to the end."""

    job = _job_or_fail(job_id)
    code = _backend(job.cloud).logs(job, follow=follow)
    sys.exit(code if follow else 0)  # only a followed job's end has an exit code worth passing on


@main.command()
@click.argument("job_id")
@click.option("--to", type=click.Path(file_okay=False), help="Where checkpoints go (default: the job's output folder).")
@click.option("--watch", is_flag=True, help="Keep syncing new checkpoints until the job ends, then a last sync; "
                                            "a cloud job's cluster then goes down.")
@_fail_cleanly
def sync(job_id, to, watch):
    """Bring a job's complete checkpoints to this machine, verified file by file.

    Incremental and resumable: only new files move, each is checked against the checkpoint's
    manifest (sha256), and a checkpoint appears complete only when all of it has arrived.
    """
    job = _job_or_fail(job_id)
    dest = Path(to) if to else Path(job.output_dir)
    backend = _backend(job.cloud)
    result = backend.sync(job, dest, watch=watch)
    if watch:  # the job has ended: its status records that, and a cloud job's cluster goes (after a last sync)
        from launcher import state

        backend.status(state.get(job.id))
    click.echo(f"{len(result.copied)} files copied, {result.skipped} already here; "
               f"complete checkpoints in {dest}: {', '.join(Path(c).name for c in result.checkpoints) or 'none yet'}")


def _parse_minutes(text: str) -> int:
    import re

    m = re.fullmatch(r"\s*(\d+)\s*([mhd]?)\s*", text or "")
    if not m:
        raise UserError(f"--idle {text}: expected a duration such as 30m, 2h or 1d")
    return int(m.group(1)) * {"": 1, "m": 1, "h": 60, "d": 1440}[m.group(2)]


@main.command()
@click.argument("job_id", required=False)
@click.option("--idle", metavar="DURATION", help="Tear down every cluster of ours idle at least this long (30m, 2h).")
@click.option("--all", "down_all", is_flag=True, help="Tear down every cluster this tool created (asks first).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--force", is_flag=True, help="Tear down even when the last sync fails (what did not arrive is lost).")
@_fail_cleanly
def down(job_id, idle, down_all, yes, force):
    """Stop a job (the trainer saves a checkpoint first), bring its checkpoints home, release its machine.

    A cloud job's machine is kept when the last sync fails, so that nothing is lost; `--force`
    tears it down anyway. `--idle 30m` and `--all` act only on clusters this tool recorded
    creating, never on others.
    """
    if sum(bool(x) for x in (job_id, idle, down_all)) != 1:
        raise UserError("give exactly one of JOB, --idle DURATION, --all")
    if job_id:
        job = _job_or_fail(job_id)
        backend = _backend(job.cloud)
        from launcher import watch

        watch.stop(job)  # down syncs one last time itself; two syncs into one folder would race
        job = backend.down(job, force=force)
        click.echo(f"{job.id}: {job.state}")
        return
    import importlib.util

    from launcher import state

    minutes = _parse_minutes(idle) if idle else None  # a bad duration is said first, whatever is installed
    if not any(j.cluster for j in state.all_jobs()):
        click.echo("torn down: nothing (no cloud cluster was ever recorded here)")
        return
    if importlib.util.find_spec("sky") is None:
        raise UserError(f"down {'--idle' if idle else '--all'} acts on cloud clusters and needs the cloud extra, "
                        "which is not installed here: pip install 'llm-launcher[cloud]'")
    from launcher import teardown
    if idle:
        gone = teardown.down_idle(minutes, force=force)
    else:
        gone = teardown.down_all(yes=yes)
    click.echo(f"torn down: {', '.join(gone) if gone else 'nothing'}")


# -- after the run: export, try, publish (trainers/export.py, launcher/hub.py) -------------------------

def _run_path(ref: str, finished: bool = False) -> Path:
    """A run folder, a .gguf file, or a job id's output folder. finished: a job id must name a
    job that made its final model (a failed or stopped one is said so, with what to do)."""
    p = Path(ref).expanduser()
    if p.exists():
        return p
    if p.suffix == ".gguf" or "/" in ref:
        raise UserError(f"{ref}: no such file or folder")
    job = _job_or_fail(ref)
    out = Path(job.output_dir)
    if finished and job.state in ("FAILED", "STOPPED", "CANCELLED") and not (out / "final").is_dir():
        why = f": {job.reason}" if job.reason else ""
        raise UserError(f"job {job.id} {job.state.lower()}{why}; it made no final model (`launcher logs {job.id}` says "
                        f"what happened; submit the job again to go on from its last checkpoint)")
    return out


@main.command()
@click.argument("run")
@click.option("--merge", is_flag=True, help="Write the adapter merged into the base as an HF checkpoint (what export "
                                             "always does; kept for scripts that say so).")
@click.option("--gguf", metavar="TYPE", help="Also write GGUF for llama.cpp: f16, bf16, q8_0, q6_k, q5_k_m, q4_k_m ...")
@click.option("--to", type=click.Path(file_okay=False), help="Where it goes (default: RUN/export).")
@_fail_cleanly
def export(run, merge, gguf, to):
    """Merge a finished run's adapter and convert it for llama.cpp, KoboldAI, text-generation-webui.

    RUN is a job id or a run folder. Writes TO/model (HF checkpoint with tokenizer and chat
    template), TO/NAME-TYPE.gguf (llama.cpp's converter and quantizer; chat template in its
    metadata) and a manifest. LLaMA-family models only (Llama 2/3, Mistral, SmolLM2).
    """
    from trainers.export import export_run

    export_run(_run_path(run, finished=True), merge_model=True, gguf=gguf, to=to, log=click.echo)


def _try_options(fn):
    for opt in (click.option("--max-new-tokens", type=click.IntRange(min=1), default=128, show_default=True),
                click.option("--compare-base", is_flag=True, help="Also answer with the base model, side by side."),
                click.option("--gguf", is_flag=True, help="Use the run's exported GGUF through llama.cpp, not the HF model.")):
        fn = opt(fn)
    return fn


def _answer(gens: dict, messages, max_new_tokens: int) -> None:
    for label, gen in gens.items():
        prefix = f"[{label}] " if len(gens) > 1 else ""
        click.echo(f"{prefix}{gen(messages, max_new_tokens).strip()}")


@main.command()
@click.argument("run")
@click.argument("prompt")
@_try_options
@_fail_cleanly
def generate(run, prompt, gguf, compare_base, max_new_tokens):
    """Answer one prompt with a run's model (greedy), with the chat template it was trained with."""
    from trainers.export import generators

    _answer(generators(_run_path(run, finished=True), gguf=gguf, compare_base=compare_base), prompt, max_new_tokens)


@main.command()
@click.argument("run")
@_try_options
@_fail_cleanly
def chat(run, gguf, compare_base, max_new_tokens):
    """Chat with a run's model (or a .gguf file) here; an empty line or Ctrl-D ends it."""
    from trainers.export import generators

    gens = generators(_run_path(run, finished=True), gguf=gguf, compare_base=compare_base)
    history: list[dict] = []
    while True:
        try:
            line = click.prompt("you", default="", show_default=False, prompt_suffix="> ")
        except click.exceptions.Abort:  # Ctrl-D, or the end of piped input: the chat is over, not failed
            click.echo()
            return
        if not line.strip():
            return
        history.append({"role": "user", "content": line})
        _answer(gens, history, max_new_tokens)
        if len(gens) == 1:  # a side-by-side chat keeps only the user's turns: the two models answer differently
            history.append({"role": "assistant", "content": gens["fine-tuned"].last})


@main.command()
@click.argument("run")
@click.option("--hub", "repo_id", required=True, metavar="USER/NAME", help="The Hugging Face Hub repository to create or update.")
@click.option("--private", is_flag=True, help="Create the repository private.")
@_fail_cleanly
def push(run, repo_id, private):
    """Upload a run's model to the Hugging Face Hub with a model card made from the run.

    Uploads RUN/export (merged model and GGUF files) when it exists, else the adapter, plus
    README.md (base model, method, data counts, hyperparameters, losses) and loss.png.
    The token is HF_TOKEN from the environment, never written anywhere.
    """
    from launcher.hub import push as push_run

    click.echo(push_run(_run_path(run), repo_id, private=private))


if __name__ == "__main__":
    main()
