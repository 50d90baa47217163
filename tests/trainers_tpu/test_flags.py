"""EasyLM flag rendering for v3-8, v4-8 and v3-32, checked against EasyLM's real flag names.

easylm_flags.txt is EasyLM's flag list at the pinned commit; test_easylm.py regenerates it from a
real checkout and fails if it changed, so an unknown flag (which aborts EasyLM) fails here in CI.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.spec import JobSpec
from trainers.tpu.flags import FlagError, plan, render, tpu_shape

HERE = Path(__file__).resolve().parent
EASYLM_FLAGS = {l for l in (HERE / "easylm_flags.txt").read_text().splitlines() if l and not l.startswith("#")}


def make_spec(**train) -> JobSpec:
    t = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 4, "learning_rate": 2e-5,
         "warmup_steps": 10, "num_train_epochs": 2.0, "save_steps": 50, **train}
    return JobSpec.model_validate({"name": "tpu-job", "method": "full", "data": {"format": "input_output", "max_length": 512},
                                   "train": t, "resources": {"cloud": "gcp", "accelerators": "tpu-v3-8"}})


@pytest.fixture(scope="module")
def smollm2_config(smollm2_dir) -> dict:
    return json.loads((Path(smollm2_dir) / "config.json").read_text())


def flags_of(spec, tpu_type, cfg, out="gs://bucket/job/tpu", **kw) -> dict[str, str]:
    kw = {"train_tokens": 1_000_000, "val_tokens": 0, "prefix_ids": [], **kw}
    argv = render(spec, tpu_type, "/data/tpu", out, model_config=cfg, tokenizer_dir="/model/tok",
                  params_path="/model/params.streaming", **kw)
    assert all(a.startswith("--") and "=" in a for a in argv)
    flags = dict(a[2:].split("=", 1) for a in argv)
    assert len(flags) == len(argv), "a flag was rendered twice"
    unknown = set(flags) - EASYLM_FLAGS
    assert not unknown, f"not EasyLM flags: {sorted(unknown)}"
    return flags


@pytest.mark.parametrize("tpu_type, devices, hosts", [("v3-8", 8, 1), ("v4-8", 4, 1), ("v3-32", 32, 4)])
def test_mesh_batch_and_steps_per_tpu(tpu_type, devices, hosts, smollm2_config):
    spec = make_spec()
    f = flags_of(spec, tpu_type, smollm2_config)
    assert tpu_shape(tpu_type) == (devices, hosts)
    assert f["mesh_dim"] == f"1,{devices},1"  # FSDP across every device
    batch = int(f["train_dataset.json_dataset.batch_size"])
    assert batch == 2 * devices and batch % devices == 0
    assert f["train_dataset.json_dataset.seq_length"] == "512"
    assert f["optimizer.accumulate_gradient_steps"] == "4"
    updates = math.ceil(2.0 * 1_000_000 / (batch * 512 * 4))
    assert int(f["optimizer.adamw_optimizer.lr_decay_steps"]) == updates
    assert int(f["total_steps"]) == updates * 4  # EasyLM counts micro-batches
    assert int(f["save_milestone_freq"]) == 50 * 4
    assert int(f["save_model_freq"]) > int(f["total_steps"])  # only the end (or SIGTERM) save
    assert ("jax_distributed.initialize_jax_distributed" in f) == (hosts > 1)
    assert f["dtype"] == "bf16" and f["param_dtype"] == "fp32"


def test_v3_32_needs_a_gcs_bucket(smollm2_config):
    with pytest.raises(FlagError, match="outputs.bucket"):
        flags_of(make_spec(), "v3-32", smollm2_config, out="/local/run")
    flags_of(make_spec(), "v3-8", smollm2_config, out="/local/run")  # one host: a local folder is fine


def test_model_shape_optimizer_and_checkpoints(smollm2_config):
    f = flags_of(make_spec(max_grad_norm=0.0, weight_decay=0.01), "v3-8", smollm2_config)
    assert f["llama.hidden_size"] == "576" and f["llama.intermediate_size"] == "1536"
    assert f["llama.num_hidden_layers"] == "30" and f["llama.num_attention_heads"] == "9"
    assert f["llama.num_key_value_heads"] == "3" and f["llama.vocab_size"] == "49152"
    assert f["llama.max_position_embeddings"] == "8192"
    assert float(f["llama.rms_norm_eps"]) == smollm2_config["rms_norm_eps"]
    assert float(f["llama.rope_theta"]) == 100000.0
    assert "load_llama_config" not in f  # EasyLM ignores it
    assert f["load_checkpoint"] == "params::/model/params.streaming"
    assert f["tokenizer"] == "/model/tok"
    adam = {k.rsplit(".", 1)[1]: v for k, v in f.items() if k.startswith("optimizer.adamw_optimizer.")}
    assert float(adam["lr"]) == 2e-5 and float(adam["init_lr"]) == 0.0 and float(adam["end_lr"]) == 0.0
    assert adam["lr_warmup_steps"] == "10"
    assert float(adam["b2"]) == 0.999 and float(adam["weight_decay"]) == 0.01
    assert float(adam["clip_gradient"]) >= 1e6  # max_grad_norm 0 = no clipping
    assert f["checkpointer.float_dtype"] == "fp32" and f["checkpointer.save_optimizer_state"] == "True"
    assert f["logger.output_dir"] == "gs://bucket/job/tpu" and f["logger.experiment_id"] == "tpu-job"
    assert f["logger.online"] == "False"
    assert f["llama.remat_policy"] == ""


def test_schedules_precision_wandb_and_eval(smollm2_config):
    f = flags_of(make_spec(lr_scheduler_type="constant_with_warmup", report_to="wandb", wandb_project="p",
                           gradient_checkpointing=True, do_eval=True, eval_steps=20),
                 "v4-8", smollm2_config, val_tokens=40_000, prefix_ids=[1])
    assert float(f["optimizer.adamw_optimizer.end_lr"]) == 2e-5  # flat after warmup
    assert f["logger.online"] == "True" and f["logger.project"] == "p"
    assert f["llama.remat_policy"] == "nothing_saveable"
    assert f["eval_dataset.json_dataset.path"] == "/data/tpu/val.jsonl"
    assert int(f["eval_steps"]) == math.ceil(40_000 / (8 * 512))
    assert f["log_freq"] == str(20 * 4)
    for split in ("train", "eval"):
        assert f[f"{split}_dataset.text_processor.fields"] == "[<|1|>],[input],output"
        assert f[f"{split}_dataset.text_processor.add_bos_token"] == "False"
    f = flags_of(make_spec(precision="fp32", max_steps=7), "cpu-2", smollm2_config)
    assert f["dtype"] == "fp32" and f["total_steps"] == "28" and f["mesh_dim"] == "1,2,1"
    with pytest.raises(FlagError, match="train.lr_scheduler_type"):
        flags_of(make_spec(lr_scheduler_type="linear"), "v3-8", smollm2_config)
    with pytest.raises(FlagError, match="train.precision"):
        flags_of(make_spec(precision="fp16"), "v3-8", smollm2_config)
    with pytest.raises(FlagError, match="resources.accelerators"):
        tpu_shape("v9-8")


def test_text_format_and_long_sequences(smollm2_config):
    spec = JobSpec.model_validate({"name": "t", "method": "full", "data": {"format": "text", "max_length": 16384},
                                   "resources": {"cloud": "gcp", "accelerators": "tpu-v3-8"}})
    with pytest.raises(FlagError, match="data.max_length"):
        flags_of(spec, "v3-8", smollm2_config)
    spec.data.max_length = 1024
    assert flags_of(spec, "v3-8", smollm2_config)["train_dataset.text_processor.fields"] == "text"
    assert plan(spec, "v3-8", 10)["updates"] == 1  # at least one update, however little data


def test_renderer_imports_no_heavy_library():
    code = ("import sys, trainers.tpu.flags; "
            "print(sorted(m for m in ('torch', 'jax', 'numpy', 'transformers', 'launcher.cli') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
