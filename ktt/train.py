"""One tracked fit: load the dataset, fit, checkpoint, evaluate, log everything to MLflow."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from . import distributed, registry, taxonomy, tracking
from .errors import BadValue
from .data import load_dataset
from .metrics import confusion_summary, evaluate, level_ece, level_table, row_counts, stop_curve
from .model import NullLogger
from .zeroshot import with_name_rows

log = logging.getLogger(__name__)


def calibrate(model, val, logger) -> None:
    """Fit the temperatures and level maps (and where answers stop for ``target_precision``) on
    validation, log them, each level's best validation precision and the precision curves, and make the calibrated
    model the ``best`` checkpoint. A target that a level does not reach (``Model.calibrate`` warns)
    is also the run's tag ``ktt.target_shortfall``, and ``max_depth`` its metric."""
    from .confidence import shortfall

    t0 = time.perf_counter()
    cal = model.calibrate(val)
    best = cal["curve"].get("level_precision") or []
    logger.log_metrics({**{f"L{d + 1}_temperature": t for d, t in enumerate(cal["temperatures"])},
                        **{f"L{d + 1}_map_{k}": v for d, m in enumerate(cal.get("level_maps") or [])
                           for k, v in zip(("a", "b", "u", "a_end", "b_end", "u_end"), m)},
                        "calibrate_time_s": time.perf_counter() - t0,
                        **{f"L{d + 1}_val_best_precision": b for d, b in enumerate(best) if b is not None},
                        **({"threshold": cal["threshold"], "max_depth": cal["max_depth"]}
                           if cal["threshold"] is not None else {})})
    target = model.params.get("target_precision")
    if target and (why := shortfall(cal["curve"], target)):
        tracking.log_batch(tags={"ktt.target_shortfall": why})
    tracking.log_dict(cal["curve"], "metrics/val_precision_curve.json")
    logger.checkpoint(model, "best")


@dataclass
class Fit:
    """What one tracked fit produced."""

    run_id: str | None  # None on the processes of a distributed fit other than rank 0
    metrics: dict[str, float] = field(default_factory=dict)  # everything logged at the end, by name
    checkpoints: dict[str, Path] = field(default_factory=dict)  # "best" (and "last") under weights/
    runs: list[str] = field(default_factory=list)  # train_seeds: the run of each seed


def train(model: str, dataset: str, *, overrides: dict | None = None, datasets_root="datasets",
          weights_root="weights", experiment: str | None = None, run_name: str | None = None,
          reference: bool = False, log_model: bool = True, figures: bool = True, tags: dict | None = None,
          resume: str | None = None, start_from: str | None = None, callbacks=()) -> Fit:
    """Fit ``model`` on ``dataset`` in an MLflow run (hyperparameters as ``registry.create``), all
    that can be checked checked first. ``resume``: a ``last_`` checkpoint or run to continue;
    ``start_from``: a run or ``models:/`` URI of the same model on an earlier taxonomy, to update
    (``Model.update``). ``callbacks`` see every ``log_metrics`` (``cb(metrics, step)``); ``figures``:
    draw the test split's (or later: ``ktt figures RUN``). Under ``torchrun`` all processes fit, rank 0 tracks."""
    world = distributed.setup()
    if world.main:
        tracking.check_tracking_uri()
    # name rows for the classes no row has (ktt.zeroshot) are training rows like the others: an
    # update's diff sees them, so the nodes above a new category learn its name too
    ds = with_name_rows(load_dataset(dataset, datasets_root), registry.get(model).name_rows)
    est, update, tags = estimator(model, ds, overrides, resume, start_from, tags)
    if world.size > 1 and not est.distributable:
        raise BadValue(f"model {model!r} does not train on several processes; run it without torchrun")
    if not world.main:  # a helper process of a distributed fit: it fits, rank 0 does the rest
        fit(est, ds, NullLogger(), world, update)
        return Fit(None)
    if experiment:
        tracking.set_experiment(experiment)
    with tracking.start_run(run_name=run_name or f"{model}-{ds.name}", nested=mlflow.active_run() is not None) as run, \
            tracking.lenient(on_failure=lambda e: logger.kept_locally(e)):  # a lost server: the fit goes on
        logger = tracking.RunLogger(model, ds.name, weights_root, callbacks)  # nothing written before the run may start
        params = log_run_info(est, ds, world, tags)
        if log_model:  # created now, so that every metric is logged as the model's (MLflow 3): tracking.start_model
            logger.model_id = tracking.send(lambda: tracking.start_model(run.info.run_id, run.info.experiment_id, params))
        logged = False  # the model: filled by log_pyfunc (READY or FAILED), else marked FAILED here
        try:
            if update:
                tracking.log_dict(update[1].to_dict(), "taxonomy_diff.json")
            final = {"train_time_s": fit(est, ds, logger, world, update)}
            best = type(est).load(logger.paths["best"]) if "best" in logger.paths else est  # the epoch fit chose
            calibrate(best, ds.val, logger)
            logger.log_checkpoints()
            if log_model:
                logged = log_model_of(logger, model, ds)
            final.update(evaluate_and_log(best, ds, logger, figures, reference))
        except BaseException:
            if log_model and not logged:
                tracking.send(lambda: logger.model_id and tracking.fail_model(logger.model_id))
            raise
    log.info("run %s: test leaf accuracy %.4f, checkpoints %s", run.info.run_id,
             final["test_leaf_accuracy"], [str(p) for p in logger.paths.values()])
    return Fit(run.info.run_id, final, dict(logger.paths))


def estimator(model: str, ds, overrides, resume, start_from, tags) -> tuple:
    """The model to fit: fresh, resumed from a checkpoint or updated from a run; what it updates
    from (``updating``; None) and the run's tags."""
    if start_from:
        if resume:
            raise BadValue("--from updates a trained model, --resume continues an unfinished fit: give one")
        est, update = updating(model, ds, start_from, overrides)
        return est, update, {**(tags or {}), "ktt.parent_run": update[2]}
    if resume:
        return resumed(model, ds, resume, overrides), None, {"ktt.resumed_from": resume, **(tags or {})}
    return registry.get(model)(ds.hierarchy, **registry.params(model, overrides)), None, dict(tags or {})


def log_model_of(logger, model: str, ds) -> bool:
    """Log the ``best`` checkpoint as the run's model (``pyfunc.log_pyfunc``)."""
    from .pyfunc import log_pyfunc

    run_id = mlflow.active_run().info.run_id
    tracking.send(lambda: log_pyfunc(model, logger.paths["best"], ds.hierarchy.depth, ds.test.texts[:3], run_id,
                                     logger.model_id))
    return True  # MLflow marks it READY, or FAILED


def evaluate_and_log(best, ds, logger, figures: bool, reference: bool) -> dict:
    """Score the selected model on test (with its figures) and validation, log both; the metrics."""
    test = score_split(best, ds.test, curve=True)
    if figures:
        from .figures import log_figures

        log_figures(ds.hierarchy, ds.test.codes, *(test[k] for k in ("pred", "metrics", "confusions", "curve")),
                    "test", test["conf"])
    final = log_split(test, ds.test, "test", logger)
    final.update(log_split(score_split(best, ds.val), ds.val, "best_val", logger))
    if reference:
        log_reference_set(best, ds.test, logger)
    return final


def updating(model: str, ds, start_from: str, overrides: dict | None):
    """A fresh ``model`` for ``ds`` with the hyperparameters of the run ``start_from`` (``overrides``
    applied), and what it updates from: (the trained model, the taxonomy diff, the run ID)."""
    src = tracking.resolve_source(start_from)
    run_id = src.run_id
    if src.model != model:
        raise BadValue(f"{start_from} trained {src.model!r}, not {model!r}: an update starts from the same model")
    cls = registry.get(model)
    old = cls.load(src.checkpoint)
    est = cls(ds.hierarchy, **cls.check_params({**old.params, **(overrides or {})}))
    fixed = sorted(k for k in (overrides or {}) if k in cls.kept_on_update and est.params[k] != old.params.get(k))
    if fixed:
        raise BadValue(f"--from keeps what {start_from} learned with " + ", ".join(
            f"{k}={old.params.get(k)!r}" for k in fixed) + f": -p {fixed[0]}={est.params[fixed[0]]!r} needs a "
            "model trained from scratch (leave out --from)")
    return est, (old, taxonomy.diff(tracking.run_side(run_id, f"run {run_id[:8]}"), taxonomy.of_dataset(ds)), run_id)


def resumed(model: str, ds, resume: str, overrides: dict | None):
    """The model of a ``last_`` checkpoint (or run), its training state kept, ``overrides``
    applied to what may change on resume (``Model.resumable``)."""
    cls = registry.get(model)
    est = cls.load(tracking.resolve_checkpoint(resume))
    if getattr(est, "resume_state_", None) is None:
        raise BadValue(f"{resume} holds no training state; resume from a last_ checkpoint")
    if est.resume_state_.get("update"):
        raise BadValue(f"{resume} is an update's (--from): an update cannot be resumed; run it again with --from")
    if est.hierarchy != ds.hierarchy:
        raise BadValue(f"{resume} was trained on another hierarchy than dataset {ds.name!r}")
    wanted = cls.check_params({**est.params, **(overrides or {})})
    # the same value again (a command repeated as it was) is no change
    fixed = sorted(k for k in set(overrides or {}) - cls.resumable if wanted[k] != est.params.get(k))
    if fixed:
        raise BadValue(f"cannot change {fixed} when resuming; only {sorted(cls.resumable)}")
    est.params.update(wanted)
    return est


def log_run_info(est, ds, world, tags: dict) -> dict:
    """The run's tags (model, dataset, commit, the environment: ``tracking.environment``,
    processes), hyperparameters, dataset and installed packages (``environment.txt``); returns its params."""
    env, packages = tracking.environment()
    # the dataset first: its params wait while its input is sent, and the batch below joins them (one request)
    data_params = tracking.log_dataset(ds)
    params = {**est.params, "model": est.name}
    tracking.log_batch(params=params, tags={
        "ktt.model": est.name, "ktt.dataset": ds.name, "ktt.git_commit": tracking.git_commit(), **env,
        "ktt.taxonomy": taxonomy.digest(ds.hierarchy),
        **({"ktt.processes": str(world.size), "ktt.backend": distributed.backend()} if world.size > 1 else {}), **tags})
    tracking.log_text(packages, "environment.txt")
    tracking.log_parquet(lambda: taxonomy_table(ds), taxonomy.ARTIFACT)  # what `ktt taxonomy diff RUN` reads
    return {**data_params, **params}


_taxonomy_tables: dict = {}  # (dataset digest, training rows) -> its taxonomy.parquet table: a sweep's fits share it


def taxonomy_table(ds):
    key = (ds.digest, len(ds.train))  # the training rows' count: name rows included (ktt.zeroshot)
    if key not in _taxonomy_tables:
        if len(_taxonomy_tables) >= 2:
            _taxonomy_tables.pop(next(iter(_taxonomy_tables)))
        _taxonomy_tables[key] = taxonomy.of_dataset(ds).frame()
    return _taxonomy_tables[key]


def fit(est, ds, logger, world, update=None) -> float:
    """Fit (every process of a distributed fit together; ``update``: from a trained model, its
    diff); the seconds it took, logged."""
    t0 = time.perf_counter()
    if update:
        est.update(update[0], update[1], ds.train, ds.val, logger)
    else:
        est.fit(ds.train, ds.val, logger)
    train_time = time.perf_counter() - t0
    distributed.finish(world)  # from here on rank 0 works alone
    logger.log_metrics({"train_time_s": train_time})
    return train_time


def score_split(model, split, curve: bool = False) -> dict:
    """``model`` on ``split``: paths and level confidences (``pred``, ``conf``), the metrics
    (``predict_rows_per_s`` included), the confusions and, with ``curve``, the stopping curve."""
    h, t0 = model.hierarchy, time.perf_counter()
    pred, conf = model.predict_confident(split.texts)
    metrics = {**evaluate(h, split.codes, pred), **level_ece(h, split.codes, pred, conf)}
    metrics["predict_rows_per_s"] = len(split) / max(time.perf_counter() - t0, 1e-9)
    return {"pred": pred, "conf": conf, "metrics": metrics, "confusions": confusion_summary(h, split.codes, pred),
            "curve": pd.DataFrame(stop_curve(h, split.codes, pred, conf)) if curve else None}


def log_split(scored: dict, split, name: str, logger) -> dict[str, float]:
    """Log :func:`score_split`'s results as ``<name>_*``: the metrics (and a JSON copy), the
    per-level table, the confusions and, with a curve (the test split), the per-row counts
    ``ktt compare`` resamples and the stopping curve; returns the prefixed metrics."""
    h, metrics = split.hierarchy, scored["metrics"]
    prefixed = {f"{name}_{k}": v for k, v in metrics.items()}
    logger.log_metrics(prefixed)
    tracking.log_dict(metrics, f"metrics/{name}_metrics.json")
    tracking.log_text(level_table(h, metrics), f"metrics/{name}_levels.md")
    tracking.log_table(scored["confusions"], f"metrics/{name}_confusions.json")
    if scored["curve"] is not None:
        tracking.log_test_rows(row_counts(h, split.codes, scored["pred"]), split.codes[:, -1])
        tracking.log_table(scored["curve"], f"metrics/{name}_stop_curve.json")
    return prefixed


def log_reference_set(model, split, logger) -> None:
    """The drift reference set of ``split`` beside the checkpoints, and as a run artifact."""
    ref = model.gen_reference_set(split)
    last = logger.paths.get("last", logger.paths["best"])
    path = last.with_name(last.stem + "_reference.parquet")
    tracking.atomic_write(path, lambda tmp: ref.to_parquet(tmp, index=False))
    tracking.log_path(path, "checkpoints")


def train_seeds(model: str, dataset: str, seeds: list[int], *, overrides: dict | None = None, run_name=None,
                tags: dict | None = None, **kw) -> Fit:
    """One fit per seed, nested under one run for the model that logs each final metric's mean
    and sample standard deviation (``<metric>`` and ``<metric>_sd``). A seed changes everything
    random in a fit (initialisation, batch order, dropout, SGD's shuffling) and nothing else.
    Returns the group's :class:`Fit` (its metrics: the means) with ``runs``, the seeds' run IDs."""
    from .compare import mean_sd

    if "seed" not in registry.get(model).defaults:
        raise BadValue(f"model {model!r} has no seed hyperparameter: it cannot be trained over seeds")
    tracking.check_tracking_uri()  # before the group's run: its start would be retried for minutes
    with tracking.start_run(run_name=run_name or f"{model}-{Path(str(dataset)).name}-seeds",
                            nested=mlflow.active_run() is not None,
                            tags={**(tags or {}), "ktt.stage": "seeds", "ktt.model": model,
                                  "ktt.dataset": Path(str(dataset)).name}) as group:
        fits = [train(model, dataset, overrides={**(overrides or {}), "seed": s}, run_name=f"{model}-seed{s}",
                      tags={**(tags or {}), "ktt.seed": str(s)}, **kw) for s in seeds]
        stats = {k: mean_sd([f.metrics[k] for f in fits]) for k in fits[0].metrics}
        mlflow.log_params({"model": model, "seeds": ",".join(map(str, seeds))})
        mlflow.log_metrics({k: m for k, (m, _) in stats.items() if np.isfinite(m)})
        mlflow.log_metrics({f"{k}_sd": sd for k, (_, sd) in stats.items() if np.isfinite(sd)})
    return Fit(group.info.run_id, {**{k: m for k, (m, _) in stats.items()}, **{f"{k}_sd": sd for k, (_, sd) in stats.items()}},
               runs=[f.run_id for f in fits])
