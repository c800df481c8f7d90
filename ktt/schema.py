"""The monitoring row layout, written once: what the service forwards to the drift sidecar per
text and what a reference set holds (numpy; pandas for the frame). The model (reference sets),
the service (forwarded rows) and the forwarder share it; the standalone sidecar reads the same
columns from its reference set.
"""
from __future__ import annotations

import numpy as np

N_MONITORED_FEATURES = 24


def pool_features(features: np.ndarray, bins: int = N_MONITORED_FEATURES) -> np.ndarray:
    """Average-pool ``(n, d)`` features into ``bins`` columns (as torch's adaptive_avg_pool1d):
    the reduced features that reference sets hold and drift monitoring compares."""
    d = features.shape[1]
    starts = (np.arange(bins) * d) // bins
    ends = -((-(np.arange(1, bins + 1)) * d) // bins)
    if hasattr(features, "indptr"):  # sparse TF-IDF (CSR): never densify (n x vocabulary)
        n = features.shape[0]
        bin_of = np.searchsorted(ends, np.asarray(features.indices), side="right")
        row = np.repeat(np.arange(n), np.diff(features.indptr))
        pooled = np.bincount(row * bins + bin_of, weights=np.asarray(features.data, np.float64) /
                             (ends - starts)[bin_of], minlength=n * bins)
        return pooled.reshape(n, bins).astype(np.float32)
    csum = np.concatenate([np.zeros((len(features), 1)), np.cumsum(features, axis=1, dtype=np.float64)], axis=1)
    return ((csum[:, ends] - csum[:, starts]) / (ends - starts)).astype(np.float32)


def level_columns(codes: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """``(n, 2 * depth)``: at every level, the index of the class the decoded path takes there and
    its confidence: what level-wise drift monitoring compares."""
    return np.stack([np.asarray(codes, dtype=np.float64), conf], axis=2).reshape(len(codes), -1)


def level_column_names(depth: int) -> list[str]:
    return [f"level{d}_{k}" for d in range(1, depth + 1) for k in ("class", "confidence")]


def monitoring_rows(features: np.ndarray, leaf_scores: np.ndarray, levels: np.ndarray | None = None) -> np.ndarray:
    """The rows the service forwards to the drift sidecar, in the one column order
    (:func:`monitoring_columns`): the pooled features, one probability per leaf, then
    :func:`level_columns` (absent in reference sets from before them)."""
    return np.concatenate([pool_features(features), leaf_scores, *([] if levels is None else [levels])], axis=1)


def monitoring_columns(leaf_names: list[str], depth: int | None) -> list[str]:
    """``"0"``..``"23"``, one column per leaf, then ``level<d>_class``, ``level<d>_confidence``."""
    return [str(i) for i in range(N_MONITORED_FEATURES)] + list(leaf_names) + level_column_names(depth or 0)


def reference_frame(features: np.ndarray, leaf_scores: np.ndarray, leaf_names: list[str], targets=None,
                    levels: np.ndarray | None = None):
    """A reference set: ``targets``, then :func:`monitoring_rows` under :func:`monitoring_columns`."""
    import pandas as pd

    depth = None if levels is None else levels.shape[1] // 2
    df = pd.DataFrame(monitoring_rows(features, leaf_scores, levels), columns=monitoring_columns(leaf_names, depth))
    if targets is not None:
        df.insert(0, "targets", targets)
    return df
