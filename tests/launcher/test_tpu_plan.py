"""The TPU memory and disk plans (launcher/tpu_plan.py) on the real shapes of Llama-2-7B and Llama-3-8B.

The configs are the models' published config.json files (tests/fixtures/model_configs). Parameter
counts are checked against the published figures; the fp32 state of the issue's default run against
the issue's own arithmetic (20 bytes a parameter: ~125 GiB on a v3-8).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher import tpu_plan
from launcher.tpu_plan import GiB, LlamaShape, PlanError, Setup, choose, disk_plan, memory, smallest_fit, tpu

CONFIGS = Path(__file__).resolve().parents[1] / "fixtures" / "model_configs"


def shape(name: str) -> LlamaShape:
    return LlamaShape.from_hf_config(json.loads((CONFIGS / f"{name}.json").read_text()))


LLAMA2_7B, LLAMA3_8B = shape("llama-2-7b-hf"), shape("llama-3-8b")


def test_parameter_counts_are_the_published_ones():
    assert LLAMA2_7B.params() == 6_738_415_616
    assert LLAMA3_8B.params() == 8_030_261_248


def test_tpu_types():
    assert (tpu("v3-8").devices, tpu("v3-8").hosts, tpu("v3-8").hbm_gib) == (8, 1, 16)
    assert (tpu("tpu-v4-8").devices, tpu("v4-8").hbm_gib) == (4, 32)
    assert (tpu("v3-32").devices, tpu("v3-32").hosts) == (32, 4)
    assert tpu("v5litepod-16").hosts == 4
    with pytest.raises(PlanError, match="resources.accelerators"):
        tpu("v9-8")
    assert tpu("v5litepod-4").devices == 4
    for odd in ("v3-7", "v4-4", "v5litepod-2"):  # no such slice: not a plan for 7 devices
        with pytest.raises(PlanError, match=f"unknown TPU type '{odd}': .* slices come in"):
            tpu(odd)


def test_a_tpu_in_skypilots_own_form_is_the_slice():
    from launcher.spec import JobSpec, SpecError, load_spec

    assert JobSpec.model_validate({"method": "full", "resources": {"accelerators": "tpu-v3-8:1"}}).resources.accelerators == "tpu-v3-8"
    with pytest.raises(SpecError, match=r"resources.accelerators: a TPU slice is taken one at a time \(got 'tpu-v3-8:2'\)"):
        load_spec(None, [("method", "full"), ("resources.accelerators", "tpu-v3-8:2")], data={})


def test_the_issues_default_run_does_not_fit_a_v3_8():
    """batch 8 a chip x 2048, accumulation 8, no remat, fp32 params and moments: the issue's 125 GiB."""
    s = Setup(rows=8, seq=2048, accumulate=8, remat=False, moments="fp32", mesh=(1, 8, 1))
    m = memory(LLAMA2_7B, s)
    state = sum(m.parts[k] for k in ("params", "gradients", "adam mu", "adam nu", "accumulation")) * 8
    assert 124 * GiB < state < 126 * GiB
    assert m.total > tpu("v3-8").budget


def test_llama2_7b_on_a_v3_8_gets_a_plan_that_fits():
    p = choose(LLAMA2_7B, "v3-8", rows=8, seq=2048, accumulate=8, remat=False)
    s = p.setup
    assert p.fits and p.memory.total <= 16 * GiB * tpu_plan.USABLE
    assert s.remat and s.moments == "bf16"
    assert s.global_batch % s.mesh[1] == 0 and s.mesh[0] * s.mesh[1] * s.mesh[2] == 8
    assert any("bf16" in c for c in p.changes) and any("gradient_checkpointing" in c for c in p.changes)
    # No accumulation: its fp32 buffer (3.1 GiB a chip) is what does not fit next to the state.
    assert s.accumulate == 1 and p.memory.parts["accumulation"] == 0
    text = "\n".join(p.lines())
    assert "fits" in text and "bf16" in text and "v3-8" in text


def test_a_run_that_fits_is_left_as_it_is():
    small = LlamaShape(hidden=576, layers=30, heads=9, kv_heads=3, intermediate=1536, vocab=49152, tied=True)
    p = choose(small, "v3-8", rows=2, seq=512, accumulate=2, remat=False)
    assert p.changes == [] and p.setup.moments == "fp32" and not p.setup.remat
    assert (p.setup.rows, p.setup.accumulate, p.setup.mesh) == (2, 2, (1, 8, 1))


def test_smaller_microbatches_keep_the_rows_per_update_when_they_fit():
    # Llama-2-7B on a v5p-8 (95 GiB a chip): batch 16 a chip does not fit, smaller ones do.
    p = choose(LLAMA2_7B, "v5p-8", rows=64, seq=4096, accumulate=1, remat=True)
    assert p.fits and p.setup.rows < 64 and p.setup.rows * p.setup.accumulate == 64


def test_llama3_8b_on_a_v3_8_fits_or_names_the_smallest_tpu_that_does():
    try:
        p = choose(LLAMA3_8B, "v3-8", rows=8, seq=2048, accumulate=8, remat=False)
    except PlanError as e:
        msg = str(e)
        assert "\n" not in msg and "v3-8" in msg and "smallest TPU that fits" in msg
        best = smallest_fit(LLAMA3_8B, seq=2048)
        assert best is not None and best.tpu.name in msg and best.fits
    else:
        assert p.fits


def test_too_big_anywhere_here_names_the_smallest_tpu():
    big = LlamaShape(hidden=8192, layers=80, heads=64, kv_heads=8, intermediate=28672, vocab=32000)  # 70B class
    with pytest.raises(PlanError) as e:
        choose(big, "v3-8", rows=1, seq=2048, accumulate=1, remat=True)
    best = smallest_fit(big, seq=2048)
    assert best is not None and f"smallest TPU that fits: {best.tpu.name}" in str(e.value)
    assert tpu(best.tpu.name).devices * tpu(best.tpu.name).hbm_gib > 8 * 16


def test_disk_plan_without_a_bucket_holds_two_train_states():
    d = disk_plan(LLAMA2_7B, hub_download=True, bucket=False, state_dtype="fp32", exports=2)
    state = LLAMA2_7B.params() * 4 * 3
    assert d.parts["train states (resume)"] == 2 * state
    assert d.size_gb * 1e9 >= d.total and d.size_gb % 50 == 0
    with_bucket = disk_plan(LLAMA2_7B, hub_download=True, bucket=True, state_dtype="fp32", exports=2)
    assert "train states (resume)" not in with_bucket.parts and with_bucket.size_gb < d.size_gb


def test_model_config_from_the_cache_and_offline(launcher_home, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: offline
    cfg, why = tpu_plan.model_config("meta-llama/Llama-2-7b-hf")
    assert cfg is None and "cannot reach the hub" in why and "\n" not in why
    cached = tpu_plan.cached_config_path("meta-llama/Llama-2-7b-hf")
    cached.parent.mkdir(parents=True)
    cached.write_text((CONFIGS / "llama-2-7b-hf.json").read_text())
    cfg, why = tpu_plan.model_config("meta-llama/Llama-2-7b-hf")
    assert cfg["hidden_size"] == 4096 and "cached" in why
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text((CONFIGS / "llama-3-8b.json").read_text())
    assert tpu_plan.model_config("m", tmp_path)[0]["vocab_size"] == 128256


def test_hub_ids_without_an_org_are_fetched(launcher_home, monkeypatch):
    """The hub's oldest models (gpt2, distilgpt2) have no org; a single name the hub does not know
    is more likely a folder that is not there, and is said so."""
    import http.server
    import threading

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            known = self.path == "/gpt2/resolve/main/config.json"
            self.send_response(200 if known else 404)
            self.end_headers()
            if known:
                self.wfile.write(json.dumps({"model_type": "gpt2", "n_embd": 768}).encode())

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        cfg, why = tpu_plan.model_config("gpt2")
        assert cfg == {"model_type": "gpt2", "n_embd": 768}, why
        cfg, why = tpu_plan.model_config("my-model-folder")
        assert cfg is None and why == "model my-model-folder: no such folder or file here, and no model of that name on the hub"
    finally:
        server.shutdown()


def test_the_plan_imports_nothing_heavy():
    from common import loaded_by

    assert loaded_by("launcher.tpu_plan", ("torch", "jax", "numpy", "pydantic", "transformers", "sky")) == []


def test_model_parallel_only_where_the_model_divides_evenly():
    # 9 heads (SmolLM2's): no mp of 2, 4 or 8 can split them, so no such mesh is ever chosen.
    odd = LlamaShape(hidden=576 * 8, layers=60, heads=9, kv_heads=3, intermediate=1536 * 8, vocab=49152)
    assert tpu_plan._meshes(odd, 8) == [(1, 8, 1)]
    assert tpu_plan._meshes(LLAMA2_7B, 8) == [(1, 8, 1), (1, 4, 2), (1, 2, 4), (1, 1, 8)]
