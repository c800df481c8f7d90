"""One tracked fit: load the dataset, fit, checkpoint, evaluate, log everything to MLflow."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from . import distributed, registry, threads, tracking
from .errors import BadValue
from .data import load_dataset
from .metrics import evaluate, level_ece, level_table, stop_curve
from .model import NullLogger

log = logging.getLogger(__name__)


def predict_confident(model, texts, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """``model``'s paths and each level's confidence on them, ``(n, depth)`` both, in chunks: all
    classes' scores of a few thousand rows at a time, never of the whole split."""
    codes, conf = [], []
    for i in range(0, max(len(texts), 1), chunk):
        c, s = model.predict_scored(texts[i:i + chunk])
        codes.append(c)
        conf.append(model.hierarchy.confidences(c, s))
    return np.concatenate(codes), np.concatenate(conf)


def confusion_summary(h, y_true: np.ndarray, y_pred: np.ndarray, top: int = 20) -> pd.DataFrame:
    """The ``top`` most frequent (true, predicted) mistakes at every level (two paths that both
    ended above a level are not a mistake there: their difference is counted where it is)."""
    rows = []
    for d in range(h.depth):
        names, end = h.names(d), h.is_end(d)
        wrong = (y_true[:, d] != y_pred[:, d]) & ~(end[y_true[:, d]] & end[y_pred[:, d]])
        pairs = pd.Series(list(zip(y_true[wrong, d], y_pred[wrong, d]))).value_counts().head(top)
        rows += [{"level": d + 1, "true": names[t], "predicted": names[p], "count": int(n)}
                 for (t, p), n in pairs.items()]
    return pd.DataFrame(rows, columns=["level", "true", "predicted", "count"])


def calibrate(model, val, logger) -> None:
    """Fit the temperatures (and the threshold of ``target_precision``) on validation, log them and
    the validation precision curve, and make the calibrated model the ``best`` checkpoint."""
    t0 = time.perf_counter()
    cal = model.calibrate(val)
    logger.log_metrics({**{f"L{d + 1}_temperature": t for d, t in enumerate(cal["temperatures"])},
                        "calibrate_time_s": time.perf_counter() - t0,
                        **({"threshold": cal["threshold"]} if cal["threshold"] is not None else {})})
    tracking.log_dict(cal["curve"], "metrics/val_precision_curve.json")
    logger.checkpoint(model, "best")


@dataclass
class Fit:
    """What one tracked fit produced."""

    run_id: str | None  # None on the processes of a distributed fit other than rank 0
    metrics: dict[str, float] = field(default_factory=dict)  # everything logged at the end, by name
    checkpoints: dict[str, Path] = field(default_factory=dict)  # "best" (and "last") under weights/


def train(model: str, dataset: str, *, overrides: dict | None = None, datasets_root="datasets",
          weights_root="weights", experiment: str | None = None, run_name: str | None = None,
          reference: bool = False, log_model: bool = True, tags: dict | None = None,
          resume: str | None = None, callbacks=()) -> Fit:
    """Fit ``model`` on ``dataset`` inside an MLflow run (hyperparameters as ``registry.create``).

    Everything that can be checked is checked before the run starts: the tracking
    server, the dataset, the model name and every hyperparameter. ``resume`` (a ``last_``
    checkpoint or an MLflow run) continues a fit from the end of its last finished epoch.
    ``callbacks`` see every ``log_metrics`` call of the fit (``cb(metrics, step)``).

    Under ``torchrun`` every process calls this: all of them fit, each on its part of every
    batch (:mod:`ktt.distributed`); only rank 0 tracks, checkpoints and evaluates.
    """
    world = distributed.setup()
    if world.main:
        tracking.check_tracking_uri()
    ds = load_dataset(dataset, datasets_root)
    cls = registry.get(model)
    if world.size > 1 and not cls.distributable:
        raise BadValue(f"model {model!r} does not train on several processes; run it without torchrun")
    if resume:
        est = cls.load(tracking.resolve_checkpoint(resume))
        if getattr(est, "resume_state_", None) is None:
            raise BadValue(f"{resume} holds no training state; resume from a last_ checkpoint")
        if est.hierarchy != ds.hierarchy:
            raise BadValue(f"{resume} was trained on another hierarchy than dataset {ds.name!r}")
        fixed = sorted(set(overrides or {}) - cls.resumable)
        if fixed:
            raise BadValue(f"cannot change {fixed} when resuming; only {sorted(cls.resumable)}")
        est.params.update(cls.check_params({**est.params, **(overrides or {})}))
        params = est.params
    else:
        params = registry.params(model, overrides)
        est = cls(ds.hierarchy, **params)
    if not world.main:
        est.fit(ds.train, ds.val, NullLogger())
        distributed.finish(world)
        return Fit(None)
    if experiment:
        mlflow.set_experiment(experiment)
    nested = mlflow.active_run() is not None
    with tracking.start_run(run_name=run_name or f"{model}-{ds.name}", nested=nested) as run:
        logger = tracking.RunLogger(model, ds.name, weights_root, callbacks)
        mlflow.set_tags({"ktt.model": model, "ktt.dataset": ds.name, "ktt.git_commit": tracking.git_commit(),
                         "ktt.threads": str(threads.configured() or "default"),
                         **({"ktt.processes": str(world.size), "ktt.backend": distributed.backend()}
                            if world.size > 1 else {}),
                         **({"ktt.resumed_from": resume} if resume else {}), **(tags or {})})
        mlflow.log_params({**params, "model": model})
        tracking.log_dataset(ds)

        t0 = time.perf_counter()
        est.fit(ds.train, ds.val, logger)
        train_time = time.perf_counter() - t0
        distributed.finish(world)  # from here on rank 0 works alone
        mlflow.log_metric("train_time_s", train_time)
        if "best" not in logger.paths:  # a model that saves nothing during fit: its only checkpoint
            logger.checkpoint(est, "best")
        best = cls.load(logger.paths["best"])
        calibrate(best, ds.val, logger)

        # the checkpoint that fit selected, evaluated once: "best_val_*" (the per-epoch series is "val_*")
        final = {"train_time_s": train_time}
        for name, split in (("best_val", ds.val), ("test", ds.test)):
            t0 = time.perf_counter()
            pred, conf = predict_confident(best, split.texts)
            metrics = {**evaluate(ds.hierarchy, split.codes, pred), **level_ece(ds.hierarchy, split.codes, pred, conf)}
            metrics["predict_rows_per_s"] = len(split) / max(time.perf_counter() - t0, 1e-9)
            prefixed = {f"{name}_{k}": v for k, v in metrics.items()}
            final.update(prefixed)
            logger.log_metrics(prefixed)
            tracking.log_dict(metrics, f"metrics/{name}_metrics.json")
            mlflow.log_text(level_table(ds.hierarchy, metrics), f"metrics/{name}_levels.md")
            confusions = confusion_summary(ds.hierarchy, split.codes, pred)
            mlflow.log_table(confusions, f"metrics/{name}_confusions.json")
            if name == "test":
                from .figures import log_all
                curve = pd.DataFrame(stop_curve(ds.hierarchy, split.codes, pred, conf))
                mlflow.log_table(curve, f"metrics/{name}_stop_curve.json")
                log_all(ds.hierarchy, split.codes, pred, metrics, confusions, curve, name, conf)
        logger.log_checkpoints()

        if reference:
            ref = best.gen_reference_set(ds.test)
            last = logger.paths.get("last", logger.paths["best"])
            ref_path = last.with_name(last.stem + "_reference.parquet")
            tracking.atomic_write(ref_path, lambda tmp: ref.to_parquet(tmp, index=False))
            mlflow.log_artifact(str(ref_path), artifact_path="checkpoints")
        if log_model:
            from .pyfunc import log_pyfunc
            log_pyfunc(model, logger.paths["best"], ds.hierarchy, ds.test.texts[:3], best.stop_threshold())
        log.info("run %s: test leaf accuracy %.4f, checkpoints %s", run.info.run_id,
                 metrics["leaf_accuracy"], [str(p) for p in logger.paths.values()])
        return Fit(run.info.run_id, final, dict(logger.paths))
