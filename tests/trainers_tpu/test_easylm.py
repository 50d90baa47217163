"""The TPU trainer against a real EasyLM on CPU JAX: flags, tokenization, training, resume, export, and
the XLA memory mirror (xla_llama.py): its train state and its arithmetic are EasyLM's.

These tests need EasyLM itself, which CI does not have: they skip unless EASYLM_DIR points at a
checkout (commit fe5b2c354e25d697fce7cd225e23bbbe72570da3) and EASYLM_PYTHON at a Python with its
stack (trainers/tpu/easylm-requirements.txt). Run them with:

    EASYLM_DIR=/path/to/EasyLM EASYLM_PYTHON=/path/to/venv/bin/python pytest tests/trainers_tpu/test_easylm.py -s

The model is SmolLM2-135M cut to two layers (real weights, GQA, tied embeddings, rope_theta 1e5).
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

from common import write_job
from launcher.manifest import verify
from tpu_test_helpers import (CONFIGS, EASYLM_DIR, EASYLM_PYTHON, easylm_env, easylm_import_error, hub_job,
                              write_prepared, xla_mirror)
from trainers.tpu import data as tpu_data
from trainers.tpu import flags as tpu_flags

HERE = Path(__file__).resolve().parent

# No EasyLM (CI): skip. EASYLM_DIR set but EasyLM broken: fail, since these tests were asked for.
pytestmark = pytest.mark.skipif(not EASYLM_DIR, reason="needs EasyLM: set EASYLM_DIR (and EASYLM_PYTHON) to run")


@pytest.fixture(autouse=True, scope="module")
def easylm_imports():
    problem = easylm_import_error()
    assert problem is None, f"EASYLM_DIR={EASYLM_DIR} with {EASYLM_PYTHON}: {problem}"


def run_easylm_python(code: str, timeout: int = 600) -> str:
    r = subprocess.run([EASYLM_PYTHON, "-c", textwrap.dedent(code)], env=easylm_env(), capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def _easylm_from_flags(argv: list[str]) -> str:
    """Python (for run_easylm_python) that builds what llama_train builds from our rendered flags:
    `flags`, the LLaMA config `llama`, `optimizer` with `optimizer_info`, and the Flax `model`."""
    return f"""
        import json
        import jax, jax.numpy as jnp
        from flax.training.train_state import TrainState
        from EasyLM.models.llama.llama_model import LLaMAConfigurator, FlaxLLaMAForCausalLMModule
        from EasyLM.optimizers import OptimizerFactory
        from EasyLM.jax_utils import get_float_dtype_by_name

        flags = dict(a[2:].split("=", 1) for a in {argv!r})
        def typed(v):
            if v in ("True", "False"):
                return v == "True"
            for t in (int, float):
                try:
                    return t(v)
                except ValueError:
                    pass
            return v
        def section(prefix):
            return {{k[len(prefix):]: typed(v) for k, v in flags.items() if k.startswith(prefix)}}
        llama = LLaMAConfigurator.finalize_config(LLaMAConfigurator.get_default_config(section("llama.")))
        opt = OptimizerFactory.get_default_config()
        for k, v in section("optimizer.").items():
            d = opt
            *parents, last = k.split(".")
            for p in parents:
                d = d[p]
            d[last] = type(d[last])(v)
        optimizer, optimizer_info = OptimizerFactory.get_optimizer(opt)
        model = FlaxLLaMAForCausalLMModule(llama, dtype=get_float_dtype_by_name(flags["dtype"]),
                                           param_dtype=get_float_dtype_by_name(flags["param_dtype"]))
    """


def test_flag_names_snapshot_is_current():
    """The flag list the CI tests check against is EasyLM's real one."""
    out = run_easylm_python("""
        import ml_collections
        import EasyLM.models.llama.llama_train as t
        names = []
        def walk(prefix, d):
            for k, v in d.items():
                if isinstance(v, ml_collections.ConfigDict):
                    walk(prefix + k + ".", v)
                else:
                    names.append(prefix + k)
        walk("", t.FLAGS_DEF)
        print("\\n".join(sorted(names)))
    """)
    snapshot = [l for l in (HERE / "easylm_flags.txt").read_text().splitlines() if l and not l.startswith("#")]
    assert out.split() == snapshot


@pytest.mark.parametrize("fmt", ["input_output", "text"])
def test_easylm_text_processor_matches_our_tokenize(fmt, tiny_llama, tmp_path):
    """EasyLM's own TextProcessor, fed the fields we render, gives our tokens and loss mask exactly."""
    from transformers import AutoTokenizer

    tok_dir = tpu_data.easylm_tokenizer(tiny_llama, tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    examples = [{"input": "Question: what color is the sky? Answer:", "output": " Blue, mostly.", "text": "Hello  world\n\nbye"},
                {"input": "Übersetze: 'cat'", "output": " Katze", "text": "  leading spaces and ünïcode"}]
    for prefix in ([], [tok.bos_token_id]):
        fields = tpu_data.fields(fmt, prefix)
        out = run_easylm_python(f"""
            import json
            from transformers import AutoTokenizer
            from EasyLM.data import TextProcessor
            tok = AutoTokenizer.from_pretrained({str(tok_dir)!r})
            p = TextProcessor({{"fields": {fields!r}, "add_bos_token": False, "add_eos_token": True}}, tok)
            for ex in {examples!r}:
                print(json.dumps(p(ex)))
        """)
        got = [json.loads(line) for line in out.splitlines()]
        for ex, (tokens, mask) in zip(examples, got):
            assert (tokens, mask) == tpu_data.tokenize(tok, ex, fmt, prefix)


def _state_arrays(leaves: list[dict]) -> tuple[list, int]:
    """(role, tensor, shape, dtype, spec) of each array of a train state, and how many scalars: the
    same whatever the nesting (flax/optax's, or xla_llama.py's dicts)."""
    arrays, scalars = [], 0
    for leaf in leaves:
        if not leaf["shape"]:
            scalars += 1
            continue
        parts = leaf["path"].split("/")
        tensor = "/".join(parts[parts.index("transformer") if "transformer" in parts else parts.index("lm_head"):])
        role = next(r for r in ("mu", "nu", "acc_grads", "params") if r in parts)
        spec = list(leaf["spec"])
        while spec and spec[-1] is None:
            spec.pop()
        arrays.append((role, tensor, tuple(leaf["shape"]), leaf["dtype"], tuple(spec)))
    return sorted(arrays), scalars


def test_the_xla_mirror_holds_easylms_train_state():
    """xla_llama.py (whose compile test_xla_memory.py holds the memory plan to) builds the train state
    EasyLM builds from the same flags: every parameter, AdamW moment and accumulation buffer with
    EasyLM's shape, dtype and partition spec (TinyLlama's v3-8 plan: bf16 first moment, accumulation)."""
    cfg = json.loads((CONFIGS / "tinyllama-1.1b.json").read_text())
    argv = tpu_flags.render(hub_job("TinyLlama/TinyLlama-1.1B-Chat-v1.0", "v3-8"), "v3-8", "/work/data", "gs://b/ft",
                            model_config=cfg, tokenizer_dir="/work/tokenizer", params_path="/work/params",
                            train_tokens=10 ** 9)
    out = run_easylm_python(_easylm_from_flags(argv) + """
        from EasyLM.jax_utils import match_partition_rules

        def init_fn(rng):  # llama_train's, on abstract arrays only
            z = jnp.zeros((4, 16), jnp.int32)
            params = model.init(input_ids=z, position_ids=z, attention_mask=jnp.ones_like(z),
                                rngs={"params": rng, "dropout": rng, "fcm": rng})
            return TrainState.create(params=params, tx=optimizer, apply_fn=None)
        shapes = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
        specs = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
            lambda s, p: [p], shapes, match_partition_rules(LLaMAConfigurator.get_partition_rules(), shapes)))
        name = lambda k: str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
        print(json.dumps([{"path": "/".join(name(k) for k in path), "shape": list(leaf.shape),
                           "dtype": str(leaf.dtype), "spec": list(spec)}
                          for (path, leaf), spec in zip(jax.tree_util.tree_flatten_with_path(shapes)[0], specs)]))
    """)
    easylm = _state_arrays(json.loads(out.strip().splitlines()[-1]))
    mirror = _state_arrays(xla_mirror(argv, 8, ["state"], {"scan": False})["state"]["leaves"])
    assert {a[0] for a in easylm[0]} == {"params", "mu", "nu", "acc_grads"}
    assert any(a[0] == "mu" and a[3] == "bfloat16" for a in easylm[0])
    assert mirror == easylm


def test_the_xla_mirror_computes_easylms_step(tmp_path):
    """The mirror's arithmetic is EasyLM's: one real train step of a small LLaMA (GQA, bf16 compute,
    AdamW with a bf16 first moment) from the same params and batch gives EasyLM's loss, accuracy,
    gradient norm and updated-parameter norm (EasyLM unsharded on jax 0.4.28, the mirror sharded
    over 8 simulated devices on current jax)."""
    from launcher.spec import JobSpec

    cfg = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 64,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0}
    spec = JobSpec.model_validate({"name": "ft", "method": "full", "model": "x/y",
                                   "data": {"format": "input_output", "max_length": 64},
                                   "train": {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 1,
                                             "learning_rate": 1e-3, "warmup_steps": 0},
                                   "resources": {"cloud": "gcp", "accelerators": "tpu-v3-8"}})
    argv = tpu_flags.render(spec, "v3-8", "/d", "gs://b/ft", model_config=cfg, tokenizer_dir="/t", params_path="/p",
                            train_tokens=10 ** 6)
    flags = dict(a[2:].split("=", 1) for a in argv)
    assert flags["optimizer.adamw_optimizer.bf16_momentum"] == "False" and flags["dtype"] == "bf16"
    argv = [a for a in argv if "bf16_momentum" not in a] + ["--optimizer.adamw_optimizer.bf16_momentum=True"]
    arrays = tmp_path / "arrays.npz"
    out = run_easylm_python(_easylm_from_flags(argv) + f"""
        import numpy as np
        from flax.traverse_util import flatten_dict
        from EasyLM.jax_utils import cross_entropy_loss_and_accuracy, global_norm

        B, S = int(flags["train_dataset.json_dataset.batch_size"]), int(flags["train_dataset.json_dataset.seq_length"])
        rs = np.random.RandomState(0)
        batch = {{"input_tokens": rs.randint(0, llama.vocab_size, (B, S)).astype(np.int32),
                  "target_tokens": rs.randint(0, llama.vocab_size, (B, S)).astype(np.int32),
                  "loss_masks": (rs.rand(B, S) > 0.3).astype(np.float32)}}
        rng = jax.random.PRNGKey(0)
        params = model.init(input_ids=jnp.zeros((B, S), jnp.int32), position_ids=jnp.zeros((B, S), jnp.int32),
                            attention_mask=jnp.ones((B, S), jnp.int32), rngs={{"params": rng, "dropout": rng, "fcm": rng}})
        state = TrainState.create(params=params, tx=optimizer, apply_fn=None)
        def loss_and_accuracy(p):  # llama_train's train_step, without pjit
            logits = model.apply(p, batch["input_tokens"], deterministic=False,
                                 rngs={{"params": rng, "dropout": rng, "fcm": rng}}).logits
            return cross_entropy_loss_and_accuracy(logits, batch["target_tokens"], batch["loss_masks"])
        (loss, accuracy), grads = jax.jit(jax.value_and_grad(loss_and_accuracy, has_aux=True))(state.params)
        new = state.apply_gradients(grads=grads)
        np.savez({str(arrays)!r}, **{{"params/" + "/".join(k): np.asarray(v)
                                      for k, v in flatten_dict(params["params"]).items()}},
                 **{{"batch/" + k: v for k, v in batch.items()}})
        print(json.dumps({{"loss": float(loss), "accuracy": float(accuracy), "gradient_norm": float(global_norm(grads)),
                          "param_norm": float(global_norm(new.params)),
                          "learning_rate": float(optimizer_info["learning_rate_schedule"](state.step))}}))
    """)
    easylm = json.loads(out.strip().splitlines()[-1])
    mirror = xla_mirror(argv, 8, ["run"], {"scan": False, "arrays": str(arrays)})["run"]
    print("EasyLM", easylm, "\nmirror", mirror)
    assert easylm["gradient_norm"] > 0.01
    for k in easylm:
        assert mirror[k] == pytest.approx(easylm[k], rel=2e-3, abs=1e-6), k


STEP_RE = re.compile(r"'step': (\d+)")


def _job(tmp_path: Path, model: Path, bucket: Path | None = None, **train) -> Path:
    t = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": 5e-4,
         "warmup_steps": 1, "max_steps": 8, "save_steps": 2, "save_total_limit": 2, "do_eval": False,
         "precision": "fp32", "logging_steps": 1, **train}
    job = {"name": "tpu-e2e", "model": str(model), "method": "full",
           "data": {"format": "input_output", "max_length": 32}, "train": t,
           "resources": {"cloud": "gcp", "accelerators": "tpu-v3-8"},
           "outputs": {"bucket": str(bucket) if bucket else None}}
    return write_job(tmp_path / "job.yaml", job)


def _train_cmd(job: Path, data: Path, out: Path) -> list[str]:
    return [EASYLM_PYTHON, "-m", "trainers.tpu.train", str(job), "--data", str(data), "--out", str(out),
            "--tpu-type", "cpu-1"]


@pytest.mark.slow
def test_train_preempt_resume_export(tiny_llama, tmp_path):
    """Convert, train with falling loss, SIGTERM -> 75 after a save, resume, finish, HF logits = EasyLM's."""
    data = write_prepared(tmp_path / "data")
    bucket = tmp_path / "bucket"  # a local folder behaves like a bucket (launcher.storage)
    job = _job(tmp_path, tiny_llama, bucket=bucket)
    out = tmp_path / "run"
    env = easylm_env()
    env["WANDB_MODE"] = "disabled"

    # Run 1: stop it with SIGTERM once step 2 has been logged.
    proc = subprocess.Popen(_train_cmd(job, data, out), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    log1, sent = [], False
    for line in proc.stdout:
        log1.append(line)
        m = STEP_RE.search(line)
        if m and int(m.group(1)) >= 2 and not sent:
            proc.send_signal(signal.SIGTERM)
            sent = True
    assert proc.wait(timeout=900) == 75, "".join(log1[-40:])
    assert not (out / "final").exists()

    # Run 2: the same command resumes from the saved train state and finishes.
    r = subprocess.run(_train_cmd(job, data, out), env=env, capture_output=True, text=True, timeout=900)
    text2 = r.stdout + r.stderr
    assert r.returncode == 0, text2[-4000:]
    m = re.search(r"resuming from step (\d+)", text2)
    assert m, text2[-3000:]
    resumed = int(m.group(1))
    history = json.loads((out / "final" / "trainer_state.json").read_text())["log_history"]
    steps = [h["step"] for h in history]
    assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == 7 and resumed in steps, steps
    losses = {h["step"]: round(h["loss"], 4) for h in history}
    print(f"\nloss per step: {losses}; resumed at step {resumed}")
    assert losses[7] < losses[0] - 0.5, losses

    # The final model: a complete HF checkpoint with the base model's tokenizer and special ids.
    final = out / "final"
    assert verify(final) == []
    assert verify(bucket / "tpu-e2e" / "final") == []  # uploaded to BUCKET/JOB/final, like the GPU trainer's
    cfg = json.loads((final / "config.json").read_text())
    base = json.loads((tiny_llama / "config.json").read_text())
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (base["bos_token_id"], base["eos_token_id"])
    assert cfg["tie_word_embeddings"] is False  # EasyLM trained lm_head on its own
    assert (final / "tokenizer.json").read_bytes() == (tiny_llama / "tokenizer.json").read_bytes()
    state = json.loads((final / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    r = subprocess.run(_train_cmd(job, data, out), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "complete already" in r.stdout  # a rerun after the end does nothing

    # HF logits of the exported model against EasyLM's own forward pass on the final train state.
    ids = [[1, 9690, 42, 2683, 314, 260, 3874, 47, 3127, 28, 2, 7]]
    flags = dict(f[2:].split("=", 1) for f in (out / "tpu" / "flags.txt").read_text().split())
    run_dir = f"{flags['logger.output_dir']}/{flags['logger.experiment_id']}"
    script = f"""
        import json, numpy as np, jax.numpy as jnp
        from EasyLM.checkpoint import StreamingCheckpointer
        from EasyLM.models.llama import llama_model
        from EasyLM.models.llama.llama_model import LLaMAConfigurator, FlaxLLaMAForCausalLMModule
        from trainers.tpu.easylm_main import newest_checkpoint, patch_rope_theta
        from trainers.tpu.convert import read_config
        from trainers.tpu.flags import llama_shape
        shape = llama_shape(read_config({str(tiny_llama)!r}))
        cfg = LLaMAConfigurator.get_default_config()
        cfg.update(base_model='llama_1b', **shape)
        config = LLaMAConfigurator.finalize_config(cfg)
        ck = newest_checkpoint({run_dir!r})
        params = StreamingCheckpointer.load_checkpoint(ck['train_state'], remove_dict_prefix=('params', 'params'))
        model = FlaxLLaMAForCausalLMModule(config, dtype=jnp.float32, param_dtype=jnp.float32)
        ids = jnp.array({ids!r}, dtype=jnp.int32)
        plain = model.apply({{'params': params}}, ids, deterministic=True).logits
        patch_rope_theta(shape['rope_theta'])
        fixed = model.apply({{'params': params}}, ids, deterministic=True).logits
        np.save({str(tmp_path / 'easylm_plain.npy')!r}, np.asarray(plain))
        np.save({str(tmp_path / 'easylm_fixed.npy')!r}, np.asarray(fixed))
        print(ck['step'])
    """
    assert run_easylm_python(script).strip() == "8"
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(final), dtype=torch.float32).eval()
    with torch.no_grad():
        hf = model(torch.tensor(ids)).logits.numpy()
    fixed, plain = np.load(tmp_path / "easylm_fixed.npy"), np.load(tmp_path / "easylm_plain.npy")
    diff, unfixed = float(np.abs(hf - fixed).max()), float(np.abs(hf - plain).max())
    print(f"max |HF logits - EasyLM logits| = {diff:.2e} (without the rope_theta fix: {unfixed:.2e})")
    assert diff < 1e-3
    assert unfixed > 100 * diff  # the fix is what makes them agree
