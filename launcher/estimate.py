"""Memory, time and cost of a job before it runs: arithmetic on the model's config, no weights.

`launcher estimate` and `launcher submit` (its memory check) use this module. It imports only the
standard library at load; transformers/torch (exact parameter counts on the meta device) and gguf
(GGUF metadata) are imported lazily inside the functions that need them, and prices are read from
SkyPilot's catalog CSV files with `csv` (SkyPilot itself is imported only by launcher/sky_api.py;
tests/cloud checks these prices against SkyPilot's own optimizer).

Sources of the formulas (each function names the one it uses):
- [TM101] EleutherAI, "Transformer Math 101" (2023): bytes per parameter of weights (4 fp32, 2
  half), gradients, AdamW states (8 bytes: two fp32 moments; 2 for 8-bit), training FLOPs = 6 x
  parameters x tokens, and inference memory = 1.2 x weights (the guide's rule).
- [KORTH] Korthikanti et al., "Reducing Activation Recomputation in Large Transformer Models"
  (2022), which TM101 quotes for activations: s*b*h*(34 + 5*a*s/h) bytes per layer for a GPT block.
  Counted again here tensor by tensor for the LLaMA block the trainer runs (RMSNorm, RoPE, GQA,
  SwiGLU; see `_act_elems_per_token_layer`).
- [LORA] Hu et al., "LoRA" (2021): an adapter on a d_in x d_out weight has r*(d_in + d_out)
  parameters; GPT-3 175B fine-tuning memory 1.2 TB -> 350 GB.
- [QLORA] Dettmers et al., "QLoRA" (2023): NF4 weights with double quantisation cost 4 + 0.127 bits
  per parameter; the paged optimizer spills states to CPU memory under pressure.
- [MIXTRAL] Jiang et al., "Mixtral of Experts" (2024): 8 expert MLPs per block, 2 run per token;
  47B parameters, 13B active (a token's FLOPs follow the active ones; see `active_params`).
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.errors import LauncherError

GiB = 1024**3


class EstimateError(LauncherError):
    """The estimate cannot be made (no config, unknown accelerator); one line."""


class DoesNotFit(EstimateError):
    """`launcher submit`: the job cannot fit its accelerator (the numbers and what would fit)."""


# -- the model's shape ---------------------------------------------------------------------------

# GPT-style blocks: a plain two-matrix MLP (no SwiGLU gate); every other model type is counted as
# the LLaMA block (gate, up, down).
UNGATED = {"gpt2", "gpt3", "gpt_neox", "gptj", "opt", "falcon", "bloom", "phi", "starcoder2", "gpt_bigcode"}


@dataclass(frozen=True)
class ModelShape:
    """What the memory and FLOPs arithmetic needs to know about a decoder-only model."""

    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    params: int               # all parameters, tied ones once
    params_source: str        # "meta device", "gguf tensors" or "formula"
    head_dim: int = 0
    # Mixture of experts (0: a dense MLP): routed experts per block, experts each token runs, one
    # expert's intermediate size, and the shared expert's (Qwen2-MoE; 0 for none).
    experts: int = 0
    experts_per_tok: int = 0
    expert_intermediate: int = 0
    shared_intermediate: int = 0
    config: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * (self.head_dim or self.hidden // self.heads)

    @property
    def q_dim(self) -> int:
        return self.heads * (self.head_dim or self.hidden // self.heads)

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each nn.Linear of one decoder block, by its Hugging Face name: attention and
        the MLP, or in a mixture of experts the shared expert and its gate (Qwen2-MoE). Routed
        experts are not nn.Linear layers in transformers 5 (see `expert_linears`)."""
        h, i = self.hidden, self.intermediate
        mlp = {"gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
        if self.model_type in UNGATED:
            del mlp["gate_proj"]
        if self.experts:
            si = self.shared_intermediate
            mlp = {"shared_expert.gate_proj": (h, si), "shared_expert.up_proj": (h, si),
                   "shared_expert.down_proj": (si, h), "shared_expert_gate": (h, 1)} if si else {}
        return {"q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim),
                "o_proj": (self.q_dim, h), **mlp}

    def expert_linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of one routed expert's matrices, by the names peft targets them by (Mixtral's
        w1/w3/w2, else gate/up/down_proj); empty for a dense model. transformers 5 stores each
        block's experts as 3-D parameters (gate and up fused), not nn.Linear layers."""
        if not self.experts:
            return {}
        h, i = self.hidden, self.expert_intermediate
        g, u, d = ("w1", "w3", "w2") if self.model_type == "mixtral" else ("gate_proj", "up_proj", "down_proj")
        return {f"experts.{g}": (h, i), f"experts.{u}": (h, i), f"experts.{d}": (i, h)}

    @property
    def linear_params(self) -> int:
        """Parameters in the blocks' nn.Linear layers: what bitsandbytes' 4-bit quantisation acts on
        (it replaces nn.Linear only: not the routed experts)."""
        return self.layers * sum(a * b for a, b in self.linears().values())

    @property
    def block_params(self) -> int:
        """One decoder block's parameters: its linear layers, every routed expert and the router
        (hidden x experts), and the two norms."""
        experts = self.experts * sum(a * b for a, b in self.expert_linears().values()) + self.hidden * self.experts
        return sum(a * b for a, b in self.linears().values()) + experts + 2 * self.hidden

    @property
    def active_params(self) -> int:
        """Parameters one token runs through: all but the routed experts it is not sent to [MIXTRAL]."""
        idle = max(0, self.experts - self.experts_per_tok) * sum(a * b for a, b in self.expert_linears().values())
        return self.params - self.layers * idle

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)


# Model types whose parameter count `count_params_formula` gets exactly (tests compare it with the
# meta-device count): for them the estimate skips importing transformers (seconds to tens of seconds).
FORMULA_EXACT = {"llama", "mistral"}


def shape_from_config(cfg: dict, *, params: int | None = None, params_source: str | None = None,
                      exact: bool | str = True) -> ModelShape:
    """A ModelShape from a Hugging Face config.json dict (LLaMA, Mistral, Qwen2, SmolLM ... names).

    Parameters are counted on the meta device when `exact` is "meta", or when it is true and the
    model type is not one the formula is exact for (FORMULA_EXACT); else by the formula."""
    if "text_config" in cfg and "hidden_size" not in cfg:
        cfg = {**cfg["text_config"], "model_type": cfg.get("model_type", "")}
    try:
        hidden = int(cfg.get("hidden_size") or cfg["n_embd"])
        layers = int(cfg.get("num_hidden_layers") or cfg["n_layer"])
        heads = int(cfg.get("num_attention_heads") or cfg["n_head"])
        vocab = int(cfg["vocab_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise EstimateError(f"model config: no {e} (is this a decoder-only language model's config.json?)") from None
    intermediate = int(cfg.get("intermediate_size") or cfg.get("n_inner") or 4 * hidden)
    # Mixtral, PhiMoE, GraniteMoE: num_local_experts; Qwen2/Qwen3-MoE, OLMoE: num_experts (with
    # moe_intermediate_size per expert where it differs from intermediate_size)
    experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or 0)
    shape = ModelShape(
        model_type=str(cfg.get("model_type", "llama")), hidden=hidden, layers=layers, heads=heads,
        kv_heads=int(cfg.get("num_key_value_heads") or heads), intermediate=intermediate,
        vocab=vocab, tied=bool(cfg.get("tie_word_embeddings", False)), params=0, params_source="formula",
        head_dim=int(cfg.get("head_dim") or hidden // heads), experts=experts,
        experts_per_tok=int(cfg.get("num_experts_per_tok") or 2) if experts else 0,
        expert_intermediate=int(cfg.get("moe_intermediate_size") or intermediate) if experts else 0,
        shared_intermediate=int(cfg.get("shared_expert_intermediate_size") or 0) if experts else 0, config=cfg)
    if params is None and (exact == "meta" or (exact and shape.model_type not in FORMULA_EXACT)):
        params = count_params_meta(cfg)
        params_source = "meta device" if params else None
    if params is None:
        params = count_params_formula(shape)
        params_source = "formula, exact for this type" if shape.model_type in FORMULA_EXACT else "formula"
    return _replace(shape, params=params, params_source=params_source or "given")


def _replace(shape: ModelShape, **kw) -> ModelShape:
    from dataclasses import replace

    return replace(shape, **kw)


def count_params_formula(s: ModelShape) -> int:
    """Parameters of a LLaMA-family decoder: embeddings (and an untied head), per block the seven
    linear layers (no biases; a mixture of experts: attention, every expert, the router) and two
    RMSNorm weights, and the final norm. Exact for LLaMA 1-3, Mistral, Mixtral and SmolLM; models
    with biases (Qwen2's q/k/v) come out a little low."""
    return s.embedding_params + s.layers * s.block_params + s.hidden


def count_params_meta(cfg: dict) -> int | None:
    """The exact parameter count: the model built on PyTorch's meta device (no memory, no weights)
    by transformers from the config. None when torch/transformers are missing or do not know the
    architecture (the formula then serves)."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError:
        return None
    try:
        conf = dict(cfg)
        mt = conf.pop("model_type", "llama")
        config = AutoConfig.for_model(mt, **{k: v for k, v in conf.items() if not k.startswith("_")})
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    except Exception:  # an architecture this transformers does not know: fall back to the formula
        return None


def read_config(ref: str, base: Path | None = None, *, online: bool = True) -> dict:
    """The model's config as a dict, without its weights (launcher.models.model_config)."""
    from launcher.models import ModelError, model_config

    try:
        return model_config(ref, base, online=online)[0]
    except ModelError as e:
        raise EstimateError(str(e)) from None


def model_shape(ref: str, base: Path | None = None, *, online: bool = True, exact: bool | str = True) -> ModelShape:
    """Public: the shape of the job's `model:` from its config (see `read_config`). Reused by the
    TPU memory plan. `exact` counts parameters on the meta device when transformers is installed."""
    cfg = read_config(ref, base, online=online)
    if "_params" in cfg:
        return shape_from_config(cfg, params=cfg["_params"], params_source="gguf tensors")
    return shape_from_config(cfg, exact=exact)


# -- accelerators --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Accel:
    name: str            # as SkyPilot spells it: A100, A100-80GB, tpu-v3-8
    mem_gib: float       # per device (GPU, or TPU core/chip as JAX sees it)
    tflops: float        # peak dense bf16 (fp16 where no bf16) per device
    devices: int = 1     # devices in one unit (a TPU slice); GPUs: the count comes from A100:N
    bf16: bool = True


# Datasheet figures (dense, no sparsity). Memory in GiB as the device reports it.
GPUS = {a.name.lower(): a for a in [
    Accel("H200", 141, 989), Accel("H100", 80, 989), Accel("H100-SXM", 80, 989),
    Accel("A100", 40, 312), Accel("A100-80GB", 80, 312), Accel("A100-80GB-SXM", 80, 312),
    Accel("L40S", 48, 362), Accel("A6000", 48, 155), Accel("L4", 24, 121), Accel("A10", 24, 125),
    Accel("A10G", 24, 70),  # AWS's A10 variant: lower clocks, about 70 dense bf16 TFLOP/s
    Accel("RTX4090", 24, 165), Accel("RTX3090", 24, 71), Accel("T4", 16, 65, bf16=False),
    Accel("V100", 16, 125, bf16=False), Accel("V100-32GB", 32, 125, bf16=False),
]}

# TPU slices: name -> (JAX devices, GiB per device, bf16 TFLOP/s per device). v2/v3 count
# TensorCores (2 per chip, each its own JAX device); v4/v5p count TensorCores but a chip (megacore)
# is one device; v5e (v5litepod) and v6e count chips.
_TPU_GEN = {"v2": (16, 45, 2), "v3": (32, 123, 2), "v4": (32, 275, 2), "v5p": (95, 459, 2),
            "v5litepod": (16, 197, 1), "v5e": (16, 197, 1), "v6e": (32, 918, 1)}


def tpu_accel(name: str) -> Accel:
    m = re.fullmatch(r"(?:tpu-)?(v\d+[a-z]*)-(\d+)", name.lower())
    if not m or m.group(1) not in _TPU_GEN:
        raise EstimateError(f"TPU {name}: unknown type; known: {', '.join(f'{g}-8' for g in _TPU_GEN)}")
    gen, n = m.group(1), int(m.group(2))
    mem, tf, per_chip = _TPU_GEN[gen]
    if gen in ("v2", "v3"):
        return Accel(f"tpu-{gen}-{n}", mem / 2, tf / 2, devices=n)  # per TensorCore
    chips = n // per_chip
    return Accel(f"tpu-{gen}-{n}", mem, tf, devices=max(1, chips))


def parse_accelerators(text: str) -> tuple[Accel, int]:
    """'A100:2' -> (A100, 2); 'tpu-v3-8' -> (tpu-v3-8, 8 devices)."""
    text = text.strip()
    if text.lower().startswith("tpu-") or re.fullmatch(r"v\d+[a-z]*-\d+", text.lower()):
        acc = tpu_accel(text)
        return acc, acc.devices
    name, _, count = text.partition(":")
    acc = GPUS.get(name.lower())
    if acc is None:
        import difflib

        hint = difflib.get_close_matches(name.upper(), [a.name for a in GPUS.values()], n=1)
        raise EstimateError(f"accelerator {name}: not in the estimator's table ({', '.join(a.name for a in GPUS.values())})"
                            + (f"; did you mean {hint[0]}?" if hint else ""))
    try:
        n = int(count or 1)
    except ValueError:
        raise EstimateError(f"accelerator {text}: expected NAME:COUNT, e.g. A100:1") from None
    return acc, n


# -- memory --------------------------------------------------------------------------------------

@dataclass
class Setup:
    """The parts of a job the arithmetic uses (from the spec, or given directly by tests/bench)."""

    method: str = "lora"            # full, lora, qlora
    precision: str = "bf16"         # bf16, fp16, fp32 (resolved: no auto)
    batch: int = 8                  # sequences per device per micro-step
    seq: int = 2048                 # tokens per sequence
    accum: int = 1
    checkpointing: bool = False
    attn: str = "sdpa"              # sdpa, flash_attention_2, eager
    lora_r: int = 16
    lora_targets: Any = "all-linear"
    lora_dropout: float = 0.0
    optim: str = "adamw_torch_fused"
    world: int = 1                  # devices over all nodes
    fsdp: bool = False
    device: str = "cuda"            # cuda, cpu, tpu: what the framework overhead is


@dataclass
class Memory:
    """Bytes per device, by component; `total` includes the framework overhead."""

    parts: dict[str, float]
    notes: list[str] = field(default_factory=list)

    @property
    def tensors(self) -> float:
        return sum(v for k, v in self.parts.items() if k != "overhead")

    @property
    def total(self) -> float:
        return sum(self.parts.values())


def optimizer_bytes_per_param(optim: str) -> tuple[float, str]:
    """Optimizer state bytes per trainable parameter [TM101]: AdamW keeps two fp32 moments (8);
    8-bit AdamW (bitsandbytes) two 1-byte moments plus block scales (~2); Lion one moment;
    Adafactor factored second moments (~0 per parameter); SGD without momentum none."""
    o = optim.lower()
    if "8bit" in o:
        return (1.0 if "lion" in o else 2.0), "8-bit states"
    if "lion" in o:
        return 4.0, "Lion: one fp32 moment"
    if "adafactor" in o:
        return 0.0, "Adafactor: factored states (rows + columns only)"
    if o.startswith("sgd"):
        return 0.0, "SGD: no state"
    return 8.0, "AdamW: two fp32 moments"


# -- disk -----------------------------------------------------------------------------------------



def gpu_disk_plan(shape: ModelShape, spec) -> tuple[int, dict[str, float]]:
    """GB a GPU machine's disk needs at its fullest, rounded up with 10% to spare, and the parts in
    bytes. Checkpoints dominate a full fine-tune: each holds fp32 weights and the optimizer states,
    and the next is written before the oldest is deleted (save_total_limit + 1 at once)."""
    from launcher.tpu_plan import DISK_BASE_GB  # the OS, an image, the data: the same allowance as a TPU VM's

    n, t = shape.params, spec.train
    parts = {"system, image, data": DISK_BASE_GB * 1e9, "base model (16-bit)": n * 2.0}
    if spec.method == "full":
        ckpt, final = n * (4 + optimizer_bytes_per_param(t.optim)[0]), n * 4.0
    else:
        adapter = lora_params(shape, spec.lora.r, spec.lora.target_modules)
        ckpt, final = adapter * (4 + optimizer_bytes_per_param(t.optim)[0]), adapter * 4 + (n * 2.0 if spec.lora.merge else 0)
    kept = (t.save_total_limit or 3) + 1  # no limit: every checkpoint stays; at least the first few count
    parts[f"checkpoints ({kept} at once{'' if t.save_total_limit else ', more without save_total_limit'})"] = kept * ckpt
    parts["final model"] = final
    if spec.outputs.export:
        parts["export (merged 16-bit + GGUF)"] = n * 4.0
    return int(math.ceil(sum(parts.values()) * 1.1 / 1e9 / 50) * 50), parts


# MoE types whose routed experts and router peft 0.21 leaves alone under "all-linear": its
# transformers-5 conversion table maps qwen3_moe, olmoe ... onto the qwen2_moe pattern but has no
# entry for qwen2_moe itself (a small Qwen2-MoE got adapters on attention and the shared expert only).
PEFT_NO_EXPERT_ADAPTERS = {"qwen2_moe"}


def lora_targets(shape: ModelShape, targets) -> dict[str, tuple[int, int, int]]:
    """The adapted weights of one block, name -> (in, out, copies): peft's "all-linear" = every
    linear but the output head, in a mixture of experts with the router and the routed experts,
    which peft 0.21 maps from transformers 4's per-expert linears onto transformers 5's fused 3-D
    parameters (its utils/transformers_weight_conversion.py): one adapter of rank r x experts per
    parameter, gate and up fused into one of rank 2r x experts and out 2 x intermediate (counted
    here as gate and up each with out 2 x intermediate, `copies` = experts)."""
    lin = {k: (a, b, 1) for k, (a, b) in shape.linears().items()}
    if shape.experts and shape.model_type not in PEFT_NO_EXPERT_ADAPTERS:
        ex = list(shape.expert_linears().items())
        lin["gate"] = (shape.hidden, shape.experts, 1)  # the router: a plain parameter in transformers 5, wrapped too
        for k, (a, b) in ex[:2]:
            lin[k] = (a, 2 * b, shape.experts)
        k, (a, b) = ex[2]
        lin[k] = (a, b, shape.experts)
    if targets == "all-linear" or targets == ["all-linear"]:
        return lin
    names = [targets] if isinstance(targets, str) else list(targets)
    return {k: v for k, v in lin.items() if any(k == n or k.endswith(n) or n.endswith(k) for n in names)}


def lora_params(shape: ModelShape, r: int, targets="all-linear") -> int:
    """[LORA] r * (d_in + d_out) per adapted weight matrix."""
    return shape.layers * sum(r * c * (a + b) for a, b, c in lora_targets(shape, targets).values())


def _act_elems_per_token_layer(s: ModelShape) -> tuple[int, int]:
    """Activations one decoder block saves for backward, per token: (half-or-fp32 elements,
    extra fp32 bytes). Counted the way [KORTH] counts a GPT block (34*s*b*h bytes there), for the
    LLaMA block: attention: norm input, norm output, q, k, v, q and k after RoPE, attention output
    (5h + 3kv); MLP: norm input, norm output, gate, up, SiLU(gate), their product (2h + 4i). In
    half precision the two RMSNorms also keep an fp32 copy of their normalised input (2 x 4h bytes).
    A mixture of experts: the router's logits (e), and for each of the k experts a token is sent to
    its gathered input, the expert's 4 x its intermediate, and its output (k x (2h + 4i)); plus the
    shared expert's 4 x its intermediate."""
    h, kv, i = s.hidden, s.kv_dim, s.intermediate
    if s.experts:
        mlp = 2 * h + s.experts + s.experts_per_tok * (2 * h + 4 * s.expert_intermediate) + 4 * s.shared_intermediate
        return 5 * h + 3 * kv + mlp, 8 * h
    mlp_i = 2 if s.model_type in UNGATED else 4  # GPT: up output and GELU output
    return 5 * h + 3 * kv + 2 * h + mlp_i * i, 8 * h


def training_memory(s: ModelShape, u: Setup) -> Memory:
    """Peak memory per device of a training step, by component.

    weights: full: fp32 master weights (4 B) plus, in half precision, autocast's cached half copy
    of the linear weights (2 B) [TM101 mixed precision]; lora: the frozen base in the training
    precision; qlora: NF4 at 4.127 bits for the blocks' linears [QLORA], the rest (embeddings, head,
    norms) in fp32 as peft's prepare_model_for_kbit_training leaves them.
    gradients: 4 B per trainable parameter (fp32 master weights / fp32 adapter).
    optimizer: `optimizer_bytes_per_param` x trainable parameters.
    FSDP (full only) divides weights, gradients and states by the number of devices and adds two
    all-gathered blocks.
    activations: `_act_elems_per_token_layer` x tokens x layers; with checkpointing one block input
    per layer plus one block recomputed; eager attention adds the s x s scores per head (SDPA and
    flash-attention keep none); plus the logits, which the loss upcasts to fp32 (b*s*V x (a + 8) B).
    overhead: CUDA context and library workspaces (~1 GiB, not in torch's allocator figure) and 5%
    allocator fragmentation; none on CPU (the RSS baseline is measured without it); TPU: 5%.
    """
    half = u.precision in ("bf16", "fp16")
    a = 2 if half else 4
    P, tokens = s.params, u.batch * u.seq
    parts: dict[str, float] = {}
    notes: list[str] = []
    n_lora = lora_params(s, u.lora_r, u.lora_targets) if u.method in ("lora", "qlora") else 0

    if u.method == "full":
        w = 4.0 * P + (2.0 * s.linear_params if half else 0.0)
        trainable = P
    elif u.method == "lora":
        w = a * P
        trainable = n_lora
    else:  # qlora
        w = s.linear_params * 4.127 / 8 + 4.0 * (P - s.linear_params)
        trainable = n_lora
        if s.experts:
            # bitsandbytes replaces nn.Linear only; transformers 5 keeps routed experts as 3-D
            # parameters, so they load in half precision and prepare_model_for_kbit_training casts
            # every parameter that is not 4-bit to fp32 (checked on a small Mixtral: transformers
            # 5.24, peft 0.21, bitsandbytes 0.50: only q/k/v/o became Params4bit)
            notes.append(f"QLoRA: the routed experts are not quantized (transformers 5's fused expert "
                         f"parameters): {_gib(4.0 * (P - s.linear_params))} of fp32 weights")
    opt_b, opt_note = optimizer_bytes_per_param(u.optim)
    grads, states = 4.0 * trainable, opt_b * trainable
    if u.method == "full" and u.fsdp and u.world > 1:
        w = w / u.world + 2 * 4.0 * s.block_params
        grads, states = grads / u.world, states / u.world
        notes.append(f"FSDP: weights, gradients and optimizer states sharded over {u.world} devices")
    parts["weights"] = w
    parts["gradients"] = grads
    parts["optimizer"] = states
    if u.method != "full":
        parts["lora adapter"] = 4.0 * n_lora  # peft keeps the adapter in fp32
    if "paged" in u.optim:
        notes.append("paged optimizer: its states can spill to CPU memory at peaks")
    notes.append(f"optimizer: {opt_note}")

    elems, fp32_extra = _act_elems_per_token_layer(s)
    per_layer = tokens * (a * elems + (fp32_extra if half else 0))
    if u.method != "full":
        # peft casts the input to the adapter's fp32 for each adapted layer and autocast casts it back
        # to half for the adapter's matmul, which keeps that copy (half base only; not measured on
        # CPU, where the trainer runs fp32); lora_dropout > 0 keeps the dropout's output and mask.
        # (routed experts' adapters not counted: peft adds their product to the weight, no input copy)
        ins = sum(i for i, _, c in lora_targets(s, u.lora_targets).values() if c == 1)
        per_layer += tokens * ins * ((a if half or u.method == "qlora" else 0) + ((a + 1) if u.lora_dropout > 0 else 0))
    if u.attn == "eager":
        per_layer += u.batch * s.heads * u.seq**2 * (a + 4)
    resid = 4 if u.method == "full" else a
    if u.checkpointing:
        acts = s.layers * tokens * s.hidden * resid + per_layer
    else:
        acts = s.layers * per_layer
    logits = tokens * s.vocab * (a + 8 if half else 8)
    parts["activations"] = acts + logits
    tensors = sum(parts.values())
    if u.device == "cuda":
        parts["overhead"] = 1.0 * GiB + 0.05 * tensors
    elif u.device == "tpu":
        parts["overhead"] = 0.05 * tensors
    else:
        parts["overhead"] = 0.0
    return Memory(parts, notes)


def inference_memory(weight_bytes: float) -> float:
    """The guide's rule after [TM101]: VRAM for inference = 1.2 x the weights' size (20% for the
    KV cache and buffers at a 2048-token context)."""
    return 1.2 * weight_bytes


# -- time ----------------------------------------------------------------------------------------

MFU = 0.40  # stated utilisation: fraction of the datasheet peak a fine-tune typically sustains


def flops_per_token(s: ModelShape, u: Setup) -> float:
    """Training FLOPs per token: [TM101]/Kaplan 6N (forward 2N, backward 4N) plus attention
    12*L*s*h; a frozen base skips the weight gradients (2N of the 4N: 4N in all, LoRA and QLoRA);
    checkpointing recomputes the forward (+2N). N counts the parameters a token runs through: in a
    mixture of experts, its top-k experts only (`active_params`)."""
    n = s.active_params
    attn = 12 * s.layers * u.seq * s.hidden
    base = (6 if u.method == "full" else 4) * n + attn
    if u.method != "full":
        base += 6 * lora_params(s, u.lora_r, u.lora_targets)
    if u.checkpointing:
        base += 2 * n + attn / 3
    return base


@dataclass
class Tokens:
    per_epoch: int
    run: int        # for the accelerator asked for; each cost row counts its own (`run_tokens`)
    source: str


def training_tokens(spec, base: Path, u: Setup) -> Tokens:
    """Tokens the run trains on: from the prepared data's report.json when it is that of the job's
    data as it is now (same max_length and packing, no source changed since), else from the raw
    sources' size (about 4 bytes of text per token for English BPE vocabularies)."""
    files = []
    for src in spec.data.sources:
        if not src.path:
            continue
        p = Path(src.path).expanduser()
        p = p if p.is_absolute() else base / p
        files += [p] if p.is_file() else (sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir()
                                          else sorted(base.glob(src.path)))
    report = spec.output_dir(base) / "data" / "report.json"
    per_epoch, source, stale = None, "", ""
    if report.is_file():
        try:
            r = json.loads(report.read_text())
            tr, made = r["splits"]["train"], r["tokens"]
            if (made["max_length"], made["packing"]) != (spec.data.max_length, spec.data.packing):
                stale = f"prepared with max_length {made['max_length']}, packing {made['packing']}"
            elif any(f.stat().st_mtime > report.stat().st_mtime for f in files):
                stale = "a source changed since"
            else:
                per_epoch = int(tr["sequences"]) * made["max_length"] if made["packing"] else int(tr["tokens"])
                source = f"prepared data ({report})"
        except (KeyError, ValueError, TypeError, OSError):
            per_epoch = None
    if per_epoch is None:
        size = sum(f.stat().st_size for f in files)
        per_epoch = int(size / 4 * spec.data.split[0] / sum(spec.data.split))
        source = "raw sources' size / 4 bytes per token" if size else "no local data: tokens unknown"
        if stale:
            source += f" (the prepared data is out of date: {stale}; `launcher prep` it again)"
    t = spec.train
    per_step = u.batch * u.accum * u.world * u.seq
    if t.max_steps > 0:
        run = t.max_steps * per_step
    else:
        run = int(per_epoch * t.num_train_epochs)
    return Tokens(per_epoch, run, source)


# -- prices from SkyPilot's catalog ---------------------------------------------------------------

def priced_clouds() -> dict[str, object]:
    """name -> backend of every registered provider whose machines are priced in SkyPilot's
    catalog (the rented ones: not local, not a Slurm cluster of one's own)."""
    from launcher.backends import all_backends

    return {b.name: b for b in all_backends() if b.rents_machines and getattr(b, "infra", None)}


def catalog_clouds() -> list[str]:
    """What `launcher estimate --cloud` can price: the providers SkyPilot prices from a catalog (a
    Slurm cluster's "catalog" is the live cluster, which has no prices)."""
    return [n for n, b in priced_clouds().items() if getattr(b, "optimize_offline", True)]


# A handful of real rows per cloud, shipped in the package: an estimate works with no SkyPilot
# catalog downloaded (no cloud account yet, offline); its prices are dated and say so.
_EXCERPTS = Path(__file__).resolve().parent / "catalogs"


def catalog_dir() -> tuple[Path | None, str]:
    """SkyPilot's downloaded catalogs (where its optimizer reads them), else the excerpts that ship
    with the package (launcher/catalogs: offline, a handful of rows per cloud)."""
    sky = Path(os.environ.get("SKY_RUNTIME_DIR", "~")).expanduser() / ".sky" / "catalogs" / "v8"
    if any((sky / b.infra / "vms.csv").is_file() for b in priced_clouds().values()):
        return sky, "SkyPilot catalog"
    if _EXCERPTS.is_dir():
        return _EXCERPTS, "offline catalog excerpt"
    return None, "no catalog"


@dataclass
class Offer:
    cloud: str
    accelerator: str
    count: int
    instance: str
    price: float | None       # per node-hour, on demand (the cheapest region/zone)
    spot: float | None


def offers(clouds=None) -> list[Offer]:
    """The cheapest on-demand and spot price of each (cloud, accelerator, count), as SkyPilot's
    optimizer picks it: the lowest price of any instance type and region/zone in the catalog."""
    root, _ = catalog_dir()
    if root is None:
        return []
    best: dict[tuple, Offer] = {}
    backends = priced_clouds()
    for cloud in clouds or backends:
        backend = backends[cloud]
        f = root / backend.infra / "vms.csv"
        if not f.is_file():
            continue
        with f.open(newline="") as fh:
            for row in csv.DictReader(fh):
                acc = row.get("AcceleratorName") or ""
                if not acc:
                    continue
                if "gpu" in backend.cannot and not acc.startswith("tpu-"):
                    continue  # GCP here is for TPUs only: its GPU rows are not for us
                n = int(float(row.get("AcceleratorCount") or 1))
                price, spot = _num(row.get("Price")), _num(row.get("SpotPrice"))
                if "spot" in backend.cannot:
                    spot = None  # Vast's catalog says 0.00 for a spot market the backend refuses
                key = (cloud, acc, n)
                o = best.setdefault(key, Offer(cloud, acc, n, row.get("InstanceType") or acc, None, None))
                if price is not None and (o.price is None or price < o.price):
                    o.price, o.instance = price, row.get("InstanceType") or acc
                if spot is not None and (o.spot is None or spot < o.spot):
                    o.spot = spot
    return list(best.values())


def _num(v) -> float | None:
    try:
        return float(v) if v not in (None, "") else None
    except ValueError:
        return None


# -- the whole estimate --------------------------------------------------------------------------

def resolve_precision(choice: str, acc: Accel | None) -> str:
    if choice != "auto":
        return choice
    if acc is None:
        return "fp32"  # the trainer's auto on a CPU
    return "bf16" if acc.bf16 else "fp16"


def setup_for(spec, acc: Accel | None, count: int) -> Setup:
    t = spec.train
    nodes = spec.resources.num_nodes
    device = "cpu" if acc is None else ("tpu" if acc.name.startswith("tpu-") else "cuda")
    attn = t.attn_implementation
    if attn == "auto":
        attn = "sdpa"  # flash-attention and SDPA's kernels keep no s x s scores: same memory here
    method, optim = spec.method, t.optim
    if spec.method == "qlora" and "optim" not in t.model_fields_set:
        optim = "paged_adamw_32bit"  # what the trainer picks for QLoRA
    fsdp = t.fsdp
    if device == "tpu":
        method, fsdp = "full", True  # EasyLM trains full models, sharded over the slice's devices
    return Setup(method=method, precision=resolve_precision(t.precision, acc), batch=t.per_device_train_batch_size,
                 seq=spec.data.max_length, accum=t.gradient_accumulation_steps,
                 checkpointing=t.gradient_checkpointing, attn=attn, lora_r=spec.lora.r,
                 lora_targets=spec.lora.target_modules, lora_dropout=spec.lora.dropout, optim=optim,
                 world=max(1, count) * nodes, fsdp=fsdp, device=device)


def tpu_refusal(shape: ModelShape) -> str | None:
    """Why the TPU trainer cannot train this model (EasyLM's LLaMA: its own check, which the TPU dry
    run and the weight conversion apply too), or None when it can."""
    from trainers.tpu import flags

    try:
        flags.llama_shape(shape.config)
    except flags.ModelConfigError as e:
        return str(e)
    except KeyError as e:
        return f"model: no {e} in its config"
    return None


def tpu_plan_for(shape: ModelShape, spec, acc: Accel):
    """The TPU trainer's plan for this job on `acc` (what its dry run and trainer choose, via
    launcher/tpu_plan.py), or the reason there is none (a string)."""
    from launcher import tpu_plan

    try:
        return tpu_plan.plan_for_spec(spec, tpu_plan.LlamaShape.from_hf_config(shape.config), acc.name)
    except tpu_plan.PlanError as e:
        return str(e)
    except KeyError as e:
        return f"no {e} in the model's config"


def tpu_memory(shape: ModelShape, spec, acc: Accel) -> Memory:
    """Memory per TPU device: the TPU trainer's own plan (launcher/tpu_plan.py: EasyLM's sharded
    train step on the mesh, with the changes it makes to fit), so that the estimate and the run
    agree. Where that plan has nothing that fits, or the model is not one EasyLM trains, the job as
    written is shown as a GPU-style FSDP full fine-tune over the slice's devices."""
    plan = tpu_plan_for(shape, spec, acc)
    if isinstance(plan, str):
        mem = training_memory(shape, setup_for(spec, acc, acc.devices))
        return Memory(mem.parts, [*mem.notes, f"the TPU plan: {plan}"])
    s = plan.setup
    notes = [f"EasyLM mesh {s.mesh_dim} (dp,fsdp,mp), {s.rows_per_update} rows of {s.seq} tokens per update, "
             f"remat {'on' if s.remat else 'off'}, adam mu {s.moments}", *(f"changed to fit: {c}" for c in plan.changes)]
    return Memory(dict(plan.memory.parts), notes)


def memory_for(shape: ModelShape, spec, acc: Accel | None, count: int) -> Memory:
    if acc is not None and acc.name.startswith("tpu-"):
        return tpu_memory(shape, spec, acc)
    return training_memory(shape, setup_for(spec, acc, count))


@dataclass
class Row:
    cloud: str
    accelerators: str
    instance: str
    per_device_gib: float
    device_gib: float
    fits: bool
    price: float | None
    spot: float | None
    hours: float
    asked: bool = False
    note: str = ""

    @property
    def total(self) -> float | None:
        return None if self.price is None else self.price * self.hours

    @property
    def spot_total(self) -> float | None:
        return None if self.spot is None else self.spot * self.hours


def run_tokens(shape: ModelShape, spec, tokens: Tokens, acc: Accel | None, count: int) -> int:
    """Tokens the run trains on with `count` x `acc` per node. With train.max_steps, the steps are
    optimizer updates, so the tokens grow with the devices: max_steps x the rows one update takes
    there x max_length. On GPUs (and the CPU) the HF Trainer's rows: per-device batch x accumulation
    x devices over all nodes; on a TPU the rows the TPU trainer renders (trainers/tpu/flags.py
    `plan`, with the memory plan's micro-batch and accumulation, which it may lower to fit). With
    epochs, the data's tokens x epochs, whatever the accelerator."""
    t = spec.train
    if t.max_steps <= 0:
        return int(tokens.per_epoch * t.num_train_epochs)
    if acc is not None and acc.name.startswith("tpu-"):
        from trainers.tpu import flags

        plan = tpu_plan_for(shape, spec, acc)
        # no plan (nothing fits, not a LLaMA): the job's own batch on full FSDP, as `plan` does then
        return t.max_steps * flags.plan(spec, acc.name, 0, None if isinstance(plan, str) else plan.setup)["tokens_per_update"]
    return (t.max_steps * t.per_device_train_batch_size * t.gradient_accumulation_steps
            * max(1, count) * spec.resources.num_nodes * spec.data.max_length)


def hours_for(shape: ModelShape, spec, tokens: Tokens, acc: Accel, count: int, mfu: float = MFU) -> float:
    """Hours for the run on `count` x `acc` per node: its own tokens (`run_tokens`: with max_steps
    they depend on the devices) x FLOPs per token / the devices' sustained FLOP/s."""
    u = setup_for(spec, acc, count)
    devices = max(1, count) * spec.resources.num_nodes
    return run_tokens(shape, spec, tokens, acc, count) * flops_per_token(shape, u) / (devices * acc.tflops * 1e12 * mfu) / 3600


def cost_table(shape: ModelShape, spec, tokens: Tokens, *, clouds=None, asked: tuple[str, str] | None = None,
               mfu: float = MFU) -> list[Row]:
    """Rows for every catalog offer on `clouds` whose accelerator the estimator knows and the job
    fits, plus the one asked for; cheapest first (on-demand total, a TRC-free TPU row first of its
    kind not counted as free)."""
    nodes = spec.resources.num_nodes
    rows = []
    for o in offers(clouds):
        try:
            acc, count = parse_accelerators(o.accelerator if o.accelerator.startswith("tpu-") else f"{o.accelerator}:{o.count}")
        except EstimateError:
            continue
        is_asked = asked is not None and asked == (o.cloud, _acc_text(o))
        refused = acc.name.startswith("tpu-") and tpu_refusal(shape)
        if refused and not is_asked:
            continue  # a model the TPU trainer cannot train: no TPU row
        mem = memory_for(shape, spec, acc, count)
        row = Row(o.cloud, _acc_text(o), o.instance, mem.total / GiB, acc.mem_gib, mem.total <= acc.mem_gib * GiB,
                  None if o.price is None else o.price * nodes, None if o.spot is None else o.spot * nodes,
                  hours_for(shape, spec, tokens, acc, count, mfu), asked=is_asked)
        if refused:
            row.fits, row.note = False, "the TPU trainer cannot train this model"
        elif acc.name.startswith("tpu-"):
            row.note = "full fine-tune (EasyLM)" if spec.method != "full" else ""
            if acc.name == "tpu-v3-8":
                row.note = ("free under a TPU Research Cloud grant; " + row.note).rstrip("; ")
        if row.fits or row.asked or acc.name == "tpu-v3-8":
            rows.append(row)
    rows.sort(key=lambda r: (not r.fits, r.total if r.total is not None else math.inf))
    return rows


def _acc_text(o: Offer) -> str:
    return o.accelerator if o.accelerator.startswith("tpu-") else f"{o.accelerator}:{o.count}"


def suggestions(shape: ModelShape, spec, acc: Accel, count: int) -> list[str]:
    """What would make the job fit `acc`: each change tried alone on a copy of the job."""
    out = []
    limit = acc.mem_gib * GiB

    def fits(**changes) -> float | None:
        s2 = spec.model_copy(deep=True)
        for dotted, v in changes.items():
            sec, _, name = dotted.partition("__")
            if name:
                setattr(getattr(s2, sec), name, v)
            else:
                setattr(s2, sec, v)
        m = memory_for(shape, s2, acc, count).total
        return m if m <= limit else None

    t = spec.train
    if spec.method == "full" and not acc.name.startswith("tpu-"):
        for m in ("lora", "qlora"):
            if (got := fits(method=m)) is not None:
                out.append(f"method: {m} ({got / GiB:.1f} GiB)")
                break
    elif spec.method == "lora" and (got := fits(method="qlora")) is not None:
        out.append(f"method: qlora ({got / GiB:.1f} GiB)")
    if not t.gradient_checkpointing and (got := fits(train__gradient_checkpointing=True)) is not None:
        out.append(f"train.gradient_checkpointing: true ({got / GiB:.1f} GiB)")
    b = t.per_device_train_batch_size
    while b > 1:
        b //= 2
        if (got := fits(train__per_device_train_batch_size=b,
                        train__gradient_accumulation_steps=t.gradient_accumulation_steps * (t.per_device_train_batch_size // b))) is not None:
            out.append(f"train.per_device_train_batch_size: {b} with gradient_accumulation_steps: "
                       f"{t.gradient_accumulation_steps * (t.per_device_train_batch_size // b)} ({got / GiB:.1f} GiB)")
            break
    if spec.method == "full" and not acc.name.startswith("tpu-"):
        for n in (2, 4, 8):
            s2 = spec.model_copy(deep=True)
            s2.train.fsdp = True
            if n > count and (got := memory_for(shape, s2, acc, n).total) <= limit:
                out.append(f"{acc.name}:{n} with train.fsdp: true ({got / GiB:.1f} GiB per GPU)")
                break
    if not out and not acc.name.startswith("tpu-"):
        # nothing alone is enough: QLoRA, checkpointing and batch 1 together, if that fits
        s2 = spec.model_copy(deep=True)
        s2.method = "qlora"
        s2.train.gradient_checkpointing = True
        s2.train.gradient_accumulation_steps = t.gradient_accumulation_steps * t.per_device_train_batch_size
        s2.train.per_device_train_batch_size = 1
        if (got := memory_for(shape, s2, acc, count).total) <= limit:
            out.append(f"method: qlora, gradient_checkpointing: true, per_device_train_batch_size: 1, "
                       f"gradient_accumulation_steps: {s2.train.gradient_accumulation_steps} together ({got / GiB:.1f} GiB)")
    return out


def cheapest_fit(rows: list[Row], method: str) -> Row | None:
    """The cheapest row that fits, for a job of `method`: TPU rows only for a full fine-tune (the
    TPU trainer, EasyLM, has no LoRA: its row prices another job)."""
    fit = [r for r in rows if r.fits and r.price is not None
           and (method == "full" or not r.accelerators.startswith("tpu-"))]
    return min(fit, key=lambda r: r.total) if fit else None


# -- formatting ----------------------------------------------------------------------------------

def _gib(b: float) -> str:
    return f"{b / GiB:.2f} GiB"


def _money(x: float | None) -> str:
    return "-" if x is None else (f"${x:,.2f}" if x >= 0.01 or x == 0 else "<$0.01")


def _dur(h: float) -> str:
    return (f"{h * 3600:.0f} s" if h < 1 / 60 else f"{h * 60:.0f} min") if h < 1 else (f"{h:.1f} h" if h < 48 else f"{h / 24:.1f} days")


def format_memory(mem: Memory, label: str, device_gib: float | None) -> list[str]:
    lines = [f"memory per device ({label}):"]
    for k, v in mem.parts.items():
        lines.append(f"  {k:<14}{v / GiB:>10.2f} GiB")
    lines.append(f"  {'total':<14}{mem.total / GiB:>10.2f} GiB" + (f"  of {device_gib:g} GiB" if device_gib else ""))
    for n in mem.notes:
        lines.append(f"  ({n})")
    return lines


def format_table(rows: list[Row]) -> list[str]:
    head = ("CLOUD", "ACCELERATORS", "INSTANCE", "MEM/DEVICE", "FITS", "$/H", "SPOT $/H", "TIME", "TOTAL", "SPOT TOTAL", "NOTE")
    body = [(r.cloud + ("*" if r.asked else ""), r.accelerators, r.instance,
             f"{r.per_device_gib:.1f}/{r.device_gib:g} GiB", "yes" if r.fits else "NO", _money(r.price), _money(r.spot),
             _dur(r.hours), _money(r.total), _money(r.spot_total), r.note) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    return ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in (head, *body)]


# -- what `launcher estimate` prints and `launcher submit` checks --------------------------------

@dataclass
class Estimate:
    shape: ModelShape
    acc: Accel | None
    count: int
    memory: Memory
    tokens: Tokens
    hours: float | None
    rows: list[Row]
    lines: list[str]

    @property
    def fits(self) -> bool | None:
        if self.acc is None:
            return None
        if self.acc.name.startswith("tpu-") and tpu_refusal(self.shape):
            return False
        return self.memory.total <= self.acc.mem_gib * GiB


def estimate(spec, job_file: Path, *, online: bool = True, mfu: float = MFU, table: bool = True,
             clouds: list[str] | None = None) -> Estimate:
    """The whole estimate for a validated spec (its resources as the command line left them)."""
    base = Path(job_file).resolve().parent
    r = spec.resources
    acc, count = parse_accelerators(r.accelerators) if r.accelerators else (None, 1)
    shape = model_shape(spec.model, base, online=online)
    mem = memory_for(shape, spec, acc, count)
    u = setup_for(spec, acc, count)
    tokens = training_tokens(spec, base, u)
    tokens = Tokens(tokens.per_epoch, run_tokens(shape, spec, tokens, acc, count), tokens.source)  # a TPU's plan may differ
    hours = hours_for(shape, spec, tokens, acc, count, mfu) if acc else None
    asked = (r.cloud, r.accelerators if acc is None or acc.name.startswith("tpu-") else f"{acc.name}:{count}")
    rows = cost_table(shape, spec, tokens, clouds=clouds, asked=asked, mfu=mfu) if table else []

    L = [f"model {spec.model}: {shape.model_type}, {shape.params:,} parameters ({shape.params_source}); "
         f"hidden {shape.hidden}, {shape.layers} layers, {shape.heads} heads ({shape.kv_heads} kv), "
         f"intermediate {shape.intermediate}, vocab {shape.vocab}{', tied embeddings' if shape.tied else ''}"
         + (f"; {shape.experts} experts of intermediate {shape.expert_intermediate}, {shape.experts_per_tok} per token "
            f"({shape.active_params:,} parameters active)" if shape.experts else "")]
    lora = f", LoRA r={u.lora_r} ({lora_params(shape, u.lora_r, u.lora_targets):,} trainable)" if u.method != "full" else ""
    L.append(f"job: {u.method}{lora}, {u.precision}, batch {u.batch} x {u.seq} tokens x accumulation {u.accum}"
             f" x {u.world} device(s), checkpointing {'on' if u.checkpointing else 'off'}, {u.attn} attention, {u.optim}"
             + (", FSDP" if u.fsdp and u.world > 1 else ""))
    where = f"{acc.name}" + (f" x{count}" if count > 1 and not acc.name.startswith("tpu-") else "") if acc else \
        "this machine's CPU (no resources.accelerators)"
    L.append("")
    L += format_memory(mem, where, acc.mem_gib if acc else None)
    refused = acc is not None and acc.name.startswith("tpu-") and tpu_refusal(shape)
    if refused:
        L.append(f"verdict: the TPU trainer cannot train this model ({refused})")
    elif acc is not None:
        over = mem.total - acc.mem_gib * GiB
        if over <= 0:
            L.append(f"verdict: fits {acc.name} ({_gib(-over)} to spare)")
        else:
            L.append(f"verdict: does NOT fit {acc.name}: {_gib(over)} over its {acc.mem_gib:g} GiB")
            tips = suggestions(shape, spec, acc, count)
            if tips:
                L.append("would fit with: " + "; ".join(tips))
    else:
        try:
            ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            L.append(f"this machine has {ram / GiB:.1f} GiB of memory")
        except (ValueError, OSError):
            pass
    L.append("")
    L.append(f"tokens: {f'{tokens.per_epoch:,}' if tokens.per_epoch else 'unknown'} per epoch, "
             f"{tokens.run:,} for the run as configured ({tokens.source})")
    L.append(f"compute: {flops_per_token(shape, u):.3g} FLOPs per token; at {mfu:.0%} of peak"
             + (f" on {acc.name}: {_dur(hours)} for the run" if hours is not None else ""))
    if hours is not None and tokens.per_epoch and tokens.run:
        L[-1] += f", {_dur(hours * tokens.per_epoch / tokens.run)} per epoch"
    if table:
        L.append("")
        _, src = catalog_dir()
        if rows:
            L.append(f"cost (prices: {src}; cheapest first; * = what you asked for):")
            L += ["  " + x for x in format_table(rows)]
        else:
            L.append(f"cost: no accelerator in the {src} fits this job as written")
    return Estimate(shape, acc, count, mem, tokens, hours, rows, L)


def check_fits(spec, job_file: Path) -> Estimate | None:
    """For `launcher submit` on a cloud: raise EstimateError when the job cannot fit its
    accelerator, naming the numbers and the cheapest accelerator that fits."""
    r = spec.resources
    if r.cloud not in priced_clouds() or not r.accelerators:
        return None
    est = estimate(spec, job_file, table=True)
    if est.acc.name.startswith("tpu-") and (why := tpu_refusal(est.shape)):
        raise EstimateError(why)  # the TPU dry run's own words; no memory figure applies
    if est.fits is False:
        best = cheapest_fit(est.rows, spec.method)
        tips = suggestions(est.shape, spec, est.acc, est.count)
        raise DoesNotFit(
            f"{spec.model} ({spec.method}) needs {est.memory.total / GiB:.1f} GiB per device, {r.accelerators} has "
            f"{est.acc.mem_gib:g} GiB"
            + (f"; cheapest that fits: {best.accelerators} on {best.cloud} ({_money(best.price)}/h)" if best else "")
            + (f"; it would fit with {tips[0]}" if tips else "")
            + "; see `launcher estimate`, or --force to submit anyway")
    return est
