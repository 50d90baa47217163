"""EasyLM flag rendering for v3-8, v4-8 and v3-32, checked against EasyLM's real flag names.

easylm_flags.txt is EasyLM's flag list at the pinned commit; test_easylm.py regenerates it from a
real checkout and fails if it changed, so an unknown flag (which aborts EasyLM) fails here in CI.
"""
from __future__ import annotations

import json
import math
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
    from common import loaded_by

    assert loaded_by("trainers.tpu.flags", ("torch", "jax", "numpy", "transformers", "launcher.cli")) == []


def test_every_train_field_is_mapped_or_refused():
    from launcher.spec import TrainConfig
    from trainers.tpu.flags import TRAIN_FIELDS, check_train_fields

    assert set(TRAIN_FIELDS) == set(TrainConfig.model_fields)
    assert check_train_fields(make_spec()) == ["train.sample_prompts: no samples on TPU"]
    refused = {"optim": "adafactor", "data_seed": 7, "logging_first_step": False, "dataloader_num_workers": 4,
               "eval_on_start": False, "ddp_find_unused_parameters": True, "sample_prompts": 5,
               "attn_implementation": "flash_attention_2", "report_to": "tensorboard"}
    for field, value in refused.items():
        with pytest.raises(FlagError) as e:
            check_train_fields(make_spec(**{field: value}))
        assert str(e.value).startswith(f"train.{field}: ") and "\n" not in str(e.value)
    # Values EasyLM does honour pass: another AdamW name, one tokenizer process, no samples, fsdp.
    check_train_fields(make_spec(optim="adamw_torch", dataloader_num_workers=0, sample_prompts=0, fsdp=True,
                                 data_seed=None, attn_implementation="eager"))


def test_llama2_7b_on_a_v3_8_renders_the_plan_that_fits():
    """The issue's defaults (batch 8 a chip, accumulation 8, no remat) become a plan that fits."""
    cfg = json.loads((HERE.parent / "fixtures" / "model_configs" / "llama-2-7b-hf.json").read_text())
    spec = make_spec(per_device_train_batch_size=8, gradient_accumulation_steps=8, gradient_checkpointing=False,
                     do_eval=True)
    spec.data.max_length = 2048
    f = flags_of(spec, "v3-8", cfg, val_tokens=100_000)
    from trainers.tpu.flags import memory_plan

    p = memory_plan(spec, "v3-8", cfg)
    assert p.fits and f["mesh_dim"] == p.setup.mesh_dim
    assert f["optimizer.adamw_optimizer.bf16_momentum"] == "True" and f["llama.remat_policy"] == "nothing_saveable"
    assert int(f["train_dataset.json_dataset.batch_size"]) == p.setup.global_batch
    assert int(f["optimizer.accumulate_gradient_steps"]) == p.setup.accumulate
    assert int(f["eval_dataset.json_dataset.batch_size"]) <= p.setup.global_batch
    assert f["llama.num_hidden_layers"] == "32" and f["llama.hidden_size"] == "4096"
    # Llama-3-8B: a plan that fits, or the smallest TPU that would, in one line.
    cfg3 = json.loads((HERE.parent / "fixtures" / "model_configs" / "llama-3-8b.json").read_text())
    try:
        f3 = flags_of(spec, "v3-8", cfg3)
    except FlagError as e:
        assert "smallest TPU that fits" in str(e) and "\n" not in str(e)
    else:
        assert f3["optimizer.adamw_optimizer.bf16_momentum"] == "True"
