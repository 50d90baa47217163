"""The data adapter: EasyLM's tokens and loss mask equal the GPU trainer's, token by token.

The GPU side's tokens and labels come from data prep's own tokenizer stage (dataprep/tokenize.py,
`Packer.encode`: each row's ids and its number of prompt tokens, which get label -100), run on the same examples
with the real SmolLM2 tokenizer, which adds no BOS, and with a variant of it that adds one.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import processors
from transformers import AutoTokenizer

from launcher.dataspec import DataConfig
from dataprep.tokenize import Packer
from trainers.tpu import data as tpu_data

EXAMPLES = [
    {"input": "<|im_start|>user\nWhat color is the sky?<|im_end|>\n<|im_start|>assistant\n", "output": "Blue.<|im_end|>",
     "text": "The sky is blue.\nGrass is green."},
    {"input": "Übersetze 'cat' ins Deutsche:", "output": " Katze", "text": "  leading spaces,\ttabs and ünïcode 🚀"},
    {"input": "x", "output": "y" * 40, "text": "a"},
]


@pytest.fixture(scope="module")
def tokenizers_pair(smollm2_dir, tmp_path_factory):
    """SmolLM2's tokenizer as EasyLM will load it (no BOS), and a copy that prepends BOS itself."""
    tok_dir = tpu_data.easylm_tokenizer(smollm2_dir, tmp_path_factory.mktemp("tok") / "tok")
    plain = AutoTokenizer.from_pretrained(str(tok_dir))
    with_bos = AutoTokenizer.from_pretrained(str(tok_dir))
    with_bos.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{with_bos.bos_token} $A", special_tokens=[(with_bos.bos_token, with_bos.bos_token_id)])
    return plain, with_bos


@pytest.mark.parametrize("fmt", ["input_output", "text"])
@pytest.mark.parametrize("which", [0, 1])
def test_tokens_and_mask_match_the_gpu_side(fmt, which, tokenizers_pair):
    tok = tokenizers_pair[which]
    prefix = tpu_data.special_prefix(tok)
    assert prefix == ([] if which == 0 else [tok.bos_token_id])
    flat, lens, prompts = Packer(tok, DataConfig(format=fmt)).encode(EXAMPLES)
    starts = [0] + list(np.cumsum(lens)[:-1])
    for ex, start, n, n_prompt in zip(EXAMPLES, starts, lens, prompts):
        gpu_ids = flat[start:start + n].tolist()
        gpu_labels = [-100] * int(n_prompt) + gpu_ids[int(n_prompt):]
        tokens, mask = tpu_data.tokenize(tok, ex, fmt, prefix)
        assert tokens == gpu_ids
        assert [m == 1.0 for m in mask] == [lab != -100 for lab in gpu_labels]
        assert mask[-1] == 1.0 and tokens[-1] == tok.eos_token_id  # EOS is learned
    fields = tpu_data.fields(fmt, prefix)
    assert fields == ("[<|1|>]," if prefix else "") + ("[input],output" if fmt == "input_output" else "text")


def test_count_tokens_is_what_tokenize_streams(tokenizers_pair, tmp_path):
    tok = tokenizers_pair[1]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES * 5))
    for fmt in ("input_output", "text"):
        expected = sum(len(tpu_data.tokenize(tok, e, fmt, [1])[0]) for e in EXAMPLES * 5)
        assert tpu_data.count_tokens(tok, path, fmt, [1], batch=4) == expected
    assert tpu_data.count_tokens(tok, tmp_path / "missing.jsonl", "text", []) == 0


def test_adapt_keeps_the_fields_and_checks_every_line(tmp_path):
    src = tmp_path / "prepared"
    src.mkdir()
    rows = [{"prompt": "p1", "answer": "a1", "extra": 1}, {"prompt": "p2", "answer": "a2"}]
    (src / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    (src / "val.jsonl").write_text(json.dumps(rows[0]) + "\n")
    out = tmp_path / "out"
    counts = tpu_data.adapt(src, out, "input_output", {"input": "prompt", "output": "answer"})
    assert counts == {"train": 2, "val": 1}
    assert [json.loads(l) for l in (out / "train.jsonl").read_text().splitlines()] == \
        [{"input": "p1", "output": "a1"}, {"input": "p2", "output": "a2"}]

    (src / "train.jsonl").write_text(json.dumps(rows[0]) + "\n" + '{"prompt": "p3"}\n')
    with pytest.raises(tpu_data.DataError, match=r"train.jsonl:2: no string field 'answer'"):
        tpu_data.adapt(src, out, "input_output", {"input": "prompt", "output": "answer"})
    (src / "train.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(tpu_data.DataError, match=r"train.jsonl:2: not valid JSON"):
        tpu_data.adapt(src, out, "text")
    (src / "train.jsonl").write_text("\n")
    with pytest.raises(tpu_data.DataError, match="no examples"):
        tpu_data.adapt(src, out, "text")
    with pytest.raises(tpu_data.DataError, match="not found"):
        tpu_data.adapt(tmp_path / "nowhere", out, "text")


def test_tokenizer_copy_loads_with_old_transformers_names(smollm2_dir, tmp_path):
    tok_dir = tpu_data.easylm_tokenizer(smollm2_dir, tmp_path / "tok")
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast" and "backend" not in cfg
    assert (tok_dir / "tokenizer.json").read_bytes() == (Path(smollm2_dir) / "tokenizer.json").read_bytes()
    ours, theirs = AutoTokenizer.from_pretrained(str(tok_dir)), AutoTokenizer.from_pretrained(str(smollm2_dir))
    assert (ours.bos_token_id, ours.eos_token_id) == (theirs.bos_token_id, theirs.eos_token_id)
    text = EXAMPLES[0]["input"] + EXAMPLES[1]["text"]
    assert ours.encode(text, add_special_tokens=False) == theirs.encode(text, add_special_tokens=False)
