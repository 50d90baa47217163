"""Bring a job's complete checkpoints to the user's machine: from its bucket, over rsync, or locally.

`launcher sync JOB` ends here, through the job's backend. Three routes, one set of guarantees:
- `sync_bucket(url)`: the job's bucket folder (S3, GCS), where the trainer uploads each checkpoint
  after saving it; survives preemption and teardown.
- `sync_rsync(host, remote_dir)`: the run folder on the cluster itself, over SkyPilot's ssh alias,
  for jobs without a bucket.
- `sync_local(src_dir)`: a `--cloud local` run folder, copied elsewhere.

The guarantees: only complete checkpoints (a `manifest.json`, written last by the trainer) are
copied; only files not already here and verified are fetched; every file is checked against the
manifest's sha256 before it takes its real name (until then it is `NAME.tmp`, or sits in the
`.sync/` staging folder for rsync), so an interrupted sync resumes where it stopped; a file that
fails the check is fetched once more, then reported by name; the manifest is written here last,
so a half-copied checkpoint never looks complete. The local layout mirrors the run folder:
`TO/checkpoints/checkpoint-N/`, `TO/final/`.

`watch=True` polls until `done()` (a callable from the backend) says the job ended, then syncs a
last time.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from launcher.errors import BackendError
from launcher.manifest import MANIFEST, sha256_file
from launcher.storage import Store, StorageError, open_store

STAGING = ".sync"  # rsync's staging folder inside TO; removed after a clean pass


@dataclass
class SyncResult:
    copied: list[str]
    skipped: int
    checkpoints: list[str]  # complete, verified checkpoints now present locally


class SyncError(BackendError):
    """A sync that could not finish; `result` holds what did arrive and verify."""

    def __init__(self, message: str, result: SyncResult | None = None):
        super().__init__(message)
        self.result = result


@dataclass
class _Unit:
    """One checkpoint folder (`checkpoints/checkpoint-N` or `final`) and what it still needs."""
    path: str
    manifest_bytes: bytes
    files: dict  # rel -> {"size", "sha256"} from the manifest
    todo: list  # rels still to fetch


OWNER = ".launcher-job"  # in a sync destination: the id of the job whose run it holds


def claim(to: str | Path, job_id: str) -> None:
    """Make `to` the home of job `job_id`'s run, or refuse when it holds another run.

    Two jobs of one name share the default `runs/<name>`; a second sync there would replace the
    first run's final/ and mix their checkpoints. A folder with no record but with a run in it
    (checkpoints/ or final/) is refused too: whose it is cannot be told.
    """
    to = Path(to)
    marker = to / OWNER
    owner = marker.read_text().strip() if marker.is_file() else None
    if owner == job_id:
        return
    held = owner or ((to / "final").exists() or any((to / "checkpoints").glob("checkpoint-*")))
    if held:
        whose = f"job {owner}'s run" if owner else "another run"
        raise SyncError(f"{to} holds {whose}; sync job {job_id} elsewhere with `launcher sync {job_id} --to "
                        f"{to}-{job_id.rsplit('-', 1)[-1]}` (or move that folder away)")
    to.mkdir(parents=True, exist_ok=True)
    marker.write_text(job_id + "\n")


def hand_over(to: str | Path, job_id: str) -> None:
    """Make `to` the home of job `job_id`, which continues the run there (it resumes from the
    checkpoints in it): its own checkpoints come home beside them."""
    to = Path(to)
    to.mkdir(parents=True, exist_ok=True)
    (to / OWNER).write_text(job_id + "\n")


# -- the three routes ---------------------------------------------------------------------------

def sync_bucket(url: str, to: str | Path, *, watch: bool = False, done: Callable[[], bool] | None = None,
                interval: float = 30.0, progress: bool = True) -> SyncResult:
    """Copy the complete checkpoints under a bucket folder (`s3://b/job`, `gs://b/job`) into `to`."""
    store = _open(url)
    return _repeat(lambda: _sync_store(store, Path(to), progress), watch, done, interval)


def sync_local(src_dir: str | Path, to: str | Path, *, watch: bool = False, done: Callable[[], bool] | None = None,
               interval: float = 5.0, progress: bool = True, job_id: str | None = None) -> SyncResult:
    """Copy the complete checkpoints of a local run folder into `to` (claimed for `job_id`)."""
    src, to = Path(src_dir), Path(to)
    if to.resolve() == src.resolve() or src.resolve() in to.resolve().parents:
        raise SyncError(f"--to {to}: that is inside the run folder {src}; choose a folder outside it")
    if job_id:
        claim(to, job_id)
    store = _open(str(src))
    return _repeat(lambda: _sync_store(store, to, progress), watch, done, interval)


def sync_run_folder(src: Path, to: Path, job_id: str | None = None) -> SyncResult:
    """A local job's run folder: already here, so only verify and list its complete checkpoints,
    or copy them (verified) when `to` is another folder. Either way a checkpoint whose files do not
    match its manifest is not listed, and is named in the SyncError."""
    from launcher import manifest

    if to.resolve() == src.resolve():
        done, problems = [], []
        units = [p for p in manifest.checkpoints(src / "checkpoints") if manifest.read_manifest(p) is not None]
        if manifest.read_manifest(src / "final") is not None:
            units.append(src / "final")
        for unit in units:
            bad = manifest.verify(unit)
            if bad:
                more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
                problems.append(f"{bad[0]}{more}; checkpoint {unit.name} does not verify")
            else:
                done.append(str(unit))
        result = SyncResult(copied=[], skipped=0, checkpoints=done)
        if problems:
            raise SyncError("; ".join(problems), result)
        return result
    return sync_local(src, to, job_id=job_id)


def sync_rsync(host: str, remote_dir: str, to: str | Path, *, ssh_config: str | Path | None = None,
               watch: bool = False, done: Callable[[], bool] | None = None, interval: float = 30.0,
               progress: bool = True) -> SyncResult:
    """Copy the complete checkpoints of the run folder `remote_dir` on `host` (an ssh alias) into `to`."""
    if shutil.which("rsync") is None:
        raise SyncError("rsync is not installed on this machine (apt install rsync / brew install rsync)")
    ssh = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20"]
    if ssh_config:
        ssh += ["-F", str(ssh_config)]
    # rsync takes a remote path relative to the login's home; a leading ~/ is not expanded
    # everywhere (not with --files-from), so it is dropped.
    if remote_dir in ("~", "~/"):
        remote_dir = "."
    elif remote_dir.startswith("~/"):
        remote_dir = remote_dir[2:]
    remote = _Rsync(host, remote_dir.rstrip("/") or "/", shlex.join(ssh))
    return _repeat(lambda: _sync_rsync_once(remote, Path(to), progress), watch, done, interval)


def _open(url: str) -> Store:
    try:
        return open_store(url)
    except StorageError as e:
        raise SyncError(str(e)) from None


def _repeat(once: Callable[[], SyncResult], watch: bool, done: Callable[[], bool] | None,
            interval: float) -> SyncResult:
    if not watch:
        return _once(once)
    if done is None:
        raise ValueError("watch=True needs done=, a callable that says whether the job has ended")
    total: SyncResult | None = None

    def add(r: SyncResult) -> None:  # files copied add up; skipped counts what was here at the start
        nonlocal total
        if total is None:
            total = SyncResult(list(r.copied), r.skipped, list(r.checkpoints))
        else:
            total.copied += r.copied
            total.checkpoints = list(r.checkpoints)

    while True:
        ended = done()  # asked before the pass, so the pass after the end is the last one
        try:
            add(_once(once))
        except SyncError as e:
            if e.result is not None:
                add(e.result)
            if ended:
                e.result = total
                raise
            # While the job runs, a failed pass (a node being replaced, a file not there yet) is
            # retried at the next poll; only the last pass decides.
            print(f"sync: {e} (retrying in {interval:g}s)", file=sys.stderr)
        else:
            if ended:
                return total
        time.sleep(interval)


def _once(once: Callable[[], SyncResult]) -> SyncResult:
    try:
        return once()
    except StorageError as e:  # no credentials, no bucket, unreachable: one line for the CLI
        raise SyncError(str(e)) from None


# -- bucket and local folder ---------------------------------------------------------------------

def _sync_store(store: Store, to: Path, progress: bool) -> SyncResult:
    def manifest(path: str) -> bytes | None:
        try:
            return store.read_bytes(_join(path, MANIFEST))
        except FileNotFoundError:
            return None  # rotated away between the listing and now

    units, result, problems = _plan_all(store.list(), manifest, to, lambda p: _join(store.url, p, MANIFEST))
    total = sum(u.files[rel]["size"] for u in units for rel in u.todo)
    with _bar(progress and total > 0, total, store.url) as advance:
        for unit in units:
            local, complete = to / unit.path, True
            for rel in unit.todo:  # a bad file does not stop the others: the next run has less to do
                try:
                    _fetch(store, _join(unit.path, rel), local / rel, unit.files[rel], advance)
                except FileNotFoundError:
                    if not _still_there(store, unit):
                        if unit.path:
                            shutil.rmtree(local, ignore_errors=True)  # rotated away mid-copy: drop it
                        complete = False
                        break
                    problems.append(f"{_join(store.url, unit.path, rel)}: listed in its manifest but missing")
                    complete = False
                    continue
                except _Corrupt as e:
                    problems.append(f"{_join(store.url, unit.path, rel)}: {e} (fetched twice); "
                                    f"checkpoint {unit.path or '.'} left incomplete")
                    complete = False
                    continue
                result.copied.append(_join(unit.path, rel))
            if complete:
                _finish(unit, local, result)
    if problems:
        raise SyncError("; ".join(problems), result)
    return result


def _still_there(store: Store, unit: _Unit) -> bool:
    try:
        return store.read_bytes(_join(unit.path, MANIFEST)) == unit.manifest_bytes
    except FileNotFoundError:
        return False


class _Corrupt(Exception):
    pass


def _fetch(store: Store, key: str, dest: Path, meta: dict, advance: Callable[[int], None]) -> None:
    """Download one file into DEST.tmp, resuming a partial copy, and rename it once it verifies."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    for attempt in (1, 2):
        start = tmp.stat().st_size if tmp.exists() else 0
        if start > meta["size"]:
            tmp.unlink()
            start = 0
        advance(start if attempt == 1 else 0)
        h = _sha256_prefix(tmp, start)  # hashed while it arrives: the file is read once, not twice
        with open(tmp, "ab") as f:
            for block in store.read_chunks(key, start):
                f.write(block)
                h.update(block)
                advance(len(block))
            f.flush()
            os.fsync(f.fileno())  # what takes the real name is on disk, not only in the page cache
        size = tmp.stat().st_size
        if size == meta["size"] and h.hexdigest() == meta["sha256"]:
            os.replace(tmp, dest)
            return
        tmp.unlink()  # a bad partial copy or a bad transfer: start over from byte 0
        if attempt == 1:
            advance(-size)
    raise _Corrupt("sha256 does not match its manifest" if size == meta["size"]
                   else f"size {size} != {meta['size']} in its manifest")


def _sha256_prefix(path: Path, n: int):
    h = hashlib.sha256()
    if n:
        with open(path, "rb") as f:
            while n and (block := f.read(min(n, 1 << 20))):
                h.update(block)
                n -= len(block)
    return h


# -- rsync over ssh -------------------------------------------------------------------------------

@dataclass
class _Rsync:
    host: str
    dir: str
    ssh: str  # the -e command

    def run(self, args: list[str], on_bytes: Callable[[int], None] | None = None) -> tuple[int, str]:
        cmd = ["rsync", "-a", "-e", self.ssh, *args]
        if on_bytes is None:
            p = subprocess.run(cmd, capture_output=True, text=True)
            return p.returncode, p.stderr
        # --info=progress2 prints "  1,234,567  45%  ..." lines separated by \r: bytes so far.
        # stderr joins stdout so that neither pipe can fill up and stall rsync.
        p = subprocess.Popen(cmd + ["--info=progress2", "--no-inc-recursive"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
        seen, buf, other = 0, b"", []
        while chunk := p.stdout.read1(4096):
            buf += chunk
            *lines, buf = re.split(rb"[\r\n]", buf)
            for line in lines:
                m = re.match(rb"\s*([\d,]+)\s+\d+%", line)
                if m:
                    now = int(m.group(1).replace(b",", b""))
                    on_bytes(now - seen)
                    seen = now
                elif line.strip():
                    other.append(line.decode(errors="replace"))
        if buf.strip() and not re.match(rb"\s*([\d,]+)\s+\d+%", buf):
            other.append(buf.decode(errors="replace"))
        return p.wait(), "\n".join(other)

    def source(self, sub: str = "") -> str:
        return f"{self.host}:{self.dir}/{sub}"


def _rsync_failed(remote: _Rsync, code: int, err: str) -> SyncError:
    lines = [ln.strip() for ln in err.splitlines() if ln.strip() and not ln.startswith("rsync error")]
    # ssh's own line ("ssh: connect to host ... Connection refused") says more than rsync's echo of
    # it; among rsync's lines the first is the cause, the rest its consequences.
    own = [ln for ln in lines if not ln.startswith("rsync")]
    why = own[-1] if own else lines[0] if lines else f"rsync exit {code}"
    return SyncError(f"rsync from {remote.host}:{remote.dir} failed: {why}")


def _sync_rsync_once(remote: _Rsync, to: Path, progress: bool) -> SyncResult:
    staging = to / STAGING
    manifests = staging / "manifests"
    files_dir = staging / "files"
    # 1. Only the manifests, to learn which checkpoints are complete over there.
    code, err = _fetch_manifests(remote, manifests)
    if code not in (0, 23, 24):  # 23/24: something vanished while listing (a rotated checkpoint)
        raise _rsync_failed(remote, code, err)
    listing = {p.relative_to(manifests).as_posix(): 0 for p in manifests.rglob(MANIFEST)}
    units, result, problems = _plan_all(listing, lambda path: _read(manifests / path / MANIFEST), to,
                                        lambda p: remote.source(_join(p, MANIFEST)))

    # 2. Every missing file of every complete checkpoint, in one rsync, into the staging folder;
    #    --partial-dir keeps an interrupted file so that the next run continues it.
    wanted = [_join(u.path, rel) for u in units for rel in u.todo]
    total = sum(u.files[rel]["size"] for u in units for rel in u.todo)
    if wanted:
        files_dir.mkdir(parents=True, exist_ok=True)
        with _bar(progress, total, f"{remote.host}:{remote.dir}") as advance:
            code, err = _rsync_files(remote, wanted, files_dir, advance)
        if code not in (0, 23, 24):
            raise _rsync_failed(remote, code, err)

    # 3. Verify each staged file and move it to its real name; one more fetch for a bad one.
    refreshed = False
    for unit in units:
        local, complete = to / unit.path, True
        for rel in unit.todo:
            key = _join(unit.path, rel)
            staged, meta = files_dir / key, unit.files[rel]
            ok = _matches(staged, meta)
            if not ok:
                staged.unlink(missing_ok=True)
                _rsync_files(remote, [key], files_dir, lambda n: None)
                ok = _matches(staged, meta)
            if not staged.is_file():
                complete = False
                if not refreshed:  # read the manifests again: was a checkpoint rotated away?
                    _fetch_manifests(remote, manifests)
                    refreshed = True
                if _read(manifests / unit.path / MANIFEST) == unit.manifest_bytes:
                    problems.append(f"{remote.source(key)}: listed in its manifest but missing")
                    continue
                if unit.path:
                    shutil.rmtree(local, ignore_errors=True)  # rotated away mid-copy: drop it
                break
            if not ok:
                staged.unlink()
                problems.append(f"{remote.source(key)}: sha256 does not match its manifest (fetched twice); "
                                f"checkpoint {unit.path or '.'} left incomplete")
                complete = False
                continue
            (local / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, local / rel)
            result.copied.append(key)
        if complete:
            _finish(unit, local, result)
    if problems:
        raise SyncError("; ".join(problems), result)
    shutil.rmtree(staging, ignore_errors=True)
    return result


def _fetch_manifests(remote: _Rsync, into: Path) -> tuple[int, str]:
    into.mkdir(parents=True, exist_ok=True)
    return remote.run(["-m", "--delete", "--include=*/", f"--include={MANIFEST}", "--exclude=*",
                       remote.source(), f"{into}/"])


def _rsync_files(remote: _Rsync, rels: list[str], into: Path, advance: Callable[[int], None]) -> tuple[int, str]:
    listing = into.parent / "files-from.txt"
    listing.write_text("".join(r + "\n" for r in rels))
    return remote.run([f"--files-from={listing}", "--partial-dir=.rsync-partial", remote.source(), f"{into}/"],
                      on_bytes=advance)


def _read(p: Path) -> bytes | None:
    try:
        return p.read_bytes()
    except FileNotFoundError:
        return None


# -- shared pieces ----------------------------------------------------------------------------------

def _join(*parts: str) -> str:
    joined = "/".join(p.strip("/") for p in parts if p and p.strip("/"))
    # A local run folder's absolute path keeps its leading / (error messages name real paths).
    return "/" + joined if parts and parts[0].startswith("/") else joined


def _unit_paths(listing: dict[str, int]) -> list[str]:
    """Folders that hold a manifest (complete checkpoints), checkpoints by step, then the rest."""
    paths = [str(PurePosixPath(rel).parent) for rel in listing if PurePosixPath(rel).name == MANIFEST]
    paths = ["" if p == "." else p for p in paths]

    def order(p: str):
        m = re.search(r"checkpoint-(\d+)$", p)
        return (0, int(m.group(1)), p) if m else (1, 0, p)
    return sorted(paths, key=order)


def _plan_all(listing: dict[str, int], manifest: Callable[[str], bytes | None], to: Path,
              where: Callable[[str], str]) -> tuple[list[_Unit], SyncResult, list[str]]:
    """Every complete checkpoint in a listing, and what of each is still to fetch."""
    units, skipped, problems = [], 0, []
    for path in _unit_paths(listing):
        raw = manifest(path)
        if raw is None:
            continue
        unit = _plan(path, raw, to)
        if unit is None:
            problems.append(f"{where(path)}: not a valid manifest")
            continue
        skipped += len(unit.files) - len(unit.todo)
        units.append(unit)
    return units, SyncResult(copied=[], skipped=skipped, checkpoints=[]), problems


def _plan(path: str, raw: bytes, to: Path) -> _Unit | None:
    """What of a checkpoint is still to fetch; None when its manifest is unusable."""
    try:
        files = json.loads(raw)["files"]
        files = {rel: {"size": int(m["size"]), "sha256": str(m["sha256"])} for rel, m in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    for rel in files:  # a manifest never writes outside its own folder
        parts = PurePosixPath(rel).parts
        if not parts or PurePosixPath(rel).is_absolute() or ".." in parts or rel.endswith(".tmp"):
            return None
    local = to / path
    # Complete here already: its files were verified on arrival. That each is still there at its
    # size is checked again (a stat, not a hash: a watch loop goes over every checkpoint each time).
    if _read(local / MANIFEST) == raw and all(_size(local / rel) == meta["size"] for rel, meta in files.items()):
        return _Unit(path, raw, files, [])
    # A different or missing local manifest: the folder is not complete until every file checks.
    (local / MANIFEST).unlink(missing_ok=True)
    todo = [rel for rel, meta in files.items() if not _matches(local / rel, meta)]
    return _Unit(path, raw, files, todo)


def _size(p: Path) -> int | None:
    try:
        return p.stat().st_size
    except OSError:
        return None


def _matches(p: Path, meta: dict) -> bool:
    try:
        return p.stat().st_size == meta["size"] and sha256_file(p) == meta["sha256"]
    except FileNotFoundError:
        return False


def _finish(unit: _Unit, local: Path, result: SyncResult) -> None:
    """Every file verified: write the manifest, last and atomically, which makes it complete.

    Files the manifest does not list (left from an earlier save of the same checkpoint, stale
    partial copies) go first, so the folder is exactly what the trainer saved.
    """
    result.checkpoints.append(unit.path)
    if (local / MANIFEST).exists():  # it exists only if the checkpoint was complete here already
        return
    local.mkdir(parents=True, exist_ok=True)
    if unit.path:  # a folder of its own, never TO itself
        for p in sorted(local.rglob("*"), reverse=True):
            rel = p.relative_to(local).as_posix()
            if p.is_file() and rel not in unit.files and rel != MANIFEST:
                p.unlink()
            elif p.is_dir() and not any(p.iterdir()):
                p.rmdir()
    tmp = local / (MANIFEST + ".tmp")
    tmp.write_bytes(unit.manifest_bytes)
    os.replace(tmp, local / MANIFEST)


@contextmanager
def _bar(show: bool, total: int, label: str):
    """A rich progress bar over bytes; yields advance(n)."""
    if not show:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)
    with Progress(TextColumn("[bold]sync[/] {task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True)) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


__all__ = ["sync_bucket", "sync_rsync", "sync_local", "SyncError", "SyncResult", "StorageError"]
