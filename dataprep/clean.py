"""Stage 2, clean: Unicode normalization, whitespace and control characters, length bounds, and the
boilerplate of synthetic data ("As an AI language model...", "...developed by OpenAI...", refusals).

Boilerplate is found by pattern families (`BOILERPLATE_PATTERNS`), not a list of fixed phrases:
real synthetic data words the same refusal many ways ("As a large language model, I can't...",
"I'm really sorry, but I won't be able to help with that"). The patterns run on a normalized copy
of the text (`normalize_for_match`: lowercase, apostrophes dropped, every other punctuation mark a
space), so they need not spell out case, curly quotes or commas. Users add their own phrases
(`clean.boilerplate_extra`, matched the same way) or regular expressions
(`clean.boilerplate_patterns`). A hit drops the row or cuts the sentences that match, as
configured, and the report counts each pattern's rows with examples.
"""
from __future__ import annotations

import re
import unicodedata

from launcher.dataspec import CleanConfig

# Control characters except tab and newline, plus the zero-width space, word joiner and BOM: deleted,
# except those that stand for something (_control_table). The zero-width (non-)joiners stay: Persian and Indic spelling and emoji sequences (👨‍👩‍👧) need them.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u2060\ufeff]")


def _control_table() -> dict[int, str | None]:
    table: dict[int, str | None] = {c: None for c in [*range(0x20), 0x7f, 0x200b, 0x2060, 0xfeff] if c not in (9, 10, 13)}
    # A page break (pdftotext) or vertical tab (Word's line break) separates words: a line end.
    table[0x0b] = table[0x0c] = "\n"
    # C1 codes in text are almost always Windows-1252 read as Latin-1 (the usual "latin-1" CSV):
    # its quotes, dashes and euro sign, not controls to delete.
    for c in range(0x80, 0xa0):
        try:
            table[c] = bytes([c]).decode("cp1252")
        except UnicodeDecodeError:  # the five codes cp1252 leaves undefined
            table[c] = None
    return table


_CONTROL_TABLE = _control_table()
_TRAILING = re.compile(r"[ \t]+\n")
_BLANKS = re.compile(r"\n{3,}")
# A fenced code block (Markdown; HTML's <pre> comes out of ingest as one): its blank lines and spaces
# are the code's own (PEP 8 puts two blank lines between functions; a diff's unchanged empty line is
# one space), so they are left as they are there.
_FENCED = re.compile(r"^(```|~~~)[^\n]*\n.*?^\1[ \t]*$", re.M | re.S)

# What an assistant calls itself, after "as a/an", "I am (just) a/an", "being a/an".
_QUAL = r"(?:(?:large|advanced|helpful|friendly|conversational|digital|virtual|text based|responsible|ethical|" \
        r"honest|artificial|generative|mere|simple)\s)*"
_SELF = (r"(?:ai|a i|artificial intelligence|language model|llm|ai (?:language )?model|ai assistant|ai chatbot|"
         r"chatbot|chat bot|virtual assistant|ai system|machine learning model|ai powered (?:assistant|chatbot))")
# "as an AI researcher" or "as an AI company" is a person or a firm, not the assistant talking
_NOT_SELF = r"(?!\s(?:researcher|engineer|enthusiast|scientist|expert|ethicist|company|startup|developer|" \
            r"practitioner|student|professor|investor|lab|team|product|teacher|writer|journalist|consultant))"
_CANT = r"(?:cannot|cant|can not|wont|will not|am unable to|m unable to|am not able to|am not going to|" \
        r"must decline to|have to decline to|wont be able to|will not be able to|do not feel comfortable|dont feel comfortable)"
_HELP = r"(?:help|assist|provide|fulfill|comply|create|generate|write|produce|give|offer|share|engage|support|" \
        r"answer|respond|do that|do this|complete|participate|continu|discuss|role ?play|go along)\w*"
# "I can't help feeling ...", "I cannot answer the phone": idioms, not refusals
_IDIOM = r"(?! (?:feeling|thinking|but|wondering|noticing|laughing|smiling|myself|it|the phone|the door|calls?)\b)"
_MAKERS = r"(?:openai|open ai|anthropic|google(?: deepmind)?|deepmind|meta(?: ai)?|microsoft|mistral(?: ai)?|" \
          r"my (?:developers|creators|programmers|designers))"

# name -> regular expression over normalize_for_match(text). The names show in report.md.
BOILERPLATE_PATTERNS = {
    # the assistant speaking of itself opens the answer or goes on in the first person ("As an AI, I
    # ..."); "markets its product as an AI assistant for lawyers" does neither
    "as_an_ai": rf"\bas(?<=\A as) an? {_QUAL}{_SELF}\b{_NOT_SELF}"
                rf"|\bas an? {_QUAL}{_SELF}\b{_NOT_SELF}(?: \w+){{0,8}}? (?:i|im|ive|id|ill|my|me)\b",
    "i_am_an_ai": rf"\b(?:i am|im|being) (?:only |just |merely |simply |but |not a human but |not human i am )?"
                  rf"an? {_QUAL}{_SELF}\b{_NOT_SELF}",
    "sorry_i_cant": rf"\b(?:(?:i am|im) (?:very |really |so |truly |terribly )?sorry|sorry|i apologi[sz]e|"
                    rf"unfortunately)(?: but| however)? (?:as \w+ \w+ )?i {_CANT} (?:\w+ )?{_HELP}{_IDIOM}",
    "cannot_fulfill": rf"\bi {_CANT} (?:fulfill|comply with|assist with|help with|honou?r) "
                      rf"(?:that|this|your|such an?|the) (?:\w+ )?(?:request|task|demand|query)",
    "made_by": rf"\b(?:i was|i am|im|i have been|ive been) (?:\w+ ){{0,5}}?(?:developed|created|trained|built|made|"
               rf"designed|programmed) by {_MAKERS}\b|\b(?:this|the) (?:ai )?(?:assistant|chatbot) (?:was|is|has been) "
               rf"(?:\w+ ){{0,2}}?(?:trained|developed|created|built|made) by {_MAKERS}\b",
    "no_personal_opinions": r"\bi (?:do not|dont|dont really) (?:have|possess|hold|experience) (?:any )?(?:personal )"
                            r"(?:opinions|feelings|beliefs|preferences|experiences|emotions|views|thoughts)"
                            r"|\bi (?:do not|dont) have (?:feelings|emotions|consciousness|a physical (?:body|form))"
                            r"(?: or (?:feelings|emotions|opinions|consciousness))? (?:like|as) (?:a )?humans?",
    "knowledge_cutoff": r"\bmy (?:knowledge|training) (?:cut ?off|cutoff date)\b|\bas of my (?:last )?(?:training|"
                        r"knowledge) (?:update|cut ?off|data)\b|\bi (?:do not|dont|cannot|cant) (?:browse|access) "
                        r"the (?:internet|web)\b|\bi (?:do not|dont) have (?:access to )?(?:real time|current|"
                        r"up to date) (?:information|data)\b",
    "policy": r"\bopen ?ais? (?:guidelines|content polic(?:y|ies)|usage polic(?:y|ies)|use case polic(?:y|ies))\b"
              r"|\b(?:goes|go|is|its|would be) against my (?:programming|guidelines|principles|ethical guidelines)"
              r"|\b(?:harmful|offensive|inappropriate) (?:or|and) (?:harmful|offensive|inappropriate) content\b"
              r"|\bit is not appropriate for me\b|\bits not appropriate for me\b"
              r"|\bi am not (?:programmed|designed|allowed|permitted) to (?:provide|generate|produce|create|engage)",
}

_APOSTROPHES = re.compile(r"['\u2019\u2018\u02bc`\u00b4]")
_NON_WORD = re.compile(r"[\W_]+")


# The same for ASCII text with byte operations (3x faster; most texts are ASCII): apostrophes
# deleted, every other byte that is not a letter or digit a space, then the spaces collapsed.
_ASCII_MAP = bytes(c if chr(c).isalnum() and c < 128 else 32 for c in range(256))


def normalize_for_match(s: str) -> str:
    """Lowercase, apostrophes dropped ("I’m" -> "im", "can't" -> "cant"), every other run of
    punctuation and space a single space, padded with one space either side."""
    if s.isascii():
        return " " + " ".join(s.lower().encode().translate(_ASCII_MAP, b"'`").decode().split()) + " "
    return " " + _NON_WORD.sub(" ", _APOSTROPHES.sub("", s.lower())).strip() + " "


def clean_text(s: str, cfg: CleanConfig) -> str:
    if cfg.normalize != "none":
        s = unicodedata.normalize(cfg.normalize, s)
    # Each step runs only where it would change something: the `in` tests are far cheaper than a
    # regex pass, and most texts need none of them (9.4 -> 2.6 us a prompt/answer pair).
    if "\r" in s:
        s = s.replace("\r\n", "\n").replace("\r", "\n")
    if _CONTROL.search(s):
        s = s.translate(_CONTROL_TABLE)
    if " \n" in s or "\t\n" in s or "\n\n\n" in s:
        s = _tidy_lines(s) if "```" not in s and "~~~" not in s else _tidy_outside_code(s)
    return s.strip()


def _tidy_lines(s: str) -> str:
    """Trailing spaces dropped, runs of blank lines made one."""
    if " \n" in s or "\t\n" in s:
        s = _TRAILING.sub("\n", s)
    return _BLANKS.sub("\n\n", s) if "\n\n\n" in s else s


def _tidy_outside_code(s: str) -> str:
    out, at = [], 0
    for m in _FENCED.finditer(s):
        out += [_tidy_lines(s[at:m.start()]), m.group()]
        at = m.end()
    return "".join(out) + _tidy_lines(s[at:])


# A sentence: up to and including its end mark(s) and the space after, or a line.
_SENTENCE = re.compile(r"[^.!?\n]*(?:[.!?]+|\n|$)[ \t]*")


class Boilerplate:
    def __init__(self, cfg: CleanConfig):
        # Word patterns: each begins with \b and a word character. In normalize_for_match's text a word
        # always follows a space, so these run after one literal space: the engine then skips to the
        # next space and tries the alternation only there, not at every character (3.2x faster on chat
        # answers than unanchored, the same matches). The users' own regular expressions may begin
        # with anything and run unanchored; beside them, the space is a lookbehind (2.8x), so that one
        # of theirs that matches at a space still counts as further left than a word after it.
        words = dict(BOILERPLATE_PATTERNS) if cfg.boilerplate_default else {}
        for i, phrase in enumerate(cfg.boilerplate_extra, 1):
            ws = normalize_for_match(phrase).split()
            if ws:
                words[f"extra phrase {i}: {phrase}"] = r"\b" + r"\s".join(map(re.escape, ws)) + r"\b"
        regexes = {f"extra pattern {i}: {pat}": pat for i, pat in enumerate(cfg.boilerplate_patterns, 1)}
        self.mode = cfg.boilerplate if words or regexes else "off"
        self.names = list(words) + list(regexes)
        # one alternation of named groups, in the order of self.names: one search a text, the leftmost
        # hit (the earlier pattern on a tie), and m.lastgroup names the family. Most texts hold none, and
        # the same alternation without the groups says so 2.4x faster (the engine's quick first-character
        # test of each branch does not look past a group's start): it runs first, the named one on a hit.
        def alternation(group) -> str:
            alts = []
            if words:
                anchor = "(?<= )" if regexes else " "
                alts.append(anchor + "(?:" + "|".join(group(i, p) for i, p in enumerate(words.values())) + ")")
            alts += [group(len(words) + i, p) for i, p in enumerate(regexes.values())]
            return "|".join(alts) or "(?!)"

        self.find = re.compile(alternation(lambda i, p: f"(?P<p{i}>{p})"))
        self._any = re.compile(alternation(lambda i, p: f"(?:{p})"))

    def search(self, s: str) -> str | None:
        """The name of the first pattern found in s, or None."""
        norm = normalize_for_match(s)
        m = self._any.search(norm) and self.find.search(norm)
        return self.names[int(m.lastgroup[1:])] if m else None

    def apply(self, s: str) -> tuple[str, str | None]:
        """(text, pattern name or None); in cut mode the text comes back without the sentences that match."""
        if self.mode == "off":
            return s, None
        hit = self.search(s)
        if hit is None or self.mode == "drop":
            return s, hit
        parts = [m.group() for m in _SENTENCE.finditer(s) if m.group()]
        return "".join(p for p in parts if self.search(p) is None).strip(), hit


def fields(rec: dict) -> list[str]:
    """The texts of a record, in a fixed order (used for cleaning, hashing and length)."""
    if "messages" in rec:
        return [t["content"] for t in rec["messages"]]
    if "text" in rec:
        return [rec["text"]]
    return [rec["input"], rec["output"]]


def clean_record(rec: dict, cfg: CleanConfig, bp: Boilerplate) -> tuple[dict | str | None, str | None]:
    """(cleaned record, None) or (detail or None, drop reason); the detail of a boilerplate drop is
    the pattern that matched."""
    if any(v is None for v in fields(rec)):
        return None, "null_value"
    hit = None
    out = dict(rec)
    if "messages" in rec:
        msgs = []
        for t in rec["messages"]:
            c = clean_text(t["content"], cfg)
            # only the assistant's answers carry synthetic boilerplate; a system prompt saying "As an AI
            # assistant, you..." or the user's own words are data
            if t["role"] == "assistant":
                c, h = bp.apply(c)
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
        return hit, "boilerplate"
    n = sum(len(x) for x in fields(out))
    if n < max(cfg.min_chars, 1):
        return None, "too_short"
    if n > cfg.max_chars:
        return None, "too_long_chars"
    if "output" in out and not out["output"]:
        return None, "empty_output"
    if "messages" in out and not next((t["content"] for t in reversed(out["messages"]) if t["role"] == "assistant"), ""):
        return None, "empty_output"  # the last answer is the one trained on
    return out, None
