"""Models found by name (as in timm): ``register`` a lazily imported class, ``get`` it by name."""
from __future__ import annotations

import importlib

_MODELS: dict[str, str] = {}
_loaded = False


def register(name: str, target: str) -> None:
    """Register ``target`` (``"package.module:Class"``) as model ``name``; imported on first use."""
    if name in _MODELS and _MODELS[name] != target:
        raise ValueError(f"model {name!r} is already registered as {_MODELS[name]}")
    _MODELS[name] = target


def _load_bundled() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        importlib.import_module("models")  # its __init__ registers the bundled models


def available() -> list[str]:
    _load_bundled()
    return sorted(_MODELS)


def get(name: str):
    """The model class registered as ``name``."""
    _load_bundled()
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(_MODELS))}")
    module, _, cls = _MODELS[name].partition(":")
    model_cls = getattr(importlib.import_module(module), cls)
    model_cls.name = name
    return model_cls
