"""Confidences a team can act on: the temperature that calibrates a model's path distribution,
and the stopping threshold that reaches a target hierarchical precision.

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


def nll(path_scores: np.ndarray, leaves: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the true paths (``leaves``) under softmax(path_scores / T)."""
    z = np.asarray(path_scores, dtype=np.float64) / temperature
    top = z.max(axis=1)
    log_norm = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(z)), leaves]))


def fit_temperature(path_scores: np.ndarray, leaves: np.ndarray) -> float:
    """The temperature T that minimises the validation NLL of the true paths (Guo et al., 2017,
    applied to the distribution over whole paths): one number per model, found on a log scale
    within ``TEMPERATURE_RANGE``. Dividing every path's log-score by T never changes the most
    probable path."""
    from scipy.optimize import minimize_scalar

    if len(path_scores) == 0:
        return 1.0
    lo, hi = np.log(TEMPERATURE_RANGE)
    res = minimize_scalar(lambda lt: nll(path_scores, leaves, np.exp(lt)), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-4})
    return float(np.exp(res.x))


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
