"""The model contract every KTT model implements (the scikit-learn estimator of KTT)."""
from __future__ import annotations

import logging
import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Sequence

import numpy as np

from .errors import BadValue
from .hierarchy import Hierarchy

log = logging.getLogger(__name__)


class FitLogger(Protocol):
    """What ``Model.fit`` reports to. ``ktt.tracking.RunLogger`` logs to MLflow and ``weights/``."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def checkpoint(self, model: "Model", kind: str, state: dict | None = None) -> None:
        """Save ``model`` as the ``best`` or ``last`` checkpoint (``state``: training state to resume).
        A model that selects nothing while it fits (no epochs) need not: ``ktt train`` saves the
        fitted model as ``best`` once calibrated."""


class NullLogger:
    """A logger that keeps nothing: ``model.fit(train, val)`` works outside any tracking."""

    def log_metrics(self, metrics, step=None):
        pass

    def checkpoint(self, model, kind, state=None):
        pass


@dataclass(frozen=True)
class Interval:
    """A numeric constraint: ``Interval(0, 1, closed="left")`` is [0, 1); ``None`` is unbounded."""

    low: float | None = None
    high: float | None = None
    closed: str = "both"  # which ends belong: both, left, right, neither

    def __contains__(self, v) -> bool:
        lo_ok = self.low is None or (v >= self.low if self.closed in ("both", "left") else v > self.low)
        hi_ok = self.high is None or (v <= self.high if self.closed in ("both", "right") else v < self.high)
        return lo_ok and hi_ok

    def __str__(self) -> str:
        left = "[" if self.closed in ("both", "left") and self.low is not None else "("
        right = "]" if self.closed in ("both", "right") and self.high is not None else ")"
        return f"{left}{'-inf' if self.low is None else self.low}, {'inf' if self.high is None else self.high}{right}"


@dataclass(frozen=True)
class Pattern:
    """A string constraint: the whole value matches ``regex``; ``what`` describes it in errors."""

    regex: str
    what: str

    def __contains__(self, v) -> bool:
        return isinstance(v, str) and re.fullmatch(self.regex, v) is not None

    def __str__(self) -> str:
        return self.what


class _RegisteredName:
    """``Model.name``: the name ``ktt.registry.get`` loaded the class under, else its module's
    last part (``models/db_bhcn/db_bhcn.py`` is ``db_bhcn``, as the bundled and plug-in
    layout has it). The registry writes the name; the model never asks for it."""

    def __get__(self, obj, cls) -> str:
        return cls.__dict__.get("_registered_name") or cls.__module__.rsplit(".", 1)[-1]


class Model(ABC):
    """A hierarchical classifier over a fixed :class:`Hierarchy`.

    Subclasses declare every hyperparameter and its default in ``defaults`` and, where a value
    can be wrong, its allowed values in ``constraints`` (a tuple of choices, an
    :class:`Interval` or a :class:`Pattern`). ``__init__`` rejects unknown names, casts values
    to the default's type (command-line overrides arrive as strings) and checks constraints.
    """

    name: ClassVar[str] = _RegisteredName()
    #: ``threshold``: answers stop at the deepest level whose confidence (the probability the
    #: model gives that class) is at least this; 0 answers every level (``Hierarchy.answer_depths``).
    #: ``target_precision`` (0: off): :meth:`calibrate` picks the threshold that reaches this
    #: hierarchical precision on validation, and answers use it instead of ``threshold``, never
    #: below a level that validation did not bring to the target (:meth:`stop`).
    defaults: ClassVar[dict[str, Any]] = {"threshold": 0.0, "target_precision": 0.0}
    constraints: ClassVar[dict[str, Any]] = {"threshold": Interval(0, 1), "target_precision": Interval(0, 1)}
    #: How the model's per-level scores (:meth:`raw_scores`) score a whole path: ``leaf``,
    #: ``joint`` or ``logits`` (each class's log-odds; ``Hierarchy.path_scores``). Its semantics,
    #: declared once: every confidence, decoding and threshold follows from it.
    paths: ClassVar[str] = "joint"
    #: Convenience (for tests and readers, read by nothing else): True when ``predict`` can only
    #: return valid paths.
    consistent: ClassVar[bool] = False
    #: Hyperparameters a resumed fit may change; every other one comes from the checkpoint.
    resumable: ClassVar[frozenset[str]] = frozenset()
    #: Hyperparameters an update (``ktt train --from``) takes from the old model with what it keeps
    #: (its vectoriser, encoder or head's shapes): an override of one is refused, not ignored.
    kept_on_update: ClassVar[frozenset[str]] = frozenset()
    #: True when ``fit`` trains on several processes under torchrun (:mod:`ktt.distributed`).
    distributable: ClassVar[bool] = False
    #: True when ``fit``'s parallel work goes through joblib, so it can run on Spark
    #: (``ktt train --spark``, :func:`ktt.distributed.spark_backend`).
    joblib_fit: ClassVar[bool] = False
    #: What the server scores with: ``onnx`` (:meth:`export_onnx`'s two graphs) or ``arrays``
    #: (the model's ``export_arrays``: ``tfidf.npz``, scored by ``ktt.sparse``).
    served_from: ClassVar[str] = "onnx"
    #: Monitoring: the share of the reference set's pooled feature columns that must drift for the
    #: drift sidecar to report dataset drift (written into the service's ``evidently.yaml``).
    drift_share: ClassVar[float] = 0.5
    #: Copies of a name row (``ktt.zeroshot``) a fit adds for each class no training row has, so
    #: that a category added without rows is answered from its name (0: never).
    name_rows: ClassVar[int] = 5
    #: Tiny settings ``ktt.testing.check_model`` fits with (a few seconds on a CPU): a subclass
    #: adds its own (small heads, one epoch).
    test_params: ClassVar[dict[str, Any]] = {"target_precision": 0.9}

    def __init__(self, hierarchy: Hierarchy, **params):
        self.hierarchy = hierarchy
        self.params = self.check_params(params)

    @classmethod
    def check_params(cls, params: dict) -> dict:
        """``defaults`` updated with ``params``, typed and checked; ``BadValue`` names the bad entry."""
        unknown = sorted(set(params) - set(cls.defaults))
        if unknown:
            raise BadValue(f"unknown hyperparameter(s) {unknown} for model {cls.name!r}; "
                           f"known: {sorted(cls.defaults)}")
        out = dict(cls.defaults)
        for k, v in params.items():
            out[k] = _cast(k, v, cls.defaults[k])
        for k, allowed in cls.constraints.items():
            if out[k] not in allowed:
                want = f"one of {list(allowed)}" if isinstance(allowed, (tuple, list, frozenset, set)) else \
                    f"in {allowed}" if isinstance(allowed, Interval) else str(allowed)
                raise BadValue(f"hyperparameter {k!r} of model {cls.name!r}: {out[k]!r} is not {want}")
        return out

    # -- training and inference -------------------------------------------------------
    @abstractmethod
    def fit(self, train, val, logger: FitLogger | None = None) -> "Model":
        """Train on ``train`` (a :class:`ktt.data.Split`), validating on ``val``."""

    def update(self, old: "Model", diff, train, val, logger: FitLogger | None = None) -> "Model":
        """Train on ``train`` starting from ``old``, the same model trained on the taxonomy that
        ``diff`` (a :class:`ktt.taxonomy.Diff`) leads from to this model's: what is unchanged keeps
        its weights (``ktt train --from RUN``)."""
        raise BadValue(f"{self.name} cannot update a trained model; train it from scratch")

    @abstractmethod
    def raw_scores(self, texts: Sequence[str]) -> list[np.ndarray]:
        """The model's own scores per level, ``[(n, n_classes_at_level), ...]``, before they
        become path probabilities by its ``paths`` rule (:meth:`calibrated`)."""

    @property
    def temperatures(self) -> list[float]:
        """The temperature of each level that :meth:`calibrate` fitted (all 1 before it ran)."""
        return (getattr(self, "calibration_", None) or {}).get("temperatures", [1.0] * self.hierarchy.depth)

    @property
    def level_maps(self) -> list | None:
        """Each level's map of its confidence that :meth:`calibrate` fitted
        (``confidence.fit_level_maps``; None before it ran, or in a checkpoint from before maps)."""
        return (getattr(self, "calibration_", None) or {}).get("level_maps")

    def calibrated(self, raw: list[np.ndarray], temperatures=None) -> tuple[np.ndarray, list[np.ndarray]]:
        """From :meth:`raw_scores`: the paths decoded by the ``decode`` hyperparameter (default
        ``path``: the most probable whole path) and every class's probability, per level: the sum
        over the paths through it of the path distribution, each level softened by its temperature
        (default: the fitted ones; ``Hierarchy.answer_scores``)."""
        return self.hierarchy.answer_scores(raw, self.paths, self.params.get("decode", "path"),
                                            self.temperatures if temperatures is None else temperatures)

    def predict_scored(self, texts: Sequence[str]) -> tuple[np.ndarray, list[np.ndarray]]:
        """``predict`` and ``predict_proba`` together, from one pass over the texts."""
        return self.calibrated(self.raw_scores(texts))

    def path_chains(self, texts: Sequence[str]) -> tuple[np.ndarray, "PathChains"]:  # noqa: F821
        """The decoded paths of ``texts`` and what their confidences read, before temperatures
        (``ktt.confidence.PathChains``: each path class's siblings, P(class | parent)). Here from
        every class's probability (rows x classes); a chained model may read only its paths' nodes."""
        from .confidence import PathChains

        codes, proba = self.calibrated(self.raw_scores(texts), temperatures=1.0)
        return codes, PathChains.gather(self.hierarchy, proba, codes)

    def rows_per_chunk(self) -> int:
        """Rows :meth:`predict_confident` and :meth:`calibrate` score at once (:func:`chunk_rows`:
        all classes' scores of that many rows stay bounded)."""
        return chunk_rows(self.hierarchy)

    def chains(self, texts: Sequence[str]) -> tuple[np.ndarray, "PathChains"]:  # noqa: F821
        """:meth:`path_chains` of all ``texts``, :meth:`rows_per_chunk` at a time."""
        from .confidence import PathChains

        step, codes, parts = self.rows_per_chunk(), [], []
        for i in range(0, max(len(texts), 1), step):
            c, chains = self.path_chains(texts[i:i + step])
            codes.append(c), parts.append(chains)
        return np.concatenate(codes), PathChains.concat(parts)

    def predict_confident(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``predict`` and each level's confidence in the predicted class, ``(n, depth)`` both:
        the tempered probability of each prefix of the path, read from :meth:`path_chains` (what
        ``Hierarchy.temper`` of every class would give, at the cost of the paths' sibling runs),
        through each level's map (:attr:`level_maps`)."""
        from .confidence import recalibrate

        step, codes, conf = self.rows_per_chunk(), [], []
        for i in range(0, max(len(texts), 1), step):
            c, chains = self.path_chains(texts[i:i + step])
            codes.append(c), conf.append(recalibrate(self.hierarchy, c, chains.confidences(self.temperatures), self.level_maps))
        return np.concatenate(codes), np.concatenate(conf)

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """``(n, depth)`` class indices (valid paths unless ``decode=argmax``)."""
        return self.predict_scored(texts)[0]

    def predict_proba(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Per level, ``(n, n_classes_at_level)``: the probability the model gives each class, a
        parent never below its children (every front-end's confidence)."""
        return self.predict_scored(texts)[1]

    def calibrate(self, val, max_rows: int = 20_000, seed: int = 0) -> dict:
        """Fit what makes the confidences honest on ``val`` (a :class:`ktt.data.Split`; at most
        ``max_rows`` of it, sampled): a temperature per level (``confidence.fit_temperatures``),
        a map of each level's confidence (``confidence.fit_level_maps``), then the precision each stopping threshold gives (pooled and level by level:
        ``confidence.target_curve``), and where answers stop for ``target_precision`` (a threshold,
        and the depth the target holds to: ``confidence.stop_for``; a shortfall is logged). Kept
        in ``calibration_``, saved with the model, and read by every front-end. ``ktt train``
        runs it after every fit."""
        from .confidence import fit_level_maps, fit_temperatures, recalibrate, shortfall, stop_for, target_curve

        h, rows = self.hierarchy, calibration_rows(len(val), max_rows, seed)
        codes, chains = self.chains([val.texts[i] for i in rows])
        truth = val.codes[rows]
        temperatures = fit_temperatures(h, chains, codes, truth)
        conf = chains.confidences(temperatures)
        maps = fit_level_maps(h, conf, codes, truth)
        curve = target_curve(h, codes, recalibrate(h, codes, conf, maps), truth)
        target = self.params["target_precision"]
        threshold, max_depth = stop_for(curve, target) if target else (None, None)
        if target and (why := shortfall(curve, target)):
            log.warning("%s: %s", self.name, why)
        self.calibration_ = {"temperatures": temperatures, "level_maps": maps, "curve": curve, "threshold": threshold,
                             "max_depth": max_depth}
        return self.calibration_

    def stop(self, threshold=None, target_precision=None) -> tuple:
        """Where answers stop: ``(threshold, max_depth)`` (``Hierarchy.stop_depths``). ``threshold``
        (one, or one per text) when given, with no cap; else the threshold and the depth that
        reach ``target_precision`` on validation (``confidence.stop_for``); else the model's own
        (those :meth:`calibrate` chose for the ``target_precision`` hyperparameter, or
        ``threshold``). ``max_depth`` None: no cap (a checkpoint from before caps, too)."""
        from .confidence import stop_for

        cal = getattr(self, "calibration_", None) or {}
        if threshold is not None:
            return threshold, None
        if target_precision is not None:
            if not cal.get("curve"):
                raise BadValue(f"this {self.name} model has no precision curve (it was not calibrated): "
                               "send a threshold, or retrain it")
            return stop_for(cal["curve"], target_precision)
        if cal.get("threshold") is not None:
            return cal["threshold"], cal.get("max_depth")
        return self.params.get("threshold", 0.0), None

    def stop_threshold(self, threshold=None, target_precision=None):
        """The threshold of :meth:`stop`, without its depth cap."""
        return self.stop(threshold, target_precision)[0]

    def predict_paths(self, texts: Sequence[str], threshold: float | None = None,
                      target_precision: float | None = None) -> list[list[str]]:
        """Convenience: :meth:`answers` without the confidences. The predicted class names,
        coarsest first, down to where the path ends or to its deepest level whose confidence
        clears the threshold (:meth:`stop`)."""
        return [[name for name, _ in a] for a in self.answers(texts, threshold, target_precision)]

    def answers(self, texts: Sequence[str], threshold: float | None = None,
                target_precision: float | None = None) -> list[list[tuple[str, float]]]:
        """``predict_paths`` with each level's confidence: ``[(class name, confidence), ...]`` per text."""
        return self.hierarchy.answers_of(*self.predict_confident(texts), *self.stop(threshold, target_precision))

    # -- persistence ------------------------------------------------------------------
    @abstractmethod
    def save(self, path: str | os.PathLike, state: dict | None = None) -> None:
        """Write everything needed to rebuild the model (and ``state``, to resume) to one file."""

    @classmethod
    @abstractmethod
    def load(cls, path: str | os.PathLike) -> "Model":
        """Rebuild a model from a checkpoint written by :meth:`save`."""

    # -- export, serving and monitoring -------------------------------------------------
    def export_onnx(self, classifier_path, encoder_path) -> None:
        """Write ``encoder.onnx`` (the :meth:`serving_config` input -> ``features``) and
        ``classifier.onnx`` (``features`` -> ``scores`` of all classes, level by level). A model
        served from arrays instead (``export_arrays``, ``served_from = "arrays"``) needs neither."""
        raise NotImplementedError(f"{self.name} cannot be exported to ONNX")

    def serving_config(self) -> dict:
        """What the numpy-only server needs besides the graphs: ``input`` (how texts become the
        encoder's input) and :meth:`answer_config`."""
        raise NotImplementedError(f"{self.name} cannot be served")

    def answer_config(self) -> dict:
        """How scores become answers, for the server (``ktt.serving.runtime.Predictor``) exactly as
        in-process: the hierarchy, ``paths``, ``decode``, the temperatures and level maps, the default threshold
        and depth cap (:meth:`stop`) and the validation precision curves (for requests that send
        a ``target_precision``)."""
        from .taxonomy import digest

        cal = getattr(self, "calibration_", None) or {}
        threshold, max_depth = self.stop()
        return {"model": self.name, "taxonomy": digest(self.hierarchy), "paths": self.paths, "decode": self.params.get("decode", "path"),
                "temperatures": self.temperatures, "level_maps": self.level_maps, "threshold": threshold, "max_depth": max_depth,
                "precision_curve": cal.get("curve"), "hierarchy": self.hierarchy.to_dict()}

    def features(self, texts: Sequence[str]):
        """What the model makes of ``texts`` before its head: ``(n, d)`` pooled encoder states, or a
        sparse ``(n, vocabulary)`` TF-IDF matrix. Drift monitoring pools it (``ktt.schema``)."""
        raise NotImplementedError(f"{self.name} cannot be monitored (it has no features())")

    def gen_reference_set(self, split) -> "pd.DataFrame":  # noqa: F821
        """Reference rows for drift monitoring: ``targets`` (the true leaf), then :meth:`monitoring_frame`."""
        names = self.hierarchy.leaf_names
        df = self.monitoring_frame(split.texts)
        df.insert(0, "targets", [names[c] for c in split.codes[:, -1]])
        return df

    def monitoring_frame(self, texts: Sequence[str]) -> "pd.DataFrame":  # noqa: F821
        """What the service forwards to the drift sidecar for ``texts`` (``ktt.schema.reference_frame``):
        the model's ``features(texts)`` pooled into ``"0"``..``"23"``, leaf scores, level columns."""
        from .confidence import recalibrate
        from .schema import level_columns, reference_frame

        texts, h = list(texts), self.hierarchy
        feats = self.features(texts)
        codes, scores = self.predict_scored(texts)
        conf = recalibrate(h, codes, h.confidences(codes, scores), self.level_maps)
        return reference_frame(feats, scores[-1], h.leaf_names, levels=level_columns(codes, conf))


def calibration_rows(n: int, max_rows: int, seed: int) -> np.ndarray:
    """The validation rows calibration reads: all ``n``, or a sorted sample of ``max_rows``."""
    rows = np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(rows, max_rows, replace=False)) if n > max_rows else rows


SCORES_PER_CHUNK = 1 << 23  # 64 MB of float64 scores, all classes of a chunk's rows


def chunk_rows(h) -> int:
    """Rows to score at once: all classes' scores of at most ``SCORES_PER_CHUNK``, 64 to 4,096 rows
    (4,096 up to about 2,000 classes; about 400 for a catalog's 21,000)."""
    return int(np.clip(SCORES_PER_CHUNK // max(h.n_classes, 1), 64, 4096))


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
        raise BadValue(f"hyperparameter {key!r}: {value!r} is not a valid {t.__name__}") from None
