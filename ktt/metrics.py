"""One evaluation function for every model and every report."""
from __future__ import annotations

import numpy as np

from .hierarchy import Hierarchy


def _ancestor_sets(h: Hierarchy, codes: np.ndarray) -> np.ndarray:
    """Multi-hot ``(n, n_classes)``: every predicted class and all its ancestors."""
    off = h.offsets
    out = np.zeros((len(codes), h.n_classes), dtype=bool)
    rows = np.arange(len(codes))
    for d in range(h.depth):
        c = codes[:, d]
        out[rows, off[d] + c] = True
        for up in range(d - 1, -1, -1):  # walk this prediction's own ancestors
            c = h.parent_of(up + 1)[c]
            out[rows, off[up] + c] = True
    return out


def metric_names(depth: int) -> list[str]:
    """The names :func:`evaluate` returns for a hierarchy of ``depth`` levels, in its order."""
    per_level = [f"L{d}_{m}" for d in range(1, depth + 1) for m in ("accuracy", "macro_f1", "micro_f1")]
    return per_level + ["leaf_accuracy", "path_accuracy", "h_precision", "h_recall", "h_f1", "violation_rate"]


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
        t, p = y_true[:, d], y_pred[:, d]
        m[f"L{d + 1}_accuracy"] = float(np.mean(t == p))
        m[f"L{d + 1}_macro_f1"] = float(f1_score(t, p, average="macro", zero_division=0))
        m[f"L{d + 1}_micro_f1"] = float(f1_score(t, p, average="micro", zero_division=0))
    m["leaf_accuracy"] = m[f"L{h.depth}_accuracy"]
    m["path_accuracy"] = float(np.mean((y_true == y_pred).all(axis=1)))
    t_set, p_set = _ancestor_sets(h, y_true), _ancestor_sets(h, y_pred)
    inter = (t_set & p_set).sum()
    hp, hr = inter / p_set.sum(), inter / t_set.sum()
    m["h_precision"], m["h_recall"] = float(hp), float(hr)
    m["h_f1"] = float(2 * hp * hr / (hp + hr)) if hp + hr else 0.0
    m["violation_rate"] = float(1.0 - h.is_consistent(y_pred).mean())
    return m


def level_table(h: Hierarchy, metrics: dict[str, float]) -> str:
    """The per-level metrics as a markdown table."""
    rows = ["| level | classes | accuracy | macro F1 | micro F1 |", "|---|---|---|---|---|"]
    for d in range(h.depth):
        k = f"L{d + 1}"
        rows.append(f"| {d + 1} | {h.sizes[d]} | {metrics[k + '_accuracy']:.4f} | "
                    f"{metrics[k + '_macro_f1']:.4f} | {metrics[k + '_micro_f1']:.4f} |")
    rows.append("")
    rows.append(f"hierarchical P/R/F1: {metrics['h_precision']:.4f} / {metrics['h_recall']:.4f} / "
                f"{metrics['h_f1']:.4f}; path accuracy {metrics['path_accuracy']:.4f}; "
                f"violation rate {metrics['violation_rate']:.4f}")
    return "\n".join(rows) + "\n"
