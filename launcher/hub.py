"""`launcher push`: a run's model to the Hugging Face Hub, with a model card made from the run.

What goes up: RUN/export (the merged model and its GGUF files) when a complete one exists, else
the adapter (or full model) of RUN/final; with README.md (base model, method, data counts,
hyperparameters, final train/eval loss) and loss.png. huggingface_hub does the talking; the token
is HF_TOKEN from the environment, handed to it in memory and never written anywhere.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from launcher.errors import LauncherError

SKIP = {"manifest.json", "job.yaml", "trainer_state.json", "samples.jsonl", "training_args.bin", "loss.png"}


class HubError(LauncherError):
    pass


def files(run) -> dict[str, Path]:
    """path in the repository -> local file."""
    from trainers.export import exported

    out: dict[str, Path] = {}
    export = run.dir / "export"
    if exported(run.dir):
        for p in sorted((export / "model").rglob("*")):
            if p.is_file():
                out[p.relative_to(export / "model").as_posix()] = p
        for p in sorted(export.glob("*.gguf")):
            out[p.name] = p
    else:
        for p in sorted(run.model_dir.rglob("*")):
            rel = p.relative_to(run.model_dir)
            if p.is_file() and rel.parts[0] != "merged" and p.name not in SKIP:
                out[rel.as_posix()] = p
    if (run.model_dir / "loss.png").is_file():
        out["loss.png"] = run.model_dir / "loss.png"
    return out


def model_card(run, repo_id: str, uploaded: dict[str, Path]) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    spec = run.spec
    history = []
    state = run.model_dir / "trainer_state.json"
    if state.is_file():
        history = json.loads(state.read_text()).get("log_history", [])
    train = [h["loss"] for h in history if "loss" in h]
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    steps = max((h.get("step", 0) for h in history), default=0)
    report = run.dir / "data" / "report.json"
    data = json.loads(report.read_text()) if report.is_file() else {}
    merged = any(k.endswith(".safetensors") and not k.startswith("adapter") for k in uploaded)
    ggufs = [k for k in uploaded if k.endswith(".gguf")]
    ref = run.base_ref()
    hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", ref) and not Path(ref).expanduser().exists()
    meta = ModelCardData(base_model=ref if hub_id else None,  # the Hub links base models by id only
                         library_name="transformers" if merged or not run.is_adapter else "peft",
                         tags=["llm-launcher", spec.method if spec else "fine-tune"] + (["gguf"] if ggufs else []))
    lines = [f"# {repo_id.split('/')[-1]}", "",
             f"Fine-tuned from `{run.base_ref()}` with {(spec.method if spec else '?').upper()} by llm-launcher "
             f"({steps} steps).", "",
             "## Files", ""]
    lines.append("- the model with the adapter merged in (transformers), tokenizer and chat template" if merged else
                 "- the LoRA adapter (peft) with tokenizer and chat template" if run.is_adapter else
                 "- the model (transformers), tokenizer and chat template")
    lines += [f"- `{g}`: GGUF for llama.cpp, KoboldAI, text-generation-webui (chat template in its metadata)"
              for g in ggufs]
    lines += ["", "## Data", ""]
    if data:
        lines.append(data.get("summary", ""))
        stages = data.get("stages", {})
        if stages:
            lines += ["", "| stage | in | kept |", "|---|---|---|"]
            lines += [f"| {k} | {v.get('in', '')} | {v.get('kept', '')} |" for k, v in stages.items()]
    else:
        lines.append("No data report was found in the run folder.")
    lines += ["", "## Training", "", "| hyperparameter | value |", "|---|---|"]
    if spec:
        t = spec.train
        rows = {"method": spec.method, "learning rate": t.learning_rate, "scheduler": t.lr_scheduler_type,
                "warmup steps": t.warmup_steps, "batch size per device": t.per_device_train_batch_size,
                "gradient accumulation": t.gradient_accumulation_steps, "max steps": t.max_steps,
                "epochs": t.num_train_epochs, "max length": spec.data.max_length, "chat template": spec.data.chat_template}
        if spec.method in ("lora", "qlora"):
            rows.update({"LoRA r": spec.lora.r, "LoRA alpha": spec.lora.alpha, "LoRA dropout": spec.lora.dropout,
                         "LoRA targets": spec.lora.target_modules})
        lines += [f"| {k} | {v} |" for k, v in rows.items()]
    lines += ["", f"Final train loss: {train[-1]:.4f}" if train else "Final train loss: not logged",
              f"Final eval loss: {evals[-1]:.4f}" if evals else "Final eval loss: not evaluated"]
    if "loss.png" in uploaded:
        lines += ["", "![loss](loss.png)"]
    return str(ModelCard(f"---\n{meta.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"))


def push(src: str | Path, repo_id: str, *, private: bool = False) -> str:
    """Create or update `repo_id` with the run's model and card; returns the repository's URL."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from trainers.export import Run

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise HubError(f"--hub {repo_id}: {str(e).splitlines()[0]}") from None
    if "/" not in repo_id:
        raise HubError(f"--hub {repo_id}: expected USER/NAME (or ORG/NAME)")
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise HubError("push needs a Hugging Face write token in HF_TOKEN (https://huggingface.co/settings/tokens); "
                       "it is read from the environment and never written")
    run = Run(src)
    up = files(run)
    card = model_card(run, repo_id, up).encode()
    ops = [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card)]
    ops += [CommitOperationAdd(path_in_repo=k, path_or_fileobj=str(p)) for k, p in up.items()]
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.create_commit(repo_id, operations=ops, commit_message=f"llm-launcher: {run.name}")
    except Exception as e:  # the hub's HTTP errors, offline mode, no network: all one line for the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HubError(f"push to {repo_id} failed: {first}") from None
    return f"pushed {len(ops)} files to {url}"
