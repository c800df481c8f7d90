"""Text normalisation shared by training and the (numpy-only) server."""
from __future__ import annotations

import re

_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)
# in ASCII, the letters and digits are exactly [a-zA-Z0-9]: every other character separates words
_ASCII_SEPARATORS = str.maketrans({c: " " for c in map(chr, range(128)) if not c.isalnum()})


def words(texts) -> list[list[str]]:
    """Per text, its lower-cased words (runs of letters and digits). An ASCII text takes a faster
    route to the same words (translate and split run in C, the regular expression per character)."""
    lowered = (t.lower() for t in texts)
    return [t.translate(_ASCII_SEPARATORS).split() if t.isascii() else _TOKEN.findall(t) for t in lowered]


def stemmer(language: str):
    """``stemWords(list) -> list``: the C Snowball stemmer (PyStemmer) that ``snowballstemmer``
    hands over to when it is installed; the same algorithms as its pure-Python fallback,
    checked word for word by the tests."""
    import snowballstemmer

    return snowballstemmer.stemmer(language)


def stem(texts, language: str = "english") -> list[str]:
    """Lower-case, split into words, Snowball-stem, re-join with single spaces. Each distinct
    word is stemmed once per call: a catalog repeats its words."""
    per_text = words(texts)
    vocabulary = list({w: None for ws in per_text for w in ws})
    stems = dict(zip(vocabulary, stemmer(language).stemWords(vocabulary)))
    return [" ".join([stems[w] for w in ws]) for ws in per_text]


#: A spreadsheet runs a cell that starts with one of these as a formula (CSV injection, OWASP).
FORMULA = ("=", "+", "-", "@", "\t", "\r")
_ESCAPED = FORMULA + ("'",)  # a leading ' is escaped too, so that unescape is the exact inverse


def spreadsheet_safe(df):
    """``df`` for a CSV a person may open in a spreadsheet: a text cell that would start a formula
    (or starts with ``'``) gets a leading ``'`` (shown as text, not run); :func:`unescape` takes it
    off on the way back, exactly."""
    import pandas as pd

    out = df.copy()
    for col in out.columns:
        s = out[col]
        if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)
                or pd.api.types.is_datetime64_any_dtype(s)):  # object, string, Arrow and categorical text
            out[col] = pd.Series([("'" + v) if isinstance(v, str) and v.startswith(_ESCAPED) else v for v in s],
                                 index=s.index, dtype=object)
    return out


def unescape(values):
    """The inverse of :func:`spreadsheet_safe` on a column read back from a CSV it wrote."""
    return [v[1:] if isinstance(v, str) and v.startswith("'") and v[1:].startswith(_ESCAPED) else v for v in values]
