"""Helpers for the GPU-trainer tests: a learnable data set in the data-prep contract, job files, and
running the trainer as the real command (a subprocess, as the entry command does)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


import common
from common import REPO
FRUITS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "melon", "peach", "pear", "plum",
          "kiwi", "lime", "fig", "date", "guava", "papaya"]


def pack(examples: list[tuple[list[int], list[int]]], max_len: int) -> list[dict]:
    """Greedy packing into rows of at most max_len tokens, as data prep does (the contract's columns)."""
    rows, cur = [], {"input_ids": [], "attention_mask": [], "labels": [], "position_ids": []}
    for prompt, answer in examples:
        ids = prompt + answer
        if cur["input_ids"] and len(cur["input_ids"]) + len(ids) > max_len:
            rows.append(cur)
            cur = {"input_ids": [], "attention_mask": [], "labels": [], "position_ids": []}
        cur["input_ids"] += ids
        cur["attention_mask"] += [1] * len(ids)
        cur["labels"] += [-100] * len(prompt) + answer
        cur["position_ids"] += list(range(len(ids)))
    rows.append(cur)
    return rows


def fruit_examples(tokenizer, n: int, offset: int = 0) -> list[tuple[list[int], list[int]]]:
    out = []
    for i in range(offset, offset + n):
        fruit = FRUITS[i % len(FRUITS)]
        prompt = tokenizer(f"Q: what colour is a {fruit} on planet Zorg?\nA:")["input_ids"]
        answer = tokenizer(f" On Zorg every {fruit} is bright teal.")["input_ids"] + [tokenizer.eos_token_id]
        out.append((prompt, answer))
    return out


def write_job(path: Path, model: Path | str, **sections) -> Path:
    """A job file for a short CPU run; `sections` override, e.g. train={"max_steps": 4}."""
    job = {
        "name": "trainer-test",
        "model": str(model),
        "method": "lora",
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "train": {
            "per_device_train_batch_size": 2, "per_device_eval_batch_size": 4, "gradient_accumulation_steps": 1,
            "learning_rate": 2e-3, "lr_scheduler_type": "constant", "warmup_steps": 0, "max_steps": 8,
            "eval_steps": 3, "save_steps": 2, "save_total_limit": 2, "logging_steps": 1,
            "dataloader_num_workers": 0, "optim": "adamw_torch", "sample_prompts": 2, "sample_max_new_tokens": 12,
        },
    }
    return common.write_job(path, job, **sections)


def trainer_env(**extra) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2", **extra}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_trainer(job: Path, data: Path, out: Path, *sets: str, env=None, timeout=600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "trainers.gpu.train", str(job), "--data", str(data), "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.run(cmd, cwd=REPO, env=env or trainer_env(), capture_output=True, text=True, timeout=timeout)
