"""Prompt/answer pairs whose words look like the world's: a long-tailed vocabulary, not a short list.

bench/prep_tokenize.py's `make_pairs` draws every word from 60 common ones. That is fine for
per-row costs, but it hides what a byte-level BPE tokenizer spends on real text: with 60 words,
every word after the first few rows is a hit in the tokenizer's word cache; on real text a good
share of words are rare ones (names, numbers, identifiers, typos) that go through the merge loop.

No corpus can be downloaded here, so the text is generated from one on disk: the Python sources
of the environment running the bench (docstrings, comments, code: English prose and code written
by thousands of people; about 20 000 files in the training venv). A word-bigram chain trained on
them writes the prose, so the vocabulary and its long tail are real while the rows are new (no
exact or near duplicates by construction, so dedup removes next to nothing and every method
tokenizes the same rows). One answer in five is a real code excerpt, as in instruction sets.
Deterministic for a seed and an environment.
"""
from __future__ import annotations

import random
import re
import sys
from pathlib import Path


def _sources(limit_mb: float = 40.0) -> list[str]:
    """Up to `limit_mb` of .py files from this interpreter's site-packages, in a fixed order."""
    site = next(Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    out, size = [], 0
    for f in sorted(site.rglob("*.py")):
        try:
            t = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        out.append(t)
        size += len(t)
        if size > limit_mb * 1e6:
            break
    return out


class Corpus:
    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)
        files = _sources()
        prose = []
        for t in files:
            # docstrings and comments: the English part
            prose += re.findall(r'"""(.*?)"""', t, re.S)
            prose += re.findall(r"#\s?(.*)", t)
        words = " ".join(prose).split()  # words with their punctuation, as written
        nxt: dict[str, list[str]] = {}
        for a, b in zip(words, words[1:]):
            nxt.setdefault(a, []).append(b)
        self.nxt = nxt
        self.starts = [w for w in nxt if w[:1].isupper()] or list(nxt)
        self.code = [t for t in files if len(t) > 2000]
        self.vocab = len(nxt)

    def prose(self, n: int) -> str:
        rng, out = self.rng, []
        w = rng.choice(self.starts)
        for _ in range(n):
            out.append(w)
            follow = self.nxt.get(w)
            w = rng.choice(follow) if follow else rng.choice(self.starts)
        return " ".join(out)

    def code_excerpt(self, n_chars: int) -> str:
        t = self.rng.choice(self.code)
        i = self.rng.randrange(0, max(1, len(t) - n_chars))
        return t[i:i + n_chars]


def make_pairs(mb: float, words: tuple[int, int], seed: int = 0, corpus: Corpus | None = None) -> list[dict]:
    """Pairs of about `mb` MB: prompts and answers of words[0]-words[1] words (answers one in five
    a code excerpt of the same size). Same shape as prep_tokenize.make_pairs, real vocabulary."""
    c = corpus or Corpus(seed)
    rng = random.Random(seed)
    out, size = [], 0
    while size < mb * 1e6:
        p = c.prose(rng.randint(*words))
        n = rng.randint(*words)
        g = c.code_excerpt(n * 6) if rng.random() < 0.2 else c.prose(n)
        out.append({"prompt": p, "generation": g})
        size += len(p) + len(g)
    return out


if __name__ == "__main__":
    c = Corpus()
    print(f"{c.vocab} distinct words in the chain; {len(c.code)} code files")
    for r in make_pairs(0.002, (10, 80), corpus=c)[:3]:
        print(r)
