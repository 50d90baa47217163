"""Helpers for the TPU trainer's tests: where EasyLM is, a cut-down SmolLM2, prepared data."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from trainers.tpu.convert import TOKENIZER_FILES

EASYLM_DIR = os.environ.get("EASYLM_DIR")
EASYLM_PYTHON = os.environ.get("EASYLM_PYTHON") or sys.executable
from common import REPO

CONFIGS = REPO / "tests" / "fixtures" / "model_configs"


def hub_job(model: str, tpu_type: str):
    """A full fine-tune of a hub model as a user writes it: the spec's defaults for `train:`."""
    from launcher.spec import JobSpec

    return JobSpec.model_validate({"name": "ft", "method": "full", "model": model,
                                   "data": {"format": "input_output", "max_length": 2048},
                                   "resources": {"cloud": "gcp", "accelerators": f"tpu-{tpu_type}"}})


def xla_mirror(argv: list[str], devices: int, parts: list[str], settings: dict | None = None) -> dict:
    """xla_llama.py's answer for EasyLM's flags `argv` on `devices` simulated CPU devices (XLA_FLAGS
    must be set before JAX starts, hence a process of its own): {part: result} for each of `parts`."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    job = {"flags": argv, "parts": parts, "settings": settings or {}}
    r = subprocess.run([sys.executable, str(Path(__file__).with_name("xla_llama.py"))], input=json.dumps(job),
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def easylm_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), EASYLM_DIR) if p)
    env["JAX_PLATFORMS"] = "cpu"
    return env


def easylm_import_error() -> str | None:
    """None when EasyLM imports with EASYLM_PYTHON and EASYLM_DIR; else why not."""
    if not EASYLM_DIR:
        return "EASYLM_DIR is not set"
    r = subprocess.run([EASYLM_PYTHON, "-c", "import EasyLM.models.llama.llama_train"], env=easylm_env(),
                       capture_output=True, text=True, timeout=300)
    return None if r.returncode == 0 else r.stderr.strip().splitlines()[-1]


def cut_model(src: Path, dst: Path, layers: int) -> Path:
    """A copy of a HF LLaMA folder with only its first `layers` decoder layers."""
    from safetensors.numpy import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    tensors = load_file(str(src / "model.safetensors"))
    keep = {k: v for k, v in tensors.items()
            if not k.startswith("model.layers.") or int(k.split(".")[2]) < layers}
    save_file(keep, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    cfg["num_hidden_layers"] = layers
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    return dst


COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
THINGS = ["apple", "sky", "grass", "sun", "grape", "carrot", "coal", "snow"]


def write_prepared(folder: Path, n_train: int = 48, n_val: int = 4) -> Path:
    """A prepared data folder as data prep leaves it: supervised train.jsonl and val.jsonl."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        with open(folder / f"{split}.jsonl", "w") as f:
            for i in range(n):
                t, c = THINGS[i % 8], COLORS[i % 8]
                f.write(json.dumps({"input": f"Question: what color is the {t}? Answer:",
                                    "output": f" The {t} is {c}."}) + "\n")
    return folder
