"""Stage 3, deduplicate: exact duplicates by a hash of the normalized text, then near-duplicates by
MinHash LSH (datasketch), keeping the first occurrence of each group and remembering the group so
the report can show what was merged.

Memory: a 16-byte digest per kept example for exact dedup; the LSH index for near dedup holds
`num_perm` hash values per kept example (turn `dedup.near` off for inputs of many millions of rows).
"""
from __future__ import annotations

import hashlib
import re

from .clean import fields
from .config import DedupConfig

_WORD = re.compile(r"\w+", re.U)


def content_key(rec: dict) -> str:
    """The identity of a record's content: casefolded, whitespace-collapsed, all fields."""
    norm = "\x1f".join(" ".join(f.casefold().split()) for f in fields(rec))
    return hashlib.blake2b(norm.encode(), digest_size=16).hexdigest()


class Deduper:
    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg
        self.first: dict[str, str] = {}  # content key -> where of the kept copy
        self.groups: dict[str, list[str]] = {}  # where kept -> wheres dropped as its duplicates
        self.lsh = None
        if cfg.near:
            from datasketch import MinHashLSH

            self.lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)

    def check(self, rec: dict, key: str) -> str | None:
        """None if the record is new (and remember it), else the drop reason."""
        where = rec["_where"]
        if self.cfg.exact and key in self.first:
            self.groups.setdefault(self.first[key], []).append(where)
            return "exact_duplicate"
        if self.lsh is not None:
            from datasketch import MinHash

            words = _WORD.findall(" ".join(fields(rec)).casefold())
            shingles = {" ".join(words[i:i + 3]) for i in range(max(1, len(words) - 2))}
            m = MinHash(num_perm=self.cfg.num_perm, seed=1)
            m.update_batch([s.encode() for s in shingles])
            hits = self.lsh.query(m)
            if hits:
                kept = min(hits, key=lambda h: int(h.split("#", 1)[0]))
                self.groups.setdefault(kept.split("#", 1)[1], []).append(where)
                return "near_duplicate"
            self.lsh.insert(f"{len(self.first)}#{where}", m, check_duplication=False)
        self.first.setdefault(key, where)
        return None

    def report(self, limit: int = 20) -> dict:
        groups = sorted(self.groups.items(), key=lambda kv: -len(kv[1]))
        return {"groups": len(groups),
                "largest": [{"kept": k, "dropped": v[:10], "size": len(v) + 1} for k, v in groups[:limit]]}
