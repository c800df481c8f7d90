"""The pictures a fit logs to its MLflow run (``figures/``), so the UI shows more than numbers."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np


def _margins(fig, left: float, bottom: float, right: float = 0.2, top: float = 0.4) -> None:
    """Fixed margins, in inches (``tight_layout`` measures every label first: a quarter of the
    drawing time)."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left / w, bottom=bottom / h, right=1 - right / w, top=1 - top / h)


def _text_inches(labels, fontsize: float) -> float:
    """About how wide the longest of ``labels`` is drawn (DejaVu Sans: about 0.55 em a character)."""
    return max((len(str(t)) for t in labels), default=0) * fontsize * 0.55 / 72


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def levels(h, metrics: dict[str, float], title: str):
    """Accuracy and macro/micro F1 at every level, as grouped bars."""
    plt = _pyplot()
    names = [("accuracy", "#4c72b0"), ("macro_f1", "#dd8452"), ("micro_f1", "#55a868")]
    x = np.arange(h.depth)
    fig, ax = plt.subplots(figsize=(1.6 * h.depth + 3, 3.6))
    for i, (m, colour) in enumerate(names):
        vals = [metrics[f"L{d + 1}_{m}"] for d in range(h.depth)]
        bars = ax.bar(x + (i - 1) * 0.27, vals, 0.27, label=m.replace("_", " "), color=colour)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(x, [f"level {d + 1}\n({h.class_counts[d]} classes)" for d in range(h.depth)])
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{title}: hierarchical F1 {metrics['h_f1']:.3f}")
    ax.legend(loc="lower left", fontsize=8)
    _margins(fig, 0.6, 0.7)
    return fig


def confusion_level1(h, y_true: np.ndarray, y_pred: np.ndarray, title: str):
    """Level 1's confusion matrix, each row normalised to the share of its true class."""
    plt = _pyplot()
    n = h.sizes[0]
    counts = np.zeros((n, n))
    np.add.at(counts, (y_true[:, 0], y_pred[:, 0]), 1)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    names = [p[-1][:28] for p in h.levels[0]]
    size = max(4.0, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}: level 1, share of each true class")
    fig.colorbar(im, ax=ax, fraction=0.046)
    labels_in = _text_inches(names, 7) + 0.45  # the names label both axes
    _margins(fig, labels_in, labels_in, right=1.0)
    return fig


def confused_leaves(h, confusions, title: str):
    """The leaf level's most frequent (true, predicted) mistakes, from ``metrics.confusion_summary``'s
    table (``level``, ``true``, ``predicted``, ``count``; most frequent first)."""
    from .hierarchy import SEP

    plt = _pyplot()
    leaf = confusions[confusions.level == h.depth]
    labels = [f"{t.split(SEP)[-1][:30]} -> {p.split(SEP)[-1][:30]}" for t, p in zip(leaf.true, leaf.predicted)]
    fig, ax = plt.subplots(figsize=(_text_inches(labels, 10) + 4.5, 0.3 * max(len(leaf), 1) + 1.2))
    ax.barh(labels[::-1], leaf["count"].to_numpy()[::-1], color="#c44e52")
    ax.set_xlabel("rows")
    ax.set_title(f"{title}: most confused leaves (true -> predicted)")
    _margins(fig, _text_inches(labels, 10) + 0.2, 0.55, right=0.3)
    return fig


def precision_coverage(curves: dict, title: str):
    """Hierarchical precision against coverage as the stopping threshold rises, one line per
    ``curves`` entry (a label: ``metrics.stop_curve``'s rows as a DataFrame); thresholds 0.1,
    0.3, 0.5, 0.7 and 0.9 marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    for label, c in curves.items():
        ax.plot(c.coverage, c.h_precision, marker=".", label=label)
        for _, r in c[c.threshold.round(2).isin([0.1, 0.3, 0.5, 0.7, 0.9])].iterrows():
            ax.annotate(f"{r.threshold:.1f}", (r.coverage, r.h_precision), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("coverage (share of predicted classes answered)")
    ax.set_ylabel("hierarchical precision")
    ax.set_xlim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(f"{title}: stopping threshold")
    ax.legend(fontsize=8)
    _margins(fig, 0.8, 0.55)
    return fig


def reliability(h, y_true: np.ndarray, y_pred: np.ndarray, conf: np.ndarray, title: str, bins: int = 15):
    """Reliability diagram: per level, the accuracy of the predicted class against the mean
    confidence in it, per confidence bin (``metrics.reliability``); the diagonal is perfect calibration."""
    from .metrics import ece, reliability as bin_rows

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="calibrated")
    for d in range(h.depth):
        right = y_true[:, d] == y_pred[:, d]
        r = bin_rows(conf[:, d], right, bins)
        full = r["count"] > 0
        ax.plot(r["confidence"][full], r["accuracy"][full], marker="o", ms=3,
                label=f"level {d + 1} (ECE {ece(conf[:, d], right, bins):.3f})")
    ax.set_xlabel("confidence in the predicted class")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(f"{title}: reliability")
    ax.legend(fontsize=8, loc="upper left")
    _margins(fig, 0.8, 0.55)
    return fig


def render(folder, h, y_true: np.ndarray, y_pred: np.ndarray, metrics: dict[str, float], confusions, curve,
           split: str, conf: np.ndarray) -> None:
    """Write the five figures of one evaluated split to ``folder/<split>_<name>.png``."""
    plt = _pyplot()
    for name, make in (("levels", lambda: levels(h, metrics, split)),
                       ("confusion_level1", lambda: confusion_level1(h, y_true, y_pred, split)),
                       ("confused_leaves", lambda: confused_leaves(h, confusions, split)),
                       ("precision_coverage", lambda: precision_coverage({"model": curve}, split)),
                       ("reliability", lambda: reliability(h, y_true, y_pred, conf, split))):
        fig = make()
        fig.savefig(f"{folder}/{split}_{name}.png")
        plt.close(fig)


def log_figures(h, y_true: np.ndarray, y_pred: np.ndarray, metrics: dict[str, float], confusions, curve,
                split: str, conf: np.ndarray, run_id: str | None = None) -> None:
    """Draw :func:`render`'s figures here and log them under ``figures/`` of run ``run_id`` (None:
    the active run)."""
    import mlflow

    from .tracking import artifact_store, log_path

    folder = tempfile.mkdtemp(prefix="ktt-figures-")
    try:
        render(folder, h, y_true, y_pred, metrics, confusions, curve, split, conf)
        if run_id is None:
            log_path(Path(folder), "figures")
        else:  # a finished run: its store, without starting the run again
            uri = mlflow.MlflowClient().get_run(run_id).info.artifact_uri
            try:
                artifact_store(uri, mlflow.get_tracking_uri()).log_artifacts(folder, "figures")
            except Exception as e:  # a store gone, a full or read-only disk: MLflow's errors name neither
                from .errors import Unavailable
                from .tracking.logs import cause

                raise Unavailable(f"cannot upload the figures of run {run_id} to {uri}: {cause(e)}") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def for_run(ref: str, datasets_root="datasets") -> str:
    """Draw and log the test figures of a trained run (``ktt figures RUN``; a sweep's best trial):
    its ``best`` checkpoint scored on its dataset's test split, as ``ktt train`` draws them. The run's ID."""
    import pandas as pd

    from . import registry
    from .data import load_dataset
    from .metrics import confusion_summary, evaluate, stop_curve
    from .errors import BadValue
    from .tracking import check_tracking_uri, resolve_source

    check_tracking_uri()
    src = resolve_source(ref)
    model, ds = registry.get(src.model).load(src.checkpoint), load_dataset(src.dataset, datasets_root)
    if model.hierarchy != ds.hierarchy:  # the dataset changed since: its test split is not what the run scored
        raise BadValue(f"run {src.run_id} was trained on another taxonomy than dataset {src.dataset!r} in "
                       f"{datasets_root} holds now: its figures need the dataset it was trained on")
    h, split = ds.hierarchy, ds.test
    pred, conf = model.predict_confident(split.texts)
    log_figures(h, split.codes, pred, evaluate(h, split.codes, pred), confusion_summary(h, split.codes, pred),
                pd.DataFrame(stop_curve(h, split.codes, pred, conf)), "test", conf, run_id=src.run_id)
    return src.run_id
