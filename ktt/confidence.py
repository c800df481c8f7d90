"""Confidences a team can act on: the temperature of each level that calibrates a model's node
probabilities, and the stopping threshold that reaches a target hierarchical precision.

A model's per-level scores become a distribution over whole paths and every node's probability
(``Hierarchy.path_scores``, ``Hierarchy.node_proba``); this module fits what makes those
probabilities honest, on validation, and turns a target precision into a threshold. numpy only
(scipy when fitting): the server reads the saved curve with :func:`threshold_for`.
"""
from __future__ import annotations

import numbers

import numpy as np

from .errors import BadValue

MAX_CURVE_POINTS = 512  # a saved precision curve (in checkpoints and serving.json) stays small
TEMPERATURE_RANGE = (0.05, 20.0)


def check_target(value) -> float:
    """A target precision in (0, 1], or ``BadValue`` naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value <= 1:
        raise BadValue(f"target_precision must be a number above 0 and at most 1, not {value!r}")
    return float(value)


def brier(conf: np.ndarray, correct: np.ndarray) -> float:
    """Mean squared difference between a confidence and whether the class it is in is right."""
    return float(np.mean((np.asarray(conf, np.float64) - np.asarray(correct, np.float64)) ** 2))


def fit_temperatures(h, proba: list[np.ndarray], codes: np.ndarray, truth: np.ndarray) -> list[float]:
    """One temperature per level (``Hierarchy.temper``), fitted on labelled rows level by level
    from the top (level d's probabilities depend on T_1..T_d only): T_d minimises the Brier
    score of the confidence in the predicted class at level d against whether it is right,
    searched on a log scale within ``TEMPERATURE_RANGE``.

    Brier, not the likelihood of the true path: a TF-IDF model's clipped probabilities give the
    true path exactly 0 on some rows (6-12% of BigBasket's validation rows), and the likelihood
    then buys those rows a little probability by flattening every answer (T = 10, ECE .55)."""
    from scipy.optimize import minimize_scalar

    codes, truth = np.asarray(codes), np.asarray(truth)
    ts = [1.0] * h.depth
    if len(codes) == 0:
        return ts
    rows, lo_hi, above = np.arange(len(codes)), np.log(TEMPERATURE_RANGE), None
    for d in range(h.depth):  # the levels above are fitted and tempered once, not at every trial T
        right, cond = codes[:, d] == truth[:, d], h.conditional(proba, d)

        def loss(log_t, d=d, right=right, cond=cond, above=above):
            return brier(h.temper_level(d, cond, np.exp(log_t), above)[rows, codes[:, d]], right)

        ts[d] = float(np.exp(minimize_scalar(loss, bounds=tuple(lo_hi), method="bounded",
                                             options={"xatol": 1e-3}).x))
        above = h.temper_level(d, cond, ts[d], above)
    return ts


def precision_curve(h, codes: np.ndarray, conf: np.ndarray, truth: np.ndarray,
                    max_points: int = MAX_CURVE_POINTS) -> dict[str, list[float]]:
    """What each stopping threshold gives on labelled rows: ``threshold`` (ascending), the
    hierarchical ``precision`` of the answers it leaves and their ``coverage`` (the share of
    the predicted paths' classes still answered).

    With confidences that never rise down a path, a threshold answers each path down to its
    deepest class whose confidence clears it, and an answered class is right when the true path
    holds it: so every (row, level) of the predicted paths is one answered-or-not class, and one
    sort gives the precision at every threshold. Kept to at most ``max_points`` thresholds
    (exact at each)."""
    codes, conf = np.asarray(codes), np.asarray(conf, dtype=np.float64)
    real = np.arange(h.depth)[None, :] < h.path_depths(codes)[:, None]
    c, right = conf[real], (codes == np.asarray(truth))[real]
    if len(c) == 0:
        return {"threshold": [], "precision": [], "coverage": []}
    order = np.argsort(-c, kind="stable")
    c, hits = c[order], np.cumsum(right[order])
    last = np.r_[c[1:] != c[:-1], True]  # a threshold answers every class tied at it
    n = np.arange(1, len(c) + 1)[last]
    t, prec, cov = c[last][::-1], (hits[last] / n)[::-1], (n / len(c))[::-1]
    if len(t) > max_points:
        keep = np.unique(np.linspace(0, len(t) - 1, max_points).round().astype(int))
        t, prec, cov = t[keep], prec[keep], cov[keep]
    return {"threshold": t.tolist(), "precision": prec.tolist(), "coverage": cov.tolist()}


def threshold_for(curve: dict, target: float) -> float:
    """The lowest threshold of ``curve`` whose answers reach ``target`` precision (the most
    coverage at that precision); 1.0 (answer only certainties) when no threshold reaches it."""
    target = check_target(target)
    t, prec = np.asarray(curve["threshold"]), np.asarray(curve["precision"])
    ok = np.flatnonzero(prec >= target - 1e-12)
    return float(t[ok[0]]) if len(ok) else 1.0
