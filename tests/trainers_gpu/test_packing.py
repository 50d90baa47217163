"""Packed rows train each example as if it were alone: same per-example loss, on SmolLM2 with SDPA."""
import pytest

from gpu_trainer_helpers import fruit_examples, pack


def per_example_losses(logits, labels, position_ids):
    """Mean next-token loss of each example in a (batch, seq) layout, examples found by position_ids restarts."""
    import torch

    out = []
    for row_logits, row_labels, row_pos in zip(logits, labels, position_ids):
        starts = (row_pos == 0).nonzero().flatten().tolist() + [len(row_pos)]
        for a, b in zip(starts, starts[1:]):
            target = row_labels[a + 1:b]
            keep = target != -100
            if keep.any():
                out.append(torch.nn.functional.cross_entropy(row_logits[a:b - 1][keep], target[keep]).item())
    return out


@pytest.mark.slow
def test_packed_loss_per_example_equals_alone(smollm2_dir, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    from trainers.gpu.data import PackedCollator

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, attn_implementation="sdpa").eval()
    examples = fruit_examples(tokenizer, 5)
    examples[1] = (examples[1][0] * 3, examples[1][1])  # lengths differ
    alone = []
    with torch.no_grad():
        for prompt, answer in examples:
            ids = torch.tensor([prompt + answer])
            labels = torch.tensor([[-100] * len(prompt) + answer])
            alone.append(model(input_ids=ids, labels=labels, use_cache=False).loss.item())
        rows = pack(examples, 96)
        assert len(rows) >= 2 and any(r["position_ids"].count(0) >= 2 for r in rows)  # several examples share a row
        for flatten in (False, True):
            batch = PackedCollator(tokenizer.pad_token_id, flatten=flatten)(rows)
            logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
            packed = per_example_losses(logits, batch["labels"], batch["position_ids"])
            assert packed == pytest.approx(alone, abs=2e-4), flatten
        # One example per row (data.packing: false): right padding only, the same losses.
        singles = pack(examples, 16)
        batch = PackedCollator(tokenizer.pad_token_id)(singles)
        assert "position_ids" not in batch and batch["input_ids"].shape[0] == len(examples)
        logits = model(input_ids=batch["input_ids"], use_cache=False).logits
        lengths = [len(r["input_ids"]) for r in singles]
        pos = torch.stack([torch.cat([torch.arange(n), torch.full((batch["input_ids"].shape[1] - n,), -1)]) for n in lengths])
        assert per_example_losses(logits, batch["labels"], pos) == pytest.approx(alone, abs=2e-4)
        # The same rows without the restarts (one long text per row): the later examples see the earlier ones.
        batch = PackedCollator(tokenizer.pad_token_id)(rows)
        logits = model(input_ids=batch["input_ids"], use_cache=False).logits
        crossed = per_example_losses(logits, batch["labels"], batch["position_ids"])
    assert max(abs(a - b) for a, b in zip(crossed, alone)) > 1e-2


def test_group_by_length_reaches_the_trainer_with_row_lengths(tmp_path):
    from datasets import Dataset

    from launcher.spec import load_spec
    from trainers.gpu.data import load_split
    from trainers.gpu.train import build_training_args

    spec = load_spec(None, [("train.group_by_length", True)], data={})
    assert build_training_args(spec, tmp_path, precision="fp32", evaluate=False).train_sampling_strategy == "group_by_length"
    spec = load_spec(None, [], data={})
    assert build_training_args(spec, tmp_path, precision="fp32", evaluate=False).train_sampling_strategy == "random"

    rows = [{"input_ids": list(range(n)), "labels": list(range(n)), "position_ids": list(range(n))} for n in (5, 1, 9)]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "train"))
    ds = load_split(tmp_path, "train", with_length=True)
    assert ds["length"] == [5, 1, 9]
    assert "length" not in load_split(tmp_path, "train").column_names
