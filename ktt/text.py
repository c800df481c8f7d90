"""Text normalisation shared by training and the (numpy-only) server."""
from __future__ import annotations

import re

_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)


def stem(texts, language: str = "english") -> list[str]:
    """Lower-case, split on non-word characters, Snowball-stem, re-join with single spaces."""
    import snowballstemmer

    words = snowballstemmer.stemmer(language).stemWords
    return [" ".join(words(_TOKEN.findall(t.lower()))) for t in texts]
