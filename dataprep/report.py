"""The run's summary: report.json (machine-readable), report.md (for people) and token_lengths.png.

Both reports carry the accounting: for every stage, rows in, kept, and dropped per reason, and the
identity `rows read = examples kept + rows rejected`, which must hold for every run. "Rows read"
is what the readers counted as they read (every line of a JSONL file, every CSV record ...; see
ingest.py), not a sum of outcomes, so a unit that went missing shows as DOES NOT RECONCILE.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from launcher.dataspec import DataConfig

from .errors import Rejects


def write_report(out_dir: Path, cfg: DataConfig, counts: dict, rejects: Rejects, tok_stats: dict,
                 dedup: dict, cluster: dict | None, boilerplate: dict | None = None) -> dict:
    lengths = np.concatenate([np.frombuffer(tok_stats[s].pop("lengths"), dtype=np.uint32) for s in ("train", "val")])
    total_in = counts["ingest"]["in"]
    kept = tok_stats["train"]["examples"] + tok_stats["val"]["examples"]
    rejected = rejects.total()
    # each stage on its own too: what came in was kept or dropped for a counted reason
    stages_ok = all(c["in"] == c["kept"] + sum(c.get("dropped", {}).values()) for c in counts.values())
    report = {
        "cached": False,
        "stages": counts,
        "totals": {"rows_in": total_in, "examples_kept": kept, "rows_rejected": rejected,
                   "reconciles": total_in == kept + rejected and stages_ok},
        "splits": {s: {k: v for k, v in tok_stats[s].items()} for s in ("train", "val")},
        "tokens": {"max_length": cfg.max_length, "packing": cfg.packing,
                   "mean": float(lengths.mean()) if len(lengths) else 0.0,
                   "p50": int(np.percentile(lengths, 50)) if len(lengths) else 0,
                   "p95": int(np.percentile(lengths, 95)) if len(lengths) else 0,
                   "max": int(lengths.max()) if len(lengths) else 0},
        "dedup": dedup,
        "boilerplate": boilerplate or {},
        "cluster": cluster,
        "summary": (f"{total_in} rows read = {kept} kept + {rejected} rejected; train {tok_stats['train']['sequences']} "
                    f"sequences, val {tok_stats['val']['sequences']}"),
        "files": ["train.jsonl", "val.jsonl", "train/", "val/", "rejects.jsonl", "report.md", "token_lengths.png"],
    }
    _histogram(lengths, cfg.max_length, out_dir / "token_lengths.png")
    (out_dir / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    (out_dir / "report.md").write_text(_markdown(report), encoding="utf-8")
    return report


def _histogram(lengths: np.ndarray, max_length: int, path: Path) -> None:
    # A Figure without pyplot: no backend selection or figure manager to import, and nothing global to close.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.hist(lengths, bins=50, range=(0, max(max_length, int(lengths.max()) if len(lengths) else 1)))
    ax.axvline(max_length, color="red", linestyle="--", label=f"max_length {max_length}")
    ax.set_xlabel("tokens per example")
    ax.set_ylabel("examples")
    ax.set_title("Token lengths")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _markdown(r: dict) -> str:
    t = r["totals"]
    ok = "reconciles" if t["reconciles"] else "DOES NOT RECONCILE"
    out = ["# Data preparation report", "",
           f"**{t['rows_in']} rows read = {t['examples_kept']} examples kept + {t['rows_rejected']} rows rejected** ({ok}).",
           "Every rejected row is in `rejects.jsonl` with its stage, reason and source location.", "",
           "| stage | in | kept | dropped (reason: rows) |", "|---|---:|---:|---|"]
    for stage, c in r["stages"].items():
        dropped = ", ".join(f"{k}: {v}" for k, v in sorted(c.get("dropped", {}).items())) or "-"
        out.append(f"| {stage} | {c['in']} | {c['kept']} | {dropped} |")
    out += ["", "## Splits", "", "| split | examples | sequences | tokens | label tokens | fill of max_length | truncated |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for s, st in r["splits"].items():
        fill = st["tokens"] / max(1, st["sequences"] * r["tokens"]["max_length"])
        out.append(f"| {s} | {st['examples']} | {st['sequences']} | {st['tokens']} | {st['label_tokens']} | "
                   f"{fill:.0%} | {st['truncated']} |")
    tk = r["tokens"]
    out += ["", f"Tokens per example: mean {tk['mean']:.1f}, median {tk['p50']}, p95 {tk['p95']}, max {tk['max']} "
                f"(max_length {tk['max_length']}, packing {'on' if tk['packing'] else 'off'}).", "",
            "![token lengths](token_lengths.png)", "", "## Duplicates", "",
            f"{r['dedup']['groups']} groups of duplicates (first occurrence kept)."]
    ds = r["dedup"].get("settings", {})
    if ds.get("near"):
        out += ["", f"Near-duplicates: exact Jaccard similarity of word 3-grams >= {ds['threshold']} "
                    f"(`data.dedup.threshold`), among the candidates of a MinHash LSH index of {ds['num_perm']} "
                    f"permutations in {ds['bands']} bands of {ds['rows_per_band']} rows: a pair exactly at the "
                    f"threshold is a candidate with probability {ds['candidate_probability_at_threshold']:.2%}. "
                    f"{ds['candidate_pairs_checked']} candidate pairs checked, "
                    f"{ds['near_duplicates_confirmed']} confirmed."]
    for g in r["dedup"]["largest"][:10]:
        out.append(f"- kept `{g['kept']}`, dropped {g['size'] - 1}: " + ", ".join(f"`{w}`" for w in g["dropped"][:5]))
    if r.get("boilerplate"):
        out += ["", "## Boilerplate removed", "", "| pattern | rows | examples |", "|---|---:|---|"]
        for name, st in r["boilerplate"].items():
            ex = "<br>".join(f"`{e['where']}`: " + e["text"].replace("\n", " ").replace("|", "\\|")[:120]
                             for e in st["examples"])
            out.append(f"| {name.replace('|', chr(92) + '|')} | {st['rows']} | {ex} |")
        out.append("")
        out.append("Patterns: `dataprep/clean.py` (BOILERPLATE_PATTERNS); add your own with "
                   "`data.clean.boilerplate_extra` (phrases) or `boilerplate_patterns` (regular expressions).")
    if r.get("cluster"):
        c = r["cluster"]
        out += ["", "## Clusters", "", f"k-means with k={c['k']} on {c.get('embedding')} embeddings"
                + (f", each cluster capped at {c['max_share']:.0%} of the data" if c.get("max_share") else "") + ".", "",
                "![cluster sizes](cluster_sizes.png) ![cluster map](cluster_map.png)", ""]
        for cl in c["clusters"]:
            ex = " / ".join(e.replace("\n", " ")[:80] for e in cl["examples"])
            out.append(f"- cluster {cl['cluster']}: {cl['size']} examples ({cl['kept']} kept). e.g. {ex}")
    return "\n".join(out) + "\n"
