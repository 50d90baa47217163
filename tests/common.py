"""What many tests share: the repository root and writing a job file from a base and overrides.
(Fixtures live in conftest.py files; plain helpers that tests import live here and in services.py.)"""
from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def merged(base: dict, **sections) -> dict:
    """`base` with `sections` laid over it: a dict section updates the base's, anything else replaces it."""
    job = copy.deepcopy(base)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(job.get(key), dict):
            job[key].update(value)
        else:
            job[key] = value
    return job


def write_job(path: Path, base: dict, **sections) -> Path:
    """Write `base` with `sections` over it as PATH (a job file), and return PATH."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(merged(base, **sections), sort_keys=False))
    return path


def quickstart_copy(dst: Path, **sections) -> Path:
    """The quickstart (its data and job file) copied into DST, with `sections` over its job file
    (without any, the job file is copied as it is, comments and all)."""
    src = REPO / "examples" / "quickstart"
    shutil.copytree(src / "data", dst / "data", dirs_exist_ok=True)
    if not sections:
        return Path(shutil.copy(src / "job.yaml", dst / "job.yaml"))
    return write_job(dst / "job.yaml", yaml.safe_load((src / "job.yaml").read_text()), **sections)


def loaded_by(module: str, candidates: tuple[str, ...]) -> list[str]:
    """Which of `candidates` importing `module` loads, in a fresh process (a start-up cost test)."""
    code = f"import sys, {module}; print(sorted(m for m in {candidates!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    return eval(out)  # a list literal printed by the child
