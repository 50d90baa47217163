"""Stage 3, deduplicate: exact duplicates by a hash of the normalized text, then near-duplicates by
MinHash LSH confirmed by the exact Jaccard similarity of word 3-grams, keeping the first occurrence
of each group and remembering the group so the report can show what was merged.

Recall first: the LSH bands are chosen so that a pair exactly at `threshold` becomes a candidate
with probability >= `RECALL` (`lsh_params`), not datasketch's balanced choice, which with 64
permutations at 0.85 catches a pair of 0.87 only 41% of the time. More candidates means more false
ones, so every candidate is confirmed with the exact 3-gram Jaccard against the threshold: the
threshold the user set is the one applied (bench/prep_dedup.py measures the curve and the cost).

Memory stays flat however large the input: the indexes live beside the output (deleted at the
end), the kept rows and content keys in a SQLite file with a bounded page cache, the band keys in
sorted runs of arrays, the large ones in files (`_Runs`), plus two fixed-size bitmaps (10 MB) that
spare the lookups of keys never seen. Kept rows store their 3-gram hashes (4 bytes a word) for the
confirmation. Lookups and inserts are batched: one query per table per chunk of rows
(`check_batch`), the decisions then taken in input order, so the first copy is kept whether its
duplicate is in an earlier chunk or the same one.
"""
from __future__ import annotations

import hashlib
import re
import sqlite3
import zlib
from pathlib import Path

import numpy as np

from launcher.dataspec import DedupConfig

from .clean import fields

_WORD = re.compile(r"\w+", re.U)
RECALL = 0.995  # wanted candidate probability of a pair exactly at the threshold
# Rows remembered per band key. A key shared by more kept rows means templated rows that are alike
# in that band yet all below the threshold (else they would not all be kept); without a cap each
# new such row would be checked against all of them (quadratic). A true duplicate shares about half
# of its bands with its original, so capping one popular band costs next to no recall.
BAND_CAP = 16
_SQL_VARS = 30000  # below SQLite's default limit of 32766 parameters per statement
# In-memory bitmaps of the keys already in the index (one bit per hashed key, like a one-hash Bloom
# filter): most keys of a new row are in no earlier row, and a clear bit answers that without a
# B-tree probe. Fixed size, whatever the input: 8 MB for band keys (about 21% of bits set at 1.3 M
# rows of 12 bands), 2 MB for content keys.
_LSH_BITS, _EXACT_BITS = 26, 24


def content_key(rec: dict) -> str:
    """The identity of a record's content: casefolded, whitespace-collapsed, all fields."""
    norm = "\x1f".join(" ".join(f.casefold().split()) for f in fields(rec))
    return hashlib.blake2b(norm.encode(), digest_size=16).hexdigest()


def shingle_array(rec: dict) -> np.ndarray:
    """Word 3-grams of all the record's fields, casefolded, as sorted distinct 32-bit hashes: what
    near-duplicates share (`shingle_batch` for one record)."""
    return shingle_batch([rec])[0]


_M1, _M2, _M3 = np.uint64(0x9E3779B1), np.uint64(0x85EBCA77), np.uint64(0xFFFFFFFF)

# Bytes that belong to a word. Among ASCII characters \w matches exactly [0-9A-Za-z_]; a text with
# other characters is first rebuilt as its \w+ words joined by spaces (`_words_text`), after which
# every byte other than a space or the record separator belongs to a word.
_IS_WORD = np.zeros(256, dtype=bool)
_IS_WORD[list(b"0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")] = True
_IS_WORD[0x80:] = True
_P = 0x100000001B3  # odd, so invertible modulo 2^64
_POWERS: list[np.ndarray] = []  # [P^i, P^-i] mod 2^64, grown as needed


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    if not _POWERS or len(_POWERS[0]) < n:
        m = max(n, 1 << 16, 2 * len(_POWERS[0]) if _POWERS else 0)
        _POWERS[:] = [np.cumprod(np.concatenate([np.ones(1, np.uint64), np.full(m - 1, p, np.uint64)]))
                      for p in (_P, pow(_P, -1, 1 << 64))]  # integer products wrap: arithmetic mod 2^64
    return _POWERS[0][:n], _POWERS[1][:n]


def _words_text(rec: dict) -> str:
    """All fields, casefolded; a text with non-ASCII characters as its words joined by spaces."""
    t = " ".join(fields(rec)).casefold()
    return t if t.isascii() else " ".join(_WORD.findall(t))


def _shingle_flat(recs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """The 3-gram hashes of every record in one array, each record's sorted and distinct, and the
    offset where each record's run starts (every record has at least one).

    No Python per word (profiled: word splitting and hashing were most of the signing time): the
    batch's texts become one byte array, words are runs of word bytes, and each word's hash is a
    polynomial hash mod 2^64 read off one prefix sum (H[end] - H[start], scaled by P^-start); 3-grams
    mix three word hashes, and one sort of (record, hash) pairs makes every record's set at once."""
    texts = [_words_text(r) for r in recs]
    encoded = [t.encode() for t in texts]
    b = np.frombuffer(b"\n".join(encoded), dtype=np.uint8)
    n = len(b)
    edge = np.flatnonzero(np.diff(np.concatenate([[False], _IS_WORD[b], [False]]).view(np.int8)))
    ws, we = edge[0::2], edge[1::2]  # each word's first byte, and the byte after its last
    pw, pinv = _powers(n + 1)
    prefix = np.zeros(n + 1, dtype=np.uint64)
    np.cumsum(b * pw[:n], out=prefix[1:])
    h = (prefix[we] - prefix[ws]) * pinv[ws]  # sum of the word's bytes times P^i, i from 0
    h = ((h ^ (h >> np.uint64(29))) * np.uint64(0xBF58476D1CE4E5B9)) >> np.uint64(32)
    ends = np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(texts)) + 1)  # each at its newline
    rid = np.searchsorted(ends, ws, side="right").astype(np.uint64)
    lens = np.bincount(rid.astype(np.int64), minlength=len(recs))
    ok = rid[:-2] == rid[2:]  # the 3-gram lies within one record
    tri = (h[:-2][ok] * _M1 + h[1:-1][ok] * _M2 + h[2:][ok]) & _M3
    keys = [(rid[:-2][ok] << np.uint64(32)) | tri]
    short = np.flatnonzero(lens < 3)  # fewer than three words: the words themselves, as one hash
    if len(short):
        keys.append((short.astype(np.uint64) << np.uint64(32))
                    | np.array([zlib.crc32(" ".join(_WORD.findall(texts[i])).encode()) for i in short], dtype=np.uint64))
    # sorted, then the repeats dropped: np.unique would hash them first (numpy >= 2.3), 10x slower here
    keys = np.sort(np.concatenate(keys))
    keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
    starts = np.searchsorted(keys >> np.uint64(32), np.arange(len(recs), dtype=np.uint64))
    return (keys & _M3).astype(np.uint32), starts


def shingle_batch(recs: list[dict]) -> list[np.ndarray]:
    """`shingle_array` of each record."""
    if not recs:
        return []
    flat, starts = _shingle_flat(recs)
    return np.split(flat, starts[1:])


def shingles(rec: dict) -> list[int]:
    return shingle_array(rec).tolist()


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted distinct hash arrays."""
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


def candidate_probability(j: float, b: int, r: int) -> float:
    """The chance that a pair of Jaccard similarity j shares at least one of b bands of r rows."""
    return 1 - (1 - j ** r) ** b


def lsh_params(threshold: float, num_perm: int, recall: float = RECALL) -> tuple[int, int]:
    """(bands, rows per band): the most rows per band (the fewest false candidates) for which a pair
    at the threshold is still a candidate with probability >= recall."""
    best = (num_perm, 1)
    for r in range(1, num_perm + 1):
        b = num_perm // r
        if candidate_probability(threshold, b, r) >= recall:
            best = (b, r)
    return best


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, a bijection: spreads structured inputs before the affine maps."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _fmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


class Signer:
    """A record's LSH band keys (one 64-bit key per band of its MinHash signature) and its 3-gram
    hashes. Needs no index, so worker processes compute them while the index decides in order.

    MinHash with affine permutations h -> a*h + b mod 2^32 (a odd, so each is a bijection) of the
    premixed 3-gram hashes, computed here with numpy for a whole batch of records at once: one
    (permutations x 3-grams) array and one minimum per record's run of columns. Not datasketch's
    MinHash: importing datasketch imports scipy (a third of a second of every process's start-up,
    the main one and each worker), and one record at a time it spent most of its time in Python."""

    def __init__(self, cfg: DedupConfig):
        rng = np.random.default_rng(1)
        self._a = (rng.integers(0, 1 << 31, cfg.num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1))[:, None]
        self._b = rng.integers(0, 1 << 32, cfg.num_perm, dtype=np.uint32)[:, None]
        self.num_perm = cfg.num_perm
        self.b, self.r = lsh_params(cfg.threshold, cfg.num_perm)
        # the band's number is mixed into its key, so one table serves every band
        self._salt = _fmix64(np.arange(1, self.b + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))

    def __call__(self, rec: dict) -> tuple[bytes, bytes]:
        """(band keys as little-endian int64s, 3-gram hashes as uint32s): bytes, cheap to send
        between processes and to stack into arrays."""
        return self.batch([rec])[0]

    def batch(self, recs: list[dict]) -> list[tuple[bytes, bytes]]:
        """`self(rec)` for each record, 256 at a time: the (permutations x 3-grams) array of a slice stays
        at a few MB."""
        return [x for i in range(0, len(recs), 256) for x in self._batch(recs[i:i + 256])]

    def _batch(self, recs: list[dict]) -> list[tuple[bytes, bytes]]:
        if not recs:
            return []
        flat, starts = _shingle_flat(recs)
        perm = np.multiply(self._a, _fmix32(flat)[None, :])  # in place from here: one (perms x 3-grams) array
        perm += self._b
        sig = np.minimum.reduceat(perm, starts, axis=1).T  # records x perms
        bands = sig[:, :self.b * self.r].reshape(len(recs), self.b, self.r).astype(np.uint64)
        k = np.broadcast_to(self._salt, (len(recs), self.b))
        for c in range(self.r):
            k = _fmix64(k ^ bands[:, :, c]) if c == self.r - 1 else (k ^ bands[:, :, c]) * np.uint64(0x100000001B3)
        keys = k.astype("<u8").tobytes()
        w = 8 * self.b
        shs = np.split(flat, starts[1:])
        return [(keys[n * w:(n + 1) * w], sh.tobytes()) for n, sh in enumerate(shs)]


def _member(x: np.ndarray, of: np.ndarray) -> np.ndarray:
    """np.isin(x, of) by binary search in sorted `of` (np.isin sorts x and `of` together: 1.3-4x
    slower on a batch's band keys against the thousands of keys seen before that real text gives)."""
    if not len(of):
        return np.zeros(x.shape, dtype=bool)
    of = np.sort(of)
    return of[np.minimum(np.searchsorted(of, x), len(of) - 1)] == x


class _Runs:
    """A multimap of int64 keys to int64 rows that only grows, kept as sorted runs (a log-structured
    merge): each batch's pairs become a run; a run merges into the one before while that one is at
    most twice its size, so there are about log2(pairs / batch) runs, each searched with a binary
    search, and each pair is copied about that many times in all. Runs of `spill` pairs or more go
    to .npy files in `folder` and are searched through memory maps, and no merge makes a run of
    over `max_run` pairs (the merge holds it in memory): memory stays bounded, about 100 MB at most.

    Not a SQLite table: inserting a batch's band keys into a B-tree larger than its page cache was
    most of dedup's time on large inputs (12.8 of 18 s for 400 000 rows), a page read and written
    for each random key; merging sorted arrays reads and writes each page in order."""

    def __init__(self, folder: Path, name: str, spill: int = 1 << 20, max_run: int = 1 << 22):
        self.folder, self.name, self.spill, self.max_run = Path(folder), name, spill, max_run
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []
        self._files = 0

    def add(self, keys: np.ndarray, rows: np.ndarray) -> None:
        if not len(keys):
            return
        k, r = np.asarray(keys, dtype=np.int64), np.asarray(rows, dtype=np.int64)
        while self.runs and len(self.runs[-1][0]) <= min(2 * len(k), self.max_run - len(k)):
            k0, r0 = self.runs.pop()
            k, r = np.concatenate([k0, k]), np.concatenate([r0, r])
            self._drop_file(k0)
            self._drop_file(r0)
        order = np.argsort(k, kind="stable")  # two sorted runs end to end: the stable sort merges them in linear time
        k, r = k[order], r[order]
        if len(k) >= self.spill:
            k, r = self._to_file(k), self._to_file(r)
        self.runs.append((k, r))

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every (key, row) pair held for the given keys."""
        keys = np.asarray(keys, dtype=np.int64)
        out_k, out_r = [], []
        for k, r in self.runs:
            lo, hi = np.searchsorted(k, keys, "left"), np.searchsorted(k, keys, "right")
            n = hi - lo
            if n.any():
                idx = np.repeat(lo - np.cumsum(n) + n, n) + np.arange(int(n.sum()))
                out_k.append(np.asarray(k[idx]))
                out_r.append(np.asarray(r[idx]))
        if not out_k:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return np.concatenate(out_k), np.concatenate(out_r)

    def _to_file(self, x: np.ndarray) -> np.ndarray:
        self._files += 1
        path = self.folder / f".dedup-{self.name}-{self._files}.npy"
        np.save(path, x)
        return np.load(path, mmap_mode="r")

    @staticmethod
    def _drop_file(x: np.ndarray) -> None:
        if isinstance(x, np.memmap) and x.filename:
            Path(x.filename).unlink(missing_ok=True)

    def close(self) -> None:
        for k, r in self.runs:
            self._drop_file(k)
            self._drop_file(r)
        self.runs = []


def _parts(xs: list, size: int = _SQL_VARS):
    for i in range(0, len(xs), size):
        yield xs[i:i + size]


class Deduper:
    """`check_batch(items)` for each chunk of records in order (or `check(rec, key)` for one);
    `report()` at the end; `close()` removes the index."""

    def __init__(self, cfg: DedupConfig, workdir: Path):
        self.cfg = cfg
        self.path = Path(workdir) / ".dedup.sqlite"
        self.path.unlink(missing_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None)
        # A scratch index: no journal, no fsync; 64 MB of page cache whatever the input size.
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-65536", "temp_store=FILE"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.executescript("""
            CREATE TABLE kept (row INTEGER PRIMARY KEY, loc TEXT, sh BLOB);
            CREATE TABLE exact (k BLOB PRIMARY KEY, row INTEGER) WITHOUT ROWID;
            CREATE TABLE dups (kept INTEGER, loc TEXT);
        """)
        # One transaction for the whole run, never committed (the file is scratch, deleted at the end):
        # pages are written only when the page cache spills, not at every batch's commit.
        self.db.execute("BEGIN")
        self._lsh = _Runs(workdir, "lsh")  # band key -> kept rows with it
        self._bits = {"lsh": np.zeros(1 << (_LSH_BITS - 3), dtype=np.uint8),
                      "exact": np.zeros(1 << (_EXACT_BITS - 3), dtype=np.uint8)}
        self.rows = 0
        self.candidates = 0  # pairs whose exact Jaccard was computed
        self.confirmed = 0
        if cfg.near:
            self.sign = Signer(cfg)

    def check(self, rec: dict, key: str, bands: bytes | None = None, sh: bytes | None = None) -> str | None:
        """None if the record is new (and remember it), else the drop reason."""
        return self.check_batch([(rec, key, bands, sh)])[0]

    def check_batch(self, items: list[tuple]) -> list[str | None]:
        """items: (record, content key, band keys or None, 3-gram bytes or None) in input order, the
        last two as `Signer` gives them when a worker process computed them already. Returns each
        one's drop reason, or None for a kept (and now remembered) record.

        One query per table for the whole batch, then the decisions in input order. A row none of
        whose band keys is in the index or shared with another row of the batch (most rows) has no
        candidate: it is kept without any per-band Python, its keys inserted as one array."""
        cfg, q = self.cfg, self.db.execute
        if not items:
            return []
        ks = [bytes.fromhex(it[1]) for it in items]
        old_exact: dict = {}
        if cfg.exact:
            probe = self._maybe_seen("exact", list(set(ks)))
            for part in _parts(probe):
                old_exact.update(q(f"SELECT k, row FROM exact WHERE k IN ({','.join('?' * len(part))})", part))
        old_lsh: dict[int, list[int]] = {}
        old_sh: dict[int, np.ndarray] = {}
        maybe = np.zeros(len(items), dtype=bool)
        if cfg.near:
            todo = [rec for rec, _, b, _ in items if b is None]  # not signed by a worker: signed here
            fresh = iter(self.sign.batch(todo))
            signed = [(b, sh) if b is not None else next(fresh) for _, _, b, sh in items]
            K = np.frombuffer(b"".join(b for b, _ in signed), dtype="<i8").reshape(len(items), self.sign.b)
            uniq, counts = np.unique(K, return_counts=True)
            found_h, found_row = self._lsh.find(self._maybe_seen("lsh", uniq))
            for h, row in zip(found_h.tolist(), found_row.tolist()):
                old_lsh.setdefault(h, []).append(row)
            rows = list({r for rs in old_lsh.values() for r in rs})
            for part in _parts(rows):
                for row, sh in q(f"SELECT row, sh FROM kept WHERE row IN ({','.join('?' * len(part))})", part):
                    old_sh[row] = np.frombuffer(sh, dtype=np.uint32)
            shared = uniq[counts > 1]
            if old_lsh:
                shared = np.concatenate([shared, np.fromiter(old_lsh, dtype=np.int64, count=len(old_lsh))])
            maybe = _member(K, shared).any(axis=1)

        out: list[str | None] = []
        new_exact: dict = {}
        new_lsh: dict[int, list[int]] = {}
        kept, lsh_rows, dups, plain = [], [], [], []
        for i, ((rec, _key, _b, _sh), k) in enumerate(zip(items, ks)):
            where = rec["_where"]
            if cfg.exact:
                hit = old_exact.get(k, new_exact.get(k))
                if hit is not None:
                    dups.append((hit, where))
                    out.append("exact_duplicate")
                    continue
            sh = signed[i][1] if cfg.near else None
            if maybe[i]:
                keys = K[i].tolist()
                a = np.frombuffer(sh, dtype=np.uint32)
                cands = set()
                for h in keys:
                    cands.update(old_lsh.get(h, ()))
                    cands.update(new_lsh.get(h, ()))
                hit = None
                for row in sorted(cands):  # the earliest kept copy that is similar enough
                    self.candidates += 1
                    if jaccard(a, old_sh[row]) >= cfg.threshold:
                        hit = row
                        break
                if hit is not None:
                    self.confirmed += 1
                    dups.append((hit, where))
                    out.append("near_duplicate")
                    continue
            row = self.rows
            self.rows += 1
            kept.append((row, where, sh))
            if cfg.exact:
                new_exact[k] = row
            if maybe[i]:
                old_sh[row] = a
                for h in keys:
                    have = new_lsh.setdefault(h, [])
                    if len(old_lsh.get(h, ())) + len(have) < BAND_CAP:
                        have.append(row)
                        lsh_rows.append((h, row))
            elif cfg.near:
                plain.append((i, row))  # keys in no other row: inserted below, all at once
            out.append(None)
        hs = np.array([h for h, _ in lsh_rows], dtype=np.int64)
        rs = np.array([r for _, r in lsh_rows], dtype=np.int64)
        if plain:
            idx, rws = np.array(plain, dtype=np.int64).T
            hs, rs = np.concatenate([hs, K[idx].ravel()]), np.concatenate([rs, np.repeat(rws, K.shape[1])])
        self.db.executemany("INSERT INTO kept VALUES (?, ?, ?)", kept)
        self.db.executemany("INSERT INTO exact VALUES (?, ?)", sorted(new_exact.items()))
        self._lsh.add(hs, rs)
        self.db.executemany("INSERT INTO dups VALUES (?, ?)", dups)
        self._mark("exact", list(new_exact))
        self._mark("lsh", hs)
        return out

    def _positions(self, table: str, keys: list) -> np.ndarray:
        if table == "exact":  # 16-byte content hashes: their first 8 bytes are as random as any
            v = np.frombuffer(b"".join(k[:8] for k in keys), dtype=np.uint64)
        else:
            v = np.asarray(keys, dtype=np.int64).view(np.uint64)
        return (v & np.uint64(len(self._bits[table]) * 8 - 1)).astype(np.int64)

    def _maybe_seen(self, table: str, keys):
        """The keys that may be in the table (all that are, and some that are not): a list of content
        keys, or an array of band keys."""
        if not len(keys):
            return keys
        pos = self._positions(table, keys)
        hit = (self._bits[table][pos >> 3] >> (pos & 7).astype(np.uint8)) & 1
        if isinstance(keys, np.ndarray):
            return keys[hit.astype(bool)]
        return [k for k, h in zip(keys, hit.tolist()) if h]

    def _mark(self, table: str, keys) -> None:
        if len(keys):
            pos = np.sort(self._positions(table, keys))
            byte, mask = pos >> 3, (1 << (pos & 7)).astype(np.uint8)
            starts = np.flatnonzero(np.r_[True, byte[1:] != byte[:-1]])
            # OR the masks of each byte together first (ufunc.at is slow); then one fancy-indexed OR
            self._bits[table][byte[starts]] |= np.bitwise_or.reduceat(mask, starts)

    def settings(self) -> dict:
        """What the near-duplicate search did, for the report: its parameters and its work."""
        if not self.cfg.near:
            return {"exact": self.cfg.exact, "near": False}
        b, r, t = self.sign.b, self.sign.r, self.cfg.threshold
        return {"exact": self.cfg.exact, "near": True, "threshold": t, "num_perm": self.cfg.num_perm, "bands": b,
                "rows_per_band": r, "candidate_probability_at_threshold": round(candidate_probability(t, b, r), 4),
                "candidate_pairs_checked": self.candidates, "near_duplicates_confirmed": self.confirmed,
                "similarity": "exact Jaccard of casefolded word 3-grams, all fields"}

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
        return {"groups": n, "largest": largest, "settings": self.settings()}

    def close(self) -> None:
        self.db.close()
        self.path.unlink(missing_ok=True)
        self._lsh.close()
