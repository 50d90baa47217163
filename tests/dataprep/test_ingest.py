"""Stage 1 on real-shaped inputs: SQL dumps from the real tools, HTML pages, CSV with quoted newlines,
JSONL key mappings and chats, plain text, Parquet and a saved dataset; and every bad-input path."""
import json
import shutil
import textwrap
import subprocess
from pathlib import Path

import pytest

from launcher.dataspec import Source
from dataprep.errors import DataError, Rejects
from dataprep.ingest import html_text, read_source
from dataprep.sqldump import read_sql_dump

FIXTURES = Path(__file__).parent / "fixtures"

EXPECTED = json.loads((FIXTURES / "sql_rows.json").read_text())


def _raise(where, problem, raw=None):
    raise DataError(f"{where}: {problem}")


def rows(path, table=None):
    return [(w, {k: (int(v) if k == "id" else v) for k, v in r.items()}) for w, r in read_sql_dump(Path(path), table, "utf-8", _raise)]


@pytest.mark.parametrize("dump", ["mysql.sql", "postgres_copy.sql", "postgres_inserts.sql", "sqlite.sql"])
def test_sql_dump_values_come_out_exactly(dump):
    got = rows(FIXTURES / dump)
    assert [r for _, r in got] == EXPECTED  # NULLs, quotes, \r\n, tabs, backslashes, emoji, combining marks
    assert all(f"{dump}:" in w and "conversations row" in w for w, _ in got)


def test_sqlite_dump_made_now_with_the_real_cli(tmp_path):
    sqlite3 = shutil.which("sqlite3")
    assert sqlite3, "the sqlite3 CLI is required (apt-get install sqlite3)"
    db = tmp_path / "x.db"
    sql = ("CREATE TABLE notes (body TEXT, n INT); CREATE TABLE other (a TEXT);"
           "INSERT INTO other VALUES ('ignore me');"
           "INSERT INTO notes VALUES ('two\nlines', 1), ('it''s ; here', 2), (NULL, 3);")
    subprocess.run([sqlite3, str(db)], input=sql, text=True, check=True)
    dump = subprocess.run([sqlite3, str(db), ".dump"], capture_output=True, check=True).stdout
    (tmp_path / "d.sql").write_bytes(dump)
    got = [r for _, r in read_sql_dump(tmp_path / "d.sql", "notes", "utf-8", _raise)]
    assert got == [{"body": "two\nlines", "n": "1"}, {"body": "it's ; here", "n": "2"}, {"body": None, "n": "3"}]
    with pytest.raises(DataError, match=r"d\.sql: several tables have rows \(notes, other\); set table:"):
        list(read_sql_dump(tmp_path / "d.sql", None, "utf-8", _raise))


def test_truncated_sql_dumps_name_the_line(tmp_path):
    text = (FIXTURES / "mysql.sql").read_text()
    cut = tmp_path / "cut.sql"
    cut.write_text(text[:text.index("(3,'Unicode")])  # mid multi-row INSERT
    with pytest.raises(DataError, match=r"cut\.sql:42: truncated SQL dump: this statement never ends"):
        rows(cut)
    cut.write_text(text[:text.index("UNLOCK TABLES")])  # at a statement boundary, footer missing
    with pytest.raises(DataError, match=r"cut\.sql:\d+: truncated SQL dump: no '-- Dump completed'"):
        rows(cut)
    pg = (FIXTURES / "postgres_copy.sql").read_text()
    cut.write_text(pg[:pg.index("4\tLine1")])  # inside the COPY block
    with pytest.raises(DataError, match=r"cut\.sql:44: truncated SQL dump: COPY data never ends"):
        rows(cut)


def test_truncated_dump_quarantined_with_skip_bad(tmp_path):
    text = (FIXTURES / "mysql.sql").read_text()
    (tmp_path / "cut.sql").write_text(text[:text.index("(3,'Unicode")])
    rej = Rejects(tmp_path / "rejects.jsonl", skip_bad=True)
    recs = list(read_source(Source(path="cut.sql", input="prompt", output="reply"), tmp_path, rej))
    rej.close()
    assert recs == []  # the unfinished INSERT held rows 1-6: none is trusted, all quarantined as one
    bad = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [(b["reason"], b["where"]) for b in bad] == [("bad_input", f"{tmp_path}/cut.sql:42")]
    assert "truncated" in bad[0]["detail"]


PAGE = """<!doctype html><html><head><title>T</title><style>p{color:red}</style>
<script>var tracking = "evil";</script></head><body>
<div id="cookie-banner">We use cookies. <button>Accept</button></div>
<nav><a href="/">Home</a> | <a href="/about">About</a></nav>
<header class="site-header">Site name</header>
<main><h1>Real title</h1>
<p>First   paragraph,
 spread over lines.</p>
<p>Second <b>bold</b> paragraph &amp; entity.</p>
<ul><li>item one</li><li>item two</li></ul>
<script>document.write("no")</script>
</main>
<aside class="sidebar">Related links</aside>
<footer>Copyright 2024</footer></body></html>"""


def test_html_keeps_readable_paragraphs_only():
    assert html_text(PAGE) == ["# Real title", "First paragraph, spread over lines.",
                               "Second **bold** paragraph & entity.", "- item one\n- item two"]


HTML = FIXTURES / "html"


def _code_blocks(markup: str) -> list[str]:
    import lxml.html

    return [textwrap.dedent(p.text_content()).strip("\n") for p in lxml.html.fromstring(markup).iter("pre")]


@pytest.mark.parametrize("page", sorted(p.name for p in HTML.glob("*.html")))
def test_html_pages_as_a_reader_sees_them(page):
    """Real-shaped pages (docs with nav and footnotes, blog, forum, table, a legal page whose cookie
    section has "cookie" in its id): code verbatim, no navigation or banners, content, footnotes
    and table rows kept."""
    markup = (HTML / page).read_text(encoding="utf-8")
    exp = json.loads((HTML / "expect.json").read_text())[page]
    blocks = html_text(markup)
    text = "\n\n".join(blocks)
    flat = " ".join(text.replace("**", "").replace("`", "").split())
    for code in _code_blocks(markup):  # byte-identical after dedent, fenced, one block each
        assert "```\n" + code + "\n```" in blocks
    assert [c for c in exp["chrome"] if c in flat] == []
    assert [c for c in exp["content"] if " ".join(c.split()) not in flat] == []
    for cells in exp["rows"]:
        assert "| " + " | ".join(cells) + " |" in text


def test_csv_quoted_newlines_header_and_encoding(tmp_path):
    (tmp_path / "a.csv").write_text('q,a,extra\n"multi\nline ""quoted"" prompt","answer, with comma",x\nq2,a2,y\n')
    rej = Rejects(tmp_path / "r.jsonl")
    recs = list(read_source(Source(path="a.csv", input="q", output="a"), tmp_path, rej))
    assert [(r["input"], r["output"], r["_where"]) for r in recs] == [
        ('multi\nline "quoted" prompt', "answer, with comma", f"{tmp_path}/a.csv:2"), ("q2", "a2", f"{tmp_path}/a.csv:4")]
    (tmp_path / "b.tsv").write_bytes("caf\xe9\tcr\xe8me\n".encode("latin-1"))
    recs = list(read_source(Source(path="b.tsv", header=False, input="0", output="1", encoding="latin-1"), tmp_path, rej))
    assert [(r["input"], r["output"]) for r in recs] == [("café", "crème")]


def test_jsonl_mappings_and_chat(tmp_path):
    lines = [{"prompt": "p1", "generation": "g1"},
             {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
             {"conversations": [{"from": "human", "value": "yo"}, {"from": "gpt", "value": "sup"}]},
             {"text": "plain"}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    recs = list(read_source(Source(path="a.jsonl"), tmp_path, Rejects(tmp_path / "r.jsonl")))
    assert recs[0]["input"] == "p1" and recs[0]["output"] == "g1"
    assert recs[1]["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert recs[2]["messages"][1] == {"role": "assistant", "content": "sup"}
    assert recs[3]["text"] == "plain" and recs[3]["_where"] == f"{tmp_path}/a.jsonl:4"
    (tmp_path / "b.jsonl").write_text(json.dumps({"q": "a", "body": "b"}) + "\n")
    recs = list(read_source(Source(path="b.jsonl", text="body"), tmp_path, Rejects(tmp_path / "r.jsonl")))
    assert recs[0]["text"] == "b"


def test_text_parquet_and_saved_dataset(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "t.txt").write_text("para one\nstill one\n\npara two\n")
    recs = list(read_source(Source(path="t.txt", unit="paragraph"), tmp_path, Rejects(tmp_path / "r.jsonl")))
    assert [(r["text"], r["_where"]) for r in recs] == [("para one\nstill one", f"{tmp_path}/t.txt:1"),
                                                         ("para two", f"{tmp_path}/t.txt:4")]
    pq.write_table(pa.table({"i": ["a", "b"], "o": ["x", "y"]}), tmp_path / "p.parquet")
    recs = list(read_source(Source(path="p.parquet", input="i", output="o"), tmp_path, Rejects(tmp_path / "r.jsonl")))
    assert [(r["input"], r["output"]) for r in recs] == [("a", "x"), ("b", "y")]
    datasets.Dataset.from_dict({"text": ["d1", "d2"]}).save_to_disk(str(tmp_path / "ds"))
    recs = list(read_source(Source(path="ds"), tmp_path, Rejects(tmp_path / "r.jsonl")))
    assert [r["text"] for r in recs] == ["d1", "d2"]


@pytest.mark.parametrize("name,content,source,match", [
    ("a.jsonl", b'{"text": "ok"}\n{"text": broken\n', {}, r"a\.jsonl:2: malformed JSON"),
    ("a.jsonl", b'{"text": "ok"}\n{"body": "x"}\n', {"text": "text"}, r"a\.jsonl:2: no field 'text' \(fields: body\)"),
    ("a.csv", b"q,a\nx,y\n", {"input": "q", "output": "missing"}, r"a\.csv:2: no field 'missing'"),
    ("a.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', {}, r"a\.jsonl:2: cannot decode byte 0xe9"),
    ("a.jsonl", b"", {}, r"a\.jsonl:1: empty file"),
    ("a.html", b"<html><body><script>x()</script><nav>menu</nav></body></html>", {}, r"a\.html:1: HTML page has no readable text"),
    ("a.csv", b'q,a\n"unclosed,y\n', {"input": "q", "output": "a"}, r"a\.csv:2: malformed CSV"),
])
def test_bad_input_names_file_and_line(tmp_path, name, content, source, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=match):
        list(read_source(Source(path=name, **source), tmp_path, Rejects(tmp_path / "r.jsonl")))
    # the same input with --skip-bad: quarantined, counted, with the location
    rej = Rejects(tmp_path / "r.jsonl", skip_bad=True)
    recs = list(read_source(Source(path=name, **source), tmp_path, rej))
    rej.close()
    dropped = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    bad = [b for b in dropped if b["reason"] == "bad_input"]
    assert len(bad) >= 1 and all(name in b["where"] for b in dropped)
    assert {b["reason"] for b in dropped} <= {"bad_input", "csv_header"}
    assert rej.counts[("ingest", "bad_input")] == len(bad)
    assert rej.units == len(recs) + len(dropped)  # every unit read is kept or rejected


def test_live_database_url_and_query(tmp_path):
    import sqlite3

    db = tmp_path / "live.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE qa (q TEXT, a TEXT, keep INT)")
    con.executemany("INSERT INTO qa VALUES (?, ?, ?)", [("q1", "a1\nline", 1), ("q2", None, 1), ("q3", "a3", 0)])
    con.commit()
    con.close()
    src = Source(url=f"sqlite:///{db}", query="SELECT q, a FROM qa WHERE keep = 1 ORDER BY q", input="q", output="a")
    recs = list(read_source(src, tmp_path, Rejects(tmp_path / "r.jsonl")))
    assert [(r["input"], r["output"], r["_where"]) for r in recs] == [
        ("q1", "a1\nline", f"sqlite:///{db} (query row 1)"), ("q2", None, f"sqlite:///{db} (query row 2)")]
    with pytest.raises(DataError, match="no such table"):
        list(read_source(Source(url=f"sqlite:///{db}", query="SELECT * FROM nope", text="q"), tmp_path, Rejects(tmp_path / "r.jsonl")))
