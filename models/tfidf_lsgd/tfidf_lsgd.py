"""TF-IDF + one linear SGD classifier over the leaf classes; ancestors follow from the leaf.

Predictions are always valid paths (the ancestors of the predicted leaf).
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import SGDClassifier

from ktt.model import Model, NullLogger
from models.tfidf_common import (StemPreprocessor, export_vectorizer, linear_proba_nodes, load_sklearn,
                                 make_vectorizer, reference_set, save_graph, save_sklearn, serving_config,
                                 sgd_block)


class TfidfLSGD(Model):
    defaults = {"loss": "modified_huber", "alpha": 1e-4, "max_iter": 1000, "min_df": 1, "ngram_max": 2,
                "language": "english", "seed": 0}
    consistent = True

    def get_preprocessor(self):
        return StemPreprocessor(self.params["language"])

    def fit(self, train, val=None, logger=None):
        logger = logger or NullLogger()
        p = self.params
        self.preprocessor_ = self.get_preprocessor()
        self.vectorizer_ = make_vectorizer(p)
        x = self.vectorizer_.fit_transform(self.preprocessor_(train.texts))
        self.clf_ = SGDClassifier(loss=p["loss"], alpha=p["alpha"], max_iter=p["max_iter"],
                                  random_state=p["seed"], n_jobs=-1, tol=1e-4)
        self.clf_.fit(x, train.codes[:, -1])
        logger.checkpoint(self, "best")
        return self

    def leaf_scores(self, texts) -> np.ndarray:
        x = self.vectorizer_.transform(self.preprocessor_(texts))
        proba = self.clf_.predict_proba(x) if hasattr(self.clf_, "predict_proba") else \
            self.clf_.decision_function(x)
        full = np.zeros((len(texts), self.hierarchy.n_leaves), dtype=np.float32)
        full[:, self.clf_.classes_] = proba  # leaves never seen in training score 0
        return full

    def predict_proba(self, texts):
        leaf = self.leaf_scores(texts)
        r, off = self.hierarchy.leaf_matrix(), self.hierarchy.offsets
        return [leaf @ r[o:o + n].T for o, n in zip(off, self.hierarchy.sizes)]

    def predict(self, texts):
        return self.hierarchy.decode_scores([self.leaf_scores(texts)], "leaf")

    def export_onnx(self, classifier_path, encoder_path=None):
        """``encoder.onnx``: stemmed text -> TF-IDF; ``classifier.onnx``: TF-IDF -> ``scores`` of all classes."""
        from onnx import helper, numpy_helper

        export_vectorizer(self.vectorizer_, encoder_path)
        h = self.hierarchy
        nodes, inits = linear_proba_nodes([sgd_block(self.clf_, self.clf_.classes_)], h.n_leaves)
        nodes.append(helper.make_node("MatMul", ["proba", "leaf_to_class"], ["scores"]))
        inits.append(numpy_helper.from_array(h.leaf_matrix().T.copy(), "leaf_to_class"))
        save_graph(nodes, inits, len(self.vectorizer_.vocabulary_), {"scores": h.n_classes}, classifier_path)

    def gen_reference_set(self, split):
        return reference_set(self, split)

    def serving_config(self):
        return serving_config(self, "leaf")

    def save(self, path, state=None):
        save_sklearn(self, path, {k: getattr(self, k) for k in ("preprocessor_", "vectorizer_", "clf_")})

    @classmethod
    def load(cls, path):
        return load_sklearn(cls, path)
