"""The model contract every KTT model implements (the scikit-learn estimator of KTT)."""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Protocol, Sequence

import numpy as np

from .hierarchy import Hierarchy


class FitLogger(Protocol):
    """What ``Model.fit`` reports to. ``ktt.tracking.RunLogger`` logs to MLflow and ``weights/``."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def checkpoint(self, model: "Model", kind: str, state: dict | None = None) -> None:
        """Save ``model`` as the ``best`` or ``last`` checkpoint (``state``: training state to resume)."""


class NullLogger:
    """A logger that keeps nothing: ``model.fit(train, val)`` works outside any tracking."""

    def log_metrics(self, metrics, step=None):
        pass

    def checkpoint(self, model, kind, state=None):
        pass


class Model(ABC):
    """A hierarchical classifier over a fixed :class:`Hierarchy`.

    Subclasses declare their hyperparameters and defaults in ``defaults``; ``__init__``
    rejects unknown names and casts values to the default's type, so command-line
    overrides (strings) and JSON values arrive typed.
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    checkpoint_ext: ClassVar[str] = ".pt"
    #: True when ``predict`` can only return valid paths (documented per model).
    consistent: ClassVar[bool] = False

    def __init__(self, hierarchy: Hierarchy, **params):
        self.hierarchy = hierarchy
        self.params = self.check_params(params)

    @classmethod
    def check_params(cls, params: dict) -> dict:
        unknown = sorted(set(params) - set(cls.defaults))
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {unknown} for model {cls.name!r}; "
                             f"known: {sorted(cls.defaults)}")
        out = dict(cls.defaults)
        for k, v in params.items():
            out[k] = _cast(k, v, cls.defaults[k])
        return out

    # -- training and inference -------------------------------------------------------
    @abstractmethod
    def fit(self, train, val, logger: FitLogger | None = None) -> "Model":
        """Train on ``train`` (a :class:`ktt.data.Split`), validating on ``val``."""

    @abstractmethod
    def predict_proba(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Scores per level: a list of ``(n, n_classes_at_level)`` arrays."""

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """``(n, depth)`` class indices; by default the path of the tree with the best joint score."""
        return self.hierarchy.decode_scores(self.predict_proba(texts), "path")

    def predict_paths(self, texts: Sequence[str]) -> list[list[str]]:
        """The predicted class name at every level, coarsest first."""
        return self.hierarchy.decode(self.predict(texts))

    def get_preprocessor(self):
        """A callable mapping raw texts to what the model (and its ONNX graph) consumes."""
        return lambda texts: list(texts)

    # -- persistence ------------------------------------------------------------------
    @abstractmethod
    def save(self, path: str | os.PathLike, state: dict | None = None) -> None:
        """Write everything needed to rebuild the model (and ``state``, to resume) to one file."""

    @classmethod
    @abstractmethod
    def load(cls, path: str | os.PathLike) -> "Model":
        """Rebuild a model from a checkpoint written by :meth:`save`."""

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> "Model":
        return cls.load(path)

    # -- export and monitoring (later stages) -------------------------------------------
    def gen_reference_set(self, split) -> "pd.DataFrame":  # noqa: F821
        """Reference rows for drift monitoring: ``targets``, features ``"0"``..``"23"``, leaf scores."""
        raise NotImplementedError(f"{self.name} cannot generate a reference set yet")

    def export_onnx(self, classifier_path, encoder_path=None) -> None:
        raise NotImplementedError(f"{self.name} cannot be exported to ONNX yet")

    def export_bento_resources(self, *args, **kwargs):
        raise NotImplementedError(f"{self.name} cannot be exported to BentoML yet")


def _cast(key: str, value, default):
    """Cast ``value`` to the type of ``default`` (strings from the command line included)."""
    if default is None or value is None:
        return value
    t = type(default)
    try:
        if t is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if t in (list, tuple):
            if isinstance(value, str):
                import json
                value = json.loads(value)
            return t(value)
        if t is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        if t is int and isinstance(value, str):
            f = float(value)
            if not f.is_integer():
                raise ValueError
            return int(f)
        return t(value)
    except (ValueError, TypeError):
        raise ValueError(f"hyperparameter {key!r}: {value!r} is not a valid {t.__name__}") from None
