"""Per-chip memory and disk plans for a full fine-tune with EasyLM on a TPU, before anything launches.

Pure arithmetic on a model's shape (`LlamaShape`, from a HF config.json) and a run's settings
(`Setup`: micro-batch, sequence, accumulation, remat, dtypes, mesh): standard library only, no JAX,
so the dry-run, the TPU trainer (which renders the same choice into EasyLM's flags) and the
estimator can all share it.

What one chip holds during EasyLM's sharded train step (its `pjit` with FSDP over `fsdp` x `mp`):
- the train state, sharded over every chip: params (fp32; EasyLM's `param_dtype` reaches only
  lm_head), AdamW moments (mu in bf16 with `bf16_momentum`, nu always fp32: optax's `mu_dtype`
  covers the first moment only) and, with accumulation, optax.MultiSteps' gradient buffer (the
  params' dtype); and the step's gradients, the params' size, until the update;
- at the backward's peak: every block's saved activations (with remat only its input, else all its
  backward reads: EasyLM's attention is not fused, so heads x seq x seq fp32 probabilities per
  block), plus the larger of one block's recompute and backward (with its weights all-gathered and
  their gradient before the reduce-scatter, and the embedding's gradient) and the head's (lm_head
  gathered with its gradient, fp32 log-softmax of the logits with its gradient).
Each term is a buffer XLA's compile of the step holds, counted from the compiled program's buffer
assignment: tests/trainers_tpu/test_xla_memory.py compiles a mirror of EasyLM's step
(tests/trainers_tpu/xla_llama.py) for the real 1B, 7B and 8B shapes on simulated CPU devices and
holds this arithmetic to XLA's memory analysis (within 15%; measured within 5% with remat; without
remat, checked by hand on TinyLlama at 512 to 2048 tokens, 6 to 14% low). The CPU compile
also materialises the optimizer update (clipped gradients, a copy of the old first moment), which a
TPU compile fuses in place; `memory(fused_update=False)` adds it for that comparison. The
activation terms follow the CPU compile, which keeps them in fp32 where a TPU may keep bf16: on a
TPU the figure errs high.
A plan fits when that total stays under `USABLE` of the chip's HBM (the rest is the runtime's own
reservation, 0.5 GiB on v2/v3 and 1.25 GiB on v4, fragmentation, and this estimate's error).

`choose()` starts from the job's settings and, only where they do not fit, turns remat on, moments
to bf16, shrinks the micro-batch while raising accumulation (same rows per update), drops
accumulation, then adds model parallelism; each change is one line of `Plan.changes`. When nothing
fits, `PlanError` names the smallest TPU type that would.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from launcher.errors import LauncherError

GiB = 1024 ** 3
GB = 1000 ** 3
USABLE = 0.90  # share of HBM a plan may fill: XLA scratch, fragmentation, the runtime, and this estimate's error
BYTES = {"fp32": 4, "bf16": 2}


class PlanError(LauncherError):
    """A run that cannot fit (or a model whose shape cannot be known); one line."""


# -- TPU types ----------------------------------------------------------------------------------

# kind: (HBM per JAX device in GiB, TensorCores (or chips for v5e/v6e) per device, devices per host)
_KINDS = {
    "v2": (8, 1, 8),
    "v3": (16, 1, 8),
    "v4": (32, 2, 4),
    "v5p": (95, 2, 4),
    "v5litepod": (16, 1, 8),
    "v5e": (16, 1, 8),
    "v6e": (32, 1, 8),
    "cpu": (64, 1, 1 << 30),  # tests: cpu-N, N simulated devices on one host
}
# The types `smallest_fit` considers, in the order it prefers among those with equal total HBM.
CANDIDATES = ["v2-8", "v3-8", "v5litepod-8", "v4-8", "v2-16", "v3-16", "v5litepod-16", "v4-16", "v6e-8",
              "v2-32", "v3-32", "v5litepod-32", "v4-32", "v5p-8", "v6e-16", "v3-64", "v5litepod-64", "v4-64",
              "v5p-16", "v6e-32", "v3-128", "v4-128", "v5p-32", "v6e-64", "v3-256", "v4-256", "v5p-64"]


@dataclass(frozen=True)
class Tpu:
    name: str
    devices: int        # JAX devices (v4/v5p: megacore chips; v2/v3: TensorCores)
    hosts: int
    hbm_gib: float      # per device

    @property
    def budget(self) -> float:
        return self.hbm_gib * GiB * USABLE


def tpu(name: str) -> Tpu:
    """A TPU type such as v3-8, tpu-v4-8, v5litepod-16; `cpu-N` for tests. Raises PlanError."""
    t = name.lower().removeprefix("tpu-").split(":")[0]
    m = re.fullmatch(r"(v2|v3|v4|v5p|v5litepod|v5e|v6e|cpu)(?:-(\d+))?", t)
    if not m or (m.group(1) != "cpu" and not m.group(2)):
        raise PlanError(f"resources.accelerators: unknown TPU type {name!r} (expected e.g. tpu-v3-8, tpu-v4-8, tpu-v3-32)")
    kind, n = m.group(1), int(m.group(2) or 1)
    hbm, per_device, per_host = _KINDS[kind]
    if kind == "cpu":
        return Tpu(t, n, 1, hbm)
    # Google's slice sizes: 8 cores and up in eights (v2-v5p); v5e/v6e also 1 and 4 chips
    if n % 8 and not (kind in ("v5litepod", "v5e", "v6e") and n in (1, 4)):
        raise PlanError(f"resources.accelerators: unknown TPU type {name!r}: {kind} slices come in "
                        f"{'1, 4, 8, 16 ...' if kind in ('v5litepod', 'v5e', 'v6e') else '8, 16, 32 ...'} "
                        f"{'chips' if kind in ('v5litepod', 'v5e', 'v6e') else 'cores'} (e.g. tpu-{kind}-8)")
    devices = max(1, n // per_device)
    if kind in ("v5litepod", "v5e", "v6e"):
        hosts = 1 if n <= 8 else n // 4  # pods of these have 4 chips per host
    else:
        hosts = max(1, n // 8)
    return Tpu(t, devices, hosts, hbm)


def runtime_version(name: str) -> str:
    """The TPU VM software a generation boots with (Google's names): the one for v2-v4 does not
    drive v5e, v5p or v6e chips."""
    kind = tpu(name).name.split("-")[0]
    return {"v5litepod": "v2-alpha-tpuv5-lite", "v5e": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5",
            "v6e": "v2-alpha-tpuv6e"}.get(kind, "tpu-ubuntu2204-base")


# -- the model ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class LlamaShape:
    """The numbers of a LLaMA-family model that its memory depends on, as EasyLM lays it out (its
    own lm_head always). Not estimate.ModelShape: that one covers every model type the GPU side
    takes, with its exact parameter count; this one only what EasyLM can train."""
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool = False

    @classmethod
    def from_hf_config(cls, cfg: dict) -> "LlamaShape":
        heads = cfg["num_attention_heads"]
        return cls(hidden=cfg["hidden_size"], layers=cfg["num_hidden_layers"], heads=heads,
                   kv_heads=cfg.get("num_key_value_heads") or heads, intermediate=cfg["intermediate_size"],
                   vocab=cfg["vocab_size"], tied=bool(cfg.get("tie_word_embeddings", False)))

    @property
    def layer_params(self) -> int:
        h, kv = self.hidden, self.hidden // self.heads * self.kv_heads
        return 2 * h * h + 2 * h * kv + 3 * h * self.intermediate + 2 * h

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden

    def params(self, *, easylm: bool = True) -> int:
        """Parameter count; EasyLM always has its own lm_head, tied or not."""
        head = self.embed_params if (easylm or not self.tied) else 0
        return self.embed_params + self.layers * self.layer_params + self.hidden + head


# -- a run's settings and its memory ------------------------------------------------------------

@dataclass(frozen=True)
class Setup:
    """What decides a train step's memory. Rows are sequences; `rows` is per FSDP shard."""
    rows: int                       # micro-batch rows each FSDP shard holds (global batch / fsdp)
    seq: int
    accumulate: int = 1
    remat: bool = True              # EasyLM remat_policy nothing_saveable
    dtype: str = "bf16"             # activations (EasyLM --dtype)
    param_dtype: str = "fp32"       # EasyLM --param_dtype: reaches lm_head only
    moments: str = "fp32"           # AdamW mu; bf16 = EasyLM bf16_momentum (nu stays fp32)
    mesh: tuple[int, int, int] = (1, 8, 1)  # dp, fsdp, mp

    @property
    def global_batch(self) -> int:
        return self.rows * self.mesh[0] * self.mesh[1]

    @property
    def rows_per_update(self) -> int:
        return self.global_batch * self.accumulate

    @property
    def mesh_dim(self) -> str:
        return ",".join(map(str, self.mesh))


@dataclass
class Memory:
    """Bytes per chip, by what holds them at the step's peak (`peak` names that moment)."""
    parts: dict[str, float]
    peak: str = ""

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def describe(self) -> str:
        return ", ".join(f"{k} {v / GiB:.2f}" for k, v in self.parts.items() if v)


def memory(shape: LlamaShape, s: Setup, *, fused_update: bool = True) -> Memory:
    """Per-chip bytes of EasyLM's sharded train step for `shape` run as `s`.

    The terms are the buffers XLA's compile of that step holds (tests/trainers_tpu/test_xla_memory.py
    compiles it on the TPU's devices simulated on CPU and reads the memory analysis; xla_llama.py
    says what it mirrors).
    `fused_update=False` adds what XLA's CPU backend materialises in the optimizer update and a
    TPU compile does not (see `update` below): the figure to compare with a CPU compile.
    """
    dp, fsdp, mp = s.mesh
    shards = fsdp * mp
    n = shape.params()
    head = shape.embed_params
    p_bytes = (n - head) * 4 + head * BYTES[s.param_dtype]
    mu = n * BYTES[s.moments] / shards
    state = {
        "params": p_bytes / shards,
        "gradients": p_bytes / shards,
        "adam mu": mu,
        "adam nu": n * 4 / shards,
        "accumulation": p_bytes / shards if s.accumulate > 1 else 0.0,
    }
    b, S, H, L, V = s.rows, s.seq, shape.hidden, shape.layers, shape.vocab
    # EasyLM splits heads, the MLP, the vocabulary and (its constraint on the MLP output) the
    # residual stream over mp, and gathers weights over fsdp only: every activation term is /mp.
    # One block's attention probabilities: heads x seq x seq in fp32 (no fused attention).
    scores = b * shape.heads * S * S * 4 / mp
    # The rest of one block's backward, in fp32 where XLA computes it: the attention side's block
    # input, its norm, q, k and v (k, v repeated to every head), the attention output and the
    # gradient of each (12 x rows x seq x hidden), the MLP's gate, up, their product and the
    # gradients of gate and up (5 x rows x seq x intermediate).
    block = 2 * scores + b * S * (12 * H + 5 * shape.intermediate) * 4 / mp
    if s.remat:
        # nothing_saveable: each block's input is all that is kept (held in fp32 in the backward),
        # and one block at a time is recomputed: its probabilities with their gradient, and the rest.
        saved = L * b * S * H * 4 / mp
        working = block
    else:
        # Every block keeps what its backward reads until that backward runs.
        saved = L * block
        working = 0.0
    # One block's weights all-gathered over fsdp in fp32, and their gradient before the reduce-scatter;
    # the token embedding's gradient, scattered into the table's whole fsdp extent.
    layer_phase = {"block backward": working, "block weights": 2 * shape.layer_params * 4 / mp,
                   "embedding grad": V * H * 4 / mp}
    # The head, before the blocks' backward: lm_head gathered in fp32 with its gradient, and the
    # logits' fp32 log-softmax with its gradient (rows x seq x vocab each).
    head_phase = {"lm_head+logits": 2 * H * V * 4 / mp + 2 * b * S * V * 4 / mp}
    backward = {"activations": saved,
                **max(layer_phase, head_phase, key=lambda phase: sum(phase.values()))}
    # The optimizer update runs after the backward, with the gradients still held. A TPU compile
    # fuses clip, AdamW and the param update into one in-place pass per tensor (EasyLM's issue 61:
    # Llama-7B with fp32 moments fine-tunes on a 16 GiB v3 core at batch 1, which the buffers below
    # would not leave room for). XLA's CPU backend, without multi-output fusion, materialises the
    # clipped gradients and copies each old first moment before writing the new one in its place.
    update = 0.0 if fused_update else p_bytes / shards + mu
    if update > sum(backward.values()):
        return Memory({**state, "unfused update": update}, "optimizer update")
    return Memory({**state, **backward}, "backward")


# -- choosing what fits -------------------------------------------------------------------------

@dataclass
class Plan:
    tpu: Tpu
    setup: Setup
    memory: Memory
    changes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.tpu.budget

    def lines(self) -> list[str]:
        s, m = self.setup, self.memory
        out = [f"memory plan per chip on {self.tpu.name} ({self.tpu.devices} devices x {self.tpu.hbm_gib:g} GiB): "
               f"{m.total / GiB:.2f} GiB of {self.tpu.budget / GiB:.2f} usable "
               f"({'fits' if self.fits else 'does NOT fit'})",
               f"  GiB at the {m.peak} peak: {m.describe()}",
               f"  mesh {s.mesh_dim} (dp,fsdp,mp), global batch {s.global_batch} x {s.seq} tokens, "
               f"accumulation {s.accumulate} ({s.rows_per_update} rows per update), "
               f"remat {'nothing_saveable' if s.remat else 'off'}, activations {s.dtype}, params {s.param_dtype}, "
               f"adam mu {s.moments}"]
        out += [f"  changed to fit: {c}" for c in self.changes]
        return out


def _meshes(shape: LlamaShape, devices: int) -> list[tuple[int, int, int]]:
    """Full FSDP, then FSDP x model parallel where EasyLM's partition rules divide the model evenly
    (JAX wants every sharded dimension divisible): fsdp splits the hidden size; mp splits the
    vocabulary, the heads, the kv heads and the MLP."""
    out = []
    for mp in (1, 2, 4, 8):
        if mp > devices or devices % mp:
            continue
        fsdp = devices // mp
        if mp > 1 and (shape.hidden % fsdp or shape.vocab % mp or shape.heads % mp or shape.kv_heads % mp
                       or shape.intermediate % mp):
            continue
        out.append((1, fsdp, mp))
    return out


def choose(shape: LlamaShape, tpu_type: str | Tpu, *, rows: int, seq: int, accumulate: int, remat: bool,
           dtype: str = "bf16", param_dtype: str = "fp32") -> Plan:
    """The job's own settings if they fit, else the first of a fixed series of changes that does.

    `rows` is the job's per-device batch (train.per_device_train_batch_size): on a full-FSDP mesh it
    is the rows each shard holds. Deterministic, so the dry-run and the trainer agree. Raises
    PlanError naming the smallest TPU type that would fit when nothing does here.
    """
    t = tpu_type if isinstance(tpu_type, Tpu) else tpu(tpu_type)
    first = Setup(rows=rows, seq=seq, accumulate=accumulate, remat=remat, dtype=dtype, param_dtype=param_dtype,
                  moments="fp32", mesh=(1, t.devices, 1))
    tried: list[Plan] = []
    plan = _search(shape, t, first, tried)
    if plan is None:
        best = min(tried, key=lambda p: p.memory.total)
        raise PlanError(_no_fit(shape, t, best, seq, dtype, param_dtype))
    return plan


def _search(shape: LlamaShape, t: Tpu, first: Setup, tried: list | None = None) -> Plan | None:
    tried = [] if tried is None else tried

    def attempt(s: Setup, why: list[str]) -> Plan | None:
        p = Plan(t, s, memory(shape, s), list(why))
        tried.append(p)
        return p if p.fits else None

    s = first
    changes: list[str] = []
    if p := attempt(s, changes):
        return p
    if not s.remat:
        s = dataclasses.replace(s, remat=True)
        changes.append("train.gradient_checkpointing false -> remat nothing_saveable")
        if p := attempt(s, changes):
            return p
    s = dataclasses.replace(s, moments="bf16")
    changes.append("adam first moment fp32 -> bf16 (EasyLM bf16_momentum)")
    if p := attempt(s, changes):
        return p
    per_update = s.rows * s.accumulate
    rows = s.rows
    while rows > 1:  # smaller micro-batches, more of them: the same rows per update
        rows //= 2
        acc = math.ceil(per_update / rows)
        trial = dataclasses.replace(s, rows=rows, accumulate=acc)
        why = changes + [f"train.per_device_train_batch_size {first.rows} -> {rows}, "
                         f"train.gradient_accumulation_steps {first.accumulate} -> {acc} (same rows per update)"]
        if p := attempt(trial, why):
            return p
    if s.accumulate > 1 or per_update > 1:
        trial = dataclasses.replace(s, rows=1, accumulate=1)
        why = changes + [f"train.per_device_train_batch_size {first.rows} -> 1, train.gradient_accumulation_steps "
                         f"{first.accumulate} -> 1: rows per update {first.rows_per_update} -> {trial.rows_per_update} "
                         f"(the accumulation buffer does not fit)"]
        if p := attempt(trial, why):
            return p
    for mesh in _meshes(shape, t.devices)[1:]:
        trial = dataclasses.replace(s, rows=1, accumulate=1, mesh=mesh)
        why = changes + [f"mesh 1,{t.devices},1 -> {trial.mesh_dim} (model parallel {mesh[2]}: activations split), "
                         f"global batch {trial.global_batch}, accumulation 1: rows per update {first.rows_per_update} -> "
                         f"{trial.rows_per_update}"]
        if p := attempt(trial, why):
            return p
    return None


def smallest_fit(shape: LlamaShape, *, seq: int, dtype: str = "bf16", param_dtype: str = "fp32",
                 kinds: tuple[str, ...] | None = None) -> Plan | None:
    """The first TPU type of CANDIDATES (optionally of these kinds) where some plan fits."""
    for name in CANDIDATES:
        if kinds and name.split("-")[0] not in kinds:
            continue
        t = tpu(name)
        p = _search(shape, t, Setup(rows=1, seq=seq, accumulate=1, remat=True, dtype=dtype,
                                    param_dtype=param_dtype, moments="bf16", mesh=(1, t.devices, 1)))
        if p is not None:
            return p
    return None


def _no_fit(shape: LlamaShape, t: Tpu, best: Plan, seq: int, dtype: str, param_dtype: str) -> str:
    msg = (f"resources.accelerators: this model ({shape.params() / 1e9:.1f}B parameters with EasyLM's own lm_head) "
           f"does not fit a {t.name}: at least {best.memory.total / GiB:.1f} GiB per chip "
           f"(mesh {best.setup.mesh_dim}, batch {best.setup.global_batch} x {seq}, remat, bf16 moments) "
           f"of {t.budget / GiB:.1f} usable")
    anywhere = smallest_fit(shape, seq=seq, dtype=dtype, param_dtype=param_dtype)
    kind = t.name.split("-")[0]
    same = smallest_fit(shape, seq=seq, dtype=dtype, param_dtype=param_dtype, kinds=(kind,))
    if anywhere is None:
        return msg + "; no TPU type up to 256 chips fits it"
    msg += f"; the smallest TPU that fits: {anywhere.tpu.name} ({anywhere.memory.total / GiB:.1f} GiB per chip)"
    if same is not None and same.tpu.name != anywhere.tpu.name:
        msg += f", the smallest {kind}: {same.tpu.name}"
    return msg + (", or a shorter data.max_length" if seq > 512 else "")


def plan_for_spec(spec, shape: LlamaShape, tpu_type: str | None = None) -> Plan:
    """`choose()` with a job spec's settings (what both the dry-run and the TPU trainer call)."""
    t = spec.train
    name = tpu_type or (spec.resources.accelerators or "")
    is_cpu = name.lower().removeprefix("tpu-").startswith("cpu")
    dtype = "fp32" if t.precision == "fp32" or (t.precision == "auto" and is_cpu) else "bf16"
    return choose(shape, name, rows=t.per_device_train_batch_size, seq=spec.data.max_length,
                  accumulate=t.gradient_accumulation_steps, remat=t.gradient_checkpointing, dtype=dtype)


# -- disk ---------------------------------------------------------------------------------------

@dataclass
class DiskPlan:
    parts: dict[str, float]  # bytes on the TPU VM's boot disk
    size_gb: int             # the disk to ask for

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def lines(self) -> list[str]:
        return [f"disk plan: {self.total / GB:.0f} GB on the VM -> disk_size {self.size_gb} GB",
                "  GB: " + ", ".join(f"{k} {v / GB:.1f}" for k, v in self.parts.items() if v)]


# The image, the OS, EasyLM's stack, prepared data, logs: measured image is ~12 GB; generous.
DISK_BASE_GB = 40


def disk_plan(shape: LlamaShape, *, hub_download: bool, bucket: bool, state_dtype: str = "fp32",
              accumulate: int = 1, exports: int = 2) -> DiskPlan:
    """What the VM's disk holds at its fullest: the base model (downloaded, then converted in its
    own 16-bit dtype), and without a bucket the train states and exports of `trainers.tpu.easylm_main`
    (one complete train state for resume plus the one being written; `exports` milestone params in
    bf16), then the final HF model."""
    n = shape.params()
    n_hf = shape.params(easylm=False)
    parts = {"system, image, data": DISK_BASE_GB * GB}
    if hub_download:
        parts["hub download"] = n_hf * 2
    parts["converted base params"] = n * 2
    if not bucket:
        # params and both AdamW moments (and MultiSteps' buffer) at checkpointer.float_dtype
        state = n * BYTES[state_dtype] * (3 + (1 if accumulate > 1 else 0))
        parts["train states (resume)"] = 2 * state
        parts["milestone params (bf16)"] = exports * n * 2
    parts["final model (HF, bf16)"] = n_hf * 2
    total = sum(parts.values())
    return DiskPlan(parts, int(math.ceil(total * 1.1 / GB / 50) * 50))


# -- the model's config -------------------------------------------------------------------------

def model_config(ref: str, base: Path | None = None, *, timeout: float = 10.0) -> tuple[dict | None, str]:
    """A job's `model:` config and where it came from (launcher.models.model_config); (None, why)
    when it cannot be had, offline included: a dry run then says so instead of failing."""
    from launcher.models import ModelError, model_config as read

    try:
        return read(ref, base, timeout=timeout)
    except ModelError as e:
        return None, str(e)


def cached_config_path(hub_id: str) -> Path:
    from launcher.models import cached_config_path as path

    return path(hub_id)
