"""Classes with no training row, answered from their names (issue 44).

A category added to a taxonomy before anyone labelled a title for it (``ktt taxonomy add``) would
never be predicted: no model learns a class it has no row of. A fit therefore trains on a few
*name rows* for each such class: a text made of its name and its description
(``Hierarchy.descriptions``), labelled with its path. Not its ancestors' names: with them, every
level above the class learns the row from the ancestors' words, which many rows share, and the
class's own words, the ones its titles hold, get little weight (on BigBasket, 30 leaves without
rows: tfidf_hsgd's new-leaf F1 went from about 0.04 with them to 0.11 without). Every model learns from
them as from any row: a TF-IDF node classifier from the n-grams of the name, an encoder model's
head from the name's embedding. The number of copies of that text per class is the model's
``name_rows`` (chosen by measurement: docs/models.md); a copy weighs what a labelled row weighs,
so reviewed rows take over as they arrive.
"""
from __future__ import annotations

import numpy as np

from .hierarchy import END, Hierarchy


def name_text(h: Hierarchy, path: tuple) -> str:
    """The words a class is known by before it has rows: its name and its description."""
    path = tuple(p for p in path if p != END)
    return " ".join([path[-1], *([h.descriptions[path]] if path in h.descriptions else [])])


def unlabelled(h: Hierarchy, codes: np.ndarray) -> list[tuple]:
    """The leaves (last classes of a path, end classes cut) that no row of ``codes`` reaches."""
    leaves = h.leaf_paths()
    seen = np.zeros(len(leaves), dtype=bool)
    seen[np.unique(codes[:, -1])] = True
    return [tuple(p for p in h.levels[-1][i] if p != END) for i in np.flatnonzero(~seen)]


def with_name_rows(split, copies: int):
    """``split`` plus ``copies`` name rows (:func:`name_text`) for every leaf it has no row of;
    ``split`` itself when there is none (or ``copies`` is 0). A dataset: the same, its training
    split so extended."""
    from dataclasses import replace

    if hasattr(split, "train"):
        train = with_name_rows(split.train, copies)
        return split if train is split.train else replace(split, train=train)
    missing = unlabelled(split.hierarchy, split.codes) if copies and len(split) else []
    if not missing:
        return split
    texts = [name_text(split.hierarchy, p) for p in missing for _ in range(copies)]
    paths = [p for p in missing for _ in range(copies)]
    weights = None if split.weights is None else np.concatenate([split.weights, np.ones(len(texts))])
    return replace(split, texts=split.texts + texts, paths=split.paths + paths, weights=weights)


def is_name_row(split) -> np.ndarray:
    """Per row of ``split``, whether it is a name row (:func:`with_name_rows`): its text is its
    class's :func:`name_text` (a labelled title that is exactly its class's name counts too)."""
    return np.array([t == name_text(split.hierarchy, p) for t, p in zip(split.texts, split.paths)], dtype=bool)


def named_only(split, named: np.ndarray | None = None) -> list[np.ndarray]:
    """Per level, the classes that only name rows (:func:`with_name_rows`) of ``split`` reach
    (``named``: :func:`is_name_row` of ``split``, when the caller has it already)."""
    h = split.hierarchy
    codes = np.asarray(split.codes)[~(is_name_row(split) if named is None else named)]
    return [np.setdiff1d(np.unique(split.codes[:, d]), codes[:, d]) for d in range(h.depth)]


def near(h: Hierarchy, codes: np.ndarray, leaves: list[tuple]) -> np.ndarray:
    """Per row of predicted paths ``codes``, whether it is routed to one of ``leaves`` (new
    categories: :func:`unlabelled` of the training rows). The review queue puts these first
    (``ktt.review.queue(first=)``), so that the first reviewed rounds give the new categories their
    rows. Not the titles routed to a new leaf's parent: most of those are its siblings', and with
    them first the loop gained nothing (docs/benchmarks.md, "New categories on day one")."""
    hit = np.zeros(len(codes), dtype=bool)
    for leaf in leaves:  # at the last level: a path that ends at an inner class has its end class there
        hit |= codes[:, -1] == h.class_index(tuple(leaf) + (END,) * (h.depth - len(leaf)))
    return hit
