"""The GPU trainer with the real SmolLM2-135M on the CPU: LoRA and full fine-tunes learn, SIGTERM
saves a checkpoint that a restart resumes from on the same loss curve, W&B offline continues its
run, manifests catch corruption, the spec reaches TrainingArguments, QLoRA without CUDA is refused.

Runs are short (rows of 64 tokens, a handful of steps) because CI trains on two CPU cores.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gpu_trainer_helpers import REPO, fruit_examples, pack, run_trainer, trainer_env, write_job
from launcher.manifest import checkpoints, is_complete, latest_complete, verify
from launcher.spec import load_spec

STEPS = 6


def losses(state_file: Path) -> dict[int, float]:
    history = json.loads(state_file.read_text())["log_history"]
    return {h["step"]: h["loss"] for h in history if "loss" in h}


# -- no model needed --------------------------------------------------------------------------

def test_spec_flags_reach_training_arguments(tmp_path):
    from trainers.gpu.train import build_training_args, training_kwargs

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "flags", "train": {
        "per_device_train_batch_size": 3, "per_device_eval_batch_size": 5, "gradient_accumulation_steps": 7,
        "learning_rate": 3e-5, "lr_scheduler_type": "cosine", "warmup_steps": 11, "num_train_epochs": 2,
        "eval_steps": 13, "save_steps": 17, "save_total_limit": 4, "seed": 5, "data_seed": 6,
        "optim": "adamw_torch_fused", "logging_steps": 2, "logging_first_step": True, "dataloader_num_workers": 1,
        "report_to": "tensorboard", "ddp_find_unused_parameters": False, "gradient_checkpointing": True,
        "weight_decay": 0.1, "max_grad_norm": 0.5}}))
    spec = load_spec(job)
    args = build_training_args(spec, tmp_path / "out", precision="bf16", evaluate=True)
    assert args.output_dir == str(tmp_path / "out" / "checkpoints")
    assert (args.per_device_train_batch_size, args.per_device_eval_batch_size, args.gradient_accumulation_steps) == (3, 5, 7)
    assert args.learning_rate == 3e-5 and args.lr_scheduler_type.value == "cosine" and args.warmup_steps == 11
    assert args.num_train_epochs == 2 and args.max_steps == -1
    assert args.bf16 and not args.fp16
    assert args.eval_strategy.value == "steps" and args.eval_steps == 13 and args.do_eval and args.eval_on_start
    assert args.save_strategy.value == "steps" and args.save_steps == 17
    assert args.save_total_limit is None  # rotation is ours, after the manifest; the limit travels in the spec
    assert (args.seed, args.data_seed) == (5, 6)
    assert args.optim.value == "adamw_torch_fused" and args.weight_decay == 0.1 and args.max_grad_norm == 0.5
    assert args.logging_steps == 2 and args.logging_first_step and args.dataloader_num_workers == 1
    assert args.report_to == ["tensorboard"] and args.ddp_find_unused_parameters is False
    assert args.activation_checkpointing and args.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert args.remove_unused_columns is False and args.prediction_loss_only and args.use_cache is False
    # the device picks the collective backend, in this one place
    assert args.ddp_backend is None  # one process: no collectives at all
    kw = dict(precision="fp32", evaluate=True, world_size=2)
    assert training_kwargs(spec, tmp_path / "out", cuda=False, **kw)["ddp_backend"] == "gloo"
    assert training_kwargs(spec, tmp_path / "out", cuda=True, **kw)["ddp_backend"] == "nccl"

    spec = load_spec(None, [("method", "qlora"), ("train.max_steps", 9), ("train.data_seed", None)], data={})
    args = build_training_args(spec, tmp_path / "out", precision="fp32", evaluate=False)
    assert args.optim.value == "paged_adamw_32bit"  # QLoRA's paged optimizer unless optim is set explicitly
    assert args.max_steps == 9 and args.eval_strategy.value == "no" and not args.eval_on_start
    assert not args.bf16 and not args.fp16
    assert args.data_seed == args.seed and args.report_to == []


def test_precision_and_attention_choice():
    from trainers.gpu.train import InputError, resolve_attention, resolve_precision

    assert resolve_precision("auto", cuda=False, bf16_ok=False) == "fp32"
    assert resolve_precision("auto", cuda=True, bf16_ok=True) == "bf16"
    assert resolve_precision("auto", cuda=True, bf16_ok=False) == "fp16"
    with pytest.raises(InputError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", cuda=False, bf16_ok=False)
    assert resolve_attention("auto", cuda=False) == "sdpa"
    with pytest.raises(InputError, match="flash_attention_2"):
        resolve_attention("flash_attention_2", cuda=False)


@pytest.mark.slow
def test_qlora_without_cuda_fails_before_loading_anything(tmp_path):
    # The model and the data do not even exist: the refusal must come before either is touched.
    job = write_job(tmp_path / "job.yaml", tmp_path / "no-such-model", method="qlora")
    res = run_trainer(job, tmp_path / "no-data", tmp_path / "out", env=trainer_env(CUDA_VISIBLE_DEVICES=""))
    assert res.returncode == 2, res.stderr[-2000:]
    err = res.stderr.strip().splitlines()
    assert err[-1].startswith("error: method: qlora needs a CUDA GPU"), res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_fsdp_on_cpu_processes_is_refused_not_run_as_ddp(tmp_path):
    """accelerate shards with FSDP only across GPUs; on CPU processes the job would silently be DDP."""
    job = write_job(tmp_path / "job.yaml", tmp_path / "no-such-model", method="full", train={"fsdp": True})
    res = run_trainer(job, tmp_path / "no-data", tmp_path / "out", env=trainer_env(CUDA_VISIBLE_DEVICES=""))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1].startswith("error: train.fsdp: FSDP shards across GPUs only")


@pytest.mark.slow
def test_bad_input_exits_2_with_one_line(tmp_path, smollm2_dir):
    job = write_job(tmp_path / "job.yaml", smollm2_dir)
    res = run_trainer(job, tmp_path / "no-data", tmp_path / "out")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{tmp_path / 'no-data' / 'train'}: no such folder" in res.stderr

    res = run_trainer(job, tmp_path / "no-data", tmp_path / "out", "train.learning_rate=-1")
    assert res.returncode == 2 and "train.learning_rate: must be > 0" in res.stderr


def test_launch_command(tmp_path):
    from launcher.spec import JobSpec
    from trainers.gpu.launch import command, exit_code

    spec = JobSpec(name="multi")
    one = command("job.yaml", "d", "o", {"CUDA_VISIBLE_DEVICES": "0"})
    assert one == [sys.executable, "-m", "trainers.gpu.train", "job.yaml", "--data", "d", "--out", "o"]
    cpu = command("job.yaml", "d", "o", {"CUDA_VISIBLE_DEVICES": ""})
    assert cpu == one

    node = command("job.yaml", "d", "o", {"SKYPILOT_NUM_GPUS_PER_NODE": "8"})
    assert node[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert node[node.index("--num_processes") + 1] == "8" and node[node.index("--num_machines") + 1] == "1"
    assert "--multi_gpu" in node and "--main_process_ip" not in node
    assert node[node.index("--module"):] == ["--module", "trainers.gpu.train", "job.yaml", "--data", "d", "--out", "o"]

    env = {"SKYPILOT_NUM_GPUS_PER_NODE": "4", "SKYPILOT_NUM_NODES": "2", "SKYPILOT_NODE_RANK": "1",
           "SKYPILOT_NODE_IPS": "10.0.0.5\n10.0.0.6\n"}
    multi = command("job.yaml", "d", "o", env)
    assert multi[multi.index("--num_processes") + 1] == "8"  # accelerate counts processes over all machines
    assert multi[multi.index("--num_machines") + 1] == "2" and multi[multi.index("--machine_rank") + 1] == "1"
    assert multi[multi.index("--main_process_ip") + 1] == "10.0.0.5"
    assert multi[multi.index("--main_process_port") + 1] == "29500"

    # CPU-only nodes (SkyPilot says 0 GPUs) still train together, one process each, not each alone
    cpu_nodes = command("job.yaml", "d", "o", {**env, "SKYPILOT_NUM_GPUS_PER_NODE": "0", "MASTER_PORT": "29612"})
    assert cpu_nodes[cpu_nodes.index("--num_processes") + 1] == "2" and "--multi_gpu" in cpu_nodes
    assert cpu_nodes[cpu_nodes.index("--main_process_port") + 1] == "29612"
    # resources.processes_per_node asks for several processes on a machine without GPUs
    asked = JobSpec(name="multi", resources={"processes_per_node": 2})
    two = command(asked, "d", tmp_path / "o", {"CUDA_VISIBLE_DEVICES": ""})
    assert two[two.index("--num_processes") + 1] == "2" and two[two.index("--num_machines") + 1] == "1"
    assert two[-6:] == ["trainers.gpu.train", str(tmp_path / "o" / "job.yaml"), "--data", "d", "--out", str(tmp_path / "o")]

    assert exit_code(1, "/nonexistent") == 1 and exit_code(75, "/nonexistent") == 75
    assert spec.train.fsdp is False


# -- packing -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_packed_examples_do_not_see_each_other(smollm2_dir, tokenizer):
    """The collator's batches make the model treat each packed example as if it were alone."""
    import torch
    from transformers import AutoModelForCausalLM

    from trainers.gpu.data import PackedCollator

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, attn_implementation="sdpa").eval()
    a, b = fruit_examples(tokenizer, 2)
    row = pack([a, b], 128)[0]
    short = pack([b], 128)[0]
    batch = PackedCollator(tokenizer.pad_token_id)([row, short])
    assert batch["input_ids"].shape == (2, len(row["input_ids"])) and "attention_mask" not in batch
    # The first token of the second example is not trained from the first example's last token.
    first_b = len(a[0]) + len(a[1])
    assert batch["labels"][0, first_b] == -100 and batch["labels"][0, first_b + len(b[0])] != -100
    with torch.no_grad():
        # use_cache=False as in training (TrainingArguments.use_cache): the packed mask needs it
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        alone = model(input_ids=torch.tensor([short["input_ids"]]), use_cache=False).logits
    n = len(short["input_ids"])
    assert torch.allclose(packed[0, first_b:first_b + n], alone[0], atol=1e-4)
    assert torch.allclose(packed[1, :n], alone[0], atol=1e-4)  # the filled tail does not disturb the real tokens

    flat = PackedCollator(tokenizer.pad_token_id, flatten=True)([row, short])
    assert flat["input_ids"].shape == (1, len(row["input_ids"]) + n)


# -- real training runs --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, smollm2_dir, fruit_data):
    """One uninterrupted LoRA run, uploading to a bucket (a local folder): the reference for the resume test."""
    root = tmp_path_factory.mktemp("lora")
    job = write_job(root / "job.yaml", smollm2_dir, lora={"merge": True},
                    outputs={"bucket": str(root / "bucket")}, train={"max_steps": STEPS})
    res = run_trainer(job, fruit_data, root / "out")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return root, res


@pytest.mark.slow
def test_lora_learns_and_writes_final(lora_run):
    root, res = lora_run
    out = root / "out"
    loss = losses(out / "final" / "trainer_state.json")
    assert sorted(loss) == list(range(1, STEPS + 1))
    assert loss[STEPS] < 0.5 * loss[1], loss  # the answer pattern is learnable in a few steps

    final = out / "final"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "trainer_state.json",
                 "loss.png", "samples.jsonl", "job.yaml", "merged/model.safetensors", "merged/config.json"):
        assert (final / name).is_file(), name
    assert (final / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    samples = [json.loads(line) for line in (final / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and all("Zorg" in s["prompt"] for s in samples)
    assert sum("teal" in s["generation"] for s in samples) >= 1, samples  # it learned the answer
    history = json.loads((final / "trainer_state.json").read_text())["log_history"]
    assert any("eval_loss" in h for h in history)

    # checkpoints: complete, rotated after their successor was complete, uploaded with the manifest
    kept = checkpoints(out / "checkpoints")
    assert [p.name for p in kept] == [f"checkpoint-{STEPS - 2}", f"checkpoint-{STEPS}"]
    assert all(is_complete(p) for p in kept)
    bucket = root / "bucket" / "trainer-test"
    assert is_complete(bucket / "checkpoints" / f"checkpoint-{STEPS}") and is_complete(bucket / "final")
    assert (bucket / "checkpoints" / "checkpoint-2" / "manifest.json").is_file()  # uploaded before rotation

    # the merged model is an ordinary model that loads without peft
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(final / "merged")
    assert type(merged).__name__ == "LlamaForCausalLM"


@pytest.mark.slow
def test_manifest_catches_corruption(lora_run):
    root, _ = lora_run
    final = root / "out" / "final"
    assert verify(final) == []
    adapter = final / "adapter_model.safetensors"
    data = bytearray(adapter.read_bytes())
    data[len(data) // 2] ^= 0xFF
    adapter.write_bytes(bytes(data))
    problems = verify(final)
    assert len(problems) == 1 and "adapter_model.safetensors: sha256 mismatch" in problems[0]

    ckpt = latest_complete(root / "out" / "checkpoints")
    (ckpt / "optimizer.pt").write_bytes(b"truncated")
    assert latest_complete(root / "out" / "checkpoints") != ckpt  # a resume would skip it


@pytest.mark.slow
def test_sigterm_then_resume_follows_the_same_loss_curve(lora_run, tmp_path, smollm2_dir, fruit_data):
    """Stop mid-run with a real SIGTERM, restart, and the losses after the resume match the
    uninterrupted run; W&B (offline) keeps one run id across both processes."""
    root, _ = lora_run
    reference = losses(root / "out" / "final" / "trainer_state.json")
    job = write_job(tmp_path / "job.yaml", smollm2_dir, lora={"merge": True},
                    train={"max_steps": STEPS, "report_to": "wandb", "wandb_project": "trainer-test"})
    out = tmp_path / "out"
    env = trainer_env(WANDB_MODE="offline")
    env.pop("WANDB_API_KEY", None)
    cmd = [sys.executable, "-m", "trainers.gpu.train", str(job), "--data", str(fruit_data), "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "step 1/" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=600)
    log = "".join(seen) + rest
    assert proc.returncode == 75, log[-3000:]
    stopped = json.loads((out / "stopped.json").read_text())["step"]
    assert 1 <= stopped < STEPS, log[-3000:]
    assert is_complete(out / "checkpoints" / f"checkpoint-{stopped}")
    assert not (out / "final").exists()
    run_id = (out / "wandb_run_id").read_text().strip()
    assert (out / "checkpoints" / f"checkpoint-{stopped}" / "wandb_run_id").read_text() == run_id

    res = run_trainer(job, fruit_data, out, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"resuming from {out / 'checkpoints' / f'checkpoint-{stopped}'} (step {stopped})" in res.stdout
    resumed = losses(out / "final" / "trainer_state.json")
    after = [s for s in range(stopped + 1, STEPS + 1)]
    assert after, "the stop came too late to test the resume"
    for s in after:
        assert resumed[s] == pytest.approx(reference[s], rel=1e-3, abs=1e-4), (s, resumed, reference)
    for s in range(1, stopped + 1):  # the history before the stop comes back from the checkpoint
        assert resumed[s] == pytest.approx(reference[s], rel=1e-3, abs=1e-4)

    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(f"-{run_id}") for r in runs), runs


@pytest.mark.slow
def test_full_finetune_learns(tmp_path, smollm2_dir, fruit_data):
    job = write_job(tmp_path / "job.yaml", smollm2_dir, method="full",
                    train={"learning_rate": 1e-4, "max_steps": 4, "save_steps": 4, "do_eval": False,
                           "sample_prompts": 0, "optim": "adamw_torch_fused",
                           "gradient_checkpointing": True})
    res = run_trainer(job, fruit_data, tmp_path / "out")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    final = tmp_path / "out" / "final"
    loss = losses(final / "trainer_state.json")
    assert loss[4] < 0.7 * loss[1], loss
    assert (final / "model.safetensors").is_file() and not (final / "adapter_config.json").exists()
    assert is_complete(final) and is_complete(tmp_path / "out" / "checkpoints" / "checkpoint-4")
    # a finished run started again does nothing and says so
    again = run_trainer(job, fruit_data, tmp_path / "out")
    assert again.returncode == 0 and "complete already" in again.stdout


@pytest.mark.slow
def test_gpu_bench_runs_tiny_on_cpu(tmp_path):
    """The GPU benchmark script is ready for a lent GPU: its --tiny mode runs the whole path on the CPU."""
    res = subprocess.run([sys.executable, "bench/gpu/bench_gpu.py", "--tiny", "--json", str(tmp_path / "r.json")],
                         cwd=REPO, env=trainer_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [(r["method"], r["layout"]) for r in results] == [
        (m, k) for m in ("lora", "full") for k in ("guide", "max", "packed_nomask", "packed")]
    assert all(r["useful_tokens_per_s"] > 0 for r in results)


# -- a finished run or a checkpoint meets a job with other settings -------------------------------

@pytest.fixture(scope="module")
def one_step_lora(tmp_path_factory, smollm2_dir, fruit_data):
    """The shortest LoRA run that leaves both a checkpoint and a final model."""
    root = tmp_path_factory.mktemp("one-step")
    job = write_job(root / "job.yaml", smollm2_dir, train={"max_steps": 1, "save_steps": 1, "do_eval": False,
                                                           "sample_prompts": 0})
    res = run_trainer(job, fruit_data, root / "out")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return job, root / "out"


@pytest.mark.slow
def test_finished_run_with_other_training_settings_is_refused(one_step_lora, fruit_data):
    job, out = one_step_lora
    same = run_trainer(job, fruit_data, out, "train.logging_steps=5")  # how it is watched: still the same run
    assert same.returncode == 0 and "nothing to do (`launcher submit --fresh` to train again)" in same.stdout, same.stderr
    for sets, named in ((["method=full"], "method (lora -> full)"), (["train.max_steps=2"], "train.max_steps (1 -> 2)")):
        res = run_trainer(job, fruit_data, out, *sets)
        assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and named in errors[0] and "launcher submit --fresh" in errors[0], res.stderr
        assert "nothing to do" not in res.stdout
    # the finished run is left as it was
    assert is_complete(out / "final") and load_spec(out / "final" / "job.yaml").method == "lora"


@pytest.mark.slow
def test_resuming_a_checkpoint_of_the_other_method_is_refused(one_step_lora, tmp_path, fruit_data):
    import shutil

    job, done = one_step_lora
    out = tmp_path / "out"
    shutil.copytree(done / "checkpoints", out / "checkpoints")  # a LoRA run stopped before its final model
    res = run_trainer(job, fruit_data, out, "method=full")
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1] == ("error: checkpoint-1 was saved by a lora run; this job is full: "
                                                   "submit --fresh to start over (or keep method: lora)")


def test_full_checkpoint_is_refused_for_a_lora_job(tmp_path):
    from trainers.gpu.train import InputError, check_resume_method

    ckpt = tmp_path / "checkpoint-4"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"")
    check_resume_method(ckpt, load_spec(None, [("method", "full")], data={}))
    for method in ("lora", "qlora"):
        with pytest.raises(InputError, match=f"^checkpoint-4 was saved by a full run; this job is {method}: "
                                             r"submit --fresh to start over \(or keep method: full\)$"):
            check_resume_method(ckpt, load_spec(None, [("method", method)], data={}))
