"""The CLI: help, init, dry runs and every bad-input path gives one line and a non-zero exit."""
import subprocess
import sys

import pytest
from click.testing import CliRunner

from launcher.cli import main

from common import REPO
QUICKSTART = REPO / "examples/quickstart/job.yaml"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_help_imports_nothing_heavy():
    # `launcher --help` must stay fast: no pydantic, skypilot, torch or transformers behind it.
    code = ("import sys; from launcher.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('sky', 'torch', 'transformers', 'pydantic', 'docker', 'boto3') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "HEAVY []" in out
    for cmd in ("init", "prep", "build", "submit", "status", "logs", "sync", "down"):
        assert cmd in out


def test_every_command_explains_itself():
    for cmd in ("init", "prep", "build", "submit", "status", "logs", "sync", "down"):
        r = run(cmd, "--help")
        assert r.exit_code == 0
        assert len(r.output.splitlines()) > 5


def test_init_writes_a_valid_file_and_will_not_overwrite(tmp_path):
    target = tmp_path / "job.yaml"
    assert run("init", target).exit_code == 0
    assert "learning_rate" in target.read_text()
    r = run("init", target)
    assert r.exit_code == 2 and "exists" in r.output
    r = run("submit", target, "--dry-run")
    assert r.exit_code == 0, r.output


def test_dry_run_shows_overrides_and_masks_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "secret-value-123")
    r = run("submit", QUICKSTART, "--dry-run", "--set", "train.learning_rate=2e-5", "--idle-minutes", "12")
    assert r.exit_code == 0, r.output
    assert "learning_rate: 2.0e-05" in r.output
    assert "idle_minutes: 12" in r.output
    assert "WANDB_API_KEY=***" in r.output
    assert "secret-value-123" not in r.output


@pytest.mark.parametrize("args, expected", [
    (["submit", "missing.yaml"], "no such file"),
    (["submit", "{bad}", "--dry-run"], "invalid YAML"),
    (["submit", "{unknown}", "--dry-run"], "did you mean 'learning_rate'"),
    (["submit", "{wrongtype}", "--dry-run"], "train.max_steps"),
    (["submit", "{quick}", "--dry-run", "--set", "train.learning_rate=-0.1"], "train.learning_rate: must be > 0"),
    (["submit", "{quick}", "--dry-run", "--cloud", "lamda"], "did you mean lambda"),
    (["submit", "{quick}", "--dry-run", "--tpu", "v3-8", "--cloud", "lambda"], "Lambda has no TPUs; TPUs are on Google Cloud"),
    (["submit", "{quick}", "--dry-run", "--spot"], "cloud local cannot do spot"),
    (["logs", "no-such-job"], "no job 'no-such-job'"),
    (["status", "no-such-job"], "no job 'no-such-job'"),
    (["down", "no-such-job"], "no job 'no-such-job'"),
    (["down"], "exactly one of"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, expected):
    files = {
        "{bad}": "train: [unclosed\n",
        "{unknown}": "train:\n  learning_rat: 1\n",
        "{wrongtype}": "train:\n  max_steps: many\n",
    }
    real = []
    for a in args:
        if a in files:
            p = tmp_path / "job.yaml"
            p.write_text(files[a])
            a = str(p)
        real.append(str(QUICKSTART) if a == "{quick}" else a)
    r = subprocess.run([sys.executable, "-m", "launcher.cli", *real], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert expected in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_status_with_no_jobs():
    r = run("status")
    assert r.exit_code == 0 and "no jobs yet" in r.output


def test_down_stops_the_jobs_watcher_and_nothing_else(tmp_path):
    """`launcher down JOB` ends the background `sync JOB --watch` (its whole session) before its own
    last sync, and leaves a process that merely reuses a recorded pid alone."""
    import time
    from types import SimpleNamespace

    from launcher import watch

    sleeper = "import subprocess, sys; subprocess.run(['sleep', '60'])"
    watcher = subprocess.Popen([sys.executable, "-c", sleeper, "sync", "q-1", "--watch"], start_new_session=True)
    other = subprocess.Popen([sys.executable, "-c", sleeper, "sync", "q-2", "--watch"], start_new_session=True)
    try:
        time.sleep(0.5)
        grandchild = subprocess.run(["pgrep", "-g", str(watcher.pid), "sleep"], capture_output=True, text=True).stdout.split()
        assert grandchild  # the rsync stand-in, in the watcher's session
        watch.stop(SimpleNamespace(id="q-1", extra={"watcher_pid": watcher.pid}))
        assert watcher.wait(5) is not None
        time.sleep(0.2)
        assert subprocess.run(["ps", "-p", grandchild[0]], capture_output=True).returncode != 0
        watch.stop(SimpleNamespace(id="q-1", extra={"watcher_pid": other.pid}))  # not q-1's watch
        assert other.poll() is None
    finally:
        for p in (watcher, other):
            if p.poll() is None:
                subprocess.run(["pkill", "-g", str(p.pid)])
                p.wait(5)
