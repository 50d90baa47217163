"""The GPU trainer: full fine-tune, LoRA or QLoRA of a causal LM with the Hugging Face Trainer.

    python -m trainers.gpu.train JOB.yaml --data DATA_DIR --out OUT [--set a.b=value ...]

It reads the job spec and the packed Arrow data that data prep wrote, fine-tunes, and writes
OUT/checkpoints/checkpoint-N (each with a manifest, written last) and OUT/final. It resumes by
itself from the newest complete checkpoint in OUT, so after a preemption the same command simply
continues. The same file runs on one GPU, on the CPU (`--cloud local`), and under
`accelerate launch` for several GPUs or nodes (see launch.py).

Exit codes: 0 done, 1 failed, 2 bad input (job file, data, model, a method the machine cannot
run), 75 stopped by SIGTERM after saving a checkpoint.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import traceback
import uuid
from pathlib import Path

from launcher.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_STOPPED


class InputError(Exception):
    """Something wrong with what the user gave us; str() is the one line to print."""


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m trainers.gpu.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("job", help="the job file (job.yaml)")
    ap.add_argument("--data", required=True, help="the prepared data folder (with train/ and val/)")
    ap.add_argument("--out", required=True, help="the run folder: checkpoints/ and final/ go here")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a field of the job file, e.g. --set train.max_steps=100")
    return ap.parse_args(argv)


# -- what the machine can do -----------------------------------------------------------------

def resolve_precision(choice: str, cuda: bool, bf16_ok: bool) -> str:
    """bf16, fp16 or fp32 for `train.precision` on this machine."""
    if choice == "auto":
        return ("bf16" if bf16_ok else "fp16") if cuda else "fp32"
    if choice == "fp16" and not cuda:
        raise InputError("train.precision: fp16 needs a CUDA GPU; use fp32 (or bf16) on the CPU")
    if choice == "bf16" and cuda and not bf16_ok:
        raise InputError("train.precision: this GPU has no bf16; use fp16 or auto")
    return choice


def installed_here(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def resolve_attention(choice: str, cuda: bool, installed=installed_here) -> str:
    """The attention kernel: flash-attention when installed on a CUDA GPU, else PyTorch SDPA."""
    has_flash = installed("flash_attn")
    if choice == "auto":
        return "flash_attention_2" if cuda and has_flash else "sdpa"
    if choice == "flash_attention_2" and not (cuda and has_flash):
        raise InputError("train.attn_implementation: flash_attention_2 needs a CUDA GPU and the flash-attn package; use auto")
    return choice


def check_method(spec, cuda: bool, installed=installed_here) -> None:
    """Refuse what cannot run here before anything heavy is loaded. `installed(module)`: whether a
    package is there (the launcher asks it of a GPU image's package list before renting a machine)."""
    gpus = spec.resources.accelerators
    if gpus and not spec.resources.is_tpu and not cuda:
        # A GPU machine whose driver or image is broken would otherwise train on its CPU, for hours, at GPU prices.
        raise InputError(f"resources.accelerators is {gpus} but CUDA is not usable here (torch.cuda.is_available() "
                         f"is False: no GPU, driver or CUDA runtime); stopping instead of training on the CPU. To "
                         f"train on a CPU, leave resources.accelerators empty")
    if spec.method == "qlora":
        if not cuda:
            raise InputError("method: qlora needs a CUDA GPU (bitsandbytes 4-bit NF4) and this machine has none; "
                             "use method: lora (or run on a GPU cloud)")
        if not installed("bitsandbytes"):
            raise InputError("method: qlora needs the bitsandbytes package (pip install bitsandbytes)")
    report = spec.train.report_to
    if report != "none" and not any(installed(m) for m in {"wandb": ["wandb"],
                                    "tensorboard": ["tensorboard", "tensorboardX"]}[report]):
        raise InputError(f"train.report_to: {report} needs the {report} package (pip install {report})")
    gguf = spec.outputs.export.gguf if spec.outputs.export else None
    if gguf and gguf not in ("f32", "f16", "bf16", "q8_0") and not installed("llama_cpp"):
        raise InputError(f"outputs.export.gguf: {gguf} needs llama.cpp's quantizer on the training machine "
                         "(pip install 'llm-launcher[export]'); use f16, bf16 or q8_0 here and "
                         f"`launcher export RUN --gguf {gguf}` at home")
    if spec.train.fsdp and spec.method != "full":
        raise InputError(f"train.fsdp: FSDP is for method: full; {spec.method} trains a small adapter, "
                         "which DDP across GPUs already handles")
    if spec.train.fsdp and not cuda:
        # accelerate (1.15) turns FSDP on only across accelerators; CPU processes would quietly
        # train unsharded copies (plain DDP) under a job that says FSDP.
        raise InputError("train.fsdp: FSDP shards across GPUs only, and this machine has none; "
                         "drop train.fsdp to try the job on CPU processes (it then runs as DDP)")


# -- the spec as TrainingArguments -------------------------------------------------------------

def training_kwargs(spec, out: Path, *, precision: str, evaluate: bool, num_nodes: int = 1,
                    cuda: bool | None = None, world_size: int | None = None) -> dict:
    """Keyword arguments for TrainingArguments: every flag of the guide's run, under today's names."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE") or 1)  # set by torchrun under accelerate launch
    t = spec.train
    optim = t.optim
    if spec.method == "qlora" and "optim" not in t.model_fields_set:
        optim = "paged_adamw_32bit"  # QLoRA's paged optimizer: spills optimizer state to CPU on memory spikes
    kw = dict(
        output_dir=str(out / "checkpoints"),
        run_name=spec.name,
        do_train=True,
        do_eval=evaluate,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_steps,
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        eval_strategy="steps" if evaluate else "no",
        eval_steps=t.eval_steps,
        eval_on_start=evaluate and t.eval_on_start,
        prediction_loss_only=True,  # the loss is all we report; keeping logits would cost vocab x tokens of memory
        save_strategy="steps",
        save_steps=t.save_steps,
        # Rotation happens in callbacks.CompleteCheckpoints, after the new checkpoint's manifest is
        # written; the Trainer's own would delete old checkpoints before that (t.save_total_limit).
        save_total_limit=None,
        save_on_each_node=num_nodes > 1,  # without a shared disk every node resumes from its own copy
        seed=t.seed,
        data_seed=t.seed if t.data_seed is None else t.data_seed,
        optim=optim,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        logging_first_step=t.logging_first_step,
        dataloader_num_workers=t.dataloader_num_workers,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        # the guide's gradient checkpointing, under its current name
        activation_checkpointing=t.gradient_checkpointing and not t.fsdp,
        activation_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        report_to=[] if t.report_to == "none" else [t.report_to],
        ddp_find_unused_parameters=t.ddp_find_unused_parameters,
        # The one place where the device decides the collective backend: the launch line is the
        # same for GPU and CPU processes (launch.py). A single process must have none (accelerate
        # then asks torch.distributed for a world that does not exist).
        ddp_backend=("nccl" if cuda else "gloo") if world_size > 1 else None,
        remove_unused_columns=False,  # position_ids are the packing boundaries: keep them
        # With a KV cache transformers ignores the position_ids restarts and packed examples would
        # attend to each other; training never needs the cache.
        use_cache=False,
        use_cpu=not cuda,  # lets bf16 run on a CPU that has it
    )
    if t.fsdp:
        kw["fsdp"] = True
        kw["fsdp_config"] = {"auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "state_dict_type": "FULL_STATE_DICT",
                             "activation_checkpointing": t.gradient_checkpointing}
    return kw


def build_training_args(spec, out: Path, **kw):
    from transformers import TrainingArguments

    return TrainingArguments(**training_kwargs(spec, out, **kw))


# -- model ---------------------------------------------------------------------------------------

def qlora_config(compute_dtype):
    """QLoRA's 4-bit NF4 base; trainers/export.py loads it the same way to dequantize before a merge."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def load_model(spec, model_path: str, precision: str, attn: str):
    import torch
    from transformers import AutoModelForCausalLM

    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    kw: dict = {"attn_implementation": attn}
    if spec.method == "qlora":
        kw["quantization_config"] = qlora_config(half or torch.bfloat16)
        kw["dtype"] = half or torch.bfloat16
        kw["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    elif spec.method == "lora" and half is not None:
        kw["dtype"] = half  # the frozen base can live in half precision; peft keeps the adapter in fp32
    else:
        kw["dtype"] = torch.float32  # full fine-tune: fp32 master weights, autocast does the rest
    model = AutoModelForCausalLM.from_pretrained(model_path, **kw)
    model.config.use_cache = False  # the cache only helps generation, and conflicts with checkpointing

    if spec.method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if spec.method == "qlora":
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=spec.train.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False})
        lc = spec.lora
        model = get_peft_model(model, LoraConfig(
            r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=lc.target_modules,
            bias="none", task_type="CAUSAL_LM"))
    return model


# -- W&B ------------------------------------------------------------------------------------------

def setup_wandb(spec, out: Path, resume_from: Path | None) -> str | None:
    """Point the Trainer's W&B callback at one run per job, continued across restarts.

    The run id lives in OUT/wandb_run_id and in every checkpoint, so a run resumed on another
    machine from a synced checkpoint continues the same W&B run. Without WANDB_API_KEY the run is
    written offline under OUT/wandb (upload it later with `wandb sync`).
    """
    if spec.train.report_to != "wandb":
        return None
    id_file = out / "wandb_run_id"
    run_id = None
    for f in (id_file, resume_from / "wandb_run_id" if resume_from else None):
        if f is not None and f.is_file() and f.read_text().strip():
            run_id = f.read_text().strip()
            break
    if run_id is None:
        run_id = uuid.uuid4().hex[:12]  # any short [a-z0-9] string is a valid W&B run id
    id_file.write_text(run_id)
    os.environ["WANDB_RUN_ID"] = run_id
    os.environ["WANDB_RESUME"] = "allow"
    os.environ.setdefault("WANDB_PROJECT", spec.train.wandb_project or spec.name)
    os.environ.setdefault("WANDB_DIR", str(out))
    if not os.environ.get("WANDB_API_KEY") and os.environ.get("WANDB_MODE") in (None, "", "online"):
        os.environ["WANDB_MODE"] = "offline"
        print("W&B: no WANDB_API_KEY, writing the run offline under OUT/wandb (upload later with `wandb sync`)", flush=True)
    elif os.environ.get("WANDB_MODE") in (None, "", "online") and not _wandb_reachable():
        # A training run must not depend on a metrics service being up.
        os.environ["WANDB_MODE"] = "offline"
        print(f"warning: W&B ({_wandb_url()}) is unreachable; writing the run offline under {out / 'wandb'} "
              "(upload it later with `wandb sync`); training goes on", file=sys.stderr, flush=True)
    return run_id


def _wandb_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"


def _wandb_reachable(timeout: float = 10.0) -> bool:
    """Whether W&B's server answers at all (a TCP connection). wandb.init would otherwise fail the
    run after its own long timeout with `CommError ... context deadline exceeded`."""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(_wandb_url())
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((u.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def bucket_uploader(spec, what: str):
    """upload(local_dir, name) into BUCKET/JOB/<what>/name, or None without a bucket."""
    if not spec.outputs.bucket:
        return None

    def upload(folder: Path, name: str = "") -> None:
        from launcher import storage

        url = storage.join(spec.outputs.bucket, spec.name, what, name)
        storage.upload_tree(folder, url)
        print(f"uploaded {folder.name} to {url}", flush=True)

    return upload


# -- the run --------------------------------------------------------------------------------------

def agree_on_checkpoint(ckpt_dir: Path, args) -> Path | None:
    """The newest complete checkpoint, the same one on every rank (the oldest of their choices)."""
    import torch

    from launcher.manifest import checkpoints, verify

    found = None
    for candidate in reversed(checkpoints(ckpt_dir)):
        problems = verify(candidate)
        if not problems:
            found = candidate
            break
        if args.should_save:  # say which checkpoint is passed over and why, newest first
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            print(f"not resuming from {candidate.name}: {problems[0]}{more}", flush=True)
    step = int(found.name.split("-")[-1]) if found else -1
    if args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor([step], device=args.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        step = int(t.item())
    return ckpt_dir / f"checkpoint-{step}" if step >= 0 else None


def check_resume_method(checkpoint: Path, spec) -> None:
    """Refuse a checkpoint of the other kind: the Trainer would look for weights that are not
    there (`Can't find a checkpoint index`) or load an adapter into a model that has none."""
    saved = "lora" if (checkpoint / "adapter_config.json").is_file() else "full"
    if saved != ("full" if spec.method == "full" else "lora"):
        raise InputError(f"{checkpoint.name} was saved by a {saved} run; this job is {spec.method}: "
                         f"submit --fresh to start over (or keep method: {saved})")


def train(spec, data_dir: Path, out: Path, stop) -> int:
    import torch
    from transformers import AutoTokenizer, Trainer, set_seed

    from launcher.manifest import is_complete
    from launcher.errors import LauncherError
    from launcher.models import resolve_model
    from trainers.gpu.callbacks import CompleteCheckpoints, PrintProgress
    from trainers.gpu.data import DataError, PackedCollator, load_split
    from launcher.spec import changed_since
    from trainers.gpu.final import write_final

    cuda = torch.cuda.is_available()
    check_method(spec, cuda)
    if is_complete(out / "final"):
        changed = changed_since(out / "final", spec)
        if changed:
            # Training on would mix two jobs in one folder; calling it done would hand back the old model.
            raise InputError(f"{out / 'final'} was trained with other settings than this job ({', '.join(changed)}); "
                             "`launcher submit --fresh` to train it anew (the old run folder is set aside)")
        print(f"{out / 'final'} is complete already; nothing to do (`launcher submit --fresh` to train again)",
              flush=True)
        return run_export(spec, out)  # a job stopped while exporting finishes that here
    precision = resolve_precision(spec.train.precision, cuda, cuda and torch.cuda.is_bf16_supported())
    attn = resolve_attention(spec.train.attn_implementation, cuda)
    try:
        train_ds = load_split(data_dir, "train", with_length=spec.train.group_by_length)
        val_ds = load_split(data_dir, "val", required=False) if spec.train.do_eval else None
    except DataError as e:
        raise InputError(str(e)) from None
    try:
        model_path = resolve_model(spec.model)
        if spec.outputs.export is not None:
            from trainers.export import check_family

            check_family(model_path)  # refused now, not after hours of training
    except LauncherError as e:
        raise InputError(str(e)) from None

    out.mkdir(parents=True, exist_ok=True)
    (out / "stopped.json").unlink(missing_ok=True)
    num_nodes = int(os.environ.get("SKYPILOT_NUM_NODES", "1") or 1)
    args = build_training_args(spec, out, precision=precision, evaluate=val_ds is not None, num_nodes=num_nodes)
    ckpt_dir = Path(args.output_dir)
    with args.main_process_first(local=True):  # a fresh machine resumes from the bucket; one download a node
        if args.local_process_index == 0:
            from launcher.storage import resume_from_bucket

            resume_from_bucket(spec.outputs.bucket, spec.name, ckpt_dir)
    resume = agree_on_checkpoint(ckpt_dir, args)
    if resume is not None:
        check_resume_method(resume, spec)
    # W&B reports from the first process only; other nodes' checkpoints need no run id.
    run_id = setup_wandb(spec, out, resume) if args.process_index == 0 else None
    set_seed(args.seed)  # LoRA's initial weights come from this

    tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer or model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    try:
        model = load_model(spec, model_path, precision, attn)
    except (OSError, ValueError) as e:
        raise InputError(f"model {spec.model}: cannot load it ({str(e).splitlines()[0]})") from None
    if args.should_save:
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in model.parameters())
        print(f"{spec.method}: training {n_train:,} of {n_all:,} parameters; {precision}, {attn} attention, "
              f"{len(train_ds)} train rows, {len(val_ds) if val_ds is not None else 0} val rows", flush=True)

    checkpoint_cb = CompleteCheckpoints(
        keep=spec.train.save_total_limit, extra_files={"wandb_run_id": run_id} if run_id else {},
        upload=_warn_on_failure(bucket_uploader(spec, "checkpoints")))
    trainer = Trainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
        data_collator=PackedCollator(pad_id, flatten=attn == "flash_attention_2"),
        processing_class=tokenizer, callbacks=[stop, checkpoint_cb, PrintProgress()])
    if resume is not None and args.should_save:
        print(f"resuming from {resume} (step {resume.name.split('-')[-1]})", flush=True)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    if stop.stopped_at is not None:
        if args.should_save:
            saved = ckpt_dir / f"checkpoint-{stop.stopped_at}"
            (out / "stopped.json").write_text(json.dumps({"step": stop.stopped_at, "checkpoint": str(saved)}))
            print(f"stopped at step {stop.stopped_at}; checkpoint saved in {saved}; run the same command again to resume",
                  flush=True)
        return EXIT_STOPPED
    step = trainer.state.global_step
    if val_ds is not None and not any("eval_loss" in h and h.get("step") == step for h in trainer.state.log_history):
        trainer.evaluate()  # the final eval loss goes into the history and the loss curve
    write_final(trainer, spec, tokenizer, out, model_path, precision, val_ds if val_ds is not None else train_ds,
                upload=bucket_uploader(spec, "final"))
    return run_export(spec, out) if trainer.is_world_process_zero() else EXIT_OK


def run_export(spec, out: Path) -> int:
    """outputs.export: merge and convert on this machine, so that what comes home is ready to use.

    OUT/export gets its own manifest, so sync brings it home (and the bucket holds it) like a checkpoint.
    """
    want = spec.outputs.export
    if want is None:
        return EXIT_OK
    from trainers.export import ExportError, export_run, exported

    have = exported(out)
    if have is not None and (want.gguf is None or f"{spec.name}-{want.gguf}.gguf" in have["gguf"]):
        print(f"{out / 'export'} is complete already", flush=True)
        return EXIT_OK
    try:
        export_run(out, gguf=want.gguf, log=lambda m: print(m, flush=True))
    except ExportError as e:
        print(f"error: outputs.export: {e} (the final model is complete in {out / 'final'})", file=sys.stderr)
        return EXIT_BAD_INPUT
    upload = bucket_uploader(spec, "export")
    if upload is not None:
        upload(out / "export")
    return EXIT_OK


def _warn_on_failure(upload):
    """A failed checkpoint upload must not kill hours of training: the checkpoint is still on disk."""
    if upload is None:
        return None

    def safe(folder, name):
        try:
            upload(folder, name)
        except Exception as e:
            print(f"warning: upload of {folder.name} failed ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                  "training goes on, the checkpoint is kept locally", file=sys.stderr, flush=True)

    return safe


def main(argv=None) -> int:
    ns = parse_args(argv)
    from launcher.spec import SpecError, load_spec, parse_set
    from trainers.gpu.callbacks import StopOnSignal

    stop = StopOnSignal()
    stop.install()  # before the slow imports and loads: a SIGTERM then still ends in a checkpoint
    try:
        spec = load_spec(ns.job, parse_set(ns.set))
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out = Path(ns.out)
    try:
        return train(spec, Path(ns.data), out, stop)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        import torch

        if isinstance(e, torch.OutOfMemoryError):
            t = spec.train
            print(f"error: out of GPU memory: lower train.per_device_train_batch_size (now {t.per_device_train_batch_size}) "
                  "and raise train.gradient_accumulation_steps, set train.gradient_checkpointing: true, "
                  "or use method: qlora", file=sys.stderr)
            return EXIT_FAILED
        if _disk_full(e, out):
            return _report_disk_full(out)
        log = out / "logs" / "train-error.log"
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(traceback.format_exc())
            where = f" (traceback in {log})"
        except OSError:
            where = ""
        first = str(e).splitlines()[0] if str(e) else ""
        print(f"error: training failed: {type(e).__name__}: {first}{where}", file=sys.stderr)
        return EXIT_FAILED


def _disk_full(e: BaseException, out: Path) -> bool:
    """Whether an exception is the disk filling up. torch.save reports ENOSPC only as
    `RuntimeError: basic_ios::clear: iostream error` (or 'file write failed'), so a failed write
    with (almost) no space left under OUT counts too."""
    import errno
    import shutil

    seen = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return shutil.disk_usage(out).free < (64 << 20) and isinstance(e, (OSError, RuntimeError))
    except OSError:
        return False


def _report_disk_full(out: Path) -> int:
    """One line for a full disk. The half-written checkpoint goes first: it would never verify,
    and removing it leaves room for the log line and for the next run to resume."""
    import shutil

    from launcher.manifest import checkpoints, latest_complete

    ckpts = out / "checkpoints"
    for c in checkpoints(ckpts):
        if not (c / "manifest.json").exists():
            shutil.rmtree(c, ignore_errors=True)
    try:
        free = f"{shutil.disk_usage(out).free / 2**20:.0f} MB free"
    except OSError:
        free = "free space unknown"
    last = latest_complete(ckpts)
    keep = f"; the last complete checkpoint, {last.name}, is intact" if last else ""
    try:
        # On a line of its own: the save fails in the middle of a progress bar's line.
        print(f"\nerror: no space left on device in {out} ({free}){keep}; free some space and run again to resume",
              file=sys.stderr, flush=True)
    except OSError:
        pass
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
