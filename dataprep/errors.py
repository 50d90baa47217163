"""The one error the pipeline raises for bad input, and the rejects file that `--skip-bad` fills instead.

Every problem with the user's data is a `DataError` whose message is one line, `file:line: problem`,
so the CLI can print it and exit 2 without a traceback. With `--skip-bad` the same problem is
written to rejects.jsonl (reason, location, a preview of the raw row) and counted, never dropped
silently.
"""
from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

from launcher.errors import DataError

__all__ = ["DataError", "Rejects", "Unreadable"]


class Rejects:
    """Appends dropped rows to rejects.jsonl and counts them per stage and reason."""

    def __init__(self, path: Path, skip_bad: bool = False):
        self.path = path
        self.skip_bad = skip_bad
        self.counts: Counter = Counter()  # (stage, reason) -> rows
        # Input units (lines of line-based files, CSV records, SQL and Parquet rows, whole files), counted
        # by the readers as they read them, before anything is decided: the report checks that
        # every one of them ended up kept or rejected.
        self.units = 0
        self._f = open(path, "w", encoding="utf-8")
        self._lock = threading.Lock()  # tokenization drops rows in its own thread while dedup drops others

    def drop(self, stage: str, reason: str, where: str, row=None, detail: str | None = None) -> None:
        rec = {"stage": stage, "reason": reason, "where": where}
        if detail:
            rec["detail"] = detail
        if row is not None:
            rec["row"] = _preview(row)
        line = json.dumps(rec, ensure_ascii=False, default=str) + "\n"  # a row may hold dates, an Unreadable
        with self._lock:
            self.counts[(stage, reason)] += 1
            self._f.write(line)

    def unit(self, n: int = 1) -> None:
        self.units += n

    def skip(self, where: str, reason: str, raw=None) -> None:
        """An input unit that holds no data (an empty line, a CSV header): not an error, but accounted."""
        self.drop("ingest", reason, where, raw)

    def bad(self, where: str, problem: str, raw=None) -> None:
        """Bad input: an error, or with --skip-bad a quarantined, counted reject."""
        if not self.skip_bad:
            raise DataError(f"{where}: {problem} (use --skip-bad to quarantine such rows into rejects.jsonl)")
        self.drop("ingest", "bad_input", where, raw, detail=problem)

    def total(self) -> int:
        return sum(self.counts.values())

    def close(self) -> None:
        self._f.close()


def _preview(row, limit: int = 500):
    if isinstance(row, bytes):
        row = row.decode("utf-8", "backslashreplace")
    if isinstance(row, str):
        return row if len(row) <= limit else row[:limit] + "..."
    text = json.dumps(row, ensure_ascii=False, default=str)
    return row if len(text) <= limit else text[:limit] + "..."


class Unreadable:
    """A value a reader could not turn into text (an SQL expression it does not evaluate): the row
    is refused only if its mapping uses that column."""

    def __init__(self, problem: str):
        self.problem = problem

    def __repr__(self) -> str:
        return f"<{self.problem}>"
