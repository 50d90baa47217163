"""End to end against a real SkyPilot target: SkyPilot's Slurm infra on a one-node Slurm cluster on
localhost (.ci/slurm.sh installs and starts it; this module's fixture calls it).

One job of the quickstart (a few training steps; no container on Slurm: the node runs the entry
command with the project's own venv) goes through `launcher submit --cloud slurm` with overrides
of several sections (the node runs the resolved job), `status`, `logs`, `sync` (checkpoints
arrive and verify against their manifests) and `down`. A second, shorter job shows autodown
taking its idle cluster away by itself. A third is interrupted by a real Ctrl-C while SkyPilot
provisions it, is found again by `status`, and `down` stops it with SIGTERM, keeping its stop
checkpoint. A fourth is followed and Ctrl-C'd: its checkpoints come home through the watcher
that the interrupt starts. A failed last sync (the node made unreachable) keeps the cluster, and
`down --idle` removes an idle cluster of ours while leaving one that is not ours, even one
named `launcher-...`. At the end SkyPilot lists no cluster.

Then a machine lost under a running job: its Slurm allocation ends (what SkyPilot sees of a
reclaimed machine), `status` says so, and the job submitted again continues on a new machine from
the checkpoints synced home. SkyPilot's managed jobs (which would relaunch it by themselves) need
spot instances, and SkyPilot's Slurm has none, so this is the closest real run of a preemption here.
"""
from __future__ import annotations

import json
import os
import queue
import re
import socket
import subprocess
import sys
import time
from typing import Callable
from pathlib import Path

import pytest

from launcher.manifest import verify

from common import REPO, quickstart_copy
BASE = Path(os.environ.get("LAUNCHER_SLURM_BASE", "/tmp/local-slurm"))
NODE_ENV = Path(os.environ.get("LAUNCHER_NODE_ENV", REPO / ".venv"))
SECRET = "slurm-s3cr3t-never-written-777"

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    """The Slurm cluster up, and the environment a user's shell would have to reach it."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("SKY_RUNTIME_DIR", "SKYPILOT_DISABLE_LOCAL_API_SERVER")}
    env.update(HOME=str(BASE / "home"), SKYPILOT_API_SERVER_LOCAL_PORT=str(_free_port()),
               SKYPILOT_DISABLE_USAGE_COLLECTION="1", LAUNCHER_HOME=str(tmp_path_factory.mktemp("lhome")),
               LAUNCHER_NODE_PYTHON=str(NODE_ENV / "bin" / "python"), WANDB_API_KEY=SECRET,
               PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}", NO_COLOR="1")
    try:
        setup = subprocess.run([str(REPO / ".ci" / "slurm.sh")], env={**os.environ, "BASE": str(BASE),
                               "NODE_PYTHON_ENV": str(NODE_ENV)}, capture_output=True, text=True, timeout=900)
        assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
        # SkyPilot's state (under HOME) outlives a run on the same machine: a run killed half way
        # leaves its clusters in it, and the tests count clusters.
        _down_ours(env)
        yield env
    finally:
        _teardown(env)


def _teardown(env) -> None:
    """The safety net: whatever this module launched goes, then the API server and Slurm stop. Every
    step is tried whatever the one before did (a failed setup too), and a failed one is reported."""
    def stop_api_server(env):
        subprocess.run(["sky", "api", "stop"], env=env, capture_output=True, timeout=120)

    def stop_slurm(env):
        subprocess.run([str(REPO / ".ci" / "slurm.sh"), "stop"], env={**os.environ, "BASE": str(BASE)},
                       capture_output=True, timeout=120)

    errors = []
    for step in (_down_ours, _stop_lister, stop_api_server, stop_slurm):
        try:
            step(env)
        except Exception as e:  # the next steps must still run
            errors.append(f"{step.__name__}: {e!r}")
    assert not errors, errors


def _down_ours(env) -> None:
    try:
        left = _clusters(env)
    except AssertionError:  # the API server is gone: a failure the test has already reported
        left = []
    for c in left:
        if c.startswith(("launcher-", "other-")):  # the test's own, by name: this is the test's net
            subprocess.run(["sky", "down", "-y", "--purge", c], env=env, capture_output=True, timeout=300)


_LISTER = """
import json, sys
import sky
for _ in sys.stdin:
    try:
        print("CLUSTERS", json.dumps([c["name"] for c in sky.get(sky.status())]), flush=True)
    except Exception as e:
        print("CLUSTERS", json.dumps({"error": repr(e)}), flush=True)
"""
_listers: dict[str, tuple[subprocess.Popen, queue.Queue]] = {}


def _clusters(env) -> list[str]:
    """The clusters SkyPilot knows, asked of its API server. One process per API server imports
    sky once and answers every poll: a fresh `import sky` costs 3-10 s of this machine's CPU, and
    the polls would take it from the jobs under test."""
    import threading

    port = env["SKYPILOT_API_SERVER_LOCAL_PORT"]
    if port not in _listers or _listers[port][0].poll() is not None:
        p = subprocess.Popen([sys.executable, "-c", _LISTER], env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_pump, args=(p.stdout, lines), daemon=True).start()
        _listers[port] = (p, lines)
    p, lines = _listers[port]
    p.stdin.write("\n")
    p.stdin.flush()
    deadline = time.time() + 300
    while True:  # sky prints its own lines too (starting the API server, ...): the answer is marked
        try:
            line = lines.get(timeout=max(0.1, deadline - time.time()))
        except queue.Empty:
            raise AssertionError("sky.status() gave no answer in 300 s") from None
        assert line, "the cluster lister exited"
        if line.startswith("CLUSTERS "):
            break
    names = json.loads(line.split(" ", 1)[1])
    assert isinstance(names, list), names
    return names


def _pump(stream, lines: queue.Queue) -> None:
    """The lister's output lines into a queue, then "" when it ends (a reader with a timeout on a pipe)."""
    for line in stream:
        lines.put(line)
    lines.put("")


def _stop_lister(env) -> None:
    p, _ = _listers.pop(env["SKYPILOT_API_SERVER_LOCAL_PORT"], (None, None))
    if p is not None:
        p.stdin.close()
        p.wait(timeout=60)


def launcher(env, *args, timeout=900, check=True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "launcher.cli", *args], env=env, capture_output=True, text=True,
                       timeout=timeout)
    if check:
        assert p.returncode == 0, f"launcher {' '.join(args)} exited {p.returncode}\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    return p


def _job_file(tmp: Path, name: str, steps: int, idle_minutes: int, *, cloud: str = "slurm", save_steps: int = 2,
              lora_r: int | None = None, convert_on_node: bool = False) -> Path:
    """The quickstart as a job of this test. SkyPilot gives each Slurm cluster its own HOME, so a
    node converts the GGUF model afresh (about 45 s of CPU on this machine, as on a new cloud
    machine): the main job does; the jobs that are about the lifecycle share the model already
    converted in this checkout's cache, which leaves the machine's two cores to SkyPilot."""
    dst = tmp / name
    cache = {} if convert_on_node else {"LAUNCHER_MODEL_CACHE": os.environ["LAUNCHER_MODEL_CACHE"]}
    quickstart_copy(dst, name=name,
                    train=dict(max_steps=steps, save_steps=save_steps, eval_steps=2, logging_steps=1, sample_prompts=0),
                    lora={"r": lora_r} if lora_r else {},
                    resources={"cloud": cloud, "idle_minutes": idle_minutes}, secrets=["WANDB_API_KEY"],
                    env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                         "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
                         # the node (this machine) runs this checkout's code, whatever env it uses
                         "PYTHONPATH": str(REPO), **cache},
                    outputs={"dir": str(tmp / f"{name}-out")})
    return dst / "job.yaml"


def _job_id(text: str) -> str:
    m = re.search(r"submitted (\S+) \(slurm", text)
    assert m, text
    return m.group(1)


def _interrupted(env, args: list[str], wait_for: str, timeout: float, settle: float = 2,
                 ready: Callable[[], bool] | None = None) -> tuple[int, str]:
    """Run `launcher ARGS` and send it a real SIGINT (Ctrl-C) `settle` seconds after its output
    shows `wait_for`, or the moment `ready()` says so (polled)."""
    import signal
    import threading

    # As from a terminal: a test run started in the background (nohup, `&` without job control)
    # passes SIGINT on ignored, and Python then never turns a Ctrl-C into KeyboardInterrupt.
    proc = subprocess.Popen([sys.executable, "-m", "launcher.cli", *args], env={**env, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen: list[str] = []
    hit = threading.Event()

    def read():
        for line in proc.stdout:
            seen.append(line)
            if re.search(wait_for, line, re.I):
                hit.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if ready is None:
        hit.wait(timeout)
        time.sleep(settle)
    else:
        deadline = time.time() + timeout
        while not ready() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=300)
    reader.join(30)
    return proc.returncode, "".join(seen)


def _wait_log(env, jid: str, pattern: str, timeout: float) -> str:
    deadline = time.time() + timeout
    out = ""
    while time.time() < deadline:
        out = launcher(env, "logs", jid, check=False, timeout=300).stdout
        if re.search(pattern, out):
            return out
        time.sleep(10)
    raise AssertionError(f"{pattern!r} never appeared in the logs of {jid}:\n{out[-3000:]}")


def test_submit_status_logs_sync_down_autodown_idle(slurm_env, tmp_path):
    env = slurm_env

    # Four jobs: the main one, which the test follows, syncs and takes down itself; a short one
    # whose cluster must go away by itself (autodown) as soon as it is idle; and, once autodown has
    # happened, one interrupted while provisioning and stopped by `down`, and one followed and
    # Ctrl-C'd, left to the watcher that the interrupt starts (no bucket: checkpoints live only on
    # the cluster). All share one Slurm node as one user, and there a cluster's teardown was seen to
    # stop another cluster's skylet (which runs autodown): so nothing goes down before the autodown.
    # Nor does anything run meanwhile: with another cluster's job running on the node, the idle
    # cluster's autodown was seen not to fire within 10 minutes (cause not pinned down).
    #
    # The main job's file says cloud local, 40 steps, LoRA rank 16; the command line overrides all
    # three, and the node must run what the command line says.
    job1 = _job_file(tmp_path, "sl-main", steps=40, idle_minutes=20, cloud="local", save_steps=40, lora_r=16,
                     convert_on_node=True)
    job2 = _job_file(tmp_path, "sl-auto", steps=2, idle_minutes=0)
    job3 = _job_file(tmp_path, "sl-watch", steps=2, idle_minutes=20)
    job4 = _job_file(tmp_path, "sl-stop", steps=400, idle_minutes=20, save_steps=1000)
    jid = _job_id(launcher(env, "submit", str(job1), "--cloud", "slurm", "--set", "train.max_steps=4",
                           "--set", "train.save_steps=2", "--set", "lora.r=4", "--detach", "--no-watch").stdout)
    jid2 = _job_id(launcher(env, "submit", str(job2), "--cloud", "slurm", "--detach", "--no-watch").stdout)
    cluster, cluster2 = f"launcher-{jid}", f"launcher-{jid2}"

    follow = launcher(env, "logs", "-f", jid, timeout=1200, check=False)
    assert follow.returncode == 0, follow.stdout[-6000:] + follow.stderr[-3000:]
    assert "[entry] training" in follow.stdout
    assert "step 4/4" in follow.stdout and not re.search(r"step \d+/40\b", follow.stdout), follow.stdout[-3000:]

    dest = tmp_path / "synced"
    synced = launcher(env, "sync", jid, "--to", str(dest))
    ckpts = sorted((dest / "checkpoints").glob("checkpoint-*"))
    assert "checkpoint-4" in [c.name for c in ckpts], synced.stdout + synced.stderr
    for c in ckpts:
        assert verify(c) == [], c
    assert json.loads((dest / "checkpoints" / "checkpoint-4" / "adapter_config.json").read_text())["r"] == 4
    again = launcher(env, "sync", jid, "--to", str(dest))
    assert again.stdout.startswith("0 files copied"), again.stdout  # incremental: nothing new

    # The short job's cluster goes away by itself (autodown, idle_minutes 0), with nobody asking.
    deadline = time.time() + 600
    while cluster2 in _clusters(env) and time.time() < deadline:
        time.sleep(10)
    assert cluster2 not in _clusters(env), "autodown did not take the idle cluster away"

    # Ctrl-C while SkyPilot provisions: the machine comes up all the same, and the record knows it.
    # The local cluster comes up in a few seconds, and SkyPilot's streamed output can arrive after
    # it has: the interrupt goes the moment the record holds the launch request (SkyPilot's API
    # server has it), whatever the output says by then.
    def launching() -> bool:
        import sqlite3

        try:
            with sqlite3.connect(Path(env["LAUNCHER_HOME"]) / "state.db", timeout=5) as con:
                rows = con.execute("SELECT extra FROM jobs WHERE name = 'sl-stop'").fetchall()
        except sqlite3.Error:
            return False
        return any("launch_request" in json.loads(extra or "{}") for (extra,) in rows)

    code, said = _interrupted(env, ["submit", str(job4), "--cloud", "slurm", "--detach", "--no-watch"],
                              "", timeout=120, ready=launching)
    assert code == 130, said[-3000:]
    m = re.search(r"(sl-stop-\w+): SkyPilot goes on launching cluster (launcher-sl-stop-\w+)", said)
    assert m and f"launcher down {m.group(1)}" in said, said[-3000:]
    jid4, cluster4 = m.groups()
    assert "FAILED" not in launcher(env, "status", jid4).stdout

    # The interrupted job runs; `down` stops it with SIGTERM, waits for its stop checkpoint,
    # brings it home verified, then takes the cluster down.
    _wait_log(env, jid4, r"step [2-9]\d*/400", timeout=900)
    stopped = launcher(env, "down", jid4, timeout=900)
    assert "stopping the trainer (SIGTERM)" in stopped.stderr and "CANCELLED" in stopped.stdout, stopped.stderr
    out4 = tmp_path / "sl-stop-out" / "checkpoints"
    kept = sorted(out4.glob("checkpoint-*"))
    assert kept and all(verify(c) == [] for c in kept), stopped.stderr[-3000:]
    assert cluster4 not in _clusters(env)

    # Followed, then Ctrl-C: the job runs on, and the watcher the interrupt starts brings its
    # checkpoints home and takes the cluster down (idle_minutes 20: autodown would not have yet).
    code, said = _interrupted(env, ["submit", str(job3), "--cloud", "slurm"], r"\[entry\]|step \d", timeout=900)
    assert code == 130, said[-3000:]
    m = re.search(r"(sl-watch-\w+) runs on, on (launcher-\S+),", said)
    assert m, said[-3000:]
    jid3, cluster3 = m.group(1), m.group(2)
    assert f"launcher sync {jid3} --watch` runs in the background" in said, said[-3000:]
    out3 = tmp_path / "sl-watch-out" / "checkpoints" / "checkpoint-2"
    deadline = time.time() + 600
    while (cluster3 in _clusters(env) or not out3.exists()) and time.time() < deadline:
        time.sleep(10)
    watch_log = Path(env["LAUNCHER_HOME"]) / "watch" / f"{jid3}.log"
    assert out3.exists() and verify(out3) == [], watch_log.read_text()[-3000:]
    assert cluster3 not in _clusters(env), watch_log.read_text()[-3000:]
    assert "SUCCEEDED" in launcher(env, "status", jid3).stdout

    # A cluster made by hand, named like ours: not in our records, so `down --idle` leaves it alone.
    other = subprocess.run(["sky", "launch", "-y", "-c", "launcher-byhand", "--infra", "slurm", "--cpus", "1",
                            "--memory", "1", "echo not-ours"], env=env, capture_output=True, text=True, timeout=900)
    assert other.returncode == 0, other.stdout[-3000:] + other.stderr[-3000:]

    # The node unreachable for the last sync: `down` and `down --idle` keep the cluster and say how to retry.
    ssh_cfg = Path(env["HOME"]) / ".sky" / "generated" / "ssh" / cluster
    good = ssh_cfg.read_text()
    broken = re.sub(r"(?im)^\s*ProxyCommand.*\n?", "", good)
    broken = re.sub(r"(?im)^(\s*HostName)\s+\S+", r"\1 127.0.0.1", broken)
    ssh_cfg.write_text(re.sub(r"(?im)^(\s*Port)\s+\d+", r"\1 9", broken))  # the discard port: refused
    out_dir = tmp_path / "sl-main-out"
    refused = launcher(env, "down", jid, check=False)
    assert refused.returncode == 2 and "last sync failed" in refused.stderr and "--force" in refused.stderr, refused
    idle = launcher(env, "down", "--idle", "0m", check=False)
    assert idle.returncode == 2 and "not torn down" in idle.stderr and cluster in idle.stderr, idle
    assert cluster in _clusters(env)
    ssh_cfg.write_text(good)

    # `down --idle 0m`: our idle cluster goes, after a last sync into the job's output folder.
    idle = launcher(env, "down", "--idle", "0m")
    # exactly ours: the others went by themselves, and launcher-byhand is not ours
    assert idle.stdout.strip().splitlines()[-1] == f"torn down: {cluster}", idle.stdout
    names = _clusters(env)
    assert cluster not in names and "launcher-byhand" in names
    assert verify(out_dir / "checkpoints" / "checkpoint-4") == []
    down = launcher(env, "down", jid)  # already gone: says so, keeps the job's outcome
    assert "SUCCEEDED" in down.stdout
    st = launcher(env, "status", jid)
    assert "SUCCEEDED" in st.stdout and "slurm" in st.stdout

    # No secret value in any file the launcher or SkyPilot's client wrote on this machine.
    for root in (Path(env["LAUNCHER_HOME"]), tmp_path, Path(env["HOME"]) / ".sky"):
        for f in root.rglob("*"):
            if f.is_file() and not f.is_symlink() and f.stat().st_size < 50_000_000:
                assert SECRET.encode() not in f.read_bytes(), f

    subprocess.run(["sky", "down", "-y", "launcher-byhand"], env=env, capture_output=True, timeout=600)
    assert _clusters(env) == []  # nothing this test made is left billing


def _end_allocation(cluster: str) -> list[str]:
    """End the Slurm job that holds `cluster`'s node, as a reclaimed machine ends: without asking."""
    q = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True, timeout=60)
    ids = [line.split()[0] for line in q.stdout.splitlines() if cluster in line]
    assert ids, q.stdout
    subprocess.run(["scancel", "--signal=KILL", "--full", *ids], check=True, timeout=60)
    subprocess.run(["scancel", *ids], check=True, timeout=60)
    return ids


def test_a_machine_lost_mid_run_continues_from_the_checkpoints_at_home(slurm_env, tmp_path):
    from launcher.manifest import latest_complete

    env = slurm_env
    job = _job_file(tmp_path, "sl-lost", steps=400, idle_minutes=20, save_steps=2)
    jid = _job_id(launcher(env, "submit", str(job), "--cloud", "slurm", "--detach", "--no-watch").stdout)
    cluster = f"launcher-{jid}"
    _wait_log(env, jid, r"step ([5-9]|\d\d+)/400", timeout=900)
    home = tmp_path / "sl-lost-out"
    launcher(env, "sync", jid)  # into its outputs.dir, as the watcher would
    kept = latest_complete(home / "checkpoints")
    assert kept is not None
    step = int(kept.name.split("-")[1])

    _end_allocation(cluster)
    deadline = time.time() + 300
    while time.time() < deadline:
        st = launcher(env, "status", jid, check=False)
        if st.returncode == 0 and "STOPPED" in st.stdout:
            break
        time.sleep(10)
    assert st.returncode == 0 and "STOPPED" in st.stdout, st.stdout + st.stderr
    assert f"{jid} stopped: its cluster was gone" in st.stdout and "synced home" in st.stdout, st.stdout

    # Submitted again: a new machine, which resumes from the checkpoint at home.
    again = launcher(env, "submit", str(job), "--cloud", "slurm", "--set", f"train.max_steps={step + 2}",
                     "--detach", "--no-watch")
    jid2 = _job_id(again.stdout)
    assert f"resumes from {kept.name} synced home" in again.stderr, again.stderr
    follow = launcher(env, "logs", "-f", jid2, timeout=1200, check=False)
    assert follow.returncode == 0, follow.stdout[-6000:] + follow.stderr[-3000:]
    assert "resuming from" in follow.stdout and f"step {step + 2}/{step + 2}" in follow.stdout, follow.stdout[-4000:]
    launcher(env, "down", jid2)  # brings it home into the same folder, then takes the machine down
    final = json.loads((home / "final" / "trainer_state.json").read_text())
    assert final["global_step"] == step + 2
    assert min(h["step"] for h in final["log_history"] if "loss" in h and h["step"] > step) == step + 1
    assert verify(home / "final") == []
    names = _clusters(env)
    assert cluster not in names and f"launcher-{jid2}" not in names, names
