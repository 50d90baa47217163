"""`--cloud local`: run the job on this machine, in the background, with no cloud account.

`submit` starts a small detached supervisor (`python -m launcher.backends.local JOB_ID`) and
returns. The supervisor runs the entry command (`python -m trainers.entry`: data prep, then
training), records RUNNING / exit code / end time in the state store, and forwards SIGTERM so that
`launcher down` lets the trainer save a checkpoint before it exits. With `resources.docker` the
job runs inside the GPU image instead (launcher/backends/local_docker.py).
"""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from launcher import state
from launcher.backends import register
from launcher.backends.base import Backend, BackendError
from launcher.errors import EXIT_STOPPED
from launcher.spec import write_resolved

STOP_GRACE_S = 180  # a checkpoint save of a 7B model on a slow disk takes this long


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


def entry_command(job_yaml: Path, out: Path, base_dir: Path) -> list[str]:
    return [sys.executable, "-m", "trainers.entry", str(job_yaml), "--out", str(out), "--base-dir", str(base_dir)]


@register
class LocalBackend(Backend):
    name = "local"
    summary = "this machine, no cloud account (--docker: inside the GPU image)"
    cannot = {
        "tpu": "cloud local has no TPU; TPUs are on Google Cloud: --tpu v3-8 --zone europe-west4-a",
        "spot": "cloud local cannot do spot machines: this machine is yours; drop --spot, or use --cloud aws --spot",
        "multi_node": "cloud local is one machine: resources.num_nodes must be 1 (several nodes: --cloud aws or slurm)",
        "region": "cloud local cannot choose a region or zone: drop --region/--zone",
    }

    def _docker(self):
        from launcher.backends.local_docker import BACKEND

        return BACKEND

    def check(self, spec):
        super().check(spec)
        if spec.resources.docker:
            return
        missing = [m for m in ("torch", "transformers", "datasets", "peft") if importlib.util.find_spec(m) is None]
        if missing:
            raise BackendError("cloud local trains on this machine and needs the gpu extra "
                               f"(missing: {', '.join(missing)}): pip install 'llm-launcher[gpu]'")

    def dry_run(self, spec, job_file: Path) -> str:
        if spec.resources.docker:
            return self._docker().dry_run(spec, job_file)
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
        out = Path(job.output_dir)
        for other in state.all_jobs():
            if other.id != job.id and other.cloud == "local" and not other.done and other.output_dir == job.output_dir:
                other = self.status(other)
                if not other.done:
                    raise BackendError(f"job {other.id} is already writing to {out}; wait for it, stop it "
                                       f"(`launcher down {other.id}`), or give this one another name (--set name=...)")
        (out / "logs").mkdir(parents=True, exist_ok=True)
        write_resolved(spec, out)
        log = out / "logs" / "job.log"
        with open(log, "ab") as f:
            proc = subprocess.Popen([sys.executable, "-m", "launcher.backends.local", job.id],
                                    stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                    start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return state.update(job.id, pid=proc.pid, log_path=str(log), state="PENDING")

    def status(self, job):
        if job.extra.get("docker"):
            return self._docker().status(job)
        if job.done or _alive(job.pid):
            return job
        fresh = state.get(job.id)  # the supervisor may have finished a moment ago
        if fresh.done or _alive(fresh.pid):
            return fresh
        return state.update(job.id, state="FAILED", ended=fresh.ended or time.time(),
                            extra={**fresh.extra, "error": "the supervisor process disappeared (machine restarted?)"})

    def logs(self, job, *, follow=False):
        if job.extra.get("docker"):
            return self._docker().logs(job, follow=follow)
        path = Path(job.log_path or Path(job.output_dir) / "logs" / "job.log")
        pos = 0
        while True:
            if path.exists():
                with open(path, "rb") as f:
                    f.seek(pos)
                    chunk = f.read()
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
                    sys.stdout.write(f.read().decode("utf-8", "replace"))
                return job.exit_code or 0
            time.sleep(0.5)

    def sync(self, job, to, *, watch=False):
        from launcher.sync import sync_run_folder

        return sync_run_folder(Path(job.output_dir), Path(to))

    def down(self, job):
        if job.extra.get("docker"):
            return self._docker().down(job)
        job = self.status(job)
        if job.done:
            return job
        state.update(job.id, state="STOPPING")
        try:
            os.kill(job.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.time() + STOP_GRACE_S
        while time.time() < deadline and _alive(job.pid):
            time.sleep(0.5)
        if _alive(job.pid):
            os.killpg(job.pid, signal.SIGKILL)
            return state.update(job.id, state="STOPPED", ended=time.time(), exit_code=-9)
        return self.status(state.get(job.id))


def supervise(job_id: str) -> int:
    """Run the entry command for a job, recording its life in the state store."""
    job = state.get(job_id)
    spec_env = {}
    try:
        from launcher.spec import SpecError, load_spec

        spec_env = load_spec(Path(job.output_dir) / "job.yaml").env
    except SpecError as e:  # the entry command reads it again and fails with the same line, exit 2
        print(f"[launcher] job file: {e}", flush=True)
    base_dir = Path(job.extra.get("job_file", job.output_dir)).parent
    out = Path(job.output_dir)
    cmd = entry_command(out / "job.yaml", out, base_dir)
    child = subprocess.Popen(cmd, env={**os.environ, **spec_env, "PYTHONUNBUFFERED": "1"})
    state.update(job_id, state="RUNNING", started=time.time())

    def forward(signum, _frame):
        state.update(job_id, state="STOPPING")
        child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = child.wait()
    final = "SUCCEEDED" if code == 0 else ("STOPPED" if code in (EXIT_STOPPED, -signal.SIGTERM) else "FAILED")
    state.update(job_id, state=final, exit_code=code, ended=time.time())
    print(f"[launcher] job {job_id} {final.lower()} (exit code {code})", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(supervise(sys.argv[1]))
