"""Is a difference between two models more than luck? Mean and spread over seeds, and paired
bootstrap confidence intervals over the same test texts (numpy only).

A run keeps, per test row, what its hierarchical F1 and leaf accuracy pool
(``metrics.row_counts``), so any reweighting of the rows recomputes both metrics exactly. A side
of a comparison is a model's runs over several seeds, each scoring the same n test texts: a
(seeds x texts) array per count, its metric the counts summed over seeds and texts. A resample
draws the n texts with replacement once and gives every seed of both sides the same weights: the
k seeds' rows of one text are k looks at one text (its outcome is nearly the same under every
seed), not k independent texts, and resampling them independently would narrow the interval as if
the test set were k times larger. The spread of the difference over resamples is its interval.
Optionally (``resample="seeds-and-texts"``) each side's seeds are drawn with replacement first,
independently per side, so that the interval also carries the variation between trainings.
"""
from __future__ import annotations

import numpy as np

from .errors import BadValue

METRICS = ("h_f1", "leaf_accuracy")
RESAMPLE = ("texts", "seeds-and-texts")
KEYS = ("shared", "predicted", "true", "leaf_right")


def mean_sd(values) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise BadValue("no values to average")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def pooled(counts: dict, weights: np.ndarray | None = None,
           seed_weights: np.ndarray | None = None) -> dict[str, np.ndarray | float]:
    """``h_f1`` and ``leaf_accuracy`` from per-row counts, ``(texts,)`` for one seed or ``(seeds,
    texts)``, summed over seeds and texts. With ``weights`` ``(k, texts)`` (how often each text
    is drawn in each of k resamples, the same for every seed) and optionally ``seed_weights``
    ``(k, seeds)`` (how often each seed is drawn), one value per resample."""
    def total(x):
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        per_text = x.sum(axis=0) if seed_weights is None else seed_weights @ x  # (texts,) or (k, texts)
        if weights is None:
            return per_text.sum(axis=-1)
        return weights @ per_text if per_text.ndim == 1 else (weights * per_text).sum(axis=1)
    rows = total(np.ones(np.shape(np.atleast_2d(counts["leaf_right"]))))
    return {"h_f1": 2 * total(counts["shared"]) / (total(counts["predicted"]) + total(counts["true"])),
            "leaf_accuracy": total(counts["leaf_right"]) / rows}


def _side(runs: list[dict]) -> dict[str, np.ndarray]:
    """Per-seed counts (one :func:`metrics.row_counts` dict per seed) as ``(seeds, texts)`` arrays."""
    if not runs:
        raise BadValue("a side holds no runs")
    if len({len(r["leaf_right"]) for r in runs}) > 1:
        raise BadValue(f"the seeds of a side hold {sorted({len(r['leaf_right']) for r in runs})} rows: "
                       "compare runs on the same test rows")
    return {k: np.stack([np.asarray(r[k]) for r in runs]) for k in KEYS}


def _draws(rng, n: int, k: int) -> np.ndarray:
    """``(k, n)``: how often each of n items is drawn in each of k draws of n with replacement."""
    picks = rng.integers(0, n, size=(k, n)) + n * np.arange(k)[:, None]
    return np.bincount(picks.ravel(), minlength=k * n).reshape(k, n).astype(np.float64)


def paired_bootstrap(a: list[dict], b: list[dict], n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                     chunk: int = 100, resample: str = "texts") -> dict[str, dict[str, float]]:
    """Per metric: ``a`` and ``b`` on all rows, ``diff`` = b - a, and the ``level`` percentile
    interval (``low``, ``high``) of the difference over ``n_boot`` resamples; ``significant``
    when the interval excludes 0. ``a`` and ``b``: one ``metrics.row_counts`` dict per seed, every
    seed of both sides over the same texts in the same order. ``resample="texts"``: each resample
    draws the texts once, the same weights for every seed of both sides (a text's rows under k
    seeds are not k texts); ``"seeds-and-texts"``: each side's seeds drawn with replacement
    first, independently, then the texts as before, so that training variance counts too."""
    if resample not in RESAMPLE:
        raise BadValue(f"resample {resample!r}: one of {', '.join(RESAMPLE)}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise BadValue(f"n_boot must be a whole number above 0, not {n_boot!r}")
    a, b = _side(a), _side(b)
    if not all(np.isfinite(x).all() for side in (a, b) for x in side.values()):
        raise BadValue("the test rows' counts hold a value that is not a finite number")
    n = a["leaf_right"].shape[1]
    if b["leaf_right"].shape[1] != n or n == 0:
        raise BadValue(f"the two sides hold {n} and {b['leaf_right'].shape[1]} rows: compare runs on the same test rows")
    # one stream for the texts, one per side for its seeds: the text draws do not depend on the seeds' count
    texts, *seeds = map(np.random.default_rng, np.random.SeedSequence(seed).spawn(3))
    diffs = {m: [] for m in METRICS}
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        w = _draws(texts, n, k)
        v = [_draws(r, len(s["leaf_right"]), k) if resample == "seeds-and-texts" else None
             for r, s in zip(seeds, (a, b))]
        ra, rb = pooled(a, w, v[0]), pooled(b, w, v[1])
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
