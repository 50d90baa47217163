"""Deduplication on its own: the on-disk index decides as datasketch's in-memory MinHashLSH does,
keeps the first of each group, reports the groups, and leaves nothing behind."""
from __future__ import annotations

import random

from datasketch import MinHash, MinHashLSH

from dataprep.config import DedupConfig
from dataprep.dedup import Deduper, bands, content_key, shingles

WORDS = "river stone light cloud apple garden music paper window green quiet orange table winter".split()


def _records(n: int, seed: int = 0) -> list[dict]:
    """Rows with many near copies (a word or two changed) and some exact copies."""
    rng = random.Random(seed)
    bases = [[rng.choice(WORDS) for _ in range(rng.randint(20, 60))] for _ in range(n // 4)]
    out = []
    for i in range(n):
        words = list(rng.choice(bases))
        roll = rng.random()
        if roll < 0.5:  # a near copy
            words[rng.randrange(len(words))] = rng.choice(WORDS) + "x"
        elif roll < 0.6:  # something new
            words = [rng.choice(WORDS) for _ in range(rng.randint(20, 60))]
        out.append({"text": " ".join(words), "_where": f"f.jsonl:{i + 1}"})
    return out


def _datasketch_decisions(recs: list[dict], cfg: DedupConfig) -> list[str | None]:
    """The same rules with datasketch's own in-memory index: the reference."""
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
    seen, out = set(), []
    for i, rec in enumerate(recs):
        key = content_key(rec)
        if key in seen:
            out.append("exact_duplicate")
            continue
        m = MinHash(num_perm=cfg.num_perm, seed=1, hashfunc=lambda x: x)
        m.update_batch(shingles(rec))
        if lsh.query(m):
            out.append("near_duplicate")
            continue
        lsh.insert(str(i), m)
        seen.add(key)
        out.append(None)
    return out


def test_same_decisions_as_datasketch_index(tmp_path):
    cfg = DedupConfig()
    recs = _records(600)
    d = Deduper(cfg, tmp_path)
    ours = [d.check(r, content_key(r)) for r in recs]
    d.close()
    ref = _datasketch_decisions(recs, cfg)
    assert ours == ref
    # the data really has all three outcomes, so the comparison means something
    assert min(ours.count(None), ours.count("exact_duplicate"), ours.count("near_duplicate")) > 20
    assert bands(cfg.threshold, cfg.num_perm)[0] > 1


def test_groups_keep_the_first_and_report_the_largest(tmp_path):
    d = Deduper(DedupConfig(), tmp_path)
    # 200 words, one changed: a Jaccard similarity of 0.97 (threshold 0.85; datasketch's bands
    # for it catch 0.97 almost always, 0.9 only 60% of the time)
    text = " ".join(f"w{i}" for i in range(100)) + " in the morning light " + " ".join(f"v{i}" for i in range(96))
    rows = [("a:1", text), ("a:2", "something else entirely about gardens and music and paper windows"),
            ("a:3", text.upper()),  # exact after casefolding
            ("a:4", text.replace("morning", "evening")),  # near
            ("a:5", "  " + text + " "),  # exact after whitespace
            ("a:6", "something else entirely about gardens and music and paper windows")]
    got = [d.check({"text": t, "_where": w}, content_key({"text": t})) for w, t in rows]
    assert got == [None, None, "exact_duplicate", "near_duplicate", "exact_duplicate", "exact_duplicate"]
    rep = d.report()
    assert rep["groups"] == 2
    assert rep["largest"][0] == {"kept": "a:1", "dropped": ["a:3", "a:4", "a:5"], "size": 4}
    assert rep["largest"][1] == {"kept": "a:2", "dropped": ["a:6"], "size": 2}
    d.close()
    assert not list(tmp_path.iterdir())


def test_exact_only_and_near_only(tmp_path):
    text = " ".join(f"w{i}" for i in range(200))
    near = text.replace("w30 ", "changed ")
    for cfg, want in ((DedupConfig(near=False), [None, "exact_duplicate", None]),
                      (DedupConfig(exact=False), [None, "near_duplicate", "near_duplicate"])):
        d = Deduper(cfg, tmp_path)
        got = [d.check({"text": t, "_where": str(i)}, content_key({"text": t})) for i, t in enumerate([text, text, near])]
        d.close()
        assert got == want, cfg
