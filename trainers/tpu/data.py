"""The data adapter: our prepared JSONL -> EasyLM's json dataset, with the loss where the GPU trainer has it.

Data prep writes `train.jsonl`/`val.jsonl` with `{"text"}` or `{"input", "output"}` per line, and
tokenizes each example for the GPU trainer as [the tokenizer's own prefix, e.g. BOS] + input + output
+ [EOS], with no loss on the prefix and the input (dataprep/tokenize.py). EasyLM's json dataset reads
the same lines and tokenizes the keys named by `text_processor.fields`, each on its own with
`add_special_tokens=False`, joined with nothing between them; `[key]` means no loss on it and
`<|N|>` inserts token N. So the fields that give the GPU trainer's tokens and loss mask are
    `[<|bos|>],[input],output` (prefix ids written out as `[<|1|>]`), or `[<|1|>],text`,
with EasyLM's own BOS off and its EOS (with loss) on. `tokenize()` below is that rule written out:
it counts tokens for the step count, and the tests check it token by token against dataprep's
tokenizer and EasyLM's own processor.
One difference remains, by EasyLM's design: EasyLM streams examples back to back and computes the
loss on the first token of a `text` example (predicted from the previous example's EOS) when the
tokenizer adds no prefix; the GPU trainer masks it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from launcher.errors import DataError  # prepared data that cannot be used: names the file and line


def fields_for(fmt: str) -> list[str]:
    """The JSON keys a line must have for data.format (`text` or `input_output`)."""
    return ["text"] if fmt == "text" else ["input", "output"]


def adapt(prepared: str | Path, out: str | Path, fmt: str, source_keys: dict[str, str] | None = None) -> dict[str, int]:
    """Check and copy train.jsonl (and val.jsonl, if any) into `out` for EasyLM; rows per split.

    `source_keys` maps our names (text, input, output) to the keys data prep wrote, when the job
    renamed them (data.text_key, data.input_key, data.output_key); the output always uses ours.
    """
    prepared, out = Path(prepared), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keys = fields_for(fmt)
    src_key = {k: (source_keys or {}).get(k, k) for k in keys}
    rows = {}
    for split in ("train", "val"):
        src = prepared / f"{split}.jsonl"
        if not src.is_file():
            if split == "train":
                raise DataError(f"{src}: not found (run data prep first: python -m dataprep JOB.yaml --out {prepared})")
            continue
        tmp = out / f"{split}.jsonl.tmp"
        n = 0
        with open(src, encoding="utf-8") as fin, open(tmp, "w", encoding="utf-8") as fout:
            for lineno, line in enumerate(fin, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{src}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{src}:{lineno}: expected a JSON object with {', '.join(keys)}")
                missing = [src_key[k] for k in keys if not isinstance(row.get(src_key[k]), str)]
                if missing:
                    raise DataError(f"{src}:{lineno}: no string field {missing[0]!r} (data.format is {fmt}: "
                                    f"each line needs {', '.join(src_key.values())})")
                fout.write(json.dumps({k: row[src_key[k]] for k in keys}, ensure_ascii=False) + "\n")
                n += 1
        if split == "train" and n == 0:
            tmp.unlink()
            raise DataError(f"{src}: no examples")
        os.replace(tmp, out / f"{split}.jsonl")
        rows[split] = n
    return rows


def special_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts before a text by itself (BOS for Llama, none for SmolLM2), as data prep does."""
    with_sp = tokenizer("a")["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    n = len(with_sp) - len(without)
    return list(with_sp[:n]) if n > 0 and list(with_sp[n:]) == list(without) else []


def fields(fmt: str, prefix_ids: list[int]) -> str:
    """EasyLM's text_processor.fields for our data format, with the prefix ids as loss-free tokens."""
    keys = "text" if fmt == "text" else "[input],output"
    return ",".join([f"[<|{i}|>]" for i in prefix_ids] + [keys])


def tokenize(tokenizer, example: dict, fmt: str, prefix_ids: list[int]) -> tuple[list[int], list[float]]:
    """Tokens and loss mask of one example, as EasyLM builds them from `fields(fmt, prefix_ids)`."""
    tokens: list[int] = list(prefix_ids)
    mask: list[float] = [0.0] * len(prefix_ids)
    for key in fields_for(fmt):
        ids = tokenizer.encode(example[key], add_special_tokens=False)
        tokens += ids
        mask += [0.0 if key == "input" else 1.0] * len(ids)
    tokens.append(tokenizer.eos_token_id)
    mask.append(1.0)
    return tokens, mask


def count_tokens(tokenizer, path: str | Path, fmt: str, prefix_ids: list[int], batch: int = 1024) -> int:
    """Tokens EasyLM will stream from an adapted file (sets the step count for num_train_epochs)."""
    path = Path(path)
    if not path.is_file():
        return 0
    specials = len(prefix_ids) + 1
    total = 0
    chunk: list[dict] = []

    def flush():
        nonlocal total
        for key in fields_for(fmt):
            enc = tokenizer([r[key] for r in chunk], add_special_tokens=False)["input_ids"]
            total += sum(len(ids) for ids in enc)
        total += specials * len(chunk)
        chunk.clear()

    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                chunk.append(json.loads(line))
                if len(chunk) >= batch:
                    flush()
    if chunk:
        flush()
    return total


def easylm_tokenizer(model_dir: str | Path, out: str | Path) -> Path:
    """A copy of the model's tokenizer that EasyLM's transformers (4.x) can load.

    transformers 5 saves fast tokenizers as `tokenizer_class: TokenizersBackend`, a name 4.x does
    not know; the same tokenizer.json loads in 4.x as PreTrainedTokenizerFast.
    """
    from trainers.tpu.convert import TOKENIZER_FILES

    model_dir, out = Path(model_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            (out / name).write_bytes((model_dir / name).read_bytes())
    cfg_path = out / "tokenizer_config.json"
    if cfg_path.is_file() and (out / "tokenizer.json").is_file():
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("tokenizer_class") in (None, "TokenizersBackend"):
            cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
            cfg.pop("backend", None)
            cfg_path.write_text(json.dumps(cfg, indent=2))
    return out
