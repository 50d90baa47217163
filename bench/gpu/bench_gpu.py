"""GPU throughput of the trainer's data layout: packed rows against the guide's real batching.

A randomly initialised 1B-class LLaMA (no weights to download) trains in bf16, as LoRA and as a
full fine-tune, on the same synthetic examples in four layouts, all in this one run:

  guide          the guide's training code's collator (PygmalionAI training-code,
                 DataCollatorForMmapedDataset): one example per row, padded to the longest row of the
                 batch rounded up to a multiple of 8, no attention_mask, labels -100 on padding
  max            one example per row, padded to max_length, attention_mask
  packed_nomask  packed rows with position ids 0..L-1: examples attend to the ones before them
  packed         trainers.gpu.data.PackedCollator: packed rows, position_ids restarts; with flash-attn
                 installed the batch is flattened into one variable-length row, as the trainer does

Ratios are against `guide`.

For each it prints useful (real, non-padding) tokens per second and model-FLOPs utilisation:
useful tokens x FLOPs per token / time / peak. FLOPs per token count the matmuls only: 6N for a
full fine-tune, 4N for LoRA (no weight gradients for the frozen base), plus causal attention over
the real example lengths; padding counts as waste, not work.

    python bench/gpu/bench_gpu.py                   # on a GPU: 1.1B model, max_length 2048
    python bench/gpu/bench_gpu.py --tiny            # smoke test on the CPU, seconds
    python bench/gpu/bench_gpu.py --peak-tflops 989 # H100/H200 SXM dense bf16 (the default guess)
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trainers.gpu.data import PackedCollator  # noqa: E402

# TinyLlama-1.1B's shape: a realistic 1B-class LLaMA.
LLAMA_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                num_key_value_heads=4, vocab_size=32000, max_position_embeddings=4096)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=1000, max_position_embeddings=256)
LAYOUTS = ("guide", "max", "packed_nomask", "packed")
PEAK_TFLOPS = {"H200": 989, "H100": 989, "A100": 312, "L40S": 362, "A10G": 125, "L4": 121, "RTX 4090": 165}


def example_lengths(n, median, sigma, max_length, seed):
    rng = np.random.default_rng(seed)
    return [int(x) for x in np.clip(rng.lognormal(np.log(median), sigma, n), 8, max_length)]


def pack(examples, max_length):
    rows, ids, pos = [], [], []
    for ex in examples:
        if ids and len(ids) + len(ex) > max_length:
            rows.append({"input_ids": ids, "labels": list(ids), "position_ids": pos})
            ids, pos = [], []
        ids, pos = ids + ex, pos + list(range(len(ex)))
    rows.append({"input_ids": ids, "labels": list(ids), "position_ids": pos})
    return rows


def padded(examples, pad_id, width, with_mask=True):
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(examples):
        ids[i, :len(e)] = torch.tensor(e)
        mask[i, :len(e)] = 1
    batch = {"input_ids": ids, "labels": ids.masked_fill(mask == 0, -100)}
    if with_mask:
        batch["attention_mask"] = mask
    return batch


def layout_batches(kind, examples, rows, bs, max_length, flatten):
    """(batch, lengths of the real examples in it) forever, cycling over the data."""
    collate = PackedCollator(0, flatten=flatten)
    while True:
        if kind == "packed":
            for i in range(0, len(rows) - bs + 1, bs):
                chunk = rows[i:i + bs]
                lens = []
                for r in chunk:
                    starts = [j for j, p in enumerate(r["position_ids"]) if p == 0] + [len(r["position_ids"])]
                    lens += [b - a for a, b in zip(starts, starts[1:])]
                yield collate(chunk), lens
        elif kind == "packed_nomask":
            for i in range(0, len(rows) - bs + 1, bs):
                chunk = rows[i:i + bs]
                # attention spans the whole row: count it as one long sequence of real tokens
                yield padded([r["input_ids"] for r in chunk], 0, max(len(r["input_ids"]) for r in chunk),
                             with_mask=False), [len(r["input_ids"]) for r in chunk]
        else:
            for i in range(0, len(examples) - bs + 1, bs):
                chunk = examples[i:i + bs]
                width = max_length if kind == "max" else -(-max(len(e) for e in chunk) // 8) * 8
                yield padded(chunk, 0, width, with_mask=kind == "max"), [len(e) for e in chunk]


def flops_per_step(n_params, cfg, lens, method):
    matmul = (6 if method == "full" else 4) * n_params * sum(lens)
    # causal attention: QK^T and AV, 2 matmuls x 2 FLOPs x L^2/2 x hidden per layer; x3 fwd+bwd
    attn = sum(3 * 2 * 2 * (n * n / 2) * cfg["hidden_size"] * cfg["num_hidden_layers"] for n in lens)
    return matmul + attn


def build(cfg, method, device, dtype, attn):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**cfg, use_cache=False, tie_word_embeddings=False)
    config._attn_implementation = attn
    model = LlamaForCausalLM(config)
    non_embedding = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = model.to(dtype)  # frozen base in bf16; peft keeps the adapter in fp32
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.to(device).train()
    return model, non_embedding


def run_one(cfg, method, kind, examples, rows, args, device, dtype, attn):
    model, n_params = build(cfg, method, device, dtype, attn)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5,
                            fused=device.type == "cuda")
    it = layout_batches(kind, examples, rows, args.batch_size, args.max_length, flatten=attn == "flash_attention_2")
    useful = flops = 0.0
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for step in range(args.warmup + args.steps):
        batch, lens = next(it)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        if step == args.warmup:
            sync()
            t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= args.warmup:
            useful += sum(lens)
            flops += flops_per_step(n_params, cfg, lens, method)
    sync()
    elapsed = time.perf_counter() - t0
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    del model, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return useful / elapsed, flops / elapsed, peak_mem


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny model on the CPU: checks the script, measures nothing")
    ap.add_argument("--methods", default="lora,full")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--median", type=int, default=300, help="median example length (tokens)")
    ap.add_argument("--sigma", type=float, default=0.9)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU (default: from its name)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    if args.tiny:
        cfg, device, dtype = TINY, torch.device("cpu"), torch.float32
        args.max_length, args.median, args.batch_size, args.steps, args.warmup = 64, 16, 4, 2, 1
    else:
        if not torch.cuda.is_available():
            print("no CUDA GPU here; use --tiny for a CPU smoke test", file=sys.stderr)
            return 2
        cfg, device, dtype = LLAMA_1B, torch.device("cuda"), torch.bfloat16
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), 989 if device.type == "cuda" else 1)
    attn = "flash_attention_2" if device.type == "cuda" and importlib.util.find_spec("flash_attn") else "sdpa"

    n = args.batch_size * (args.warmup + args.steps) * max(4, args.max_length // args.median * 2)
    lengths = example_lengths(n, args.median, args.sigma, args.max_length, 0)
    rng = np.random.default_rng(1)
    examples = [rng.integers(10, cfg["vocab_size"], size=k).tolist() for k in lengths]
    rows = pack(examples, args.max_length)
    print(f"{name}: LLaMA {cfg['num_hidden_layers']}x{cfg['hidden_size']}, {attn}, "
          f"{'bf16' if dtype == torch.bfloat16 else 'fp32'}, batch {args.batch_size} x {args.max_length}; "
          f"example lengths median {int(np.median(lengths))}, mean {np.mean(lengths):.0f}, max {max(lengths)}", flush=True)

    results = []
    for method in args.methods.split(","):
        base = None
        for kind in LAYOUTS:
            tps, fps, mem = run_one(cfg, method, kind, examples, rows, args, device, dtype, attn)
            base = base or tps
            mfu = fps / (peak * 1e12)
            results.append({"method": method, "layout": kind, "useful_tokens_per_s": tps, "mfu": mfu,
                            "peak_mem_gib": mem, "vs_guide": tps / base})
            print(f"{method:4s} {kind:13s} {tps:11.0f} useful tokens/s  MFU {mfu:6.1%}  "
                  f"{tps / base:5.2f}x the guide's collator  peak mem {mem:.1f} GiB", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": name, "attn": attn, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
