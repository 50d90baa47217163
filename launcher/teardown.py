"""`launcher down --idle 30m` and `launcher down --all`: release what this tool left running.

Only clusters this tool created are touched: their names start with `launcher-` (see
`launcher.sky_api.PREFIX`), so a cluster the user made with `sky launch` is never taken down.
"Idle" is SkyPilot's meaning: no pending or running job on the cluster; idle time counts from the
end of its last job (or its launch, if it never ran one).
"""
from __future__ import annotations

import time

import click

from launcher import sky_api

_BUSY = {"INIT", "PENDING", "SETTING_UP", "RUNNING"}


def ours() -> list[dict]:
    """SkyPilot's records of the clusters this tool created."""
    return [c for c in sky_api.clusters() if c["name"].startswith(sky_api.PREFIX)]


def idle_seconds(cluster: dict, now: float | None = None) -> float | None:
    """How long `cluster` has had no pending or running job; None while it is busy."""
    now = now or time.time()
    try:
        jobs = sky_api.queue(cluster["name"]) if cluster.get("status") == "UP" else []
    except sky_api.SkyError:
        return None  # going away right now (autodown) or unreachable: not ours to judge

    if any(j["status"] in _BUSY for j in jobs):
        return None
    ends = [j["end_at"] for j in jobs if j.get("end_at")]
    since = max(ends) if ends else cluster.get("launched_at") or now
    return now - since


def down_idle(minutes: int) -> list[str]:
    """Tear down our clusters idle for at least `minutes`; returns their names.

    A cluster whose job this machine knows goes down through its backend, so that its
    checkpoints come home first (the last sync) and the job's record says what happened; the
    job's background sync watcher, if any, is stopped first. One cluster that fails does not
    keep the others up; the failures are reported together at the end.
    """
    from launcher import watch
    from launcher.backends.base import BackendError, get_backend

    gone, failed = [], []
    for c in ours():
        idle = idle_seconds(c)
        if idle is None or idle < minutes * 60:
            continue
        job = _job_of(c["name"])
        try:
            if job is not None:
                watch.stop(job)
                get_backend(job.cloud).down(job)
            else:
                sky_api.down(c["name"])
        except BackendError as e:
            if sky_api.clusters([c["name"]]):
                failed.append(f"{c['name']}: {e}")
                continue
            # gone all the same: its watcher or its autodown took it meanwhile
        gone.append(c["name"])
    if failed:
        raise BackendError(f"torn down: {', '.join(gone) or 'nothing'}; not torn down: {'; '.join(failed)}")
    return gone


def _job_of(cluster: str):
    from launcher import state

    return next((j for j in state.all_jobs() if j.cluster == cluster), None)


def down_all(yes: bool) -> list[str]:
    """Tear down every cluster and managed job of ours, after listing them and asking (unless yes)."""
    clusters = [c["name"] for c in ours()]
    try:
        queued = sky_api.jobs_queue()
    except sky_api.SkyError:
        queued = []  # no jobs controller: no managed jobs
    managed = [j for j in queued
               if str(j.get("job_name", "")).startswith(sky_api.PREFIX) and j["status"] not in
               ("SUCCEEDED", "CANCELLED", "FAILED", "FAILED_SETUP", "FAILED_PRECHECKS", "FAILED_NO_RESOURCE",
                "FAILED_CONTROLLER")]
    names = clusters + [f"{j['job_name']} (managed job {j['job_id']})" for j in managed]
    if not names:
        return []
    if not yes:
        click.echo("This tears down:\n  " + "\n  ".join(names))
        if not click.confirm("Go ahead?", default=False):
            return []
    for j in managed:
        sky_api.jobs_cancel(j["job_id"])
    for name in clusters:
        sky_api.down(name)
    return names
