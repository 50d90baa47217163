"""A fresh machine resumes from the bucket: the GPU trainer (real SmolLM2-135M, on the CPU) uploads
its checkpoints to S3 (moto's server on 127.0.0.1), its run folder is deleted as a relaunched spot
job would find it, and the same command continues at the uploaded step. And a job that asked for
GPUs stops when CUDA is not usable instead of training on the CPU.
"""
from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpu_trainer_helpers import run_trainer, trainer_env, write_job


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_url():
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if not exe:
        pytest.fail("moto_server is required (pip install 'moto[server]')")
    port = _free_port()
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                pytest.fail("moto_server did not start")
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


def _env(s3_url: str) -> dict:
    return trainer_env(AWS_ENDPOINT_URL=s3_url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                       AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")


@pytest.mark.slow
def test_fresh_machine_resumes_from_the_bucket(tmp_path, smollm2_dir, fruit_data, s3_url):
    import boto3

    bucket = f"ckpt-{secrets.token_hex(4)}"
    boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    job = write_job(tmp_path / "job.yaml", smollm2_dir, outputs={"bucket": f"s3://{bucket}/runs"},
                    train={"max_steps": 2, "save_steps": 2, "eval_steps": 10, "sample_prompts": 0})
    out = tmp_path / "out"
    env = _env(s3_url)
    first = run_trainer(job, fruit_data, out, env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert f"uploaded checkpoint-2 to s3://{bucket}/runs/trainer-test/checkpoints/checkpoint-2" in first.stdout
    before = json.loads((out / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())

    shutil.rmtree(out)  # a fresh machine: nothing local
    again = run_trainer(job, fruit_data, out, "train.max_steps=4", env=env)
    log = again.stdout + again.stderr
    assert again.returncode == 0, log[-3000:]
    assert f"downloaded checkpoint-2 from s3://{bucket}/runs/trainer-test/checkpoints" in log, log[-3000:]
    assert f"resuming from {out / 'checkpoints' / 'checkpoint-2'} (step 2)" in log, log[-3000:]
    history = json.loads((out / "final" / "trainer_state.json").read_text())["log_history"]
    steps = [h["step"] for h in history if "loss" in h]
    assert steps == [1, 2, 3, 4], steps
    # steps 1-2 came back with the checkpoint, not trained again
    assert [h["loss"] for h in history if h.get("step") in (1, 2) and "loss" in h] == \
        [h["loss"] for h in before["log_history"] if "loss" in h]


def test_gpu_job_without_cuda_stops(tmp_path):
    """resources.accelerators asks for GPUs; with none usable the trainer refuses before loading anything."""
    job = write_job(tmp_path / "job.yaml", tmp_path / "no-such-model", resources={"accelerators": "A100:1"})
    res = run_trainer(job, tmp_path / "no-data", tmp_path / "out", env=trainer_env(CUDA_VISIBLE_DEVICES=""))
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert "A100:1 but CUDA is not usable here" in last and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / "out" / "checkpoints").exists()
