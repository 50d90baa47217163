"""The job spec: one YAML file that describes a fine-tuning job, validated by a pydantic schema.

A job is data. `load_spec` reads a file, applies `--set a.b=value` overrides and validates; every
error names the field and, where the file has it, the line (`job.yaml:12: train.learning_rate:
must be > 0`). `JobSpec.to_yaml()` writes it back so that it loads to the same spec (round trip).

This module imports only pydantic and yaml: the trainers and the images read job files with it
and must not pull in the launcher's cloud dependencies.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from launcher.dataspec import DataConfig, Section
from launcher.errors import LauncherError

class SpecError(LauncherError):
    """A job file that cannot be used; str() is one line per problem, ready to print."""


class LoraConfig(Section):
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA alpha (scaling is alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules to adapt: a list of names, or all-linear.")
    merge: bool = Field(False, description="Also save the base model with the adapter merged in.")


# The Hugging Face Trainer's optimizer names (transformers' OptimizerNames, 5.x): a typo is refused
# here, before a machine is paid for, not by the Trainer after data prep on it. A test holds this
# list to the installed transformers.
OPTIMIZERS = Literal[
    "adamw_torch", "adamw_torch_fused", "adamw_torch_xla", "adamw_torch_npu_fused", "adafactor", "adamw_anyprecision",
    "adamw_torch_4bit", "adamw_torch_8bit", "ademamix", "sgd", "adagrad", "adamw_bnb_8bit", "adamw_8bit",
    "ademamix_8bit", "lion_8bit", "lion_32bit", "paged_adamw_32bit", "paged_adamw_8bit", "paged_ademamix_32bit",
    "paged_ademamix_8bit", "paged_lion_32bit", "paged_lion_8bit", "rmsprop", "rmsprop_bnb", "rmsprop_bnb_8bit",
    "rmsprop_bnb_32bit", "galore_adamw", "galore_adamw_8bit", "galore_adafactor", "galore_adamw_layerwise",
    "galore_adamw_8bit_layerwise", "galore_adafactor_layerwise", "lomo", "adalomo", "grokadamw",
    "schedule_free_radam", "schedule_free_adamw", "schedule_free_sgd", "apollo_adamw", "apollo_adamw_layerwise",
    "stable_adamw",
]


class TrainConfig(Section):
    """The flags of the guide's example run, under today's Trainer names."""

    per_device_train_batch_size: int = Field(8, gt=0, description="Sequences per device per step.")
    per_device_eval_batch_size: int = Field(8, gt=0, description="Sequences per device per eval step.")
    gradient_accumulation_steps: int = Field(8, gt=0, description="Steps whose gradients add up before an update.")
    learning_rate: float = Field(1e-5, gt=0, description="Peak learning rate.")
    lr_scheduler_type: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
        "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay",
    ] = Field("cosine", description="Learning-rate schedule after warmup.")
    warmup_steps: int = Field(64, ge=0, description="Steps of linear warmup from 0 to learning_rate.")
    num_train_epochs: float = Field(1.0, gt=0, description="Passes over the training data (ignored when max_steps > 0).")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps; -1 = use num_train_epochs.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="Training precision; auto = bf16 where the GPU supports it, fp16 on older GPUs, fp32 on CPU.")
    eval_steps: int = Field(128, gt=0, description="Evaluate every N steps.")
    save_steps: int = Field(128, gt=0, description="Save a checkpoint every N steps.")
    save_total_limit: int | None = Field(2, gt=0, description="Keep at most N checkpoints (None = all).")
    seed: int = Field(42, description="Seed for weight init, dropout and the trainer.")
    data_seed: int | None = Field(42, description="Seed for data sampling (None = same as seed).")
    optim: OPTIMIZERS = Field("adamw_torch_fused", description="Optimizer name as the Trainer knows it (adamw_torch_fused, "
                              "adamw_torch, adafactor, adamw_8bit, paged_adamw_8bit, lion_8bit, sgd ...).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping (0 = off).")
    logging_steps: int = Field(1, gt=0, description="Log every N steps.")
    logging_first_step: bool = Field(True, description="Also log the very first step.")
    dataloader_num_workers: int = Field(1, ge=0, description="Worker processes that load batches.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    group_by_length: bool = Field(
        False, description="Batch rows of similar length together (less padding when data.packing is false; "
                           "packed rows are all about max_length already).")
    report_to: Literal["none", "wandb", "tensorboard"] = Field("none", description="Where metrics go.")
    wandb_project: str | None = Field(None, description="W&B project (default: the job name).")
    do_eval: bool = Field(True, description="Evaluate on the validation split.")
    eval_on_start: bool = Field(True, description="Also evaluate before the first step, so the loss before training is known.")
    ddp_find_unused_parameters: bool = Field(False, description="Passed to DDP; false is right for LoRA and full fine-tunes.")
    sample_prompts: int = Field(3, ge=0, description="Validation prompts to generate from at the end.")
    sample_max_new_tokens: int = Field(64, gt=0, description="Tokens generated per sample prompt.")
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = Field(
        "auto", description="Attention kernel; auto = flash-attention when installed on a CUDA GPU, else SDPA.")
    fsdp: bool = Field(False, description="Shard a full fine-tune across the GPUs with FSDP (a model too big for one GPU).")

    @field_validator("max_steps")
    @classmethod
    def _max_steps(cls, v: int) -> int:
        if v == 0 or v < -1:
            raise ValueError(f"must be a positive number of steps, or -1 for num_train_epochs (got {v})")
        return v


class ResourcesConfig(Section):
    # Checked against the provider registry by whoever loads the spec with `clouds=` (the CLI):
    # the spec is the ground floor and does not know the providers.
    cloud: str = Field(
        "local", description="Where the job runs: local (this machine) or a provider; `launcher clouds` lists them.")
    accelerators: str | None = Field(None, description="GPU or TPU and count, e.g. A100:1, H100:8, tpu-v3-8.")
    spot: bool = Field(False, description="Use spot/preemptible machines (managed: relaunched and resumed).")
    region: str | None = Field(None, description="Region to launch in (default: cheapest).")
    zone: str | None = Field(None, description="Zone; pin it for TPU Research Cloud grants (e.g. europe-west4-a).")
    disk_size: int = Field(256, gt=0, description="Boot disk in GB.")
    num_nodes: int = Field(1, gt=0, description="Machines to train on together.")
    processes_per_node: int | None = Field(
        None, gt=0, description="Training processes per machine; default one per GPU (one without GPUs). "
        "2 on a machine without GPUs tries a multi-GPU job (DDP) with CPU processes.")
    idle_minutes: int = Field(30, ge=0, description="Tear the machine down after this many idle minutes.")
    docker: bool = Field(False, description="local cloud only: run inside the GPU image with the local Docker engine.")

    @field_validator("accelerators")
    @classmethod
    def _accelerators(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip()
        if m := re.fullmatch(r"(?i)(tpu-v\d+[a-z]*-\d+)(?::(\d+))?", v):
            if m.group(2) not in (None, "1"):  # SkyPilot's own form is tpu-v3-8:1
                raise ValueError(f"a TPU slice is taken one at a time (got {v!r}); for more chips take a larger slice, "
                                 "e.g. tpu-v3-32")
            return m.group(1)
        m = re.fullmatch(r"([A-Za-z][A-Za-z0-9_.-]*)(?::(-?\d+))?", v)
        if not m:
            raise ValueError(f"expected NAME:COUNT such as A100:1 or H100:8, or a TPU such as tpu-v3-8 (got {v!r})")
        if m.group(2) is not None and int(m.group(2)) <= 0:
            raise ValueError(f"the count must be at least 1 (got {v!r}); leave accelerators out to train on the CPU")
        return v

    @property
    def is_tpu(self) -> bool:
        return bool(self.accelerators) and self.accelerators.lower().startswith("tpu-")

    @property
    def accelerator_name(self) -> str | None:
        return self.accelerators.split(":")[0] if self.accelerators else None


class ImageConfig(Section):
    registry: str | None = Field(
        None, description="Where images are pushed: docker.io/USER, ghcr.io/USER, an ECR or Artifact Registry repository.")
    name: str = Field("llm-launcher", description="Image name.")
    tag: str | None = Field(None, description="Fixed tag; default is a content hash of what goes into the image.")
    base: str | None = Field(None, description="Base image override (build argument).")
    wheelhouse: str | None = Field(
        None, description="Folder or URL of wheels to build from offline (no PyPI); default: PyPI.")


# GGUF types `launcher export --gguf` and outputs.export.gguf accept: what llama.cpp's converter
# writes itself (f32, f16, bf16, q8_0) and what its quantizer makes without an importance matrix.
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_1", "q5_0", "q4_k_m", "q4_k_s",
              "q4_1", "q4_0", "q3_k_l", "q3_k_m", "q3_k_s", "q2_k", "iq4_nl", "iq4_xs")


def check_gguf_type(v: str) -> str:
    if v.lower() not in GGUF_TYPES:
        hint = difflib.get_close_matches(v.lower(), GGUF_TYPES, n=1)
        raise ValueError(f"unknown GGUF type {v!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
                         + f" (known: {', '.join(GGUF_TYPES)})")
    return v.lower()


class ExportConfig(Section):
    gguf: str | None = Field(None, description="Also write a GGUF file of this type (f16, q8_0, q4_k_m ...) for llama.cpp.")

    _gguf = field_validator("gguf")(lambda cls, v: v if v is None else check_gguf_type(v))


class OutputsConfig(Section):
    dir: str = Field("runs/{name}", description="Local folder for data, logs and checkpoints ({name} = job name).")
    bucket: str | None = Field(
        None, description="s3://BUCKET/PREFIX or gs://BUCKET/PREFIX where cloud jobs upload checkpoints "
                          "(an absolute local folder, /path or file:///path, for --cloud local).")
    export: ExportConfig | None = Field(
        None, description="At the end of the job: merge the adapter and write OUT/export (HF model, GGUF), "
                          "e.g. {gguf: q4_k_m}; see `launcher export`.")

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str | None) -> str | None:
        # What launcher.storage.split_url opens as a bucket. A bare name there is a relative folder
        # on the machine, which a preempted or torn-down machine takes with it: refused here, not
        # found out after the first preemption.
        if v is None or re.fullmatch(r"(s3|gs)://[^/\s]+(/.*)?|file:///.*|/.*|~/.*", v):
            return v
        raise ValueError(f"expected s3://BUCKET/PREFIX or gs://BUCKET/PREFIX (an absolute local folder, /path "
                         f"or file:///path, for --cloud local) (got {v!r})")

    @field_validator("dir")
    @classmethod
    def _dir(cls, v: str) -> str:
        import string

        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(v) if f is not None]
        except ValueError as e:  # a lone { or }
            raise ValueError(f"a lone brace in {v!r} ({e}); the only placeholder is {{name}}, "
                             "and a literal brace is written {{ or }}") from None
        unknown = [f for f in fields if f != "name"]
        if unknown:
            raise ValueError(f"unknown placeholder {{{unknown[0]}}} in {v!r}; the only one is {{name}} (the job name)")
        return v


class JobSpec(Section):
    name: str = Field("my-finetune", description="Job name: lowercase letters, digits and dashes.")
    model: str = Field(
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        description="Base model: a Hugging Face hub id, a local folder, or a .gguf file.")
    tokenizer: str | None = Field(None, description="Tokenizer, if not the model's own.")
    method: Literal["full", "lora", "qlora"] = Field("lora", description="full fine-tune, LoRA, or QLoRA (4-bit base, CUDA only).")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings (lora and qlora).")
    data: DataConfig = Field(default_factory=DataConfig, description="Raw data and how to prepare it.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Trainer flags.")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig, description="Where and on what it runs.")
    image: ImageConfig = Field(default_factory=ImageConfig, description="The Docker image cloud runs use.")
    outputs: OutputsConfig = Field(default_factory=OutputsConfig, description="Where results go.")
    env: dict[str, str] = Field(default_factory=dict, description="Plain environment variables for the job (no secrets).")
    secrets: list[str] = Field(
        default_factory=lambda: ["WANDB_API_KEY", "HF_TOKEN"],
        description="Names of environment variables passed as secrets: read from your shell, never written to a file.")

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, v):
        # YAML reads `OMP_NUM_THREADS: 4` as a number; an environment variable is its text.
        if not isinstance(v, dict):
            return v
        return {k: str(x).lower() if isinstance(x, bool) else str(x) if isinstance(x, (int, float)) else x
                for k, x in v.items()}

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?", v):
            raise ValueError("use 1-40 lowercase letters, digits and dashes, starting and ending with a letter or digit")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "JobSpec":
        r = self.resources
        if r.is_tpu and self.method != "full":
            raise ValueError(f"method: {self.method} is not available on TPU (EasyLM trains full models only); use method: full")
        return self

    # -- derived values ---------------------------------------------------------------------
    def output_dir(self, base: Path | None = None) -> Path:
        p = Path(self.outputs.dir.format(name=self.name)).expanduser()
        return p if p.is_absolute() or base is None else base / p

    def local_inputs(self, base: Path) -> list[tuple[str, str, Path]]:
        """(field, value as written, resolved path) of every file or folder on this machine the job
        reads: data sources (a glob's fixed folder: data/*.jsonl -> data), and a model or tokenizer
        given as a path. Hub ids and `package:` models are not paths."""
        named = [(f"data.sources[{i}].path", s.path) for i, s in enumerate(self.data.sources) if s.path]
        named += [(f, v) for f, v in (("model", self.model), ("tokenizer", self.tokenizer))
                  if v and not v.startswith("package:") and (v.startswith((".", "/", "~")) or (base / v).exists())]
        out = []
        for field, value in named:
            fixed = re.split(r"[*?\[]", value, maxsplit=1)[0]
            out.append((field, value, (base / Path(fixed).expanduser()).resolve()))
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


RESOLVED = "job.yaml"  # the resolved job inside a run folder (or what travels to a machine)


def write_resolved(spec: JobSpec, folder: str | Path, *, keep: bool = False) -> Path:
    """Write the fully resolved job (every override applied; secrets are only names) as
    FOLDER/job.yaml, the one file every later stage and machine reads. With `keep`, an existing one
    is left as it is: a resumed run goes on with the job it started with."""
    path = Path(folder) / RESOLVED
    if keep and path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{RESOLVED}.tmp")
    tmp.write_text(spec.to_yaml(), encoding="utf-8")
    tmp.replace(path)  # a reader never sees half a job file
    return path


# Fields that change only how a run is watched, saved or sped up, not the model it ends with: a
# finished run submitted again with other values of these is still finished.
NOT_TRAINING = {f"train.{f}" for f in (
    "per_device_eval_batch_size", "eval_steps", "do_eval", "eval_on_start", "save_steps", "save_total_limit",
    "logging_steps", "logging_first_step", "report_to", "wandb_project", "dataloader_num_workers",
    "sample_prompts", "sample_max_new_tokens", "attn_implementation", "gradient_checkpointing", "fsdp",
    "ddp_find_unused_parameters")} | {"data.workers", "data.chunk_size", "lora.merge"}
TRAINING = ("model", "tokenizer", "method", "lora", "data", "train")


def changed_since(final: Path, spec: JobSpec) -> list[str]:
    """The fields that change what is trained where `spec` differs from the job that made `final`
    (its job.yaml), as `field (old -> new)`; [] when they agree or `final` records no job. A
    trainer refuses to call such a run done: that would hand back the old model."""
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


# -- loading ------------------------------------------------------------------------------------

def parse_set(items: list[str] | tuple[str, ...]) -> list[tuple[str, Any]]:
    """Parse `--set a.b=value` items; values are YAML (2e-5, true, [a, b]), except that a text
    field takes the text as typed when YAML would read it as something else (`User: {input}` is a
    mapping to YAML, `123` a number)."""
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError(f"--set {item}: expected FIELD=VALUE, e.g. --set train.learning_rate=2e-5")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if value is not None and not isinstance(value, str) and _is_text_field(key):
            value = raw
        out.append((key, value))
    return out


def _is_text_field(dotted: str) -> bool:
    """Whether the field at `dotted` takes text only (str or str | None; env.NAME too)."""
    ann: Any = JobSpec
    for part in dotted.split("."):
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            f = ann.model_fields.get(part)
            if f is None:
                return False
            ann = f.annotation
        elif getattr(ann, "__origin__", None) is dict:
            ann = ann.__args__[1]
        else:
            return False
    return ann is str or set(getattr(ann, "__args__", ())) == {str, type(None)}


def apply_overrides(data: dict, overrides: list[tuple[str, Any]]) -> dict:
    for dotted, value in overrides:
        node = data
        parts = dotted.split(".")
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise SpecError(f"--set {dotted}: {p} is not a section")
            node = nxt
        node[parts[-1]] = value
    return data


def load_spec(path: str | Path | None, overrides: list[tuple[str, Any]] = (), *, data: dict | None = None,
              clouds: tuple[str, ...] | None = None, flags: dict[str, str] | None = None) -> JobSpec:
    """Read, override and validate a job file. Raises SpecError with one line per problem.
    `clouds`: the allowed values of resources.cloud (the provider registry's names). An error in
    an overridden field names the override, not a line of the file: `--set FIELD`, or what `flags`
    says set it (field -> the option as typed, e.g. `--gpus A100:0`)."""
    label = str(path) if path else "<job>"
    root = None
    if data is None:
        p = Path(path)
        if not p.exists():
            raise SpecError(f"{label}: no such file (create one with `launcher init {label}`)")
        if p.is_dir():
            raise SpecError(f"{label}: is a folder, not a job file")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            line = p.read_bytes()[:e.start].count(b"\n") + 1
            raise SpecError(f"{label}:{line}: not UTF-8 text (byte {e.object[e.start]:#04x}); save it as UTF-8") from None
        except OSError as e:
            raise SpecError(f"{label}: cannot read it ({e.strerror})") from None
        if not text.strip() or all(ln.strip().startswith("#") or not ln.strip() for ln in text.splitlines()):
            raise SpecError(f"{label}: the file is empty; write at least model: and data.sources "
                            "(`launcher init` writes every field with its default)")
        try:
            root = yaml.compose(text)
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f":{mark.line + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise SpecError(f"{label}{where}: invalid YAML: {problem}") from None
        dup = _duplicate_key(root)
        if dup:
            raise SpecError(f"{label}:{dup[1]}: {dup[0]}: given twice (YAML would keep the last one silently); keep one")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{label}: expected a mapping of fields (name:, model:, train: ...), got {type(data).__name__}")
    data = apply_overrides(data, list(overrides))
    origins = {dotted: f"--set {dotted}" for dotted, _ in overrides}
    origins.update({dotted: f"{flag}: {dotted}" for dotted, flag in (flags or {}).items()})
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError("\n".join(_describe(e, label, root, origins))) from None
    if clouds is not None and spec.resources.cloud not in clouds:
        where = _where(label, root, ["resources", "cloud"], origins)
        raise SpecError(f"{where}: must be one of {', '.join(clouds)} "
                        f"(got {spec.resources.cloud!r})" + _close(spec.resources.cloud, repr(list(clouds))))
    return spec


def _where(label: str, root, loc: list[str], origins: dict[str, str]) -> str:
    """`job.yaml:12: a.b` for a field from the file; `--set a.b` for one the command line set (the
    file's line would point at a value that is not the one in use)."""
    field = ".".join(loc) or "(top level)"
    for dotted, origin in origins.items():
        if field == dotted or field.startswith(dotted + "."):
            return origin if field == dotted else f"{origin}: {field}"
    inside = [origin for dotted, origin in origins.items() if dotted.startswith(field + ".")]
    if inside:  # a check of a whole section, which the command line changed
        return f"{', '.join(inside)}: {field}"
    line = _line_of(root, loc)
    return f"{label}{':' + str(line) if line else ''}: {field}"


def _describe(err: ValidationError, label: str, root, origins: dict[str, str] | None = None) -> list[str]:
    lines = []
    for e in err.errors():
        loc = [str(x) for x in e["loc"]]
        field = ".".join(loc) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field" + _did_you_mean(loc)
        elif e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
            m = re.match(r"([a-z_.]+): (.*)", msg)
            if m and not loc:  # model-level checks name their own field
                field, msg = m.group(1), m.group(2)
        elif e["type"] in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[e["type"]]
            bound = next(iter(e["ctx"].values()))
            bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
            msg = f"must be {op} {bound} (got {e['input']!r})"
        elif e["type"] == "literal_error":
            expected = e["ctx"]["expected"]
            names = expected.split(", ")
            if len(names) > 12:  # the Trainer's 41 optimizers: the near ones, not the whole list
                expected = f"{len(names) + 1} names (launcher/spec.py lists them), e.g. {', '.join(names[:4])}"
            msg = f"must be one of {expected} (got {e['input']!r})" + _close(e["input"], e["ctx"]["expected"])
        else:
            msg = msg[0].lower() + msg[1:]
            if "input" in e and not isinstance(e["input"], (dict, list)):
                msg += f" (got {e['input']!r})"
        lines.append(f"{_where(label, root, field.split('.') if field != '(top level)' else [], origins or {})}: {msg}")
    return lines


def _close(value, expected: str) -> str:
    options = re.findall(r"'([^']+)'", expected)
    match = difflib.get_close_matches(str(value), options, n=1)
    return f"; did you mean {match[0]!r}?" if match else ""


def _did_you_mean(loc: list[str]) -> str:
    model: type[BaseModel] = JobSpec
    for part in loc[:-1]:
        f = model.model_fields.get(part)
        ann = getattr(f, "annotation", None) if f else None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return ""
    match = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else f" (known: {', '.join(model.model_fields)})"


def _duplicate_key(node, path: str = "") -> tuple[str, int] | None:
    """(dotted key, 1-based line) of the first key a mapping holds twice."""
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for k, v in node.value:
            key = f"{path}.{k.value}" if path else str(k.value)
            if k.value in seen:
                return key, k.start_mark.line + 1
            seen.add(k.value)
            found = _duplicate_key(v, key)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            found = _duplicate_key(v, f"{path}.{i}")
            if found:
                return found
    return None


def _line_of(root, loc: list[str]) -> int | None:
    """1-based line of the deepest node of `loc` present in the YAML tree."""
    node, line = root, None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == part:
                    line, node = k.start_mark.line + 1, v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            return line
    return line


# -- `launcher init` ----------------------------------------------------------------------------

def commented_yaml(spec: JobSpec | None = None) -> str:
    """The whole spec as YAML with each field's description as a comment above it."""
    spec = spec or JobSpec()
    out: list[str] = ["# A launcher job file. Every field is optional; these are the defaults.",
                      "# Check it with `launcher submit --dry-run FILE`; override any field with --set a.b=value.", ""]
    _emit(spec, out, 0)
    return "\n".join(out) + "\n"


def _emit(model: BaseModel, out: list[str], depth: int) -> None:
    pad = "  " * depth
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if field.description:
            out.append(f"{pad}# {field.description}")
        if isinstance(value, BaseModel):
            out.append(f"{pad}{name}:")
            _emit(value, out, depth + 1)
            if depth == 0:
                out.append("")
            continue
        flow = yaml.safe_dump(_plain(value), default_flow_style=True, width=10_000, allow_unicode=True)
        flow = flow.removesuffix("\n").removesuffix("\n...").strip()
        out.append(f"{pad}{name}: {flow}")


def _plain(value):
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
