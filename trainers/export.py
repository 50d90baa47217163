"""From a finished run to the programs people run: merge, convert to GGUF, quantize, try it.

- `merge`: a LoRA adapter and its base become one ordinary HF checkpoint, with the tokenizer and
  the chat template the run trained with. A QLoRA base is loaded as it was trained (NF4) and
  dequantized before the merge where bitsandbytes can (a CUDA GPU), so the adapter lands on the
  weights it learned against; elsewhere the base's original weights are used.
- `to_gguf`: that checkpoint becomes GGUF with llama.cpp's own converter (convert_hf_to_gguf.py)
  and its quantizer (llama-cpp-python's `llama_model_quantize`); the converter carries the
  tokenizer and the chat template into the GGUF metadata. No wheel on PyPI ships the converter, so
  it is taken from the llama-cpp-python sdist (fetched once with pip, cached).
- `export_run`: both for a run folder, into OUT/export with a manifest, so that a sync brings it
  home like a checkpoint: what `launcher export` and a job's `outputs.export` run.
- `Generator`: replies from the HF checkpoint or the GGUF, through the same chat template.

Runs on the user's machine and at the end of a job on the training machine, so it imports no
launcher module but the spec, the manifest and the model resolution (and their error base).
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from launcher.errors import LauncherError
from launcher.manifest import MANIFEST, read_manifest, verify, write_manifest
from launcher.spec import check_gguf_type

# What convert_hf_to_gguf.py writes itself; every other type is quantized from its f16 output.
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
# The LLaMA family: what the trainers support and what llama.cpp's LLaMA graph runs as converted.
FAMILY = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral"}
# The sdist the converter comes from when llama-cpp-python is not installed (a training machine
# that only needs f16/bf16/q8_0).
LLAMA_CPP_PYTHON = "0.3.36"


class ExportError(LauncherError):
    pass


# -- the run --------------------------------------------------------------------------------------

class Run:
    """A run folder (or one of its complete model folders) and what export needs from it."""

    def __init__(self, path: str | Path):
        path = Path(path).expanduser()
        if not path.is_dir():
            raise ExportError(f"{path}: no such run folder")
        self.model_dir = path / "final" if (path / "final").is_dir() or not (path / MANIFEST).exists() else path
        self.dir = self.model_dir.parent if self.model_dir.name == "final" else path
        problems = verify(self.model_dir) if (self.model_dir / MANIFEST).exists() else None
        if problems is None or problems:
            ckpts = sorted((self.dir / "checkpoints").glob("checkpoint-*"))
            raise ExportError(f"{self.dir}: the run has not finished (no complete final/ model"
                              + (f"; {problems[0]}" if problems else "")
                              + (f"; newest checkpoint {ckpts[-1].name}" if ckpts else "")
                              + "); wait for the job to end, or `launcher sync JOB` to bring its final model home")
        self.spec = None
        for f in (self.model_dir / "job.yaml", self.dir / "job.yaml"):
            if f.is_file():
                from launcher.spec import load_spec

                self.spec = load_spec(f)
                break
        self.is_adapter = (self.model_dir / "adapter_config.json").is_file()
        self.name = self.spec.name if self.spec else self.dir.name

    def base_model(self) -> str:
        """The base model as a local folder or hub id (an adapter's base, or the model itself)."""
        from launcher.models import resolve_model

        if not self.is_adapter:
            return str(self.model_dir)
        ref = self.spec.model if self.spec else json.loads((self.model_dir / "adapter_config.json").read_text())[
            "base_model_name_or_path"]
        return resolve_model(ref)

    def base_ref(self) -> str:
        if self.spec:
            return self.spec.model
        return json.loads((self.model_dir / "adapter_config.json").read_text()).get("base_model_name_or_path", "?")


def check_family(model: str) -> str:
    """The model's architecture if export supports it; one line refusing it otherwise."""
    cfg_file = Path(model) / "config.json"
    if cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text())
    else:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(model).to_dict()
    arch = (cfg.get("architectures") or ["?"])[0]
    if arch not in FAMILY:
        raise ExportError(f"{model}: export supports the LLaMA family (Llama 2/3, Mistral, SmolLM2: "
                          f"{', '.join(FAMILY)}); this model is {arch} ({cfg.get('model_type', '?')})")
    return arch


# -- merge ------------------------------------------------------------------------------------------

def merge(adapter_dir: Path, base: str, dest: Path, method: str = "lora") -> Path:
    """Base + adapter as one ordinary model in `dest`, with the tokenizer and chat template of the run."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    saved_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(
        str(AutoConfig.from_pretrained(base).dtype).removeprefix("torch."), torch.float32)
    if method == "qlora" and torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes"):
        from trainers.gpu.train import qlora_config

        # The weights the adapter was trained against are the NF4-rounded ones: dequantize those.
        model = AutoModelForCausalLM.from_pretrained(base, quantization_config=qlora_config(torch.bfloat16),
                                                     dtype=torch.bfloat16, device_map={"": 0})
        model = model.dequantize().to(torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)  # merge in fp32, save in the base's dtype
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.to(saved_dtype).save_pretrained(tmp)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


# -- GGUF ---------------------------------------------------------------------------------------------

def converter() -> Path:
    """llama.cpp's convert_hf_to_gguf.py with its package and gguf-py, from the llama-cpp-python sdist.

    The version is the installed llama-cpp-python's, so that converter and quantizer agree.
    """
    from launcher.models import cached_build

    try:
        version = importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        version = LLAMA_CPP_PYTHON

    def fetch(tmp: Path) -> None:
        got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", "llama-cpp-python",
                              f"llama-cpp-python=={version}", "-d", str(tmp)], capture_output=True, text=True)
        sdists = list(tmp.glob("llama_cpp_python-*.tar.gz"))
        if got.returncode != 0 or not sdists:
            last = (got.stderr.strip().splitlines() or ["no sdist downloaded"])[-1]
            raise ExportError(f"cannot fetch llama.cpp's converter (pip download llama-cpp-python=={version}): {last}")
        wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
        with tarfile.open(sdists[0]) as tar:
            for m in tar.getmembers():
                rel = m.name.split("/vendor/llama.cpp/", 1)[-1] if "/vendor/llama.cpp/" in m.name else None
                if rel and rel.startswith(wanted) and (m.isfile() or m.isdir()):
                    m.name = rel
                    tar.extract(m, tmp, filter="data")
        sdists[0].unlink()

    return cached_build(f"llama.cpp-convert-{version}", "convert_hf_to_gguf.py", fetch)


def gguf_ftype(qtype: str) -> int:
    """llama.cpp's file type number for a quantization name, from llama-cpp-python itself."""
    try:
        import llama_cpp
    except ImportError:
        raise ExportError(f"GGUF type {qtype} needs llama.cpp's quantizer: pip install 'llm-launcher[export]' "
                          f"(compiles llama-cpp-python once); {', '.join(CONVERTER_TYPES)} need only the converter") from None
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype.upper()}", None)
    if ftype is None:
        raise ExportError(f"GGUF type {qtype}: this llama-cpp-python ({llama_cpp.__version__}) does not know it")
    return ftype


def to_gguf(hf_dir: Path, out: Path, qtype: str) -> Path:
    """Convert an HF checkpoint to GGUF `out` of type `qtype` (tokenizer and chat template included)."""
    qtype = _gguf_type(qtype)
    ftype = None if qtype in CONVERTER_TYPES else gguf_ftype(qtype)  # refuse before minutes of conversion
    conv = converter()
    first = out.with_name(out.name + ".tmp") if ftype is not None else out.with_name(out.name + ".part")
    env = {**os.environ, "PYTHONPATH": str(conv) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, str(conv / "convert_hf_to_gguf.py"), str(hf_dir), "--outfile", str(first),
                           "--outtype", qtype if ftype is None else "f16"], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        first.unlink(missing_ok=True)
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        raise ExportError(f"GGUF conversion of {hf_dir} failed: {lines[-1] if lines else f'exit {done.returncode}'}")
    if ftype is None:
        os.replace(first, out)
        return out
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(first).encode(), str(out).encode(), ctypes.byref(params))
    first.unlink(missing_ok=True)
    if rc != 0:
        out.unlink(missing_ok=True)
        raise ExportError(f"llama.cpp could not quantize {hf_dir} to {qtype} (llama_model_quantize returned {rc})")
    return out


def _gguf_type(qtype: str) -> str:
    try:
        return check_gguf_type(qtype)
    except ValueError as e:
        raise ExportError(f"--gguf {qtype}: {e}") from None


def gguf_metadata(path: Path) -> dict:
    """The GGUF's scalar metadata (tokenizer.chat_template, general.architecture ...), arrays left out."""
    from gguf import GGUFReader, GGUFValueType

    fields = GGUFReader(path).fields
    return {name: f.contents() for name, f in fields.items() if f.types and f.types[0] != GGUFValueType.ARRAY}


# -- a run's export ----------------------------------------------------------------------------------------

def export_run(src: str | Path, *, merge_model: bool = True, gguf: str | None = None, to: str | Path | None = None,
               log=print) -> Path:
    """RUN/export (or `to`): model/ (merged HF checkpoint), NAME-TYPE.gguf, and a manifest written last."""
    if gguf is not None:
        gguf = _gguf_type(gguf)
        if gguf not in CONVERTER_TYPES:
            gguf_ftype(gguf)
    if not (merge_model or gguf):
        raise ExportError("nothing to export: give --merge (an HF checkpoint) and/or --gguf TYPE")
    run = Run(src)
    base = run.base_model()
    check_family(base)
    dest = Path(to) if to else run.dir / "export"
    dest.mkdir(parents=True, exist_ok=True)
    earlier = _earlier_ggufs(dest)
    (dest / MANIFEST).unlink(missing_ok=True)  # incomplete from here until the new manifest
    model = dest / "model"
    merged = run.model_dir / "merged"  # lora.merge: true already wrote it
    if not run.is_adapter:
        _copy_model(run.model_dir, model)
    elif merged.is_dir() and (merged / "config.json").is_file():
        _copy_model(merged, model)
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(run.model_dir).save_pretrained(model)
    else:
        log(f"merging the adapter of {run.model_dir} into {run.base_ref()}")
        merge(run.model_dir, base, model, run.spec.method if run.spec else "lora")
    info = {"base_model": run.base_ref(), "method": run.spec.method if run.spec else None, "gguf": earlier}
    if gguf:
        out = dest / f"{run.name}-{gguf}.gguf"
        log(f"converting to GGUF {gguf} with llama.cpp")
        to_gguf(model, out, gguf)
        # the newest last: `generate --gguf` and `chat --gguf` take the last one
        info["gguf"] = [g for g in earlier if g != out.name] + [out.name]
    write_manifest(dest, {"export": info})
    log(f"exported to {dest}")
    return dest


def _earlier_ggufs(dest: Path) -> list[str]:
    """The GGUF files an earlier export listed that are still there as it wrote them: an export
    without --gguf keeps them, as the manifest lists every file in the folder anyway."""
    m = read_manifest(dest) or {}
    files = m.get("files", {})
    return [g for g in (m.get("export") or {}).get("gguf", [])
            if g in files and (dest / g).is_file() and (dest / g).stat().st_size == files[g]["size"]]


def _copy_model(src: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(MANIFEST, "merged", "checkpoint-*", "*.png", "*.jsonl",
                                                                "trainer_state.json", "job.yaml", "training_args.bin"))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def exported(run_dir: Path) -> dict | None:
    """What a complete RUN/export holds, or None."""
    m = read_manifest(run_dir / "export")
    return m.get("export") if m and not verify(run_dir / "export", m) else None


# -- trying it -------------------------------------------------------------------------------------

@contextlib.contextmanager
def _plain_cpu_layout():
    """Load GGUF weights without llama.cpp's CPU repacking ("extra buffer types"). With it,
    llama-cpp-python 0.3.36 crashed (SIGSEGV) decoding any batch of more than one token of a
    Q4_K_M SmolLM2 on our 2-core x86 test machine, while f16 and one token at a time ran; the plain
    layout computes the same numbers, a little slower. Llama() takes no such argument, so its
    default model parameters are swapped for the load."""
    import llama_cpp.llama as llama_module

    low = llama_module.llama_cpp
    default = low.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params
    try:
        yield
    finally:
        low.llama_model_default_params = default


class Generator:
    """Greedy replies from an HF model folder (adapter or full) or a GGUF file.

    With `chat`, a prompt is rendered with the model's chat template (the tokenizer's for HF, the
    GGUF's own metadata for llama.cpp: the same template, carried over by the converter).
    """

    def __init__(self, path: str | Path, *, base: str | None = None, chat: bool = True):
        self.path, self.chat = Path(path), chat
        if self.path.suffix == ".gguf":
            try:
                from llama_cpp import Llama
            except ImportError:
                raise ExportError("trying a GGUF needs llama-cpp-python: pip install 'llm-launcher[export]'") from None
            with _plain_cpu_layout():
                self.llm = Llama(model_path=str(self.path), n_ctx=2048, verbose=False, seed=0)
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging

        logging.disable_progress_bar()  # the replies are the output here
        self.tok = AutoTokenizer.from_pretrained(self.path)
        if (self.path / "adapter_config.json").is_file():
            from peft import PeftModel

            model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
            self.model = PeftModel.from_pretrained(model, str(self.path))
        else:
            self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32)
        self.model.eval()

    def __call__(self, messages: list[dict] | str, max_new_tokens: int = 64) -> str:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        self.last = self._reply(messages, max_new_tokens)
        return self.last

    def _reply(self, messages: list[dict], max_new_tokens: int) -> str:
        if self.path.suffix == ".gguf":
            if self.chat:  # llama-cpp-python renders the GGUF's tokenizer.chat_template
                r = self.llm.create_chat_completion(messages=messages, max_tokens=max_new_tokens, temperature=0.0)
                return r["choices"][0]["message"]["content"]
            r = self.llm.create_completion(messages[-1]["content"], max_tokens=max_new_tokens, temperature=0.0)
            return r["choices"][0]["text"]
        import torch

        text = (self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                if self.chat and self.tok.chat_template else messages[-1]["content"])
        ids = self.tok(text, return_tensors="pt", add_special_tokens=not self.chat)
        with torch.no_grad():
            out = self.model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=self.tok.pad_token_id or self.tok.eos_token_id)
        return self.tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def generators(src: str | Path, *, gguf: bool = False, compare_base: bool = False) -> dict[str, Generator]:
    """{"fine-tuned": ..., ["base": ...]} for a run folder or a .gguf file."""
    src = Path(src)
    if src.suffix == ".gguf":
        if compare_base:
            raise ExportError("--compare-base needs the run, not only its GGUF file")
        return {"fine-tuned": Generator(src)}
    run = Run(src)
    chat = bool(run.spec.data.chat_template) if run.spec else True
    if gguf:
        info = exported(run.dir)
        if not info or not info["gguf"]:
            raise ExportError(f"{run.dir}: no GGUF exported yet; `launcher export {run.dir} --gguf q4_k_m` first")
        gens = {"fine-tuned": Generator(run.dir / "export" / info["gguf"][-1], chat=chat)}
    else:
        gens = {"fine-tuned": Generator(run.model_dir, base=run.base_model() if run.is_adapter else None, chat=chat)}
    if compare_base:
        if not run.is_adapter and not run.spec:
            raise ExportError(f"{run.dir}: no job.yaml to tell the base model")
        from launcher.models import resolve_model

        gens["base"] = Generator(resolve_model(run.spec.model), chat=chat)
    return gens
