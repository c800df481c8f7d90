"""One tracked fit: load the dataset, fit, checkpoint, evaluate, log everything to MLflow."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from . import hparams, registry, tracking
from .data import load_dataset
from .metrics import evaluate, level_table

log = logging.getLogger(__name__)


def confusion_summary(h, y_true: np.ndarray, y_pred: np.ndarray, top: int = 20) -> pd.DataFrame:
    """The ``top`` most frequent (true, predicted) mistakes at every level."""
    rows = []
    for d in range(h.depth):
        names = h.names(d)
        wrong = y_true[:, d] != y_pred[:, d]
        pairs = pd.Series(list(zip(y_true[wrong, d], y_pred[wrong, d]))).value_counts().head(top)
        rows += [{"level": d + 1, "true": names[t], "predicted": names[p], "count": int(n)}
                 for (t, p), n in pairs.items()]
    return pd.DataFrame(rows, columns=["level", "true", "predicted", "count"])


def train(model: str, dataset: str, *, overrides: dict | None = None, datasets_root="datasets",
          weights_root="weights", experiment: str | None = None, run_name: str | None = None,
          reference: bool = False, log_model: bool = True, tags: dict | None = None) -> str:
    """Fit ``model`` on ``dataset`` inside an MLflow run; returns the run ID.

    Everything that can be checked is checked before the run starts: the tracking
    server, the dataset, the model name and every hyperparameter.
    """
    tracking.check_tracking_uri()
    ds = load_dataset(dataset, datasets_root)
    cls = registry.get(model)
    params = cls.check_params({**hparams.load(model), **(overrides or {})})
    if experiment:
        mlflow.set_experiment(experiment)
    nested = mlflow.active_run() is not None
    with mlflow.start_run(run_name=run_name or f"{model}-{ds.name}", nested=nested) as run:
        logger = tracking.RunLogger(model, ds.name, weights_root)
        mlflow.set_tags({"ktt.model": model, "ktt.dataset": ds.name, "ktt.git_commit": tracking.git_commit(),
                         **(tags or {})})
        mlflow.log_params({**params, "model": model})
        tracking.log_dataset(ds)

        est = cls(ds.hierarchy, **params)
        t0 = time.perf_counter()
        est.fit(ds.train, ds.val, logger)
        mlflow.log_metric("train_time_s", time.perf_counter() - t0)
        if "best" not in logger.paths:  # a model that saves nothing during fit: its only checkpoint
            logger.checkpoint(est, "best")
        best = cls.load(logger.paths["best"])

        for name, split in (("val", ds.val), ("test", ds.test)):
            t0 = time.perf_counter()
            pred = best.predict(split.texts)
            metrics = evaluate(ds.hierarchy, split.codes, pred)
            metrics["predict_rows_per_s"] = len(split) / max(time.perf_counter() - t0, 1e-9)
            logger.log_metrics({f"{name}_{k}": v for k, v in metrics.items()})
            tracking.log_dict(metrics, f"metrics/{name}_metrics.json")
            tracking.log_text(level_table(ds.hierarchy, metrics), f"metrics/{name}_levels.md")
            mlflow.log_table(confusion_summary(ds.hierarchy, split.codes, pred), f"metrics/{name}_confusions.json")
        logger.log_checkpoints()

        if reference:
            ref = best.gen_reference_set(ds.test)
            last = logger.paths.get("last", logger.paths["best"])
            ref_path = last.with_name(last.stem + "_reference.parquet")
            tracking.atomic_write(ref_path, lambda tmp: ref.to_parquet(tmp, index=False))
            mlflow.log_artifact(str(ref_path), artifact_path="checkpoints")
        if log_model:
            from .pyfunc import log_pyfunc
            log_pyfunc(model, logger.paths["best"], ds.hierarchy, ds.test.texts[:3])
        log.info("run %s: test leaf accuracy %.4f, checkpoints %s", run.info.run_id,
                 metrics["leaf_accuracy"], [str(p) for p in logger.paths.values()])
        return run.info.run_id
