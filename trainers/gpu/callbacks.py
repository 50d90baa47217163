"""Trainer callbacks: stop cleanly on SIGTERM, make every checkpoint verifiable, print progress.

Preemption (a spot machine reclaimed, `launcher down`) arrives as SIGTERM. The handler only sets a
flag; at the end of the current optimizer step the callback asks the Trainer to save and stop, so
the checkpoint holds a whole step (model, optimizer, scheduler, RNG, data position) and a restart
continues exactly where this run left off.

A checkpoint is only trusted once its manifest is written (launcher/manifest.py). The Trainer's
own rotation (save_total_limit) would delete older checkpoints before the new one has its
manifest, so rotation happens here instead, after the manifest: a crash at any moment leaves at
least one complete checkpoint behind.
"""
from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from launcher.manifest import checkpoints, write_manifest


class StopOnSignal(TrainerCallback):
    """On SIGTERM (or a first Ctrl-C): save a checkpoint at the end of this step and stop."""

    def __init__(self):
        self.requested = False
        self.stopped_at: int | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handler)
        signal.signal(signal.SIGINT, self._handler)

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means now
        self.requested = True
        # os.write, not print: the signal may land while the progress bar is writing to stderr,
        # and a print then fails with "reentrant call" inside the handler.
        msg = f"\n{signal.Signals(signum).name} received: saving a checkpoint at the end of this step, then stopping\n"
        try:
            os.write(2, msg.encode())
        except OSError:
            pass

    def _agreed(self, args) -> bool:
        # Every rank must stop at the same step, or the ones still training wait forever in the
        # next all-reduce; a rank that got the signal late learns it here.
        if args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([1.0 if self.requested else 0.0], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            self.requested = bool(flag.item())
        return self.requested

    def on_step_end(self, args, state, control, **kwargs):
        if self._agreed(args):
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control


class CompleteCheckpoints(TrainerCallback):
    """After each save: write the manifest, rotate old checkpoints, upload to the bucket."""

    def __init__(self, keep: int | None, extra_files: dict[str, str], upload=None):
        self.keep = keep
        self.extra_files = extra_files  # small files every checkpoint carries (the W&B run id)
        self.upload = upload            # upload(local_dir, name) or None
        self.last: Path | None = None

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        # Every process writes its own part (its RNG state, FSDP shards) and may still be writing
        # when the first one gets here: the manifest must wait for all of them.
        if args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
        if args.should_save and folder.is_dir():
            for name, text in self.extra_files.items():
                (folder / name).write_text(text)
            write_manifest(folder, {"step": state.global_step, "time": time.time()})
            self.last = folder
            if self.keep:
                # Oldest first; the newest complete one (this one) is never among the deleted.
                for old in checkpoints(args.output_dir)[:-self.keep]:
                    if old != folder:
                        shutil.rmtree(old, ignore_errors=True)
            if self.upload is not None and state.is_world_process_zero:
                self.upload(folder, folder.name)
        return control


class PrintProgress(TrainerCallback):
    """One plain line per log, flushed: the job log (and `launcher logs`) shows it as it happens."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        parts = [f"step {state.global_step}/{state.max_steps}"]
        for key in ("loss", "eval_loss", "learning_rate", "grad_norm"):
            if key in logs:
                parts.append(f"{key} {logs[key]:.4g}")
        if len(parts) > 1:
            print("  ".join(parts), flush=True)
