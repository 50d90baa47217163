"""Run EasyLM's LLaMA trainer with the fixes a fine-tune needs, applied at run time.

    python -m trainers.tpu.easylm_main [--launcher.keep=N] EASYLM_FLAGS...

This runs inside EasyLM's Python (EasyLM on PYTHONPATH) and calls its `llama_train.main` unchanged,
after patching a few of its functions in memory (EasyLM's files are never touched):
- rope_theta: EasyLM's rotary embedding always uses 10000 and ignores `--llama.rope_theta`; a model
  trained with another theta (SmolLM2 1e5, Llama 3 5e5) would be fine-tuned with the wrong positions.
  We bind the flag's value into `apply_rotary_emb`.
- complete checkpoints: EasyLM writes its train state in place, with nothing that says it finished.
  After each save we write `complete_<step>.json` (and `complete.json` for the start/end save, which
  is removed before that file is overwritten).
- disk: a milestone also writes its params in bf16 (`streaming_params_<step>`, a quarter of the
  fp32 train state: what an export needs). Only the newest complete train state is kept (what a
  resume needs; the previous one goes once the next is marked complete, and all of them once the
  final state is); milestone params beyond `--launcher.keep` are pruned.
- resume: if the output folder has a complete train state, we load it (`trainstate::`) and start
  the json dataset at the saved file position, instead of the converted base model.
- SIGTERM (preemption, `launcher down`): the data stream ends at the next step, EasyLM's loop ends
  and saves the train state as it does at the end of training, and we exit with 75.
- EasyLM saves the state it has just loaded before the first step; nothing new, so we skip it.

`newest_checkpoint()` is also used by `trainers.tpu.train` to find the final train state.
"""
from __future__ import annotations

import functools
import json
import os
import posixpath
import signal
import sys

from launcher.errors import EXIT_STOPPED

OWN_PREFIX = "--launcher."


def _fs(url: str):
    """An fsspec filesystem and path for a local folder or gs://... (gcsfs ships with EasyLM's mlxu)."""
    from fsspec.core import url_to_fs

    return url_to_fs(url)


def newest_checkpoint(run_dir: str) -> dict | None:
    """The complete train state with the highest step in EasyLM's output folder, or None.

    Returns the marker: {"step", "train_state", "dataset", "metadata"} with full paths.
    """
    fs, root = _fs(run_dir)
    if not fs.exists(root):
        return None
    best = None
    for path in fs.ls(root, detail=False):
        name = posixpath.basename(path.rstrip("/"))
        if not (name.startswith("complete") and name.endswith(".json")):
            continue
        try:
            with fs.open(path, "r") as f:
                marker = json.load(f)
        except (OSError, ValueError):
            continue
        if not fs.exists(posixpath.join(root, marker["train_state"])):
            continue
        if best is None or marker["step"] > best["step"]:
            best = marker
    if best is None:
        return None
    join = (lambda n: posixpath.join(run_dir.rstrip("/"), n)) if "://" in run_dir else (lambda n: posixpath.join(root, n))
    return {**best, **{k: join(best[k]) for k in ("train_state", "dataset", "metadata")}}


def patch_rope_theta(theta: float) -> None:
    """Make EasyLM's rotary embedding use `theta` (it hard-codes 10000 and ignores the config)."""
    from EasyLM.models.llama import llama_model

    original = getattr(llama_model.apply_rotary_emb, "func", llama_model.apply_rotary_emb)
    llama_model.apply_rotary_emb = functools.partial(original, theta=theta)


def _no_easylm(e: ImportError) -> None:
    print(f"error: cannot import EasyLM ({e}); set EASYLM_DIR to a checkout of young-geng/EasyLM at "
          "fe5b2c354e25d697fce7cd225e23bbbe72570da3 and EASYLM_PYTHON to a Python with its stack", file=sys.stderr)
    sys.exit(1)


def _flag(argv: list[str], name: str) -> str | None:
    for a in argv:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


def _set_flag(argv: list[str], name: str, value) -> list[str]:
    return [a for a in argv if not a.startswith(f"--{name}=")] + [f"--{name}={value}"]


def main() -> None:
    own = {a[len(OWN_PREFIX):].split("=", 1)[0]: a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith(OWN_PREFIX)}
    argv = [a for a in sys.argv[1:] if not a.startswith(OWN_PREFIX)]
    keep = int(own.get("keep", 0))  # 0 = keep every milestone
    run_dir = posixpath.join(_flag(argv, "logger.output_dir") or "/tmp/mlxu", _flag(argv, "logger.experiment_id") or "")

    try:
        import mlxu
    except ImportError as e:
        _no_easylm(e)

    resume = newest_checkpoint(run_dir)
    if resume is not None:
        argv = _set_flag(argv, "load_checkpoint", f"trainstate::{resume['train_state']}")
        position = mlxu.load_pickle(resume["dataset"])
        # Not --load_dataset_state: it would also restore the old run's paths and batch size.
        argv = _set_flag(argv, "train_dataset.json_dataset.start_seek_loc", position.get("file_loc", 0))
        argv = _set_flag(argv, "train_dataset.json_dataset.example_index_at_start", position.get("index", 0))
        argv = _set_flag(argv, "train_dataset.json_dataset.tokens_count_at_start", position.get("total_tokens", 0))
        print(f"[tpu] resuming from step {resume['step']}: {resume['train_state']}", flush=True)

    # ml_collections registers the `--a.b.c` override flags from sys.argv when EasyLM's module
    # defines them, so the final command line must be in place before the import.
    sys.argv = [sys.argv[0]] + argv
    try:
        import jax
        from EasyLM import checkpoint as easylm_checkpoint
        from EasyLM.models.llama import llama_train
    except ImportError as e:
        _no_easylm(e)

    patch_rope_theta(float(_flag(argv, "llama.rope_theta") or 10000.0))

    Checkpointer = easylm_checkpoint.StreamingCheckpointer
    save_all = Checkpointer.save_all
    calls = {"n": 0}

    def save_all_marked(self, train_state, gather_fns, metadata=None, dataset=None, milestone=False):
        calls["n"] += 1
        if calls["n"] == 1 and not milestone:
            return
        step = int(jax.device_get(train_state.step))
        fs, root = _fs(self.checkpoint_dir)
        marker = posixpath.join(root, f"complete_{step}.json" if milestone else "complete.json")
        if self.enable and not milestone and fs.exists(marker):
            fs.rm(marker)  # the files it vouches for are about to be overwritten
        save_all(self, train_state, gather_fns, metadata=metadata, dataset=dataset, milestone=milestone)
        record = {"step": step}
        if milestone:
            # Every host takes part in the gathers; only the first writes (EasyLM's own convention).
            name = f"streaming_params_{step}"
            path = posixpath.join(self.checkpoint_dir, name) if self.enable else "/dev/null"
            Checkpointer.save_train_state_to_file(train_state.params["params"], path,
                                                  gather_fns.params["params"], "bf16")
            record["params"] = name
        if not self.enable:
            return
        suffix = f"_{step}" if milestone else ""
        with fs.open(marker, "w") as f:
            json.dump({**record, "train_state": f"streaming_train_state{suffix}",
                       "dataset": f"dataset{suffix}.pkl", "metadata": f"metadata{suffix}.pkl"}, f)
        _prune(fs, root, keep, final=not milestone)

    Checkpointer.save_all = save_all_marked

    stop = {"now": False}

    def on_term(signum, _frame):
        stop["now"] = True
        try:  # os.write: a print here fails if the signal lands inside another print
            os.write(1, f"[tpu] signal {signum}: saving the train state after this step\n".encode())
        except OSError:
            pass

    signal.signal(signal.SIGTERM, on_term)
    load_dataset = llama_train.DatasetFactory.load_dataset
    loaded = {"n": 0}

    def load_dataset_stoppable(config, tokenizer, **kwargs):
        ds = load_dataset(config, tokenizer, **kwargs)
        loaded["n"] += 1
        return _Stoppable(ds, stop) if loaded["n"] == 1 else ds  # the first one is the train set

    llama_train.DatasetFactory.load_dataset = staticmethod(load_dataset_stoppable)

    def run(args):
        llama_train.main(args)
        return EXIT_STOPPED if stop["now"] else 0

    mlxu.run(run)


class _Stoppable:
    """EasyLM's train dataset, whose stream ends once `stop["now"]` is set."""

    def __init__(self, ds, stop: dict):
        self._ds, self._stop = ds, stop

    def __getattr__(self, name):
        return getattr(self._ds, name)

    def __iter__(self):
        for item in self._ds:
            if self._stop["now"]:
                return
            yield item


def _prune(fs, root: str, keep: int, final: bool = False) -> None:
    """Keep the newest complete train state only (all milestone states once `final`, the end or
    SIGTERM save, is complete) and the newest `keep` milestone params (0: all). Markers go last,
    once nothing they name is left."""
    steps = []
    for path in fs.ls(root, detail=False):
        name = posixpath.basename(path.rstrip("/"))
        if name.startswith("complete_") and name.endswith(".json"):
            steps.append(int(name[len("complete_"):-len(".json")]))
    steps.sort()
    old_states = steps if final else steps[:-1]
    old_params = steps[:-keep] if keep > 0 else []

    def rm(name):
        p = posixpath.join(root, name)
        if fs.exists(p):
            fs.rm(p)

    for step in old_states:
        for name in (f"streaming_train_state_{step}", f"dataset_{step}.pkl", f"metadata_{step}.pkl"):
            rm(name)
    for step in old_params:
        rm(f"streaming_params_{step}")
    for step in set(old_states) & set(old_params):
        rm(f"complete_{step}.json")


if __name__ == "__main__":
    main()
