"""Checkpoint manifests: what makes a checkpoint "complete" everywhere in the tool.

The trainer writes `manifest.json` into a checkpoint folder *last*, after every other file is
closed: it lists each file's relative path, size and sha256. A checkpoint is complete exactly when
its manifest exists and every listed file matches. Sync copies the manifest last too, so a
half-copied checkpoint never looks complete on the user's machine.

Standard library only: the trainers import this module.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST = "manifest.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: str | Path, extra: dict | None = None) -> dict:
    """Hash every file under `folder` (except the manifest) and write the manifest atomically."""
    folder = Path(folder)
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST and not p.name.endswith(".tmp"):
            rel = p.relative_to(folder).as_posix()
            files[rel] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    manifest = {"version": 1, "files": files, **(extra or {})}
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)
    return manifest


def read_manifest(folder: str | Path) -> dict | None:
    p = Path(folder) / MANIFEST
    try:
        return json.loads(p.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def verify(folder: str | Path, manifest: dict | None = None) -> list[str]:
    """Problems with a checkpoint folder, one line each; empty means complete and intact."""
    folder = Path(folder)
    manifest = manifest if manifest is not None else read_manifest(folder)
    if manifest is None:
        return [f"{folder}: no {MANIFEST} (incomplete checkpoint)"]
    problems = []
    for rel, meta in manifest.get("files", {}).items():
        p = folder / rel
        if not p.is_file():
            problems.append(f"{p}: missing")
        elif p.stat().st_size != meta["size"]:
            problems.append(f"{p}: size {p.stat().st_size} != {meta['size']}")
        elif sha256_file(p) != meta["sha256"]:
            problems.append(f"{p}: sha256 mismatch (corrupted)")
    return problems


def is_complete(folder: str | Path) -> bool:
    return not verify(folder)


def checkpoints(output_dir: str | Path) -> list[Path]:
    """checkpoint-N folders under output_dir, oldest first by step."""
    out = Path(output_dir)
    found = [p for p in out.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def latest_complete(output_dir: str | Path) -> Path | None:
    """The newest checkpoint whose manifest verifies; the one to resume from."""
    for p in reversed(checkpoints(output_dir)):
        if read_manifest(p) is not None and is_complete(p):
            return p
    return None
