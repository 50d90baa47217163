"""Benchmark: HTML to training text. Which extractor gives the text a reader sees?

Runs each candidate on the pages in tests/dataprep/fixtures/html/ (written for this: a Sphinx
documentation page with navigation, code and footnotes; a blog article with a cookie banner; a
forum thread; an encyclopedia page with a table and a navbox; a privacy policy whose cookie
section has "cookie" in its id) and counts, per page and in total, against expect.json:
  chrome kept:  navigation, breadcrumbs, headers/footers, banners, share bars ... still in the text
  content lost: sentences of the page body (footnotes, notes, list items, captions) missing
  code broken:  <pre> blocks not found verbatim (after dedent) as consecutive lines
  rows broken:  table rows whose cells are not on one line, in order
and the time per page, as a ratio to the fastest candidate measured in the same run.

    python bench/prep_html.py [--show NAME]     # --show prints one candidate's text of every page
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = REPO / "tests" / "dataprep" / "fixtures" / "html"
BEFORE = "731b944"  # the commit whose dataprep/ingest.py had the hand-written extractor the issue was about


def code_blocks(markup: str) -> list[str]:
    """The text of every <pre> of a page: what must come out verbatim."""
    import lxml.html

    return [textwrap.dedent(p.text_content()).strip("\n") for p in lxml.html.fromstring(markup).iter("pre")]


def _flat(s: str) -> str:
    return " ".join(re.sub(r"\\([^\w\s])", r"\1", s).replace("**", "").replace("`", "").split())


def code_kept(text: str, code: str) -> bool:
    want, lines = code.splitlines(), text.splitlines()
    n = len(want)
    return any(textwrap.dedent("\n".join(lines[i:i + n])).splitlines() == want for i in range(len(lines) - n + 1))


def row_kept(text: str, cells: list[str]) -> bool:
    pat = re.compile(".*".join(re.escape(c) for c in cells))
    return any(pat.search(line) for line in text.splitlines())


def score(text: str, markup: str, exp: dict) -> dict:
    flat = _flat(text)
    return {"chrome kept": [c for c in exp["chrome"] if c in flat],
            "content lost": [c for c in exp["content"] if _flat(c) not in flat],
            "code broken": [c.splitlines()[0] for c in code_blocks(markup) if not code_kept(text, c)],
            "rows broken": [r[0] for r in exp["rows"] if not row_kept(text, r)]}


def _before():
    """dataprep's extractor before this benchmark existed, from git (the baseline)."""
    src = subprocess.run(["git", "show", f"{BEFORE}:dataprep/ingest.py"], cwd=REPO, capture_output=True, text=True)
    if src.returncode:
        return None
    path = Path("/tmp") / f"dataprep_ingest_{BEFORE}.py"
    path.write_text(src.stdout.replace("from .config import", "from launcher.dataspec import")
                    .replace("from .errors import", "from dataprep.errors import")
                    .replace("from .sqldump import", "from dataprep.sqldump import"))
    spec = importlib.util.spec_from_file_location("ingest_before", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return lambda m: "\n\n".join(mod.html_text(m))


def candidates() -> dict:
    import trafilatura
    from inscriptis import get_text
    from markdownify import markdownify
    from readability import Document

    from dataprep.html import html_text

    out = {}
    before = _before()
    if before:
        out["dataprep before (bs4 + class/id rules)"] = before
    out["trafilatura txt"] = lambda m: trafilatura.extract(m, include_tables=True, include_comments=False,
                                                           include_formatting=True) or ""
    out["trafilatura markdown"] = lambda m: trafilatura.extract(m, include_tables=True, include_comments=False,
                                                                include_formatting=True, output_format="markdown") or ""
    out["trafilatura markdown, favor_recall"] = lambda m: trafilatura.extract(
        m, include_tables=True, include_comments=False, include_formatting=True, output_format="markdown",
        favor_recall=True) or ""
    out["readability + inscriptis"] = lambda m: get_text(Document(m).summary(html_partial=True))
    out["readability + markdownify"] = lambda m: markdownify(Document(m).summary(html_partial=True))
    out["dataprep now"] = lambda m: "\n\n".join(html_text(m))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--show", help="print this candidate's text of every page")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    expect = json.loads((PAGES / "expect.json").read_text())
    pages = {name: (PAGES / name).read_text(encoding="utf-8") for name in expect}
    cands = candidates()
    rows = []
    for cname, fn in cands.items():
        for m in pages.values():
            fn(m)  # warm-up: imports, lazily built models
        t0 = time.perf_counter()
        for _ in range(args.rounds):
            texts = {name: fn(m) for name, m in pages.items()}
        per_page = (time.perf_counter() - t0) / args.rounds / len(pages)
        res = {name: score(texts[name], pages[name], expect[name]) for name in pages}
        tot = {k: sum(len(r[k]) for r in res.values()) for k in ("chrome kept", "content lost", "code broken", "rows broken")}
        rows.append((cname, tot, per_page, res))
        if args.show and args.show == cname:
            for name, t in texts.items():
                print(f"===== {name}\n{t}\n")
    n = {k: sum(len(e[k]) for e in expect.values()) for k in ("chrome", "content", "rows")}
    n_code = sum(len(code_blocks(m)) for m in pages.values())
    fastest = min(r[2] for r in rows)
    print(f"{len(pages)} pages: {n['chrome']} chrome strings, {n['content']} content strings, {n_code} code blocks, "
          f"{n['rows']} table rows")
    print(f"{'candidate':42s} {'chrome kept':>11s} {'content lost':>12s} {'code broken':>11s} {'rows broken':>11s} "
          f"{'ms/page':>8s} {'time vs fastest':>15s}")
    for cname, tot, t, _ in rows:
        print(f"{cname:42s} {tot['chrome kept']:11d} {tot['content lost']:12d} {tot['code broken']:11d} "
              f"{tot['rows broken']:11d} {t * 1000:8.1f} {t / fastest:14.1f}x")
    print("\nper page (chrome kept / content lost / code broken / rows broken):")
    for cname, _, _, res in rows:
        print(f"  {cname}")
        for name, r in res.items():
            bad = {k: v for k, v in r.items() if v}
            if bad:
                print(f"    {name}: " + "; ".join(f"{k}: {', '.join(map(repr, v))}" for k, v in bad.items()))


if __name__ == "__main__":
    sys.exit(main())
