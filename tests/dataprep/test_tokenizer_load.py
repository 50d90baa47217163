"""Data prep loads the tokenizer without torch, and gets the same ids and chat text as AutoTokenizer."""
import json
import os
import shutil
import subprocess
import sys

from dataprep.tokenize import FastTokenizer, load_tokenizer

TEXTS = ["Hello, world!", "", "  leading and trailing spaces  ", "tabs\tand\nnew lines\n\n",
         "unicode: naïve café, 東京, emoji 🙂", "<|im_start|>user\nhi<|im_end|>\n", "<|endoftext|> mid</s>text",
         "numbers 1234567890 3.14159", "code: def f(x):\n    return x ** 2"]
CHATS = [[{"role": "user", "content": "What is 2+2?"}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
          {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another?"}]]


def test_same_ids_special_tokens_and_chat_text_as_autotokenizer(smollm2_dir, tokenizer):
    ours = load_tokenizer(str(smollm2_dir))
    assert isinstance(ours, FastTokenizer)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(ours, name) == getattr(tokenizer, name), name
    assert ours.eos_token_id is not None and ours.chat_template == tokenizer.chat_template
    for text in TEXTS:
        for special in (True, False):
            assert ours(text, add_special_tokens=special)["input_ids"] == \
                tokenizer(text, add_special_tokens=special)["input_ids"], (text, special)
    batch = ours.backend_tokenizer.encode_batch(TEXTS, add_special_tokens=False)
    assert [e.ids for e in batch] == [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    for chat in CHATS:
        for gen in (True, False):
            assert ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen) == \
                tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen)


def test_loading_imports_neither_torch_nor_transformers(smollm2_dir, repo_root):
    code = ("import sys; from dataprep.tokenize import load_tokenizer; t = load_tokenizer(sys.argv[1]); "
            "assert t(' hi')['input_ids']; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(smollm2_dir)], capture_output=True, text=True, check=True,
                         cwd=repo_root, env={**os.environ, "PYTHONPATH": str(repo_root)})
    assert out.stdout.strip() == "[]"


def test_model_specific_tokenizer_class_goes_through_autotokenizer(smollm2_dir, tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(smollm2_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["add_bos_token"] = True  # transformers rewrites the post-processor for this: not ours to copy
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    t = load_tokenizer(str(folder))
    assert not isinstance(t, FastTokenizer) and t.is_fast


def test_same_ids_as_autotokenizer_on_a_long_tailed_vocabulary(smollm2_dir, tokenizer):
    """On far more distinct words than a BPE model's word cache holds (10 000), some past the
    cache's longest word, and on second sight of each (cache hits where there was room), the ids
    of the batch encoder data prep uses are AutoTokenizer's."""
    import random

    rng = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyzéüß東京0123456789_-'"
    words = {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 14))) for _ in range(30_000)}
    words = sorted(words) + ["x" * 300, "Pneumonoultramicroscopicsilicovolcanoconiosis", "2026-12-02T01:25:53Z"]
    texts = [" ".join(rng.sample(words, 40)) for _ in range(1500)]
    ours = load_tokenizer(str(smollm2_dir))
    want = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    for _ in range(2):  # the second pass is answered from the cache the first one filled
        got = [e.ids for e in ours.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
        assert got == want
