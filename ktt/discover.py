"""Candidate categories found in the traffic (``ktt discover``, issue 44).

A title whose answer stops above its leaf (a level below the threshold) often belongs to a
category the taxonomy lacks. Under each class where such titles stop, they are clustered by
their words (TF-IDF of word unigrams and bigrams, cosine distance, average linkage, cut at
``distance``: scikit-learn's ``AgglomerativeClustering``), and each cluster of at least
``min_size`` titles is proposed (0.85 and 3: on BigBasket, 30 leaves gone from the taxonomy and
about 15 titles of each in the traffic, 0.7 or 5 found a fifth to a third of them, these two
about 65%: docs/benchmarks.md) as a category under that class, named by the terms that set it
apart from the other titles stopped there (its mean TF-IDF weight minus theirs), with the existing
class the model's paths took most often one level down (``nearest``, and the share of the
cluster's titles it took: a high share says "a part of that class", a low one "something new"). A proposal is
data for a team to review, never a change by itself: ``ktt taxonomy add`` makes it one.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import BadValue
from .hierarchy import END, SEP, Hierarchy

COLUMNS = ["parent", "name", "path", "size", "terms", "nearest", "nearest_share", "examples"]


def stopped_above(h: Hierarchy, codes: np.ndarray, depths: np.ndarray) -> np.ndarray:
    """Per row, whether its answer stopped above the end of its predicted path."""
    return depths < h.path_depths(codes)


def clusters(texts: list[str], distance: float = 0.85, max_rows: int = 3000, seed: int = 0):
    """Cluster labels of ``texts`` (-1: no cluster), and their TF-IDF rows (sparse) and terms.
    At most ``max_rows`` of them (drawn by ``seed``) are clustered, from their pairwise cosine
    distances (``max_rows`` squared floats, never rows x terms); every other text joins the
    cluster whose mean is nearest, if within ``distance``."""
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.feature_extraction.text import TfidfVectorizer

    labels = np.full(len(texts), -1)
    take = np.sort(np.random.default_rng(seed).choice(len(texts), max_rows, replace=False)) \
        if len(texts) > max_rows else np.arange(len(texts))
    vec = TfidfVectorizer(ngram_range=(1, 2), token_pattern=r"(?u)\b[^\W\d_]{2,}\b", sublinear_tf=True,
                          dtype=np.float32)
    try:
        vec.fit([texts[i] for i in take])
    except ValueError:  # no word at all (numbers, one-letter tokens)
        return labels, None, []
    x = vec.transform(texts)
    if len(take) > 1:
        near = np.clip(1 - (x[take] @ x[take].T).toarray(), 0, 2)
        labels[take] = AgglomerativeClustering(n_clusters=None, metric="precomputed", linkage="average",
                                               distance_threshold=distance).fit_predict(near)
    else:
        labels[take] = 0
    rest = np.setdiff1d(np.arange(len(texts)), take)
    if len(rest):
        import scipy.sparse as sp

        ids = np.unique(labels[take])
        member = sp.csr_matrix((np.ones(len(take), np.float32), (np.searchsorted(ids, labels[take]), take)),
                               shape=(len(ids), len(texts)))
        means = member @ x  # per cluster, the sum of its rows, normalised below: cosine to each mean
        norms = np.sqrt(np.asarray(means.multiply(means).sum(1))).ravel()
        for part in np.array_split(rest, -(-len(rest) // 10_000)):  # rows x clusters, 10,000 rows at a time
            sim = (x[part] @ means.T).toarray() / np.maximum(norms, 1e-12)
            best = sim.argmax(1)
            labels[part] = np.where(1 - sim[np.arange(len(part)), best] <= distance, ids[best], -1)
    return labels, x, vec.get_feature_names_out()


def propose(h: Hierarchy, texts, codes: np.ndarray, depths: np.ndarray, *, min_size: int = 3,
            distance: float = 0.85, terms: int = 3, examples: int = 5) -> pd.DataFrame:
    """Candidate categories (:data:`COLUMNS`, largest first, and ``rows``: the indices of their
    titles) among the rows whose answer stopped above its leaf: per class where they stopped,
    clusters of at least ``min_size`` titles."""
    if min_size < 2:
        raise BadValue(f"min_size must be at least 2, not {min_size}")
    if not 0 < distance < 1:
        raise BadValue(f"distance must be between 0 and 1 (a cosine distance), not {distance}")
    texts = list(texts)
    out = []
    groups: dict[tuple, list[int]] = {}  # the class where each stopped row stopped -> those rows, in one pass
    for i in np.flatnonzero(stopped_above(h, codes, depths)):
        d = depths[i]
        groups.setdefault(tuple(h.levels[d - 1][codes[i, d - 1]]) if d > 0 else (), []).append(i)
    for parent in sorted(groups):
        rows = np.asarray(groups[parent])
        if len(rows) < min_size:
            continue
        group = [texts[i] for i in rows]
        labels, x, vocab = clusters(group, distance)
        for c in np.unique(labels[labels >= 0]):
            inside = labels == c
            if inside.sum() < min_size:
                continue
            others = ~inside & (labels >= 0)
            apart = np.asarray(x[inside].mean(0)).ravel() - (np.asarray(x[others].mean(0)).ravel() if others.any() else 0)
            top = [vocab[j] for j in np.argsort(-apart)[:terms] if apart[j] > 0]
            members = [group[i] for i in np.flatnonzero(inside)]
            name = _name(dict.fromkeys(w for t in top for w in t.split()), members)
            below = codes[rows[inside], len(parent)] if len(parent) < h.depth else np.zeros(0, int)
            kids, counts = np.unique(below, return_counts=True)
            up = SEP.join(p for p in parent if p != END)
            out.append({"parent": up, "name": name, "path": SEP.join([*(p for p in parent if p != END), name]),
                        "size": int(inside.sum()), "terms": ", ".join(top),
                        "nearest": h.names(len(parent))[kids[counts.argmax()]] if len(kids) else "",
                        "nearest_share": round(float(counts.max() / counts.sum()), 3) if len(kids) else 0.0,
                        "examples": " | ".join(list(dict.fromkeys(members))[:examples]), "rows": rows[inside]})
    return pd.DataFrame(out, columns=[*COLUMNS, "rows"]).sort_values("size", ascending=False, kind="stable").reset_index(drop=True)


def _name(words, titles: list[str]) -> str:
    """``words`` in the order the titles hold them (median place), title-cased."""
    split = [t.lower().split() for t in titles]
    place = {w: np.median([ws.index(w) for ws in split if w in ws] or [99]) for w in words}
    return " ".join(sorted(words, key=lambda w: place[w])).title() or "Unnamed"
