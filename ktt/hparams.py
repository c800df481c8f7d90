"""``hyperparameters.json``: per model, a ``tune`` search space and any values that override the
class defaults (written by ``ktt tune --write-back``), plus command-line ``name=value`` overrides."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import BadValue

DEFAULT_FILE = Path(__file__).resolve().parent.parent / "hyperparameters.json"


def file(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$KTT_HYPERPARAMETERS``, else the repository's ``hyperparameters.json``."""
    return Path(path or os.environ.get("KTT_HYPERPARAMETERS", DEFAULT_FILE))


def entry(model: str, path: str | os.PathLike | None = None) -> dict:
    """The model's whole entry (``{}`` when the file or the entry is absent)."""
    path = file(path)
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text()).get(model, {})
    except json.JSONDecodeError as e:
        raise BadValue(f"{path}: not valid JSON: {e}") from None


def load(model: str, path: str | os.PathLike | None = None) -> dict:
    """The values the file sets for ``model`` (``tune`` holds the search space, ``_tuned_from``
    where tuned values came from)."""
    return {k: v for k, v in entry(model, path).items() if k != "tune" and not k.startswith("_")}


def parse_overrides(pairs) -> dict:
    """``["alpha=0.001", "loss=hinge"]`` -> ``{"alpha": "0.001", ...}`` (typed by the model)."""
    out = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BadValue(f"hyperparameter override {pair!r} is not of the form name=value")
        out[key.strip()] = value.strip()
    return out
