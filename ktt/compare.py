"""Is a difference between two models more than luck? Mean and spread over seeds, and paired
bootstrap confidence intervals over the same test rows (numpy only).

A run keeps, per test row, what its hierarchical F1 and leaf accuracy pool
(``metrics.row_counts``); resampling rows with replacement, the same rows for both models,
recomputes both metrics exactly, and the spread of the difference over resamples is its
interval. Runs of several seeds are pooled: seed i of one model is paired with seed i of the
other, their rows stacked.
"""
from __future__ import annotations

import numpy as np

from .errors import BadValue

METRICS = ("h_f1", "leaf_accuracy")


def mean_sd(values) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise BadValue("no values to average")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def pooled(counts: dict, weights: np.ndarray | None = None) -> dict[str, np.ndarray | float]:
    """``h_f1`` and ``leaf_accuracy`` from per-row counts; with ``weights`` ``(k, n)`` (how often
    each row is drawn in each of k resamples), one value per resample."""
    def total(key):
        x = np.asarray(counts[key], dtype=np.float64)
        return x.sum() if weights is None else weights @ x
    n = len(counts["leaf_right"]) if weights is None else weights.sum(axis=1)
    return {"h_f1": 2 * total("shared") / (total("predicted") + total("true")), "leaf_accuracy": total("leaf_right") / n}


def stack(runs: list[dict]) -> dict[str, np.ndarray]:
    """The rows of several runs (seeds) as one set of rows."""
    return {k: np.concatenate([np.asarray(r[k]) for r in runs]) for k in runs[0]}


def paired_bootstrap(a: dict, b: dict, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                     chunk: int = 100) -> dict[str, dict[str, float]]:
    """Per metric: ``a`` and ``b`` on all rows, ``diff`` = b - a, and the ``level`` percentile
    interval (``low``, ``high``) of the difference over ``n_boot`` resamples of the rows, the
    same rows for both; ``significant`` when the interval excludes 0. ``a`` and ``b``: per-row
    counts over the same rows, in the same order (``metrics.row_counts``, :func:`stack`)."""
    n = len(a["leaf_right"])
    if len(b["leaf_right"]) != n or n == 0:
        raise BadValue(f"the two sides hold {n} and {len(b['leaf_right'])} rows: compare runs on the same test rows")
    rng, diffs = np.random.default_rng(seed), {m: [] for m in METRICS}
    for start in range(0, n_boot, chunk):
        w = rng.multinomial(n, np.full(n, 1 / n), size=min(chunk, n_boot - start)).astype(np.float64)
        ra, rb = pooled(a, w), pooled(b, w)
        for m in METRICS:
            diffs[m].append(rb[m] - ra[m])
    full_a, full_b, out = pooled(a), pooled(b), {}
    tail = (1 - level) / 2 * 100
    for m in METRICS:
        low, high = np.percentile(np.concatenate(diffs[m]), [tail, 100 - tail])
        out[m] = {"a": float(full_a[m]), "b": float(full_b[m]), "diff": float(full_b[m] - full_a[m]),
                  "low": float(low), "high": float(high), "significant": bool(low > 0 or high < 0)}
    return out


def format_interval(x: dict, mark: str = " significant") -> str:
    """One metric of :func:`paired_bootstrap` as ``+0.0049 [+0.0012, +0.0086]``, plus ``mark``
    when the interval excludes 0."""
    return f"{x['diff']:+.4f} [{x['low']:+.4f}, {x['high']:+.4f}]" + (mark if x["significant"] else "")
