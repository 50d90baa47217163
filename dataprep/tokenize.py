"""Stage 7, tokenize and pack: formatted JSONL -> Arrow sequences of at most `max_length` tokens.

Each example becomes [BOS if the tokenizer uses one] + prompt + answer + EOS. Labels copy the ids
with -100 on the prefix and the prompt tokens (supervised data). Rows are not padded: the
attention_mask is all ones, and the trainer's collator pads a batch as it needs. With packing, consecutive examples
share a sequence until the next one would not fit (an example is never split across sequences);
`position_ids` restart at 0 at each example so a trainer can keep them apart. An example longer
than max_length is truncated or dropped (`data.too_long`), and counted.

Speed: texts are encoded in batches of `chunk_size` with the Rust tokenizer's `encode_batch`
(multi-threaded, so both cores work); packing is a few numpy operations per chunk, and each chunk
goes to disk as one Arrow record batch, so memory grows with the chunk size, not the input.
"""
from __future__ import annotations

import json
import os
import shutil
from array import array
from concurrent.futures import ThreadPoolExecutor
from itertools import chain, islice
from pathlib import Path

import numpy as np
import pyarrow as pa

from .config import DataConfig
from .errors import DataError, Rejects

SCHEMA = pa.schema([("input_ids", pa.list_(pa.int32())), ("attention_mask", pa.list_(pa.int8())),
                    ("labels", pa.list_(pa.int32())), ("position_ids", pa.list_(pa.int32()))])


ARROW = "data-00000-of-00001.arrow"


def _finish_dataset_dir(tmp_dir: Path, arrow_dir: Path) -> None:
    """Make tmp_dir what Dataset.save_to_disk would have written, without copying the data again."""
    import hashlib

    from datasets import DatasetInfo, Features

    DatasetInfo(features=Features.from_arrow_schema(SCHEMA)).write_to_directory(str(tmp_dir))
    h = hashlib.sha256()
    with open(tmp_dir / ARROW, "rb") as f:  # a fingerprint of the content, as datasets keeps one
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read() + str(size).encode())
    state = {"_data_files": [{"filename": ARROW}], "_fingerprint": h.hexdigest()[:16], "_format_columns": None,
             "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": None}
    (tmp_dir / "state.json").write_text(json.dumps(state, indent=2))
    shutil.rmtree(arrow_dir, ignore_errors=True)
    os.replace(tmp_dir, arrow_dir)


class Packer:
    """Tokenizes and packs one split into an Arrow file."""

    def __init__(self, tok, cfg: DataConfig):
        if not getattr(tok, "is_fast", False):
            raise DataError("the tokenizer has no fast (Rust) version; dataprep needs one (tokenizer.json)")
        if tok.eos_token_id is None:
            raise DataError("the tokenizer has no EOS token; set tokenizer: to one that has")
        self.cfg = cfg
        self.backend = tok.backend_tokenizer
        with_sp = tok("a")["input_ids"]
        without = tok("a", add_special_tokens=False)["input_ids"]
        self.prefix = with_sp[:len(with_sp) - len(without)] if with_sp[len(with_sp) - len(without):] == without else []
        self.eos = [tok.eos_token_id]
        self.supervised = cfg.format == "input_output"

    def encode(self, rows: list[dict]) -> list[tuple[list[int], int]]:
        """(ids, number of masked prompt tokens) per row."""
        c = self.cfg
        enc = self.backend.encode_batch
        if not self.supervised:
            outs = enc([r[c.text_key] for r in rows], add_special_tokens=False)
            return [(self.prefix + e.ids + self.eos, len(self.prefix)) for e in outs]
        ins = enc([r[c.input_key] for r in rows], add_special_tokens=False)
        outs = enc([r[c.output_key] for r in rows], add_special_tokens=False)
        p = self.prefix
        return [(p + a.ids + b.ids + self.eos, len(p) + len(a.ids)) for a, b in zip(ins, outs)]

    def run(self, src: Path, where_file: Path, jsonl_out: Path, arrow_dir: Path, rejects: Rejects,
            split: str, progress=None) -> dict:
        c = self.cfg
        L = c.max_length
        lengths = array("I")
        stats = {"examples_in": 0, "examples": 0, "dropped_too_long": 0, "dropped_no_answer": 0, "truncated": 0,
                 "sequences": 0, "tokens": 0, "label_tokens": 0}
        tmp_dir = arrow_dir.with_name(arrow_dir.name + ".tmp")
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_dir.mkdir(parents=True)
        cur: list[tuple[list[int], int]] = []
        cur_len = 0

        def chunks():
            with open(src, encoding="utf-8") as fin, open(where_file, encoding="utf-8") as fwhere:
                while lines := list(islice(fin, c.chunk_size)):
                    yield lines, list(islice(fwhere, len(lines))), [json.loads(x) for x in lines]

        # The next chunk is encoded (in Rust, without the GIL) while this one is packed and written.
        with open(jsonl_out, "w", encoding="utf-8") as fout, pa.OSFile(str(tmp_dir / ARROW), "wb") as sink, \
                pa.ipc.new_stream(sink, SCHEMA) as writer, ThreadPoolExecutor(1) as pool:
            it = chunks()
            nxt = next(it, None)
            fut = pool.submit(self.encode, nxt[2]) if nxt else None
            while fut is not None:
                lines, wheres, _ = nxt
                encoded = fut.result()
                nxt = next(it, None)
                fut = pool.submit(self.encode, nxt[2]) if nxt else None
                seqs: list[list[tuple[list[int], int]]] = []
                for line, where, (ids, p) in zip(lines, wheres, encoded):
                    stats["examples_in"] += 1
                    n = len(ids)
                    if n > L:
                        if c.too_long == "drop":
                            stats["dropped_too_long"] += 1
                            rejects.drop("tokenize", "too_long_tokens", where.rstrip("\n"), line.rstrip("\n"),
                                         detail=f"{n} tokens > max_length {L}")
                            continue
                        if self.supervised and p >= L:
                            stats["dropped_no_answer"] += 1
                            rejects.drop("tokenize", "prompt_fills_max_length", where.rstrip("\n"), line.rstrip("\n"),
                                         detail=f"prompt alone is {p} tokens >= max_length {L}")
                            continue
                        ids, n = ids[:L], L
                        stats["truncated"] += 1
                    fout.write(line)
                    stats["examples"] += 1
                    lengths.append(n)
                    stats["label_tokens"] += n - p
                    if c.packing and cur and cur_len + n <= L:
                        cur.append((ids, p))
                        cur_len += n
                    else:
                        if cur:
                            seqs.append(cur)
                        cur, cur_len = [(ids, p)], n
                if progress is not None:
                    progress.update(len(lines))
                if seqs:
                    writer.write_batch(self._batch(seqs, stats))
            if cur:
                writer.write_batch(self._batch([cur], stats))
        _finish_dataset_dir(tmp_dir, arrow_dir)
        stats["lengths"] = lengths
        return stats

    def _batch(self, seqs, stats) -> pa.RecordBatch:
        """One Arrow batch: each sequence is its examples end to end, with no padding (a collator pads).

        The tokens of a batch are already in order, so the Arrow values are one flat numpy array and
        the sequences are just offsets into it; no Python loop over tokens.
        """
        examples = [ex for seq in seqs for ex in seq]
        lens = np.fromiter((len(ids) for ids, _ in examples), dtype=np.int64, count=len(examples))
        prompt = np.fromiter((p for _, p in examples), dtype=np.int64, count=len(examples))
        seq_lens = np.fromiter((sum(len(ids) for ids, _ in seq) for seq in seqs), dtype=np.int64, count=len(seqs))
        total = int(lens.sum())
        flat = np.fromiter(chain.from_iterable(ids for ids, _ in examples), dtype=np.int32, count=total)
        pos = (np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)).astype(np.int32)
        labels = np.where(pos < np.repeat(prompt, lens), np.int32(-100), flat)
        offsets = pa.array(np.concatenate([[0], np.cumsum(seq_lens)]).astype(np.int32))
        stats["tokens"] += total
        stats["sequences"] += len(seqs)
        cols = [pa.ListArray.from_arrays(offsets, pa.array(x))
                for x in (flat, np.ones(total, dtype=np.int8), labels, pos)]
        return pa.RecordBatch.from_arrays(cols, schema=SCHEMA)
