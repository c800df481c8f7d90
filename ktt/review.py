"""The review loop: answers a model is not sure of go to people, and come back as data.

An answer goes to review when it stopped above its path's end: some level's confidence was below
the threshold (the model's, a request's, or the one that reached a target precision on
validation). ``ktt predict --review FILE`` and the service (``KTT_REVIEW_FILE``) append such rows
to a review file; a reviewer fills its ``labels`` column; ``ktt ingest FILE --append DATASET``
brings the reviewed rows back as a new version of the dataset (rows left without a label are
still waiting and are left out). :func:`queue` orders rows for review; :func:`audit` (``ktt
audit``) lists a dataset's rows by how little a model that never saw them believes their labels.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import BadValue
from .hierarchy import SEP

#: Rows more alike than this (cosine of their features) are near-copies to the review queue
#: (:func:`spread`; 0.6 to 0.9 measured on BigBasket, docs/benchmarks.md "The review loop").
SIMILAR = 0.7

COLUMNS = ("text", "answer", "guess", "confidences", "model", "taxonomy", "labels")


def review_rows(texts, codes, conf, hierarchy, depths, model: str | None, taxonomy: str) -> list[dict]:
    """One review row per text: its ``answer`` (the path answered, stopped at ``depths``), the
    model's ``guess`` (the whole path), each level's confidence in the guess (``conf``:
    ``Hierarchy.confidences``), the model, the taxonomy version, and an empty ``labels`` for the reviewer."""
    full = hierarchy.decode(codes)
    return [{"text": t, "answer": SEP.join(g[:k]), "guess": SEP.join(g),
             "confidences": json.dumps([round(float(c), 4) for c in conf[i, :len(g)]]),
             "model": model or "", "taxonomy": taxonomy, "labels": ""}
            for i, (t, g, k) in enumerate(zip(texts, full, depths))]


def append_rows(path: str | os.PathLike, rows: list[dict]) -> None:
    """Append review rows to a ``.jsonl`` or ``.csv`` file (a header when the CSV is new). One
    write per call, on a file opened for appending: concurrent writers (server workers) never
    interleave inside a line on a local file system."""
    if not rows:
        return
    path = Path(path)
    if path.suffix.lower() == ".csv":
        import pandas as pd

        from .text import spreadsheet_safe

        text = spreadsheet_safe(pd.DataFrame(rows, columns=COLUMNS)).to_csv(
            index=False, header=not path.exists() or path.stat().st_size == 0)
    else:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def queue(confidences: np.ndarray, features=None, similar: float = SIMILAR, first=None) -> np.ndarray:
    """Row order for review: the least sure first, by the mean confidence along each row's path
    (``(n, depth)``, NaN where the path has ended): the share of its levels the answer expects
    to get right, its expected hierarchical F1. With ``features`` (one unit-length row per row:
    a TF-IDF model's ``features(texts)``), a row much like one queued before it waits until
    after all the others (:func:`spread`): a round of review spends no labels on near-copies.
    ``first``: rows (a mask) that go before all others, in the same order among themselves (the
    titles routed near a category that has no reviewed row yet: ``ktt.zeroshot.near``)."""
    order = np.argsort(np.nanmean(np.asarray(confidences, dtype=np.float64), axis=1), kind="stable")
    if first is not None:
        order = np.concatenate([order[np.asarray(first)[order]], order[~np.asarray(first)[order]]])
    return order if features is None else spread(order, features, similar)


def spread(order: np.ndarray, features, similar: float = SIMILAR) -> np.ndarray:
    """``order`` with every row whose cosine similarity to a row kept before it is above
    ``similar`` moved behind the kept rows, in the order it had (``features``: unit-length rows,
    dense or sparse). Pairs are found a block of rows at a time; the cost grows with rows squared
    (16,000 BigBasket titles: a third of a second)."""
    import scipy.sparse as sp

    order = np.asarray(order)
    x = sp.csr_matrix(features, dtype=np.float32)
    xt = x.T.tocsc()
    near = []  # per row, the rows like it (itself included)
    for i in range(0, x.shape[0], 1024):
        s = (x[i:i + 1024] @ xt).tocsr()
        s.data = (s.data > similar).astype(np.int8)
        s.eliminate_zeros()
        near += np.split(s.indices, s.indptr[1:-1])
    held = np.zeros(x.shape[0], bool)
    kept = np.zeros(len(order), bool)
    for k, r in enumerate(order):
        if not held[r]:
            kept[k] = True
            held[near[r]] = True
    return np.concatenate([order[kept], order[~kept]])


def cross_scores(make, split, folds: int = 2, seed: int = 0):
    """Every row of ``split`` scored by a model that never saw it (``make(hierarchy)``: an unfitted
    one, ``registry.create`` with its hyperparameters): the rows dealt at random into ``folds``
    parts, each part scored by the model fitted on the others (a model that
    validates gets a tenth of those held out). Returns the model's guess (``(n, depth)`` class
    indices), each level's confidence in it (``Hierarchy.confidences``) and the probability of
    each row's own path (its class at the last level; 0 for a class no other row has)."""
    import inspect

    h, n = split.hierarchy, len(split)
    if folds < 2 or n < folds:
        raise BadValue(f"cross-fitting deals the {n} rows into {folds} parts: it needs 2 parts or more, "
                       "and a row in each")
    rng = np.random.default_rng(seed)
    fold = rng.permutation(n) % folds
    codes, conf, own = np.zeros((n, h.depth), np.int64), np.zeros((n, h.depth)), np.zeros(n)
    for k in range(folds):
        rows, rest = np.flatnonzero(fold == k), np.flatnonzero(fold != k)
        est = make(h)
        if inspect.signature(est.fit).parameters["val"].default is None:  # it does not validate
            est.fit(split.subset(rest))
        else:
            rest = rng.permutation(rest)
            est.fit(split.subset(rest[len(rest) // 10:]), split.subset(rest[:len(rest) // 10]))
        c, proba = est.predict_scored([split.texts[i] for i in rows])
        codes[rows], conf[rows] = c, h.confidences(c, proba)
        own[rows] = proba[-1][np.arange(len(rows)), split.codes[rows, -1]]
    return codes, conf, own


def audit_order(own: np.ndarray, guess: np.ndarray) -> np.ndarray:
    """Row order for a label audit: the lowest probability of the row's own label first (``own``);
    among equal ones (many are 0), the surer the model of its own ``guess`` (its path's
    probability), the earlier."""
    return np.lexsort((-np.asarray(guess, dtype=np.float64), np.asarray(own, dtype=np.float64)))


AUDIT_COLUMNS = ("text", "split", "label", "label_probability", "guess", "guess_probability", "labels")


def audit(make, splits: dict, folds: int = 2, seed: int = 0):
    """The label audit: every row of ``splits`` (split name -> ``ktt.data.Split``, one hierarchy)
    as a table of :data:`AUDIT_COLUMNS` in :func:`audit_order` (probabilities by
    :func:`cross_scores`, so no model judges a label it learned): its ``label``, that
    probability, the model's ``guess`` and its probability, and an empty ``labels`` column for
    the reviewer (``ktt ingest FILE --append DATASET`` brings the corrections back)."""
    import pandas as pd

    from .data import Split

    names = [s for s, part in splits.items() for _ in range(len(part))]
    parts = list(splits.values())
    h = parts[0].hierarchy
    every = Split([t for p in parts for t in p.texts], [q for p in parts for q in p.paths], h)
    codes, conf, own = cross_scores(make, every, folds, seed)
    guess = h.decode(codes)
    sure = conf[np.arange(len(guess)), [len(g) - 1 for g in guess]]
    table = pd.DataFrame({
        "text": every.texts, "split": names, "label": [SEP.join(p) for p in every.paths],
        "label_probability": own.round(4), "guess": [SEP.join(g) for g in guess],
        "guess_probability": sure.round(4), "labels": ""})
    return table.iloc[audit_order(own, sure)].reset_index(drop=True)
