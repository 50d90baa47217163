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
from launcher.spec import RESOLVED, write_resolved
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


# Fields that change only how a run is watched, saved or sped up, not the model it ends with: a
# finished run submitted again with other values of these is still finished.
NOT_TRAINING = {f"train.{f}" for f in (
    "per_device_eval_batch_size", "eval_steps", "do_eval", "eval_on_start", "save_steps", "save_total_limit",
    "logging_steps", "logging_first_step", "report_to", "wandb_project", "dataloader_num_workers",
    "sample_prompts", "sample_max_new_tokens", "attn_implementation", "gradient_checkpointing", "fsdp",
    "ddp_find_unused_parameters")} | {"data.workers", "data.chunk_size", "lora.merge"}
TRAINING = ("model", "tokenizer", "method", "lora", "data", "train")


def changed_since(final: Path, spec) -> list[str]:
    """The fields that change what is trained where `spec` differs from the job that made `final`
    (its job.yaml), as `field (old -> new)`; [] when they agree or `final` records no job."""
    import yaml

    try:
        before = _flat(yaml.safe_load((final / RESOLVED).read_text(encoding="utf-8")) or {})
    except (OSError, yaml.YAMLError):
        return []
    now = _flat(spec.model_dump(mode="json"))
    changed = []
    for field in [*now, *(f for f in before if f not in now)]:
        if field.split(".")[0] in TRAINING and field not in NOT_TRAINING and before.get(field) != now.get(field):
            old, new = before.get(field), now.get(field)
            scalar = not isinstance(old, (list, dict)) and not isinstance(new, (list, dict))
            changed.append(f"{field} ({old} -> {new})" if scalar else field)
    return changed


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


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
