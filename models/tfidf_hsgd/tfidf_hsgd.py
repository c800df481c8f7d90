"""TF-IDF + one SGD classifier per parent node (root included), predicted top-down.

Every prediction is a valid path: each level picks among the children of the class
chosen one level up. Scores per level are the chained probabilities
P(class) = P(parent) * P(class | parent).
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import SGDClassifier

from ktt.model import Model, NullLogger
from models.tfidf_common import StemPreprocessor, load_sklearn, make_vectorizer, save_sklearn


class TfidfHSGD(Model):
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
                    level[int(parent)] = SGDClassifier(loss=p["loss"], alpha=p["alpha"], max_iter=p["max_iter"],
                                                       random_state=p["seed"], n_jobs=-1, tol=1e-4).fit(x[rows], y)
            self.nodes_.append(level)
        logger.checkpoint(self, "best")
        return self

    def conditional_proba(self, texts) -> list[np.ndarray]:
        """Per level, P(class | its parent) for every class, ``(n, n_classes_at_level)``."""
        x = self.vectorizer_.transform(self.preprocessor_(texts))
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

    def predict_proba(self, texts):
        cond = self.conditional_proba(texts)
        out = [cond[0]]
        for d in range(1, self.hierarchy.depth):
            out.append(out[-1][:, self.hierarchy.parent_of(d)] * cond[d])
        return out

    def predict(self, texts):
        cond = self.conditional_proba(texts)
        codes = np.empty((len(texts), self.hierarchy.depth), dtype=np.int64)
        codes[:, 0] = cond[0].argmax(axis=1)
        for d in range(1, self.hierarchy.depth):
            # -1 outside the chosen parent's children, so argmax stays under the parent
            under = self.hierarchy.parent_of(d)[None, :] == codes[:, d - 1][:, None]
            codes[:, d] = np.where(under, cond[d], -1.0).argmax(axis=1)
        return codes

    def save(self, path, state=None):
        save_sklearn(self, path, {k: getattr(self, k) for k in ("preprocessor_", "vectorizer_", "nodes_")})

    @classmethod
    def load(cls, path):
        return load_sklearn(cls, path)
