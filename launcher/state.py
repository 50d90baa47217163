"""The local record of every job this machine submitted: SQLite, safe under concurrent CLI calls.

Lives at $LAUNCHER_HOME/state.db (default ~/.launcher). WAL mode and a busy timeout let two
`launcher submit` calls and a `launcher status` run at once without "database is locked".

A job moves through explicit states, each step checked and written in one transaction
(`transition`):

    SUBMITTED -> PREPARING -> TRAINING -> SUCCEEDED | FAILED | STOPPED
    (any live state -> STOPPING -> STOPPED | FAILED | SUCCEEDED, and any live state -> a final one)

A final state is never left again, so a late writer (a supervisor finishing while `status` looks)
cannot turn a finished job back into a running one. PENDING and RUNNING are the names earlier
versions (and the cloud backends) wrote; they load and move on like SUBMITTED and TRAINING. A
FAILED job carries its one-line reason in `extra["error"]`.
"""
from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED", "CANCELLED"}
LIVE = {"SUBMITTED", "PREPARING", "TRAINING", "STOPPING", "PENDING", "RUNNING"}
STATES = {*LIVE, *TERMINAL}

# Where each state may go next. PENDING/RUNNING: earlier versions' names (the cloud backends' too).
NEXT = {
    "SUBMITTED": {"PREPARING", "TRAINING", "STOPPING", *TERMINAL},
    "PENDING": {"SUBMITTED", "PREPARING", "TRAINING", "RUNNING", "STOPPING", *TERMINAL},
    "PREPARING": {"TRAINING", "RUNNING", "STOPPING", *TERMINAL},
    "TRAINING": {"STOPPING", *TERMINAL},
    "RUNNING": {"TRAINING", "STOPPING", *TERMINAL},
    "STOPPING": set(TERMINAL),
}


def home() -> Path:
    p = Path(os.environ.get("LAUNCHER_HOME", "~/.launcher")).expanduser()
    p.mkdir(parents=True, exist_ok=True)
    return p


@dataclass
class Job:
    id: str
    name: str
    cloud: str
    spec_yaml: str
    output_dir: str
    state: str = "SUBMITTED"
    cluster: str | None = None
    accelerators: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None
    pid: int | None = None
    log_path: str | None = None
    price_per_hour: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    @property
    def reason(self) -> str | None:
        """Why a job failed, in one line (None when it did not, or nobody knows)."""
        return self.extra.get("error")

    def runtime(self, now: float | None = None) -> float:
        if not self.started:
            return 0.0
        return max(0.0, (self.ended or now or time.time()) - self.started)


_COLUMNS = [f for f in Job.__dataclass_fields__]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, name TEXT, cloud TEXT, spec_yaml TEXT, output_dir TEXT, state TEXT,
  cluster TEXT, accelerators TEXT, created REAL, started REAL, ended REAL, exit_code INTEGER,
  pid INTEGER, log_path TEXT, price_per_hour REAL, extra TEXT
);
"""


@contextmanager
def _db():
    con = sqlite3.connect(home() / "state.db", timeout=30, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA busy_timeout=30000")
        con.executescript(_SCHEMA)
        yield con
    finally:
        con.close()


def new_id(name: str) -> str:
    return f"{name}-{secrets.token_hex(3)}"


def _row(job: Job) -> tuple:
    d = asdict(job)
    d["extra"] = json.dumps(d["extra"])
    return tuple(d[c] for c in _COLUMNS)


def _job(row: tuple) -> Job:
    d = dict(zip(_COLUMNS, row))
    d["extra"] = json.loads(d["extra"] or "{}")
    return Job(**d)


def save(job: Job) -> Job:
    with _db() as con:
        con.execute(f"INSERT OR REPLACE INTO jobs ({','.join(_COLUMNS)}) VALUES ({','.join('?' * len(_COLUMNS))})", _row(job))
    return job


def _read_for_write(con, job_id: str) -> Job:
    """The job's row, read inside a write transaction that this opens (KeyError if none)."""
    con.execute("BEGIN IMMEDIATE")
    row = con.execute(f"SELECT {','.join(_COLUMNS)} FROM jobs WHERE id=?", (job_id,)).fetchone()
    if row is None:
        con.execute("ROLLBACK")
        raise KeyError(job_id)
    return _job(row)


def update(job_id: str, **changes) -> Job:
    """Change some fields of one job atomically (read-modify-write inside one transaction)."""
    with _db() as con:
        job = _read_for_write(con, job_id)
        for k, v in changes.items():
            setattr(job, k, v)
        con.execute(f"INSERT OR REPLACE INTO jobs ({','.join(_COLUMNS)}) VALUES ({','.join('?' * len(_COLUMNS))})", _row(job))
        con.execute("COMMIT")
    return job


def folder_moved(old: str | Path, new: str | Path) -> list[str]:
    """Point the records of the jobs that wrote to `old` at `new`, where `submit --fresh` set the
    folder aside: their `logs` and `sync` follow it, not the new run that starts in `old`. Returns
    their ids."""
    old, new = Path(old).expanduser().resolve(), Path(new)
    moved = []
    with _db() as con:
        con.execute("BEGIN IMMEDIATE")
        for job_id, out, log in con.execute("SELECT id, output_dir, log_path FROM jobs").fetchall():
            if not out or Path(out).expanduser().resolve() != old:
                continue
            if log and Path(log).expanduser().resolve().is_relative_to(old):
                log = str(new / Path(log).expanduser().resolve().relative_to(old))
            con.execute("UPDATE jobs SET output_dir=?, log_path=? WHERE id=?", (str(new), log, job_id))
            moved.append(job_id)
        con.execute("COMMIT")
    return moved


def transition(job_id: str, new: str, **changes) -> Job:
    """Move a job to state `new`, with `changes`, if that step is allowed from the state it is in
    now (read and written in one transaction). A step that is not allowed changes nothing: the job
    is returned as it is, and the caller sees from `job.state` that someone else decided first.
    Ending a job sets `ended` (never before `started`)."""
    if new not in STATES:
        raise ValueError(f"unknown job state {new!r}")
    with _db() as con:
        job = _read_for_write(con, job_id)
        if new != job.state and new not in NEXT.get(job.state, ()):
            con.execute("ROLLBACK")
            return job
        for k, v in changes.items():
            setattr(job, k, v)
        job.state = new
        if new in TERMINAL:
            now = time.time()
            job.ended = job.ended or now
            if job.started is not None and job.ended < job.started:
                job.ended = job.started
        con.execute(f"INSERT OR REPLACE INTO jobs ({','.join(_COLUMNS)}) VALUES ({','.join('?' * len(_COLUMNS))})", _row(job))
        con.execute("COMMIT")
    return job


def delete(job_id: str) -> None:
    """Forget a job that never started (a submit refused before anything ran)."""
    with _db() as con:
        con.execute("DELETE FROM jobs WHERE id=?", (job_id,))


def matching(job_id: str) -> list[Job]:
    """The job with this id, else every job whose id starts with it."""
    with _db() as con:
        row = con.execute(f"SELECT {','.join(_COLUMNS)} FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is not None:
            return [_job(row)]
        # A plain prefix compare, not LIKE: `%` and `_` in what the user typed are not wildcards.
        rows = con.execute(f"SELECT {','.join(_COLUMNS)} FROM jobs WHERE substr(id, 1, ?) = ? ORDER BY created",
                           (len(job_id), job_id)).fetchall()
    return [_job(r) for r in rows]


def get(job_id: str) -> Job | None:
    """A job by id, or by a unique prefix of its id."""
    jobs = matching(job_id) if job_id else []
    return jobs[0] if len(jobs) == 1 else None


def all_jobs() -> list[Job]:
    with _db() as con:
        rows = con.execute(f"SELECT {','.join(_COLUMNS)} FROM jobs ORDER BY created").fetchall()
    return [_job(r) for r in rows]
