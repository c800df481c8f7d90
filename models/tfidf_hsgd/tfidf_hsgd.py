"""TF-IDF + one SGD classifier per parent node (root included), decoded by whole-path score.

Each node's classifier gives P(class | parent) over its children, one-vs-rest, each child's
classifier over the features seen under that child in training (``ktt.tfidf.fit_block``); a
path's joint score is the product of its classes' conditional probabilities, and prediction
takes the best whole path (``decode=path``, found exactly without scoring every node:
``NodeClassifiers.best_paths``; ``top_down`` is the greedy walk from the root). Every prediction
is a valid path. Scores per level are the chained probabilities P(class) = P(parent) * P(class | parent).
Only losses whose classifiers give probabilities are accepted (``PROBA_LOSSES``).

Confidences are path-local: a class's probability is the product of the conditionals down its
path, so the answer's confidences read only the nodes along it (``NodeClassifiers.path_runs``),
and answering costs the path's nodes x the row's features, never rows x classes.
"""
from __future__ import annotations

import numpy as np

from ktt.confidence import PathChains
from ktt.sparse import PROBA_LOSSES
from ktt.tfidf import TfidfModel


class TfidfHSGD(TfidfModel):
    defaults = {**TfidfModel.defaults, "decode": "path"}
    constraints = {**TfidfModel.constraints, "loss": PROBA_LOSSES, "decode": ("path", "top_down")}

    def node_groups(self, codes):
        groups = [(0, -1, np.arange(len(codes)), codes[:, 0])]
        for d in range(1, self.hierarchy.depth):  # the rows under each class of level d - 1
            order = np.argsort(codes[:, d - 1], kind="stable")
            parents, starts = np.unique(codes[order, d - 1], return_index=True)
            for parent, rows in zip(parents, np.split(order, starts[1:])):
                groups.append((d, int(parent), rows, codes[rows, d]))
        return groups

    def conditional_proba(self, x) -> list[np.ndarray]:
        """Per level, P(class | its parent) for every class, ``(n, n_classes_at_level)``, from TF-IDF ``x``."""
        return self.nodes_.conditional(x)

    def proba_from_features(self, x):
        return self.hierarchy.chain(self.conditional_proba(x))

    def predict_from_features(self, x):
        if self.params["decode"] == "top_down":
            return self.nodes_.greedy(x)[0]
        return self.nodes_.best_paths(x)

    def rows_per_chunk(self):
        return 4096  # a row's confidences read its path's nodes: memory follows the path, not the classes (4,096: fastest measured)

    def path_chains(self, texts):
        codes, runs = self.nodes_.search(self.features(texts), self.params["decode"])
        return codes, PathChains.of_paths(runs)
