"""One owner per run folder, enforced by the filesystem: an exclusive `flock` on OUT/.lock.

Whoever starts a job takes the lock before anything is written into the folder and hands the open
file to the processes that do the work (the local supervisor passes it to the entry command, which
passes it to data prep and the trainer). The lock belongs to the open file, not to a process, so it
is held as long as any of them runs, and the kernel drops it when the last one exits: a crash never
leaves a stale lock, and a trainer orphaned by a killed supervisor still keeps others out.

The folder is the same folder however it is spelled (`runs/../runs/x`, a symlink): the lock is on
the file's inode. The lock file holds the owner's job id, so a refusal can name it.

Standard library only: the entry command imports this inside the images and on cloud machines.
"""
from __future__ import annotations

import errno
import fcntl
import os
import sys
import time
from pathlib import Path

from launcher.errors import LauncherError

LOCK = ".lock"
ENV_FD = "LAUNCHER_LOCK_FD"  # an inherited, already locked descriptor of OUT/.lock
ENV_JOB = "LAUNCHER_JOB_ID"


class FolderBusy(LauncherError):
    """Another job holds the run folder."""

    def __init__(self, folder: Path, owner: str | None):
        self.folder, self.owner = folder, owner
        who = f"job {owner}" if owner else "another job"
        super().__init__(f"{who} is already writing to {folder}; wait for it, stop it"
                         + (f" (`launcher down {owner}`)" if owner else "")
                         + ", or give this one another name (--set name=...)")


def _owner(fd: int) -> str | None:
    # The holder writes its id right after it gets the lock: give it a moment.
    for _ in range(20):
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        if text:
            return text.split()[0]
        time.sleep(0.05)
    return None


def acquire(folder: str | Path, owner: str) -> int:
    """Create FOLDER if needed, lock FOLDER/.lock and write `owner` into it. Returns the open
    descriptor (inheritable by children through pass_fds); raises FolderBusy naming the holder."""
    folder = Path(folder).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            # Some network and FUSE filesystems (a mounted bucket) have no locks: run unguarded
            # rather than not at all, and say so.
            print(f"warning: {folder} cannot be locked ({e.strerror}); nothing stops a second job from "
                  "writing into it at the same time", file=sys.stderr, flush=True)
            return fd
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            os.close(fd)
            raise
        holder = _owner(fd)
        os.close(fd)
        raise FolderBusy(folder, holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{owner} {os.getpid()}\n".encode(), 0)
    return fd


def holder(folder: str | Path) -> str | None:
    """The job id holding FOLDER's lock ("?" when unreadable), or None when nobody holds it."""
    path = Path(folder).expanduser() / LOCK
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        held = _held_per_proc_locks(os.fstat(fd))
        if held is None:  # no /proc: probe with a shared lock, released at once
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                held = False
            except OSError:
                held = True
        return (_owner(fd) or "?") if held else None
    finally:
        os.close(fd)


def _held_per_proc_locks(st) -> bool | None:
    """Whether the kernel lists a flock on this inode, read without touching the lock (taking even
    a shared lock to look would make a concurrent submit fail for a moment)."""
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    return any(line.split()[1:2] == ["FLOCK"] and key in line.split() for line in text.splitlines())


def inherited() -> int | None:
    """The locked descriptor a parent handed down in $LAUNCHER_LOCK_FD, if it is still open."""
    raw = os.environ.get(ENV_FD)
    if not raw or not raw.isdigit():
        return None
    fd = int(raw)
    try:
        os.fstat(fd)
    except OSError:
        return None
    return fd


def set_aside(folder: str | Path, owner: str) -> Path | None:
    """Rename an earlier run folder to FOLDER.YYYYmmdd-HHMMSS so that a job starts there from step 0
    (`submit --fresh`). Kept, never deleted: it holds someone's checkpoints. Done under the folder's
    lock, so a job still writing into it is refused (FolderBusy) rather than moved from under it.
    None when there is nothing to set aside."""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir() or not any(p.name != LOCK for p in folder.iterdir()):
        return None
    fd = acquire(folder, owner)
    try:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        dest, n = folder.with_name(f"{folder.name}.{stamp}"), 1
        while dest.exists():
            n += 1
            dest = folder.with_name(f"{folder.name}.{stamp}-{n}")
        os.rename(folder, dest)
    finally:
        os.close(fd)
    return dest
