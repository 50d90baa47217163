"""Benchmark: near-duplicate recall and precision against the similarity of planted pairs, and what
the better recall costs in throughput, against the previous deduplication measured in the same run.

  before: dataprep/dedup.py at commit 731b944 (datasketch's balanced LSH bands, the first band hit
          taken as a duplicate, 4-5 SQLite calls per row)
  now:    dataprep.dedup (bands chosen for recall, candidates confirmed by exact 3-gram Jaccard,
          lookups and inserts batched per 500 rows as the pipeline does)

Recall: pairs (original, copy) whose exact word-3-gram Jaccard similarity falls in each bin; a copy
counts as caught when it is dropped as a near-duplicate. Precision: of the copies dropped, the
share whose similarity is at or above the threshold. Throughput: rows per second of signing plus
the index decisions, and of the index decisions alone (what runs in the main process while worker
processes sign), on a corpus of unrelated rows with 20% near copies; rounds interleaved, medians.

    python bench/prep_dedup.py [--threshold 0.85] [--num-perm 64] [--pairs 250] [--rows 20000] [--rounds 3]
"""
from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BEFORE = "731b944"
WALL = False


def _clock() -> float:
    """CPU seconds of this process by default: the work is single-threaded, and on a shared machine
    wall time mostly measures the neighbours (--wall for wall time)."""
    return time.perf_counter() if WALL else time.process_time()


BINS = [0.70, 0.75, 0.78, 0.80, 0.82, 0.83, 0.84, 0.85, 0.86, 0.87, 0.88, 0.90, 0.92, 0.95, 0.97, 0.99]


def _before():
    src = subprocess.run(["git", "show", f"{BEFORE}:dataprep/dedup.py"], cwd=REPO, capture_output=True, text=True)
    if src.returncode:
        raise SystemExit(f"cannot read dataprep/dedup.py at {BEFORE} from git: {src.stderr.strip()}")
    path = Path(tempfile.gettempdir()) / f"dataprep_dedup_{BEFORE}.py"
    path.write_text(src.stdout.replace("from .clean import", "from dataprep.clean import")
                    .replace("from .config import", "from launcher.dataspec import"))
    spec = importlib.util.spec_from_file_location("dedup_before", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def planted(per_bin: int, seed: int = 0):
    """(original, copy, similarity) with per_bin pairs in each similarity bin: n distinct words, k of
    them replaced at spread-out places (each replacement changes 3 of the 3-grams)."""
    from dataprep.dedup import jaccard, shingle_array

    rng = random.Random(seed)
    want = {i: per_bin for i in range(len(BINS) - 1)}
    out = []
    while any(want.values()):
        n = rng.randint(60, 700)
        words = [f"w{rng.randrange(10**9)}" for _ in range(n)]
        copy = list(words)
        k = rng.randint(1, max(1, n // 12))
        for pos in rng.sample(range(2, n - 2, 4), min(k, len(range(2, n - 2, 4)))):
            copy[pos] = f"x{rng.randrange(10**9)}"
        a, b = {"text": " ".join(words)}, {"text": " ".join(copy)}
        j = jaccard(shingle_array(a), shingle_array(b))
        i = next((i for i in range(len(BINS) - 1) if BINS[i] <= j < BINS[i + 1]), None)
        if i is not None and want[i]:
            want[i] -= 1
            out.append((a, b, j))
    rng.shuffle(out)
    return out


def corpus(rows: int, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    vocab = [f"v{i}" for i in range(20000)]
    out = []
    for i in range(rows):
        if out and rng.random() < 0.2:
            words = out[rng.randrange(len(out))]["text"].split()
            words[rng.randrange(len(words))] = "changed"
        else:
            words = rng.choices(vocab, k=rng.randint(30, 300))
        out.append({"text": " ".join(words), "_where": f"c:{i}"})
    return out


def run_before(mod, cfg, recs, presigned=None):
    from dataprep.dedup import content_key

    with tempfile.TemporaryDirectory() as d:
        dd = mod.Deduper(cfg, Path(d))
        keys = [content_key(r) for r in recs]
        t0 = _clock()
        if presigned is None:
            out = [dd.check(r, k) for r, k in zip(recs, keys)]
        else:
            out = [dd.check(r, k, b) for r, k, b in zip(recs, keys, presigned)]
        t = _clock() - t0
        dd.close()
    return out, t


def run_now(cfg, recs, presigned=None, batch=500):
    from dataprep.dedup import Deduper, content_key

    with tempfile.TemporaryDirectory() as d:
        dd = Deduper(cfg, Path(d))
        items = [(r, content_key(r), *(presigned[i] if presigned else (None, None))) for i, r in enumerate(recs)]
        t0 = _clock()
        out = []
        for i in range(0, len(items), batch):
            out += dd.check_batch(items[i:i + batch])
        t = _clock() - t0
        settings = dd.settings()
        dd.close()
    return out, t, settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threshold", type=float, default=0.85)
    ap.add_argument("--num-perm", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=250, help="planted pairs per similarity bin")
    ap.add_argument("--rows", type=int, default=20000, help="rows of the throughput corpus")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--wall", action="store_true", help="time by the wall clock instead of CPU time")
    args = ap.parse_args()
    global WALL
    WALL = args.wall
    from launcher.dataspec import DedupConfig
    from dataprep.dedup import Signer

    old = _before()
    cfg = DedupConfig(threshold=args.threshold, num_perm=args.num_perm)
    b_old, r_old = old.bands(cfg.threshold, cfg.num_perm)
    new_settings = None

    # -- recall and precision by similarity
    pairs = planted(args.pairs)
    recs = []
    for i, (a, b, _) in enumerate(pairs):
        recs += [{**a, "_where": f"a{i}"}, {**b, "_where": f"b{i}"}]
    got_old, _ = run_before(old, cfg, recs)
    got_new, _, new_settings = run_now(cfg, recs)
    print(f"threshold {cfg.threshold}, num_perm {cfg.num_perm}: before {b_old} bands x {r_old} rows (datasketch's "
          f"balanced choice), now {new_settings['bands']} bands x {new_settings['rows_per_band']} rows + exact Jaccard")
    print(f"\n{'similarity':>13s} {'pairs':>6s} {'caught before':>14s} {'caught now':>11s}")
    stats = {}
    for i in range(len(BINS) - 1):
        idx = [k for k, (_, _, j) in enumerate(pairs) if BINS[i] <= j < BINS[i + 1]]
        c_old = sum(got_old[2 * k + 1] == "near_duplicate" for k in idx) / len(idx)
        c_new = sum(got_new[2 * k + 1] == "near_duplicate" for k in idx) / len(idx)
        hi = min(BINS[i + 1], 1.0)
        print(f"{BINS[i]:.2f}-{hi:.2f}{']' if hi == 1.0 else ')':1s} {len(idx):6d} {c_old:14.1%} {c_new:11.1%}")
        stats[i] = (c_old, c_new)
    for name, got in (("before", got_old), ("now", got_new)):
        dropped = [j for k, (_, _, j) in enumerate(pairs) if got[2 * k + 1] == "near_duplicate"]
        above = [k for k, (_, _, j) in enumerate(pairs) if j >= cfg.threshold + 0.02]
        below = [k for k, (_, _, j) in enumerate(pairs) if j < cfg.threshold - 0.05]
        rec = sum(got[2 * k + 1] == "near_duplicate" for k in above) / len(above)
        kept_below = sum(got[2 * k + 1] is None for k in below) / len(below)
        prec = sum(j >= cfg.threshold for j in dropped) / max(1, len(dropped))
        print(f"{name:>6s}: recall at >= threshold+0.02: {rec:.2%}; precision (dropped copies at >= threshold): "
              f"{prec:.2%}; kept below threshold-0.05: {kept_below:.2%}")

    # -- throughput
    data = corpus(args.rows)
    sign_old = old.Signer(cfg)
    sign_new = Signer(cfg)
    times = {k: [] for k in ("before sign+index", "now sign+index", "before index", "now index", "now index, batch 1")}
    for rnd in range(args.rounds):
        order = list(times) if rnd % 2 == 0 else list(reversed(times))
        for k in order:
            if k == "before sign+index":
                t0 = _clock()
                pre = [sign_old(r) for r in data]
                ts = _clock() - t0
                _, ti = run_before(old, cfg, data, pre)
                times[k].append(ts + ti)
            elif k == "now sign+index":
                t0 = _clock()
                pre = [x for i in range(0, len(data), 500) for x in sign_new.batch(data[i:i + 500])]
                ts = _clock() - t0
                _, ti, _ = run_now(cfg, data, pre)
                times[k].append(ts + ti)
            elif k == "before index":
                pre = [sign_old(r) for r in data]
                times[k].append(run_before(old, cfg, data, pre)[1])
            elif k == "now index":
                pre = [x for i in range(0, len(data), 500) for x in sign_new.batch(data[i:i + 500])]
                times[k].append(run_now(cfg, data, pre)[1])
            else:
                pre = [x for i in range(0, len(data), 500) for x in sign_new.batch(data[i:i + 500])]
                times[k].append(run_now(cfg, data, pre, batch=1)[1])
    med = {k: statistics.median(v) for k, v in times.items()}
    _, _, st = run_now(cfg, data)
    print(f"\nthroughput on {args.rows} rows (30-300 words, 20% near copies), median of {args.rounds} rounds, "
          f"{'wall' if WALL else 'CPU'} time:")
    for k, t in med.items():
        print(f"  {k:20s} {args.rows / t:9.0f} rows/s  ({t / args.rows * 1e6:6.1f} us a row)")
    print(f"  sign+index now / before = {med['before sign+index'] / med['now sign+index']:.2f}x the throughput")
    print(f"  index now / before      = {med['before index'] / med['now index']:.2f}x the throughput "
          f"(batched per 500; one row at a time: {med['before index'] / med['now index, batch 1']:.2f}x)")
    print(f"  candidate pairs checked now: {st['candidate_pairs_checked']} "
          f"({st['candidate_pairs_checked'] / args.rows:.2f} a row), confirmed {st['near_duplicates_confirmed']}")


if __name__ == "__main__":
    main()
