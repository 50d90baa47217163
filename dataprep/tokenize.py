"""Stage 7, tokenize and pack: formatted JSONL -> Arrow sequences of at most `max_length` tokens.

Each example becomes [BOS if the tokenizer uses one] + prompt + answer + EOS. Labels copy the ids
with -100 on the prefix and the prompt tokens (supervised data). Rows are not padded: the
attention_mask is all ones, and the trainer's collator pads a batch as it needs. With packing, consecutive examples
share a sequence until the next one would not fit (an example is never split across sequences);
`position_ids` restart at 0 at each example so a trainer can keep them apart. An example longer
than max_length is truncated or dropped (`data.too_long`), and counted.

Speed: texts are encoded in batches of `chunk_size` with one call of the Rust tokenizer's
`encode_batch_fast` per chunk (multi-threaded, so every core works; TOKENIZERS_PARALLELISM must not
be false), while the previous chunk is packed. The ids go straight into one numpy array; BOS/EOS,
truncation, labels and position ids are numpy index arithmetic, and the only per-example Python is
a loop over integer lengths (greedy packing). Each chunk goes to disk as one Arrow record batch, so
memory grows with the chunk size, not the input. bench/prep_tokenize.py measures it.
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

from launcher.dataspec import DataConfig

from .errors import DataError, Rejects

SCHEMA = pa.schema([("input_ids", pa.list_(pa.int32())), ("attention_mask", pa.list_(pa.int8())),
                    ("labels", pa.list_(pa.int32())), ("position_ids", pa.list_(pa.int32()))])


ARROW = "data-00000-of-00001.arrow"

# tokenizer_config.json classes that AutoTokenizer maps to the generic fast tokenizer, which is exactly
# tokenizer.json run by the `tokenizers` library. Model-specific classes (LlamaTokenizer, ...) may
# rebuild parts of the pipeline in Python, so for them AutoTokenizer stays the reference.
_GENERIC_CLASSES = {"TokenizersBackend", "PreTrainedTokenizerFast"}
_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _arrow(x: np.ndarray) -> pa.Array:
    """A numpy array as an Arrow array, zero-copy. pa.array() would do the same but first asks
    whether x is a pandas object, which imports pandas (half a second of a small prep's start-up)."""
    x = np.ascontiguousarray(x)
    return pa.Array.from_buffers(pa.from_numpy_dtype(x.dtype), len(x), [None, pa.py_buffer(x)])


class FastTokenizer:
    """What data prep uses of a Hugging Face fast tokenizer, loaded with the `tokenizers` library alone.

    AutoTokenizer imports torch (about 3 s of a prep's start-up; `tokenizers` alone loads in 0.1 s).
    Encoding goes through the same tokenizer.json, so the ids are the same; the chat template is
    rendered by transformers' own PreTrainedTokenizerFast (torch-free), loaded on first use, so that
    chat-templated text is exactly what apply_chat_template gives and plain data never imports
    transformers. tests/dataprep/test_tokenizer_load.py checks both against AutoTokenizer.
    """

    is_fast = True

    def __init__(self, folder: Path, config: dict):
        from tokenizers import Tokenizer

        self.folder = folder
        try:
            self.backend_tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as e:  # the Rust side raises a bare Exception; ValueError is what callers report in one line
            raise ValueError(f"{folder / 'tokenizer.json'}: {e}") from None
        for name in _SPECIAL:
            tok = config.get(name)
            if isinstance(tok, dict):  # an AddedToken as older versions save it
                tok = tok.get("content")
            setattr(self, name, tok)
            setattr(self, name + "_id", None if tok is None else self.backend_tokenizer.token_to_id(tok))
        template = folder / "chat_template.jinja"
        self.chat_template = template.read_text(encoding="utf-8") if template.is_file() else config.get("chat_template")
        self._hf = None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids}

    def apply_chat_template(self, conversation, **kw):
        if self._hf is None:
            from transformers import PreTrainedTokenizerFast

            self._hf = PreTrainedTokenizerFast.from_pretrained(str(self.folder))
        return self._hf.apply_chat_template(conversation, **kw)


def load_tokenizer(ref: str):
    """The tokenizer of a local model folder or hub id: a FastTokenizer where that gives the same
    ids and template as AutoTokenizer (a generic tokenizer.json), else AutoTokenizer itself."""
    folder = Path(ref)
    cfg_file = folder / "tokenizer_config.json"
    if (folder / "tokenizer.json").is_file() and cfg_file.is_file():
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
        # add_bos_token/add_eos_token make transformers rewrite the post-processor: leave those to it.
        if config.get("tokenizer_class") in _GENERIC_CLASSES and not {"add_bos_token", "add_eos_token"} & set(config):
            return FastTokenizer(folder, config)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ref)


def _finish_dataset_dir(tmp_dir: Path, arrow_dir: Path) -> None:
    """Make tmp_dir what Dataset.save_to_disk would have written, without copying the data again."""
    import hashlib

    # No "features": load_from_disk then takes them from the Arrow schema (the same List(Value(int32))
    # columns). Writing them would import datasets, a second of a small prep's start-up, or tie the
    # file to one datasets version's JSON format.
    (tmp_dir / "dataset_info.json").write_text(json.dumps({"description": "", "citation": "", "homepage": "",
                                                           "license": ""}))
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
        backend = tok.backend_tokenizer
        # encode_batch_fast (tokenizers >= 0.21) skips the character offsets, which we never use.
        self._encode_batch = getattr(backend, "encode_batch_fast", backend.encode_batch)
        with_sp = tok("a")["input_ids"]
        without = tok("a", add_special_tokens=False)["input_ids"]
        self.prefix = with_sp[:len(with_sp) - len(without)] if with_sp[len(with_sp) - len(without):] == without else []
        self.eos = tok.eos_token_id
        self.supervised = cfg.format == "input_output"

    def encode(self, rows: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tokens of all rows end to end, tokens per row, masked prompt tokens per row) as numpy arrays.

        Each row is prefix + [prompt] + text + EOS. One encode_batch call for the whole chunk (prompts
        and answers together, so the Rust thread pool stays busy); the ids go straight into numpy,
        and the prefix and EOS are placed with index arithmetic rather than per-row list copies.
        """
        c = self.cfg
        n_rows = len(rows)
        texts = [r[c.input_key] for r in rows] + [r[c.output_key] for r in rows] if self.supervised \
            else [r[c.text_key] for r in rows]
        encs = self._encode_batch(texts, add_special_tokens=False)
        seg_lens = np.fromiter(map(len, encs), dtype=np.int64, count=len(encs))
        tokens = np.fromiter(chain.from_iterable(e.ids for e in encs), dtype=np.int32, count=int(seg_lens.sum()))
        P = len(self.prefix)
        if self.supervised:
            a, b = seg_lens[:n_rows], seg_lens[n_rows:]
        else:
            a, b = np.zeros(n_rows, dtype=np.int64), seg_lens
        lens = P + a + b + 1
        starts = np.cumsum(lens) - lens
        flat = np.empty(int(lens.sum()), dtype=np.int32)
        if P:
            flat[(starts[:, None] + np.arange(P)).ravel()] = self.prefix
        flat[starts + lens - 1] = self.eos
        # The encoded segments are in order prompts..., answers... (or texts...): each token's place
        # in `flat` is its row's start, plus what comes before it in the row, plus its index in the segment.
        seg_dest = np.concatenate([starts + P, starts + P + a]) if self.supervised else starts + P
        seg_first = np.cumsum(seg_lens) - seg_lens
        flat[np.repeat(seg_dest - seg_first, seg_lens) + np.arange(len(tokens))] = tokens
        return flat, lens, P + a

    def run(self, src: Path, where_file: Path, jsonl_out: Path, arrow_dir: Path, rejects: Rejects,
            split: str, progress=None) -> dict:
        """Tokenize and pack a formatted JSONL file (and its sidecar of source locations, a line each)."""
        def chunks():
            with open(src, encoding="utf-8") as fin, open(where_file, encoding="utf-8") as fwhere:
                while lines := list(islice(fin, self.cfg.chunk_size)):
                    yield lines, list(islice(fwhere, len(lines))), [json.loads(x) for x in lines]

        return self.run_chunks(chunks(), jsonl_out, arrow_dir, rejects, split, progress)

    def run_chunks(self, chunks, jsonl_out: Path, arrow_dir: Path, rejects: Rejects, split: str,
                   progress=None) -> dict:
        """Tokenize and pack chunks of (JSONL lines, source locations with a newline each, the rows
        as dicts), in order: from a file, or handed over while the stages before still run."""
        lengths = array("I")
        stats = {"examples_in": 0, "examples": 0, "dropped_too_long": 0, "dropped_no_answer": 0, "truncated": 0,
                 "sequences": 0, "tokens": 0, "label_tokens": 0}
        tmp_dir = arrow_dir.with_name(arrow_dir.name + ".tmp")
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_dir.mkdir(parents=True)
        # The open sequence (examples that may still be joined by the next chunk's first ones).
        carry = (np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.int64))

        # Tokenizing runs in Rust without the GIL, in a worker thread: while it encodes one chunk, this
        # thread reads and parses the next one, then packs and writes the previous one.
        with open(jsonl_out, "w", encoding="utf-8") as fout, pa.OSFile(str(tmp_dir / ARROW), "wb") as sink, \
                pa.ipc.new_stream(sink, SCHEMA) as writer, ThreadPoolExecutor(1) as pool:
            it = iter(chunks)
            cur = next(it, None)
            fut = pool.submit(self.encode, cur[2]) if cur else None
            while fut is not None:
                nxt = next(it, None)
                flat, lens, prompt = fut.result()
                fut = pool.submit(self.encode, nxt[2]) if nxt else None
                lines, wheres, _ = cur
                cur = nxt
                stats["examples_in"] += len(lines)
                flat, lens, prompt = self._fit(flat, lens, prompt, lines, wheres, fout, rejects, stats)
                lengths.frombytes(lens.astype(np.uint32).tobytes())
                stats["label_tokens"] += int((lens - prompt).sum())
                flat, lens, prompt = (np.concatenate(x) for x in zip(carry, (flat, lens, prompt)))
                firsts = self._sequence_starts(lens)
                if len(firsts) > 1:  # all but the last sequence are complete; the last may still grow
                    n_done = firsts[-1]
                    t = int(lens[:n_done].sum())
                    writer.write_batch(self._batch(flat[:t], lens[:n_done], prompt[:n_done], firsts[:-1], stats))
                    flat, lens, prompt = flat[t:], lens[n_done:], prompt[n_done:]
                carry = (flat, lens, prompt)
                if progress is not None:
                    progress.update(len(lines))
            if len(carry[1]):
                writer.write_batch(self._batch(*carry, self._sequence_starts(carry[1]), stats))
        _finish_dataset_dir(tmp_dir, arrow_dir)
        stats["lengths"] = lengths
        return stats

    def _fit(self, flat, lens, prompt, lines, wheres, fout, rejects, stats):
        """Drop or truncate the examples longer than max_length; write the kept ones' lines to fout."""
        c, L = self.cfg, self.cfg.max_length
        long = np.flatnonzero(lens > L)
        if not len(long):
            fout.writelines(lines)
            stats["examples"] += len(lines)
            return flat, lens, prompt
        keep = np.ones(len(lens), dtype=bool)
        for i in long.tolist():
            n, p = int(lens[i]), int(prompt[i])
            if c.too_long == "drop":
                keep[i] = False
                stats["dropped_too_long"] += 1
                rejects.drop("tokenize", "too_long_tokens", wheres[i].rstrip("\n"), lines[i].rstrip("\n"),
                             detail=f"{n} tokens > max_length {L}")
            elif self.supervised and p >= L:
                keep[i] = False
                stats["dropped_no_answer"] += 1
                rejects.drop("tokenize", "prompt_fills_max_length", wheres[i].rstrip("\n"), lines[i].rstrip("\n"),
                             detail=f"prompt alone is {p} tokens >= max_length {L}")
            else:
                stats["truncated"] += 1
        fout.writelines(line for line, k in zip(lines, keep.tolist()) if k)
        stats["examples"] += int(keep.sum())
        pos = np.arange(len(flat)) - np.repeat(np.cumsum(lens) - lens, lens)
        flat = flat[np.repeat(keep, lens) & (pos < L)]
        return flat, np.minimum(lens, L)[keep], prompt[keep]

    def _sequence_starts(self, lens: np.ndarray) -> list[int]:
        """Index of the first example of each sequence.

        Packing is greedy and in order: an example joins the current sequence if it fits, else it
        starts the next one. A loop over integers only (well under a microsecond an example), never over tokens.
        """
        if not self.cfg.packing:
            return list(range(len(lens)))
        L, firsts, cur = self.cfg.max_length, [], 0
        for i, n in enumerate(lens.tolist()):
            if cur and cur + n <= L:
                cur += n
            else:
                firsts.append(i)
                cur = n
        return firsts

    def _batch(self, flat, lens, prompt, firsts, stats) -> pa.RecordBatch:
        """One Arrow batch of whole sequences: each is its examples end to end, with no padding (a collator pads).

        `flat` holds the examples' tokens in order, so the Arrow values are numpy arrays and the
        sequences are just offsets into them (`firsts`: each sequence's first example).
        """
        ex_off = np.concatenate([[0], np.cumsum(lens)])
        offsets = _arrow(np.append(ex_off[np.asarray(firsts, dtype=np.int64)], ex_off[-1]).astype(np.int32))
        total = len(flat)
        pos = (np.arange(total) - np.repeat(ex_off[:-1], lens)).astype(np.int32)
        labels = np.where(pos < np.repeat(prompt, lens), np.int32(-100), flat)
        stats["tokens"] += total
        stats["sequences"] += len(offsets) - 1
        cols = [pa.ListArray.from_arrays(offsets, _arrow(x))
                for x in (flat, np.ones(total, dtype=np.int8), labels, pos)]
        return pa.RecordBatch.from_arrays(cols, schema=SCHEMA)
