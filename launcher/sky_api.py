"""The one module that talks to SkyPilot: validation, launch, status, logs, teardown.

Everything SkyPilot is imported here, lazily (`import sky` takes seconds, and `launcher --help`
must not pay for it), and wrapped thinly: each function takes and returns plain Python values,
and every SkyPilot failure the user can act on comes out as one `SkyError` line.

Two kinds of calls:
- in-process, offline: `validate` checks a task dict against SkyPilot's own schema, then runs its
  optimizer against the price catalogs (under $SKY_RUNTIME_DIR/.sky/catalogs), for the one cloud
  the job names, before anything is spent. `enabled_clouds` runs SkyPilot's credential check.
- through SkyPilot's local API server (started on first use by SkyPilot itself): launch, managed
  jobs, status, queue, logs, cancel, down.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import re
from pathlib import Path

from launcher.errors import BackendError

PREFIX = "launcher-"  # every cluster and managed job this tool creates starts with it

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class SkyError(BackendError):
    """A SkyPilot failure, as one line the user can act on."""


def _sky():
    os.environ.setdefault("SKYPILOT_DISABLE_USAGE_COLLECTION", "1")
    import sky

    return sky


def _one_line(err: BaseException) -> str:
    """SkyPilot's multi-line messages, reduced to the reason and the suggestion."""
    text = _ANSI.sub("", str(err)).strip()
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    if not lines:
        return type(err).__name__
    keep = [lines[0]]
    if "===== stdout =====" in text:
        # A failed setup command: its own output follows, and its last "error:"/"cause:" line is
        # the root (a full disk, a package that would not install), not SkyPilot's first line.
        causes = [l for l in lines if re.match(r"(error|cause):\s", l, re.I)]
        if causes:
            keep[0] = keep[0].split("===== stdout", 1)[0].strip()
            keep.append(causes[-1])
    for l in lines[1:]:
        if l.startswith(("Try one of these", "Did you mean")) or " not supported " in l or "not enabled" in l:
            # the feature table rows read "spot_instance  Spot instances are not supported in Lambda."
            keep.append(re.sub(r"^\S+\s{2,}", "", l))
    return " ".join(dict.fromkeys(keep))


@contextlib.contextmanager
def _quiet():
    """SkyPilot prints spinners and hints while it works; our callers print their own line."""
    from sky import sky_logging

    buf = io.StringIO()
    with sky_logging.silent(), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        yield buf


def _infra_cloud(infra: str):
    from sky.utils import registry

    return registry.CLOUD_REGISTRY.from_str(infra.split("/")[0])


# -- offline checks -------------------------------------------------------------------------------

def upload_excluded(folder: Path) -> set[str]:
    """Paths under `folder` (relative, posix) that SkyPilot leaves out when it uploads it as a
    workdir: by its .skyignore if there is one, else by git's ignore rules. SkyPilot's own reader,
    so the answer is the upload's."""
    from sky.data import storage_utils

    with _quiet():
        return {p.rstrip("/") for p in storage_utils.get_excluded_files(str(folder))}


def validate(config: dict, *, optimize: bool = True) -> dict:
    """Check a task dict with SkyPilot's schema, then its optimizer against the catalogs.

    Returns the plan: {"instance", "region", "zone", "price_per_hour", "resources"}; the price is
    for all nodes together. The optimizer runs for the cloud the task names only, as if it were
    enabled: credentials are checked separately (`enabled_clouds`), so that a dry run says whether
    the request itself is feasible.
    """
    sky = _sky()
    from sky import check as sky_check
    from sky import dag as dag_lib
    from sky import optimizer

    try:
        with _quiet():
            task = sky.Task.from_yaml_config(copy.deepcopy(config))  # it empties what it is given
    except Exception as e:  # schema errors come as several exception types
        raise SkyError(f"invalid SkyPilot task: {_one_line(e)}") from None
    if not optimize:
        return {"resources": str(next(iter(task.resources)))}
    _catalogs_reachable(config["resources"]["infra"].split("/")[0])
    cloud = _infra_cloud(config["resources"]["infra"])
    real = sky_check.get_cached_enabled_clouds_or_refresh
    sky_check.get_cached_enabled_clouds_or_refresh = lambda *a, **k: [cloud]
    try:
        with _quiet(), dag_lib.Dag() as dag:
            dag.add(task)
        with _quiet():
            dag = optimizer.Optimizer.optimize(dag, quiet=True)
    except Exception as e:
        raise SkyError(_one_line(e)) from None
    finally:
        sky_check.get_cached_enabled_clouds_or_refresh = real
    best = dag.tasks[0].best_resources
    return {
        "instance": best.instance_type,
        "region": best.region,
        "zone": best.zone,
        "price_per_hour": round(best.get_cost(3600) * task.num_nodes, 4),
        "resources": str(best),
    }


CATALOG_HOST = "raw.githubusercontent.com"  # where SkyPilot downloads a missing price catalog from


def _catalogs_reachable(cloud: str) -> None:
    """A price catalog not cached yet must be downloaded; offline, say so in one line at once
    instead of SkyPilot's retries and its multi-line connection error."""
    import socket

    from sky.catalog import common

    missing = [f for f in ("common/accelerators.csv", f"{cloud}/vms.csv")
               if not os.path.exists(common.get_catalog_path(f))]
    if not missing:
        return
    try:
        socket.getaddrinfo(CATALOG_HOST, 443)
    except OSError:
        raise SkyError(f"SkyPilot's price catalog for {cloud} is not cached yet ({', '.join(missing)}) and "
                       f"{CATALOG_HOST} cannot be reached (offline?): run the dry run once with internet "
                       f"access, after which it works offline") from None


def enabled_clouds(cloud: str) -> bool:
    """Whether SkyPilot finds working credentials for `cloud` (its own `sky check`)."""
    _sky()
    from sky import check as sky_check
    from sky.clouds import cloud as cloud_lib

    try:
        with _quiet():
            found = sky_check.check_capability(cloud_lib.CloudCapability.COMPUTE, quiet=True, clouds=[cloud])
    except SystemExit:
        return False
    except Exception as e:
        raise SkyError(f"sky check {cloud}: {_one_line(e)}") from None
    names = {c.lower() for clouds in (found or {}).values() for c in clouds}
    return cloud.lower() in names


# -- through the API server -----------------------------------------------------------------------

def _call(what: str, fn, *args, stream: bool = False, on_request=None, **kwargs):
    sky = _sky()
    try:
        rid = fn(*args, **kwargs)
        if on_request is not None:
            on_request(str(rid))  # recorded before we wait: a Ctrl-C from here on leaves it findable
        if stream:
            return sky.stream_and_get(rid)
        return sky.get(rid)
    except SkyError:
        raise
    except Exception as e:
        raise SkyError(f"{what}: {_one_line(e)}") from None


def launch(config: dict, cluster: str, *, idle_minutes: int, down: bool, on_request=None) -> tuple[int, str]:
    """Provision `cluster` (or reuse it) and submit the task; returns (job id, cluster).

    `on_request(request_id)` is called as soon as the API server has the request: the launch goes
    on there even if this process is interrupted, so the caller records it first.
    """
    sky = _sky()
    task = sky.Task.from_yaml_config(copy.deepcopy(config))
    job_id, _handle = _call(f"launch {cluster}", sky.launch, task, cluster_name=cluster,
                            idle_minutes_to_autostop=idle_minutes, down=down, stream=True, on_request=on_request)
    return job_id, cluster


def jobs_launch(config: dict, name: str, on_request=None) -> int:
    """Submit a managed job (spot: relaunched after a preemption); returns its managed job id."""
    sky = _sky()
    task = sky.Task.from_yaml_config(copy.deepcopy(config))
    job_id, _handle = _call(f"managed job {name}", sky.jobs.launch, task, name=name, stream=True,
                            on_request=on_request)
    return job_id


def request_running(request_id: str) -> bool:
    """Whether an API-server request (a launch this process stopped waiting for) still runs."""
    sky = _sky()
    try:
        found = sky.api_status([request_id])
    except Exception as e:
        raise SkyError(f"sky api status: {_one_line(e)}") from None
    for r in found or []:
        st = getattr(getattr(r, "status", None), "value", getattr(r, "status", None))
        return str(st).upper() in ("PENDING", "RUNNING")
    return False


def request_cancel(request_id: str) -> None:
    sky = _sky()
    with contextlib.suppress(Exception):
        sky.get(sky.api_cancel(request_id))


def clusters(names: list[str] | None = None) -> list[dict]:
    """SkyPilot's cluster records (name, status, launched_at, autostop, to_down ...)."""
    sky = _sky()
    records = _call("sky status", sky.status, cluster_names=names)
    out = []
    for r in records:
        d = r.model_dump() if hasattr(r, "model_dump") else dict(r)
        d["status"] = getattr(d.get("status"), "value", d.get("status"))
        d.pop("handle", None)
        out.append(d)
    return out


def queue(cluster: str) -> list[dict]:
    """The jobs on a cluster: job_id, status, submitted_at, start_at, end_at."""
    sky = _sky()
    out = []
    for r in _call(f"sky queue {cluster}", sky.queue, cluster):
        d = r.model_dump() if hasattr(r, "model_dump") else dict(r)
        d["status"] = getattr(d.get("status"), "value", d.get("status"))
        out.append(d)
    return out


def job_status(cluster: str, job_id: int) -> str | None:
    """PENDING, RUNNING, SUCCEEDED, FAILED ... or None when the cluster is gone."""
    sky = _sky()
    try:
        result = sky.get(sky.job_status(cluster, [job_id]))
    except Exception as e:
        if "does not exist" in str(e) or "not up" in str(e).lower():
            return None
        raise SkyError(f"sky job status {cluster}: {_one_line(e)}") from None
    st = result.get(job_id) or result.get(str(job_id))
    return getattr(st, "value", st)


def tail_logs(cluster: str, job_id: int, *, follow: bool) -> int:
    sky = _sky()
    try:
        return sky.tail_logs(cluster, job_id, follow=follow)
    except Exception as e:
        raise SkyError(f"sky logs {cluster}: {_one_line(e)}") from None


def cancel(cluster: str, job_id: int) -> None:
    sky = _sky()
    _call(f"sky cancel {cluster}", sky.cancel, cluster, job_ids=[job_id])


def down(cluster: str) -> None:
    sky = _sky()
    _call(f"sky down {cluster}", sky.down, cluster, stream=True)


def jobs_queue() -> list[dict]:
    sky = _sky()
    out = []
    for r in _call("sky jobs queue", sky.jobs.queue, refresh=False):
        d = r.model_dump() if hasattr(r, "model_dump") else dict(r)
        d["status"] = getattr(d.get("status"), "value", d.get("status"))
        out.append(d)
    return out


def jobs_status(job_id: int) -> str | None:
    for j in jobs_queue():
        if j.get("job_id") == job_id:
            return j["status"]
    return None


def jobs_tail_logs(job_id: int, *, follow: bool) -> int:
    sky = _sky()
    try:
        return sky.jobs.tail_logs(job_id=job_id, follow=follow)
    except Exception as e:
        raise SkyError(f"sky jobs logs {job_id}: {_one_line(e)}") from None


def jobs_cancel(job_id: int) -> None:
    sky = _sky()
    _call(f"sky jobs cancel {job_id}", sky.jobs.cancel, job_ids=[job_id])


def ssh_config(cluster: str) -> Path:
    """The ssh config SkyPilot writes for a cluster (host aliases `cluster`, `cluster-worker1` ...)."""
    return Path(os.environ.get("HOME", "~")).expanduser() / ".sky" / "generated" / "ssh" / cluster


def api_stop() -> None:
    sky = _sky()
    with contextlib.suppress(Exception):
        sky.api_stop()
