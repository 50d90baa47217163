"""Stage 2, clean: Unicode normalization, whitespace and control characters, length bounds, and the
boilerplate of synthetic data ("As an AI language model...", "...trained by OpenAI...", refusals).

Each function takes a record and returns it cleaned, or a drop reason. The boilerplate list is
`config.DEFAULT_BOILERPLATE` plus the user's `clean.boilerplate_extra`; a hit drops the row or cuts
the sentence that holds the phrase, as configured.
"""
from __future__ import annotations

import re
import unicodedata

from .config import DEFAULT_BOILERPLATE, CleanConfig

# Control characters except tab and newline, plus zero-width characters and the BOM.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200c\u200d\u2060\ufeff]")
_TRAILING = re.compile(r"[ \t]+\n")
_BLANKS = re.compile(r"\n{3,}")


def clean_text(s: str, cfg: CleanConfig) -> str:
    if cfg.normalize != "none":
        s = unicodedata.normalize(cfg.normalize, s)
    s = s.replace("\r\n", "\n").replace("\r", "\n")
    s = _CONTROL.sub("", s)
    s = _TRAILING.sub("\n", s)
    s = _BLANKS.sub("\n\n", s)
    return s.strip()


class Boilerplate:
    def __init__(self, cfg: CleanConfig):
        phrases = (DEFAULT_BOILERPLATE if cfg.boilerplate_default else []) + cfg.boilerplate_extra
        self.mode = cfg.boilerplate if phrases else "off"
        alt = "|".join(re.escape(p.lower()) for p in sorted(set(phrases), key=len, reverse=True)) or "(?!)"
        # searched in the lowercased text: an alternation under re.I is about 5x slower, and this
        # search runs on every answer
        self.find = re.compile(alt)
        # the sentence around a phrase: back to the previous sentence end, on to the next one
        self.sentence = re.compile(r"[^.!?\n]*(?:" + alt + r")[^.!?\n]*[.!?]*[ \t]*", re.I)

    def apply(self, s: str) -> tuple[str, str | None]:
        """(text, phrase found or None); in cut mode the text comes back without the sentence."""
        if self.mode == "off":
            return s, None
        m = self.find.search(s.lower())
        if not m:
            return s, None
        if self.mode == "cut":
            # keep the space before the cut sentence, drop the one after it
            s = self.sentence.sub(lambda m: m.group()[:len(m.group()) - len(m.group().lstrip())], s).strip()
        return s, m.group()


def fields(rec: dict) -> list[str]:
    """The texts of a record, in a fixed order (used for cleaning, hashing and length)."""
    if "messages" in rec:
        return [t["content"] for t in rec["messages"]]
    if "text" in rec:
        return [rec["text"]]
    return [rec["input"], rec["output"]]


def clean_record(rec: dict, cfg: CleanConfig, bp: Boilerplate) -> tuple[dict | None, str | None]:
    """(cleaned record, None) or (None, drop reason)."""
    if any(v is None for v in fields(rec)):
        return None, "null_value"
    hit = None
    out = dict(rec)
    if "messages" in rec:
        msgs = []
        for t in rec["messages"]:
            c, h = bp.apply(clean_text(t["content"], cfg))
            hit = hit or h
            msgs.append({"role": t["role"], "content": c})
        out["messages"] = msgs
    else:
        for k in ("text", "input", "output"):
            if k in rec:
                # the prompt of a pair is the user's words; only answers carry synthetic boilerplate
                if k == "input":
                    out[k] = clean_text(rec[k], cfg)
                    continue
                out[k], h = bp.apply(clean_text(rec[k], cfg))
                hit = hit or h
    if hit and bp.mode == "drop":
        return None, "boilerplate"
    n = sum(len(x) for x in fields(out))
    if n < max(cfg.min_chars, 1):
        return None, "too_short"
    if n > cfg.max_chars:
        return None, "too_long_chars"
    if "output" in out and not out["output"]:
        return None, "empty_output"
    if "messages" in out and not any(t["content"] for t in out["messages"] if t["role"] == "assistant"):
        return None, "empty_output"
    return out, None
