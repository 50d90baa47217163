"""Convert LLaMA-family weights between a Hugging Face checkpoint and EasyLM's streaming format.

EasyLM loads and saves "streaming" checkpoints: a file that is a plain concatenation of msgpack
records `[key_path, value]`, one per tensor, where `value` is msgpack bytes holding Flax's serialized
ndarray (`ExtType(1, msgpack([shape, dtype_name, C-order bytes]))`, or Flax's chunked form for
arrays over 1 GiB). We read and write that format with msgpack and numpy alone, one tensor at a
time, so a 7B model never has to fit in memory twice and neither JAX nor torch is needed here.

The mapping (EasyLM kernels are `[in, out]`, the transpose of HF's `weight`; q and k rows go from
HF's rotate-half layout to EasyLM's interleaved rotary layout):
    model.embed_tokens.weight                 transformer/wte/embedding
    model.layers.N.self_attn.{q,k,v,o}_proj   transformer/h/N/attention/w{q,k,v,o}/kernel
    model.layers.N.mlp.{gate,down,up}_proj    transformer/h/N/feed_forward/w{1,2,3}/kernel
    model.layers.N.input_layernorm           transformer/h/N/attention_norm/kernel
    model.layers.N.post_attention_layernorm  transformer/h/N/ffn_norm/kernel
    model.norm.weight                         transformer/ln_f/kernel
    lm_head.weight                            lm_head/kernel (from the embedding when tied)
EasyLM always trains lm_head on its own, so a tied model comes back untied unless the two are
still equal (an untouched round trip stays tied and byte-identical).

    python -m trainers.tpu.convert to-easylm HF_DIR PARAMS_FILE
    python -m trainers.tpu.convert to-hf STREAMING_FILE HF_SOURCE_DIR OUT_DIR [--dtype bfloat16]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Iterable, Iterator

import msgpack
import numpy as np

from trainers.tpu.flags import ModelConfigError, llama_shape

# Flax's msgpack extension codes and chunking threshold (flax/serialization.py).
EXT_NDARRAY, EXT_NPSCALAR = 1, 3
MAX_CHUNK_SIZE = 2**30
# Files of a HF model folder that are not weights and travel unchanged to the exported model.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
                   "generation_config.json")


# -- the streaming format -----------------------------------------------------------------------

def _np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes  # numpy has no bfloat16; ml_dtypes (a JAX dependency) provides it

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _ext_pack(arr) -> msgpack.ExtType:
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"cannot serialize {type(arr).__name__}")
    arr = np.ascontiguousarray(arr)
    payload = msgpack.packb((list(arr.shape), arr.dtype.name, arr.tobytes("C")), use_bin_type=True)
    return msgpack.ExtType(EXT_NDARRAY, payload)


def _ext_unpack(code: int, data: bytes):
    if code not in (EXT_NDARRAY, EXT_NPSCALAR):
        return msgpack.ExtType(code, data)
    shape, dtype, buffer = msgpack.unpackb(data, raw=False)
    arr = np.frombuffer(buffer, dtype=_np_dtype(dtype)).reshape(shape)
    return arr[()] if code == EXT_NPSCALAR else arr


def pack_array(arr: np.ndarray) -> bytes:
    """Flax's `to_bytes` of one ndarray: chunked above 1 GiB, as msgpack caps one object at 2 GiB."""
    if arr.size * arr.dtype.itemsize <= MAX_CHUNK_SIZE:
        return msgpack.packb(arr, default=_ext_pack, strict_types=True)
    step = max(1, MAX_CHUNK_SIZE // arr.dtype.itemsize)
    flat = np.ascontiguousarray(arr).reshape(-1)
    tree = {"__msgpack_chunked_array__": True,
            "shape": {str(i): d for i, d in enumerate(arr.shape)},
            "chunks": {str(i): flat[j:j + step] for i, j in enumerate(range(0, flat.size, step))}}
    return msgpack.packb(tree, default=_ext_pack, strict_types=True)


def unpack_array(data: bytes) -> np.ndarray:
    obj = msgpack.unpackb(data, ext_hook=_ext_unpack, raw=False)
    if isinstance(obj, dict) and obj.get("__msgpack_chunked_array__"):
        shape = tuple(obj["shape"][str(i)] for i in range(len(obj["shape"])))
        chunks = [obj["chunks"][str(i)] for i in range(len(obj["chunks"]))]
        return np.concatenate(chunks).reshape(shape)
    return np.asarray(obj)


def write_streaming(path: str | Path, records: Iterable[tuple[tuple[str, ...], np.ndarray]]) -> int:
    """Write `(key_path, array)` records as an EasyLM streaming file (atomically); returns the count."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    packer = msgpack.Packer(use_bin_type=True)
    n = 0
    with open(tmp, "wb") as f:
        for key, arr in records:
            f.write(packer.pack((list(key), pack_array(arr))))
            n += 1
    os.replace(tmp, path)
    return n


def read_streaming(path: str | Path, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """Yield `(key_path, array)` from a streaming file; with `prefix`, only those keys, prefix removed
    (`("params", "params")` reads the model out of a train state)."""
    with open(path, "rb") as f:
        for key, value in msgpack.Unpacker(f, read_size=1 << 24, max_buffer_size=0, raw=False):
            key = tuple(key)
            if key[:len(prefix)] != prefix:
                continue
            yield key[len(prefix):], unpack_array(value)


# -- reading a HF checkpoint --------------------------------------------------------------------

def read_config(hf_dir: str | Path) -> dict:
    p = Path(hf_dir) / "config.json"
    if not p.is_file():
        raise ModelConfigError(f"{hf_dir}: no config.json (not a Hugging Face model folder)")
    return json.loads(p.read_text())


def _weight_files(hf_dir: Path) -> list[Path]:
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [hf_dir / n for n in names]
    single = hf_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise ModelConfigError(f"{hf_dir}: no model.safetensors (only safetensors checkpoints are supported; "
                           "re-save the model with save_pretrained(safe_serialization=True))")


class _HFTensors:
    """Lazy access to the tensors of a (possibly sharded) safetensors checkpoint, as numpy."""

    def __init__(self, hf_dir: Path):
        from safetensors import safe_open

        self._handles = [safe_open(str(p), framework="np") for p in _weight_files(hf_dir)]
        self._where = {k: h for h in self._handles for k in h.keys()}

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._where:
            raise ModelConfigError(f"missing tensor {key} in the HF checkpoint")
        return self._where[key].get_tensor(key)

    def keys(self) -> list[str]:
        return list(self._where)


# -- the mapping --------------------------------------------------------------------------------

def _to_interleaved(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF's rotate-half q/k rows -> EasyLM's interleaved pairs (per head)."""
    out, inp = w.shape
    return w.reshape(n_heads, 2, out // n_heads // 2, inp).transpose(0, 2, 1, 3).reshape(out, inp)


def _to_rotate_half(w: np.ndarray, n_heads: int) -> np.ndarray:
    out, inp = w.shape
    return w.reshape(n_heads, out // n_heads // 2, 2, inp).transpose(0, 2, 1, 3).reshape(out, inp)


def _layer_pairs(i: int) -> list[tuple[str, tuple[str, ...], str]]:
    """(HF name, EasyLM key, kind) for layer i; kind says how the tensor changes on the way."""
    hf, ez = f"model.layers.{i}", ("transformer", "h", str(i))
    return [
        (f"{hf}.self_attn.q_proj.weight", ez + ("attention", "wq", "kernel"), "q"),
        (f"{hf}.self_attn.k_proj.weight", ez + ("attention", "wk", "kernel"), "k"),
        (f"{hf}.self_attn.v_proj.weight", ez + ("attention", "wv", "kernel"), "linear"),
        (f"{hf}.self_attn.o_proj.weight", ez + ("attention", "wo", "kernel"), "linear"),
        (f"{hf}.mlp.gate_proj.weight", ez + ("feed_forward", "w1", "kernel"), "linear"),
        (f"{hf}.mlp.down_proj.weight", ez + ("feed_forward", "w2", "kernel"), "linear"),
        (f"{hf}.mlp.up_proj.weight", ez + ("feed_forward", "w3", "kernel"), "linear"),
        (f"{hf}.input_layernorm.weight", ez + ("attention_norm", "kernel"), "norm"),
        (f"{hf}.post_attention_layernorm.weight", ez + ("ffn_norm", "kernel"), "norm"),
    ]


def easylm_keys(cfg: dict) -> list[tuple[str, ...]]:
    """Every key of EasyLM's LLaMA params tree for this HF config (the set must match exactly)."""
    shape = llama_shape(cfg)
    keys = [("transformer", "wte", "embedding")]
    for i in range(shape["num_hidden_layers"]):
        keys += [ez for _, ez, _ in _layer_pairs(i)]
    return keys + [("transformer", "ln_f", "kernel"), ("lm_head", "kernel")]


def hf_to_easylm(hf_dir: str | Path, out_path: str | Path, dtype: str = "float32") -> int:
    """Write a HF LLaMA checkpoint as EasyLM streaming params (`--load_checkpoint=params::PATH`)."""
    hf_dir = Path(hf_dir)
    cfg = read_config(hf_dir)
    shape = llama_shape(cfg)  # refuses what EasyLM's LLaMA cannot represent, with the reason
    heads, kv_heads = shape["num_attention_heads"], shape["num_key_value_heads"]
    t = _HFTensors(hf_dir)
    target = _np_dtype(dtype)

    def records():
        embed = t["model.embed_tokens.weight"]
        yield ("transformer", "wte", "embedding"), embed.astype(target)
        for i in range(shape["num_hidden_layers"]):
            for hf_name, key, kind in _layer_pairs(i):
                w = t[hf_name]
                if kind == "q":
                    w = _to_interleaved(w, heads)
                elif kind == "k":
                    w = _to_interleaved(w, kv_heads)
                yield key, (w if kind == "norm" else w.T).astype(target)
        yield ("transformer", "ln_f", "kernel"), t["model.norm.weight"].astype(target)
        head = t["lm_head.weight"] if "lm_head.weight" in t else embed
        yield ("lm_head", "kernel"), head.T.astype(target)

    return write_streaming(out_path, records())


def easylm_to_hf(streaming_path: str | Path, hf_source: str | Path, out_dir: str | Path, *,
                 dtype: str | None = None, prefix: tuple[str, ...] | None = None,
                 max_shard_bytes: int = 5 << 30) -> Path:
    """Write EasyLM params (a params file or a train state) as a HF checkpoint in `out_dir`.

    `hf_source` is the model the run started from: its config and tokenizer files are copied (bos,
    eos, chat template and all), and its dtype is the default output dtype. A train state is
    detected by its keys; `prefix` forces one. Weights are written as safetensors shards.
    """
    from safetensors.numpy import save_file

    hf_source, out_dir = Path(hf_source), Path(out_dir)
    cfg = read_config(hf_source)
    shape = llama_shape(cfg)
    heads, kv_heads = shape["num_attention_heads"], shape["num_key_value_heads"]
    dtype = dtype or cfg.get("torch_dtype") or cfg.get("dtype") or "float32"
    target = _np_dtype(dtype)
    if prefix is None:
        prefix = ("params", "params") if _is_train_state(streaming_path) else ()

    params: dict[tuple[str, ...], np.ndarray] = {}
    for key, arr in read_streaming(streaming_path, prefix):
        params[key] = arr
    expected = set(easylm_keys(cfg))
    missing, extra = expected - set(params), set(params) - expected
    if missing or extra:
        raise ModelConfigError(f"{streaming_path}: keys do not match the model in {hf_source} "
                               f"(missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]})")

    embed = params[("transformer", "wte", "embedding")]
    head_t = params[("lm_head", "kernel")].T
    tied = bool(cfg.get("tie_word_embeddings", False)) and np.array_equal(embed, head_t)

    def tensors():
        yield "model.embed_tokens.weight", embed
        for i in range(shape["num_hidden_layers"]):
            for hf_name, key, kind in _layer_pairs(i):
                w = params[key]
                if kind != "norm":
                    w = w.T
                if kind == "q":
                    w = _to_rotate_half(w, heads)
                elif kind == "k":
                    w = _to_rotate_half(w, kv_heads)
                yield hf_name, w
        yield "model.norm.weight", params[("transformer", "ln_f", "kernel")]
        if not tied:
            yield "lm_head.weight", head_t

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, w in tensors():
        w = np.ascontiguousarray(w.astype(target))
        if shards[-1] and size + w.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = w
        size += w.nbytes
    if len(shards) == 1:
        save_file(shards[0], str(tmp / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map, total = {}, 0
        for n, shard in enumerate(shards, 1):
            fname = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(tmp / fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in shard})
            total += sum(v.nbytes for v in shard.values())
        (tmp / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))

    out_cfg = dict(cfg)
    out_cfg["tie_word_embeddings"] = tied
    out_cfg["torch_dtype" if "torch_dtype" in cfg or "dtype" not in cfg else "dtype"] = target.name
    (tmp / "config.json").write_text(json.dumps(out_cfg, indent=2, sort_keys=False) + "\n")
    for name in TOKENIZER_FILES:
        if (hf_source / name).is_file():
            shutil.copy2(hf_source / name, tmp / name)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def _is_train_state(path: str | Path) -> bool:
    """A train state starts with `step` or `params/params/...`; a params file with `transformer` or `lm_head`."""
    with open(path, "rb") as f:
        for key, _ in msgpack.Unpacker(f, read_size=1 << 24, max_buffer_size=0, raw=False):
            return key[0] in ("step", "params", "opt_state")
    return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainers.tpu.convert", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("to-easylm", help="HF folder -> EasyLM streaming params")
    a.add_argument("hf_dir")
    a.add_argument("out")
    a.add_argument("--dtype", default="float32")
    b = sub.add_parser("to-hf", help="EasyLM streaming params or train state -> HF folder")
    b.add_argument("streaming")
    b.add_argument("hf_source", help="the HF model the run started from (config and tokenizer)")
    b.add_argument("out_dir")
    b.add_argument("--dtype", default=None, help="output dtype (default: the source model's)")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "to-easylm":
            n = hf_to_easylm(args.hf_dir, args.out, args.dtype)
            print(f"wrote {n} tensors to {args.out}")
        else:
            print(f"wrote {easylm_to_hf(args.streaming, args.hf_source, args.out_dir, dtype=args.dtype)}")
    except (ModelConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
