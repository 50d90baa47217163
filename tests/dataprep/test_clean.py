"""Boilerplate and refusal detection on a varied set written for it: the wording families real
synthetic data uses (each must be found, with the family that found it) and near-misses, sentences
that share words with them but are ordinary content (each must be kept)."""
from __future__ import annotations

import pytest

import re

from dataprep.clean import BOILERPLATE_PATTERNS, Boilerplate, clean_record, normalize_for_match
from launcher.dataspec import CleanConfig

REFUSALS = [  # (text, family)
    ("As a large language model, I cannot browse the internet.", "as_an_ai"),
    ("As an AI language model, I don't have feelings.", "as_an_ai"),
    ("as an AI, I must point out that this is unsafe", "as_an_ai"),
    ("AS AN A.I. LANGUAGE MODEL I CAN'T DO THAT", "as_an_ai"),
    ("As a helpful, responsible AI assistant, I'd suggest another approach.", "as_an_ai"),
    ("As an artificial intelligence, I have no body.", "as_an_ai"),
    ("Well... as a language-model, I would say it depends.", "as_an_ai"),
    ("As an advanced AI model developed by OpenAI, I aim to be accurate.", "as_an_ai"),
    ("As a conversational AI, my answers may be wrong.", "as_an_ai"),
    ("Remember, as an AI chatbot I see only text.", "as_an_ai"),
    ("I am an AI language model and cannot make phone calls.", "i_am_an_ai"),
    ("I’m just an AI, so I can’t taste food.", "i_am_an_ai"),
    ("Being a virtual assistant, I have no address.", "i_am_an_ai"),
    ("I'm only a language model; please ask a doctor.", "i_am_an_ai"),
    ("I am merely an AI system with no opinions.", "i_am_an_ai"),
    ("I'm sorry, but I can't help with that.", "sorry_i_cant"),
    ("I’m really sorry, but I won’t be able to assist with this request.", "sorry_i_cant"),
    ("Sorry, but I cannot provide that information.", "sorry_i_cant"),
    ("I am sorry but I am unable to fulfill this.", "sorry_i_cant"),
    ("I apologize, but I cannot create content like that.", "sorry_i_cant"),
    ("Unfortunately, I can't generate that kind of story.", "sorry_i_cant"),
    ("I'm so sorry - I cannot engage in that role-play.", "sorry_i_cant"),
    ("I'm sorry but I must decline to write this.", "sorry_i_cant"),
    ("i'm sorry, i can't do that.", "sorry_i_cant"),
    ("Sorry, I don't feel comfortable continuing this conversation.", "sorry_i_cant"),
    ("I cannot fulfill your request.", "cannot_fulfill"),
    ("I can't comply with that request.", "cannot_fulfill"),
    ("I won't assist with such a request!", "cannot_fulfill"),
    ("I am unable to help with this particular task.", "cannot_fulfill"),
    ("I was developed by OpenAI to answer questions.", "made_by"),
    ("I was created by Anthropic.", "made_by"),
    ("I've been trained by Google DeepMind on lots of text.", "made_by"),
    ("I am a model that was built by Meta AI.", "made_by"),
    ("This assistant was trained by OpenAI.", "made_by"),
    ("I don't have personal opinions on politics.", "no_personal_opinions"),
    ("I do not have personal feelings or preferences.", "no_personal_opinions"),
    ("I don't possess any personal beliefs.", "no_personal_opinions"),
    ("I do not have feelings like humans do.", "no_personal_opinions"),
    ("My knowledge cutoff is September 2021.", "knowledge_cutoff"),
    ("As of my last training update, that was true.", "knowledge_cutoff"),
    ("As of my knowledge cut-off, the record stands.", "knowledge_cutoff"),
    ("I can't browse the internet for live scores.", "knowledge_cutoff"),
    ("I don't have access to real-time information.", "knowledge_cutoff"),
    ("That would go against OpenAI's content policy.", "policy"),
    ("This goes against my programming.", "policy"),
    ("It is not appropriate for me to comment on that.", "policy"),
    ("I'm not able to share harmful or offensive content.", "policy"),
    ("I am not programmed to generate that.", "policy"),
]

NEAR_MISSES = [
    "As an AI researcher, I have trained many models.",
    "As an AI company, we publish our evaluations.",
    "As a role model, she inspired many students.",
    "As a model for other cities, Vienna invested in trams.",
    "A language model predicts the next token from the previous ones.",
    "Large language models are trained on text from the web.",
    "I am a teacher and I love my students.",
    "I'm sorry to hear about your loss.",
    "I'm sorry, but I can't believe how good this cake is!",
    "Sorry I cannot make it to the party on Friday.",
    "I cannot recommend this book enough.",
    "Windows was developed by Microsoft in the 1980s.",
    "ChatGPT is a chatbot made by a company in San Francisco.",
    "I was trained by my father as a carpenter.",
    "I don't have any money left this month.",
    "I don't have an opinion yet; let me read the paper first.",
    "The cutoff date for applications is May 1.",
    "Her knowledge of Roman history is remarkable.",
    "Our policy is to refund within 30 days.",
    "The content policy of the forum forbids spam.",
    "Being an artist means living with uncertainty.",
    "I am an engineer at a small lab.",
    "You are an AI assistant. Answer briefly.",
    "The AI model was fine-tuned on medical notes.",
    "Unfortunately, the train was late again.",
    "I won't be able to attend, but my colleague will.",
    "It is appropriate for me to thank you all.",
    "Harmful algal blooms can poison fish.",
    "He said: as an aside, the model converged.",
    "I'm an avid reader of science fiction.",
    # news and documents that mention AI are not the assistant speaking
    "The firm markets its product as an AI assistant for lawyers.",
    "Microsoft launched Copilot as an AI chatbot in 2023.",
    "GPT-4 was developed by OpenAI with Microsoft infrastructure.",
    "The model, developed by OpenAI, was released in March.",
    "Unfortunately I cannot answer the phone on Sundays, said the shop owner.",
    "I'm sorry, but I can't help feeling the ending was rushed.",
]


def test_refusal_families_are_found():
    bp = Boilerplate(CleanConfig())
    missed = [(t, fam, bp.search(t)) for t, fam in REFUSALS if bp.search(t) != fam]
    assert not missed, missed
    assert len({fam for _, fam in REFUSALS}) == len(bp.names)  # every family is exercised


def test_near_misses_are_kept():
    bp = Boilerplate(CleanConfig())
    hit = [(t, bp.search(t)) for t in NEAR_MISSES if bp.search(t)]
    assert not hit, hit


def test_user_phrases_and_patterns_extend_the_list():
    cfg = CleanConfig(boilerplate_extra=["Brought to you by ACME-corp"], boilerplate_patterns=[r"\bregenerate response\b"])
    bp = Boilerplate(cfg)
    assert bp.search("Brought to you, by ACME corp!").startswith("extra phrase 1")
    assert bp.search("Click 'Regenerate Response' to retry").startswith("extra pattern 1")
    assert bp.search("brought to me by ACME corp") is None
    off = Boilerplate(CleanConfig(boilerplate_default=False, boilerplate_extra=["ACME"]))
    assert off.search(REFUSALS[0][0]) is None and off.search("acme!") is not None


def test_drop_names_the_family_and_cut_keeps_the_rest():
    rec, why = clean_record({"input": "As an AI, what do you think?", "output": "I’m sorry — I can’t help with that."},
                            CleanConfig(), Boilerplate(CleanConfig()))
    assert (rec, why) == ("sorry_i_cant", "boilerplate")
    cut = CleanConfig(boilerplate="cut")
    rec, why = clean_record({"input": "q", "output": "As a large language model, I have no body! Still: 2 + 2 = 4.\nDone."},
                            cut, Boilerplate(cut))
    assert why is None and rec["output"] == "Still: 2 + 2 = 4.\nDone."
    # a system prompt and the user's words are data: never searched
    chat = {"messages": [{"role": "system", "content": "As an AI assistant, you answer briefly."},
                         {"role": "user", "content": "I'm sorry, but I can't help with that. Can you?"},
                         {"role": "assistant", "content": "Yes: here is how."}]}
    rec, why = clean_record(chat, CleanConfig(), Boilerplate(CleanConfig()))
    assert why is None and rec["messages"] == chat["messages"]
    rec, why = clean_record({"messages": chat["messages"][:2] + [{"role": "assistant", "content": "As an AI, no."}]},
                            CleanConfig(), Boilerplate(CleanConfig()))
    assert (rec, why) == ("as_an_ai", "boilerplate")
    # the prompt is the user's words: never cut
    rec, _ = clean_record({"input": "I'm sorry, but I can't help with that, can you?", "output": "Sure."}, cut, Boilerplate(cut))
    assert rec["input"].startswith("I'm sorry")


@pytest.mark.parametrize("regexes", [[r"ponse\b", r"^\s*ok\b", r"\s+as an?\b"], []])
def test_one_search_finds_what_each_pattern_finds_alone(regexes):
    """The combined search (word patterns after a space, the users' regexes unanchored) names the
    leftmost hit of the patterns run one by one, the earlier pattern on a tie: texts with refusals
    embedded at various places, two in one text, near-misses, and user regexes that start mid-word or
    at a space; with and without user regexes (the word patterns are anchored differently)."""
    cfg = CleanConfig(boilerplate_extra=["brought to you by acme"], boilerplate_patterns=regexes)
    bp = Boilerplate(cfg)
    alone = [re.compile(p) for p in BOILERPLATE_PATTERNS.values()]
    alone += [re.compile(r"\bbrought\sto\syou\sby\sacme\b")] + [re.compile(p) for p in regexes]
    texts = [t for t, _ in REFUSALS] + NEAR_MISSES + ["OK, fine.", "Brought to you by ACME."]
    texts += [f"Sure thing. {a} Then: {b}" for a, _ in REFUSALS[::3] for b, _ in REFUSALS[1::5]]
    texts += [f"{n} and so on; a response. {t}" for n, (t, _) in zip(NEAR_MISSES, REFUSALS[::2])]
    for t in texts:
        norm = normalize_for_match(t)
        hits = [(m.start(), i) for i, rx in enumerate(alone) if (m := rx.search(norm))]
        want = bp.names[min(hits)[1]] if hits else None
        assert bp.search(t) == want, (t, bp.search(t), want)


def test_ascii_and_unicode_normalization_agree():
    """normalize_for_match takes a byte path for ASCII text; it gives what the regular expressions give
    (apostrophes dropped, every other run of punctuation, underscores and space one space)."""
    import random
    import string

    def by_regex(s: str) -> str:
        s = re.sub(r"['\u2019\u2018\u02bc`\u00b4]", "", s.lower())
        return " " + re.sub(r"[\W_]+", " ", s).strip() + " "

    rng = random.Random(0)
    alphabet = string.printable + "  __''``"
    texts = ["", " ", "'", "I'm_here", "can't -- won`t!", "A\tB\nC\rD\x0bE\x0cF", "x\x00y\x1fz\x7f"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(2000)]
    for t in texts:
        assert t.isascii() and normalize_for_match(t) == by_regex(t), repr(t)
    for t in ["I’m ÉTÉ – déjà‐vu", "naïve café_au_lait", "日本語 テキスト"]:  # the other path
        assert normalize_for_match(t) == by_regex(t)


def test_a_bad_user_pattern_is_one_line():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="not a regular expression"):
        CleanConfig(boilerplate_patterns=["(unclosed"])


@pytest.mark.parametrize("raw, want", [
    ("a \r\n b", "a\n b"),  # CRLF, then the space it leaves at the end of a line
    ("x\x00y \n\n\n\nz", "xy\n\nz"),
    ("  \t\n a \u200b", "a"),
    (" \x00\nx", "x"),  # a control character between a space and a newline: the space is then trailing
    ("a\u200b \nb", "a\nb"),
    ("one\r\rtwo", "one\n\ntwo"),
    ("plain text, nothing to do", "plain text, nothing to do"),
    ("end of page one\x0cpage two\x0bnext", "end of page one\npage two\nnext"),  # pdftotext, Word line breaks
    # Windows-1252 read as Latin-1: its punctuation back, its undefined codes gone
    ("Don\x92t stop \x93now\x94 \x96 it\x92s 5\x80\x85\x81", "Don\u2019t stop \u201cnow\u201d \u2013 it\u2019s 5\u20ac\u2026"),
    # a fenced block keeps the code's blank lines; around it, and in an unclosed fence, they are collapsed
    ("Two:  \n\n\n```py\ndef f():\n    pass\n\n\ndef g():\n    pass\n```\n\n\n\nEnd \n\n\n~~~\nx\n\n\n",
     "Two:\n\n```py\ndef f():\n    pass\n\n\ndef g():\n    pass\n```\n\nEnd\n\n~~~\nx"),
    ("A diff:\n```diff\n@@ -1,3 +1,3 @@\n a\n \n-b\n+c\n```", "A diff:\n```diff\n@@ -1,3 +1,3 @@\n a\n \n-b\n+c\n```"),
])
def test_clean_text_steps(raw, want):
    from dataprep.clean import clean_text

    assert clean_text(raw, CleanConfig()) == want
