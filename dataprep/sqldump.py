"""Read rows out of SQL dump files without a database server.

Handles what the real tools write: mysqldump/mariadb-dump (multi-row INSERTs, backslash escapes,
/*!...*/ comments), pg_dump (COPY ... FROM stdin blocks in the text format, or --inserts) and the
sqlite3 shell's .dump (including its replace(..., char(10)) way of writing newlines).

The file is scanned once, line by line, and cut into statements at semicolons outside quotes and
comments, so a dump larger than memory streams. Each INSERT is parsed with sqlglot in the dump's
dialect and its values evaluated to Python strings exactly; COPY data lines are unescaped by the
rules of PostgreSQL's text format. A statement that never ends, a COPY block without its `\\.`
terminator, or a dump without the tool's completion line is a truncated dump.
"""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Callable, Iterator

import sqlglot
from sqlglot import exp

from .errors import DataError, Unreadable
from .files import READ_ERRORS, decoded_lines, open_raw

_SPECIAL = re.compile(r"['\"`;]|--|/\*|#")
_COPY = re.compile(r"^\s*COPY\s+(\S+)\s*\((.*?)\)\s*FROM\s+stdin", re.I | re.S)
_COPY_ESC = re.compile(r"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|(.))", re.S)
_COPY_MAP = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_FOOTERS = {"mysql": "-- Dump completed", "postgres": "-- PostgreSQL database dump complete"}


def _dialect(head: str) -> str:
    if "MySQL dump" in head or "MariaDB dump" in head:
        return "mysql"
    if "PostgreSQL database dump" in head:
        return "postgres"
    return "sqlite"


def _bare(name: str) -> str:
    return name.split(".")[-1].strip('`"[]').lower()


def _lines(path: Path, encoding: str, bad) -> Iterator[tuple[int, str]]:
    n = 0
    try:
        for n, text, problem in decoded_lines(path, encoding):
            if problem:
                bad(f"{path}:{n}", problem, text)
                continue
            yield n, text
    except READ_ERRORS as e:
        bad(f"{path}:{n + 1}", f"cannot read the file past line {n}: {e}")


def _statements(path: Path, lines: Iterator[tuple[int, str]], dialect: str, bad, state: dict):
    """Yield (line, statement) pairs; after a COPY statement the caller reads the data lines."""
    backslash = dialect == "mysql"
    buf: list[str] = []
    started = False  # buf holds more than whitespace and comments
    start = 0
    quote = None
    in_comment = False
    for n, line in lines:
        state["last_line"] = n
        state["last_text"] = line
        if state.get("copy"):
            yield n, line  # a COPY data line, handled by the caller
            continue
        if not started and quote is None and not in_comment and line.startswith("\\"):
            continue  # psql meta-command (\connect, \restrict ...)
        pos = 0
        while pos < len(line):
            if in_comment:
                j = line.find("*/", pos)
                if j < 0:
                    pos = len(line)
                else:
                    in_comment, pos = False, j + 2
                continue
            if quote:
                i = pos
                while i < len(line):
                    c = line[i]
                    if c == "\\" and backslash and quote != "`":
                        i += 2
                        continue
                    if c == quote:
                        break
                    i += 1
                if i >= len(line):
                    buf.append(line[pos:])
                    pos = len(line)
                else:
                    buf.append(line[pos:i + 1])
                    quote, pos = None, i + 1
                continue
            m = _SPECIAL.search(line, pos)
            if not m:
                chunk = line[pos:]
                if chunk.strip() and not started:
                    started, start = True, n
                buf.append(chunk)
                break
            tok = m.group()
            before = line[pos:m.start()]
            if before.strip() and not started:
                started, start = True, n
            buf.append(before)
            if tok == "--" or (tok == "#" and dialect == "mysql"):
                buf.append("\n")
                break
            if tok == "#":
                buf.append(tok)
                pos = m.end()
                continue
            if tok == "/*":
                in_comment, pos = True, m.end()
                continue
            if tok == ";":
                stmt = "".join(buf).strip()
                buf, started = [], False
                pos = m.end()
                if stmt:
                    yield start, stmt
                continue
            if not started:
                started, start = True, n
            quote = tok
            buf.append(tok)
            pos = m.end()
    rest = "".join(buf).strip()
    if rest or quote:
        bad(f"{path}:{start or state.get('last_line', 0)}", "truncated SQL dump: this statement never ends", rest[:200])
        state["truncated"] = True


def _value(v: exp.Expression):
    """A value of an INSERT as text. One this does not evaluate (an ARRAY, a function call) becomes
    an Unreadable: an error for the row only if the source's mapping uses its column."""
    if isinstance(v, exp.Null):
        return None
    if isinstance(v, exp.Literal):
        return str(v.this)
    if isinstance(v, exp.Neg):
        x = _value(v.this)
        return x if isinstance(x, Unreadable) else "-" + x
    if isinstance(v, exp.Boolean):
        return "true" if v.this else "false"
    if isinstance(v, exp.Replace):  # sqlite .dump writes newlines as replace('a\nb','\n',char(10))
        return _value(v.this).replace(_value(v.expression), _value(v.args["replacement"]))
    if isinstance(v, exp.Chr):
        return "".join(chr(int(_value(x))) for x in v.expressions)
    if isinstance(v, (exp.HexString,)):
        return bytes.fromhex(v.this).decode("utf-8", "replace")
    if isinstance(v, (exp.Paren, exp.Cast)):  # ('x'), PostgreSQL's 'x'::text
        return _value(v.this)
    if isinstance(v, exp.Introducer):  # MySQL's _utf8mb4'x', _binary'...'
        return _value(v.expression)
    if isinstance(v, (exp.ByteString, exp.BitString)):  # PostgreSQL's E'a\nb' (unescaped by the parser), B'101'
        return str(v.this)
    return Unreadable(f"an SQL {type(v).__name__.lower()} value, which is not read as text")


def _copy_unescape(field: str):
    if field == "\\N":
        return None
    if "\\" not in field:
        return field

    def sub(m):
        if m.group(1):
            return chr(int(m.group(1), 8))
        if m.group(2):
            return chr(int(m.group(2), 16))
        c = m.group(3)
        return _COPY_MAP.get(c, c)

    return _COPY_ESC.sub(sub, field)


def read_sql_dump(path: Path, table: str | None, encoding: str, bad: Callable) -> Iterator[tuple[str, dict]]:
    """Yield (where, row dict) for each row of `table` (default: the first table with rows)."""
    with open_raw(path) as f:
        head = f.read(4096).decode(encoding, "replace")
    if not head.strip():
        bad(f"{path}:1", "empty file")
        return
    dump = _Dump(path, table, _dialect(head), bad)
    for n, stmt in _statements(path, _lines(path, encoding, bad), dump.dialect, bad, dump.state):
        yield from dump.statement(n, stmt)
    dump.finish()


class _Dump:
    """What reading one dump has learned so far: table columns, which table is wanted, an open COPY."""

    def __init__(self, path: Path, table: str | None, dialect: str, bad: Callable):
        self.path, self.table, self.dialect, self.bad = path, table, dialect, bad
        self.want = _bare(table) if table else None
        self.columns: dict[str, list[str]] = {}
        self.seen_tables: list[str] = []
        self.state: dict = {}  # shared with _statements: inside a COPY block, truncation, last line
        self.copy_cols: list[str] = []
        self.copy_table = ""
        self.copy_start = 0
        self.nrow = 0

    def statement(self, n: int, stmt: str) -> Iterator[tuple[str, dict]]:
        if self.state.get("copy"):
            # a CR before the LF is a CRLF dump's line end: COPY writes a CR in the data as \\r
            yield from self._copy_line(n, stmt.rstrip("\r\n"))
            return
        head_word = stmt[:12].upper()
        if head_word.startswith("CREATE TABLE"):
            self._create_table(stmt)
        elif m := _COPY.match(stmt):
            self._copy_header(n, m)
        elif head_word.startswith("INSERT"):
            yield from self._insert(n, stmt)

    def _seen(self, name: str) -> None:
        if name not in self.seen_tables:
            self.seen_tables.append(name)
        if self.want is None:
            self.want = name

    def _create_table(self, stmt: str) -> None:
        try:
            ct = sqlglot.parse_one(stmt, read=self.dialect)
            name = _bare(ct.this.this.name)
            self.columns[name] = [c.name for c in ct.this.expressions if isinstance(c, exp.ColumnDef)]
        except Exception:  # a CREATE TABLE sqlglot cannot read only matters if we need its columns
            pass

    def _copy_header(self, n: int, m: re.Match) -> None:
        name = _bare(m.group(1))
        self.state["copy"] = True
        self.copy_start = n
        self.copy_cols = [_bare(c.strip()) for c in m.group(2).split(",")]
        self.copy_table = name
        self._seen(name)

    def _copy_line(self, n: int, line: str) -> Iterator[tuple[str, dict]]:
        if line == "\\.":
            self.state["copy"] = False
            return
        if self.copy_table != self.want:
            return
        fields = line.split("\t")
        if len(fields) != len(self.copy_cols):
            self.bad(f"{self.path}:{n}", f"COPY row has {len(fields)} fields, table {self.copy_table} has "
                     f"{len(self.copy_cols)}", line)
            return
        self.nrow += 1
        yield f"{self.path}:{n} ({self.copy_table} row {self.nrow})", dict(zip(self.copy_cols, map(_copy_unescape, fields)))

    def _insert(self, n: int, stmt: str) -> Iterator[tuple[str, dict]]:
        try:
            ins = sqlglot.parse_one(stmt, read=self.dialect)
        except Exception as e:
            self.bad(f"{self.path}:{n}", f"cannot parse INSERT: {str(e).splitlines()[0][:120]}", stmt[:200])
            return
        target, names = ins.this, None
        if isinstance(target, exp.Schema):
            names = [_bare(c.name) for c in target.expressions]
            target = target.this
        name = _bare(target.name)
        self._seen(name)
        if name != self.want:
            return
        names = names or self.columns.get(name)
        values = ins.expression
        if not isinstance(values, exp.Values) or names is None:
            self.bad(f"{self.path}:{n}", f"INSERT into {name} without a VALUES list or a known column list", stmt[:200])
            return
        for tup in values.expressions:
            self.nrow += 1
            where = f"{self.path}:{n} ({name} row {self.nrow})"
            try:
                vals = [_value(v) for v in tup.expressions]
            except (ValueError, TypeError, AttributeError) as e:  # a replace() or char() of something else
                self.bad(where, f"cannot read a value: {e}", tup.sql(dialect=self.dialect)[:200])
                continue
            if len(vals) != len(names):
                self.bad(where, f"row has {len(vals)} values, table {name} has {len(names)} columns", tup.sql()[:200])
                continue
            yield where, dict(zip(names, vals))

    def finish(self) -> None:
        """The checks only the end of the file can make: an open COPY, the table asked for, a footer."""
        path = self.path
        if self.state.get("copy"):
            self.bad(f"{path}:{self.copy_start}", "truncated SQL dump: COPY data never ends with a \\. line")
            return
        if not self.table and len(self.seen_tables) > 1:
            raise DataError(f"{path}: several tables have rows ({', '.join(self.seen_tables)}); set table: in the source")
        if self.table and self.want not in self.seen_tables:
            self.bad(f"{path}:1", f"no rows for table {self.table!r} (tables with rows: {', '.join(self.seen_tables) or 'none'})")
            return
        footer = _FOOTERS.get(self.dialect)
        if footer and not self.state.get("truncated") and footer not in _tail(path):
            self.bad(f"{path}:{self.state.get('last_line', 0)}", f"truncated SQL dump: no '{footer}' line at the end")


def _tail(path: Path, size: int = 4096) -> str:
    with open_raw(path) as f:
        if isinstance(f, io.BufferedReader):
            f.seek(0, 2)
            f.seek(max(0, f.tell() - size))
            return f.read().decode("utf-8", "replace")
        tail = b""  # a compressed stream has no end to seek to: read through it once more
        try:
            while block := f.read(1 << 20):
                tail = (tail + block)[-size:]
        except READ_ERRORS:  # already reported by _lines; what was read has no footer
            return ""
        return tail.decode("utf-8", "replace")
