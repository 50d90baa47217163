"""`--cloud local`: run the job on this machine, in the background, with no cloud account.

`submit` takes the run folder's lock (launcher/runlock.py: one owner per folder, enforced by the
filesystem), then starts a small detached supervisor (`python -m launcher.backends.local JOB_ID`)
in a process group of its own, hands it the lock and returns. The supervisor runs the entry
command (data prep, then training), which inherits the lock, and records the job's states:
SUBMITTED -> PREPARING -> TRAINING -> SUCCEEDED | FAILED (with a one-line reason) | STOPPED.

`down` sends SIGTERM down the chain (supervisor -> entry -> stage; the topmost survivors when the
supervisor was killed), so the trainer saves a checkpoint and data prep stops, waits for the whole
process group to end, and SIGKILLs what is left of it after the grace. `status` never judges a job dead before its
supervisor's pid is known, and tells a trainer orphaned by a killed supervisor from a dead job (its
process group outlives the supervisor). With `resources.docker` the job runs inside the GPU image
instead (launcher/backends/local_docker.py).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from launcher import runlock, state
from launcher.backends import register
from launcher.backends.base import Backend, BackendError
from launcher.errors import EXIT_STOPPED
from launcher.spec import write_resolved

STOP_GRACE_S = 180  # a checkpoint save of a 7B model on a slow disk takes this long
UNSTARTED_GRACE_S = 120  # a record without a pid is a submit still starting, for this long
STAGE = ".stage"  # OUT/.stage: which stage the entry command is in (prep, training)
LOW_DISK = 64 << 20  # less free than this after a failure: the disk filled up
# GPU names as SkyPilot's catalogs spell them. A local job has no catalog to check against; this
# list catches a typo (`--gpus banana`) without refusing a real card.
KNOWN_GPUS = ("A10", "A100", "A100-80GB", "A10G", "A16", "A30", "A40", "A4000", "A5000", "A6000", "B200", "GH200",
              "H100", "H100-80GB", "H100-MEGA", "H200", "K80", "L4", "L40", "L40S", "M60", "P100", "P4", "P40",
              "RTX3060", "RTX3070", "RTX3080", "RTX3090", "RTX4070", "RTX4080", "RTX4090", "RTX5090", "RTX6000",
              "RTXA4000", "RTXA5000", "RTXA6000", "T4", "T4G", "V100", "V100-32GB", "GPU")


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A finished child of ours that nobody reaped is a zombie: not alive.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _group(pgid: int) -> dict[int, int] | None:
    """pid -> parent pid of the live (not zombie) processes in a process group; None without /proc."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    members = {}
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[2] == str(pgid) and fields[0] != "Z":
            members[int(d.name)] = int(fields[1])
    return members


def _group_alive(pgid: int | None) -> bool:
    """Whether any process of the job's group (supervisor, entry, prep, trainer) still runs. The
    kernel does not reuse a pid as long as a process group of that id exists."""
    if not pgid:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    members = _group(pgid)  # killpg also counts zombies (a finished supervisor nobody reaped yet)
    return True if members is None else bool(members)


def _stop_targets(pgid: int) -> list[int]:
    """Whom `down` sends SIGTERM: the supervisor, which passes it down stage by stage; when it was
    killed, the topmost processes left in its group (the entry command). Not the whole group at
    once: a DataLoader worker or a prep worker that gets SIGTERM dies, and takes the trainer's
    clean save with it."""
    if _alive(pgid):
        return [pgid]
    members = _group(pgid) or {}
    return [pid for pid, parent in members.items() if parent not in members]


def python_module(module: str) -> list[str]:
    """argv that runs one of our modules so that the user's current folder cannot shadow it (a
    `dataprep.py` there): -P (3.11+) keeps PYTHONPATH but leaves the current folder off sys.path."""
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-m", module]
    return [sys.executable, "-c", "import runpy, sys; del sys.path[0]; sys.argv[0] = 'python'; "
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"]


def safe_env(env: dict) -> dict:
    """The environment for our child processes: PYTHONSAFEPATH also covers the Pythons they start
    in turn (`accelerate launch --module`)."""
    return {**env, "PYTHONSAFEPATH": "1", "PYTHONUNBUFFERED": "1"}


def entry_command(job_yaml: Path, out: Path, base_dir: Path) -> list[str]:
    return [*python_module("trainers.entry"), str(job_yaml), "--out", str(out), "--base-dir", str(base_dir)]


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def disk_full_reason(folder: Path) -> str | None:
    """'no space left on device in FOLDER (N MB free)' when the disk under FOLDER is (nearly) full."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if free >= LOW_DISK:
        return None
    return f"no space left on device in {folder} ({free / 2**20:.0f} MB free)"


def failure_reason(code: int, out: Path, log: Path | None) -> str:
    """One line saying why a job ended with `code`: a signal, a full disk, or its last error line."""
    if code < 0 or (code > 128 and code - 128 < 65):
        n = -code if code < 0 else code - 128
        why = f"killed by signal {n} ({_signal_name(n)})"
        if n == signal.SIGKILL:
            why += ": out of memory, or killed by hand"
        return why
    last_error = last = None
    if log is not None:
        try:
            with open(log, "rb") as f:
                f.seek(max(0, f.seek(0, 2) - 65536))
                tail = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            tail = []
        for line in tail:
            line = line.strip()
            if not line or line.startswith("[launcher]") or line.startswith("[entry]"):
                continue
            last = line
            if line.startswith("error:") or "no space left" in line.lower():
                last_error = line[line.find("error:"):] if "error:" in line else line
    if "no space left" in (last_error or "").lower():
        return last_error.removeprefix("error: ")
    full = disk_full_reason(out)
    if full:
        return full
    if last_error:
        return last_error.removeprefix("error: ")
    return f"exit code {code}" + (f"; last output: {last[:200]}" if last else "")


def _final(code: int, out: Path, log: Path | None) -> tuple[str, dict]:
    if code == 0:
        return "SUCCEEDED", {}
    if code in (EXIT_STOPPED, -signal.SIGTERM):
        return "STOPPED", {}
    return "FAILED", {"error": failure_reason(code, out, log)}


@register
class LocalBackend(Backend):
    name = "local"
    summary = "this machine, no cloud account (--docker: inside the GPU image)"
    cannot = {
        "tpu": "cloud local has no TPU; TPUs are on Google Cloud: --tpu v3-8 --zone europe-west4-a",
        "spot": "cloud local cannot do spot machines: this machine is yours; drop --spot, or use --cloud aws --spot",
        "multi_node": "cloud local is one machine: resources.num_nodes must be 1 (several nodes: --cloud aws or slurm)",
        "region": "cloud local cannot choose a region or zone: drop --region/--zone",
        "idle": "cloud local tears no machine down (this machine is yours): drop --idle-minutes (resources.idle_minutes)",
    }

    def _docker(self):
        from launcher.backends.local_docker import BACKEND

        return BACKEND

    def check(self, spec):
        super().check(spec)
        name = spec.resources.accelerator_name
        if name and not spec.resources.is_tpu and name.upper() not in KNOWN_GPUS:
            import difflib

            hint = difflib.get_close_matches(name.upper(), KNOWN_GPUS, n=1)
            raise BackendError(f"resources.accelerators: {name} is not a GPU name"
                               + (f"; did you mean {hint[0]}?" if hint else f" (known: {', '.join(KNOWN_GPUS[:12])} ...)"))
        if spec.resources.docker:
            return
        missing = [m for m in ("torch", "transformers", "datasets", "peft") if importlib.util.find_spec(m) is None]
        if missing:
            raise BackendError("cloud local trains on this machine and needs the gpu extra "
                               f"(missing: {', '.join(missing)}): pip install 'llm-launcher[gpu]'")

    def check_inputs(self, spec, job_file: Path) -> None:
        """Also what the trainer would refuse on this machine, refused before data prep and not
        after it: a package: model that is not installed, GPUs or a GPU-only setting (qlora, fp16,
        flash-attention, FSDP) where CUDA is not usable. Inside Docker the image decides."""
        super().check_inputs(spec, job_file)
        if spec.resources.docker:
            return
        from launcher.models import ModelError, _package_model

        for field, ref in (("model", spec.model), ("tokenizer", spec.tokenizer)):
            if ref and ref.startswith("package:"):
                try:
                    _package_model(ref.split(":", 1)[1])
                except ModelError as e:
                    raise BackendError(f"{field}: {e}") from None
        from trainers.gpu.train import InputError, check_method, resolve_attention, resolve_precision

        t = spec.train
        cuda = bf16 = False
        if (spec.resources.accelerators or spec.method == "qlora" or t.fsdp or t.precision in ("fp16", "bf16")
                or t.attn_implementation == "flash_attention_2"):  # only then is torch worth its import here
            import torch

            cuda = torch.cuda.is_available()
            bf16 = cuda and torch.cuda.is_bf16_supported()
        try:
            check_method(spec, cuda)
            resolve_precision(t.precision, cuda, bf16)
            resolve_attention(t.attn_implementation, cuda)
        except InputError as e:
            raise BackendError(str(e)) from None

    def dry_run(self, spec, job_file: Path, *, fresh: bool = False) -> str:
        if spec.resources.docker:
            return self._docker().dry_run(spec, job_file, fresh=fresh)
        base = job_file.resolve().parent
        out = spec.output_dir(base)
        secrets = {k: ("***" if os.environ.get(k) else "(not set)") for k in spec.secrets}
        lines = ["# cloud local: runs on this machine in the background", f"# output: {out}",
                 "# command: " + " ".join(entry_command(out / "job.yaml", out, base)),
                 "# secrets from your environment: " + (", ".join(f"{k}={v}" for k, v in secrets.items()) or "none"),
                 "# valid: yes", spec.to_yaml()]
        return "\n".join(lines)

    def submit(self, job, spec, *, detach=True):
        if spec.resources.docker:
            return self._docker().submit(job, spec, detach=detach)
        out = Path(job.output_dir).expanduser().resolve()
        lock = runlock.acquire(out, job.id)  # before anything is written; FolderBusy names the owner
        try:
            (out / "logs").mkdir(parents=True, exist_ok=True)
            (out / STAGE).unlink(missing_ok=True)
            write_resolved(spec, out)
            log = out / "logs" / "job.log"
            # Runs of one job file share the folder and append to one log: each job's part starts here
            offset = log.stat().st_size if log.exists() else 0
            state.update(job.id, extra={**job.extra, "log_offset": offset})  # before its supervisor can write
            with open(log, "ab") as f:
                env = safe_env({**os.environ, runlock.ENV_FD: str(lock), runlock.ENV_JOB: job.id})
                proc = subprocess.Popen(python_module("launcher.backends.local") + [job.id],
                                        stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                        start_new_session=True, pass_fds=(lock,), env=env)
        finally:
            os.close(lock)  # the supervisor holds it now (or nobody, if it did not start)
        # The supervisor may have moved on already (PREPARING): only the pid and log are ours to set.
        return state.update(job.id, pid=proc.pid, log_path=str(log), output_dir=str(out))

    def status(self, job):
        if job.extra.get("docker"):
            return self._docker().status(job)
        if job.done:
            return job
        fresh = state.get(job.id) or job
        if fresh.done:
            return fresh
        if fresh.pid is None:
            # Saved by a submit that has not started the supervisor yet: not dead, only early.
            if time.time() - fresh.created < UNSTARTED_GRACE_S or runlock.holder(fresh.output_dir) == job.id:
                return fresh
            return state.transition(job.id, "FAILED", extra={**fresh.extra, "error": "never started: the submit that "
                                    "recorded it ended before starting it"})
        if _alive(fresh.pid):
            return fresh
        fresh = state.get(job.id)  # the supervisor may have recorded the end a moment ago
        if fresh.done:
            return fresh
        if _group_alive(fresh.pid):
            # The supervisor was killed but data prep or the trainer runs on (and holds the folder).
            if not fresh.extra.get("orphaned"):
                fresh = state.update(job.id, extra={**fresh.extra, "orphaned": True})
            return fresh
        out = Path(fresh.output_dir)
        from launcher.manifest import is_complete

        if is_complete(out / "final") and (out / "final" / "manifest.json").stat().st_mtime >= (fresh.started or 0):
            return state.transition(job.id, "SUCCEEDED", exit_code=0)
        if fresh.state == "STOPPING":
            # `down` asked it to stop and it has, before its supervisor could say so (a SIGTERM
            # that lands while the supervisor is still starting ends it outright): a stop, not a
            # failure, whether this or `down` looks first.
            return state.transition(job.id, "STOPPED", extra=fresh.extra)
        why = "its supervisor process was killed (or the machine restarted)"
        if fresh.extra.get("orphaned"):
            why = "its supervisor was killed, and its data prep or trainer has ended since"
        return state.transition(job.id, "FAILED", extra={**fresh.extra, "error": why})

    def logs(self, job, *, follow=False):
        if job.extra.get("docker"):
            return self._docker().logs(job, follow=follow)
        path = Path(job.log_path or Path(job.output_dir) / "logs" / "job.log")
        pos = job.extra.get("log_offset", 0)
        # where the next job in this folder began its part of the log, if one did
        later = [j.extra["log_offset"] for j in state.all_jobs() if j.log_path == job.log_path and j.id != job.id
                 and j.extra.get("log_offset", -1) > pos]
        end = min(later) if later else None
        while True:
            if path.exists():
                with open(path, "rb") as f:
                    f.seek(pos)
                    chunk = f.read() if end is None else f.read(max(0, end - pos))
                    pos = f.tell()
                if chunk:
                    sys.stdout.write(chunk.decode("utf-8", "replace"))
                    sys.stdout.flush()
            if not follow:
                return 0
            job = self.status(state.get(job.id))
            if job.done:
                with open(path, "rb") as f:  # whatever arrived between the last read and the end
                    f.seek(pos)
                    sys.stdout.write((f.read() if end is None else f.read(max(0, end - pos))).decode("utf-8", "replace"))
                return job.exit_code or 0
            time.sleep(0.5)

    def sync(self, job, to, *, watch=False):
        from launcher.sync import sync_run_folder

        return sync_run_folder(Path(job.output_dir), Path(to), job.id)

    def down(self, job, *, force=False):  # the run folder is here: nothing to lose by stopping
        if job.extra.get("docker"):
            return self._docker().down(job)
        job = self.status(job)
        deadline = time.time() + 30
        while not job.done and job.pid is None and time.time() < deadline:
            time.sleep(0.2)  # a submit still starting it: its supervisor gets the signal below
            job = self.status(state.get(job.id))
        if job.done:
            return job
        if job.pid is None:
            return state.transition(job.id, "STOPPED", extra={**job.extra, "error": "stopped before it started"})
        state.transition(job.id, "STOPPING")
        # SIGTERM goes down the chain (the trainer saves a checkpoint first); then the whole group,
        # orphans of a killed supervisor included, must be gone, or is killed after the grace.
        for pid in _stop_targets(job.pid):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + STOP_GRACE_S
        while time.time() < deadline and _group_alive(job.pid):
            time.sleep(0.3)
        killed = _group_alive(job.pid)
        if killed:  # said before the kill (a no-op on an ended job): `status` may end it before we look again
            state.transition(job.id, "STOPPING", exit_code=-signal.SIGKILL,
                             extra={**state.get(job.id).extra, "error": "killed after the stop grace"})
            try:
                os.killpg(job.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            while _group_alive(job.pid) and time.time() < deadline + 30:
                time.sleep(0.2)
        fresh = state.get(job.id)
        if fresh.done:
            return fresh
        # The supervisor did not record the end (killed, or orphaned before): say what down did.
        return state.transition(job.id, "STOPPED", exit_code=-signal.SIGKILL if killed else fresh.exit_code,
                                extra={**fresh.extra, "error": "killed after the stop grace" if killed else None})


def supervise(job_id: str) -> int:
    """Run the entry command for a job, recording its life in the state store. Holds the run
    folder's lock (inherited from submit) and hands it down to the entry command."""
    lock = runlock.inherited()
    job = state.get(job_id)
    out = Path(job.output_dir)
    log = Path(job.log_path) if job.log_path else out / "logs" / "job.log"
    stop_requested = False
    child = None

    # The handler only passes the stop on. It must not write the state store: the signal can land
    # inside the loop's own write transaction below, and a second writer in the same process then
    # waits on that transaction's lock until it fails, leaving the trainer unstopped.
    def forward(signum, _frame):
        nonlocal stop_requested
        stop_requested = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    spec_env = {}
    try:
        from launcher.spec import SpecError, load_spec

        spec_env = load_spec(out / "job.yaml").env
    except SpecError as e:  # the entry command reads it again and fails with the same line, exit 2
        print(f"[launcher] job file: {e}", flush=True)
    base_dir = Path(job.extra.get("job_file", job.output_dir)).parent
    cmd = entry_command(out / "job.yaml", out, base_dir)
    env = safe_env({**os.environ, **spec_env})
    if lock is not None:
        env[runlock.ENV_FD] = str(lock)
    state.transition(job_id, "PREPARING", pid=os.getpid(), started=time.time())
    child = subprocess.Popen(cmd, env=env, pass_fds=(lock,) if lock is not None else ())
    if stop_requested:
        child.send_signal(signal.SIGTERM)
    stage = out / STAGE
    recorded = None  # what this loop last wrote: each change is written once
    while True:
        try:
            code = child.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            pass
        try:
            now = "STOPPING" if stop_requested else "TRAINING" if stage.read_text().strip() == "training" else None
        except OSError:
            now = "STOPPING" if stop_requested else None
        if now and now != recorded:
            state.transition(job_id, now)
            recorded = now
    if stop_requested and code == -signal.SIGTERM:
        code = EXIT_STOPPED  # it ended on the stop it was asked for
    final, extra = _final(code, out, log)
    fresh = state.get(job_id)
    job = state.transition(job_id, final, exit_code=code, extra={**fresh.extra, **extra})
    why = f": {extra['error']}" if extra.get("error") else ""
    print(f"[launcher] job {job_id} {job.state.lower()} (exit code {code}){why}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(supervise(sys.argv[1]))
