"""One process of the FSDP test (tests/trainers_gpu/test_distributed.py), run under torchrun.

accelerate shards with FSDP only across GPUs, so on CPU processes the Trainer cannot be asked to
do it. This worker applies the same sharding plan accelerate applies on GPUs (its own
`fsdp2_prepare_model`, fed with the FSDP plugin arguments our TrainingArguments produce) to the
real model across CPU processes over gloo, takes a few optimizer steps on fixed batches, and saves
the gathered full state dict the way the Trainer's save_model does under FSDP (FULL_STATE_DICT,
then save_pretrained on the first process).

    python -m torch.distributed.run --nproc_per_node 2 fsdp_worker.py PLAN.json
PLAN.json: {"plugin_args", "model", "data", "steps", "lr", "out"}; writes OUT/losses.json and
OUT/model (rank 0) and OUT/shards-RANK.json (what each process held).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist


def main() -> int:
    plan = json.loads(Path(sys.argv[1]).read_text())
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)

    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model
    from datasets import load_from_disk
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule
    from transformers import AutoModelForCausalLM

    from trainers.gpu.data import PackedCollator

    plugin = FullyShardedDataParallelPlugin(**plan["plugin_args"])
    model = AutoModelForCausalLM.from_pretrained(plan["model"], dtype=torch.float32)
    model.config.use_cache = False
    # the parts of an Accelerator that fsdp2_prepare_model reads
    accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin), device=torch.device("cpu"),
                                  is_main_process=rank == 0, mixed_precision="no", torch_device_mesh=None)
    model = fsdp2_prepare_model(accelerator, model)

    out = Path(plan["out"])
    held = {"units": sorted(type(m).__name__ for m in model.modules() if isinstance(m, FSDPModule)),
            "local": sum(p.to_local().numel() for p in model.parameters()),
            "full": sum(p.numel() for p in model.parameters())}
    (out / f"shards-{rank}.json").write_text(json.dumps(held))

    rows = load_from_disk(plan["data"])
    collate = PackedCollator(pad_token_id=0)
    opt = torch.optim.AdamW(model.parameters(), lr=plan["lr"], weight_decay=0.0)
    per_rank = plan["global_batch"] // world
    losses = []
    model.train()
    for step in range(plan["steps"]):
        first = step * plan["global_batch"]
        mine = collate([rows[i] for i in range(first + rank * per_rank, first + (rank + 1) * per_rank)])
        whole = collate([rows[i] for i in range(first, first + plan["global_batch"])])
        # the loss over the whole global batch: each rank's share of the label tokens, summed
        n_total = (whole["labels"][:, 1:] != -100).sum()
        loss = model(**mine, num_items_in_batch=n_total).loss * world  # FSDP averages gradients over ranks
        loss.backward()
        opt.step()
        opt.zero_grad()
        total = loss.detach() / world
        dist.all_reduce(total)
        losses.append(total.item())

    # accelerate's get_state_dict for FSDP2, which the Trainer's save_model calls under FULL_STATE_DICT
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)
    if rank == 0:
        (out / "losses.json").write_text(json.dumps(losses))
        model.save_pretrained(out / "model", state_dict=state)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
