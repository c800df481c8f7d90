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


_worker = None  # (process, the end of the pipe to it): the forked process that draws, kept for every run
_logging = None  # the thread that hands a run's figures to the worker and logs them (a ThreadPoolExecutor of one)
_pending: list = []  # (run ID, future) of the figures not yet logged


def warm() -> None:
    """Fork the process that draws figures, unless it runs already (a sweep's runs share it).

    It imports matplotlib and draws a throw-away figure at once, while the caller loads and fits;
    a run's figures then cost the caller nothing but handing them over (:func:`log_later`).
    Forked before the fit, it shares only the memory the caller had then.
    """
    global _worker
    if _worker is not None and _worker[0].is_alive():
        return
    import multiprocessing as mp

    try:
        ctx = mp.get_context("fork")
        here, there = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(there, here), daemon=True, name="ktt-figures")
        proc.start()
    except (OSError, ValueError):  # no fork here (another platform, or a resource limit): drawn in a thread
        _worker = None
        return
    there.close()
    _worker = (proc, here)


def _serve(conn, callers_end) -> None:
    """The worker: draw each ``(folder, args)`` it is sent (:func:`render`) and answer ``None``,
    or what went wrong; end when the caller has gone, even killed."""
    import gc
    import io
    import os

    callers_end.close()  # else this process holds the pipe open and never sees the caller go

    try:
        os.nice(10)  # background work: it takes the cores the fits leave idle, not the fits' share
    except OSError:
        pass
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(2, 2))  # loads the font, the Agg renderer and the PNG writer now
    ax.bar([0, 1], [1, 2], label="warm")
    ax.set_title("warm")
    ax.legend(fontsize=7)
    fig.savefig(io.BytesIO(), format="png")
    plt.close(fig)
    # what the fork inherited and matplotlib's modules are never garbage: the collector stops scanning
    # them (it took a sixth of the drawing, measured)
    gc.collect()
    gc.freeze()
    while True:
        try:
            folder, args = conn.recv()
        except (EOFError, OSError):  # the caller has gone
            return
        try:
            render(folder, *args)
            answer = None
        except Exception as e:  # the caller's thread draws them instead
            answer = repr(e)
        try:
            conn.send(answer)
        except OSError:  # the caller has gone
            return


def log_later(run, *args):
    """Have :func:`render`'s figures drawn by the worker (:func:`warm`) and logged under
    ``figures/`` of ``run`` (an MLflow run) by a background thread, while the caller goes on: a sweep's
    next fit runs while this one's figures are drawn. :func:`wait` waits for them (a process
    does at exit); a run waits here for the figures of the run before it, so at most one is
    pending. Returns the future of their logging."""
    global _logging
    import mlflow
    from concurrent.futures import ThreadPoolExecutor

    from .tracking import artifact_store

    wait()
    if _logging is None:  # its thread is joined at exit: no figures are lost when the caller ends
        _logging = ThreadPoolExecutor(1, thread_name_prefix="ktt-figures")
    future = _logging.submit(_log, args, artifact_store(run.info.artifact_uri, mlflow.get_tracking_uri()))
    _pending.append((run.info.run_id, future))
    return future


def _log(args, store) -> None:
    folder = tempfile.mkdtemp(prefix="ktt-figures-")
    try:
        failed = "no worker"
        if _worker is not None and _worker[0].is_alive():
            try:
                _worker[1].send((folder, args))
                failed = _worker[1].recv()
            except (EOFError, OSError) as e:  # the worker died
                failed = repr(e)
        if failed:
            render(folder, *args)
        store.log_artifacts(folder, "figures")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def wait() -> None:
    """Wait until every run's figures handed to :func:`log_later` are logged; a failure to log
    them is a warning that names the run, not an error of the caller's next run."""
    import logging

    while _pending:
        run_id, future = _pending.pop(0)
        try:
            future.result()
        except Exception as e:
            logging.getLogger(__name__).warning("the figures of run %s could not be logged: %s", run_id, e)
