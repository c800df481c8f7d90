"""Sparse TF-IDF features and sparse linear classifiers, in numpy (and pandas) alone.

The TF-IDF models train with scikit-learn, but what they learn is kept here in plain arrays, so
the same code scores in-process and in the (scikit-learn-free) server, at a cost that grows with
a text's non-zero features and never with the vocabulary or with classes x vocabulary:

* :class:`NgramIndex` maps texts to the vectoriser's n-gram columns (counts, CSR arrays);
* :class:`LinearBlocks` holds blocks of one-vs-rest linear classifiers (one block per node of
  the tree, or one over the leaves) in one CSR weight matrix, features x decisions, that keeps
  only the weights training made non-zero.

A CSR matrix here is anything with ``indptr``, ``indices``, ``data`` and ``shape`` (a
:class:`Csr`, or a scipy ``csr_matrix``).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .text import stemmer, words

PROBA_LOSSES = ("modified_huber", "log_loss")


@dataclass
class Csr:
    """A CSR matrix as three arrays and a shape (what scipy's ``csr_matrix`` holds)."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    shape: tuple[int, int]

    @property
    def nnz(self) -> int:
        return len(self.data)

    def rows(self, which: np.ndarray) -> "Csr":
        """The rows ``which`` (in that order, repeats allowed)."""
        start, stop = self.indptr[which], self.indptr[np.asarray(which) + 1]
        take = ragged_range(start, stop)
        return Csr(np.concatenate([[0], np.cumsum(stop - start)]), self.indices[take], self.data[take],
                   (len(which), self.shape[1]))


def ragged_range(start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """``concatenate([arange(a, b) for a, b in zip(start, stop)])`` without a Python loop."""
    start, stop = np.asarray(start, dtype=np.int64), np.asarray(stop, dtype=np.int64)
    lengths = stop - start
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    first = np.repeat(start - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return first + np.arange(total)


class NgramIndex:
    """Texts -> counts of a fitted vectoriser's n-grams of Snowball stems, as CSR arrays.

    Each distinct word of a batch is stemmed once and mapped to an integer token id; every
    n-gram becomes one int64 key (ids in base ``n_tokens``) looked up in a hash index of the
    vocabulary's keys: no Python loop per word or n-gram.
    """

    def __init__(self, tokens, keys: dict[int, np.ndarray], columns: dict[int, np.ndarray], language: str):
        """``tokens``: the sorted distinct stems; ``keys[n]``/``columns[n]``: each n-gram's key
        (see :meth:`_keys`) and its feature column."""
        import pandas as pd

        self.language, self.tokens = language, pd.Index(tokens)
        self.n_features = int(sum(len(c) for c in columns.values()))
        self.index = {n: (pd.Index(keys[n]), np.asarray(columns[n], dtype=np.int64)) for n in sorted(keys)}

    @classmethod
    def from_vocabulary(cls, vocabulary: dict[str, int], language: str) -> "NgramIndex":
        """From a fitted vectoriser's ``vocabulary_`` (n-grams of stems joined by spaces)."""
        grams = {tuple(g.split(" ")): i for g, i in vocabulary.items()}
        self = cls(sorted({t for g in grams for t in g}), {}, {}, language)
        keys, columns = {}, {}
        for n in sorted({len(g) for g in grams}):
            if len(self.tokens) ** n >= 2 ** 62:  # keys would overflow int64
                raise ValueError(f"{len(self.tokens)} distinct tokens are too many for {n}-grams")
            of_n = [(g, i) for g, i in grams.items() if len(g) == n]
            ids = self.tokens.get_indexer([t for g, _ in of_n for t in g]).reshape(-1, n)
            keys[n], columns[n] = self._keys(ids), np.array([i for _, i in of_n], dtype=np.int64)
        return cls(self.tokens, keys, columns, language)

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {"tokens": np.array(self.tokens, dtype=str)}
        for n, (index, columns) in self.index.items():
            out[f"keys{n}"], out[f"columns{n}"] = np.asarray(index, dtype=np.int64), columns
        return out

    def check(self) -> None:
        """Raise ValueError unless every feature column appears once and every key is an n-gram of
        known tokens (a checkpoint may come from anyone)."""
        seen = np.zeros(self.n_features, np.int64)
        for n, (keys, columns) in self.index.items():
            k = np.asarray(keys)
            if k.dtype.kind != "i" or columns.dtype.kind != "i" or len(k) != len(columns):
                raise ValueError(f"the {n}-gram index is not two integer arrays of one length")
            if len(k) and (k.min() < 0 or k.max() >= len(self.tokens) ** n):
                raise ValueError(f"a {n}-gram key is out of range")
            if len(columns) and (columns.min() < 0 or columns.max() >= self.n_features):
                raise ValueError(f"a {n}-gram's column is out of range")
            np.add.at(seen, columns, 1)
        if not np.all(seen == 1):
            raise ValueError("the n-gram index does not give every column once")

    @classmethod
    def from_arrays(cls, arrays: dict, language: str) -> "NgramIndex":
        ns = sorted(int(k[4:]) for k in arrays if k.startswith("keys"))
        return cls(arrays["tokens"].astype(object), {n: arrays[f"keys{n}"] for n in ns},
                   {n: arrays[f"columns{n}"] for n in ns}, language)

    def _keys(self, ids: np.ndarray) -> np.ndarray:
        """``(m, n)`` token ids -> one int64 key per row."""
        keys = ids[:, 0].astype(np.int64)
        for k in range(1, ids.shape[1]):
            keys = keys * len(self.tokens) + ids[:, k]
        return keys

    def counts(self, texts: list[str], dtype=np.float32) -> Csr:
        """How often each vocabulary n-gram occurs in each text (duplicates summed, columns sorted)."""
        import pandas as pd

        per_text = words(texts)
        lengths = np.fromiter(map(len, per_text), np.int64, len(per_text))
        codes, vocabulary = pd.factorize(np.array(list(itertools.chain.from_iterable(per_text)), dtype=object))
        stems = np.array(stemmer(self.language).stemWords(list(vocabulary)), dtype=object)
        ids = self.tokens.get_indexer(stems)[codes] if len(codes) else np.zeros(0, np.int64)
        if (stems == "").any():  # an empty stem vanishes when joined and split: its neighbours meet
            keep = stems[codes] != ""
            ids, lengths = ids[keep], np.bincount(np.repeat(np.arange(len(texts)), lengths)[keep],
                                                  minlength=len(texts))
        row = np.repeat(np.arange(len(texts)), lengths)
        left = np.repeat(lengths.cumsum(), lengths) - np.arange(len(ids))  # words from here to the text's end
        rows, cols = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for n, (index, columns) in self.index.items():
            if len(ids) < n:
                continue
            window = np.lib.stride_tricks.sliding_window_view(ids, n)
            ok = (left[:len(window)] >= n) & (window >= 0).all(axis=1)
            found = index.get_indexer(self._keys(window[ok]))
            rows.append(row[:len(window)][ok][found >= 0])
            cols.append(columns[found[found >= 0]])
        # one key per (row, column): sorted and counted, as scipy's sum_duplicates does
        key, n_per = np.unique(np.concatenate(rows) * self.n_features + np.concatenate(cols), return_counts=True)
        r, c = np.divmod(key, self.n_features)
        indptr = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=len(texts)))])
        return Csr(indptr, c.astype(np.int32), n_per.astype(dtype), (len(texts), self.n_features))


def tfidf(counts: Csr, idf: np.ndarray | None, norm: str | None) -> Csr:
    """Counts weighted by ``idf`` and each row scaled to unit ``norm`` (l2, l1 or none), as
    scikit-learn's ``TfidfTransformer`` does (sums in float64)."""
    data = counts.data * idf[counts.indices].astype(counts.data.dtype) if idf is not None else counts.data.copy()
    if norm:
        part = np.abs(data) if norm == "l1" else data * data
        row = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
        total = np.bincount(row, weights=part.astype(np.float64), minlength=counts.shape[0])
        total = np.sqrt(total) if norm == "l2" else total
        scale = np.where(total == 0, 1.0, total)[row]
        data = (data / scale).astype(counts.data.dtype)
    return Csr(counts.indptr, counts.indices, data, counts.shape)


class LinearBlocks:
    """Blocks of linear classifiers over sparse features, each block one-vs-rest over its classes.

    Block ``b`` has ``width[b]`` outputs (its classes). A block of two classes has one decision
    (for its second class), as scikit-learn's binary ``SGDClassifier``; a wider block has one
    decision per class. Probabilities, once ``platt`` is set (``NodeClassifiers.fit_platt``, on
    validation): sigmoid(a d + b) of each class's decision (a binary block's first class: of -d),
    normalised over the block, with one (a, b) per block. No class is left at 0: zeroing those
    below 1e-4 of their node's best (for the search's speed) tied 73% of a generated catalog's
    level-1 confidences at exactly 1 again. Before that, scikit-learn's
    ``predict_proba`` for the loss: ``modified_huber``: (clip(d, -1, 1) + 1) / 2, ``log_loss``:
    sigmoid(d); one-vs-rest blocks then normalise over their classes (uniform when all are 0).
    Modified Huber's clip gives exactly 1 to a child whose margin clears 1 while its siblings'
    do not (a quarter of BigBasket's level-2 answers), which no temperature can move.

    Weights are one CSR matrix, features x decisions (``indptr``, ``dec``, ``w``), holding
    only the non-zero weights, plus one bias per decision.
    """

    def __init__(self, width: np.ndarray, indptr: np.ndarray, dec: np.ndarray, w: np.ndarray, bias: np.ndarray,
                 loss: str):
        if loss not in PROBA_LOSSES:
            raise ValueError(f"loss must be one of {PROBA_LOSSES}, not {loss!r}")
        self.width = np.asarray(width, dtype=np.int64)
        self.n_dec_of = np.where(self.width == 2, 1, self.width)
        self.first_dec = np.concatenate([[0], np.cumsum(self.n_dec_of)[:-1]]).astype(np.int64)
        self.first_out = np.concatenate([[0], np.cumsum(self.width)[:-1]]).astype(np.int64)
        self.n_dec, self.n_out = int(self.n_dec_of.sum()), int(self.width.sum())
        self.indptr, self.dec, self.w, self.bias, self.loss = indptr, dec, w, bias, loss
        self.platt = None  # (n_blocks, 2): each block's (a, b), or None: the loss's own link
        self._index = None

    def _runs(self):
        """The weights' runs: one per (feature, block) with weights, as a hash index of the keys
        ``feature * n_blocks + block``, each run's first weight and length (built once, on use)."""
        if getattr(self, "_index", None) is None:
            import pandas as pd

            block_of_dec = np.repeat(np.arange(len(self.width)), self.n_dec_of)
            feature = np.repeat(np.arange(len(self.indptr) - 1, dtype=np.int64), np.diff(self.indptr))
            keys = feature * len(self.width) + block_of_dec[self.dec]  # sorted: by feature, then decision
            starts = np.flatnonzero(np.diff(keys, prepend=-1)) if len(keys) else np.zeros(0, np.int64)
            self._index = (pd.Index(keys[starts]), starts, np.diff(np.append(starts, len(keys))))
        return self._index

    @classmethod
    def from_fits(cls, fits: list[list[tuple[np.ndarray, np.ndarray, float]]], widths, n_features: int,
                  loss: str, dtype=np.float32) -> "LinearBlocks":
        """``fits[b]``: per decision of block ``b``, ``(feature columns, weights, bias)``."""
        cols, decs, ws, bias, d = [], [], [], [], 0
        for block in fits:
            for c, w, b in block:
                keep = w != 0
                cols.append(np.asarray(c)[keep])
                ws.append(np.asarray(w)[keep].astype(dtype))
                decs.append(np.full(keep.sum(), d, dtype=np.int32))
                bias.append(b)
                d += 1
        cols = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        decs = np.concatenate(decs) if decs else np.zeros(0, np.int32)
        ws = np.concatenate(ws) if ws else np.zeros(0, dtype)
        order = np.lexsort((decs, cols))  # by feature, then decision: CSR over features
        indptr = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=n_features))]).astype(np.int64)
        return cls(widths, indptr, decs[order], ws[order], np.asarray(bias, dtype=dtype), loss)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"width": self.width, "indptr": self.indptr, "dec": self.dec, "w": self.w, "bias": self.bias}

    def fits(self) -> list[list[tuple[np.ndarray, np.ndarray, float]]]:
        """The inverse of :meth:`from_fits`: per block, per decision, ``(feature columns, weights, bias)``."""
        feature = np.repeat(np.arange(len(self.indptr) - 1, dtype=np.int64), np.diff(self.indptr))
        order = np.argsort(self.dec, kind="stable")
        bounds = np.searchsorted(self.dec[order], np.arange(self.n_dec + 1))
        per_dec = [(feature[order[a:b]], self.w[order[a:b]], float(self.bias[k]))
                   for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]
        return [per_dec[f:f + n] for f, n in zip(self.first_dec, self.n_dec_of)]

    @classmethod
    def from_arrays(cls, arrays: dict, loss: str) -> "LinearBlocks":
        """From :meth:`to_arrays`, or :func:`quantize`'s int8 weights (scaled back to float here)."""
        w = arrays["w"] if "w" in arrays else \
            arrays["w_int8"].astype(np.float32) * arrays["w_scale"][arrays["dec"]]
        return cls(arrays["width"], arrays["indptr"], arrays["dec"], w, arrays["bias"], loss)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.to_arrays().values())

    # -- scoring ----------------------------------------------------------------------------
    def decisions(self, x) -> np.ndarray:
        """``(n, n_dec)`` decision values of every block for every row of CSR ``x``."""
        n = x.shape[0]
        out = np.tile(self.bias.astype(np.float32), (n, 1))
        f = np.asarray(x.indices)
        take = ragged_range(self.indptr[f], self.indptr[f + 1])
        per = self.indptr[f + 1] - self.indptr[f]
        row = np.repeat(np.repeat(np.arange(n), np.diff(x.indptr)), per)
        value = self.w[take] * np.repeat(np.asarray(x.data, dtype=np.float32), per)
        out += np.bincount(row * self.n_dec + self.dec[take], weights=value, minlength=n * self.n_dec
                           ).reshape(n, self.n_dec).astype(np.float32)
        return out

    def proba(self, x) -> np.ndarray:
        """``(n, n_out)``: every block's class probabilities, blocks side by side."""
        d = self.decisions(x)
        blocks = np.arange(len(self.width))
        return self._proba(d, np.tile(blocks, (len(d), 1)).ravel(), d.reshape(-1))

    def pair_proba(self, x, rows: np.ndarray, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Class probabilities of block ``blocks[i]`` for row ``rows[i]`` of ``x``, for each pair
        ``i``, computing only those blocks' decisions (what search needs). Returns the classes of
        probability above 0 alone, ``(probability, pair, class within the block)``, by pair then
        class: scikit-learn's modified Huber clips most of a wide block's classes to exactly 0
        for a given row, and what reads the answer (search, confidences) then handles a few."""
        rows, blocks = np.asarray(rows, dtype=np.int64), np.asarray(blocks, dtype=np.int64)
        d, width, first = self.pair_decisions(x, rows, blocks)
        p = self._outputs_proba(d, blocks, width, first)
        nz = np.flatnonzero(p > 0)
        pair = np.searchsorted(first, nz, side="right") - 1
        return p[nz], pair, nz - first[pair]

    def pair_decisions(self, x, rows: np.ndarray, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every class's decision of block ``blocks[i]`` for row ``rows[i]`` of ``x`` (a binary
        block's first class: minus the second's), pairs side by side: ``(decisions, each pair's
        width, where each pair starts)``."""
        rows, blocks = np.asarray(rows, dtype=np.int64), np.asarray(blocks, dtype=np.int64)
        out_bias, out_of_w, comp = self._outputs()
        width = self.width[blocks]
        first = np.concatenate([[0], np.cumsum(width)[:-1]]).astype(np.int64)  # each pair's outputs
        src = ragged_range(self.first_out[blocks], self.first_out[blocks] + width)
        d = out_bias[src]  # decisions laid out as outputs (a binary block's on its second class)
        # each (pair, feature of its row): that feature's weights on the block's decisions, one
        # contiguous run of the CSR row (decisions are numbered block by block), found by hash
        start, stop = np.asarray(x.indptr)[rows], np.asarray(x.indptr)[rows + 1]
        entry = ragged_range(start, stop)
        pair = np.repeat(np.arange(len(rows)), stop - start)
        runs, run_start, run_len = self._runs()
        found = runs.get_indexer(np.asarray(x.indices)[entry].astype(np.int64) * len(self.width) + blocks[pair])
        hit = found >= 0
        entry, pair, found = entry[hit], pair[hit], found[hit]
        lo, per = run_start[found], run_len[found]
        take = ragged_range(lo, lo + per)
        slot = np.repeat(first[pair] - self.first_out[blocks][pair], per) + out_of_w[take]
        value = self.w[take] * np.repeat(np.asarray(x.data, dtype=np.float32)[entry], per)
        d += np.bincount(slot, weights=value, minlength=len(d)).astype(np.float32)
        at = np.flatnonzero(comp[src])
        d[at] = -d[at + 1]  # two classes: the first's decision is minus the second's
        return d, width, first

    def _outputs(self):
        """Per output of every block: its decision's bias, whether it is a binary block's first
        class (1 - p of the second); per weight: the output it adds to (built once, on use)."""
        if getattr(self, "_layout", None) is None:
            binary = np.repeat(self.width == 2, self.width)
            local = ragged_range(np.zeros_like(self.width), self.width)
            first_class = binary & (local == 0)
            dec_of_out = np.repeat(self.first_dec, self.width) + np.where(binary, 0, local)
            out_of_dec = np.empty(self.n_dec, np.int64)
            out_of_dec[dec_of_out[~first_class]] = np.flatnonzero(~first_class)
            self._layout = (self.bias[dec_of_out].astype(np.float32), out_of_dec[self.dec].astype(np.int32), first_class)
        return self._layout

    def _outputs_proba(self, d: np.ndarray, blocks: np.ndarray, width: np.ndarray, first: np.ndarray) -> np.ndarray:
        """Decisions laid out as outputs (blocks ``blocks`` of ``width`` side by side from ``first``;
        a binary block's first output holds minus its decision) -> probabilities, float32."""
        if self.platt is None:  # scikit-learn's: link(-d) = 1 - link(d) for either loss
            p = (np.clip(d, -1, 1) + 1) / 2 if self.loss == "modified_huber" else 1 / (1 + np.exp(-d))
            return self._normalise(p.astype(np.float32), width, first, binary_as_is=True)
        a, b = (np.repeat(self.platt[blocks, k], width) for k in (0, 1))
        return self._normalise(np.exp(-np.logaddexp(0, -(a * d + b))).astype(np.float32), width, first)

    @staticmethod
    def _normalise(p: np.ndarray, width: np.ndarray, first: np.ndarray, binary_as_is: bool = False) -> np.ndarray:
        """Blocks' probabilities (blocks of ``width`` side by side from ``first``) normalised over
        their classes (uniform when all are 0); with ``binary_as_is``, two-class blocks as they are."""
        total = np.add.reduceat(p, first, dtype=np.float64) if len(p) else np.zeros(0)
        none = total == 0
        total[none | (binary_as_is & (width == 2))] = 1.0
        p = (p / np.repeat(total, width)).astype(np.float32)
        if none.any():
            p[np.repeat(none, width)] = np.repeat(1.0 / width[none], width[none])
        return p

    def _proba(self, d: np.ndarray, blocks: np.ndarray, flat: np.ndarray) -> np.ndarray:
        """``proba``'s decisions of every block (``flat``, rows one after another) -> outputs."""
        n_dec = self.n_dec_of[blocks]
        first = np.concatenate([[0], np.cumsum(n_dec)[:-1]]).astype(np.int64)
        width = self.width[blocks]
        out_first = np.concatenate([[0], np.cumsum(width)[:-1]]).astype(np.int64)
        binary = width == 2
        out = np.empty(int(width.sum()), np.float32)
        out[out_first[binary]] = -flat[first[binary]]
        out[out_first[binary] + 1] = flat[first[binary]]
        wide = ~binary
        out[ragged_range(out_first[wide], out_first[wide] + width[wide])] = \
            flat[ragged_range(first[wide], first[wide] + width[wide])]
        return self._outputs_proba(out, blocks, width, out_first).reshape(len(d), self.n_out)


def quantize(arrays: dict) -> dict:
    """TF-IDF arrays with int8 weights: each decision's weights scaled by its largest magnitude
    to [-127, 127] (``w_int8``, ``w_scale``); the file's weights take a quarter of the bytes."""
    w, dec = arrays["w"], arrays["dec"]
    top = np.zeros(len(arrays["bias"]), np.float32)
    np.maximum.at(top, dec, np.abs(w))
    scale = np.where(top > 0, top / 127, 1.0).astype(np.float32)
    out = {k: v for k, v in arrays.items() if k != "w"}
    return {**out, "w_int8": np.round(w / scale[dec]).astype(np.int8), "w_scale": scale}


class NodeClassifiers:
    """A classifier at each node of a :class:`~ktt.hierarchy.Hierarchy`: P(class | its parent).

    Block ``b`` of ``blocks`` is the classifier of class ``parent[b]`` at level ``level[b] - 1``
    (``-1``: all rows, the root's at level 0 or a flat classifier over the leaves) over its
    children ``children[first_out[b]:...]`` at ``level[b]``; a node with one child seen in
    training has no block (``single_*``: its child has P = 1); a class whose node was never seen
    has P = 0. What a path is worth is the product of its classes' conditional
    probabilities; :meth:`best_paths` finds the best whole path without scoring every node.
    """

    def __init__(self, hierarchy, blocks: LinearBlocks, level, parent, children, single_level, single_parent,
                 single_child):
        self.h, self.blocks = hierarchy, blocks
        self.level, self.parent = np.asarray(level, np.int64), np.asarray(parent, np.int64)
        self.children = np.asarray(children, np.int64)
        self.single_level, self.single_parent, self.single_child = (
            np.asarray(a, np.int64) for a in (single_level, single_parent, single_child))
        # per level: each parent class's block (-1: none), and its only child (-1: none); index 0 is
        # the root at level 0 (a flat classifier, parent -1 below level 0, takes no part in search)
        self.block_of, self.only_child = [], []
        for d in range(hierarchy.depth):
            n_parents = 1 if d == 0 else hierarchy.sizes[d - 1]
            b, s = np.full(n_parents, -1, np.int64), np.full(n_parents, -1, np.int64)
            at = (self.level == d) & ((self.parent >= 0) | (d == 0))
            b[np.maximum(self.parent[at], 0)] = np.flatnonzero(at)
            at = (self.single_level == d) & ((self.single_parent >= 0) | (d == 0))
            s[np.maximum(self.single_parent[at], 0)] = self.single_child[at]
            self.block_of.append(b)
            self.only_child.append(s)

    def check(self, n_features: int) -> None:
        """Raise ValueError unless the arrays fit together (a checkpoint may come from anyone):
        every index in range, every length as the others say, over ``n_features`` features."""
        b, h = self.blocks, self.h

        def need(ok, what):
            if not ok:
                raise ValueError(what)
        for name, a, kind in (("indptr", b.indptr, "i"), ("dec", b.dec, "i"), ("w", b.w, "f"), ("bias", b.bias, "f")):
            need(isinstance(a, np.ndarray) and a.ndim == 1 and a.dtype.kind == kind, f"{name} is not a 1-d array of "
                 f"{'integers' if kind == 'i' else 'floats'}")
        need(len(b.indptr) == n_features + 1, f"the weights cover {len(b.indptr) - 1} features, the vocabulary {n_features}")
        need(b.indptr[0] == 0 and b.indptr[-1] == len(b.w) == len(b.dec) and np.all(np.diff(b.indptr) >= 0),
             "indptr does not index the weights")
        need(len(b.bias) == b.n_dec and (not len(b.dec) or (b.dec.min() >= 0 and b.dec.max() < b.n_dec)),
             "the weights' decisions do not match the biases")
        need(np.all(b.width >= 2) and len(self.level) == len(self.parent) == len(b.width), "blocks do not match their nodes")
        need(np.all((self.level >= 0) & (self.level < h.depth)), "a node's level is out of range")
        sizes = np.asarray(h.sizes)
        need(len(self.children) == b.n_out and np.all((self.children >= 0) &
             (self.children < sizes[np.repeat(self.level, b.width)])), "a node's child is out of range")
        need(np.all(self.parent < np.where(self.level > 0, sizes[np.maximum(self.level - 1, 0)], 1)),
             "a node's parent is out of range")
        need(len(self.single_level) == len(self.single_parent) == len(self.single_child) and
             np.all((self.single_level >= 0) & (self.single_level < h.depth)) and
             np.all((self.single_child >= 0) & (self.single_child < sizes[self.single_level])), "an only child is out of range")
        need(self.platt is None or np.all(np.isfinite(self.platt)), "platt is not finite")

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {**self.blocks.to_arrays(), "level": self.level, "parent": self.parent, "children": self.children,
                "single_level": self.single_level, "single_parent": self.single_parent,
                "single_child": self.single_child, **({} if self.platt is None else {"platt": self.platt})}

    @classmethod
    def from_arrays(cls, hierarchy, arrays: dict, loss: str) -> "NodeClassifiers":
        nodes = cls(hierarchy, LinearBlocks.from_arrays(arrays, loss), *(arrays[k] for k in (
            "level", "parent", "children", "single_level", "single_parent", "single_child")))
        nodes.platt = arrays.get("platt")  # absent: saved before issue 41, scikit-learn's probabilities
        return nodes

    @property
    def platt(self) -> np.ndarray | None:
        """``(depth, 2)``: each level's (a, b), every node's probabilities sigmoid(a d + b) of its
        children's decisions, normalised (:meth:`fit_platt`); None: the loss's own probabilities."""
        return getattr(self, "_platt", None)

    @platt.setter
    def platt(self, value) -> None:
        self._platt = None if value is None else np.asarray(value, np.float64).reshape(self.h.depth, 2)
        self.blocks.platt = None if value is None else self._platt[self.level]

    def fit_platt(self, x, codes: np.ndarray, min_rows: int = 30) -> np.ndarray:
        """Fit :attr:`platt` on labelled rows (``x``: their TF-IDF rows, ``codes``: their true paths):
        per level, the (a > 0, b) that maximise the likelihood of each row's true class under its
        true parent's classifier (Platt scaling shared by a level's nodes). A level with fewer
        than ``min_rows`` such rows (or no node classifier) takes the nearest fitted
        level's (a, b); with none fitted, the probabilities stay scikit-learn's (None: a sigmoid
        fitted on 5 rows calibrated worse than none). Returns it, and sets it."""
        from scipy.optimize import minimize

        codes, out, fitted = np.asarray(codes), np.tile([1.0, 0.0], (self.h.depth, 1)), []
        for d in range(self.h.depth):
            block = self.block_of[d][codes[:, d - 1] if d else np.zeros(len(codes), np.int64)]
            rows = np.flatnonzero(block >= 0)
            if not len(rows):
                continue
            dec, width, first = self.blocks.pair_decisions(x, rows, block[rows])
            dec, pair = dec.astype(np.float64), np.repeat(np.arange(len(rows)), width)
            kids = self.children[ragged_range(self.blocks.first_out[block[rows]], self.blocks.first_out[block[rows]] + width)]
            right = kids == codes[rows[pair], d]
            has = np.bincount(pair, right, len(rows)) > 0  # a true class the node never saw: no term
            if has.sum() < min_rows:
                continue
            right_at = np.flatnonzero(right)

            def nll(v):
                log_p = -np.logaddexp(0, -(v[0] * dec + v[1]))
                return -np.mean(log_p[right_at] - np.log(np.add.reduceat(np.exp(log_p), first))[has])
            out[d] = minimize(nll, out[d], method="L-BFGS-B", bounds=[(1e-3, 1e3), (-50, 50)]).x
            fitted.append(d)
        if not fitted:  # too few rows anywhere: scikit-learn's probabilities stay
            self.platt = None
            return None
        for d in range(self.h.depth):  # a level with too few rows takes the nearest fitted level's
            out[d] = out[min(fitted, key=lambda k: (abs(k - d), k))]
        self.platt = out
        return out


    def leaf_proba(self, x) -> np.ndarray:
        """``(n, n_leaves)``: the last level's P(class | its parent) (a flat classifier's P(leaf))."""
        return self.conditional(x, [self.h.depth - 1])[0]

    def conditional(self, x, levels=None) -> list[np.ndarray]:
        """Per level (of ``levels``, default all), ``(n, n_classes_at_level)``: P(class | its parent)
        for every class."""
        p = self.blocks.proba(x)
        level_of_out = np.repeat(self.level, self.blocks.width)
        out = []
        for d in range(self.h.depth) if levels is None else levels:
            cond = np.zeros((x.shape[0], self.h.sizes[d]), np.float32)
            cols = np.flatnonzero(level_of_out == d)
            cond[:, self.children[cols]] = p[:, cols]
            cond[:, self.single_child[self.single_level == d]] = 1.0
            out.append(cond)
        return out

    def path_runs(self, x, codes: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """What the confidences of valid paths ``codes`` read (``ktt.confidence.PathChains``): per
        level d, P(sibling | parent) of each row's class and its siblings of probability above 0
        (the children of its class at d - 1), from that one node's classifier: the path's nodes
        are scored, no other. Per level: ``(values, where each row's run starts, where its class
        is, each value's class)``."""
        n, out = len(codes), []
        for d in range(self.h.depth):
            rows, kids, _, cond, _ = self._expand(x, d, np.arange(n), codes[:, d - 1] if d else np.zeros(n, np.int64),
                                                  np.zeros(n), np.ones(n, np.float32))
            out.append(self._runs(codes, d, rows, kids, cond))
        return out

    def _runs(self, codes, d: int, rows, kids, cond):
        """Level ``d`` of :meth:`path_runs` from expansions (``rows``, ``kids``, their ``cond``
        P(kid | parent)) that hold each row's path node (the others are left out): per row, the
        node's children of probability above 0, and the row's own class (at its probability)."""
        n = len(codes)
        on = (self.h.parent_of(d)[kids] == codes[rows, d - 1]) if d else np.ones(len(rows), bool)
        rows, kids, cond = rows[on], kids[on], cond[on]
        lack = np.ones(n, bool)
        lack[rows[kids == codes[rows, d]]] = False
        rows = np.concatenate([rows, np.flatnonzero(lack)])
        order = np.argsort(rows, kind="stable")  # the greedy path's expansions come in row order already
        rows = rows[order]
        kids = np.concatenate([kids, codes[lack, d]])[order]
        # a class its node never scored: 0, unless it is its parent's only child (a path's end below
        # where it ended: the search stops there)
        only = self.only_child[d][codes[lack, d - 1] if d else np.zeros(int(lack.sum()), np.int64)] == codes[lack, d]
        cond = np.concatenate([cond, only.astype(np.float64)])[order]
        counts = np.bincount(rows, minlength=n)
        return cond, np.cumsum(counts) - counts, np.flatnonzero(kids == codes[rows, d]), kids

    def _expand(self, x, d: int, rows: np.ndarray, at: np.ndarray, logp: np.ndarray, prob: np.ndarray):
        """Each (row, class ``at`` of level d - 1) pair, its path's log-probability ``logp`` and
        probability ``prob`` (float32) -> its children at level d: ``(rows, children, logp, cond,
        prob)``, ``cond`` P(child | parent). ``prob`` is the product down the path in float32, as
        ``Hierarchy.chain`` computes it, so that equal paths are equal (ties go to the lowest leaf)."""
        key = at if d else np.zeros(len(rows), np.int64)
        block, only = self.block_of[d][key], self.only_child[d][key]
        one = only >= 0
        r_out, c_out, lp_out, p_out, pr_out = [rows[one]], [only[one]], [logp[one]], [np.ones(int(one.sum()))], \
            [prob[one]]
        has = block >= 0
        if has.any():  # the children that can have a probability above 0 (LinearBlocks.pair_proba)
            p, pair, local = self.blocks.pair_proba(x, rows[has], block[has])
            r_out.append(rows[has][pair])
            c_out.append(self.children[self.blocks.first_out[block[has]][pair] + local])
            p_out.append(p.astype(np.float64))
            pr_out.append(prob[has][pair] * p)
            with np.errstate(divide="ignore"):
                lp_out.append(logp[has][pair] + np.log(p_out[-1]))
        return tuple(np.concatenate(a) for a in (r_out, c_out, lp_out, p_out, pr_out))

    def greedy(self, x) -> tuple[np.ndarray, np.ndarray]:
        """The top-down greedy path of every row (each level takes the parent's most likely child)
        and its log-probability."""
        codes, logp, _ = self._greedy(x)
        return codes, logp

    def _greedy(self, x):
        """:meth:`greedy`, and per level the expansion of every row's greedy prefix (search reuses it)."""
        n = x.shape[0]
        codes, logp, prob, rows, expanded = (np.zeros((n, self.h.depth), np.int64), np.zeros(n),
                                             np.ones(n, np.float32), np.arange(n), [])
        for d in range(self.h.depth):
            r, c, lp, p, pr = self._expand(x, d, rows, codes[:, d - 1] if d else np.zeros(n, np.int64), logp, prob)
            expanded.append((r, c, lp, p, pr))
            best = np.full(n, -np.inf)
            np.maximum.at(best, r, lp)
            pick, prob = np.full(n, -1, np.int64), np.zeros(n, np.float32)
            hit = lp >= best[r]
            pick[r[hit][::-1]], prob[r[hit][::-1]] = c[hit][::-1], pr[hit][::-1]  # the first of equals, as argmax
            codes[:, d], logp = np.maximum(pick, 0), best
        return codes, logp, expanded

    def best_paths(self, x, slack: float = 1e-5) -> np.ndarray:
        """``(n, depth)``: each row's path of highest probability, exactly as scoring every path
        would find it. A path is worth no more than any of its prefixes, so once the greedy path
        is worth ``g``, only prefixes worth at least ``g`` are expanded: a confident model scores
        a handful of nodes per level instead of all of them (the greedy prefix's, scored once)."""
        return self._best(x, slack)[0]

    def search(self, x, decode: str = "path", slack: float = 1e-5):
        """:meth:`best_paths` (``decode="path"``) or the :meth:`greedy` paths (``top_down``), and
        their :meth:`path_runs`, read from the nodes the search scored (each path's nodes are
        among them): what answering with confidences costs is the search's."""
        if x.shape[0] == 0:
            return np.zeros((0, self.h.depth), np.int64), [(np.zeros(0),) + (np.zeros(0, np.int64),) * 3] * self.h.depth
        if decode == "top_down":
            greedy, _, expanded = self._greedy(x)
            return greedy, [self._runs(greedy, d, r, c, p) for d, (r, c, _, p, _) in enumerate(expanded)]
        codes, seen = self._best(x, slack)
        return codes, [self._runs(codes, d, *e) for d, e in enumerate(seen)]

    def _best(self, x, slack: float):
        """:meth:`best_paths`, and per level every expansion the search made ``(rows, class, cond)``."""
        if x.shape[0] == 0:
            return np.zeros((0, self.h.depth), np.int64), []
        greedy, bound, expanded = self._greedy(x)
        rows, at, logp, prob, seen = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.float32), []
        ended = []  # (rows, leaf, prob) of the paths that ended above the last level
        for d in range(self.h.depth):
            # every row's greedy prefix survives (it is worth at least g): its children are known
            other = at != greedy[rows, d - 1] if d else np.zeros(len(rows), bool)
            new = self._expand(x, d, rows[other], at[other], logp[other], prob[other])
            rows, at, logp, cond, prob = (np.concatenate([a, b]) for a, b in zip(expanded[d], new))
            seen.append((rows, at, cond))
            keep = logp >= bound[rows] - slack
            rows, at, logp, prob = rows[keep], at[keep], logp[keep], prob[keep]
            if d < self.h.depth - 1:  # a path that ended is complete: its leaf, not d more levels of P = 1
                leaf = self._ended()[d][at]
                done = leaf >= 0
                ended.append((rows[done], leaf[done], prob[done]))
                rows, at, logp, prob = rows[~done], at[~done], logp[~done], prob[~done]
        rows, at, prob = (np.concatenate([*a, b]) for a, b in zip(zip(*ended), (rows, at, prob)))
        order = np.lexsort((at, -prob, rows))  # per row: the most probable first (float32), then the lowest leaf
        first = order[np.flatnonzero(np.diff(np.concatenate([[-1], rows[order]])))]
        return self.h.leaf_paths()[at[first]], seen

    def _ended(self) -> list[np.ndarray]:
        """Per level, each class's leaf when it is the first end class of a path (below it every
        level holds only its end: P = 1), else -1 (built once, on use)."""
        if getattr(self, "_ended_at", None) is None:
            paths = self.h.leaf_paths()
            first_end = self.h.path_depths(paths)  # the level of each path's first end class (depth: none)
            self._ended_at = [np.full(n, -1, np.int64) for n in self.h.sizes]
            for d in range(self.h.depth):
                at = np.flatnonzero(first_end == d)
                self._ended_at[d][paths[at, d]] = at
        return self._ended_at
