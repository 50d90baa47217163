"""The TPU trainer's command: a full fine-tune with EasyLM, from a HF checkpoint to a HF checkpoint.

    python -m trainers.tpu.train JOB.yaml --data DATA_DIR --out OUT [--tpu-type v3-8]

1. resolves the job's model (a hub id is downloaded here, on the TPU VM, with HF_TOKEN for gated
   models, into OUT/tpu/hub/; `package:` and .gguf models are converted to HF first) and converts it
   once to EasyLM streaming params in its own 16-bit dtype (OUT/tpu/params/);
2. checks and adapts DATA_DIR/train.jsonl and val.jsonl to EasyLM's json dataset (OUT/tpu/data/) and
   counts their tokens, which with num_train_epochs sets the number of steps;
3. renders EasyLM's flags from the job (`trainers.tpu.flags`) and runs EasyLM through
   `trainers.tpu.easylm_main`, which resumes from the newest complete train state by itself;
4. converts the final train state back to a HF checkpoint in OUT/final/ (config, tokenizer, bos/eos
   and dtype of the base model), writes manifest.json last and uploads it when outputs.bucket is set.

EasyLM runs with $EASYLM_PYTHON (default: this Python) and $EASYLM_DIR on PYTHONPATH. The same
command runs on every host of a TPU pod (SkyPilot does that); only host 0 (SKYPILOT_NODE_RANK)
writes the final model, and uploads it to BUCKET/JOB/final/ like the GPU trainer. EasyLM's checkpoints
go to BUCKET/JOB/easylm/ when the bucket is gs://, so a pod, or a replacement VM after preemption,
reads them back; otherwise to OUT/tpu/run/.
Exit codes: 0 done, 1 failed, 2 bad input, 75 stopped by SIGTERM after saving (run again to resume).
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_STOPPED
from trainers.tpu import data as tpu_data
from trainers.tpu.flags import (FlagError, ModelConfigError, command, easylm_output_dir, memory_plan, plan, render,
                                tpu_shape)

REPO = Path(__file__).resolve().parents[2]


def _say(msg: str) -> None:
    print(f"[tpu] {msg}", flush=True)


def _model_key(hf_dir: Path) -> str:
    """Identifies a model folder's weights without hashing gigabytes: names, sizes, mtimes, config."""
    h = hashlib.sha256((hf_dir / "config.json").read_bytes())
    for p in sorted(hf_dir.glob("*.safetensors")):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:12]


def convert_base(hf_dir: Path, work: Path) -> Path:
    """EasyLM params of the base model, converted once per model (a rerun reuses them).

    In the checkpoint's own 16-bit dtype when it has one (lossless, half of fp32's disk): EasyLM
    casts what it loads to its fp32 train state.
    """
    from trainers.tpu.convert import hf_to_easylm, read_config

    torch_dtype = read_config(hf_dir).get("torch_dtype") or "float32"
    dtype = torch_dtype if torch_dtype in ("float16", "bfloat16") else "float32"
    params = work / "params" / f"base-{_model_key(hf_dir)}-{dtype}.streaming"
    if not params.is_file():
        params.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        n = hf_to_easylm(hf_dir, params, dtype=dtype)
        _say(f"converted {hf_dir} to EasyLM params ({n} tensors, {dtype}, {time.time() - t0:.0f}s): {params}")
    return params


HUB_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt"]


def download_hub_model(repo_id: str, root: Path) -> Path:
    """A hub model's config, tokenizer and safetensors weights in root/ORG--NAME, downloaded once.

    HF_TOKEN (a job secret) opens gated models such as meta-llama's. Raises ModelError in one line.
    """
    from launcher.models import ModelError

    dest = root / repo_id.replace("/", "--")
    done = dest / ".complete"
    if done.is_file():
        return dest
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError
    except ImportError:
        raise ModelError(f"model {repo_id}: a hub id needs huggingface_hub on this machine (pip install huggingface-hub)") from None
    token = os.environ.get("HF_TOKEN") or None
    _say(f"downloading {repo_id} from the hub to {dest} (HF_TOKEN {'set' if token else 'not set'})")
    t0 = time.time()
    try:
        snapshot_download(repo_id, local_dir=dest, allow_patterns=HUB_FILES, token=token)
    except GatedRepoError:
        raise ModelError(f"model {repo_id}: a gated model; accept its license on the hub and pass HF_TOKEN "
                         "(it is in the job's secrets: export it before `launcher submit`)") from None
    except RepositoryNotFoundError:
        raise ModelError(f"model {repo_id}: no such model on the hub (or it is private: pass HF_TOKEN)") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(f"model {repo_id}: cannot download it from the hub: {first}") from None
    if not any(dest.glob("*.safetensors")):
        raise ModelError(f"model {repo_id}: no .safetensors weights on the hub (the TPU converter reads safetensors only)")
    done.write_text(json.dumps({"repo": repo_id, "seconds": round(time.time() - t0)}))
    _say(f"downloaded {repo_id} in {time.time() - t0:.0f}s")
    return dest


def model_dir(ref: str, work: Path) -> Path:
    """A local HF folder for the job's model: as given, converted from GGUF, or downloaded."""
    from launcher.models import resolve_model

    resolved = Path(resolve_model(ref))
    if resolved.is_dir():
        return resolved
    return download_hub_model(ref, work / "hub")


def prepare_data(spec, data_dir: Path, work: Path, tokenizer_dir: Path) -> dict:
    """Adapt the data and count tokens; cached by the source files' size and mtime."""
    out = work / "data"
    stamp = [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in sorted(data_dir.glob("*.jsonl"))
             if p.name in ("train.jsonl", "val.jsonl")]
    stamp = {"sources": stamp, "format": spec.data.format, "tokenizer": str(tokenizer_dir)}
    counts_file = out / "counts.json"
    if counts_file.is_file():
        cached = json.loads(counts_file.read_text())
        if cached.get("stamp") == json.loads(json.dumps(stamp)):
            return cached
    source_keys = {k: getattr(spec.data, f"{k}_key", k) for k in ("text", "input", "output")}
    rows = tpu_data.adapt(data_dir, out, spec.data.format, source_keys)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if tok.eos_token_id is None:
        raise tpu_data.DataError(f"{tokenizer_dir}: the tokenizer has no eos token; EasyLM ends every example with one")
    prefix = tpu_data.special_prefix(tok)
    counts = {"stamp": stamp, "rows": rows, "prefix_ids": prefix,
              "train_tokens": tpu_data.count_tokens(tok, out / "train.jsonl", spec.data.format, prefix),
              "val_tokens": tpu_data.count_tokens(tok, out / "val.jsonl", spec.data.format, prefix)}
    counts_file.write_text(json.dumps(counts, indent=1))
    return counts


def parse_metrics(text: str) -> dict | None:
    """One of EasyLM's printed metric dicts as plain numbers, or None if it is not one."""
    plain = re.sub(r"(?:np\.\w+|array)\(([^(),]+)(?:, dtype=\w+)?\)", r"\1", text)
    try:
        d = ast.literal_eval(plain)
    except (ValueError, SyntaxError):
        return None
    return d if isinstance(d, dict) and "step" in d else None


def run_easylm(cmd: list[str], env: dict, log_history: list) -> int:
    """Run EasyLM, pass SIGTERM/SIGINT on, echo its output and collect the metric dicts it prints."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    terminated: list[int] = []

    def forward(signum, _frame):
        proc.send_signal(signum)
        if signum == signal.SIGTERM:
            terminated.append(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    block: list[str] | None = None
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            # EasyLM pprints one dict per logged step: "{'accuracy': array(0.1, dtype=float32), ...}".
            s = line.strip()
            if block is None and s.startswith("{'"):
                block = []
            if block is not None:
                block.append(s)
                if s.endswith("}"):
                    metrics = parse_metrics(" ".join(block))
                    if metrics:
                        log_history.append(metrics)
                    block = None
        code = proc.wait()
        # Killed by our SIGTERM before EasyLM could catch it (still importing): nothing was lost.
        return EXIT_STOPPED if terminated and code == -signal.SIGTERM else code
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)

    def stopped(signum, _frame):
        # Before and after EasyLM runs nothing is lost by stopping: conversions write atomically.
        raise SystemExit(EXIT_STOPPED)

    signal.signal(signal.SIGTERM, stopped)
    from launcher.models import ModelError
    from launcher.spec import SpecError
    from launcher.tpu_plan import PlanError

    try:
        run = _prepare(args)
    except (SpecError, ModelError, ModelConfigError, FlagError, PlanError, tpu_data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if run is None:
        return 0
    code = _run(run)
    if code != 0 or int(os.environ.get("SKYPILOT_NODE_RANK", "0")) != 0:
        return code
    return finish(run.spec, run.hf_dir, run.out, f"{run.easylm_out.rstrip('/')}/{run.spec.name}", run.plan, run.work)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m trainers.tpu.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("job", type=Path)
    ap.add_argument("--data", type=Path, required=True, help="the prepared data folder (train.jsonl, val.jsonl)")
    ap.add_argument("--out", type=Path, required=True, help="the run folder")
    ap.add_argument("--tpu-type", default=os.environ.get("LAUNCHER_TPU_TYPE"),
                    help="v3-8, v4-8, v3-32 ... (default: from resources.accelerators); cpu-N runs on N CPU devices")
    return ap.parse_args(argv)


@dataclass
class _Prepared:
    """Everything EasyLM needs, made before it starts: the model in HF form, tokens, params, flags."""
    spec: object
    tpu_type: str
    out: Path
    work: Path
    hf_dir: Path
    easylm_out: str
    plan: dict
    counts: dict
    cmd: list[str]


def _prepare(args) -> _Prepared | None:
    """Check the job, get the model, tokenize the data, convert the weights; None when the run's
    final model is complete already. Raises the input errors `main` turns into exit 2."""
    from launcher.manifest import is_complete
    from launcher.models import ModelError, resolve_model
    from launcher.spec import SpecError, changed_since, load_spec
    from trainers.tpu.convert import read_config

    spec = load_spec(args.job)
    if spec.method != "full":
        raise SpecError(f"{args.job}: method: {spec.method} is not available on TPU (EasyLM trains full models only)")
    tpu_type = args.tpu_type or (spec.resources.accelerators or "").lower().removeprefix("tpu-").split(":")[0]
    out = args.out.resolve()
    work = out / "tpu"
    hf_dir = model_dir(spec.model, work)
    if not (hf_dir / "config.json").is_file():
        raise ModelError(f"model {spec.model}: no config.json in {hf_dir} (the TPU trainer needs a HF folder, "
                         "a hub id, a .gguf file or a package: model)")
    model_config = read_config(hf_dir)
    # BUCKET/JOB is the job's folder, as for the GPU trainer: `launcher sync` reads final/ there.
    easylm_out = easylm_output_dir(spec, str(work))
    # Refuse a job that cannot run before spending minutes on tokens and weights.
    render(spec, tpu_type, "-", easylm_out, model_config=model_config, tokenizer_dir="-", params_path="-",
           train_tokens=1)
    memory = memory_plan(spec, tpu_type, model_config)
    for line in memory.lines():
        _say(line)
    if tpu_shape(tpu_type)[1] == 1 and is_complete(out / "final"):
        # (On a pod every host must join EasyLM, and only host 0 has final/: no shortcut there.)
        changed = changed_since(out / "final", spec)
        if changed:
            raise SpecError(f"{out / 'final'} was trained with other settings than this job ({', '.join(changed)}); "
                            "`launcher submit --fresh` to train it anew (the old run folder is set aside)")
        _say(f"{out / 'final'} is complete already; nothing to do (`launcher submit --fresh` to train again)")
        return None
    tok_src = Path(resolve_model(spec.tokenizer)) if spec.tokenizer else hf_dir
    if not tok_src.is_dir():
        raise ModelError(f"tokenizer {spec.tokenizer}: not a local folder (the TPU trainer needs the files on disk)")
    tokenizer_dir = tpu_data.easylm_tokenizer(tok_src, work / "tokenizer")
    counts = prepare_data(spec, args.data.resolve(), work, tokenizer_dir)
    run_plan = plan(spec, tpu_type, counts["train_tokens"], memory.setup)
    params = convert_base(hf_dir, work)
    cmd = command(spec, tpu_type, str(work), python=os.environ.get("EASYLM_PYTHON") or sys.executable,
                  model_config=model_config, params_path=str(params), train_tokens=counts["train_tokens"],
                  val_tokens=counts["val_tokens"], prefix_ids=counts["prefix_ids"])
    return _Prepared(spec, tpu_type, out, work, hf_dir, easylm_out, run_plan, counts, cmd)


def _run(run: _Prepared) -> int:
    """EasyLM itself, with our run-time fixes (easylm_main), on the prepared flags."""
    p, counts = run.plan, run.counts
    _say(f"{run.tpu_type}: {p['devices']} devices on {p['hosts']} host(s), global batch "
         f"{p['batch_size']} x {p['seq_length']} tokens x {p['accumulate']} accumulation, "
         f"{counts['train_tokens']} training tokens -> {p['updates']} updates ({p['total_steps']} EasyLM steps)")
    flags = run.cmd[4:]
    (run.work / "flags.txt").write_text("\n".join(flags) + "\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(REPO), env.get("EASYLM_DIR"), env.get("PYTHONPATH")) if x)
    env["PYTHONUNBUFFERED"] = "1"  # EasyLM prints its metrics as they come, so we (and tests) see them live
    env.setdefault("WANDB_RESUME", "allow")  # the W&B run id is the job name: a resumed run continues it
    if run.tpu_type.startswith("cpu"):
        env["JAX_PLATFORMS"] = "cpu"
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={p['devices']}".strip()
    _say("running EasyLM: " + " ".join(run.cmd[:3]) + f" ... ({len(flags)} flags in {run.work / 'flags.txt'})")
    log_history: list[dict] = []
    code = run_easylm(run.cmd, env, log_history)
    _append_history(run.work / "log_history.jsonl", log_history)
    if code == EXIT_STOPPED:
        _say("stopped after saving the train state; run the same command again to resume")
        return EXIT_STOPPED
    if code != 0:
        print(f"error: EasyLM exited with code {code} (its output is above)", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _append_history(path: Path, entries: list[dict]) -> None:
    with open(path, "a") as f:
        for e in entries:
            f.write(json.dumps({k: (v.item() if hasattr(v, "item") else v) for k, v in e.items()}) + "\n")


def finish(spec, hf_dir: Path, out: Path, run_dir: str, run_plan: dict, work: Path) -> int:
    """Final train state -> OUT/final (HF), manifest last, then the upload."""
    from launcher.manifest import write_manifest
    from launcher.spec import write_resolved
    from trainers.tpu.convert import easylm_to_hf
    from trainers.tpu.easylm_main import newest_checkpoint

    ckpt = newest_checkpoint(run_dir)
    if ckpt is None or ckpt["step"] < run_plan["total_steps"]:
        got = "none" if ckpt is None else f"step {ckpt['step']}"
        print(f"error: {run_dir}: no complete train state at step {run_plan['total_steps']} (found {got})", file=sys.stderr)
        return EXIT_FAILED
    final = out / "final"
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        state = ckpt["train_state"]
        if "://" in state:  # a gs:// train state: the converter reads local files
            from fsspec.core import url_to_fs

            fs, path = url_to_fs(state)
            local = Path(tmp) / "train_state"
            fs.get(path, str(local))
            state = str(local)
        t0 = time.time()
        easylm_to_hf(state, hf_dir, final)
    # A step logged twice (a crash after it, a resume before it) keeps its latest value.
    by_step = {}
    for line in (work / "log_history.jsonl").read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            by_step[entry["step"]] = entry
    history = [by_step[k] for k in sorted(by_step)]
    (final / "trainer_state.json").write_text(json.dumps(
        {"global_step": run_plan["updates"], "easylm_steps": ckpt["step"], "plan": run_plan, "log_history": history}, indent=1))
    write_resolved(spec, final)  # what a later submit of this folder is compared with
    write_manifest(final, extra={"step": run_plan["updates"], "trainer": "tpu"})
    _say(f"final model in {final} ({time.time() - t0:.0f}s to convert)")
    if spec.outputs.bucket:
        from launcher.storage import join, upload_tree

        url = join(spec.outputs.bucket, spec.name, "final")
        try:
            upload_tree(final, url)
        except Exception as e:  # the model is safe in OUT/final; say why the copy failed, in one line
            print(f"error: outputs.bucket: uploading {final} to {url} failed: {e}", file=sys.stderr)
            return EXIT_FAILED
        _say(f"uploaded to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
