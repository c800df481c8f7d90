"""The base of the TF-IDF models (as ``ktt.nn`` is of the encoder models): stemming, the
vectoriser, SGD classifiers, checkpoint I/O, ONNX export of linear blocks and the reference set."""
from __future__ import annotations

import pickle

import numpy as np
import snowballstemmer

from . import threads
from .errors import BadValue
from .hierarchy import Hierarchy
from .model import Interval, Model
from .text import stem, stemmer, words

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

    # No sublinear_tf: skl2onnx ignores it silently, and the ONNX graph must match exactly.
    return TfidfVectorizer(min_df=params["min_df"], ngram_range=(1, params["ngram_max"]),
                           token_pattern=r"\S+", lowercase=False, dtype=np.float32)


class Featuriser:
    """``vectorizer.transform(stem(texts))`` of a fitted ``make_vectorizer``, without a Python
    loop per word or n-gram: the texts' words are stemmed once per distinct word, mapped to
    integer ids, every n-gram becomes one int64 key (ids in base ``n_tokens``) and is looked up
    in a pandas hash index of the vocabulary's keys. The counts then go through the
    vectoriser's own idf weighting and normalisation, so the matrix is the same, value for
    value (``tests/test_hardware.py`` compares them on real data). Texts go in chunks, so
    memory stays bounded however many there are."""

    def __init__(self, vectorizer, language: str, chunk: int = 20_000):
        import pandas as pd
        from sklearn.feature_extraction.text import TfidfTransformer

        self.language, self.chunk, self.dtype = language, chunk, vectorizer.dtype
        grams = {tuple(g.split(" ")): i for g, i in vectorizer.vocabulary_.items()}
        self.tokens = pd.Index(sorted({t for g in grams for t in g}))
        self.n_features = len(grams)
        self.index = {}  # n -> (index of the vocabulary's n-gram keys, their feature columns)
        for n in range(vectorizer.ngram_range[0], vectorizer.ngram_range[1] + 1):
            of_n = [(g, i) for g, i in grams.items() if len(g) == n]
            ids = self.tokens.get_indexer([t for g, _ in of_n for t in g]).reshape(-1, n)
            self.index[n] = (pd.Index(self._keys(ids)), np.array([i for _, i in of_n], dtype=np.int64))
        self.tfidf = TfidfTransformer(norm=vectorizer.norm, use_idf=vectorizer.use_idf,
                                      smooth_idf=vectorizer.smooth_idf, sublinear_tf=vectorizer.sublinear_tf)
        if vectorizer.use_idf:
            self.tfidf.idf_ = vectorizer.idf_
        if len(self.tokens) ** vectorizer.ngram_range[1] >= 2 ** 62:  # keys would overflow int64
            raise BadValue(f"{len(self.tokens)} distinct tokens are too many for {vectorizer.ngram_range[1]}-grams")

    def _keys(self, ids: np.ndarray) -> np.ndarray:
        """``(m, n)`` token ids -> one int64 key per row."""
        keys = ids[:, 0].astype(np.int64)
        for k in range(1, ids.shape[1]):
            keys = keys * len(self.tokens) + ids[:, k]
        return keys

    def __call__(self, texts):
        import scipy.sparse as sp

        texts = list(texts)
        if not texts:  # scikit-learn refuses zero rows
            return sp.csr_matrix((0, self.n_features), dtype=self.dtype)
        parts = [self._counts(texts[i:i + self.chunk]) for i in range(0, len(texts), self.chunk)]
        counts = sp.vstack(parts, format="csr") if len(parts) > 1 else parts[0]
        return self.tfidf.transform(counts, copy=False)

    def _counts(self, texts):
        import itertools

        import pandas as pd
        import scipy.sparse as sp

        per_text = words(texts)
        lengths = np.fromiter(map(len, per_text), np.int64, len(per_text))
        codes, vocabulary = pd.factorize(np.array(list(itertools.chain.from_iterable(per_text)), dtype=object))
        stems = np.array(stemmer(self.language).stemWords(list(vocabulary)), dtype=object)  # C objects do not pickle
        ids = self.tokens.get_indexer(stems)[codes] if len(codes) else np.zeros(0, np.int64)
        if (stems == "").any():  # an empty stem vanishes when joined and split: its neighbours meet
            keep = stems[codes] != ""
            ids, lengths = ids[keep], np.bincount(np.repeat(np.arange(len(texts)), lengths)[keep],
                                                  minlength=len(texts))
        row = np.repeat(np.arange(len(texts)), lengths)
        left = np.repeat(lengths.cumsum(), lengths) - np.arange(len(ids))  # words from here to the text's end
        rows, cols = [], []
        for n, (index, columns) in self.index.items():
            if len(ids) < n:
                continue
            window = np.lib.stride_tricks.sliding_window_view(ids, n)
            ok = (left[:len(window)] >= n) & (window >= 0).all(axis=1)
            found = index.get_indexer(self._keys(window[ok]))
            rows.append(row[:len(window)][ok][found >= 0])
            cols.append(columns[found[found >= 0]])
        rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        cols = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        counts = sp.csr_matrix((np.ones(len(rows), self.dtype), (rows, cols)), shape=(len(texts), self.n_features))
        counts.sum_duplicates()
        return counts


class TfidfModel(Model):
    """Base of the TF-IDF models: stemming, the vectoriser, SGD classifiers, checkpoints."""

    defaults = {**Model.defaults, "loss": "modified_huber", "alpha": 1e-4, "max_iter": 1000, "min_df": 1, "ngram_max": 2,
                "language": "english", "seed": 0}
    constraints = {**Model.constraints, "loss": ("hinge", "log_loss", "modified_huber", "squared_hinge", "perceptron", "squared_error",
                            "huber", "epsilon_insensitive", "squared_epsilon_insensitive"),
                   "alpha": Interval(0, None, "neither"), "max_iter": Interval(1), "min_df": Interval(1),
                   "ngram_max": Interval(1), "language": LANGUAGES}
    consistent = True
    # sparse pooled TF-IDF features move less than dense ones (docs/monitoring.md)
    drift_share = 0.25
    fitted: tuple[str, ...] = ()  # the attributes fit sets, besides the preprocessor and vectoriser

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
        if getattr(self, "featuriser_", None) is None:  # made from the fitted parts, never saved
            self.featuriser_ = Featuriser(self.vectorizer_, self.params["language"])
        return self.featuriser_(texts)

    # a subclass scores features, so the classifier can be timed (and used) without featurising
    def proba_from_features(self, x) -> list[np.ndarray]:
        raise NotImplementedError

    def predict_from_features(self, x) -> np.ndarray:
        raise NotImplementedError

    def predict_proba(self, texts):
        return self.proba_from_features(self.features(texts))

    def predict(self, texts):
        return self.predict_from_features(self.features(texts))

    def predict_scored(self, texts):
        x = self.features(texts)
        return self.predict_from_features(x), self.proba_from_features(x)

    def make_sgd(self):
        from sklearn.linear_model import SGDClassifier

        p = self.params
        return SGDClassifier(loss=p["loss"], alpha=p["alpha"], max_iter=p["max_iter"], random_state=p["seed"],
                             n_jobs=threads.configured() or -1, tol=1e-4)

    def save(self, path, state=None):
        save_sklearn(self, path, {k: getattr(self, k) for k in ("preprocessor_", "vectorizer_", *self.fitted)})

    @classmethod
    def load(cls, path):
        return load_sklearn(cls, path)


def save_sklearn(model, path, fitted: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump({"model": model.name, "params": model.params, "hierarchy": model.hierarchy.to_dict(),
                     "fitted": fitted}, f, protocol=pickle.HIGHEST_PROTOCOL)


class _Unpickler(pickle.Unpickler):
    """Reads checkpoints written before this module moved from ``models/tfidf_common.py``."""

    def find_class(self, module, name):
        return super().find_class("ktt.tfidf" if module == "models.tfidf_common" else module, name)


def load_sklearn(cls, path):
    with open(path, "rb") as f:
        ckpt = _Unpickler(f).load()
    if ckpt.get("model") != cls.name:
        raise BadValue(f"{path} is a {ckpt.get('model')!r} checkpoint, not {cls.name!r}")
    model = cls(Hierarchy.from_dict(ckpt["hierarchy"]), **ckpt["params"])
    for k, v in ckpt["fitted"].items():
        setattr(model, k, v)
    return model


def export_vectorizer(vectorizer, path) -> None:
    """The fitted vectoriser as ``encoder.onnx``: stemmed ``text`` (n, 1) -> TF-IDF ``features``."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    onx = to_onnx(vectorizer, initial_types=[("text", StringTensorType([None, 1]))],
                  final_types=[("features", FloatTensorType([None, len(vectorizer.vocabulary_)]))],
                  target_opset={"": 17, "ai.onnx.ml": 3})
    with open(path, "wb") as f:
        f.write(onx.SerializeToString())


def sgd_block(clf, columns) -> dict:
    """One fitted modified-Huber ``SGDClassifier`` as a block of the linear graph;
    ``columns[k]`` is the output column of ``clf.classes_[k]``."""
    if clf.loss != "modified_huber":
        raise BadValue(f"ONNX export supports loss='modified_huber' only, not {clf.loss!r}")
    return {"W": clf.coef_.astype(np.float32), "b": clf.intercept_.astype(np.float32),
            "columns": np.asarray(columns), "binary": len(clf.classes_) == 2}


def linear_proba_nodes(blocks, n_out: int, constant_columns=()):
    """ONNX nodes computing every block's ``predict_proba`` (as scikit-learn does for modified
    Huber) into the columns of one ``(n, n_out)`` tensor ``proba``, from input ``features``.

    A column in ``constant_columns`` is 1 (a parent with one child seen in training); a
    column no block writes is 0.
    """
    from onnx import helper, numpy_helper

    W = np.concatenate([b["W"] for b in blocks]).T  # (features, decisions)
    bias = np.concatenate([b["b"] for b in blocks])
    A = np.zeros((W.shape[1], n_out), np.float32)  # decision -> output column
    c = np.zeros(n_out, np.float32)
    G = np.zeros((n_out, n_out), np.float32)  # column j <- the sum over its block
    group_size = np.ones(n_out, np.float32)
    s_const = np.ones(n_out, np.float32)  # 1 where no normalisation happens
    i = 0
    for blk in blocks:
        cols = blk["columns"]
        if blk["binary"]:  # one decision: P(classes_[1]) = p, P(classes_[0]) = 1 - p
            A[i, cols[1]], A[i, cols[0]], c[cols[0]] = 1.0, -1.0, 1.0
            i += 1
        else:
            A[np.arange(i, i + len(cols)), cols] = 1.0
            G[np.ix_(cols, cols)] = 1.0
            s_const[cols], group_size[cols] = 0.0, len(cols)
            i += len(cols)
    c[list(constant_columns)] = 1.0
    consts = {"W": W, "bias": bias, "A": A, "c": c, "G": G, "s_const": s_const, "inv_size": 1.0 / group_size,
              "lo": np.float32(-1.0), "hi": np.float32(1.0), "one": np.float32(1.0), "half": np.float32(0.5),
              "zero": np.float32(0.0)}
    nodes = [
        helper.make_node("MatMul", ["features", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "bias"], ["decision"]),
        helper.make_node("Clip", ["decision", "lo", "hi"], ["clipped"]),
        helper.make_node("Add", ["clipped", "one"], ["shifted"]),
        helper.make_node("Mul", ["shifted", "half"], ["p"]),
        helper.make_node("MatMul", ["p", "A"], ["pa"]),
        helper.make_node("Add", ["pa", "c"], ["expanded"]),
        helper.make_node("MatMul", ["expanded", "G"], ["group_sum"]),
        helper.make_node("Add", ["group_sum", "s_const"], ["denominator"]),
        helper.make_node("Div", ["expanded", "denominator"], ["ratio"]),
        helper.make_node("Equal", ["denominator", "zero"], ["all_zero"]),  # scikit-learn: uniform then
        helper.make_node("Where", ["all_zero", "inv_size", "ratio"], ["proba"]),
    ]
    return nodes, [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()]


def save_graph(nodes, inits, n_features: int, outputs: dict, path) -> None:
    """Write a graph from input ``features`` (n, n_features) to the named (n, width) outputs."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, "ktt_classifier", [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, [None, w]) for k, w in outputs.items()], inits)
    # IR 8 goes with opset 17 and loads in older onnxruntime builds (the serving environment's)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def serving_config(model, decode: str) -> dict:
    """What a server needs besides the graphs."""
    return {"model": model.name, "input": "stemmed_text", "decode": decode, "language": model.params["language"],
            "threshold": model.params["threshold"], "hierarchy": model.hierarchy.to_dict()}
