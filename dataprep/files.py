"""Opening a data file: its bytes (decompressed when its name says so), its encoding (a byte-order
mark names UTF-16 and UTF-32) and its lines, each with the problem of decoding it. Shared by the
readers in ingest.py and the SQL dump reader."""
from __future__ import annotations

import bz2
import codecs
import gzip
import io
import lzma
from pathlib import Path
from typing import Iterator

_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
READ_ERRORS = (OSError, EOFError, lzma.LZMAError)  # a corrupt or cut-off compressed stream


def data_suffix(path: Path) -> str:
    """The extension that names a file's format, under any compression suffix (data.jsonl.gz: .jsonl)."""
    suffix = path.suffix.lower()
    return Path(path.stem).suffix.lower() if suffix in _OPENERS else suffix


def compressed(path: Path) -> bool:
    return path.suffix.lower() in _OPENERS


def open_raw(path: Path):
    """A data file's bytes, decompressed when its name says it is compressed."""
    return _OPENERS.get(path.suffix.lower(), open)(path, "rb")


def bom_encoding(head: bytes, encoding: str) -> str:
    """UTF-16 and UTF-32 files (Excel's "Unicode Text") name themselves by a byte-order mark;
    under the default utf-8 that mark decides."""
    if codecs.lookup(encoding).name != "utf-8":
        return encoding
    if head.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "utf-32"
    return "utf-16" if head.startswith((b"\xff\xfe", b"\xfe\xff")) else encoding


def decoded_lines(path: Path, encoding: str) -> Iterator[tuple[int, str, str | None]]:
    """(number, text, problem) for each physical line, ended by LF, CR LF or a lone CR. An
    undecodable line comes with its problem and its text backslash-escaped, so that a reader can
    refuse the record it belongs to. UTF-16
    and UTF-32 are split into lines after decoding (their newline is not the byte 0x0a). Raises
    READ_ERRORS for a corrupt compressed file."""
    with open_raw(path) as f:
        enc = bom_encoding(f.peek(4)[:4], encoding)
        if codecs.lookup(enc).name.startswith(("utf-16", "utf-32")):
            n = 0
            try:
                for n, line in enumerate(io.TextIOWrapper(f, encoding=enc, newline=""), 1):
                    yield n, line, None
            except UnicodeDecodeError:
                yield n + 1, "", f"cannot decode the file as {enc} past line {n} (set encoding: in the source)"
            return
        head = f.peek(1 << 16)
        # Classic Mac line ends (Excel for Mac's "CSV (Macintosh)", old text files): without this the
        # whole file would be one line, one bad JSON or CSV record.
        lone_cr = head.count(b"\r") - head.count(b"\r\n")
        lines = _cr_lines(f) if lone_cr > head.count(b"\n") else f
        n = 0
        for raw in lines:
            # A lone CR inside an LF line (text pasted together from both kinds of file) ends a
            # line too: it would otherwise join two JSON objects or two rows into one.
            if b"\r" in raw and (raw.count(b"\r") > 1 or not raw.endswith((b"\r\n", b"\r"))):
                *parts, last = raw.split(b"\r")
                pieces = [p + b"\n" for p in parts] + ([last] if last not in (b"\n", b"") else [])
            else:
                pieces = (raw,)
            for raw in pieces:
                n += 1
                try:
                    yield n, raw.decode(enc), None
                except UnicodeDecodeError as e:
                    yield n, raw.decode(enc, "backslashreplace"), (f"cannot decode byte {raw[e.start]:#04x} at "
                                                                    f"column {e.start + 1} as {enc} (set encoding: in the source)")


def _cr_lines(f, size: int = 1 << 20) -> Iterator[bytes]:
    """Lines ended by a lone CR, each given back ended by LF as the readers expect. In a file of
    mixed endings a CR LF ends one line, not two: one LF at a line's start is the rest of the line
    end before it (in a file whose lone CRs outnumber its LFs, the first line seldom starts with one)."""
    rest = b""
    while chunk := f.read(size):
        *parts, rest = (rest + chunk).split(b"\r")
        for part in parts:
            yield part.removeprefix(b"\n") + b"\n"
    if rest := rest.removeprefix(b"\n"):
        yield rest

