"""Real local jobs, end to end through the CLI as a user runs it: data prep, then LoRA training of
the real SmolLM2-135M on this CPU, in the background, recorded in the state store."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher import manifest, state

from common import REPO
QUICKSTART = REPO / "examples/quickstart/job.yaml"
pytestmark = pytest.mark.slow

FAST = ["--set", "data.max_length=128", "--set", "train.per_device_eval_batch_size=16",
        "--set", "train.warmup_steps=0", "--set", "train.learning_rate=2e-3", "--set", "train.sample_prompts=1"]


def cli(*args, check=True, timeout=600):
    r = subprocess.run([sys.executable, "-m", "launcher.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env={**os.environ})
    if check and r.returncode != 0:
        raise AssertionError(f"launcher {' '.join(map(str, args))} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def submitted_id(r) -> str:
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("submitted "))
    return line.split()[1]


def eval_losses(out: Path) -> list[float]:
    trainer_state = json.loads((out / "final" / "trainer_state.json").read_text())
    return [h["eval_loss"] for h in trainer_state["log_history"] if "eval_loss" in h]


def test_two_jobs_at_once_both_finish_and_learn(tmp_path):
    ids, outs = [], []
    for name in ("qs-a", "qs-b"):
        out = tmp_path / name
        r = cli("submit", QUICKSTART, "--detach", "--set", f"name={name}", "--set", f"outputs.dir={out}",
                "--set", "train.max_steps=6", "--set", "train.eval_steps=3", "--set", "train.save_steps=3", *FAST)
        ids.append(submitted_id(r))
        outs.append(out)
    # Both are recorded at once, while they run.
    listing = cli("status").stdout
    assert all(i in listing for i in ids)

    r = cli("logs", "-f", ids[0], timeout=900)
    assert "[entry] training" in r.stdout
    cli("logs", "-f", ids[1], timeout=900)
    for job_id, out in zip(ids, outs):
        job = state.get(job_id)
        assert job.state == "SUCCEEDED", (job, (out / "logs/job.log").read_text()[-3000:])
        assert job.exit_code == 0 and job.ended >= job.started
        assert manifest.is_complete(out / "final")
        assert [p.name for p in manifest.checkpoints(out / "checkpoints")] == ["checkpoint-3", "checkpoint-6"]
        losses = eval_losses(out)  # step 0 (before training), 3, 6, and the final evaluation
        assert len(losses) >= 3 and losses[-1] < losses[0], losses
    assert "SUCCEEDED" in cli("status", ids[0]).stdout


def test_down_stops_cleanly_with_a_checkpoint_and_a_resubmit_resumes(tmp_path):
    out = tmp_path / "qs-stop"
    common = ["--set", "name=qs-stop", "--set", f"outputs.dir={out}", "--set", "train.eval_steps=1000",
              "--set", "train.save_steps=1000", *FAST]
    job_id = submitted_id(cli("submit", QUICKSTART, "--detach", "--set", "train.max_steps=400", *common))
    log = out / "logs" / "job.log"
    deadline = time.time() + 600
    while time.time() < deadline and "'loss'" not in (log.read_text() if log.exists() else ""):
        time.sleep(1)  # wait until optimizer steps are being taken
    assert "'loss'" in log.read_text(), log.read_text()[-3000:]

    r = cli("down", job_id)
    job = state.get(job_id)
    assert job.state == "STOPPED" and job.exit_code == 75, (r.stdout, log.read_text()[-3000:])
    saved = manifest.latest_complete(out / "checkpoints")
    assert saved is not None, "SIGTERM must leave a complete checkpoint"
    step = int(saved.name.split("-")[1])

    # Another job writing to the same folder at the same time is refused...
    # ...and running it again resumes from the saved step instead of starting over.
    r = cli("submit", QUICKSTART, "--detach", "--set", f"train.max_steps={step + 2}", *common)
    cli("logs", "-f", submitted_id(r), timeout=900)
    final_state = json.loads((out / "final" / "trainer_state.json").read_text())
    assert final_state["global_step"] == step + 2
    first_logged = min(h["step"] for h in final_state["log_history"] if "loss" in h and h["step"] > step)
    assert first_logged == step + 1
    assert "resum" in log.read_text().lower()

    # --fresh: the same job starts over; the earlier run is kept aside, whole.
    r = cli("submit", QUICKSTART, "--fresh", "--set", "train.max_steps=2", *common)
    moved = [p for p in out.parent.iterdir() if p.name.startswith("qs-stop.")]
    assert len(moved) == 1 and str(moved[0]) in r.stderr, (r.stderr, moved)
    assert json.loads((moved[0] / "final/trainer_state.json").read_text())["global_step"] == step + 2
    kept = manifest.latest_complete(moved[0] / "checkpoints")
    assert kept.name == f"checkpoint-{step + 2}" and manifest.verify(kept) == []
    fresh_state = json.loads((out / "final" / "trainer_state.json").read_text())
    assert fresh_state["global_step"] == 2
    assert min(h["step"] for h in fresh_state["log_history"] if "loss" in h) == 1
    assert "resum" not in log.read_text().lower()


def test_a_second_job_on_the_same_output_folder_is_refused(tmp_path):
    # The folder is owned through its lock file, held by a real process, not by what a record says.
    out = tmp_path / "busy"
    hold = "import sys, time; from launcher import runlock; runlock.acquire(sys.argv[1], 'busy-1'); print('held', flush=True); time.sleep(600)"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = cli("submit", QUICKSTART, "--detach", "--set", f"outputs.dir={out}", check=False)
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 2
    assert f"job busy-1 is already writing to {out}" in r.stderr
    assert state.all_jobs() == []  # a refused submit leaves no record
