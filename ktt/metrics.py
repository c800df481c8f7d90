"""One evaluation function for every model and every report.

Paths of different lengths (see ``ktt.hierarchy``): end classes are never scored. A level's
accuracy counts the rows whose true path or predicted path reaches that level (a prediction that
ended above the truth's level, or went below the truth's end, is wrong there); its F1 scores over
the real classes of the level, so a prediction that goes deeper than the truth is a false
positive there and one that ends early a false negative. At a level that no true and no
predicted path reaches there is nothing to get wrong: accuracy and F1 are 1.0 there (never NaN). Hierarchical
P/R/F1 compare the real classes on the two paths; ``leaf_accuracy`` asks whether the path ends at
the right class. On fixed-depth data all of these are the usual definitions.
"""
from __future__ import annotations

import re

import numpy as np

from .hierarchy import Hierarchy


def _ancestor_sets(h: Hierarchy, codes: np.ndarray, depths: np.ndarray | None = None) -> np.ndarray:
    """Every predicted class (of the first ``depths[i]`` levels, when given) and all its
    ancestors, end classes left out, as sorted unique keys ``row * n_classes + class`` (a class
    numbered across levels): O(n x depth^2) memory, where a multi-hot matrix takes n x classes."""
    codes = np.asarray(codes)
    n, off, keys = len(codes), h.offsets, []
    rows = np.arange(n, dtype=np.int64) * h.n_classes
    for d in range(h.depth):
        r = slice(None) if depths is None else depths > d
        c = codes[r, d]
        for up in range(d, -1, -1):  # this prediction and its own ancestors
            if up < d:
                c = h.parent_of(up + 1)[c]
            real = ~h.is_end(up)[c]
            keys.append(rows[r][real] + off[up] + c[real])
    return np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)


def _hprf(t_set: np.ndarray, p_set: np.ndarray) -> tuple[float, float, float]:
    inter = len(np.intersect1d(t_set, p_set, assume_unique=True))
    hp = inter / len(p_set) if len(p_set) else float("nan")  # nothing answered: precision undefined
    hr = inter / len(t_set)
    return float(hp), float(hr), float(2 * hp * hr / (hp + hr)) if hp + hr else 0.0


def row_counts(h: Hierarchy, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, np.ndarray]:
    """Per row, what hierarchical F1 and leaf accuracy pool: ``shared`` (classes on both paths,
    ancestors included, end classes left out), ``predicted`` and ``true`` (each path's classes),
    ``leaf_right`` (0/1). Any resample of rows recomputes both metrics exactly from these
    (``ktt.compare``): hF1 = 2 sum(shared) / (sum(predicted) + sum(true))."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    t, p, n = _ancestor_sets(h, y_true), _ancestor_sets(h, y_pred), len(y_true)

    def per_row(keys):
        return np.bincount(keys // h.n_classes, minlength=n)
    return {"shared": per_row(np.intersect1d(t, p, assume_unique=True)), "predicted": per_row(p),
            "true": per_row(t), "leaf_right": (y_true[:, -1] == y_pred[:, -1]).astype(np.int64)}


def metric_names(depth: int) -> list[str]:
    """The names :func:`evaluate` returns for a hierarchy of ``depth`` levels, in its order."""
    per_level = [f"L{d}_{m}" for d in range(1, depth + 1) for m in ("accuracy", "macro_f1", "micro_f1")]
    return per_level + ["leaf_accuracy", "path_accuracy", "h_precision", "h_recall", "h_f1", "violation_rate"]


def monitor_names(depth: int) -> list[str]:
    """What early stopping may maximise on a hierarchy of ``depth`` levels: ``loss`` (minimised)
    or a validation metric of :func:`metric_names` (all but ``violation_rate``)."""
    return ["loss", *(m for m in metric_names(depth) if m != "violation_rate")]


class Monitorable:
    """The ``monitor`` constraint, from :func:`monitor_names`: ``L<d>_...`` names are checked
    against a hierarchy of d levels (the model's own depth is checked when it fits)."""

    def __contains__(self, v) -> bool:
        if not isinstance(v, str):
            return False
        level = re.fullmatch(r"L(\d+)_\w+", v)
        return v in monitor_names(max(int(level.group(1)), 1) if level else 1)

    def __str__(self) -> str:
        return "loss or a validation metric to maximise (h_f1, leaf_accuracy, L2_macro_f1, ...)"


def evaluate(h: Hierarchy, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Per-level accuracy and macro/micro F1, leaf accuracy, hierarchical P/R/F1, violation rate.

    ``y_true`` and ``y_pred`` are ``(n, depth)`` class indices per level. Hierarchical
    precision/recall follow Kiritchenko et al.: each label set is augmented with all
    ancestors, so a wrong leaf under the right parent still earns partial credit.
    """
    from sklearn.metrics import f1_score  # here: importing this module (model validation) stays light

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 2 or y_true.shape[1] != h.depth:
        raise ValueError(f"expected two (n, {h.depth}) arrays, got {y_true.shape} and {y_pred.shape}")
    if len(y_true) == 0:
        raise ValueError("cannot evaluate zero rows")
    m: dict[str, float] = {}
    for d in range(h.depth):
        t, p, end = y_true[:, d], y_pred[:, d], h.is_end(d)
        reach = ~end[t] | ~end[p]
        labels = np.setdiff1d(np.union1d(t, p), np.flatnonzero(end))
        m[f"L{d + 1}_accuracy"] = float(np.mean(t[reach] == p[reach])) if reach.any() else 1.0
        for avg in ("macro", "micro"):
            m[f"L{d + 1}_{avg}_f1"] = float(f1_score(t, p, labels=labels, average=avg, zero_division=0)) \
                if len(labels) else 1.0
    m["leaf_accuracy"] = float(np.mean(y_true[:, -1] == y_pred[:, -1]))  # the path ends at the right class
    m["path_accuracy"] = float(np.mean((y_true == y_pred).all(axis=1)))
    m["h_precision"], m["h_recall"], m["h_f1"] = _hprf(_ancestor_sets(h, y_true), _ancestor_sets(h, y_pred))
    m["violation_rate"] = float(1.0 - h.is_consistent(y_pred).mean())
    return m


def reliability(conf: np.ndarray, correct: np.ndarray, bins: int = 15) -> dict[str, np.ndarray]:
    """Per confidence bin ((0, 1/bins], ..., ((bins-1)/bins, 1]; a confidence of 0 falls in the
    first): ``count``, mean ``confidence`` and ``accuracy`` (NaN in an empty bin)."""
    conf, correct = np.asarray(conf, np.float64), np.asarray(correct, np.float64)
    b = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(b, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"count": count, "confidence": np.bincount(b, conf, bins) / count,
                "accuracy": np.bincount(b, correct, bins) / count}


def ece(conf: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error (Guo et al., 2017): sum over bins of the share of rows in the
    bin times |accuracy - mean confidence| there."""
    r = reliability(conf, correct, bins)
    full = r["count"] > 0
    return float(np.sum(r["count"][full] / max(len(conf), 1) * np.abs(r["accuracy"][full] - r["confidence"][full])))


def chance_ece(conf: np.ndarray, draws: int = 1000, seed: int = 0, bins: int = 15) -> np.ndarray:
    """The ECE a perfectly calibrated model would show with these confidences, ``(draws,)`` or
    ``(draws, levels)``: per draw, each row right with probability ``conf`` (``(n,)``, or ``(n,
    levels)`` of confidences that never rise down a path: one uniform per row against every level,
    so a row right at a level is right above it, as a path's classes are). ECE is biased upward by
    the bins' sampling noise (on BigBasket's 2,478 test rows a calibrated model's level ECE
    averages about .02), so an observed ECE means little until compared with these."""
    conf = np.asarray(conf, np.float64)
    if conf.ndim not in (1, 2) or not len(conf) or isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"chance_ece needs rows of confidences (1 or 2 dimensions) and draws >= 1, not shape "
                         f"{conf.shape} and draws={draws!r}")
    if not np.all((conf >= 0) & (conf <= 1)):
        raise ValueError("chance_ece needs confidences in [0, 1]")
    rng, cols = np.random.default_rng(seed), conf.reshape(len(conf), -1)
    out = np.empty((draws, cols.shape[1]))
    for i in range(draws):
        right = rng.random((len(cols), 1)) < cols
        out[i] = [ece(cols[:, d], right[:, d], bins) for d in range(cols.shape[1])]
    return out.reshape((draws, *conf.shape[1:]))


def level_ece(h: Hierarchy, y_true: np.ndarray, y_pred: np.ndarray, conf: np.ndarray, bins: int = 15) -> dict[str, float]:
    """``L<d>_ece``: at every level, the ECE of the confidence in the predicted class (``conf``:
    ``(n, depth)``, the probability of the class the path takes there) against whether the true
    path takes that class too, over all rows (an end class is the prediction "the path ended")."""
    return {f"L{d + 1}_ece": ece(conf[:, d], y_true[:, d] == y_pred[:, d], bins) for d in range(h.depth)}


def answered(h: Hierarchy, y_true: np.ndarray, y_pred: np.ndarray, conf: np.ndarray, threshold: float,
             max_depth=None) -> dict[str, float]:
    """What stopping at ``threshold`` (and at most ``max_depth`` levels: ``Model.stop``) answers
    (``Hierarchy.stop_depths``): ``h_precision`` of the answered classes, ``coverage`` (the share
    of texts given at least one level), ``depth_share`` (the mean over texts of answered levels /
    true levels, at most 1; 0 when unanswered)."""
    depths = h.stop_depths(y_pred, conf, threshold, max_depth)
    hp, _, _ = _hprf(_ancestor_sets(h, y_true), _ancestor_sets(h, y_pred, depths))
    return {"h_precision": hp, "coverage": float(np.mean(depths > 0)),
            "depth_share": float(np.mean(np.minimum(depths, h.path_depths(y_true)) / h.path_depths(y_true)))}


def stop_curve(h: Hierarchy, y_true: np.ndarray, y_pred: np.ndarray, scores: list[np.ndarray] | np.ndarray,
               thresholds=None) -> list[dict[str, float]]:
    """What a confidence threshold does (``Hierarchy.answer_depths``), one row per threshold:
    ``coverage`` (the share of the predicted paths' classes still answered), hierarchical
    precision/recall/F1 of the answered classes, and the shares of rows answered to the deepest
    level of their prediction (``full``) and not at all (``none``)."""
    thresholds = np.round(np.arange(0, 1.0, 0.05), 2) if thresholds is None else thresholds
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    # per-level scores, or already the (n, depth) confidences of the predicted paths
    conf = scores if isinstance(scores, np.ndarray) else h.confidences(y_pred, scores)
    t_set, full = _ancestor_sets(h, y_true), h.path_depths(y_pred)
    n_full = len(_ancestor_sets(h, y_pred))
    out = []
    for th in thresholds:
        depths = h.stop_depths(y_pred, conf, th)
        p_set = _ancestor_sets(h, y_pred, depths)
        hp, hr, hf = _hprf(t_set, p_set)
        out.append({"threshold": float(th), "coverage": float(len(p_set) / n_full), "h_precision": hp,
                    "h_recall": hr, "h_f1": hf, "full": float(np.mean(depths == full)),
                    "none": float(np.mean(depths == 0))})
    return out


def confusion_summary(h, y_true: np.ndarray, y_pred: np.ndarray, top: int = 20) -> "pd.DataFrame":  # noqa: F821
    """The ``top`` most frequent (true, predicted) mistakes at every level (two paths that both
    ended above a level are not a mistake there: their difference is counted where it is)."""
    import pandas as pd

    rows = []
    for d in range(h.depth):
        names, end = h.names(d), h.is_end(d)
        wrong = (y_true[:, d] != y_pred[:, d]) & ~(end[y_true[:, d]] & end[y_pred[:, d]])
        pairs = pd.Series(list(zip(y_true[wrong, d], y_pred[wrong, d]))).value_counts().head(top)
        rows += [{"level": d + 1, "true": names[t], "predicted": names[p], "count": int(n)}
                 for (t, p), n in pairs.items()]
    return pd.DataFrame(rows, columns=["level", "true", "predicted", "count"])


def level_table(h: Hierarchy, metrics: dict[str, float]) -> str:
    """The per-level metrics as a markdown table."""
    rows = ["| level | classes | accuracy | macro F1 | micro F1 |", "|---|---|---|---|---|"]
    for d in range(h.depth):
        k = f"L{d + 1}"
        rows.append(f"| {d + 1} | {h.class_counts[d]} | {metrics[k + '_accuracy']:.4f} | "
                    f"{metrics[k + '_macro_f1']:.4f} | {metrics[k + '_micro_f1']:.4f} |")
    rows.append("")
    rows.append(f"hierarchical P/R/F1: {metrics['h_precision']:.4f} / {metrics['h_recall']:.4f} / "
                f"{metrics['h_f1']:.4f}; path accuracy {metrics['path_accuracy']:.4f}; "
                f"violation rate {metrics['violation_rate']:.4f}")
    return "\n".join(rows) + "\n"
