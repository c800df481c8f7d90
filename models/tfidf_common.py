"""What both TF-IDF models share: stemming, the vectoriser, and checkpoint I/O."""
from __future__ import annotations

import pickle
import re

import numpy as np

import snowballstemmer
from sklearn.feature_extraction.text import TfidfVectorizer

from ktt.hierarchy import Hierarchy

_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)


class StemPreprocessor:
    """Lower-case, split on non-word characters, Snowball-stem, re-join with spaces.

    Kept outside the vectoriser so the ONNX graph (and the serving environment) sees
    plain space-separated tokens.
    """

    def __init__(self, language: str = "english"):
        self.language = language
        self._stemmer = snowballstemmer.stemmer(language)

    def __call__(self, texts):
        stem = self._stemmer.stemWords
        return [" ".join(stem(_TOKEN.findall(t.lower()))) for t in texts]

    def __getstate__(self):
        return {"language": self.language}

    def __setstate__(self, state):
        self.__init__(state["language"])


def make_vectorizer(params: dict) -> TfidfVectorizer:
    return TfidfVectorizer(min_df=params["min_df"], ngram_range=(1, params["ngram_max"]),
                           sublinear_tf=True, token_pattern=r"\S+", lowercase=False, dtype=np.float32)


def save_sklearn(model, path, fitted: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump({"model": model.name, "params": model.params, "hierarchy": model.hierarchy.to_dict(),
                     "fitted": fitted}, f, protocol=pickle.HIGHEST_PROTOCOL)


def load_sklearn(cls, path):
    with open(path, "rb") as f:
        ckpt = pickle.load(f)
    if ckpt.get("model") != cls.name:
        raise ValueError(f"{path} is a {ckpt.get('model')!r} checkpoint, not {cls.name!r}")
    model = cls(Hierarchy.from_dict(ckpt["hierarchy"]), **ckpt["params"])
    for k, v in ckpt["fitted"].items():
        setattr(model, k, v)
    return model
