"""EasyLM's command line for a job: `render(spec, tpu_type, ...)` returns the `--a.b=value` flags.

Pure and standard-library only (no JAX, no torch), so the SkyPilot task and `--dry-run` can show
exactly what a TPU run will do. What it decides, and why:
- Model shape from the HF config, field by field: EasyLM accepts `--load_llama_config` and ignores it.
- Memory: `launcher.tpu_plan` decides the mesh (FSDP over every device, `1,N,1`, unless model
  parallelism is needed), the micro-batch, accumulation, remat and bf16 AdamW moments, starting from
  the job's own values and changing only what does not fit; the global batch is then the rows per
  FSDP shard times the shards, a multiple of them, as EasyLM's sharding requires.
- Every `train:` field maps to a flag (TRAIN_FIELDS says which) or, set to something EasyLM cannot
  do, is refused with a line naming it (`check_train_fields`).
- Gradient accumulation with EasyLM's optax.MultiSteps: a step of EasyLM is a micro-batch, so total
  steps, save and log intervals are counted in micro-batches, the LR schedule in updates.
- The learning rate: linear warmup then cosine to 0 (or flat for constant schedules), AdamW with the
  HF Trainer's betas; EasyLM's own defaults are pre-training values (lr 0.01, b2 0.95, decay 1e-4).
- Checkpoints in fp32 with the optimizer state, so a resumed run continues exactly.
- `--llama.rope_theta` is a real EasyLM flag that EasyLM never uses; `trainers.tpu.easylm_main`
  makes it take effect at run time.
"""
from __future__ import annotations

import math

from launcher import tpu_plan
EASYLM_MODULE = "EasyLM.models.llama.llama_train"
DEFAULT_ROPE_THETA = 10000.0


class ModelConfigError(Exception):
    """A model EasyLM's LLaMA cannot train; the message says which field and why."""


class FlagError(Exception):
    """A job that cannot run on this TPU as asked; the message names the field."""


# -- the TPU ------------------------------------------------------------------------------------

def tpu_shape(tpu_type: str) -> tuple[int, int]:
    """(JAX devices, hosts) of a TPU type such as v3-8, v4-8, v3-32, v5litepod-16; `cpu-N` for tests.

    The number in a v2/v3/v4/v5p name counts TensorCores; v4 and v5p fuse two cores into one device
    (megacore), so a v4-8 is 4 devices. v5e/v6e names count chips, 4 per host in pods.
    """
    try:
        t = tpu_plan.tpu(tpu_type)
    except tpu_plan.PlanError as e:
        raise FlagError(str(e)) from None
    return t.devices, t.hosts


# -- the model ----------------------------------------------------------------------------------

def rope_theta(cfg: dict) -> float:
    """rope_theta under either transformers layout (v4: top level; v5: rope_parameters)."""
    params = cfg.get("rope_parameters") or {}
    return float(params.get("rope_theta", cfg.get("rope_theta", DEFAULT_ROPE_THETA)))


def llama_shape(cfg: dict) -> dict:
    """EasyLM `--llama.*` fields for a HF config; refuses what EasyLM's LLaMA cannot represent."""
    mt = cfg.get("model_type")
    if mt != "llama":
        raise ModelConfigError(f"model: model_type {mt!r} is not supported on TPU (EasyLM trains LLaMA-family models: model_type 'llama')")
    for flag in ("attention_bias", "mlp_bias"):
        if cfg.get(flag):
            raise ModelConfigError(f"model: {flag}=true is not supported by EasyLM's LLaMA (no biases)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ModelConfigError(f"model: hidden_act {cfg.get('hidden_act')!r} is not supported by EasyLM's LLaMA (silu only)")
    heads, hidden = cfg["num_attention_heads"], cfg["hidden_size"]
    if cfg.get("head_dim") not in (None, hidden // heads) or hidden % heads:
        raise ModelConfigError(f"model: head_dim {cfg.get('head_dim')} != hidden_size / num_attention_heads; EasyLM cannot represent it")
    scaling = cfg.get("rope_scaling") or {}
    rtype = scaling.get("rope_type") or scaling.get("type") or (cfg.get("rope_parameters") or {}).get("rope_type", "default")
    if rtype != "default":
        raise ModelConfigError(f"model: rope scaling {rtype!r} is not supported by EasyLM (plain RoPE only)")
    return {
        "vocab_size": cfg["vocab_size"],
        "hidden_size": hidden,
        "intermediate_size": cfg["intermediate_size"],
        "num_hidden_layers": cfg["num_hidden_layers"],
        "num_attention_heads": heads,
        "num_key_value_heads": cfg.get("num_key_value_heads") or heads,
        "max_position_embeddings": cfg.get("max_position_embeddings", 2048),  # LlamaConfig's default
        "rms_norm_eps": float(cfg.get("rms_norm_eps", 1e-6)),
        "rope_theta": rope_theta(cfg),
        "initializer_range": float(cfg.get("initializer_range", 0.02)),
    }


# -- the job's train: fields ---------------------------------------------------------------------

# Where each `train:` field goes on TPU; check_train_fields refuses the values EasyLM cannot honour.
TRAIN_FIELDS = {
    "per_device_train_batch_size": "train_dataset.json_dataset.batch_size (x FSDP shards; tpu_plan may lower it)",
    "per_device_eval_batch_size": "eval_dataset.json_dataset.batch_size (x FSDP shards, at most the train micro-batch)",
    "gradient_accumulation_steps": "optimizer.accumulate_gradient_steps (tpu_plan may change it)",
    "learning_rate": "optimizer.adamw_optimizer.lr",
    "lr_scheduler_type": "optimizer.adamw_optimizer.end_lr (cosine, constant, constant_with_warmup only)",
    "warmup_steps": "optimizer.adamw_optimizer.lr_warmup_steps",
    "num_train_epochs": "total_steps (with the tokens counted)",
    "max_steps": "total_steps",
    "precision": "dtype (bf16 or fp32; no fp16)",
    "eval_steps": "log_freq when evaluating (EasyLM evaluates at each log)",
    "save_steps": "save_milestone_freq",
    "save_total_limit": "--launcher.keep (milestone params kept)",
    "seed": "seed",
    "data_seed": "none: EasyLM reads the prepared data in order (refused unless 42 or null)",
    "optim": "optimizer.type=adamw (AdamW names only)",
    "weight_decay": "optimizer.adamw_optimizer.weight_decay",
    "max_grad_norm": "optimizer.adamw_optimizer.clip_gradient",
    "logging_steps": "log_freq when not evaluating",
    "logging_first_step": "EasyLM logs step 0 always (false refused)",
    "dataloader_num_workers": "train_dataset.json_dataset.tokenizer_processes=1 (more than 1 refused)",
    "gradient_checkpointing": "llama.remat_policy (tpu_plan may turn it on)",
    "report_to": "logger.online (wandb or none)",
    "wandb_project": "logger.project",
    "do_eval": "eval_steps, eval_dataset.*",
    "eval_on_start": "EasyLM evaluates at step 0 always (false refused when evaluating)",
    "ddp_find_unused_parameters": "none: GPU DDP only (true refused)",
    "sample_prompts": "none: no samples on TPU (other values than 0 or the default 3 refused)",
    "sample_max_new_tokens": "none: with sample_prompts only",
    "attn_implementation": "none: EasyLM's own attention (auto or eager only)",
    "fsdp": "mesh_dim: a TPU run is always FSDP-sharded",
    "group_by_length": "none: EasyLM reads the packed rows in order (true refused)",
}
ADAMW = ("adamw_torch", "adamw_torch_fused", "adamw_hf", "adamw_apex_fused", "adamw_torch_xla")


SCHEDULES = ("cosine", "cosine_with_min_lr", "constant_with_warmup", "constant")  # what `render` maps


def check_train_fields(spec) -> list[str]:
    """Raise FlagError naming the first `train:` value a TPU run cannot honour; returns notes."""
    t = spec.train
    fields = type(t).model_fields
    unknown = sorted(set(fields) - set(TRAIN_FIELDS))
    if unknown:  # a field added to the spec without a TPU mapping: refuse it rather than ignore it
        raise FlagError(f"train.{unknown[0]}: not mapped to EasyLM yet, so not available on TPU")

    def refuse(name: str, why: str):
        raise FlagError(f"train.{name}: {getattr(t, name)!r} is not available on TPU ({why})")

    if t.optim not in ADAMW:
        refuse("optim", f"EasyLM trains with AdamW: use one of {', '.join(ADAMW)}")
    if t.data_seed not in (None, fields["data_seed"].default):
        refuse("data_seed", "EasyLM reads the prepared data in order; data prep shuffles it with data.seed")
    if not t.logging_first_step:
        refuse("logging_first_step", "EasyLM always logs the first step")
    if t.dataloader_num_workers > 1:
        refuse("dataloader_num_workers", "EasyLM tokenizes in one process so that a resume starts at the right row")
    if t.do_eval and not t.eval_on_start:
        refuse("eval_on_start", "EasyLM evaluates at every log, the first step's included")
    if t.ddp_find_unused_parameters:
        refuse("ddp_find_unused_parameters", "a GPU DDP setting")
    if t.group_by_length:
        refuse("group_by_length", "EasyLM reads the packed rows in order; data prep packs them already")
    if t.sample_prompts not in (0, fields["sample_prompts"].default):
        refuse("sample_prompts", "the TPU trainer writes no samples; set 0")
    if t.attn_implementation not in ("auto", "eager"):
        refuse("attn_implementation", "EasyLM has its own attention; use auto")
    if t.report_to == "tensorboard":
        refuse("report_to", "EasyLM logs to W&B only; use wandb or none")
    if t.lr_scheduler_type not in SCHEDULES:
        refuse("lr_scheduler_type", "EasyLM has warmup + cosine only; use cosine, constant or constant_with_warmup")
    if t.precision == "fp16":
        refuse("precision", "use bf16 or auto")
    notes = []
    if t.sample_prompts:
        notes.append("train.sample_prompts: no samples on TPU")
    return notes


# -- the run ------------------------------------------------------------------------------------

def memory_plan(spec, tpu_type: str, model_config: dict) -> "tpu_plan.Plan":
    """tpu_plan's choice for this job (FlagError when nothing fits, naming the smallest TPU that does)."""
    try:
        return tpu_plan.plan_for_spec(spec, tpu_plan.LlamaShape.from_hf_config(model_config), tpu_type)
    except tpu_plan.PlanError as e:
        raise FlagError(str(e)) from None


def plan(spec, tpu_type: str, train_tokens: int, setup: "tpu_plan.Setup | None" = None) -> dict:
    """The numbers a run is made of: devices, batch, accumulation, updates, EasyLM steps.

    `setup` is the memory plan's choice; without one, the job's own per-device batch on full FSDP.
    """
    devices, hosts = tpu_shape(tpu_type)
    t = spec.train
    if setup is None:
        setup = tpu_plan.Setup(rows=t.per_device_train_batch_size, seq=spec.data.max_length,
                               accumulate=t.gradient_accumulation_steps, mesh=(1, devices, 1))
    batch = setup.global_batch
    seq = spec.data.max_length
    accum = setup.accumulate
    tokens_per_update = batch * seq * accum
    if t.max_steps > 0:
        updates = t.max_steps
    else:
        updates = max(1, math.ceil(t.num_train_epochs * train_tokens / tokens_per_update))
    return {"devices": devices, "hosts": hosts, "batch_size": batch, "seq_length": seq,
            "accumulate": accum, "tokens_per_update": tokens_per_update, "updates": updates,
            "total_steps": updates * accum, "mesh_dim": setup.mesh_dim}


def _f(x: float) -> str:
    return repr(float(x))


def render(spec, tpu_type: str, data_dir: str, out_dir: str, *, model_config: dict, tokenizer_dir: str,
           params_path: str, train_tokens: int, val_tokens: int = 0, prefix_ids: list[int] = ()) -> list[str]:
    """EasyLM flags for `python -m EasyLM.models.llama.llama_train` (or our `easylm_main`).

    data_dir holds the adapted train.jsonl/val.jsonl (`trainers.tpu.data`); out_dir is where EasyLM
    writes (a local folder, or gs://... which every host of a pod can read back on resume);
    params_path is the converted starting model. Raises FlagError/ModelConfigError with one line.
    """
    t = spec.train
    shape = llama_shape(model_config)
    check_train_fields(spec)
    if spec.data.max_length > shape["max_position_embeddings"]:
        raise FlagError(f"data.max_length: {spec.data.max_length} is longer than the model's max_position_embeddings "
                        f"({shape['max_position_embeddings']})")
    mem = memory_plan(spec, tpu_type, model_config)
    setup = mem.setup
    p = plan(spec, tpu_type, train_tokens, setup)
    is_cpu = tpu_type.lower().startswith("cpu")
    if p["hosts"] > 1 and not str(out_dir).startswith("gs://"):
        raise FlagError(f"outputs.bucket: a {tpu_type} has {p['hosts']} hosts, which must share checkpoints; "
                        "set outputs.bucket to a gs://... bucket")

    if t.lr_scheduler_type in ("cosine", "cosine_with_min_lr"):
        end_lr, warmup = 0.0, t.warmup_steps
    elif t.lr_scheduler_type == "constant_with_warmup":
        end_lr, warmup = t.learning_rate, t.warmup_steps
    else:  # constant (check_train_fields refused the rest)
        end_lr, warmup = t.learning_rate, 0
    dtype = "fp32" if t.precision == "fp32" or (t.precision == "auto" and is_cpu) else "bf16"

    # Mirrors trainers.tpu.data.fields (kept here so the renderer stays standard-library only).
    keys = "text" if spec.data.format == "text" else "[input],output"
    fields = ",".join([f"[<|{i}|>]" for i in prefix_ids] + [keys])
    evaluate = t.do_eval and val_tokens > 0
    accum = p["accumulate"]
    log_every = (t.eval_steps if evaluate else t.logging_steps) * accum

    flags = {
        "seed": t.seed,
        "mesh_dim": setup.mesh_dim,
        "dtype": dtype,
        "param_dtype": "fp32",
        "total_steps": p["total_steps"],
        "log_freq": log_every,
        # The model saves at the start and at the end (or on SIGTERM) only; easylm_main skips the
        # start one. Periodic saves are milestones: new files each time, never a half-overwritten one.
        "save_model_freq": p["total_steps"] + 1,
        "save_milestone_freq": t.save_steps * accum,
        "load_checkpoint": f"params::{params_path}",
        "tokenizer": tokenizer_dir,
        "train_dataset.type": "json",
        "train_dataset.text_processor.fields": fields,
        "train_dataset.text_processor.add_bos_token": False,
        "train_dataset.text_processor.add_eos_token": True,
        "train_dataset.json_dataset.path": f"{data_dir}/train.jsonl",
        "train_dataset.json_dataset.seq_length": p["seq_length"],
        "train_dataset.json_dataset.batch_size": p["batch_size"],
        # One tokenizer process: with a pool, EasyLM's saved file position runs up to 2048 lines
        # ahead of the tokens trained on, and a resume would skip them.
        "train_dataset.json_dataset.tokenizer_processes": 1,
        "eval_steps": 0,
        "optimizer.type": "adamw",
        "optimizer.accumulate_gradient_steps": accum,
        "optimizer.adamw_optimizer.init_lr": 0.0,
        "optimizer.adamw_optimizer.lr": t.learning_rate,
        "optimizer.adamw_optimizer.end_lr": end_lr,
        "optimizer.adamw_optimizer.lr_warmup_steps": warmup,
        # optax needs decay past warmup; the cosine reaches end_lr at the last update.
        "optimizer.adamw_optimizer.lr_decay_steps": max(p["updates"], warmup + 1),
        "optimizer.adamw_optimizer.b1": 0.9,
        "optimizer.adamw_optimizer.b2": 0.999,
        # max_grad_norm 0 means "off"; clip_by_global_norm(0) would zero every update.
        "optimizer.adamw_optimizer.clip_gradient": t.max_grad_norm if t.max_grad_norm > 0 else 1e9,
        "optimizer.adamw_optimizer.weight_decay": t.weight_decay,
        # bf16 first moment (optax's mu_dtype; the second moment stays fp32) where the plan needs it.
        "optimizer.adamw_optimizer.bf16_momentum": setup.moments == "bf16",
        "checkpointer.float_dtype": "fp32",
        "checkpointer.save_optimizer_state": True,
        "logger.output_dir": out_dir,
        "logger.experiment_id": spec.name,
        "logger.online": t.report_to == "wandb",
        "logger.project": t.wandb_project or spec.name,
        "llama.base_model": "llama_1b",
        "llama.remat_policy": "nothing_saveable" if setup.remat else "",
    }
    flags.update({f"llama.{k}": v for k, v in shape.items()})
    if evaluate:
        # Forward only, at most the train micro-batch: never more memory than a train step.
        eval_batch = min(t.per_device_eval_batch_size, setup.rows) * setup.mesh[0] * setup.mesh[1]
        batch_tokens = eval_batch * p["seq_length"]
        flags.update({
            # EasyLM evaluates at every log, over this many batches of the (wrapping) val stream.
            "eval_steps": max(1, min(50, math.ceil(val_tokens / batch_tokens))),
            "eval_dataset.type": "json",
            "eval_dataset.text_processor.fields": fields,
            "eval_dataset.text_processor.add_bos_token": False,
            "eval_dataset.text_processor.add_eos_token": True,
            "eval_dataset.json_dataset.path": f"{data_dir}/val.jsonl",
            "eval_dataset.json_dataset.seq_length": p["seq_length"],
            "eval_dataset.json_dataset.batch_size": eval_batch,
        })
    if p["hosts"] > 1:
        # On a TPU pod jax.distributed finds its peers from the TPU metadata: no addresses needed.
        flags["jax_distributed.initialize_jax_distributed"] = True
    return [f"--{k}={_value(v)}" for k, v in flags.items()]


def easylm_output_dir(spec, work: str) -> str:
    """Where EasyLM writes: BUCKET/JOB/easylm for a gs:// bucket (a pod's hosts and a replacement VM
    read it back), else WORK/run on the VM's disk."""
    bucket = spec.outputs.bucket
    if bucket and bucket.startswith("gs://"):
        return f"{bucket.rstrip('/')}/{spec.name}/easylm"
    return f"{work}/run"


def command(spec, tpu_type: str, work: str, *, python: str, model_config: dict, params_path: str,
            train_tokens: int, val_tokens: int = 0, prefix_ids: list[int] = ()) -> list[str]:
    """The whole EasyLM command the TPU trainer runs (`trainers.tpu.easylm_main` and its flags)."""
    flags = render(spec, tpu_type, f"{work}/data", easylm_output_dir(spec, work), model_config=model_config,
                   tokenizer_dir=f"{work}/tokenizer", params_path=params_path, train_tokens=train_tokens,
                   val_tokens=val_tokens, prefix_ids=prefix_ids)
    keep = spec.train.save_total_limit or 0
    return [python, "-m", "trainers.tpu.easylm_main", f"--launcher.keep={keep}", *flags]


def _value(v) -> str:
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, float):
        return _f(v)
    return str(v)
