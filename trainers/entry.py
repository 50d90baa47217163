"""The one entry command of a job, the same on this machine, in a container and on a cloud VM:

    python -m trainers.entry JOB.yaml --out OUT [--base-dir DIR] [--skip-bad]

It runs data prep (`python -m dataprep`, cached: a re-run after a preemption does no work), then
the trainer the job's accelerators call for: the GPU trainer (also on CPU), or the TPU trainer.
SIGTERM is passed on to the running stage, so the trainer saves a checkpoint and exits 75, and
running the command again resumes from there.

No launcher dependencies beyond the job spec: this runs inside the images.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from launcher.errors import EXIT_BAD_INPUT


def _run(stage: str, cmd: list[str], env: dict) -> int:
    print(f"[entry] {stage}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env)

    def forward(signum, _frame):
        proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    print(f"[entry] {stage} finished in {time.time() - t0:.0f}s with exit code {code}", flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainers.entry", description=__doc__.split("\n\n")[0])
    ap.add_argument("job", type=Path, help="the job file")
    ap.add_argument("--out", type=Path, required=True, help="the run folder (data, checkpoints, final model)")
    ap.add_argument("--base-dir", type=Path, default=None, help="where relative data paths start (default: the job file's folder)")
    ap.add_argument("--skip-bad", action="store_true", help="quarantine bad input rows instead of stopping")
    args = ap.parse_args(argv)

    from launcher.spec import SpecError, load_spec, write_resolved

    try:
        spec = load_spec(args.job)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    resolved = write_resolved(spec, out, keep=True)
    base_dir = args.base_dir or args.job.resolve().parent
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    data = out / "data"

    prep = [sys.executable, "-m", "dataprep", str(resolved), "--out", str(data), "--base-dir", str(base_dir)]
    if args.skip_bad:
        prep.append("--skip-bad")
    code = _run("data prep", prep, env)
    if code != 0:
        return code

    if spec.resources.is_tpu:
        train = [sys.executable, "-m", "trainers.tpu.train", str(resolved), "--data", str(data), "--out", str(out)]
        return _run("training", train, env)
    from trainers.gpu.launch import command, exit_code

    # Under `accelerate launch` a worker stopped by SIGTERM surfaces as exit 1; exit_code restores 75.
    return exit_code(_run("training", command(spec, data, out, env), env), out)


if __name__ == "__main__":
    sys.exit(main())
