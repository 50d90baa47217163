"""`launcher down --idle 30m` and `launcher down --all`: release what this tool left running.

Only clusters this tool created are touched, and what this tool created is what its state store
(`launcher.state`) records: a submit writes the cluster's name there before provisioning starts.
A name pattern would not do: `sky launch -c launcher-mine` is the user's, not ours.
"Idle" is SkyPilot's meaning: no pending or running job on the cluster; idle time counts from the
end of its last job (or its launch, if it never ran one).
"""
from __future__ import annotations

import time

import click

from launcher import sky_api

_BUSY = {"INIT", "PENDING", "SETTING_UP", "RUNNING"}


def _recorded() -> dict[str, object]:
    """cluster name -> the job record that created it (the newest, should a name repeat)."""
    from launcher import state

    return {j.cluster: j for j in state.all_jobs() if j.cluster}


def ours() -> list[dict]:
    """SkyPilot's records of the clusters this tool created (recorded in our state store)."""
    recorded = _recorded()
    if not recorded:
        return []
    return [c for c in sky_api.clusters() if c["name"] in recorded]


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


def down_idle(minutes: int, *, force: bool = False) -> list[str]:
    """Tear down our clusters idle for at least `minutes`; returns their names.

    A cluster whose job this machine knows goes down through its backend, so that its
    checkpoints come home first (the last sync) and the job's record says what happened; the
    job's background sync watcher, if any, is stopped first. A cluster whose last sync fails is
    kept (unless `force`). One cluster that fails does not keep the others up; the failures are
    reported together at the end.
    """
    from launcher import watch
    from launcher.backends.base import BackendError, get_backend

    gone, failed = [], []
    recorded = _recorded()
    for c in ours():
        idle = idle_seconds(c)
        if idle is None or idle < minutes * 60:
            continue
        job = recorded[c["name"]]
        try:
            watch.stop(job)
            backend = get_backend(job.cloud)
            backend.down(job, force=force)
        except BackendError as e:
            if sky_api.clusters([c["name"]]):
                failed.append(f"{c['name']}: {e}")
                continue
            # gone all the same: its watcher or its autodown took it meanwhile
        gone.append(c["name"])
    if failed:
        raise BackendError(f"torn down: {', '.join(gone) or 'nothing'}; not torn down: {'; '.join(failed)}")
    return gone


def down_all(yes: bool) -> list[str]:
    """Tear down every cluster and managed job of ours, after listing them and asking (unless yes)."""
    clusters = [c["name"] for c in ours()]
    try:
        queued = sky_api.jobs_queue()
    except sky_api.SkyError:
        queued = []  # no jobs controller: no managed jobs
    recorded = _recorded()
    managed = [j for j in queued
               if j.get("job_name") in recorded and recorded[j["job_name"]].extra.get("managed") and j["status"] not in
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
