"""Stage 1, ingest: read every source of the job into plain records, one at a time.

A record is a dict with `text`, or `input` and `output`, or `messages` (a list of {role, content}
turns), plus `_where`: the file and line (or table and row) it came from, so that anything dropped
later can be traced back. Readers stream: nothing holds a whole file in memory.

Bad input (a malformed JSON line, a missing column, undecodable bytes, an empty file, HTML with no
text, a truncated SQL dump) goes through `rejects.bad`, which raises a one-line DataError or, with
--skip-bad, quarantines the row into rejects.jsonl.
"""
from __future__ import annotations

import csv
import glob
import json
import re
from pathlib import Path
from typing import Iterator

from .config import Source
from .errors import DataError, Rejects
from .sqldump import read_sql_dump

EXTENSIONS = {
    ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".html": "html",
    ".htm": "html", ".txt": "text", ".md": "text", ".sql": "sql", ".parquet": "parquet",
}
# Key pairs recognised without configuration, the guide's prompt/generation first.
AUTO_PAIRS = [("prompt", "generation"), ("input", "output"), ("instruction", "output"), ("instruction", "response"),
              ("question", "answer"), ("prompt", "completion"), ("prompt", "response")]
AUTO_CHAT = ["messages", "conversations", "conversation", "turns"]
ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "bot": "assistant",
         "model": "assistant", "system": "system", "chatgpt": "assistant"}


def source_files(src: Source, base_dir: Path) -> list[tuple[Path, str]]:
    """The files a source names, each with its format; an error if there are none."""
    pattern = Path(src.path).expanduser()
    if not pattern.is_absolute():
        pattern = base_dir / pattern
    if src.format == "hf_dataset" or (pattern.is_dir() and (pattern / "dataset_info.json").exists()):
        if not pattern.exists():
            raise DataError(f"{pattern}: no such dataset folder")
        return [(pattern, "hf_dataset")]
    if pattern.is_dir():
        paths = sorted(p for p in pattern.rglob("*") if p.is_file() and not any(x.startswith(".") for x in p.relative_to(pattern).parts))
    elif any(c in str(pattern) for c in "*?["):
        paths = sorted(Path(p) for p in glob.glob(str(pattern), recursive=True) if Path(p).is_file())
    elif pattern.is_file():
        paths = [pattern]
    else:
        raise DataError(f"{pattern}: no such file or folder (data.sources path {src.path!r})")
    out = []
    for p in paths:
        fmt = src.format if src.format != "auto" else EXTENSIONS.get(p.suffix.lower())
        if fmt is None:
            if pattern.is_dir() or p != pattern:
                continue  # a folder or glob may hold unrelated files
            raise DataError(f"{p}: cannot tell the format from the extension {p.suffix!r}; set format: in the source")
        out.append((p, fmt))
    if not out:
        raise DataError(f"{pattern}: no data files found (data.sources path {src.path!r})")
    return out


def read_source(src: Source, base_dir: Path, rejects: Rejects) -> Iterator[dict]:
    if src.url:
        yield from _read_url(src, rejects)
        return
    for path, fmt in source_files(src, base_dir):
        if fmt != "hf_dataset" and path.stat().st_size == 0:
            rejects.bad(f"{path}:1", "empty file")
            continue
        reader = {"jsonl": _jsonl, "csv": _csv, "tsv": _csv, "html": _html, "text": _text, "sql": _sql,
                  "parquet": _parquet, "hf_dataset": _hf_dataset}[fmt]
        n, before = 0, rejects.total()
        for rec in reader(path, src, rejects, fmt):
            n += 1
            yield rec
        if n == 0 and rejects.total() == before:  # only a header, blank lines, an empty table ...
            rejects.bad(f"{path}:1", "no rows in file")


# -- mapping raw rows to records ----------------------------------------------------------------

def _map_row(row: dict, src: Source, where: str, rejects: Rejects) -> dict | None:
    """Pick the text / input+output / messages out of a row by the source's key mapping."""
    def get(key):
        if key not in row:
            rejects.bad(where, f"no field {key!r} (fields: {', '.join(map(str, row)) or 'none'})", row)
            return KeyError
        return row[key]

    rec: dict = {"_where": where}
    if src.messages or (not (src.text or src.input or src.output) and any(k in row for k in AUTO_CHAT)):
        key = src.messages or next(k for k in AUTO_CHAT if k in row)
        turns = get(key)
        if turns is KeyError:
            return None
        msgs = _turns(turns)
        if isinstance(msgs, str):
            rejects.bad(where, f"field {key!r}: {msgs}", row)
            return None
        rec["messages"] = msgs
        return rec
    if src.text:
        v = get(src.text)
        if v is KeyError:
            return None
        rec["text"] = v
    elif src.input or src.output:
        a, b = get(src.input), get(src.output)
        if a is KeyError or b is KeyError:
            return None
        rec["input"], rec["output"] = a, b
    else:
        pair = next((p for p in AUTO_PAIRS if p[0] in row and p[1] in row), None)
        if pair:
            rec["input"], rec["output"] = row[pair[0]], row[pair[1]]
        elif "text" in row:
            rec["text"] = row["text"]
        else:
            rejects.bad(where, "no text field: set text: or input:/output: in the source "
                               f"(fields: {', '.join(map(str, row)) or 'none'})", row)
            return None
    for k in ("text", "input", "output"):
        if k in rec and rec[k] is not None and not isinstance(rec[k], str):
            rec[k] = json.dumps(rec[k], ensure_ascii=False) if isinstance(rec[k], (dict, list)) else str(rec[k])
    return rec


def _turns(turns) -> list[dict] | str:
    if not isinstance(turns, list) or not turns:
        return "expected a non-empty list of turns"
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            return f"turn {i} is not an object"
        role = t.get("role", t.get("from"))
        content = t.get("content", t.get("value"))
        if role is None or content is None:
            return f"turn {i} needs role/content (or from/value)"
        r = ROLES.get(str(role).lower())
        if r is None:
            return f"turn {i}: unknown role {role!r}"
        out.append({"role": r, "content": str(content)})
    return out


# -- readers ------------------------------------------------------------------------------------

def _lines(path: Path, encoding: str, rejects: Rejects) -> Iterator[tuple[int, str]]:
    """Decode line by line, so an undecodable byte is reported with its line."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                yield n, raw.decode(encoding)
            except UnicodeDecodeError as e:
                rejects.bad(f"{path}:{n}", f"cannot decode byte {raw[e.start]:#04x} at column {e.start + 1} as {encoding} "
                                           "(set encoding: in the source)", raw)


def _jsonl(path, src, rejects, fmt):
    for n, line in _lines(path, src.encoding, rejects):
        if n == 1:
            line = line.lstrip("\ufeff")
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            rejects.bad(where, f"malformed JSON: {e.msg} at column {e.colno}", line)
            continue
        if not isinstance(row, dict):
            rejects.bad(where, f"expected a JSON object, got {type(row).__name__}", line)
            continue
        rec = _map_row(row, src, where, rejects)
        if rec is not None:
            yield rec


def _csv(path, src, rejects, fmt):
    delim = src.delimiter or ("\t" if fmt == "tsv" else ",")
    lines = _lines(path, src.encoding, rejects)
    line_no = [0]

    def feed():  # csv wants an iterable of lines; remember where each record starts
        for n, text in lines:
            line_no[0] = n
            yield text.lstrip("\ufeff") if n == 1 else text

    reader = csv.reader(feed(), delimiter=delim, strict=True)
    header = None
    start = 1
    try:
        for fields in reader:
            where = f"{path}:{start}"
            start = line_no[0] + 1
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            if src.header and header is None:
                header = fields
                continue
            names = header or [str(i) for i in range(len(fields))]
            if header and len(fields) != len(header):
                rejects.bad(where, f"row has {len(fields)} fields, the header has {len(header)}", delim.join(fields))
                continue
            rec = _map_row(dict(zip(names, fields)), src, where, rejects)
            if rec is not None:
                yield rec
    except csv.Error as e:
        rejects.bad(f"{path}:{start}", f"malformed CSV: {e}")


_BLOCKS = ["p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "pre", "blockquote", "dd", "dt", "figcaption", "td", "th",
           "tr", "div", "section", "article", "main", "table", "ul", "ol", "dl", "br", "hr", "title"]
_DROP_TAGS = ["script", "style", "noscript", "nav", "header", "footer", "aside", "form", "iframe", "svg", "template",
              "button", "select", "input", "head", "menu", "dialog", "canvas", "object"]
_DROP_HINT = re.compile(r"cookie|consent|gdpr|banner|navbar|\bnav\b|menu|breadcrumb|sidebar|footer|header|advert|\bads?\b|"
                        r"popup|modal|subscribe|newsletter|share|social|skip-link", re.I)
_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")


def html_text(markup: str) -> list[str]:
    """Readable paragraphs of an HTML page: no scripts, styles, navigation or cookie banners."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(markup, "lxml")
    for tag in soup.find_all(_DROP_TAGS):
        tag.decompose()
    for tag in soup.find_all(True):
        if tag.decomposed or tag.attrs is None:
            continue
        hint = " ".join([tag.get("id") or "", " ".join(tag.get("class") or []), tag.get("role") or "",
                         tag.get("aria-label") or ""])
        if tag.get("aria-hidden") == "true" or tag.get("hidden") is not None or (hint.strip() and _DROP_HINT.search(hint)):
            if tag.name not in ("html", "body", "main", "article"):
                tag.decompose()
    root = soup.find("article") or soup.find("main") or soup.body or soup
    for tag in root.find_all(_BLOCKS):
        tag.insert_before("\n\n")
        tag.insert_after("\n\n")
    text = root.get_text()
    paras = []
    for block in re.split(r"\n\s*\n", text):
        line = _SPACES.sub(" ", block.replace("\n", " ")).strip()
        if line:
            paras.append(line)
    return paras


def _html(path, src, rejects, fmt):
    raw = path.read_bytes()
    try:
        markup = raw.decode(src.encoding)
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        rejects.bad(f"{path}:{line}", f"cannot decode byte {raw[e.start]:#04x} as {src.encoding} (set encoding: in the source)")
        return
    paras = html_text(markup)
    if not paras:
        rejects.bad(f"{path}:1", "HTML page has no readable text")
        return
    if src.unit == "file":
        yield {"text": "\n\n".join(paras), "_where": f"{path}:1"}
    else:
        for i, p in enumerate(paras, 1):
            yield {"text": p, "_where": f"{path} (paragraph {i})"}


def _text(path, src, rejects, fmt):
    if src.unit == "line":
        for n, line in _lines(path, src.encoding, rejects):
            if line.strip():
                yield {"text": line.rstrip("\r\n"), "_where": f"{path}:{n}"}
        return
    para: list[str] = []
    start = 1
    any_text = False
    for n, line in _lines(path, src.encoding, rejects):
        if src.unit == "paragraph" and not line.strip():
            if para:
                yield {"text": "".join(para).strip("\n"), "_where": f"{path}:{start}"}
                any_text = True
            para, start = [], n + 1
            continue
        if not para and src.unit == "paragraph":
            start = n
        para.append(line)
    if para and "".join(para).strip():
        yield {"text": "".join(para).strip("\n") if src.unit == "paragraph" else "".join(para), "_where": f"{path}:{start}"}
        any_text = True
    if not any_text:
        rejects.bad(f"{path}:1", "file has no text")


def _sql(path, src, rejects, fmt):
    for where, row in read_sql_dump(path, src.table, src.encoding, rejects.bad):
        rec = _map_row(row, src, where, rejects)
        if rec is not None:
            yield rec


def _parquet(path, src, rejects, fmt):
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        rejects.bad(f"{path}:1", f"not a readable Parquet file: {str(e).splitlines()[0]}")
        return
    n = 0
    for batch in pf.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            n += 1
            rec = _map_row(row, src, f"{path} (row {n})", rejects)
            if rec is not None:
                yield rec


def _hf_dataset(path, src, rejects, fmt):
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        rejects.bad(f"{path}:1", f"not a dataset saved with datasets.save_to_disk: {str(e).splitlines()[0]}")
        return
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
    for n, row in enumerate(ds, 1):
        rec = _map_row(row, src, f"{path} (row {n})", rejects)
        if rec is not None:
            yield rec


def _read_url(src, rejects):
    try:
        import sqlalchemy
    except ImportError:
        raise DataError(f"data.sources url {src.url}: reading a live database needs SQLAlchemy (pip install sqlalchemy)") from None
    engine = sqlalchemy.create_engine(src.url)
    label = src.url.split("@")[-1]  # never print a password
    try:
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True).execute(sqlalchemy.text(src.query))
            for n, row in enumerate(result.mappings(), 1):
                rec = _map_row(dict(row), src, f"{label} (query row {n})", rejects)
                if rec is not None:
                    yield rec
    except sqlalchemy.exc.SQLAlchemyError as e:
        raise DataError(f"data.sources url {label}: {str(e).splitlines()[0]}") from None
    finally:
        engine.dispose()
