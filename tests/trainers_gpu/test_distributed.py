"""Several processes and several nodes, run for real with CPU processes and the gloo backend.

The launch line is the one trainers/gpu/launch.py builds for GPUs (accelerate launch, torchrun
underneath); only the device and the collective backend differ. Each run trains the quickstart
model (SmolLM2-135M, LoRA) for a few steps of short rows and is compared with one process on the
same global batch: 2 processes x 2 rows must log the losses of 1 process x 4 rows. Measured on
this machine they agree to about 1e-6 relative; the tests allow 1e-3, far below what a wrong
batch split, a rank that trains alone or a duplicated shard would give (the loss falls by more
than a third from one step to the next here).

`pytest -m distributed` runs exactly these tests.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gpu_trainer_helpers import REPO, run_trainer, trainer_env
from launcher.manifest import checkpoints, is_complete, read_manifest, verify
from launcher.spec import load_spec, parse_set

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

QUICKSTART = REPO / "examples/quickstart/job.yaml"
STEPS = 4
TOLERANCE = dict(rel=1e-3, abs=1e-4)
# The quickstart, made small: short rows, no clustering (no embedding model), no eval, no samples.
SMALL = ["data.max_length=128", "data.cluster.enabled=false", "train.max_steps=4", "train.save_steps=2",
         "train.save_total_limit=null", "train.warmup_steps=0", "train.learning_rate=2e-3", "train.do_eval=false",
         "train.sample_prompts=0", "train.dataloader_num_workers=0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(out: Path) -> dict[int, float]:
    history = json.loads((out / "final" / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def assert_same_losses(got: dict, want: dict, steps) -> None:
    for s in steps:
        assert got[s] == pytest.approx(want[s], **TOLERANCE), (s, got, want)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """The quickstart through the CLI as a user types it, with two CPU processes on this machine."""
    root = tmp_path_factory.mktemp("ddp")
    out = root / "out"
    sets = [*SMALL, "name=qs-ddp", f"outputs.dir={out}", "resources.processes_per_node=2",
            "train.per_device_train_batch_size=2"]
    cmd = [sys.executable, "-m", "launcher.cli", "submit", str(QUICKSTART)]
    for s in sets:
        cmd += ["--set", s]
    # a module fixture runs before the per-test LAUNCHER_HOME: give the CLI its own state folder
    env = trainer_env(MASTER_PORT=str(free_port()), LAUNCHER_HOME=str(root / "home"))
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    log = (out / "logs" / "job.log").read_text() if (out / "logs" / "job.log").exists() else ""
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:] + log[-4000:]
    return out, log


@pytest.fixture(scope="module")
def reference(ddp_run, tmp_path_factory):
    """One process on the same data and the same global batch (4 rows a step)."""
    ddp_out, _ = ddp_run
    out = tmp_path_factory.mktemp("one") / "out"
    res = run_trainer(ddp_out / "job.yaml", ddp_out / "data", out, "resources.processes_per_node=1",
                      "train.per_device_train_batch_size=4", timeout=1500)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out


def test_ddp_two_processes_match_one_process(ddp_run, reference):
    out, log = ddp_run
    # the launch line that ran is accelerate's multi-process one, two workers over gloo
    assert "-m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1" in log, log[-3000:]
    assert_same_losses(losses(out), losses(reference), range(1, STEPS + 1))

    # one writer: both processes' RNG states are in the checkpoint, and the manifest (written by
    # rank 0 after everyone finished writing) covers them and verifies
    for ckpt in checkpoints(out / "checkpoints"):
        files = read_manifest(ckpt)["files"]
        assert {"rng_state_0.pth", "rng_state_1.pth", "adapter_model.safetensors", "optimizer.pt"} <= set(files)
        assert verify(ckpt) == []
    assert is_complete(out / "final")
    assert log.count("final model in") == 1  # rank 1 writes no final of its own


def test_multi_process_checkpoint_resumes_in_one_process(ddp_run, reference, tmp_path):
    """A checkpoint of the two-process run, on a machine with one process: same loss curve after it."""
    ddp_out, _ = ddp_run
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(ddp_out / "checkpoints" / "checkpoint-2", out / "checkpoints" / "checkpoint-2")
    res = run_trainer(ddp_out / "job.yaml", ddp_out / "data", out, "resources.processes_per_node=1",
                      "train.per_device_train_batch_size=4", timeout=1500)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"resuming from {out / 'checkpoints' / 'checkpoint-2'} (step 2)" in res.stdout
    assert_same_losses(losses(out), losses(reference), range(1, STEPS + 1))
    assert is_complete(out / "final")


def test_two_nodes_on_loopback_match_one_process(ddp_run, reference, tmp_path):
    """Two "nodes" on this machine, each told who it is as SkyPilot tells it, each with its own
    run folder (no shared disk), one process each: together they train as one process would."""
    from trainers.gpu.launch import command

    ddp_out, _ = ddp_run
    spec = load_spec(ddp_out / "job.yaml", parse_set([
        "resources.processes_per_node=null", "resources.num_nodes=2", f"outputs.bucket={tmp_path / 'bucket'}"]))
    port = str(free_port())
    procs, outs = [], []
    for rank in (0, 1):
        env = trainer_env(SKYPILOT_NUM_NODES="2", SKYPILOT_NODE_RANK=str(rank), SKYPILOT_NUM_GPUS_PER_NODE="0",
                          SKYPILOT_NODE_IPS="127.0.0.1\n127.0.0.2\n", MASTER_PORT=port, OMP_NUM_THREADS="1")
        out = tmp_path / f"node{rank}"
        cmd = command(spec, ddp_out / "data", out, env)
        assert cmd[cmd.index("--machine_rank") + 1] == str(rank) and cmd[cmd.index("--main_process_ip") + 1] == "127.0.0.1"
        log = open(tmp_path / f"node{rank}.log", "w")
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
        outs.append(out)
    try:
        codes = [p.wait(timeout=1800) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    logs = [(tmp_path / f"node{rank}.log").read_text() for rank in (0, 1)]
    assert codes == [0, 0], "\n".join(f"--- node {r}\n{logs[r][-3000:]}" for r in (0, 1))

    assert_same_losses(losses(outs[0]), losses(reference), range(1, STEPS + 1))
    # Each node keeps its own verifiable copy of every checkpoint and of the final model, with
    # its own process's RNG state, so that each can resume from its own disk.
    for rank, out in enumerate(outs):
        kept = checkpoints(out / "checkpoints")
        assert [p.name for p in kept] == ["checkpoint-2", "checkpoint-4"]
        for ckpt in kept:
            assert verify(ckpt) == [] and f"rng_state_{rank}.pth" in read_manifest(ckpt)["files"]
        assert is_complete(out / "final")
    # ... but only the first process uploads, once per checkpoint and once for the final model
    both = logs[0] + logs[1]
    assert both.count("uploaded checkpoint-2 to") == 1 and both.count("uploaded checkpoint-4 to") == 1
    assert both.count("uploaded final to") == 1 and "uploaded" not in logs[1]
    bucket = tmp_path / "bucket" / spec.name
    assert is_complete(bucket / "checkpoints" / "checkpoint-4") and is_complete(bucket / "final")


def test_fsdp_plan_shards_the_model_and_saves_an_ordinary_checkpoint(tmp_path, smollm2_dir, fruit_data):
    """FSDP across two CPU processes, with the plan the trainer hands accelerate.

    accelerate (1.15) shards only across GPUs: a Trainer on CPU processes would run FSDP as plain
    DDP, so the trainer refuses train.fsdp without CUDA (test_train.py). What can run here is the
    plan itself: our TrainingArguments' FSDP plugin arguments, applied by accelerate's own FSDP2
    preparation to the real model across two gloo processes. Each process must hold half of the
    weights, train as one process would on the same global batch, and the gathered checkpoint must
    load as an ordinary Hugging Face model.
    """
    import torch
    from datasets import load_from_disk
    from transformers import AutoConfig, AutoModelForCausalLM

    from trainers.gpu.data import PackedCollator
    from trainers.gpu.train import build_training_args

    spec = load_spec(None, parse_set(["method=full", "train.fsdp=true", "train.learning_rate=1e-4"]), data={})
    args = build_training_args(spec, tmp_path / "args", precision="fp32", evaluate=False, cuda=False, world_size=1)
    plugin_args = args.fsdp_plugin_args
    assert plugin_args["state_dict_type"] == "FULL_STATE_DICT"  # save_model gathers a whole model
    assert plugin_args["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    steps, global_batch = 2, 4
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"plugin_args": plugin_args, "model": str(smollm2_dir), "data": str(fruit_data / "train"),
                                "steps": steps, "global_batch": global_batch, "lr": spec.train.learning_rate,
                                "out": str(tmp_path)}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(REPO / "tests" / "trainers_gpu" / "fsdp_worker.py"), str(plan)]
    res = subprocess.run(cmd, cwd=REPO, env=trainer_env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
                         timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]

    held = [json.loads((tmp_path / f"shards-{r}.json").read_text()) for r in (0, 1)]
    layers = AutoConfig.from_pretrained(smollm2_dir).num_hidden_layers
    assert held[0]["units"].count("FSDPLlamaDecoderLayer") == layers  # one FSDP unit per decoder layer
    assert held[0]["local"] + held[1]["local"] == held[0]["full"]  # the shards add up to the model...
    assert abs(held[0]["local"] - held[1]["local"]) < 0.01 * held[0]["full"]  # ...half each

    # the same steps in one process, unsharded, on the same global batches
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    model.config.use_cache = False
    rows, collate = load_from_disk(str(fruit_data / "train")), PackedCollator(pad_token_id=0)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.train.learning_rate, weight_decay=0.0)
    want = []
    for step in range(steps):
        loss = model(**collate([rows[i] for i in range(step * global_batch, (step + 1) * global_batch)])).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        want.append(loss.item())
    got = json.loads((tmp_path / "losses.json").read_text())
    assert got == pytest.approx(want, **TOLERANCE) and got[1] < got[0], (got, want)

    # the gathered checkpoint is an ordinary HF model, and it is the trained one
    saved, info = AutoModelForCausalLM.from_pretrained(tmp_path / "model", output_loading_info=True)
    assert type(saved).__name__ == "LlamaForCausalLM" and not info["missing_keys"] and not info["mismatched_keys"]
    probe = collate([rows[i] for i in range(steps * global_batch, steps * global_batch + 4)])
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    with torch.no_grad():
        after, trained, before = (m.eval()(**probe).loss.item() for m in (saved, model, base))
    assert after == pytest.approx(trained, rel=1e-3) and after < before, (after, trained, before)
