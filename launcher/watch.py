"""The background `launcher sync JOB --watch` of a detached cloud job whose checkpoints live only
on its cluster (see `Backend.checkpoints_only_on_machine`): started by `submit --detach`, stopped
by `down` (JOB or --idle) before that takes over, so that two syncs never write into one folder.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def start(job) -> Path:
    """`launcher sync JOB --watch` in its own session, so it outlives this command and the terminal."""
    from launcher import state

    log = state.home() / "watch" / f"{job.id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        proc = subprocess.Popen([sys.executable, "-m", "launcher.cli", "sync", job.id, "--watch"], stdout=f,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    job = state.get(job.id)
    state.update(job.id, extra=dict(job.extra, watcher_pid=proc.pid, watcher_log=str(log)))
    return log


def stop(job) -> None:
    """End the job's background `sync --watch` (and its rsync), if it still runs."""
    pid = job.extra.get("watcher_pid")
    if not pid:
        return
    try:  # the pid is ours only while its command line still names this job's watch
        args = subprocess.run(["ps", "-ww", "-o", "args=", "-p", str(pid)], capture_output=True, text=True).stdout
    except OSError:
        return
    if f"sync {job.id} --watch" not in args:
        return
    try:
        os.killpg(pid, signal.SIGTERM)  # its own session: the rsync it runs goes too
    except (ProcessLookupError, PermissionError):
        return
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
