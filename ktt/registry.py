"""Models created by name through one door (as in timm).

``create(name, hierarchy, **overrides)`` is the one way to build a model: the class's
``defaults``, then its entry in ``hyperparameters.json``, then ``overrides``, each value typed
and checked by the class. ``ktt train``, ``ktt tune``, ``ktt experiment`` and a notebook all
build models here, so they train the same model for the same name.
"""
from __future__ import annotations

import importlib

from .errors import UnknownName

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
        for name, target in importlib.import_module("models").MODELS.items():
            register(name, target)


def available() -> list[str]:
    _load_bundled()
    return sorted(_MODELS)


def get(name: str):
    """The model class registered as ``name``."""
    _load_bundled()
    if name not in _MODELS:
        raise UnknownName(f"unknown model {name!r}; available: {', '.join(sorted(_MODELS))}")
    module, _, cls = _MODELS[name].partition(":")
    klass = getattr(importlib.import_module(module), cls)
    klass._registered_name = name  # Model.name
    return klass


def params(name: str, overrides: dict | None = None, file=None) -> dict:
    """Every hyperparameter of model ``name``: defaults < ``hyperparameters.json`` < ``overrides``."""
    from . import hparams

    return get(name).check_params({**hparams.load(name, file), **(overrides or {})})


def create(name: str, hierarchy, file=None, **overrides):
    """A new, unfitted model ``name`` over ``hierarchy`` (hyperparameters as in :func:`params`)."""
    return get(name)(hierarchy, **params(name, overrides, file))
