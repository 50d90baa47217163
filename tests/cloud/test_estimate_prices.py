"""`launcher estimate`'s cost table against SkyPilot's own optimizer, offline, on the catalog excerpts (launcher/catalogs).

The estimator reads the catalog CSVs itself (no `import sky`); for the same request each row's
price per hour must be the one SkyPilot's optimizer picks when `launcher submit` validates the job.
"""
from __future__ import annotations

import json
import pytest
import yaml

from launcher import estimate as est
from launcher.backends.base import get_backend
from launcher.spec import load_spec, write_resolved

LLAMA_1B = dict(model_type="llama", hidden_size=2048, intermediate_size=5632, num_attention_heads=32,
                num_hidden_layers=22, num_key_value_heads=4, vocab_size=32000)


@pytest.fixture
def small_job(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model/config.json").write_text(json.dumps(LLAMA_1B))
    (tmp_path / "data.jsonl").write_text('{"input": "a", "output": "b"}\n' * 100)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "name": "est", "model": "model", "method": "full",
        "data": {"sources": [{"path": "data.jsonl", "input": "input", "output": "output"}], "max_length": 512},
        "train": {"per_device_train_batch_size": 2, "max_steps": 100}}))
    return job


@pytest.mark.parametrize("cloud, accelerators, extra", [
    ("lambda", "A100:1", {}),
    ("lambda", "A6000:1", {}),
    ("runpod", "A100-80GB:1", {}),
    ("aws", "A100:8", {}),
    ("aws", "A100:8", {"spot": True}),
    ("aws", "H100:8", {"num_nodes": 2}),
    ("gcp", "tpu-v3-8", {}),
    ("gcp", "tpu-v3-8", {"spot": True}),
])
def test_cost_row_price_is_skypilots(small_job, cloud, accelerators, extra):
    sets = [("resources.cloud", cloud), ("resources.accelerators", accelerators)]
    sets += [(f"resources.{k}", v) for k, v in extra.items()]
    if extra.get("spot"):
        sets.append(("outputs.bucket", "gs://b/x" if cloud == "gcp" else "s3://b/x"))  # spot resumes from it
    spec = load_spec(small_job, sets)
    backend = get_backend(cloud)
    backend.check(spec)
    resolved = write_resolved(spec, small_job.parent / "resolved")
    _task, plan = backend.validate(spec, small_job, secrets={}, image="docker.io/me/llm-launcher:x", resolved=resolved)

    shape = est.model_shape(str(small_job.parent / "model"), exact=False)
    tokens = est.training_tokens(spec, small_job.parent, est.setup_for(spec, *est.parse_accelerators(accelerators)))
    rows = est.cost_table(shape, spec, tokens, clouds=[cloud], asked=(cloud, accelerators))
    row = next(r for r in rows if r.asked)
    ours = row.spot if extra.get("spot") else row.price
    assert ours == pytest.approx(plan["price_per_hour"], abs=0.006), (row, plan)
    assert row.instance in plan["resources"]


def test_submit_dry_run_shows_the_estimate(small_job):
    from click.testing import CliRunner

    from launcher.cli import main

    r = CliRunner().invoke(main, ["submit", str(small_job), "--cloud", "lambda", "--gpus", "A100:1", "--dry-run"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "# verdict: fits A100" in r.output and "# memory per device (A100):" in r.output
    assert "lambda*" in r.output  # the asked-for row in the cost table
    task = yaml.safe_load("\n".join(l for l in r.output.splitlines() if not l.startswith("#")))
    assert task["resources"]["accelerators"] == "A100:1"  # the task is still plain YAML
