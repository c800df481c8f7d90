"""The base of the TF-IDF models (as ``ktt.nn`` is of the encoder models): stemming, the
vectoriser, SGD classifiers, checkpoint I/O, ONNX export of linear blocks and the reference set."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import snowballstemmer

from . import threads
from .errors import BadValue
from .hierarchy import Hierarchy
from .model import Interval, Model, NullLogger, calibration_rows
from .sparse import PROBA_LOSSES, LinearBlocks, NgramIndex, NodeClassifiers
from .text import stem

LANGUAGES = tuple(snowballstemmer.algorithms())


class StemPreprocessor:
    """``ktt.text.stem`` as a picklable callable.

    Kept outside the vectoriser so the ONNX graph sees plain space-separated tokens and the
    server can run the same function without scikit-learn.
    """

    def __init__(self, language: str = "english"):
        self.language = language

    def __call__(self, texts):
        return stem(texts, self.language)


def make_vectorizer(params: dict):
    """A TF-IDF vectoriser over stemmed, space-separated tokens."""
    from sklearn.feature_extraction.text import TfidfVectorizer  # here: validating a model stays light

    # No sublinear_tf: the server (ktt.sparse.tfidf) weights counts by idf and normalises, nothing more.
    return TfidfVectorizer(min_df=params["min_df"], ngram_range=(1, params["ngram_max"]),
                           token_pattern=r"\S+", lowercase=False, dtype=np.float32)


class Featuriser:
    """``vectorizer.transform(stem(texts))`` of a fitted ``make_vectorizer``, without a Python
    loop per word or n-gram (:class:`ktt.sparse.NgramIndex` counts the n-grams). The counts then
    go through the vectoriser's own idf weighting and normalisation, so the matrix is the same,
    value for value (``tests/test_hardware.py`` compares them on real data). Texts go in
    chunks, so memory stays bounded however many there are."""

    def __init__(self, vectorizer, language: str, chunk: int = 20_000, index: NgramIndex | None = None):
        from sklearn.feature_extraction.text import TfidfTransformer

        self.chunk, self.dtype = chunk, vectorizer.dtype
        try:  # ``index``: the one saved with the checkpoint (a catalog's 870,000 n-grams take 3 s to index)
            self.index = index or NgramIndex.from_vocabulary(vectorizer.vocabulary_, language)
        except ValueError as e:
            raise BadValue(str(e)) from None
        self.n_features = self.index.n_features
        self.tfidf = TfidfTransformer(norm=vectorizer.norm, use_idf=vectorizer.use_idf,
                                      smooth_idf=vectorizer.smooth_idf, sublinear_tf=vectorizer.sublinear_tf)
        if vectorizer.use_idf:
            self.tfidf.idf_ = vectorizer.idf_

    def __call__(self, texts):
        import scipy.sparse as sp

        texts = list(texts)
        if not texts:  # scikit-learn refuses zero rows
            return sp.csr_matrix((0, self.n_features), dtype=self.dtype)
        parts = []
        for i in range(0, len(texts), self.chunk):
            c = self.index.counts(texts[i:i + self.chunk], self.dtype)
            parts.append(sp.csr_matrix((c.data, c.indices, c.indptr), shape=c.shape))
        counts = sp.vstack(parts, format="csr") if len(parts) > 1 else parts[0]
        return self.tfidf.transform(counts, copy=False)


class TfidfModel(Model):
    """Base of the TF-IDF models: stemming, the vectoriser, SGD classifiers, checkpoints.

    What a subclass learns is a :class:`ktt.sparse.NodeClassifiers` (``nodes_``): one-vs-rest
    SGD classifiers, each over the features seen in its own rows (a node's classifier over the
    features seen under that node), their weights below ``min_weight`` dropped, kept as one
    sparse matrix: the weights grow with what the data holds, never with classes x vocabulary.
    It scores in-process and, from the same arrays (``tfidf.npz``), in the server.
    """

    defaults = {**Model.defaults, "loss": "modified_huber", "alpha": 1e-4, "max_iter": 1000, "min_df": 1, "ngram_max": 2,
                "language": "english", "seed": 0,
                "min_weight": 0.03}
    # every classifier gives probabilities: paths are scored by multiplying them
    constraints = {**Model.constraints, "loss": PROBA_LOSSES, "alpha": Interval(0, None, "neither"),
                   "max_iter": Interval(1), "min_df": Interval(1), "ngram_max": Interval(1), "language": LANGUAGES,
                   "min_weight": Interval(0)}
    consistent = True
    paths = "leaf"  # the leaf level holds each path's probability (chained, or the flat model's own)
    # sparse pooled TF-IDF features move less than dense ones (docs/monitoring.md)
    drift_share = 0.25
    served_from = "arrays"
    joblib_fit = True
    # the kept vectoriser and classifiers were made with these
    kept_on_update = frozenset({"language", "ngram_max", "min_df", "loss", "min_weight"})
    chunk = 8192  # rows scored at once: memory stays bounded at any number of texts or classes
    #: node probabilities from a sigmoid of the decisions fitted on validation (``calibrate``)
    platt_scaled = True

    def get_preprocessor(self):
        return StemPreprocessor(self.params["language"])

    def fit_features(self, texts):
        """Fit the preprocessor and vectoriser; the training matrix."""
        self.preprocessor_ = self.get_preprocessor()
        self.vectorizer_ = make_vectorizer(self.params)
        self.featuriser_ = None
        return self.vectorizer_.fit_transform(self.preprocessor_(texts))

    def features(self, texts):
        """The TF-IDF matrix of ``texts`` (sparse, one row per text): what the vectoriser makes of
        the preprocessor's output, computed with array lookups (:class:`Featuriser`)."""
        if getattr(self, "featuriser_", None) is None:  # made from the fitted parts (a checkpoint's: at load)
            self.featuriser_ = Featuriser(self.vectorizer_, self.params["language"])
        return self.featuriser_(texts)

    def node_groups(self, codes) -> list[tuple]:
        """The ``(level, parent, rows, labels)`` of every classifier the model fits on rows with
        class indices ``codes`` (:meth:`fit_nodes`)."""
        raise NotImplementedError

    def fit(self, train, val=None, logger=None):
        logger = logger or NullLogger()
        x = self.fit_features(train.texts)
        self.fit_nodes(x, self.node_groups(train.codes), logger)
        return self  # nothing to select: the fitted model is the best (`ktt train` saves it once calibrated)

    def update(self, old, diff, train, val=None, logger=None):
        """Start from ``old``, trained on the taxonomy ``diff`` leads from: keep its vectoriser
        (grown by the n-grams of the training rows it has not seen: :func:`grow_vocabulary`) and
        every node classifier whose training children are the same classes (renamed or moved ones
        included) holding the same rows (:func:`ktt.taxonomy.changed_classes`); refit every other node whole,
        on the new rows (refitting only the decisions of the children whose rows changed saved no
        time measurably on BigBasket's benchmark edit and cost hF1 in benchmarks/catalog_life.py:
        removed). Only the rows of what is refitted are featurised."""
        import scipy.sparse as sp

        from .taxonomy import changed_classes, old_to_new, text_hashes

        logger = logger or NullLogger()
        self.preprocessor_, self.featuriser_ = old.preprocessor_, None
        nodes = old.nodes_
        fits = nodes.blocks.fits()
        where = {(int(d), int(p)): b for b, (d, p) in enumerate(zip(nodes.level, nodes.parent))}
        lone = {(int(d), int(p)): int(c) for d, p, c in zip(nodes.single_level, nodes.single_parent, nodes.single_child)}
        corr, back = diff.correspondence(), old_to_new(diff)
        changed = changed_classes(diff)
        kept, refit = [], []
        for g in self.node_groups(train.codes):
            d, parent, _, y = g
            kids = np.unique(y)
            up = -1 if parent < 0 else int(corr[d - 1][parent])
            if changed is None or d >= old.hierarchy.depth or (parent >= 0 and up < 0):
                refit.append(g)
                continue
            if (d, up) in lone:
                before = back[d][[lone[d, up]]]
            elif (d, up) in where:
                b = where[d, up]
                first = nodes.blocks.first_out[b]
                before = back[d][nodes.children[first:first + nodes.blocks.width[b]]]
            else:
                refit.append(g)
                continue
            if not np.array_equal(np.sort(before), kids):  # a child gained or lost its first or last training row
                refit.append(g)
                continue
            if (d, up) in lone or not changed[d][kids].any():  # a lone child keeps P = 1 whatever its rows
                kept.append((d, parent, before, None if (d, up) in lone else fits[where[d, up]]))
            else:
                refit.append(g)
        rows = np.unique(np.concatenate([g[2] for g in refit])) if refit else np.zeros(0, np.int64)
        stemmed = self.preprocessor_([train.texts[i] for i in rows])
        trained = diff.old.rows if diff.old.train is None else diff.old.rows[diff.old.train]
        unseen = ~np.isin(text_hashes([train.texts[i] for i in rows]), trained) if diff.old.has_rows else \
            np.ones(len(rows), bool)
        self.vectorizer_ = grow_vocabulary(old.vectorizer_, [t for t, u in zip(stemmed, unseen) if u], len(train),
                                           self.params["min_df"])
        # a few rows: scikit-learn's transform, without building the n-gram index of the whole vocabulary
        x = self.vectorizer_.transform(stemmed) if len(rows) else \
            sp.csr_matrix((0, len(self.vectorizer_.vocabulary_)), dtype=np.float32)
        self.fit_nodes(x, [(d, up, np.searchsorted(rows, r), y) for d, up, r, y in refit], logger, kept)
        logger.log_metrics({"nodes_refit": float(len(refit)), "nodes_kept": float(len(kept)),
                            "rows_featurised": float(len(rows)),
                            "vocabulary_added": float(len(self.vectorizer_.vocabulary_) - len(old.vectorizer_.vocabulary_))})
        return self

    def fit_nodes(self, x, groups, logger, kept=()) -> None:
        """Fit one block of classifiers per ``(level, parent, rows, labels)`` group (``parent``:
        a class of level - 1, or -1 for all rows) into ``nodes_``, the blocks in parallel on this
        machine's cores (or on Spark, through joblib's backend: docs/scaling.md). ``kept``: nodes
        taken as they are, ``(level, parent, children, fits)`` (``fits`` None: a lone child)."""
        nodes, todo = list(kept), []  # (level, parent, children, fits: None for a lone child); to fit
        for d, up, rows, y in groups:
            kids = np.unique(y)
            if len(kids) == 1:  # one child seen in training: it has P = 1, no classifier
                nodes.append((d, up, kids, None))
            else:
                todo.append((d, up, kids, rows, y))
        check_memory(self.name, x, [(rows, y, kids) for _, _, kids, rows, y in todo])
        fits = run_parallel([delayed_fit(x, rows, y) for *_, rows, y in todo], self.make_sgd(), self.params["min_weight"])
        nodes += [(d, up, kids, fit) for (d, up, kids, _, _), fit in zip(todo, fits)]
        fitted = [n for n in nodes if n[3] is not None]
        single = [(d, up, int(kids[0])) for d, up, kids, fit in nodes if fit is None]
        blocks = LinearBlocks.from_fits([n[3] for n in fitted], [len(n[2]) for n in fitted], x.shape[1],
                                        self.params["loss"])
        self.nodes_ = NodeClassifiers(self.hierarchy, blocks, [n[0] for n in fitted], [n[1] for n in fitted],
                                      np.concatenate([n[2] for n in fitted]) if fitted else np.zeros(0, np.int64),
                                      *np.array(single, np.int64).reshape(-1, 3).T)
        logger.log_metrics({"weights_nonzero": float(len(blocks.w)), "weights_mb": blocks.nbytes / 2**20})

    def calibrate(self, val, max_rows: int = 20_000, seed: int = 0) -> dict:
        """First the node probabilities (``NodeClassifiers.fit_platt``: a sigmoid of the decisions
        per level, fitted on ``val``), then what every model calibrates on them (``Model.calibrate``)."""
        rows = calibration_rows(len(val), max_rows, seed)
        if len(rows) and self.platt_scaled:
            from .confidence import MIN_INFORMATIVE

            self.nodes_.fit_platt(self.features([val.texts[i] for i in rows]), val.codes[rows], MIN_INFORMATIVE)
        return super().calibrate(val, max_rows, seed)

    # a subclass scores features, so the classifier can be timed (and used) without featurising
    def proba_from_features(self, x) -> list[np.ndarray]:
        raise NotImplementedError

    def predict_from_features(self, x) -> np.ndarray:
        raise NotImplementedError

    def _chunks(self, texts, fn):
        texts = list(texts)
        return [fn(self.features(texts[i:i + self.chunk])) for i in range(0, max(len(texts), 1), self.chunk)]

    def raw_scores(self, texts):
        parts = self._chunks(texts, self.proba_from_features)
        return [np.concatenate([p[d] for p in parts]) for d in range(self.hierarchy.depth)]

    def predict(self, texts):  # paths alone need no node probabilities (nor, in tfidf_hsgd, every node's score)
        return np.concatenate(self._chunks(texts, self.predict_from_features))

    def predict_scored(self, texts):
        parts = self._chunks(texts, lambda x: self.calibrated(self.proba_from_features(x)))
        return (np.concatenate([c for c, _ in parts]),
                [np.concatenate([s[d] for _, s in parts]) for d in range(self.hierarchy.depth)])

    def make_sgd(self):
        from sklearn.linear_model import SGDClassifier

        p = self.params
        return SGDClassifier(loss=p["loss"], alpha=p["alpha"], max_iter=p["max_iter"], random_state=p["seed"],
                             n_jobs=1, tol=1e-4)

    def save(self, path, state=None):
        """A checkpoint of plain arrays and JSON (:func:`write_checkpoint`): nothing in it runs
        when loaded. The n-gram index goes in too: loading it is faster than building it again."""
        self.features([])
        v = self.vectorizer_
        write_checkpoint(path, {"model": self.name, "params": self.params, "hierarchy": self.hierarchy.to_dict(),
                                "calibration": getattr(self, "calibration_", None),
                                "vectorizer": {"norm": v.norm, "use_idf": v.use_idf, "smooth_idf": v.smooth_idf,
                                               "sublinear_tf": v.sublinear_tf}},
                         {**self.featuriser_.index.to_arrays(), **self.nodes_.to_arrays(),
                          "vocabulary": _join(sorted(v.vocabulary_, key=v.vocabulary_.get)),
                          **({"idf": v.idf_.astype(np.float32)} if v.use_idf else {})})

    @classmethod
    def load(cls, path):
        meta, arrays = read_checkpoint(path)
        name = Path(path).name
        if not isinstance(meta, dict) or meta.get("model") != cls.name:
            raise BadValue(f"{name} is a {meta.get('model') if isinstance(meta, dict) else None!r} checkpoint, "
                           f"not {cls.name!r}")
        try:  # a file anyone may hand over: every part checked before it is used
            model = cls(Hierarchy.from_dict(meta["hierarchy"]), **{**cls.defaults, **meta["params"]})
            model.preprocessor_ = model.get_preprocessor()
            model.vectorizer_ = make_vectorizer(model.params)
            model.vectorizer_.set_params(**meta["vectorizer"])
            vocabulary = _split(arrays["vocabulary"])
            model.vectorizer_.vocabulary_ = {t: i for i, t in enumerate(vocabulary)}
            if model.vectorizer_.use_idf:
                if arrays["idf"].shape != (len(vocabulary),) or arrays["idf"].dtype.kind != "f":
                    raise ValueError(f"idf holds {arrays['idf'].shape} values for {len(vocabulary)} n-grams")
                model.vectorizer_.idf_ = arrays["idf"]
            missing = [f"keys{n}" for n in range(1, model.params["ngram_max"] + 1) if f"keys{n}" not in arrays]
            if missing:
                raise KeyError(missing[0])
            index = NgramIndex.from_arrays(arrays, model.params["language"])
            index.check()
            if model.vectorizer_.norm not in ("l1", "l2", None):
                raise ValueError(f"norm {model.vectorizer_.norm!r}")
            if index.n_features != len(vocabulary):
                raise ValueError(f"the n-gram index has {index.n_features} n-grams, the vocabulary {len(vocabulary)}")
            model.featuriser_ = Featuriser(model.vectorizer_, model.params["language"], index=index)
            model.nodes_ = NodeClassifiers.from_arrays(model.hierarchy, arrays, model.params["loss"])
            model.nodes_.check(len(vocabulary))
            calibration = meta.get("calibration")
            if calibration is not None and not isinstance(calibration, dict):
                raise TypeError("calibration is not a mapping")
            model.calibration_ = calibration
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, UnicodeDecodeError) as e:
            why = " ".join(str(e).split())[:300]  # one line, whatever the library's message
            raise BadValue(f"{name} is not a whole TF-IDF checkpoint ({type(e).__name__}: {why})") from None
        return model

    # -- export -----------------------------------------------------------------------------
    def export_arrays(self, path) -> None:
        """``tfidf.npz``: everything the server scores with (the n-gram index, idf, the weights)."""
        self.features([])  # builds the featuriser, whose n-gram index is what the server needs
        v, index = self.vectorizer_, self.featuriser_.index
        arrays = {**index.to_arrays(), **self.nodes_.to_arrays(),
                  "idf": (v.idf_ if v.use_idf else np.ones(len(v.vocabulary_))).astype(np.float32)}
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    def serving_config(self) -> dict:
        """What a server needs besides the arrays."""
        return {**self.answer_config(), "input": "tfidf", "language": self.params["language"],
                "loss": self.params["loss"], "norm": self.vectorizer_.norm}


def grow_vocabulary(vectorizer, stemmed: list[str], n_docs: int, min_df: int = 1):
    """A copy of a fitted TF-IDF ``vectorizer`` whose vocabulary also holds the n-grams of
    ``stemmed`` texts it lacked (seen in at least ``min_df`` of them), appended after the old ones,
    so that every old feature keeps its column and every old classifier its weights. A new n-gram's
    idf is scikit-learn's, ``ln((1 + n_docs) / (1 + df)) + 1``, its df counted in ``stemmed``: exact
    when the n-gram appears only in those texts (rows new to the training set), as a new category's
    words do. The old n-grams keep their idf (a full refit would shift it slightly)."""
    from collections import Counter

    from sklearn.base import clone

    vocab = vectorizer.vocabulary_
    analyse = vectorizer.build_analyzer()
    df = Counter()
    for doc in stemmed:
        df.update({g for g in analyse(doc) if g not in vocab})
    new = sorted(g for g, k in df.items() if k >= min_df)
    if not new:
        return vectorizer  # shared with the old model: neither changes it
    grown = clone(vectorizer)  # the old vectoriser stays as it was (the old model still uses it)
    grown.vocabulary_ = {**vocab, **{g: len(vocab) + i for i, g in enumerate(new)}}
    grown.fixed_vocabulary_ = False
    if vectorizer.use_idf:
        k = np.array([df[g] for g in new], dtype=np.float64)
        extra = np.log((1 + n_docs) / (1 + k)) + 1 if vectorizer.smooth_idf else np.log(n_docs / k) + 1
        grown.idf_ = np.concatenate([vectorizer.idf_, extra]).astype(vectorizer.idf_.dtype)
    grown.stop_words_ = getattr(vectorizer, "stop_words_", None)
    return grown


def available_memory() -> int:
    """Bytes this machine can still give (``MemAvailable``; the cgroup's limit when lower)."""
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            free = min(free, int(limit) - used) if free is not None else int(limit) - used
    except OSError:
        pass
    return free if free is not None else 1 << 62


def check_memory(name: str, x, nodes) -> None:
    """Refuse, before any training, a fit whose nodes' dense training weights would not fit.

    scikit-learn's SGD holds a node's weights dense while it trains, (classes x features seen
    under the node) float64: small for a node's children, but classes x vocabulary for a flat
    classifier over thousands of leaves. The cores train that many of the largest at once.
    """
    cores = threads.configured() or threads.cores()
    sizes = sorted(8 * (1 if len(kids) == 2 else len(kids)) * min(x.shape[1], int(x.indptr[rows + 1].sum() -
                                                                                     x.indptr[rows].sum()))
                   for rows, _, kids in nodes)
    need = sum(sizes[-cores:]) if len(nodes) > 1 else (sizes[-1] if sizes else 0)
    have = available_memory()
    if need > 0.8 * have:
        widest = max(nodes, key=lambda n: len(n[2]))
        raise BadValue(f"{name} would need about {need / 2**30:.1f} GB for its classifiers' weights while "
                       f"training ({len(widest[2]):,} classes x {x.shape[1]:,} features, dense in scikit-learn's "
                       f"SGD), and this machine has {have / 2**30:.1f} GB available. Use tfidf_hsgd (one "
                       "classifier per parent node, over the features seen under it), or fewer features "
                       "(a higher min_df, ngram_max=1)")


def delayed_fit(x, rows, y):
    """A node's rows, sliced only when its fit is dispatched (memory stays bounded)."""
    return lambda: (x[rows], y)


def run_parallel(nodes: list, sgd, min_weight: float) -> list:
    """:func:`fit_block` of every node: on this machine's cores (threads: scikit-learn's SGD
    releases the GIL), or on the joblib backend the caller chose with ``joblib.parallel_config``
    (Spark, through ``joblibspark``: docs/scaling.md). ``sgd``: the unfitted classifier every node
    clones (small to ship to a Spark task). A lone node (``tfidf_lsgd``) gets the cores for its
    classes instead."""
    from joblib import Parallel, delayed
    from joblib.parallel import get_active_backend

    cores = threads.configured() or threads.cores()
    if len(nodes) == 1:
        return [fit_block(*nodes[0](), sgd.set_params(n_jobs=cores), min_weight)]
    chosen = get_active_backend()[1] is not None  # under parallel_config(backend=..., n_jobs=...)
    jobs = (delayed(fit_block)(*node(), sgd, min_weight) for node in nodes)
    return Parallel(**({} if chosen else {"n_jobs": cores, "prefer": "threads"}))(jobs)


def fit_block(xn, y, sgd, min_weight: float) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """scikit-learn's SGD classifier (one-vs-rest; one decision for two classes) of a node's rows
    ``xn`` over the feature columns seen in them, its weights below ``min_weight`` in magnitude
    dropped. Per decision: (columns, weights, bias)."""
    import scipy.sparse as sp

    cols, local = np.unique(xn.indices, return_inverse=True)  # the node's features, renumbered
    xn = sp.csr_matrix((xn.data, local.ravel(), xn.indptr), shape=(xn.shape[0], len(cols)))
    from sklearn.base import clone

    clf = clone(sgd).fit(xn, y)
    out = []
    for w, b in zip(clf.coef_, clf.intercept_):
        keep = np.abs(w) >= min_weight
        out.append((cols[keep].astype(np.int32), w[keep].astype(np.float32), float(b)))
    return out


def from_sklearn(model) -> NodeClassifiers:
    """The sparse classifiers of a checkpoint that held scikit-learn's (``tfidf_hsgd``'s
    ``nodes_``: per level, each parent's classifier or only child; ``tfidf_lsgd``'s ``clf_``)."""
    h = model.hierarchy
    flat = "clf_" in model.__dict__
    levels = [{-1: model.__dict__.pop("clf_")}] if flat else model.nodes_
    fits, widths, level, parent, children, single = [], [], [], [], [], []
    for d, nodes in enumerate(levels):
        d = h.depth - 1 if flat else d
        for up, clf in nodes.items():
            if isinstance(clf, (int, np.integer)):
                single.append((d, up, int(clf)))
                continue
            fits.append([(np.arange(len(w)), w, b) for w, b in zip(clf.coef_, clf.intercept_)])
            widths.append(len(clf.classes_))
            level.append(d)
            parent.append(up)
            children.append(clf.classes_)
    blocks = LinearBlocks.from_fits([[(c[w != 0], w[w != 0], b) for c, w, b in f] for f in fits], widths,
                                    len(model.vectorizer_.vocabulary_), model.params["loss"])
    return NodeClassifiers(h, blocks, level, parent, np.concatenate(children),
                           *np.array(single, np.int64).reshape(-1, 3).T)


FORMAT = "ktt-tfidf/1"


def _join(terms) -> np.ndarray:
    """Strings as one UTF-8 byte array (an n-gram of ``\\S+`` tokens holds no newline)."""
    return np.frombuffer("\n".join(terms).encode(), np.uint8)


def _split(data: np.ndarray) -> list[str]:
    text = data.tobytes().decode()
    return text.split("\n") if text else []


def write_checkpoint(path, meta: dict, arrays: dict) -> None:
    """``path``: an ``.npz`` of ``arrays`` and ``meta`` as JSON, read with ``allow_pickle=False``."""
    import json

    def plain(x):  # numpy scalars and arrays in the calibration
        return x.tolist() if isinstance(x, (np.ndarray, np.generic)) else str(x)

    with open(path, "wb") as f:
        np.savez(f, meta=_join([json.dumps({"format": FORMAT, "sha256": _digest(arrays), **meta}, default=plain)]),
                 **arrays)


def _digest(arrays: dict) -> str:
    """What the arrays hold, names, types and shapes included: a damaged file does not load."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.data)
    return h.hexdigest()


def read_checkpoint(path) -> tuple[dict, dict]:
    """The ``(meta, arrays)`` of :func:`write_checkpoint`. A pickle (what KTT wrote before) is
    refused unread: unpickling a file runs whatever code it names."""
    import json
    import zipfile

    name = Path(path).name
    with open(path, "rb") as f:
        head = f.read(2)
    if head[:1] == b"\x80":
        raise BadValue(f"{name} is a pickled TF-IDF checkpoint (how KTT wrote them before December 2026); unpickling "
                       f"a file runs any code it names, so KTT refuses to. If you trust where it came from, convert it once: "
                       f"python scripts/convert_checkpoint.py {path}")
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise ValueError("one array, not an .npz of them")
        with f:
            arrays = {k: f[k] for k in f.files}
        meta = json.loads(_split(arrays.pop("meta"))[0])
    except MemoryError:
        raise BadValue(f"{name} declares arrays larger than this machine's memory: not a TF-IDF checkpoint KTT "
                       "wrote") from None
    except ValueError as e:
        if "allow_pickle" in str(e):  # numpy would read it as a pickle: not one KTT wrote, never unpickled
            raise BadValue(f"{name} is not a whole TF-IDF checkpoint (not an .npz file)") from None
        raise BadValue(f"{name} is not a whole TF-IDF checkpoint ({type(e).__name__}: {e})") from None
    except (OSError, KeyError, IndexError, EOFError, UnicodeDecodeError, zipfile.BadZipFile) as e:
        raise BadValue(f"{name} is not a whole TF-IDF checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BadValue(f"{name} is a checkpoint of format {meta.get('format') if isinstance(meta, dict) else None!r}; "
                       f"this KTT reads {FORMAT!r}")
    if "sha256" in meta and meta["sha256"] != _digest(arrays):  # absent: written before checkpoints carried one
        raise BadValue(f"{name} is damaged: its arrays do not match the hash written with them")
    return meta, arrays


def convert_pickled(path, out) -> None:
    """Rewrite a pickled TF-IDF checkpoint (KTT before December 2026) in today's format. Unpickling runs
    the code the file names: only for a file you trust (``scripts/convert_checkpoint.py``)."""
    import pickle

    from . import registry

    class Unpickler(pickle.Unpickler):  # the module of StemPreprocessor before it moved here
        def find_class(self, module, name):
            return super().find_class("ktt.tfidf" if module == "models.tfidf_common" else module, name)

    with open(path, "rb") as f:
        ckpt = Unpickler(f).load()
    cls = registry.get(ckpt["model"])
    model = cls(Hierarchy.from_dict(ckpt["hierarchy"]), **{**cls.defaults, **ckpt["params"]})
    fitted = dict(ckpt["fitted"])
    model.preprocessor_, model.vectorizer_ = model.get_preprocessor(), fitted.pop("vectorizer_")
    model.calibration_ = fitted.get("calibration_")
    if isinstance(fitted.get("nodes_"), dict):
        model.nodes_ = NodeClassifiers.from_arrays(model.hierarchy, fitted["nodes_"], model.params["loss"])
    else:  # written before the sparse classifiers: scikit-learn's, converted weight for weight
        model.__dict__.update({k: v for k, v in fitted.items() if k in ("nodes_", "clf_")})
        model.nodes_ = from_sklearn(model)
    model.save(out)


