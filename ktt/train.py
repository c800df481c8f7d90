"""One tracked fit: load the dataset, fit, checkpoint, evaluate, log everything to MLflow."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from . import allocator, distributed, registry, taxonomy, tracking
from .errors import BadValue
from .data import load_dataset
from . import figures as pictures
from .metrics import confusion_summary, evaluate, level_ece, level_table, row_counts, stop_curve
from .model import NullLogger

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
                           for k, v in zip(("a", "b", "a_end", "b_end"), m)},
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
          reference: bool = False, log_model: bool = True, tags: dict | None = None,
          resume: str | None = None, start_from: str | None = None, callbacks=()) -> Fit:
    """Fit ``model`` on ``dataset`` inside an MLflow run (hyperparameters as ``registry.create``).

    Everything that can be checked is checked before the run starts: the tracking
    server, the dataset, the model name and every hyperparameter. ``resume`` (a ``last_``
    checkpoint or an MLflow run) continues a fit from the end of its last finished epoch.
    ``callbacks`` see every ``log_metrics`` call of the fit (``cb(metrics, step)``). The test
    split's figures are drawn and logged in the background, while the caller goes on (the next
    fit of a sweep): ``ktt.figures.wait()`` waits for them, and so does the process at exit.
    ``start_from`` (a run ID, ``runs:/`` or ``models:/`` URI of the same model, trained on an
    earlier taxonomy) updates that model instead of training from scratch (``Model.update``).

    Under ``torchrun`` every process calls this: all of them fit, each on its part of every
    batch (:mod:`ktt.distributed`); only rank 0 tracks, checkpoints and evaluates.
    """
    allocator.configure()  # before the dataset is loaded: a fit's arrays stay on the heap (ktt.allocator)
    allocator.settle()  # from the second fit of a sweep on, full collections skip what the first left
    world = distributed.setup()
    if world.main:
        tracking.check_tracking_uri()
        pictures.warm()  # matplotlib, imported in another process while this one loads and fits
    ds = load_dataset(dataset, datasets_root)
    update = None
    if start_from:
        if resume:
            raise BadValue("--from updates a trained model, --resume continues an unfinished fit: give one")
        est, update = updating(model, ds, start_from, overrides)
        tags = {**(tags or {}), "ktt.parent_run": update[2]}
    else:
        est = resumed(model, ds, resume, overrides) if resume else \
            registry.get(model)(ds.hierarchy, **registry.params(model, overrides))
    if world.size > 1 and not est.distributable:
        raise BadValue(f"model {model!r} does not train on several processes; run it without torchrun")
    if not world.main:  # a helper process of a distributed fit: it fits, rank 0 does the rest
        est.update(*update[:2], ds.train, ds.val, NullLogger()) if update else est.fit(ds.train, ds.val, NullLogger())
        distributed.finish(world)
        return Fit(None)
    if experiment:
        tracking.set_experiment(experiment)
    with tracking.start_run(run_name=run_name or f"{model}-{ds.name}", nested=mlflow.active_run() is not None) as run, \
            tracking.uploading():  # artifacts uploaded while the run goes on, all of them before it ends
        logger = tracking.RunLogger(model, ds.name, weights_root, callbacks)
        params = log_run_info(est, ds, world, {**({"ktt.resumed_from": resume} if resume else {}), **(tags or {})})
        pending = None  # the run's logged model (the future of its ID), until the checkpoint is logged into it
        if log_model:  # created now, so that every metric is logged as the model's (MLflow 3): tracking.start_model
            run_id, exp_id = run.info.run_id, run.info.experiment_id
            pending = logger.model_id = tracking.in_order(lambda: tracking.start_model(run_id, exp_id, params))
        try:
            if update:
                tracking.log_dict(update[1].to_dict(), "taxonomy_diff.json")
            final = {"train_time_s": fit(est, ds, logger, world, update)}
            # the checkpoint of the epoch the fit selected, or the fitted model (written once calibrated)
            best = type(est).load(logger.paths["best"]) if "best" in logger.paths else est
            calibrate(best, ds.val, logger)
            logger.log_checkpoints()  # final from here on: uploaded while the model is evaluated
            if log_model:  # in the background, while the model is evaluated
                from .pyfunc import log_pyfunc

                checkpoint, example, model_id = logger.paths["best"], ds.test.texts[:3], pending
                tracking.in_order(lambda: log_pyfunc(model, checkpoint, ds.hierarchy.depth, example, run_id,
                                                     model_id.result()))
                pending = None  # MLflow marks it READY, or FAILED
            test = score_split(best, ds.test, curve=True)  # the checkpoint fit selected, once
            pictures.log_later(run, ds.hierarchy, ds.test.codes,  # drawn and logged while the rest goes on
                               *(test[k] for k in ("pred", "metrics", "confusions", "curve")), "test", test["conf"])
            final.update(log_split(test, ds.test, "test", logger))
            final.update(log_split(score_split(best, ds.val), ds.val, "best_val", logger))
            if reference:
                log_reference_set(best, ds.test, logger)
        except BaseException:
            if pending is not None:
                failed = pending
                tracking.in_order(lambda: tracking.fail_model(failed.result()))
            raise
        log.info("run %s: test leaf accuracy %.4f, checkpoints %s", run.info.run_id,
                 final["test_leaf_accuracy"], [str(p) for p in logger.paths.values()])
        return Fit(run.info.run_id, final, dict(logger.paths))


def updating(model: str, ds, start_from: str, overrides: dict | None):
    """A fresh ``model`` for ``ds`` with the hyperparameters of the run ``start_from`` (``overrides``
    applied), and what it updates from: (the trained model, the taxonomy diff, the run ID)."""
    from .export import _from_run, run_of, run_side

    run_id = run_of(start_from)
    src = _from_run(run_id)
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
    return est, (old, taxonomy.diff(run_side(run_id, f"run {run_id[:8]}"), taxonomy.of_dataset(ds)), run_id)


def resumed(model: str, ds, resume: str, overrides: dict | None):
    """The model of a ``last_`` checkpoint (or run), its training state kept, ``overrides``
    applied to what may change on resume (``Model.resumable``)."""
    cls = registry.get(model)
    est = cls.load(tracking.resolve_checkpoint(resume))
    if getattr(est, "resume_state_", None) is None:
        raise BadValue(f"{resume} holds no training state; resume from a last_ checkpoint")
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


_taxonomy_tables: dict = {}  # dataset digest -> its taxonomy.parquet table: a sweep's fits of one dataset share it


def taxonomy_table(ds):
    if ds.digest not in _taxonomy_tables:
        if len(_taxonomy_tables) >= 2:
            _taxonomy_tables.pop(next(iter(_taxonomy_tables)))
        _taxonomy_tables[ds.digest] = taxonomy.of_dataset(ds).frame()
    return _taxonomy_tables[ds.digest]


def fit(est, ds, logger, world, update=None) -> float:
    """Fit (every process of a distributed fit together; ``update``: from a trained model, its
    diff); the seconds it took."""
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
