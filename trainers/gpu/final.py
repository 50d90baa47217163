"""OUT/final: what a finished run leaves behind, written so that a sync can verify it.

The model (the LoRA adapter, or the whole model for a full fine-tune), merged weights when
`lora.merge` asks, the tokenizer, the Trainer's state with the whole loss history, a loss-curve
PNG, a few generations from validation prompts (the quickest check that the model learned what it
should), the job file, and last of all the manifest.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from launcher.manifest import write_manifest
from launcher.spec import write_resolved
from trainers.gpu.data import first_example


def write_final(trainer, spec, tokenizer, out: Path, model_path: str, precision: str, prompts_ds, upload=None) -> Path:
    final = out / "final"
    # The first process of each node that saves (save_on_each_node: every node, as there may be no
    # shared disk) writes a whole, verifiable final; only the very first one uploads.
    main = trainer.args.should_save
    if main and final.exists():
        shutil.rmtree(final)  # a half-written final from a run that died while writing it
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(final))  # every rank takes part: FSDP gathers the shards here
    if not main:
        return final
    first = trainer.is_world_process_zero()

    tokenizer.save_pretrained(final)
    trainer.state.save_to_json(str(final / "trainer_state.json"))
    plot_loss(trainer.state.log_history, final / "loss.png", spec.name)
    if spec.train.sample_prompts and not spec.train.fsdp:  # sharded weights cannot generate on one rank
        model = trainer.accelerator.unwrap_model(trainer.model)
        samples = generate_samples(model, tokenizer, prompts_ds, spec.train.sample_prompts, spec.train.sample_max_new_tokens)
        with open(final / "samples.jsonl", "w", encoding="utf-8") as f:
            for s in samples:
                f.write(json.dumps(s, ensure_ascii=False) + "\n")
    write_resolved(spec, final)
    if spec.method in ("lora", "qlora") and spec.lora.merge:
        merge_adapter(model_path, final, final / "merged", precision)
        tokenizer.save_pretrained(final / "merged")
    write_manifest(final, {"step": trainer.state.global_step})
    print(f"final model in {final}", flush=True)
    if upload is not None and first:
        upload(final)
    return final


def plot_loss(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a training machine
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def generate_samples(model, tokenizer, ds, n: int, max_new_tokens: int) -> list[dict]:
    """Greedy continuations of the first example of the first n rows (deterministic, comparable across runs)."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    samples = []
    with torch.no_grad():
        for i in range(min(n, len(ds))):
            prompt, reference = first_example(ds[i])
            ids = torch.tensor([prompt], device=device)
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, use_cache=True, pad_token_id=tokenizer.pad_token_id)
            samples.append({
                "prompt": tokenizer.decode(prompt, skip_special_tokens=False),
                "reference": tokenizer.decode(reference, skip_special_tokens=True),
                "generation": tokenizer.decode(gen[0, len(prompt):], skip_special_tokens=True),
            })
    model.train(was_training)
    return samples


def merge_adapter(model_path: str, adapter_dir: Path, dest: Path, precision: str) -> None:
    """Base + adapter as one ordinary model. Reloads the base unquantized (a 4-bit QLoRA base cannot be merged into)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(dest)
