"""Stage 3, deduplicate: exact duplicates by a hash of the normalized text, then near-duplicates by
MinHash LSH, keeping the first occurrence of each group and remembering the group so the report
can show what was merged.

Memory stays flat however large the input: the indexes live in a SQLite file beside the output
(deleted at the end), with a bounded page cache. datasketch still computes the MinHash signatures
and chooses the bands, but its in-memory `MinHashLSH` is not used: it holds every band of every
kept example as Python objects, about 1.7 KB a row (measured), so a 2 GB input (1.3 M rows) would
need 2.2 GB for the index alone. The decisions are the same as datasketch's index (tests/dataprep/test_dedup.py).
"""
from __future__ import annotations

import hashlib
import re
import sqlite3
import zlib
from pathlib import Path

import numpy as np

from .clean import fields
from .config import DedupConfig

_WORD = re.compile(r"\w+", re.U)
_COMMIT_EVERY = 5000


def content_key(rec: dict) -> str:
    """The identity of a record's content: casefolded, whitespace-collapsed, all fields."""
    norm = "\x1f".join(" ".join(f.casefold().split()) for f in fields(rec))
    return hashlib.blake2b(norm.encode(), digest_size=16).hexdigest()


def shingles(rec: dict) -> list[int]:
    """Word 3-grams of all the record's fields, casefolded, as distinct 32-bit hashes: what
    near-duplicates share. Hashed with numpy from one CRC-32 a word, not a SHA-1 a 3-gram as
    datasketch's default does: other hash values for the same 3-grams, several times faster
    (profiled: hashing was most of the dedup time)."""
    words = _WORD.findall(" ".join(fields(rec)).casefold())
    if len(words) < 3:
        return [zlib.crc32(" ".join(words).encode())]
    h = np.fromiter((zlib.crc32(w.encode()) for w in words), dtype=np.uint64, count=len(words))
    tri = (h[:-2] * np.uint64(0x9E3779B1) + h[1:-1] * np.uint64(0x85EBCA77) + h[2:]) & np.uint64(0xFFFFFFFF)
    return np.unique(tri).tolist()


def _identity(x: int) -> int:
    return x


def bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) for a Jaccard threshold: datasketch's own choice, so that our index
    finds the same candidates as its MinHashLSH would."""
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, 0.5, 0.5)


class Signer:
    """A record's LSH band keys: one 64-bit key per band of its MinHash signature. Needs no index, so
    worker processes compute them while the index takes its decisions in order."""

    def __init__(self, cfg: DedupConfig):
        from datasketch import MinHash

        ref = MinHash(num_perm=cfg.num_perm, seed=1)
        self._perms, self._scheme = ref.permutations, ref.scheme  # made once, not per row
        self._minhash = MinHash
        self.num_perm = cfg.num_perm
        self.b, self.r = bands(cfg.threshold, cfg.num_perm)

    def __call__(self, rec: dict) -> list[int]:
        m = self._minhash(num_perm=self.num_perm, seed=1, hashfunc=_identity, permutations=self._perms,
                          scheme=self._scheme)
        m.update_batch(shingles(rec))
        hv = m.hashvalues
        # The band's number is mixed in, so one table serves every band.
        return [int.from_bytes(hashlib.blake2b(hv[i * self.r:(i + 1) * self.r].tobytes(), digest_size=8,
                                               salt=i.to_bytes(8, "little")).digest(), "little", signed=True)
                for i in range(self.b)]


class Deduper:
    """`check(rec, key)` for each record in order; `report()` at the end; `close()` removes the index."""

    def __init__(self, cfg: DedupConfig, workdir: Path):
        self.cfg = cfg
        self.path = Path(workdir) / ".dedup.sqlite"
        self.path.unlink(missing_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None)
        # A scratch index: no journal, no fsync; 64 MB of page cache whatever the input size.
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-65536", "temp_store=FILE"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.executescript("""
            CREATE TABLE kept (row INTEGER PRIMARY KEY, loc TEXT);
            CREATE TABLE exact (k BLOB PRIMARY KEY, row INTEGER) WITHOUT ROWID;
            CREATE TABLE lsh (h INTEGER PRIMARY KEY, row INTEGER) WITHOUT ROWID;
            CREATE TABLE dups (kept INTEGER, loc TEXT);
        """)
        self.db.execute("BEGIN")
        self.rows = 0
        self._pending = 0
        if cfg.near:
            self.sign = Signer(cfg)
            self._query = f"SELECT min(row) FROM lsh WHERE h IN ({','.join('?' * self.sign.b)})"

    def check(self, rec: dict, key: str, bands: list[int] | None = None) -> str | None:
        """None if the record is new (and remember it), else the drop reason. `bands`: the record's
        `Signer` keys when a worker process computed them already."""
        k = bytes.fromhex(key)
        where = rec["_where"]
        if self.cfg.exact:
            hit = self.db.execute("SELECT row FROM exact WHERE k = ?", (k,)).fetchone()
            if hit:
                return self._dup(hit[0], where, "exact_duplicate")
        keys = None
        if self.cfg.near:
            keys = bands if bands is not None else self.sign(rec)
            hit = self.db.execute(self._query, keys).fetchone()[0]
            if hit is not None:
                return self._dup(hit, where, "near_duplicate")
        row = self.rows
        self.rows += 1
        self.db.execute("INSERT INTO kept VALUES (?, ?)", (row, where))
        self.db.execute("INSERT OR IGNORE INTO exact VALUES (?, ?)", (k, row))
        if keys:
            self.db.executemany("INSERT OR IGNORE INTO lsh VALUES (?, ?)", ((h, row) for h in keys))
        self._tick()
        return None

    def _dup(self, kept_row: int, where: str, reason: str) -> str:
        self.db.execute("INSERT INTO dups VALUES (?, ?)", (kept_row, where))
        self._tick()
        return reason

    def _tick(self) -> None:
        self._pending += 1
        if self._pending >= _COMMIT_EVERY:
            self.db.execute("COMMIT")
            self.db.execute("BEGIN")
            self._pending = 0

    def report(self, limit: int = 20) -> dict:
        """The number of duplicate groups and the largest ones (kept copy, up to 10 dropped)."""
        q = self.db.execute
        n = q("SELECT count(DISTINCT kept) FROM dups").fetchone()[0]
        largest = []
        top = q("SELECT kept, count(*) AS c FROM dups GROUP BY kept ORDER BY c DESC, min(rowid) LIMIT ?", (limit,))
        for row, size in top.fetchall():
            loc = q("SELECT loc FROM kept WHERE row = ?", (row,)).fetchone()[0]
            dropped = [d for (d,) in q("SELECT loc FROM dups WHERE kept = ? ORDER BY rowid LIMIT 10", (row,))]
            largest.append({"kept": loc, "dropped": dropped, "size": size + 1})
        return {"groups": n, "largest": largest}

    def close(self) -> None:
        self.db.close()
        self.path.unlink(missing_ok=True)
