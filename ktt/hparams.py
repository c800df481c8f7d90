"""Hyperparameters: ``hyperparameters.json`` (one object per model) plus command-line overrides."""
from __future__ import annotations

import json
import os
from pathlib import Path

DEFAULT_FILE = Path(__file__).resolve().parent.parent / "hyperparameters.json"


def load(model: str, path: str | os.PathLike | None = None) -> dict:
    """The model's entry in ``hyperparameters.json`` (``{}`` when it has none)."""
    path = Path(path or os.environ.get("KTT_HYPERPARAMETERS", DEFAULT_FILE))
    if not path.exists():
        return {}
    try:
        entry = json.loads(path.read_text()).get(model, {})
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    # "tune" holds the search space, "_tuned_from" where tuned values came from
    return {k: v for k, v in entry.items() if k != "tune" and not k.startswith("_")}


def parse_overrides(pairs) -> dict:
    """``["alpha=0.001", "loss=hinge"]`` -> ``{"alpha": "0.001", ...}`` (typed by the model)."""
    out = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"hyperparameter override {pair!r} is not of the form name=value")
        out[key.strip()] = value.strip()
    return out
