"""Regenerate images/gpu/requirements.txt: the `gpu` extra resolved to exact pins.

The GPU image installs these pins before it copies our code, so a code change never reinstalls
them. They are resolved with pip's own resolver (`pip install --dry-run --report`), constrained to
what the trainer environment that the tests use has installed, so the image runs the versions
that were tested. torch is pinned without a local label: PyPI's wheel of that version is the CUDA
build on Linux, and a local wheelhouse may hold the CPU build instead (the tests do).

    python images/pin.py [--constraints FREEZE.txt]     # run with the trainer venv's python
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Not held to the trainer venv's version: its release there needs Python >= 3.11.5 (bookworm has 3.11.2).
LOOSE = {"soupsieve"}
# setuptools builds our own package inside the image (pip install --no-build-isolation).
EXTRA = ["setuptools"]


def gpu_requirements() -> list[str]:
    """The gpu extra's requirements with our own extras expanded (pip cannot resolve a source tree from wheels only)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras, out, todo = project["optional-dependencies"], list(project["dependencies"]), ["gpu"]
    while todo:
        for req in extras[todo.pop()]:
            m = re.match(r"llm-launcher\[(\w+)\]", req)
            if m:
                todo.append(m.group(1))
            else:
                out.append(req)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--constraints", help="pip freeze output to resolve within (default: this python's own)")
    ap.add_argument("--out", default=str(ROOT / "images/gpu/requirements.txt"))
    ap.add_argument("--python-version", default="3.11.2")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        freeze = Path(args.constraints) if args.constraints else None
        if freeze is None:
            text = subprocess.run([sys.executable, "-m", "pip", "freeze"], check=True, capture_output=True, text=True).stdout
            freeze = Path(tmp) / "freeze.txt"
            freeze.write_text(text)
        # Constraints cannot name editable installs, local labels or ourselves.
        lines = [re.sub(r"\+[\w.]+$", "", ln) for ln in freeze.read_text().splitlines()
                 if ln and not ln.startswith(("-e", "#")) and not ln.lower().startswith("llm-launcher")
                 and ln.split("==")[0].lower() not in LOOSE]
        cons = Path(tmp) / "constraints.txt"
        cons.write_text("\n".join(lines) + "\n")
        report = Path(tmp) / "report.json"
        env = {**os.environ, "PIP_CONSTRAINT": ""}
        # Resolved for the oldest Python an image may have (Debian bookworm's 3.11.2), from wheels
        # only: a pin that needs a newer Python or a compiler would break the image build.
        subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
                        "--target", str(Path(tmp) / "target"), "--only-binary=:all:",
                        "--python-version", args.python_version, "--implementation", "cp",
                        *[f"--platform=manylinux_2_{v}_x86_64" for v in (36, 35, 34, 28, 27, 26, 24, 17, 12, 5)],
                        "-c", str(cons), *gpu_requirements(), *EXTRA],
                       check=True, env=env)
        installs = json.loads(report.read_text())["install"]
    pins = sorted({(i["metadata"]["name"].lower(), re.sub(r"\+.*$", "", i["metadata"]["version"])) for i in installs})
    header = ("# The GPU image's dependencies: the gpu extra of pyproject.toml,\n"
              "# resolved by images/pin.py. Installed before our code is copied (see images/gpu/Dockerfile).\n")
    Path(args.out).write_text(header + "".join(f"{n}=={v}\n" for n, v in pins))
    print(f"{args.out}: {len(pins)} pins")


if __name__ == "__main__":
    main()
