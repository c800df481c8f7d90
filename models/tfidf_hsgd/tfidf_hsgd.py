"""TF-IDF + one SGD classifier per parent node (root included), decoded by whole-path score.

Each node's classifier gives P(class | parent) over its children; a path's joint score is the
product of its classes' conditional probabilities, and prediction takes the best whole path
(``decode=path``; ``top_down`` is the greedy walk from the root). Every prediction is a valid
path. Scores per level are the chained probabilities P(class) = P(parent) * P(class | parent).
Only losses whose classifiers give probabilities are accepted (``PROBA_LOSSES``).
"""
from __future__ import annotations

import numpy as np

from ktt.model import NullLogger
from ktt.tfidf import (TfidfModel, export_vectorizer, linear_proba_nodes, save_graph, serving_config,
                                 sgd_block)


PROBA_LOSSES = ("modified_huber", "log_loss")


class TfidfHSGD(TfidfModel):
    defaults = {**TfidfModel.defaults, "decode": "path"}
    # paths are scored by multiplying node probabilities: only losses that give them
    constraints = {**TfidfModel.constraints, "loss": PROBA_LOSSES, "decode": ("path", "top_down")}
    fitted = ("nodes_",)

    def fit(self, train, val=None, logger=None):
        logger = logger or NullLogger()
        x = self.fit_features(train.texts)
        codes = train.codes
        # nodes_[d]: {parent index at level d-1 (-1: root): classifier over its children, or
        # the one child's index when only one was seen in training}
        self.nodes_ = []
        for d in range(self.hierarchy.depth):
            parents = codes[:, d - 1] if d else np.full(len(codes), -1)
            level = {}
            for parent in np.unique(parents):
                rows = parents == parent
                y = codes[rows, d]
                if len(np.unique(y)) == 1:
                    level[int(parent)] = int(y[0])
                else:
                    level[int(parent)] = self.make_sgd().fit(x[rows], y)
            self.nodes_.append(level)
        logger.checkpoint(self, "best")
        return self

    def conditional_proba(self, x) -> list[np.ndarray]:
        """Per level, P(class | its parent) for every class, ``(n, n_classes_at_level)``, from TF-IDF ``x``."""
        out = []
        for d, level in enumerate(self.nodes_):
            cond = np.zeros((x.shape[0], self.hierarchy.sizes[d]), dtype=np.float32)
            for node in level.values():
                if isinstance(node, int):
                    cond[:, node] = 1.0
                else:
                    cond[:, node.classes_] = node.predict_proba(x)
            out.append(cond)
        return out

    def proba_from_features(self, x):
        cond = self.conditional_proba(x)
        out = [cond[0]]
        for d in range(1, self.hierarchy.depth):
            out.append(out[-1][:, self.hierarchy.parent_of(d)] * cond[d])
        return out

    def predict_from_features(self, x):
        return self.hierarchy.decode_scores([], self.params["decode"], conditional=self.conditional_proba(x))

    def export_onnx(self, classifier_path, encoder_path):
        """``encoder.onnx``: stemmed text -> TF-IDF; ``classifier.onnx``: TF-IDF -> ``conditional``
        P(class | parent) and chained ``scores``, all classes concatenated level by level."""
        from onnx import helper, numpy_helper

        export_vectorizer(self.vectorizer_, encoder_path)
        h = self.hierarchy
        blocks, constant = [], []
        for d, level in enumerate(self.nodes_):
            for node in level.values():
                if isinstance(node, int):
                    constant.append(h.offsets[d] + node)
                else:
                    blocks.append(sgd_block(node, h.offsets[d] + node.classes_))
        nodes, inits = linear_proba_nodes(blocks, h.n_classes, constant)
        nodes.append(helper.make_node("Identity", ["proba"], ["conditional"]))
        for d, (o, n) in enumerate(zip(h.offsets, h.sizes)):
            inits += [numpy_helper.from_array(np.array([o]), f"start{d}"), numpy_helper.from_array(np.array([o + n]), f"end{d}"),
                      numpy_helper.from_array(np.array([1]), f"axis{d}")]
            nodes.append(helper.make_node("Slice", ["proba", f"start{d}", f"end{d}", f"axis{d}"], [f"cond{d}"]))
            if d == 0:
                nodes.append(helper.make_node("Identity", ["cond0"], ["marginal0"]))
                continue
            inits.append(numpy_helper.from_array(h.parent_of(d), f"parents{d}"))
            nodes += [helper.make_node("Gather", [f"marginal{d - 1}", f"parents{d}"], [f"up{d}"], axis=1),
                      helper.make_node("Mul", [f"up{d}", f"cond{d}"], [f"marginal{d}"])]
        nodes.append(helper.make_node("Concat", [f"marginal{d}" for d in range(h.depth)], ["scores"], axis=1))
        save_graph(nodes, inits, len(self.vectorizer_.vocabulary_),
                   {"scores": h.n_classes, "conditional": h.n_classes}, classifier_path)

    def serving_config(self):
        return serving_config(self, self.params["decode"])
