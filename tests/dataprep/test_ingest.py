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
from dataprep.html import html_text
from dataprep.ingest import read_source
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


@pytest.mark.parametrize("dump", ["mysql.sql", "postgres_copy.sql"])  # (no line breaks inside their strings)
def test_sql_dumps_saved_with_windows_line_ends(dump, tmp_path):
    """A dump that went through a Windows editor or git's autocrlf: a COPY block's \\N is still a
    NULL and its \\. still ends it (the CR was read as part of the data)."""
    crlf = tmp_path / dump
    crlf.write_bytes((FIXTURES / dump).read_bytes().replace(b"\n", b"\r\n"))
    assert [r for _, r in rows(crlf)] == EXPECTED


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


def test_sql_values_of_every_shape_and_columns_the_mapping_does_not_use(tmp_path):
    """MySQL 8's _binary UUID keys and charset introducers, PostgreSQL's E'' strings, casts and
    ARRAYs: a value that is not read as text only matters in a column the mapping uses."""
    (tmp_path / "my.sql").write_text(
        "-- MySQL dump 10.13\nCREATE TABLE `qa` (`id` binary(16), `Question` text, `answer` text, `tags` json);\n"
        "INSERT INTO `qa` VALUES (_binary 'k\\0\\Z',_utf8mb4'first q','first a',JSON_ARRAY('x')),"
        "(_binary 'j',_utf8mb4'second q',_latin1'second a',NULL);\n-- Dump completed on 2026-01-01\n")
    recs, _ = _read_all(tmp_path, Source(path="my.sql", input="question", output="answer"), skip_bad=False)
    assert [(r["input"], r["output"]) for r in recs] == [("first q", "first a"), ("second q", "second a")]
    (tmp_path / "pg.sql").write_text(
        "-- PostgreSQL database dump\nCREATE TABLE public.t (\"Prompt\" text, reply text, labels text[]);\n"
        "INSERT INTO public.t VALUES (E'two\\nlines', 'r1'::text, ARRAY['a','b']);\n"
        "INSERT INTO public.t VALUES ('p2', ARRAY['not', 'text'], NULL);\n"
        "-- PostgreSQL database dump complete\n")
    recs, dropped = _read_all(tmp_path, Source(path="pg.sql", input="Prompt", output="reply"))
    assert [(r["input"], r["output"]) for r in recs] == [("two\nlines", "r1")]
    assert dropped[0]["detail"] == "field output: an SQL array value, which is not read as text"


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


def test_an_html_page_in_the_charset_it_declares(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    page = '<html><head><meta http-equiv="Content-Type" content="text/html; charset=ISO-8859-1"></head>' \
           '<body><article><p>Caf\u00e9 cr\u00e8me \u2014 \u201cquoted\u201d, na\u00efve.</p></article></body></html>'
    (site / "a.html").write_bytes(page.encode("cp1252"))  # what such sites send: cp1252 under a latin-1 label
    (site / "b.html").write_bytes('<meta charset="shift_jis"><p>\u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3067\u3059\u3002</p>'.encode("shift_jis"))
    recs = list(read_source(Source(path="site"), tmp_path, Rejects(tmp_path / "r.jsonl")))
    assert [r["text"] for r in recs] == ["Caf\u00e9 cr\u00e8me \u2014 \u201cquoted\u201d, na\u00efve.", "\u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3067\u3059\u3002"]
    (site / "b.html").write_bytes(b"<p>caf\xe9 without a declared charset</p>")
    with pytest.raises(DataError, match=r"b\.html:1: cannot decode byte 0xe9 as utf-8"):
        list(read_source(Source(path="site/b.html"), tmp_path, Rejects(tmp_path / "r.jsonl")))


def test_csv_quoted_newlines_header_and_encoding(tmp_path):
    (tmp_path / "a.csv").write_text('q,a,extra\n"multi\nline ""quoted"" prompt","answer, with comma",x\nq2,a2,y\n')
    rej = Rejects(tmp_path / "r.jsonl")
    recs = list(read_source(Source(path="a.csv", input="q", output="a"), tmp_path, rej))
    assert [(r["input"], r["output"], r["_where"]) for r in recs] == [
        ('multi\nline "quoted" prompt', "answer, with comma", f"{tmp_path}/a.csv:2"), ("q2", "a2", f"{tmp_path}/a.csv:4")]
    (tmp_path / "excel.csv").write_bytes('\ufeffq;a\r\n"x; y";1,5\r\n'.encode())  # Excel with a European locale
    recs = list(read_source(Source(path="excel.csv", input="q", output="a"), tmp_path, rej))
    assert [(r["input"], r["output"]) for r in recs] == [("x; y", "1,5")]
    (tmp_path / "b.tsv").write_bytes("caf\xe9\tcr\xe8me\n".encode("latin-1"))
    recs = list(read_source(Source(path="b.tsv", header=False, input="0", output="1", encoding="latin-1"), tmp_path, rej))
    assert [(r["input"], r["output"]) for r in recs] == [("café", "crème")]


def _read_all(tmp_path, source, skip_bad=True):
    rej = Rejects(tmp_path / "r.jsonl", skip_bad=skip_bad)
    recs = list(read_source(source, tmp_path, rej))
    rej.close()
    dropped = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert rej.units == len(recs) + len(dropped)  # every unit read is kept or rejected
    return recs, dropped


def test_one_bad_csv_record_costs_that_record_not_the_rest_of_the_file(tmp_path):
    good = [f'q{i},"answer {i}, with a comma"\n' for i in range(5)]
    (tmp_path / "a.csv").write_text("q,a\n" + "".join(good) + '"The 27" monitor" review,Great monitor\n'
                                    + "".join(good).replace("q", "r"))
    with pytest.raises(DataError, match=r"a\.csv:7: malformed CSV"):
        list(read_source(Source(path="a.csv", input="q", output="a"), tmp_path, Rejects(tmp_path / "r.jsonl")))
    recs, dropped = _read_all(tmp_path, Source(path="a.csv", input="q", output="a"))
    assert [r["input"] for r in recs] == [f"q{i}" for i in range(5)] + [f"r{i}" for i in range(5)]
    assert [(d["where"].rsplit(":", 1)[1], d["reason"]) for d in dropped] == [("1", "csv_header"), ("7", "bad_input")]


def test_an_undecodable_line_inside_a_quoted_field_refuses_the_whole_record(tmp_path):
    (tmp_path / "a.csv").write_bytes(b'q,a\nWhat does the caf\xe9 sell?,"It sells coffee\nand pastries, mostly"\nq2,a2\n')
    recs, dropped = _read_all(tmp_path, Source(path="a.csv", input="q", output="a"))
    assert [(r["input"], r["output"]) for r in recs] == [("q2", "a2")]
    assert dropped[1]["where"].endswith("a.csv:2") and "cannot decode byte 0xe9" in dropped[1]["detail"]


def test_tsv_with_quotes_that_are_text_and_with_quotes_that_are_quoting(tmp_path):
    (tmp_path / "a.tsv").write_text('instruction\toutput\nName a film\t"Casablanca" is a classic.\n'
                                    '"Quoted\ttab"\t"He said ""hi"""\n' 'last\tone\n')
    recs, dropped = _read_all(tmp_path, Source(path="a.tsv"), skip_bad=False)
    assert [(r["input"], r["output"]) for r in recs] == [
        ("Name a film", '"Casablanca" is a classic.'), ("Quoted\ttab", 'He said "hi"'), ("last", "one")]


def test_excels_separator_line(tmp_path):
    """Excel writes (and reads) a first line `sep=;` that names the separator."""
    (tmp_path / "s.csv").write_bytes(b"\xef\xbb\xbfsep=;\r\nprompt;response\r\nWhat is 2+2?;Four, of course\r\n")
    recs, dropped = _read_all(tmp_path, Source(path="s.csv"))
    assert [(r["input"], r["output"], r["_where"][-1]) for r in recs] == [("What is 2+2?", "Four, of course", "3")]
    assert [(d["reason"], d["where"][-1]) for d in dropped] == [("csv_separator_line", "1"), ("csv_header", "2")]


def test_files_with_classic_mac_line_ends(tmp_path):
    """Excel for Mac's "CSV (Macintosh)" and old text files end lines with a lone CR; a file of
    mixed endings keeps a CR LF as one line end."""
    (tmp_path / "m.csv").write_bytes(b"instruction;response\rName a colour;Blue\r\"A \"\"quoted\"\"\r\rcell\";Red\r")
    recs, _ = _read_all(tmp_path, Source(path="m.csv"), skip_bad=False)
    assert [(r["input"], r["output"], r["_where"][-1]) for r in recs] == [("Name a colour", "Blue", "2"),
                                                                        ('A "quoted"\n\ncell', "Red", "3")]
    (tmp_path / "m.jsonl").write_bytes(b'{"text": "one"}\r{"text": "two"}')
    recs, _ = _read_all(tmp_path, Source(path="m.jsonl"), skip_bad=False)
    assert [r["text"] for r in recs] == ["one", "two"]
    (tmp_path / "m.txt").write_bytes(b"line one\rline two\r\rline four\r\nline five\r")
    recs, dropped = _read_all(tmp_path, Source(path="m.txt", unit="line"), skip_bad=False)
    assert [(r["text"], r["_where"].rsplit(":", 1)[1]) for r in recs] == [
        ("line one", "1"), ("line two", "2"), ("line four", "4"), ("line five", "5")]
    assert [d["where"].rsplit(":", 1)[1] for d in dropped] == ["3"]
    # mostly LF, a lone CR here and there: still a line end
    (tmp_path / "mix.jsonl").write_bytes(b'{"text": "a"}\r\n{"text": "b"}\n{"text": "c"}\r{"text": "d"}\n{"text": "e"}\r')
    recs, _ = _read_all(tmp_path, Source(path="mix.jsonl"), skip_bad=False)
    assert [(r["text"], r["_where"].rsplit(":", 1)[1]) for r in recs] == [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5")]


def test_utf16_with_a_byte_order_mark_is_read_as_utf16(tmp_path):
    (tmp_path / "a.tsv").write_bytes("question\tanswer\r\nwhat is 世界?\tthe world\r\n".encode("utf-16"))
    (tmp_path / "b.txt").write_bytes("line one é\nline two\n".encode("utf-16-be").join([b"\xfe\xff", b""]))
    recs, _ = _read_all(tmp_path, Source(path="a.tsv"), skip_bad=False)
    assert [(r["input"], r["output"]) for r in recs] == [("what is 世界?", "the world")]
    recs, _ = _read_all(tmp_path, Source(path="b.txt", unit="line"), skip_bad=False)
    assert [r["text"] for r in recs] == ["line one é", "line two"]


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


def test_instruction_datasets_keep_their_context(tmp_path):
    """Alpaca's input and Dolly's context are part of the prompt, never dropped for the pair that
    happens to match first; an explicit mapping is taken as written."""
    lines = [{"instruction": "Translate to French.", "input": "Good morning.", "output": "Bonjour."},
             {"instruction": "Give a tip.", "input": "", "output": "Sleep."},
             {"instruction": "Who wrote it?", "context": "Dune was written by Frank Herbert.", "response": "Herbert.",
              "category": "closed_qa"},
             {"context": "The sky is blue.", "question": "What colour is the sky?", "answer": "Blue."},
             {"system_prompt": "Be brief.", "question": "2+2?", "response": "4"}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    recs = list(read_source(Source(path="a.jsonl"), tmp_path, Rejects(tmp_path / "r.jsonl")))
    assert [(r["input"], r["output"]) for r in recs] == [
        ("Translate to French.\n\nGood morning.", "Bonjour."), ("Give a tip.", "Sleep."),
        ("Who wrote it?\n\nDune was written by Frank Herbert.", "Herbert."),
        ("The sky is blue.\n\nWhat colour is the sky?", "Blue."), ("Be brief.\n\n2+2?", "4")]
    recs = list(read_source(Source(path="a.jsonl", input="instruction", output="output"), tmp_path,
                            Rejects(tmp_path / "r.jsonl", skip_bad=True)))
    assert recs[0]["input"] == "Translate to French."


def test_chat_content_in_parts_is_its_text_and_other_parts_are_refused(tmp_path):
    parts = [{"type": "text", "text": "Describe"}, {"type": "text", "text": "a cat."}]
    lines = [{"messages": [{"role": "user", "content": parts}, {"role": "assistant", "content": [{"type": "text", "text": "Furry."}]}]},
             {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]},
                           {"role": "assistant", "content": "A cat."}]}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    rej = Rejects(tmp_path / "r.jsonl", skip_bad=True)
    recs = list(read_source(Source(path="a.jsonl"), tmp_path, rej))
    rej.close()
    assert recs[0]["messages"] == [{"role": "user", "content": "Describe\na cat."}, {"role": "assistant", "content": "Furry."}]
    assert len(recs) == 1
    (dropped,) = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert dropped["detail"] == "field 'messages': turn 0 holds parts that are not text (image_url)"


def _array_rows():
    """Elements whose text holds what a careless scanner would split on: brackets, commas, quotes,
    escaped newlines, a backslash at the end, non-ASCII; and one long enough to span buffer refills."""
    return [{"instruction": "a ] , [ } {", "output": "x\"y\\"}, {"prompt": "p", "generation": "line\nbreak é 世界 🎉"},
            {"text": "long " * 5000}, {"instruction": "last", "input": "ctx", "output": "z"}]


@pytest.mark.parametrize("layout", ["pretty", "compact", "crlf_bom"])
@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_a_json_array_file_is_read_element_by_element(tmp_path, monkeypatch, layout, chunk):
    import dataprep.ingest as ingest

    monkeypatch.setattr(ingest, "_CHUNK", chunk)  # a refill at every possible position
    rows_ = _array_rows()
    text = json.dumps(rows_, indent=2 if layout != "compact" else None, ensure_ascii=layout == "pretty")
    raw = text.encode()
    if layout == "crlf_bom":
        raw = b"\xef\xbb\xbf  \r\n" + text.replace("\n", "\r\n").encode()
    (tmp_path / "a.json").write_bytes(raw)
    rej = Rejects(tmp_path / "r.jsonl")
    recs = list(read_source(Source(path="a.json"), tmp_path, rej))
    assert [r.get("text", (r.get("input"), r.get("output"))) for r in recs] == [
        ("a ] , [ } {", 'x"y\\'), ("p", "line\nbreak é 世界 🎉"), "long " * 5000, ("last\n\nctx", "z")]
    lines = raw.decode("utf-8-sig").split("\n")  # each element is placed at the line where it starts
    starts = [int(r["_where"].rsplit(":", 1)[1]) for r in recs]
    assert all(lines[n - 1].lstrip(" \r[,").startswith("{") for n in starts), (starts, layout)
    assert starts == sorted(starts) and len(set(starts)) == (1 if layout == "compact" else 4)
    assert rej.units == 4


@pytest.mark.parametrize("content,match", [
    (b'[{"text": "ok"},\n {"text": broken}]', r"a\.json:2: malformed JSON in element 2"),
    (b'[{"text": "ok"} {"text": "no comma"}]', r"a\.json:1: malformed JSON: expected ',' or ']' after element 1"),
    (b'[{"text": "ok"},\n{"text": "cut', r"a\.json:2: malformed JSON in element 2"),
    (b'[{"text": "ok"},\n', r"a\.json:2: malformed JSON: the array is not closed after element 1"),
    (b'[{"text": "ok"}, 3]', r"a\.json:1: expected a JSON object, got int"),
    (b'[]', r"a\.json:1: no rows in file"),
    (b'{\n  "text": "one pretty object"\n}\n', r"a\.json:1: malformed JSON: .* one array of objects"),
])
def test_a_broken_json_file_is_one_line_that_names_the_line(tmp_path, content, match):
    (tmp_path / "a.json").write_bytes(content)
    with pytest.raises(DataError, match=match):
        list(read_source(Source(path="a.json"), tmp_path, Rejects(tmp_path / "r.jsonl")))
    rej = Rejects(tmp_path / "r.jsonl", skip_bad=True)
    recs = list(read_source(Source(path="a.json"), tmp_path, rej))
    rej.close()
    dropped = (tmp_path / "r.jsonl").read_text().splitlines()
    assert rej.units == len(recs) + len(dropped)  # every unit read is kept or rejected


@pytest.mark.parametrize("chunk", [3, 1 << 20])
def test_a_broken_array_element_costs_that_element(tmp_path, monkeypatch, chunk):
    import dataprep.ingest as ingest

    monkeypatch.setattr(ingest, "_CHUNK", chunk)
    elements = [json.dumps({"prompt": f"p{i}", "generation": f"g{i} ] }} ,{{ \\\" x"}, indent=2) for i in range(10)]
    elements[3] = "{'prompt': 'single quotes', 'generation': 'g'}"
    elements[5] = ('{"messages": [{"role": "user", "content": "a ] b"}, {"role": "assistant", "content": "c"}],\n'
                   '  "broken": tru}')  # nested objects, a bracket in a string, then the error
    elements[7] = "[" * 100_000 + "]" * 100_000  # deeper than the decoder's recursion
    (tmp_path / "a.json").write_text("[\n" + ",\n".join(elements) + "\n]\n")
    recs, dropped = _read_all(tmp_path, Source(path="a.json"))
    assert [r["input"] for r in recs] == [f"p{i}" for i in range(10) if i not in (3, 5, 7)]
    assert [d["detail"].split(":")[0] for d in dropped] == [f"malformed JSON in element {i + 1}" for i in (3, 5, 7)]


@pytest.mark.parametrize("name", ["a.jsonl", "a.json"])
def test_a_lone_surrogate_or_deep_nesting_is_a_bad_row_not_a_crash(tmp_path, name):
    rows_ = ['{"prompt": "q", "generation": "\\ud800 alone"}', '{"prompt": "emoji", "generation": "\\ud83c\\udf89 pair"}',
             '{"prompt": "deep", "generation": ' + "[" * 100_000 + "]" * 100_000 + "}", '{"prompt": "ok", "generation": "fine"}']
    (tmp_path / name).write_text("[" + ",\n".join(rows_) + "]" if name.endswith(".json") else "\n".join(rows_) + "\n")
    recs, dropped = _read_all(tmp_path, Source(path=name))
    assert [(r["input"], r["output"]) for r in recs] == [("emoji", "\U0001f389 pair"), ("ok", "fine")]
    assert [d["where"].rsplit(":", 1)[1] for d in dropped] == ["1", "3"]
    assert "lone surrogate" in dropped[0]["detail"] and "nested too deeply" in dropped[1]["detail"]


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz"])
def test_compressed_files_read_as_what_they_hold(tmp_path, suffix):
    import bz2
    import gzip
    import lzma

    pack = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}[suffix]
    sources = {"a.jsonl": (json.dumps({"prompt": "p", "generation": "g"}) + "\n").encode(),
               "b.json": json.dumps([{"text": "from an array"}]).encode(),
               "c.csv": b"q,a\nq2,a2\n",
               "d.html": b"<html><body><article><p>Page text here.</p></article></body></html>",
               "e.sql": (FIXTURES / "mysql.sql").read_bytes()}
    data = tmp_path / "data"
    data.mkdir()
    for name, raw in sources.items():
        (data / (name + suffix)).write_bytes(pack(raw))
    (data / "manual.pdf").write_bytes(b"%PDF-1.4")
    rej = Rejects(tmp_path / "r.jsonl")
    got = list(read_source(Source(path="data"), tmp_path, Rejects(tmp_path / "x.jsonl", skip_bad=True)))
    assert [r.get("text", r.get("input")) for r in got] == ["p", "from an array", "Page text here."]  # CSV, SQL: below
    mapped = {"input": "prompt", "output": "reply"}
    sql = [(r["input"], r["output"]) for r in read_source(Source(path="data/e.sql" + suffix, **mapped), tmp_path, rej)]
    plain = [(r["input"], r["output"]) for r in read_source(Source(path=str(FIXTURES / "mysql.sql"), **mapped), tmp_path, rej)]
    assert sql == plain and len(plain) == len(EXPECTED)
    recs = list(read_source(Source(path="data/c.csv" + suffix, input="q", output="a"), tmp_path, rej))
    assert [(r["input"], r["output"]) for r in recs] == [("q2", "a2")]
    rej.close()
    skipped = [json.loads(x) for x in (tmp_path / "x.jsonl").read_text().splitlines() if "manual.pdf" in x]
    assert [s["reason"] for s in skipped] == ["unknown_extension"]


def test_a_folder_as_users_have_them(tmp_path):
    """Linked folders are read (a loop once), a saved dataset inside is read as one, and what is
    not read (hidden files and folders, broken links) is listed with its reason."""
    import datasets

    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    (data / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    (elsewhere / "linked.txt").write_text("from a linked folder")
    (data / "more").symlink_to(elsewhere, target_is_directory=True)
    (data / "sub" / "loop").symlink_to(data, target_is_directory=True)
    (data / "sub" / "-odd name \u00e9.txt").write_text("odd name")
    (data / "gone.txt").symlink_to(tmp_path / "nowhere.txt")
    (data / ".DS_Store").write_bytes(b"\x00\x00")
    (data / ".git").mkdir()
    (data / ".git" / "HEAD.txt").write_text("ref: refs/heads/main")
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["dd train"]}),
                          "test": datasets.Dataset.from_dict({"text": ["dd test"]})}).save_to_disk(str(data / "sub" / "dd"))
    recs, dropped = _read_all(tmp_path, Source(path="data"))
    assert sorted(r["text"] for r in recs) == ["dd test", "dd train", "from a linked folder", "odd name"]
    assert sorted((d["where"], d["reason"]) for d in dropped) == [
        (str(data / ".DS_Store"), "hidden_file"), (str(data / ".git"), "hidden_folder"),
        (str(data / "gone.txt"), "broken_link")]


def test_a_cut_off_compressed_file_is_one_line(tmp_path):
    import gzip

    rows_ = "".join(json.dumps({"text": f"row {i} " + "x" * 50}) + "\n" for i in range(2000)).encode()
    packed = gzip.compress(rows_)
    (tmp_path / "a.jsonl.gz").write_bytes(packed[:len(packed) // 2])
    with pytest.raises(DataError, match=r"a\.jsonl\.gz:\d+: cannot read the file past line \d+: Compressed file ended"):
        list(read_source(Source(path="a.jsonl.gz"), tmp_path, Rejects(tmp_path / "r.jsonl")))
    (tmp_path / "b.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"b\.jsonl\.gz:1: cannot read the file.*Not a gzipped file"):
        list(read_source(Source(path="b.jsonl.gz"), tmp_path, Rejects(tmp_path / "r.jsonl")))


def test_a_csv_field_longer_than_the_csv_modules_default_limit_is_read(tmp_path):
    long = "word " * 60_000  # 300 000 characters; the csv module stops at 131 072 by default
    (tmp_path / "a.csv").write_text(f'id,text\n1,"{long}"\n2,after\n')
    recs = list(read_source(Source(path="a.csv", text="text"), tmp_path, Rejects(tmp_path / "r.jsonl")))
    assert [r["text"] for r in recs] == [long, "after"]


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


def test_rows_as_exported_by_spreadsheets_pandas_and_databases(tmp_path):
    """Column names in another case, pandas' column-oriented to_json, NaN cells, booleans, binary
    Parquet columns, a compressed Parquet file and a saved DatasetDict."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.csv").write_text("Instruction,Output\nName a colour,Blue\n")
    recs, _ = _read_all(tmp_path, Source(path="a.csv"), skip_bad=False)
    assert [(r["input"], r["output"]) for r in recs] == [("Name a colour", "Blue")]
    recs, _ = _read_all(tmp_path, Source(path="a.csv", input="instruction", output="OUTPUT"), skip_bad=False)
    assert [(r["input"], r["output"]) for r in recs] == [("Name a colour", "Blue")]
    (tmp_path / "p.json").write_text(json.dumps({"instruction": {"0": "a", "1": "b"}, "output": {"0": "x", "1": "y"}}) + "\n")
    recs, dropped = _read_all(tmp_path, Source(path="p.json"))
    assert not recs and "orient='records', lines=True" in dropped[0]["detail"]
    (tmp_path / "v.jsonl").write_text('{"prompt": "ok?", "generation": true}\n{"prompt": "n", "generation": NaN}\n'
                                      '{"prompt": "call", "generation": {"name": "f", "args": [1]}}\n')
    recs, _ = _read_all(tmp_path, Source(path="v.jsonl"), skip_bad=False)
    assert [r["output"] for r in recs] == ["true", None, '{"name": "f", "args": [1]}']  # None: a null, dropped by clean
    table = pa.table({"text": pa.array([b"bytes text", "caf\u00e9".encode()], pa.binary())})
    pq.write_table(table, tmp_path / "b.parquet")
    (tmp_path / "b.parquet.gz").write_bytes(__import__("gzip").compress((tmp_path / "b.parquet").read_bytes()))
    for name in ("b.parquet", "b.parquet.gz"):
        recs, _ = _read_all(tmp_path, Source(path=name), skip_bad=False)
        assert [r["text"] for r in recs] == ["bytes text", "caf\u00e9"]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["t1", "t2"]}),
                          "test": datasets.Dataset.from_dict({"text": ["held out"]})}).save_to_disk(str(tmp_path / "dd"))
    recs, _ = _read_all(tmp_path, Source(path="dd"), skip_bad=False)
    assert [(r["text"], r["_where"]) for r in recs] == [(t, f"{tmp_path / 'dd'} ({w})") for t, w in
                                                        [("t1", "train row 1"), ("t2", "train row 2"), ("held out", "test row 1")]]
    recs, _ = _read_all(tmp_path, Source(path="dd", splits=["train"]), skip_bad=False)
    assert [r["text"] for r in recs] == ["t1", "t2"]
    with pytest.raises(DataError, match=r"splits \['validation'\] are not in .*dd \(it has \['train', 'test'\]\)"):
        _read_all(tmp_path, Source(path="dd", splits=["validation"]), skip_bad=False)


def test_html_text_keeps_the_authors_backslashes_and_powers():
    html = ("<html><body><article><h1>Regex notes</h1><p>Match <code>\\d+\\.\\d+</code> in 2*3*4, a_b_c, [x](y), "
            "\\{x\\} and \\*lit; E=mc<sup>2</sup>, H<sub>2</sub>O, 10<sup>-6</sup>, x<sup>n+1</sup>.</p>"
            "<p># not a heading, and 1. not a list</p></article></body></html>")
    assert html_text(html)[1:] == [
        "Match `\\d+\\.\\d+` in 2*3*4, a_b_c, [x](y), \\{x\\} and \\*lit; E=mc^2, H2O, 10^-6, x^(n+1).",
        "# not a heading, and 1. not a list"]


def test_an_xhtml_page_with_an_xml_declaration(tmp_path):
    (tmp_path / "x.html").write_text('<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE html>\n'
                                     '<html xmlns="http://www.w3.org/1999/xhtml"><body><p>XHTML body text.</p></body></html>')
    recs, _ = _read_all(tmp_path, Source(path="x.html"), skip_bad=False)
    assert [r["text"] for r in recs] == ["XHTML body text."]


@pytest.mark.parametrize("url,match", [("mysql://user:secret@db.example/x", r"url db\.example/x: needs the database driver"),
                                       ("not a url", r"url not a url: not a database URL")])
def test_a_database_url_that_cannot_work_is_one_line(tmp_path, url, match):
    with pytest.raises(DataError, match=match) as e:
        list(read_source(Source(url=url, query="SELECT 1"), tmp_path, Rejects(tmp_path / "r.jsonl")))
    assert "secret" not in str(e.value)


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
