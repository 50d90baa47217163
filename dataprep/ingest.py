"""Stage 1, ingest: read every source of the job into plain records, one at a time.

A record is a dict with `text`, or `input` and `output`, or `messages` (a list of {role, content}
turns), plus `_where`: the file and line (or table and row) it came from, so that anything dropped
later can be traced back. Readers stream: nothing holds a whole file in memory.

Accounting: each reader counts the input units it reads (`rejects.unit`) as it reads them: every
physical line of a JSONL file or of a text file read by line, every CSV record (the header and
blank lines included), every SQL, Parquet or dataset row, every HTML page (or its paragraphs) and
every text file read whole. Each unit then becomes exactly one record or one entry in
rejects.jsonl (empty lines too, as `empty_line`), so the report can check that none went missing.
In `unit: paragraph` text files the unit is the paragraph, and the blank lines between paragraphs
are separators, not units.

A `.json` file may also hold one array of objects (alpaca_data.json, most JSON exports): its
elements are read one by one and each is a unit. Any file may be compressed (`.gz`, `.bz2`, `.xz`):
it is read as what its name says it holds under that suffix (data.jsonl.gz is JSONL).

Bad input (a malformed JSON line, a missing column, undecodable bytes, an empty file, HTML with no
text, a truncated SQL dump) goes through `rejects.bad`, which raises a one-line DataError or, with
--skip-bad, quarantines the row into rejects.jsonl.
"""
from __future__ import annotations

import csv
import glob
import io
import itertools
import json
import os
import re
import sys
from pathlib import Path
from typing import Iterator

from launcher.dataspec import Source

from .errors import DataError, Rejects, Unreadable
from .files import READ_ERRORS, bom_encoding, compressed, data_suffix, decoded_lines, open_raw
from .html import declared_decode, html_text

EXTENSIONS = {
    ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".html": "html",
    ".htm": "html", ".txt": "text", ".md": "text", ".sql": "sql", ".parquet": "parquet",
}
# Key pairs recognised without configuration, the guide's prompt/generation first. An instruction
# comes before a bare `input`: in Alpaca's rows `input` is the instruction's context, not the prompt.
AUTO_PAIRS = [("prompt", "generation"), ("instruction", "output"), ("instruction", "response"), ("input", "output"),
              ("question", "answer"), ("question", "response"), ("prompt", "completion"), ("prompt", "response")]
# More of the prompt, in fields of its own: Alpaca's `input` and Dolly's `context` follow the
# instruction, a reading passage comes before its question, and a system prompt (OpenOrca's
# `system_prompt`) before any prompt. Joined with a blank line when not empty.
AUTO_CONTEXT = {"instruction": ("after", ("input", "context")), "question": ("before", ("context",))}
AUTO_SYSTEM = ("system_prompt", "system")
# CSV's default field limit (128 KiB) would stop a file at its first long article; the clean stage
# drops what is over data.clean.max_chars, with a reason.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


AUTO_CHAT = ["messages", "conversations", "conversation", "turns"]
ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "bot": "assistant",
         "model": "assistant", "system": "system", "chatgpt": "assistant"}


_SAVED_DATASET = ("dataset_info.json", "dataset_dict.json")  # save_to_disk of a Dataset, of a DatasetDict


def _saved_dataset(folder: Path) -> bool:
    return any((folder / f).exists() for f in _SAVED_DATASET)


def _walk(top: Path, skipped: list[tuple[Path, str]] | None) -> list[Path]:
    """The files under a folder, following linked folders (once each: a link loop ends there). A
    saved dataset inside is one entry. What is not read goes into `skipped` with its reason:
    hidden files and folders (.git, .DS_Store: listed, not entered) and broken links."""
    out: list[Path] = []
    seen: set[str] = set()
    for root, dirs, names in os.walk(top, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        here = Path(root)
        keep = []
        for d in sorted(dirs):
            if d.startswith("."):
                if skipped is not None:
                    skipped.append((here / d, "hidden_folder"))
            elif _saved_dataset(here / d):
                out.append(here / d)
            else:
                keep.append(d)
        dirs[:] = keep
        for name in names:
            p = here / name
            if name.startswith("."):
                reason = "hidden_file"
            elif not p.exists():
                reason = "broken_link"
            else:
                out.append(p)
                continue
            if skipped is not None:
                skipped.append((p, reason))
    return sorted(out)


def source_files(src: Source, base_dir: Path, skipped: list[tuple[Path, str]] | None = None) -> list[tuple[Path, str]]:
    """The files a source names, each with its format; an error if there are none. What a folder
    or glob holds that is not read (a file whose format the extension does not tell, a hidden file,
    a broken link) goes into `skipped` with the reason."""
    pattern = Path(src.path).expanduser()
    if not pattern.is_absolute():
        pattern = base_dir / pattern
    if src.format == "hf_dataset" or (pattern.is_dir() and _saved_dataset(pattern)):
        if not pattern.exists():
            raise DataError(f"{pattern}: no such dataset folder")
        return [(pattern, "hf_dataset")]
    if pattern.is_dir():
        paths = _walk(pattern, skipped)
    elif any(c in str(pattern) for c in "*?["):
        paths = sorted(Path(p) for p in glob.glob(str(pattern), recursive=True) if Path(p).is_file())
    elif pattern.is_file():
        paths = [pattern]
    else:
        raise DataError(f"{pattern}: no such file or folder (data.sources path {src.path!r})")
    out = []
    for p in paths:
        fmt = "hf_dataset" if p.is_dir() else src.format if src.format != "auto" else EXTENSIONS.get(data_suffix(p))
        if fmt is None:
            if pattern.is_dir() or p != pattern:
                if skipped is not None:  # a folder or glob may hold unrelated files
                    skipped.append((p, "unknown_extension"))
                continue
            raise DataError(f"{p}: cannot tell the format from the extension {''.join(p.suffixes[-2:])!r}; "
                            "set format: in the source")
        out.append((p, fmt))
    if not out:
        raise DataError(f"{pattern}: no data files found (data.sources path {src.path!r})")
    return out


def read_source(src: Source, base_dir: Path, rejects: Rejects) -> Iterator[dict]:
    if src.url:
        yield from _read_url(src, rejects)
        return
    skipped: list[tuple[Path, str]] = []
    files = source_files(src, base_dir, skipped)
    for path, reason in skipped:  # accounted, so that a folder's README.pdf is seen to be left out
        rejects.unit()
        rejects.skip(str(path), reason)
    for path, fmt in files:
        if fmt != "hf_dataset" and path.stat().st_size == 0:
            rejects.unit()
            rejects.bad(f"{path}:1", "empty file")
            continue
        reader = {"jsonl": _jsonl, "csv": _csv, "tsv": _csv, "html": _html, "text": _text, "sql": _sql,
                  "parquet": _parquet, "hf_dataset": _hf_dataset}[fmt]
        n, bad_before = 0, rejects.counts[("ingest", "bad_input")]
        for rec in reader(path, src, rejects, fmt):
            n += 1
            yield rec
        if n == 0 and rejects.counts[("ingest", "bad_input")] == bad_before:  # only a header, blank lines ...
            rejects.unit()  # the file itself, which gave nothing
            rejects.bad(f"{path}:1", "no rows in file")


# -- mapping raw rows to records ----------------------------------------------------------------

def _map_row(row: dict, src: Source, where: str, rejects: Rejects) -> dict | None:
    """Pick the text / input+output / messages out of a row by the source's key mapping."""
    def get(key):
        if key not in row:
            # SQL dumps and spreadsheets differ in the case of their column names: Prompt is prompt
            key = next((k for k in row if isinstance(k, str) and k.lower() == key.lower()), key)
        if key not in row:
            if not failed:  # one reject per row, however many fields it lacks
                rejects.bad(where, f"no field {key!r} (fields: {', '.join(map(str, row)) or 'none'})", row)
            failed.append(key)
            return KeyError
        return row[key]

    failed: list = []

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
        if pair is None and "text" not in row and any(isinstance(k, str) and not k.islower() for k in row):
            row = {k.lower() if isinstance(k, str) else k: v for k, v in row.items()}  # Instruction, Question ...
            pair = next((p for p in AUTO_PAIRS if p[0] in row and p[1] in row), None)
        if pair:
            rec["input"], rec["output"] = _with_context(row, pair[0]), row[pair[1]]
        elif "text" in row:
            rec["text"] = row["text"]
        else:
            rejects.bad(where, "no text field: set text: or input:/output: in the source "
                               f"(fields: {', '.join(map(str, row)) or 'none'})", row)
            return None
    for k in ("text", "input", "output"):
        v = rec.get(k)
        if v is None or isinstance(v, str):
            continue
        if isinstance(v, Unreadable):
            rejects.bad(where, f"field {k}: {v.problem}", row)
            return None
        if isinstance(v, bytes):  # a Parquet or database binary column
            try:
                rec[k] = v.decode(src.encoding)
            except UnicodeDecodeError:
                rejects.bad(where, f"field {k}: bytes that are not {src.encoding} text", row)
                return None
        elif isinstance(v, dict) and v and all(isinstance(i, str) and i.isdigit() for i in v):
            rejects.bad(where, f"field {k} holds a column of rows ({len(v)} values keyed 0, 1, ...): the file looks like "
                               "pandas' to_json() default; write it with orient='records', lines=True", row)
            return None
        elif isinstance(v, float) and v != v:
            rec[k] = None  # NaN: pandas' empty cell, a null
        elif isinstance(v, (dict, list, bool, int, float)):  # a function call's JSON answer stays JSON; true, not True
            rec[k] = json.dumps(v, ensure_ascii=False, default=str)
        else:  # a date or a decimal from a database
            rec[k] = str(v)
    return rec


def _with_context(row: dict, key: str):
    def present(fields):
        return [row[f] for f in fields if isinstance(row.get(f), str) and row[f].strip()]

    where, fields = AUTO_CONTEXT.get(key, (None, ()))
    extra, system = present(fields), present(AUTO_SYSTEM)[:1]
    if not (extra or system) or not isinstance(row[key], str):
        return row[key]
    return "\n\n".join([*system, *([row[key], *extra] if where == "after" else [*extra, row[key]])])


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
        if isinstance(content, list):  # OpenAI's parts: [{"type": "text", "text": ...}, ...]
            kinds = [p.get("type", "?") if isinstance(p, dict) else type(p).__name__ for p in content]
            if any(k not in ("text", "str") for k in kinds):
                return f"turn {i} holds parts that are not text ({', '.join(sorted(set(kinds) - {'text', 'str'}))})"
            content = "\n".join(p if isinstance(p, str) else str(p.get("text", "")) for p in content)
        elif isinstance(content, dict):
            return f"turn {i}: content is an object, not text"
        out.append({"role": r, "content": str(content)})
    return out


# -- readers ------------------------------------------------------------------------------------

def _lines(path: Path, encoding: str, rejects: Rejects, units: bool = True) -> Iterator[tuple[int, str]]:
    """Decoded lines; an undecodable one is reported with its line number. units: each physical
    line is an input unit (else the caller counts its own units; an undecodable line always is one)."""
    n = 0
    try:
        for n, text, problem in decoded_lines(path, encoding):
            if units or problem:
                rejects.unit()
            if problem:
                rejects.bad(f"{path}:{n}", problem, text)
                continue
            yield n, text
    except READ_ERRORS as e:
        rejects.unit()  # the rest of the file, unread
        rejects.bad(f"{path}:{n + 1}", f"cannot read the file past line {n}: {e}")


def _jsonl(path, src, rejects, fmt):
    try:
        with open_raw(path) as f:
            is_array = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")
    except READ_ERRORS as e:
        rejects.unit()
        rejects.bad(f"{path}:1", f"cannot read the file: {e}")
        return
    if is_array:
        yield from _json_array(path, src, rejects)
        return
    for n, line in _lines(path, src.encoding, rejects):
        if n == 1:
            line = line.lstrip("\ufeff")
        where = f"{path}:{n}"
        if not line.strip():
            rejects.skip(where, "empty_line", line)
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            hint = " (a JSON file holds one object per line, or one array of objects)" if n == 1 else ""
            rejects.bad(where, f"malformed JSON: {e.msg} at column {e.colno}{hint}", line)
            continue
        except RecursionError:
            rejects.bad(where, "malformed JSON: nested too deeply", line[:200])
            continue
        rec = _json_record(row, src, where, rejects, line, _ESC_SURROGATE.search(line) is not None)
        if rec is not None:
            yield rec


# "\ud800" alone decodes to a lone surrogate, which no later stage can encode: such a row is bad
# input. Only rows whose raw text has such an escape are checked (a pair is an emoji, and fine).
_ESC_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def _json_record(row, src, where, rejects, raw, escapes: bool) -> dict | None:
    if not isinstance(row, dict):
        rejects.bad(where, f"expected a JSON object, got {type(row).__name__}", raw)
        return None
    if escapes:
        try:
            json.dumps(row, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            rejects.bad(where, f"a lone surrogate ({e.object[e.start]!r}) is not Unicode text", json.dumps(row))
            return None
    return _map_row(row, src, where, rejects)


_CHUNK = 1 << 20
_MAX_ELEMENT = 64 << 20  # characters; an array element larger than this is taken as malformed
_JSON_SPACE = re.compile(r"[ \t\r\n]*")
_JSON_STRUCT = re.compile(r'[{}\[\]"\\\n]')


def _json_array(path, src, rejects):
    """Each element of a file that holds one JSON array, decoded one at a time out of a sliding
    buffer (the standard library's raw_decode), so a large file streams. A malformed element is
    refused and skipped to where its brackets close (strings end at a line's end, as JSON's must),
    so one bad element costs that element."""
    decoder = json.JSONDecoder()
    line, n = 1, 0

    def bad(problem, raw=None):
        rejects.unit()
        rejects.bad(f"{path}:{line}", problem, raw)

    try:
        with io.TextIOWrapper(open_raw(path), encoding=src.encoding, newline="") as f:
            buf, pos, eof = f.read(_CHUNK).lstrip("\ufeff"), 0, False

            def more():  # drop what was read, append the next chunk; False at the end of the file
                nonlocal buf, pos, eof
                if eof:
                    return False
                chunk = f.read(_CHUNK)
                eof = not chunk
                buf, pos = buf[pos:] + chunk, 0
                return not eof

            def skip_space():
                nonlocal pos, line
                while True:
                    end = _JSON_SPACE.match(buf, pos).end()
                    line += buf.count("\n", pos, end)
                    pos = end
                    if pos < len(buf) or not more():
                        return pos < len(buf)

            def element_end():  # by bracket depth; None if it never closes
                depth, in_str, i = 0, False, pos
                while True:
                    m = _JSON_STRUCT.search(buf, i)
                    if m is None or (m.group() == "\\" and m.end() >= len(buf)):
                        off = i - pos
                        if len(buf) - pos > _MAX_ELEMENT or not more():
                            return None
                        i = pos + off
                        continue
                    c, i = m.group(), m.end()
                    if in_str:
                        if c == "\\":
                            i += 1
                        elif c in '"\n':
                            in_str = False
                    elif c == '"':
                        in_str = True
                    elif c in "{[":
                        depth += 1
                    elif c in "}]":
                        if depth == 0:  # the array's own "]": a broken last element without brackets
                            return m.start()
                        depth -= 1
                        if depth == 0:
                            return i

            skip_space()
            pos += 1  # the "[" that made this an array
            while skip_space():
                if buf[pos] == "]":
                    return
                if n:
                    if buf[pos] != ",":
                        bad(f"malformed JSON: expected ',' or ']' after element {n}", buf[pos:pos + 200])
                        return
                    pos += 1
                    if not skip_space():
                        break
                try:
                    row, end = decoder.raw_decode(buf, pos)
                except (json.JSONDecodeError, RecursionError):
                    end = element_end()  # the buffer may just have ended inside it: read on to its end
                    if end is None:
                        bad(f"malformed JSON in element {n + 1}: it never closes; the rest of the file was not read",
                            buf[pos:pos + 200])
                        return
                    try:
                        row, end = decoder.raw_decode(buf, pos)
                    except (json.JSONDecodeError, RecursionError) as e:
                        n += 1
                        why = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"
                        bad(f"malformed JSON in element {n}: {why}", buf[pos:min(end, pos + 200)])
                        line += buf.count("\n", pos, end)
                        pos = end
                        continue
                n += 1
                rejects.unit()
                where, escapes = f"{path}:{line}", _ESC_SURROGATE.search(buf, pos, end) is not None
                line += buf.count("\n", pos, end)
                pos = end
                rec = _json_record(row, src, where, rejects, row, escapes)
                if rec is not None:
                    yield rec
            bad(f"malformed JSON: the array is not closed after element {n} (a cut-off file?)")
    except UnicodeDecodeError as e:
        bad(f"cannot decode byte {e.object[e.start]:#04x} as {src.encoding} (set encoding: in the source)")
    except READ_ERRORS as e:
        bad(f"cannot read the file past element {n}: {e}")


_MAX_RECORD_LINES = 100_000  # a quoted field longer than this is taken for an unclosed quote


class _RunOn(Exception):
    pass


_SEP_HINT = re.compile(r"sep=(.)\r?\n?$")


def _csv(path, src, rejects, fmt):
    """CSV/TSV records. A record that will not parse is refused by its first line, and reading
    goes on at the next line, so one stray quote costs one row, not the rest of the file. In TSV,
    where quoting is often not meant (a field that starts with a quoted title), such a line is
    read again split on tabs alone. A record with an undecodable line is refused whole."""
    delim = src.delimiter or ("\t" if fmt == "tsv" else ",")
    pending: list = []  # the lines of the record being read: (number, text, problem)
    header = None

    def record(fields, lines):
        nonlocal header
        where = f"{path}:{lines[0][0]}"
        rejects.unit()
        problem = next((p for _, _, p in lines if p), None)
        if problem:
            rejects.bad(where, problem, "".join(t for _, t, _ in lines))
            return None
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            rejects.skip(where, "empty_line", delim.join(fields))
            return None
        if src.header and header is None:
            header = fields
            rejects.skip(where, "csv_header", delim.join(fields))
            return None
        if header and len(fields) != len(header):
            rejects.bad(where, f"row has {len(fields)} fields, the header has {len(header)}", delim.join(fields))
            return None
        return _map_row(dict(zip(header or [str(i) for i in range(len(fields))], fields)), src, where, rejects)

    def feed(items):  # csv wants lines; it asks for one more only while a record is unfinished
        for item in items:
            pending.append(item)
            if len(pending) > _MAX_RECORD_LINES:
                raise _RunOn(f"a quoted field runs on for over {_MAX_RECORD_LINES} lines (an unclosed quote?)")
            yield item[1].lstrip("\ufeff") if item[0] == 1 else item[1]

    lines = decoded_lines(path, src.encoding)
    try:
        first = next(lines, None)
        if first is None:
            return
        if (hint := _SEP_HINT.match(first[1].lstrip("\ufeff"))) and not first[2]:
            # Excel's first line `sep=;` names the separator; the header comes after it
            rejects.unit()
            rejects.skip(f"{path}:{first[0]}", "csv_separator_line", first[1].rstrip("\r\n"))
            delim = src.delimiter or hint.group(1)
            first = next(lines, None)
            if first is None:
                return
        elif fmt == "csv" and not src.delimiter and src.header and "," not in first[1]:
            # Excel in much of Europe writes ';': a header with no comma and one other separator names it
            seps = [c for c in ";\t|" if c in first[1]]
            delim = seps[0] if len(seps) == 1 else delim
        todo = itertools.chain([first], lines)
        while True:
            try:
                for fields in csv.reader(feed(todo), delimiter=delim, strict=True):
                    done, pending[:] = pending[:], []
                    rec = record(fields, done)
                    if rec is not None:
                        yield rec
                return
            except (csv.Error, _RunOn) as e:
                bad, pending[:] = pending[:], []
                if not bad:
                    raise
                todo = itertools.chain(bad[1:], todo)  # the lines after the bad one are read anew
                if fmt == "tsv" and isinstance(e, csv.Error):
                    rec = record(bad[0][1].rstrip("\r\n").split(delim), bad[:1])
                    if rec is not None:
                        yield rec
                    continue
                rejects.unit()
                rejects.bad(f"{path}:{bad[0][0]}", f"malformed CSV: {e}", bad[0][1])
    except READ_ERRORS as e:
        rejects.unit()  # the rest of the file, unread
        rejects.bad(f"{path}", f"cannot read the file: {e}")


def _html(path, src, rejects, fmt):
    try:
        with open_raw(path) as f:
            raw = f.read()
    except READ_ERRORS as e:
        rejects.unit()
        rejects.bad(f"{path}:1", f"cannot read the file: {e}")
        return
    try:
        markup = raw.decode(bom_encoding(raw[:4], src.encoding))
    except UnicodeDecodeError as e:
        markup = declared_decode(raw)
        if markup is None:
            line = raw[:e.start].count(b"\n") + 1
            rejects.unit()
            rejects.bad(f"{path}:{line}", f"cannot decode byte {raw[e.start]:#04x} as {src.encoding} (set encoding: in the source)")
            return
    paras = html_text(markup)
    if not paras:
        rejects.unit()
        rejects.bad(f"{path}:1", "HTML page has no readable text")
        return
    if src.unit == "file":
        rejects.unit()
        yield {"text": "\n\n".join(paras), "_where": f"{path}:1"}
    else:
        for i, p in enumerate(paras, 1):
            rejects.unit()
            yield {"text": p, "_where": f"{path} (paragraph {i})"}


def _text(path, src, rejects, fmt):
    if src.unit == "line":
        for n, line in _lines(path, src.encoding, rejects):
            if line.strip():
                yield {"text": line.rstrip("\r\n"), "_where": f"{path}:{n}"}
            else:
                rejects.skip(f"{path}:{n}", "empty_line", line)
        return
    para: list[str] = []
    start = 1
    any_text = False
    for n, line in _lines(path, src.encoding, rejects, units=False):
        if src.unit == "paragraph" and not line.strip():
            if para:
                rejects.unit()
                yield {"text": "".join(para).strip("\n"), "_where": f"{path}:{start}"}
                any_text = True
            para, start = [], n + 1
            continue
        if not para and src.unit == "paragraph":
            start = n
        para.append(line)
    if para and "".join(para).strip():
        rejects.unit()
        yield {"text": "".join(para).strip("\n") if src.unit == "paragraph" else "".join(para), "_where": f"{path}:{start}"}
        any_text = True
    if not any_text:
        rejects.unit()
        rejects.bad(f"{path}:1", "file has no text")


def _sql(path, src, rejects, fmt):
    def bad(*args):  # a row or statement that would not parse, or a file-level problem: one unit each
        rejects.unit()
        rejects.bad(*args)

    from .sqldump import read_sql_dump  # sqlglot: imported only for SQL dumps

    for where, row in read_sql_dump(path, src.table, src.encoding, bad):
        rejects.unit()
        rec = _map_row(row, src, where, rejects)
        if rec is not None:
            yield rec


def _parquet(path, src, rejects, fmt):
    import pyarrow.parquet as pq

    try:
        if compressed(path):  # Parquet compresses inside; an outer layer is read whole
            import pyarrow as pa

            with open_raw(path) as f:
                pf = pq.ParquetFile(pa.BufferReader(f.read()))
        else:
            pf = pq.ParquetFile(path)
    except Exception as e:
        rejects.unit()
        rejects.bad(f"{path}:1", f"not a readable Parquet file: {str(e).splitlines()[0]}")
        return
    n = 0
    for batch in pf.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            n += 1
            rejects.unit()
            rec = _map_row(row, src, f"{path} (row {n})", rejects)
            if rec is not None:
                yield rec


def _hf_dataset(path, src, rejects, fmt):
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        rejects.unit()
        rejects.bad(f"{path}:1", f"not a dataset saved with datasets.save_to_disk: {str(e).splitlines()[0]}")
        return
    if not isinstance(ds, datasets.DatasetDict):
        parts = [("", ds)]
    else:
        # Every split by default: a test split left unread would be data dropped without a word.
        names = src.splits if src.splits is not None else list(ds)
        unknown = [s for s in names if s not in ds]
        if unknown:
            raise DataError(f"data.sources {src.path}: splits {unknown} are not in {path} (it has {list(ds)})")
        parts = [(f"{s} ", ds[s]) for s in names]
    for split, part in parts:
        for n, row in enumerate(part, 1):
            rejects.unit()
            rec = _map_row(row, src, f"{path} ({split}row {n})", rejects)
            if rec is not None:
                yield rec


def _read_url(src, rejects):
    try:
        import sqlalchemy
    except ImportError:
        raise DataError(f"data.sources url {src.url}: reading a live database needs SQLAlchemy (pip install sqlalchemy)") from None
    label = src.url.split("@")[-1]  # never print a password
    try:
        engine = sqlalchemy.create_engine(src.url)
    except ImportError as e:  # the dialect's driver (psycopg, pymysql ...) is not installed
        raise DataError(f"data.sources url {label}: needs the database driver {e.name or e} (pip install it)") from None
    except sqlalchemy.exc.ArgumentError as e:
        raise DataError(f"data.sources url {label}: not a database URL ({str(e).splitlines()[0]}); "
                        "e.g. postgresql://user@host/db or sqlite:///file.db") from None
    try:
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True).execute(sqlalchemy.text(src.query))
            for n, row in enumerate(result.mappings(), 1):
                rejects.unit()
                rec = _map_row(dict(row), src, f"{label} (query row {n})", rejects)
                if rec is not None:
                    yield rec
    except sqlalchemy.exc.SQLAlchemyError as e:
        raise DataError(f"data.sources url {label}: {str(e).splitlines()[0]}") from None
    finally:
        engine.dispose()
