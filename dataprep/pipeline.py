"""The data pipeline, top to bottom: ingest -> clean -> dedup -> cluster -> format -> split ->
tokenize+pack -> report, as the guide describes it, with every dropped row accounted for.

`prepare(spec, out_dir, base_dir)` is what `launcher prep` and `python -m dataprep` call. Records
stream through the stages one at a time (except the optional clustering, which needs them all;
deduplication keeps its index on disk); each split's formatted examples are tokenized and packed
into Arrow in chunks, in a thread per split, while the stages before are still running.

Cache: a fingerprint of the data section, the tokenizer (vocabulary, template, special tokens),
and the bytes of every source file is kept in cache.json; a re-run with the same fingerprint
returns the previous report without doing any work, and changing any of them redoes the run.
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import threading
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from launcher.dataspec import DataConfig

from .clean import Boilerplate, clean_record
from .dedup import Deduper, Signer, content_key
from .errors import DataError, Rejects
from .format import Formatter
from .ingest import read_source, source_files
from .report import write_report
from .tokenize import Packer

VERSION = "dataprep-4"  # with the code's own hash below: a cache never outlives a change to the pipeline
STAGES = ["ingest", "clean", "dedup", "cluster", "format", "split", "tokenize"]


def load_tokenizer(spec):
    from launcher.models import ModelError, resolve_model

    from .tokenize import load_tokenizer as load  # without torch where the tokenizer allows

    ref = spec.tokenizer or spec.model
    try:
        return load(resolve_model(ref))
    except ModelError as e:
        raise DataError(str(e)) from None
    except (OSError, ValueError) as e:
        raise DataError(f"tokenizer {ref}: cannot load it: {str(e).splitlines()[0]}") from None


def fingerprint(cfg: DataConfig, tok, base_dir: Path, skip_bad: bool) -> str | None:
    h = hashlib.sha256()
    h.update(VERSION.encode())
    for src in sorted(Path(__file__).parent.glob("*.py")):  # a fixed reader or cleaner redoes the work
        h.update(src.read_bytes())
    h.update(cfg.model_dump_json().encode())
    h.update(str(skip_bad).encode())
    h.update(tok.backend_tokenizer.to_str().encode())
    h.update(str(getattr(tok, "chat_template", None)).encode())
    h.update(str((tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)).encode())
    for src in cfg.sources:
        if src.url:
            return None  # a live database can change under us: never cached
        for path, _fmt in source_files(src, base_dir):
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for p in files:
                h.update(str(p).encode())
                with open(p, "rb") as f:
                    while block := f.read(1 << 22):
                        h.update(block)
    return h.hexdigest()


def _score(seed: int, key: str) -> float:
    d = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(d, "big") / 2**64


def prepare(spec, out_dir: Path, base_dir: Path, skip_bad: bool = False, tokenizer=None) -> dict:
    """Run the pipeline for `spec.data`; returns the report (also written to out_dir/report.json)."""
    cfg: DataConfig = spec.data
    out_dir = Path(out_dir)
    base_dir = Path(base_dir)
    if not cfg.sources:
        raise DataError("data.sources: no sources in the job file (add at least one path)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tok = tokenizer or load_tokenizer(spec)

    key = fingerprint(cfg, tok, base_dir, skip_bad)
    cache_file = out_dir / "cache.json"
    if key and cache_file.exists() and (out_dir / "report.json").exists():
        if json.loads(cache_file.read_text()).get("key") == key and all((out_dir / s).exists() for s in ("train", "val")):
            report = json.loads((out_dir / "report.json").read_text())
            report["cached"] = True
            print(f"dataprep: {out_dir} is up to date (same data, tokenizer and settings); nothing to do")
            return report
    _check_replaceable(out_dir)

    # Atomic output: the run writes into a scratch folder beside out_dir and takes its place only
    # when it succeeds, so a failed run leaves the previous complete output (or none), never a mix.
    work = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    # A failed run's rejects are kept beside the output: they say why nothing was left
    failed_rejects = out_dir.with_name(f"{out_dir.name}.failed-run-rejects.jsonl")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    rejects = None
    try:
        rejects = Rejects(work / "rejects.jsonl", skip_bad)
        counts = {s: {"in": 0, "kept": 0} for s in STAGES}
        try:
            report = _run(cfg, tok, work, base_dir, rejects, counts)
        finally:
            rejects.close()
        if key:
            (work / "cache.json").write_text(json.dumps({"key": key}))
    except BaseException as e:
        kept = isinstance(e, DataError) and rejects is not None and rejects.total() > 0
        if kept:
            os.replace(work / "rejects.jsonl", failed_rejects)
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(e, DataError):
            left = (f"{out_dir} still holds the previous complete output" if (out_dir / "report.json").exists()
                    else f"nothing written to {out_dir}")
            if kept:
                left += f"; the {rejects.total()} rows rejected are listed in {failed_rejects}"
            raise DataError(f"{e}; {left}") from None
        raise
    _replace_dir(work, out_dir)
    failed_rejects.unlink(missing_ok=True)
    return report


# What a data-prep output folder may hold; anything else there is the user's, and is never replaced.
_OURS = {"train.jsonl", "val.jsonl", "train", "val", "report.json", "report.md", "rejects.jsonl", "cache.json",
         "token_lengths.png", "cluster_sizes.png", "cluster_map.png", ".dedup.sqlite", "train.tmp", "val.tmp",
         ".train.fmt.jsonl", ".train.where", ".val.fmt.jsonl", ".val.where"}


def _check_replaceable(out_dir: Path) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a folder; choose another --out")
    other = sorted(p.name for p in out_dir.iterdir() if p.name not in _OURS)
    if other:
        raise DataError(f"{out_dir}: holds files that are not a data-prep output ({', '.join(other[:3])}"
                        f"{' ...' if len(other) > 3 else ''}), which a run would replace; choose an empty or new folder")


def _replace_dir(new: Path, out_dir: Path) -> None:
    """Put `new` in place of out_dir: two renames on the same file system, the old one deleted after."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(out_dir, old)
    os.rename(new, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _run(cfg: DataConfig, tok, out_dir: Path, base_dir: Path, rejects: Rejects, counts: dict) -> dict:
    dedup = Deduper(cfg.dedup, out_dir)
    try:
        return _stages(cfg, tok, out_dir, base_dir, rejects, counts, dedup)
    finally:
        dedup.close()


def _stages(cfg: DataConfig, tok, out_dir: Path, base_dir: Path, rejects: Rejects, counts: dict,
            dedup: Deduper) -> dict:
    """The pipeline, a stage a function: each takes the stream of the one before and counts what
    it keeps; every row it drops goes to `rejects` with its reason."""
    boilerplate: dict = {}  # pattern family -> rows it removed, a few examples
    stream = _deduped(cfg, base_dir, rejects, counts, dedup, boilerplate)  # 1-3: ingest, clean, dedup
    stream, cluster_report = _clustered(stream, cfg, out_dir, rejects, counts)  # 4: cluster for diversity
    tok_stats = _format_split_tokenize(stream, cfg, tok, out_dir, rejects, counts)  # 5-7: format, split, tokenize+pack
    counts["ingest"]["in"] = rejects.units  # counted by the readers, not derived from the outcomes
    for (stage, reason), n in rejects.counts.items():
        counts[stage].setdefault("dropped", {})[reason] = n
    return write_report(out_dir, cfg, counts, rejects, tok_stats, dedup.report(), cluster_report,
                        dict(sorted(boilerplate.items(), key=lambda kv: -kv[1]["rows"])))


def _deduped(cfg: DataConfig, base_dir: Path, rejects: Rejects, counts: dict, dedup: Deduper,
             boilerplate: dict) -> Iterator[dict]:
    """Stages 1-3, streaming. Cleaning and the dedup signatures need no order and run in worker
    processes; the dedup decisions are taken here, in input order, so the first occurrence is kept."""
    def raws():
        for src in cfg.sources:
            yield from read_source(src, base_dir, rejects)

    cores = _cores()
    workers = cfg.workers or (cores if cores >= PARALLEL_CORES and _input_bytes(cfg, base_dir) > PARALLEL_FROM else 1)
    with tqdm(desc="ingest+clean+dedup", unit=" rows", mininterval=1) as bar:
        for batch in _cleaned(raws(), cfg, workers):
            bar.update(len(batch))
            # one round of index lookups and inserts for the whole batch, decided in input order
            decisions = iter(dedup.check_batch([(rec, key, bands, sh) for _, rec, why, key, bands, sh in batch
                                                if not why]))
            for raw, rec, why, key, _bands, _sh in batch:
                counts["ingest"]["kept"] += 1
                counts["clean"]["in"] += 1
                if why:
                    rejects.drop("clean", why, raw["_where"], _public(raw), detail=rec)
                    if why == "boilerplate":  # rec: the pattern family that matched
                        st = boilerplate.setdefault(rec, {"rows": 0, "examples": []})
                        st["rows"] += 1
                        if len(st["examples"]) < 3:
                            st["examples"].append({"where": raw["_where"], "text": _answer(raw)[:300]})
                    continue
                counts["clean"]["kept"] += 1
                counts["dedup"]["in"] += 1
                why = next(decisions)
                if why:
                    rejects.drop("dedup", why, rec["_where"], _public(rec))
                    continue
                counts["dedup"]["kept"] += 1
                rec["_key"] = key
                yield rec


def _clustered(stream: Iterator[dict], cfg: DataConfig, out_dir: Path, rejects: Rejects,
               counts: dict) -> tuple[Iterator[dict], dict | None]:
    """Stage 4: the one stage that needs every example at once; a pass-through when it is off."""
    if not cfg.cluster.enabled:
        def passed():
            for rec in stream:
                counts["cluster"]["in"] += 1
                counts["cluster"]["kept"] += 1
                yield rec
        return passed(), None
    from .cluster import cluster

    kept = list(stream)
    counts["cluster"]["in"] = len(kept)
    kept, dropped, cluster_report = cluster(kept, cfg.cluster, cfg.seed, out_dir) if kept else (kept, [], None)
    for rec in dropped:
        rejects.drop("cluster", "cluster_over_share", rec["_where"], _public(rec),
                     detail=f"cluster {rec['_cluster']} above max_share {cfg.cluster.max_share}")
    counts["cluster"]["kept"] = len(kept)
    return iter(kept), cluster_report


class _SplitFeed:
    """One split's formatted examples, tokenized and packed by a `Packer` in a thread of its own while
    the stages before still run: the tokenizer works in Rust without the GIL, so it keeps a second
    core busy while this thread cleans and deduplicates (until this overlap, tokenizing waited for
    the last row to be deduplicated, and a third of a 20 MB prep ran on one core). A bounded queue
    of chunks keeps memory flat."""

    def __init__(self, packer: Packer, split: str, out_dir: Path, rejects: Rejects, bar, chunk_size: int):
        self.split, self.n, self.chunk_size = split, 0, chunk_size
        self._q: queue.Queue = queue.Queue(maxsize=2)
        self._chunk: tuple[list, list, list] = ([], [], [])
        self._result: dict | None = None
        self._error: BaseException | None = None
        args = (packer, out_dir / f"{split}.jsonl", out_dir / split, rejects, split, bar)
        self._thread = threading.Thread(target=self._work, args=args, name=f"pack-{split}", daemon=True)
        self._thread.start()

    def _chunks(self):
        while (item := self._q.get()) is not None:
            yield item

    def _work(self, packer: Packer, *args) -> None:
        try:
            self._result = packer.run_chunks(self._chunks(), *args)
        except BaseException as e:  # handed to the main thread by close()
            self._error = e
            for _ in self._chunks():  # keep taking chunks, so the main thread never waits on a full queue
                pass

    def add(self, line: str, where: str, row: dict) -> None:
        for part, x in zip(self._chunk, (line, where, row)):
            part.append(x)
        self.n += 1
        if len(self._chunk[0]) >= self.chunk_size:
            self._q.put(self._chunk)
            self._chunk = ([], [], [])

    def close(self) -> dict:
        """Wait for the rest to be packed; the Packer's statistics."""
        if self._chunk[0]:
            self._q.put(self._chunk)
            self._chunk = ([], [], [])
        self._q.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result

    def abort(self) -> None:
        """After an error upstream: end the thread (what it wrote is discarded with the run)."""
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join()


def _format_split_tokenize(stream: Iterator[dict], cfg: DataConfig, tok, out_dir: Path, rejects: Rejects,
                           counts: dict) -> dict:
    """Stages 5-7: format each example, split by content, and tokenize and pack each split into its
    JSONL and Arrow outputs, streaming. Neither side is left empty while there are two examples: the
    examples wait in memory until both sides have one (about 1/validation-share examples), after
    which neither can end up empty; if the input ends first, the example closest to the other side
    moves over."""
    fmt = Formatter(cfg, tok)
    packer = Packer(tok, cfg)
    val_frac = cfg.split[1] / (cfg.split[0] + cfg.split[1])
    pending: dict | None = {"train": [], "val": []}  # (line, where, row) until both sides have one
    # the train example closest to validation (lowest score), and the validation example closest to
    # train: moved over if one side would otherwise be empty
    rescue = {"train": None, "val": None}
    feeds: dict[str, _SplitFeed] = {}
    bar = tqdm(desc="tokenize+pack", unit=" ex", mininterval=1)

    def start(items: dict) -> None:
        for s in ("train", "val"):
            feeds[s] = _SplitFeed(packer, s, out_dir, rejects, bar, cfg.chunk_size)
            for it in items[s]:
                feeds[s].add(*it)

    try:
        for rec in stream:
            counts["format"]["in"] += 1
            row = fmt(rec)
            if isinstance(row, str):
                rejects.drop("format", row, rec["_where"], _public(rec))
                continue
            counts["format"]["kept"] += 1
            counts["split"]["in"] += 1
            # by content: identical texts land on the same side, whatever their order or source
            score = _score(cfg.seed, rec["_key"])
            side = "val" if score < val_frac else "train"
            item = (json.dumps(row, ensure_ascii=False) + "\n", rec["_where"].replace("\n", " ") + "\n", row)
            if pending is None:
                feeds[side].add(*item)
                continue
            edge = score if side == "train" else -score
            if rescue[side] is None or edge < rescue[side][0]:
                rescue[side] = (edge, len(pending[side]))
            pending[side].append(item)
            if pending["train"] and pending["val"]:
                start(pending)
                pending = None
        if pending is not None:
            total = len(pending["train"]) + len(pending["val"])
            if total == 0:
                raise DataError("no examples left after cleaning and deduplication")
            if total == 1:
                raise DataError("only 1 example left after cleaning and deduplication: need at least 2 "
                                "(one for training, one for validation)")
            empty, full = ("val", "train") if pending["train"] else ("train", "val")
            pending[empty].append(pending[full].pop(rescue[full][1]))
            start(pending)
        # The report's plot needs matplotlib (a few tenths of a second to import); this thread mostly
        # waits for the tokenizer's last chunks now, with the GIL free, so import it meanwhile.
        threading.Thread(target=_import_plotting, name="import-matplotlib", daemon=True).start()
        tok_stats = {s: feeds[s].close() for s in ("train", "val")}
    finally:
        for f in feeds.values():
            f.abort()
        bar.close()
    counts["split"]["kept"] = feeds["train"].n + feeds["val"].n
    for s in ("train", "val"):
        counts["tokenize"]["in"] += feeds[s].n
        counts["tokenize"]["kept"] += tok_stats[s]["examples"]
    if tok_stats["val"]["examples"] == 0:
        raise DataError("every validation example was dropped at tokenization (longer than data.max_length); "
                        "raise max_length or use too_long: truncate")
    return tok_stats


def _import_plotting() -> None:
    try:
        import matplotlib.figure  # noqa: F401  (the report imports it again, waiting for this import if unfinished)
    except Exception:  # the report says what is wrong, if it is
        pass


PARALLEL_FROM = 16 << 20  # bytes of input; below it, starting worker processes costs more than it saves
# Cores from which cleaning and signing go to worker processes. On fewer, the tokenizer's threads
# already keep every core busy (on real text it is over half of all the CPU time), and workers only
# add copying between processes: on 2 cores and 21 MB, in-process was 6% faster on text with a real
# vocabulary and the same on the 60-word one (bench/prep_e2e.py inputs, 5-6 runs each).
PARALLEL_CORES = 4
_BATCH = 500  # records a worker takes at a time
_worker: dict = {}


def _cores() -> int:
    try:
        return min(len(os.sched_getaffinity(0)), 8)  # what this process may use (a container's share)
    except AttributeError:  # macOS
        return min(os.cpu_count() or 1, 8)


def _input_bytes(cfg: DataConfig, base_dir: Path) -> int:
    total = 0
    for src in cfg.sources:
        if src.path:
            for path, _fmt in source_files(src, base_dir):
                total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    return total


def _init_worker(cfg: DataConfig) -> None:
    _worker.update(cfg=cfg, bp=Boilerplate(cfg.clean), sign=Signer(cfg.dedup) if cfg.dedup.near else None)


def _clean_batch(batch: list[dict]) -> list[tuple]:
    """(cleaned record or None, drop reason or None, content key, band keys, 3-gram hashes) for each
    raw record; a dropped one's first item is the drop's detail (the boilerplate pattern). The raw
    record is not sent back: the caller still has it."""
    cfg, bp, sign = _worker["cfg"], _worker["bp"], _worker["sign"]
    out = [clean_record(raw, cfg.clean, bp) for raw in batch]
    kept = [rec for rec, why in out if not why]
    signed = iter(sign.batch(kept) if sign else [])
    return [(rec, why, None, None, None) if why
            else (rec, None, content_key(rec), *(next(signed) if sign else (None, None)))
            for rec, why in out]


def _cleaned(raws, cfg: DataConfig, workers: int):
    """(raw record, *`_clean_batch` result) for the raw records, a batch at a time, in order; with several workers, at
    most two batches per worker in flight, so memory follows the batch size and not the input
    (Pool.imap would read the whole input ahead)."""
    def batches():
        batch = []
        for raw in raws:
            batch.append(raw)
            if len(batch) == _BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    if workers <= 1:
        _init_worker(cfg)
        for batch in batches():
            yield [(raw, *r) for raw, r in zip(batch, _clean_batch(batch))]
        return
    import multiprocessing
    from collections import deque

    # forkserver: a fork of this process would copy the tokenizer's threads' state. The server
    # imports this module (numpy, pydantic: 0.2-0.3 s of CPU) once, before it forks the workers;
    # otherwise each worker imports it again (a no-op once the server runs).
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", __name__])
    with ctx.Pool(workers, initializer=_init_worker, initargs=(cfg,)) as pool:
        pending = deque()
        for batch in batches():
            pending.append((batch, pool.apply_async(_clean_batch, (batch,))))
            if len(pending) >= 2 * workers:
                batch, res = pending.popleft()
                yield [(raw, *r) for raw, r in zip(batch, res.get())]
        while pending:
            batch, res = pending.popleft()
            yield [(raw, *r) for raw, r in zip(batch, res.get())]


def _answer(rec: dict) -> str:
    if "messages" in rec:
        return " / ".join(str(t["content"]) for t in rec["messages"] if t["role"] == "assistant")
    return str(rec.get("output", rec.get("text", "")))


def _public(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if not k.startswith("_")}
