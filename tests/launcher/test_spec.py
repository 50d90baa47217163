"""The job spec: defaults, round trip, overrides, and errors that name the field and the line."""
from pathlib import Path

import pytest
import yaml

from launcher.spec import JobSpec, SpecError, commented_yaml, load_spec, parse_set

from common import REPO


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "job.yaml"
    p.write_text(text)
    return p


def error_of(path, overrides=()) -> str:
    with pytest.raises(SpecError) as e:
        load_spec(path, overrides)
    return str(e.value)


def test_quickstart_job_file_is_valid():
    spec = load_spec(REPO / "examples/quickstart/job.yaml")
    assert spec.name == "quickstart"
    assert spec.method == "lora"
    assert spec.train.max_steps == 40
    assert spec.resources.cloud == "local"


def test_round_trip_keeps_every_value(tmp_path):
    spec = load_spec(REPO / "examples/quickstart/job.yaml", parse_set(["train.learning_rate=3e-4", "resources.spot=true"]))
    again = load_spec(write(tmp_path, spec.to_yaml()))
    assert again == spec
    assert again.train.learning_rate == 3e-4


def test_init_template_loads_to_the_defaults(tmp_path):
    text = commented_yaml()
    assert "# Peak learning rate." in text  # descriptions become comments
    assert load_spec(write(tmp_path, text)) == JobSpec()


def test_every_field_has_a_description():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, __import__("pydantic").BaseModel):
                walk(ann)
    walk(JobSpec)


def test_set_overrides_nested_fields_with_yaml_values(tmp_path):
    p = write(tmp_path, "name: a\n")
    spec = load_spec(p, parse_set(["train.learning_rate=2e-5", "lora.target_modules=[q_proj, v_proj]", "resources.num_nodes=2"]))
    assert spec.train.learning_rate == 2e-5
    assert spec.lora.target_modules == ["q_proj", "v_proj"]
    assert spec.resources.num_nodes == 2


def test_negative_learning_rate_names_field_and_line(tmp_path):
    p = write(tmp_path, "name: a\ntrain:\n  warmup_steps: 3\n  learning_rate: -1\n")
    assert error_of(p) == f"{p}:4: train.learning_rate: must be > 0 (got -1)"


def test_a_sources_encoding_and_separator_are_checked_before_any_reading(tmp_path):
    p = write(tmp_path, "data:\n  sources:\n    - path: a.csv\n      encoding: nonsense-enc\n      delimiter: ';;'\n")
    assert error_of(p).splitlines() == [
        f"{p}:4: data.sources.0.encoding: unknown encoding 'nonsense-enc' (e.g. utf-8, cp1252, latin-1, utf-16, shift_jis)",
        f"{p}:5: data.sources.0.delimiter: must be one character (got ';;'); for a tab write tab or \"\\t\""]
    # what MySQL and Windows call theirs, and a tab as people write one
    p = write(tmp_path, "data:\n  sources:\n    - {path: a.csv, encoding: utf8mb4, delimiter: '\\t'}\n"
                        "    - {path: b.csv, encoding: ANSI, delimiter: tab}\n")
    assert [(s.encoding, s.delimiter) for s in load_spec(p).data.sources] == [("utf-8", "\t"), ("cp1252", "\t")]


def test_unknown_field_suggests_the_right_one(tmp_path):
    p = write(tmp_path, "name: a\ntrain:\n  learning_rat: 0.1\n")
    msg = error_of(p)
    assert msg.startswith(f"{p}:3: train.learning_rat: unknown field")
    assert "did you mean 'learning_rate'" in msg


def test_wrong_type_names_field(tmp_path):
    p = write(tmp_path, "train:\n  per_device_train_batch_size: lots\n")
    msg = error_of(p)
    assert msg.startswith(f"{p}:2: train.per_device_train_batch_size:")
    assert "'lots'" in msg


def test_unknown_cloud_lists_the_choices(tmp_path):
    from launcher.backends import names

    p = write(tmp_path, "resources:\n  cloud: lambada\n")
    with pytest.raises(SpecError) as e:
        load_spec(p, clouds=names())
    msg = str(e.value)
    assert f"{p}:2: resources.cloud: must be one of" in msg
    assert "did you mean 'lambda'" in msg


def test_invalid_yaml_gives_the_line(tmp_path):
    p = write(tmp_path, "name: a\ntrain: [unclosed\nmodel: x\n")
    msg = error_of(p)
    assert msg.startswith(f"{p}:") and "invalid YAML" in msg


def test_missing_file(tmp_path):
    assert "no such file" in error_of(tmp_path / "nope.yaml")


def test_tpu_needs_full_method(tmp_path):
    p = write(tmp_path, "method: lora\nresources:\n  cloud: gcp\n  accelerators: tpu-v3-8\n")
    assert "method: lora is not available on TPU" in error_of(p)


def test_several_problems_are_all_reported(tmp_path):
    p = write(tmp_path, "train:\n  learning_rate: 0\n  eval_steps: -5\n")
    lines = error_of(p).splitlines()
    assert len(lines) == 2
    assert any("train.eval_steps" in line for line in lines)


def test_bad_set_syntax():
    with pytest.raises(SpecError, match="expected FIELD=VALUE"):
        parse_set(["train.learning_rate"])


def test_output_dir_is_relative_to_the_job_file(tmp_path):
    spec = JobSpec(name="abc")
    assert spec.output_dir(tmp_path) == tmp_path / "runs" / "abc"


def test_dump_is_plain_yaml():
    data = yaml.safe_load(JobSpec().to_yaml())
    assert data["train"]["optim"] == "adamw_torch_fused"
    assert data["resources"]["idle_minutes"] == 30


def test_every_optimizer_the_spec_accepts_is_one_the_trainer_knows():
    """The spec refuses an optimizer typo before a machine is paid for; every name it lets through
    must then be one the installed Trainer takes."""
    import typing

    from transformers.training_args import OptimizerNames

    from launcher.spec import OPTIMIZERS

    accepted = set(typing.get_args(OPTIMIZERS))
    assert accepted and accepted <= {o.value for o in OptimizerNames}
    with pytest.raises(SpecError, match=r"train\.optim: must be one of 41 names.*did you mean 'adamw_torch'"):
        load_spec(REPO / "examples" / "quickstart" / "job.yaml", [("train.optim", "adamw_torhc")])
