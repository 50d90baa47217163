"""The HF <-> EasyLM converter on the real SmolLM2-135M (GQA 9/3 heads, tied embeddings).

The written file is read back here with msgpack and numpy alone, following the format as EasyLM
documents it, so a converter that wrote something EasyLM cannot read would fail here.
"""
from __future__ import annotations

import json

import msgpack
import numpy as np
import pytest
from safetensors.numpy import load_file

from trainers.tpu import convert
from trainers.tpu.flags import ModelConfigError


def read_raw(path) -> dict:
    """A streaming file as {key tuple: array}, by hand: [key, bin(ExtType(1, [shape, dtype, bytes]))]."""
    out = {}
    with open(path, "rb") as f:
        for key, value in msgpack.Unpacker(f, raw=False, max_buffer_size=0):
            assert isinstance(value, bytes)
            ext = msgpack.unpackb(value, raw=False)
            assert isinstance(ext, msgpack.ExtType) and ext.code == 1
            shape, dtype, buf = msgpack.unpackb(ext.data, raw=False)
            out[tuple(key)] = np.frombuffer(buf, dtype=np.dtype(dtype)).reshape(shape)
    return out


@pytest.fixture(scope="module")
def params_file(smollm2_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("easylm") / "params.streaming"
    assert convert.hf_to_easylm(smollm2_dir, path) == 2 + 30 * 9 + 1
    return path


@pytest.mark.slow
def test_round_trip_is_exact(smollm2_dir, params_file, tmp_path):
    out = convert.easylm_to_hf(params_file, smollm2_dir, tmp_path / "hf")
    a, b = load_file(str(smollm2_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k
    assert json.loads((out / "config.json").read_text()) == json.loads((smollm2_dir / "config.json").read_text())
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (smollm2_dir / name).read_bytes(), name


@pytest.mark.slow
def test_written_file_follows_the_format(smollm2_dir, params_file):
    raw = read_raw(params_file)
    cfg = json.loads((smollm2_dir / "config.json").read_text())
    hf = load_file(str(smollm2_dir / "model.safetensors"))
    H, V, I = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    heads, kv, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"] // cfg["num_attention_heads"]
    assert set(raw) == set(convert.easylm_keys(cfg))
    assert raw[("transformer", "wte", "embedding")].shape == (V, H)
    L = ("transformer", "h", "7")
    assert raw[L + ("attention", "wq", "kernel")].shape == (H, heads * d)
    assert raw[L + ("attention", "wk", "kernel")].shape == (H, kv * d)
    assert raw[L + ("feed_forward", "w1", "kernel")].shape == (H, I)
    assert raw[L + ("feed_forward", "w2", "kernel")].shape == (I, H)
    assert all(v.dtype == np.float32 for v in raw.values())
    # Tied embeddings: the head is the embedding, transposed.
    np.testing.assert_array_equal(raw[("lm_head", "kernel")], hf["model.embed_tokens.weight"].T)
    np.testing.assert_array_equal(raw[L + ("attention", "wv", "kernel")], hf["model.layers.7.self_attn.v_proj.weight"].T)
    np.testing.assert_array_equal(raw[L + ("ffn_norm", "kernel")], hf["model.layers.7.post_attention_layernorm.weight"])
    # Rotary layout: EasyLM rotates pairs (2j, 2j+1) of each head; HF rotates (j, j + d/2).
    for name, n in (("q", heads), ("k", kv)):
        ez = raw[L + ("attention", f"w{name}", "kernel")]
        w = hf[f"model.layers.7.self_attn.{name}_proj.weight"]
        for h in (0, n - 1):
            for j in (0, 5, d // 2 - 1):
                np.testing.assert_array_equal(ez[:, h * d + 2 * j], w[h * d + j])
                np.testing.assert_array_equal(ez[:, h * d + 2 * j + 1], w[h * d + d // 2 + j])


@pytest.fixture(scope="module")
def tiny_params(tiny_llama, tmp_path_factory):
    path = tmp_path_factory.mktemp("easylm-tiny") / "params.streaming"
    convert.hf_to_easylm(tiny_llama, path)
    return path


@pytest.mark.slow
def test_trained_head_comes_back_untied(tiny_llama, tiny_params, tmp_path):
    """EasyLM trains lm_head apart from the embedding: the export keeps both and says so."""
    raw = dict(convert.read_streaming(tiny_params))
    raw[("lm_head", "kernel")] = raw[("lm_head", "kernel")] + np.float32(1e-3)
    changed = tmp_path / "changed.streaming"
    convert.write_streaming(changed, raw.items())
    out = convert.easylm_to_hf(changed, tiny_llama, tmp_path / "hf", dtype="float16")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "float16"
    w = load_file(str(out / "model.safetensors"))
    assert w["lm_head.weight"].dtype == np.float16
    np.testing.assert_array_equal(w["lm_head.weight"], raw[("lm_head", "kernel")].T.astype(np.float16))
    assert not np.array_equal(w["lm_head.weight"], w["model.embed_tokens.weight"])


@pytest.mark.slow
def test_train_state_is_read_as_params(tiny_llama, tiny_params, tmp_path):
    """A train state (step, params/params/..., opt_state) converts like a params file."""
    raw = dict(convert.read_streaming(tiny_params))
    state = tmp_path / "streaming_train_state"
    records = [(("step",), np.array(12, dtype=np.int32))]
    records += [(("params", "params") + k, v) for k, v in raw.items()]
    records += [(("opt_state", "1", "0", "mu") + k, np.zeros_like(v)) for k, v in list(raw.items())[:3]]
    convert.write_streaming(state, records)
    out = convert.easylm_to_hf(state, tiny_llama, tmp_path / "hf")
    a, b = load_file(str(tiny_llama / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_large_arrays_are_chunked_like_flax(monkeypatch):
    monkeypatch.setattr(convert, "MAX_CHUNK_SIZE", 64)
    arr = np.arange(50, dtype=np.float32).reshape(5, 10)
    packed = convert.pack_array(arr)
    tree = msgpack.unpackb(packed, raw=False)
    assert tree["__msgpack_chunked_array__"] is True and tree["shape"] == {"0": 5, "1": 10}
    assert len(tree["chunks"]) == 4  # 64 bytes = 16 floats per chunk
    np.testing.assert_array_equal(convert.unpack_array(packed), arr)


def test_bfloat16_files_read_with_ml_dtypes(tmp_path):
    import ml_dtypes

    arr = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4).astype(ml_dtypes.bfloat16)
    convert.write_streaming(tmp_path / "f", [(("a", "b"), arr)])
    [(key, back)] = list(convert.read_streaming(tmp_path / "f"))
    assert key == ("a", "b") and back.dtype.name == "bfloat16" and back.tobytes() == arr.tobytes()


def test_refuses_models_easylm_cannot_represent(smollm2_dir, tmp_path):
    cfg = json.loads((smollm2_dir / "config.json").read_text())
    for change, words in (({"model_type": "gpt2"}, "model_type 'gpt2'"),
                          ({"attention_bias": True}, "attention_bias"),
                          ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope scaling 'llama3'"),
                          ({"head_dim": 128}, "head_dim")):
        folder = tmp_path / words.split()[0].strip("'")
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(ModelConfigError, match=words.replace("(", r"\(")):
            convert.hf_to_easylm(folder, tmp_path / "x.streaming")
    assert convert.main(["to-easylm", str(tmp_path / "missing"), str(tmp_path / "y")]) == 2
