"""End to end against a real SkyPilot target: SkyPilot's Slurm infra on a one-node Slurm cluster on
localhost (.ci/slurm.sh installs and starts it; this module's fixture calls it).

One job of the quickstart (a few training steps; no container on Slurm: the node runs the entry
command with the project's own venv) goes through `launcher submit --cloud slurm`, `status`,
`logs`, `sync` (checkpoints arrive and verify against their manifests) and `down`. A second,
shorter job shows autodown taking its idle cluster away by itself, and `down --idle` removes an
idle cluster of ours while leaving one that is not ours.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from launcher.manifest import verify

REPO = Path(__file__).resolve().parents[2]
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
    setup = subprocess.run([str(REPO / ".ci" / "slurm.sh")], env={**os.environ, "BASE": str(BASE),
                           "NODE_PYTHON_ENV": str(NODE_ENV)}, capture_output=True, text=True, timeout=900)
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
    env = {k: v for k, v in os.environ.items()
           if k not in ("SKY_RUNTIME_DIR", "SKYPILOT_DISABLE_LOCAL_API_SERVER")}
    env.update(HOME=str(BASE / "home"), SKYPILOT_API_SERVER_LOCAL_PORT=str(_free_port()),
               SKYPILOT_DISABLE_USAGE_COLLECTION="1", LAUNCHER_HOME=str(tmp_path_factory.mktemp("lhome")),
               LAUNCHER_NODE_PYTHON=str(NODE_ENV / "bin" / "python"), WANDB_API_KEY=SECRET,
               PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}", NO_COLOR="1")
    yield env
    # Safety net: whatever this module launched goes, and the API server stops.
    for c in _clusters(env):
        if c.startswith(("launcher-", "other-")):
            subprocess.run(["sky", "down", "-y", "--purge", c], env=env, capture_output=True, timeout=300)
    subprocess.run(["sky", "api", "stop"], env=env, capture_output=True, timeout=120)
    subprocess.run([str(REPO / ".ci" / "slurm.sh"), "stop"], env={**os.environ, "BASE": str(BASE)},
                   capture_output=True, timeout=120)


def _clusters(env) -> list[str]:
    p = subprocess.run([sys.executable, "-c", "import sky; print('\\n'.join(c['name'] for c in sky.get(sky.status())))"],
                       env=env, capture_output=True, text=True, timeout=300)
    return [l for l in p.stdout.split() if l]


def launcher(env, *args, timeout=900, check=True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "launcher.cli", *args], env=env, capture_output=True, text=True,
                       timeout=timeout)
    if check:
        assert p.returncode == 0, f"launcher {' '.join(args)} exited {p.returncode}\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    return p


def _job_file(tmp: Path, name: str, steps: int, idle_minutes: int) -> Path:
    src = REPO / "examples" / "quickstart"
    dst = tmp / name
    shutil.copytree(src / "data", dst / "data")
    spec = yaml.safe_load((src / "job.yaml").read_text())
    spec["name"] = name
    spec["train"].update(max_steps=steps, save_steps=2, eval_steps=2, logging_steps=1, sample_prompts=0)
    spec["resources"] = {"cloud": "slurm", "idle_minutes": idle_minutes}
    spec["secrets"] = ["WANDB_API_KEY"]
    spec["env"] = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    spec["outputs"] = {"dir": str(tmp / f"{name}-out")}
    (dst / "job.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return dst / "job.yaml"


def _job_id(text: str) -> str:
    m = re.search(r"submitted (\S+) \(slurm", text)
    assert m, text
    return m.group(1)


def test_submit_status_logs_sync_down_autodown_idle(slurm_env, tmp_path):
    env = slurm_env

    # Three jobs: the main one, which the test follows, syncs and takes down itself; a short one
    # whose cluster must go away by itself (autodown) as soon as it is idle; and, once that is gone,
    # one left to the watcher that a detached submit starts (no bucket: checkpoints live only on
    # the cluster). All share one Slurm node as one user, and there a cluster's teardown was seen to
    # stop another cluster's skylet (which runs autodown): so nothing goes down before the autodown.
    job1 = _job_file(tmp_path, "sl-main", steps=4, idle_minutes=20)
    job2 = _job_file(tmp_path, "sl-auto", steps=2, idle_minutes=0)
    job3 = _job_file(tmp_path, "sl-watch", steps=2, idle_minutes=20)
    jid = _job_id(launcher(env, "submit", str(job1), "--cloud", "slurm", "--detach", "--no-watch").stdout)
    jid2 = _job_id(launcher(env, "submit", str(job2), "--cloud", "slurm", "--detach", "--no-watch").stdout)
    cluster, cluster2 = f"launcher-{jid}", f"launcher-{jid2}"

    follow = launcher(env, "logs", "-f", jid, timeout=1200, check=False)
    assert follow.returncode == 0, follow.stdout[-6000:] + follow.stderr[-3000:]
    assert "[entry] training" in follow.stdout

    dest = tmp_path / "synced"
    synced = launcher(env, "sync", jid, "--to", str(dest))
    ckpts = sorted((dest / "checkpoints").glob("checkpoint-*"))
    assert "checkpoint-4" in [c.name for c in ckpts], synced.stdout + synced.stderr
    for c in ckpts:
        assert verify(c) == [], c
    again = launcher(env, "sync", jid, "--to", str(dest))
    assert again.stdout.startswith("0 files copied"), again.stdout  # incremental: nothing new

    # The short job's cluster goes away by itself (autodown, idle_minutes 0), with nobody asking.
    deadline = time.time() + 600
    while cluster2 in _clusters(env) and time.time() < deadline:
        time.sleep(10)
    assert cluster2 not in _clusters(env), "autodown did not take the idle cluster away"

    # The watcher brings the third job's checkpoints home by itself, then takes its cluster down
    # (idle_minutes 20: autodown would not have yet).
    sub3 = launcher(env, "submit", str(job3), "--cloud", "slurm", "--detach")
    jid3 = _job_id(sub3.stdout)
    assert f"launcher sync {jid3} --watch` runs in the background" in sub3.stdout, sub3.stdout
    cluster3 = f"launcher-{jid3}"
    out3 = tmp_path / "sl-watch-out" / "checkpoints" / "checkpoint-2"
    deadline = time.time() + 600
    while (cluster3 in _clusters(env) or not out3.exists()) and time.time() < deadline:
        time.sleep(10)
    watch_log = Path(env["LAUNCHER_HOME"]) / "watch" / f"{jid3}.log"
    assert out3.exists() and verify(out3) == [], watch_log.read_text()[-3000:]
    assert cluster3 not in _clusters(env), watch_log.read_text()[-3000:]
    assert "SUCCEEDED" in launcher(env, "status", jid3).stdout

    # A cluster that is not ours, idle: `down --idle` must leave it alone.
    other = subprocess.run(["sky", "launch", "-y", "-c", "other-keep", "--infra", "slurm", "--cpus", "1",
                            "--memory", "1", "echo not-ours"], env=env, capture_output=True, text=True, timeout=900)
    assert other.returncode == 0, other.stdout[-3000:] + other.stderr[-3000:]

    # `down --idle 0m`: our idle cluster goes, after a last sync into the job's output folder.
    idle = launcher(env, "down", "--idle", "0m")
    # exactly ours: the other two went by themselves, and other-keep is not ours
    assert idle.stdout.strip().splitlines()[-1] == f"torn down: {cluster}", idle.stdout
    names = _clusters(env)
    assert cluster not in names and "other-keep" in names
    out_dir = tmp_path / "sl-main-out"
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
