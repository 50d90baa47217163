"""The command line that starts the GPU trainer on this machine: plain python, or accelerate launch.

One process (one GPU, or the CPU) needs no launcher. Several processes, or several nodes, run
under `accelerate launch`, one process per GPU; SkyPilot tells each node who it is through its
environment: SKYPILOT_NODE_RANK, SKYPILOT_NODE_IPS (one per line, the head node first),
SKYPILOT_NUM_NODES and SKYPILOT_NUM_GPUS_PER_NODE. DDP is the default across processes; FSDP
(`train.fsdp`) is configured by the trainer itself through TrainingArguments, so the launch line
is the same for both.

The launch line is the same on GPUs and on CPUs: a node without GPUs runs one process, or
`resources.processes_per_node` of them (to try a multi-process job on a laptop). Which device and
which collective backend (nccl or gloo) a process uses is decided in the trainer alone
(train.training_kwargs), from whether it sees CUDA.

Standard library and the ground floor only: the entry command calls `command()` before anything
heavy is imported.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from launcher.errors import EXIT_STOPPED
from launcher.spec import write_resolved

MAIN_PROCESS_PORT = 29500  # torch's default; MASTER_PORT in the node's environment overrides it


def gpus_per_node(env) -> int:
    """GPUs this node should use: SkyPilot's count, else CUDA_VISIBLE_DEVICES, else nvidia-smi."""
    if env.get("SKYPILOT_NUM_GPUS_PER_NODE"):
        return int(env["SKYPILOT_NUM_GPUS_PER_NODE"])
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return 0
        return sum(1 for line in out.splitlines() if line.startswith("GPU "))
    return 0


def processes_per_node(env, asked: int | None = None) -> int:
    """Training processes on this node: as asked (resources.processes_per_node), else one per GPU,
    else one (a CPU node still takes part in a multi-node job)."""
    return asked or max(1, gpus_per_node(env))


def command(spec, data_dir, out_dir, env) -> list[str]:
    """argv for the trainer on this node. `spec` is a JobSpec (or the path of a job file)."""
    out_dir = Path(out_dir)
    asked = None
    if isinstance(spec, (str, Path)):
        job = Path(spec)
    else:
        job = write_resolved(spec, out_dir, keep=True)
        asked = spec.resources.processes_per_node
    trainer = ["-m", "trainers.gpu.train", str(job), "--data", str(data_dir), "--out", str(out_dir)]

    nodes = int(env.get("SKYPILOT_NUM_NODES") or 1)
    per_node = processes_per_node(env, asked)
    if nodes * per_node <= 1:
        return [sys.executable, *trainer]

    # --multi_gpu is accelerate's name for its torchrun launcher (one process per device, any
    # device); its other choice, --cpu, starts a single process. Each process then picks CPU or
    # GPU, gloo or nccl, by itself.
    launch = [sys.executable, "-m", "accelerate.commands.launch",
              "--multi_gpu",
              "--num_processes", str(nodes * per_node),  # accelerate counts processes over all machines
              "--num_machines", str(nodes),
              "--mixed_precision", "no",  # the trainer sets bf16/fp16 itself from train.precision
              "--dynamo_backend", "no",
              "--main_process_port", str(int(env.get("MASTER_PORT") or MAIN_PROCESS_PORT))]
    if nodes > 1:
        ips = [ip.strip() for ip in env.get("SKYPILOT_NODE_IPS", "").split() if ip.strip()]
        if not ips:
            raise ValueError("SKYPILOT_NUM_NODES > 1 but SKYPILOT_NODE_IPS is empty: cannot find the head node")
        launch += ["--machine_rank", str(int(env.get("SKYPILOT_NODE_RANK") or 0)),
                   "--main_process_ip", ips[0]]
    return [*launch, "--module", *trainer[1:]]


def exit_code(returncode: int, out_dir) -> int:
    """The trainer's exit code as the entry command should report it.

    Under accelerate launch a worker's 75 (stopped after a checkpoint) comes back from the
    launcher as a generic failure; the trainer's OUT/stopped.json says what really happened.
    """
    if returncode in (0, EXIT_STOPPED):
        return returncode
    marker = Path(out_dir) / "stopped.json"
    try:
        json.loads(marker.read_text())
        return EXIT_STOPPED
    except (OSError, ValueError):
        return returncode
