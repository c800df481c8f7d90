"""TF-IDF + one linear SGD classifier over the leaf classes; ancestors follow from the leaf.

Predictions are always valid paths (the ancestors of the predicted leaf).
"""
from __future__ import annotations

import numpy as np

from ktt.model import NullLogger
from ktt.tfidf import (TfidfModel, export_vectorizer, linear_proba_nodes, save_graph, serving_config,
                                 sgd_block)


class TfidfLSGD(TfidfModel):
    fitted = ("clf_",)

    def fit(self, train, val=None, logger=None):
        logger = logger or NullLogger()
        self.clf_ = self.make_sgd().fit(self.fit_features(train.texts), train.codes[:, -1])
        logger.checkpoint(self, "best")
        return self

    def leaf_scores(self, x) -> np.ndarray:
        proba = self.clf_.predict_proba(x) if hasattr(self.clf_, "predict_proba") else \
            self.clf_.decision_function(x)
        full = np.zeros((x.shape[0], self.hierarchy.n_leaves), dtype=np.float32)
        full[:, self.clf_.classes_] = proba  # leaves never seen in training score 0
        return full

    def proba_from_features(self, x):
        return self.hierarchy.sum_up(self.leaf_scores(x))

    def predict_from_features(self, x):
        return self.hierarchy.decode_scores([self.leaf_scores(x)], "leaf")

    def export_onnx(self, classifier_path, encoder_path):
        """``encoder.onnx``: stemmed text -> TF-IDF; ``classifier.onnx``: TF-IDF -> ``scores`` of all classes."""
        from onnx import helper, numpy_helper

        export_vectorizer(self.vectorizer_, encoder_path)
        h = self.hierarchy
        nodes, inits = linear_proba_nodes([sgd_block(self.clf_, self.clf_.classes_)], h.n_leaves)
        nodes.append(helper.make_node("MatMul", ["proba", "leaf_to_class"], ["scores"]))
        inits.append(numpy_helper.from_array(h.leaf_matrix().T.copy(), "leaf_to_class"))
        save_graph(nodes, inits, len(self.vectorizer_.vocabulary_), {"scores": h.n_classes}, classifier_path)

    def serving_config(self):
        return serving_config(self, "leaf")
