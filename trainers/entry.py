"""The one entry command of a job, the same on this machine, in a container and on a cloud VM:

    python -m trainers.entry JOB.yaml --out OUT [--base-dir DIR] [--skip-bad]

It runs data prep (`python -m dataprep`, cached: a re-run after a preemption does no work), then
the trainer the job's accelerators call for: the GPU trainer (also on CPU), or the TPU trainer.
SIGTERM is passed on to the running stage, so the trainer saves a checkpoint and exits 75, and
running the command again resumes from there; a stop during data prep exits 75 too.

It owns the run folder while it runs: it keeps the lock its launcher handed down
($LAUNCHER_LOCK_FD), or takes OUT/.lock itself (in a container, on a cloud machine), and passes it
to each stage, so a second job cannot write into the same folder (launcher/runlock.py). It writes
the current stage into OUT/.stage for the local supervisor. The stages run with -P, so a
`dataprep.py` in the current folder is never run instead of ours.

No launcher dependencies beyond the job spec and the run lock: this runs inside the images.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from launcher.errors import EXIT_BAD_INPUT, EXIT_STOPPED

LOW_DISK = 64 << 20  # less free than this after a failed stage: the disk filled up


def python_module(module: str) -> list[str]:
    """argv running one of our modules with the current folder off sys.path (PYTHONPATH kept)."""
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-m", module]
    return [sys.executable, "-c", "import runpy, sys; del sys.path[0]; sys.argv[0] = 'python'; "
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"]


class _Stop:
    requested = False


def _write_stage(out: Path, stage: str) -> None:
    try:
        tmp = out / ".stage.tmp"
        tmp.write_text(stage)
        tmp.replace(out / ".stage")
    except OSError:
        pass  # a full disk: the stage is only a hint for `launcher status`


def _run(stage: str, cmd: list[str], env: dict, lock: int | None = None) -> int:
    print(f"[entry] {stage}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, pass_fds=(lock,) if lock is not None else ())

    def forward(signum, _frame):
        _Stop.requested = True
        proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if code < 0:  # killed by a signal: say so, and exit the way a shell does (128 + n), not 256 - n
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        print(f"[entry] {stage} was killed by signal {-code} ({name})", flush=True)
        code = 128 - code
    if code not in (0, EXIT_STOPPED) and _Stop.requested:
        code = EXIT_STOPPED  # stopped on request (launcher down) before it could save anything: nothing lost
    print(f"[entry] {stage} finished in {time.time() - t0:.0f}s with exit code {code}", flush=True)
    return code


def _say_if_disk_full(out: Path, code: int) -> None:
    if code in (0, EXIT_STOPPED):
        return
    import shutil

    try:
        free = shutil.disk_usage(out).free
    except OSError:
        return
    if free < LOW_DISK:
        print(f"error: no space left on device in {out} ({free / 2**20:.0f} MB free); free some space and "
              "run again to resume", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainers.entry", description=__doc__.split("\n\n")[0])
    ap.add_argument("job", type=Path, help="the job file")
    ap.add_argument("--out", type=Path, required=True, help="the run folder (data, checkpoints, final model)")
    ap.add_argument("--base-dir", type=Path, default=None, help="where relative data paths start (default: the job file's folder)")
    ap.add_argument("--skip-bad", action="store_true", help="quarantine bad input rows instead of stopping")
    args = ap.parse_args(argv)

    from launcher import runlock
    from launcher.spec import SpecError, load_spec, write_resolved

    def stop_early(signum, _frame):
        _Stop.requested = True

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, stop_early)  # until the first stage runs, a stop only has to be remembered
    try:
        spec = load_spec(args.job)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out = args.out.expanduser().resolve()
    lock = runlock.inherited()
    if lock is None:
        try:
            lock = runlock.acquire(out, os.environ.get(runlock.ENV_JOB) or f"pid-{os.getpid()}")
        except runlock.FolderBusy as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
    resolved = write_resolved(spec, out, keep=True)
    base_dir = args.base_dir or args.job.resolve().parent
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONSAFEPATH": "1", runlock.ENV_FD: str(lock)}
    data = out / "data"
    # A marker that an earlier run was stopped says nothing about this one.
    (out / "stopped.json").unlink(missing_ok=True)
    if _Stop.requested:
        return EXIT_STOPPED

    _write_stage(out, "prep")
    prep = [*python_module("dataprep"), str(resolved), "--out", str(data), "--base-dir", str(base_dir)]
    if args.skip_bad:
        prep.append("--skip-bad")
    code = _run("data prep", prep, env, lock)
    if code != 0:
        _say_if_disk_full(out, code)
        return code
    if _Stop.requested:
        return EXIT_STOPPED

    _write_stage(out, "training")
    if spec.resources.is_tpu:
        train = [*python_module("trainers.tpu.train"), str(resolved), "--data", str(data), "--out", str(out)]
        code = _run("training", train, env, lock)
    else:
        from trainers.gpu.launch import command, exit_code

        # Under `accelerate launch` a worker stopped by SIGTERM surfaces as exit 1; exit_code restores 75.
        code = exit_code(_run("training", command(spec, data, out, env), env, lock), out)
    return code  # the trainer says itself when the disk is full


if __name__ == "__main__":
    code = main()
    # A stop that arrives now (the supervisor passing on a group's SIGTERM late) would find Python's
    # default handlers back during shutdown and turn this exit code into "killed by SIGTERM".
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    sys.exit(code)
