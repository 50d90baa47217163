"""The prepared data, as the trainer reads it, and the collator that batches packed rows.

Data prep writes `DATA/train` and `DATA/val` with `datasets.save_to_disk`; each row is one training
sequence that may hold several examples packed end to end, with `position_ids` restarting at 0 at
each example. Those restarts are what keep packed examples apart: transformers turns them into a
block-diagonal causal mask (SDPA, eager) or variable-length attention (flash-attention), so no
example attends to another and no padding is computed.
"""
from __future__ import annotations

from pathlib import Path

import torch

from launcher.errors import DataError  # prepared data the trainer cannot use: one line naming the folder

REQUIRED = ("input_ids", "labels", "position_ids")
IGNORE = -100


def load_split(data_dir: str | Path, split: str, required: bool = True, with_length: bool = False):
    """DATA/split as a datasets.Dataset with only the columns the collator uses (None if absent and optional).

    with_length adds `length` (tokens per row), which the Trainer's length-grouped sampler reads
    instead of going through every row itself."""
    import datasets

    path = Path(data_dir) / split
    if not path.exists():
        if required:
            raise DataError(f"{path}: no such folder (run data prep first: python -m dataprep JOB.yaml --out OUT/data)")
        return None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # a half-written or foreign folder: say which one
        raise DataError(f"{path}: not a saved dataset ({type(e).__name__}: {e})") from None
    if isinstance(ds, datasets.DatasetDict):
        raise DataError(f"{path}: holds several splits ({', '.join(ds)}); expected one split per folder")
    missing = [c for c in REQUIRED if c not in ds.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} "
                        f"(expected input_ids, attention_mask, labels, position_ids)")
    if len(ds) == 0:
        if required:
            raise DataError(f"{path}: no rows")
        return None
    ds = ds.select_columns(list(REQUIRED))
    if with_length:
        import pyarrow.compute as pc

        ds = ds.add_column("length", pc.list_value_length(ds.data.column("input_ids")).to_pylist())
    return ds


class PackedCollator:
    """Batch packed rows without padding waste.

    flatten=True (flash-attention): the whole batch becomes one row of all its tokens; the
    position_ids restarts tell the kernel where each example starts. flatten=False (SDPA/eager):
    rows keep their shape and a shorter row is filled by a separate dummy segment (its own
    position_ids from 0, labels ignored), so that no attention_mask is needed and the packed
    block-diagonal mask still applies. Packed rows are all full length but the last, so this
    fill is almost never used. A batch of one example per row (unpacked data) is simply
    right-padded, without position_ids.

    In both cases the first token of every example gets label -100: otherwise the last token of
    one example would be trained to predict the first token of the next.
    """

    def __init__(self, pad_token_id: int, flatten: bool = False):
        self.pad_token_id = pad_token_id
        self.flatten = flatten

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        ids = [torch.as_tensor(r["input_ids"], dtype=torch.long) for r in rows]
        pos = [torch.as_tensor(r["position_ids"], dtype=torch.long) for r in rows]
        labels = [torch.as_tensor(r["labels"], dtype=torch.long).clone() for r in rows]
        for lab, p in zip(labels, pos):
            lab[p == 0] = IGNORE
        if self.flatten:
            return {"input_ids": torch.cat(ids)[None], "position_ids": torch.cat(pos)[None],
                    "labels": torch.cat(labels)[None]}
        longest = max(len(x) for x in ids)
        if all(int((p == 0).sum()) == 1 for p in pos):
            # One example per row (data.packing: false): plain right padding. Causal attention keeps
            # real tokens off the padding, so no position_ids and no mask are needed, and SDPA takes
            # its causal kernel instead of a block-diagonal mask.
            return {"input_ids": torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=self.pad_token_id),
                    "labels": torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=IGNORE)}
        for i in range(len(rows)):
            fill = longest - len(ids[i])
            if fill:
                ids[i] = torch.cat([ids[i], torch.full((fill,), self.pad_token_id, dtype=torch.long)])
                pos[i] = torch.cat([pos[i], torch.arange(fill, dtype=torch.long)])
                labels[i] = torch.cat([labels[i], torch.full((fill,), IGNORE, dtype=torch.long)])
        return {"input_ids": torch.stack(ids), "position_ids": torch.stack(pos), "labels": torch.stack(labels)}


def first_example(row: dict) -> tuple[list[int], list[int]]:
    """(prompt, reference) token ids of the first example in a packed row.

    The prompt is the leading run of tokens without loss (the `input` of input/output data); for
    plain text, where every token has loss, it is the first half of the example.
    """
    pos, ids, labels = row["position_ids"], row["input_ids"], row["labels"]
    end = next((i for i in range(1, len(pos)) if pos[i] == 0), len(pos))
    ids, labels = list(ids[:end]), list(labels[:end])
    cut = next((i for i, lab in enumerate(labels) if lab != IGNORE), len(labels))
    if cut == 0 or cut == len(labels):
        cut = max(1, len(ids) // 2)
    return ids[:cut], ids[cut:]
