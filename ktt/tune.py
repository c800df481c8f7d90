"""Optuna sweeps over a model's search space, every trial a nested MLflow run.

The search space is the ``tune`` section of the model's entry in ``hyperparameters.json``::

    "tune": {"alpha": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
             "min_df": {"type": "int", "low": 1, "high": 8},
             "loss": {"type": "categorical", "choices": ["hinge", "modified_huber"]},
             "max_iter": {"type": "fixed", "value": 1000}}

The first trial of a new study is always the current defaults, so a sweep can only improve
on them.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import hparams, registry, threads
from .errors import BadValue, Unavailable

log = logging.getLogger(__name__)

TYPES = ("fixed", "categorical", "uniform", "loguniform", "int")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")


# -- search spaces ------------------------------------------------------------------------
def check_space(model: str, space: dict) -> dict:
    """Validate a search space against the model's hyperparameters; errors name the bad entry."""
    known = registry.get(model).defaults
    if not space:
        raise BadValue(f"model {model!r} has no search space: add a \"tune\" section to its entry in "
                         "hyperparameters.json")
    for name, spec in space.items():
        where = f"search space of {model!r}, parameter {name!r}"
        if name not in known:
            raise BadValue(f"{where}: unknown hyperparameter; known: {sorted(known)}")
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind not in TYPES:
            raise BadValue(f"{where}: type must be one of {TYPES}, not {kind!r}")
        if kind == "fixed" and "value" not in spec:
            raise BadValue(f"{where}: a fixed parameter needs a \"value\"")
        if kind == "categorical" and not spec.get("choices"):
            raise BadValue(f"{where}: empty \"choices\"")
        if kind in ("uniform", "loguniform", "int"):
            lo, hi = spec.get("low"), spec.get("high")
            if not isinstance(lo, (int, float)) or not isinstance(hi, (int, float)) or not lo < hi:
                raise BadValue(f"{where}: empty range [{lo}, {hi}]: need numbers with low < high")
            if kind == "loguniform" and lo <= 0:
                raise BadValue(f"{where}: a log-uniform range must be positive, not [{lo}, {hi}]")
    return space


def suggest(trial, space: dict) -> dict:
    out = {}
    for name, spec in space.items():
        kind = spec["type"]
        if kind == "fixed":
            out[name] = spec["value"]
        elif kind == "categorical":
            out[name] = trial.suggest_categorical(name, spec["choices"])
        elif kind == "int":
            out[name] = trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=spec.get("log", False))
        else:
            out[name] = trial.suggest_float(name, spec["low"], spec["high"], log=kind == "loguniform")
    return out


def load_space(model: str, path=None) -> dict:
    return check_space(model, hparams.entry(model, path).get("tune", {}))


# -- storage, sampler, pruner ---------------------------------------------------------------
def open_storage(url: str | None, study_name: str):
    """A journal file by default; any other value is an Optuna RDB URL (SQLite, PostgreSQL, ...)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if not url:
        url = str(Path("tuning") / f"{study_name}.journal")
    try:
        if "://" in url:
            return url, optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return url, JournalStorage(JournalFileBackend(url))
    except Exception as e:
        raise Unavailable(f"cannot open Optuna storage {url!r}: {type(e).__name__}: {str(e).splitlines()[0]}") from None


def make_sampler(name: str, seed: int):
    import optuna

    if name not in SAMPLERS:
        raise BadValue(f"sampler must be one of {SAMPLERS}, not {name!r}")
    return optuna.samplers.TPESampler(seed=seed) if name == "tpe" else optuna.samplers.RandomSampler(seed=seed)


def make_pruner(name: str, epochs: int | None):
    import optuna

    if name not in PRUNERS:
        raise BadValue(f"pruner must be one of {PRUNERS}, not {name!r}")
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs or "auto")
    return optuna.pruners.NopPruner()


# -- the sweep --------------------------------------------------------------------------------
@dataclass
class Sweep:
    model: str
    dataset: str
    n_trials: int = 20
    timeout: float | None = None
    storage: str | None = None
    study_name: str | None = None
    sampler: str = "tpe"
    pruner: str = "median"
    workers: int = 1
    metric: str = "best_val_h_f1"
    seed: int = 0
    datasets_root: str = "datasets"
    weights_root: str = "weights"
    experiment: str | None = None

    def __post_init__(self):
        self.study_name = self.study_name or f"{self.model}-{self.dataset}"
        self.timeout = self.timeout or None  # 0: no time limit
        if self.n_trials < 1 or self.workers < 1:
            raise BadValue(f"n_trials and workers must be at least 1, not {self.n_trials} and {self.workers}")


def _objective(sweep: Sweep, space: dict, defaults: dict, parent_run_id: str):
    import mlflow
    import optuna

    from .train import train

    def objective(trial):
        params = {**defaults, **suggest(trial, space)}
        per_epoch = sweep.metric.removeprefix("best_")  # the same metric, logged after every epoch

        def report(metrics, step):
            if per_epoch in metrics and step is not None:
                trial.report(metrics[per_epoch], step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {step}")
        try:
            fit = train(sweep.model, sweep.dataset, overrides=params, datasets_root=sweep.datasets_root,
                        weights_root=sweep.weights_root, run_name=f"trial-{trial.number}", log_model=False,
                        tags={"mlflow.parentRunId": parent_run_id, "ktt.trial": str(trial.number),
                              "ktt.study": sweep.study_name}, callbacks=[report])
        except optuna.TrialPruned:
            run = mlflow.last_active_run()
            mlflow.MlflowClient().set_tag(run.info.run_id, "ktt.pruned", "true")
            raise
        value = fit.metrics[sweep.metric]
        trial.set_user_attr("mlflow_run_id", fit.run_id)
        return value

    return objective


def _worker(sweep: Sweep, space: dict, defaults: dict, parent_run_id: str, tracking_uri: str, experiment_id: str,
            n_trials: int, index: int = 0):
    """One process of a sweep: runs trials until the study holds ``n_trials`` trials."""
    import mlflow
    import optuna
    from optuna.study import MaxTrialsCallback

    if sweep.workers > 1:  # each worker gets its share of the cores (read by training), not all of them
        os.environ[threads.ENV] = str(threads.share(sweep.workers))
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment_id=experiment_id)
    _, storage = open_storage(sweep.storage, sweep.study_name)
    study = optuna.load_study(study_name=sweep.study_name, storage=storage,
                              sampler=make_sampler(sweep.sampler, sweep.seed + index),
                              pruner=make_pruner(sweep.pruner, defaults.get("epochs")))
    study.optimize(_objective(sweep, space, defaults, parent_run_id), timeout=sweep.timeout,
                   callbacks=[MaxTrialsCallback(n_trials, states=None)], catch=(Exception,))


def run_sweep(sweep: Sweep) -> "optuna.Study":  # noqa: F821
    """Run (or resume, or join) a study; returns it. Everything is validated before any trial."""
    import mlflow
    import optuna

    from .data import load_dataset
    from .tracking import check_tracking_uri

    check_tracking_uri()
    load_dataset(sweep.dataset, sweep.datasets_root)
    space = load_space(sweep.model)
    defaults = registry.params(sweep.model)
    make_sampler(sweep.sampler, sweep.seed)
    make_pruner(sweep.pruner, defaults.get("epochs"))
    url, storage = open_storage(sweep.storage, sweep.study_name)
    try:
        study = optuna.create_study(study_name=sweep.study_name, storage=storage, direction="maximize",
                                    load_if_exists=True, sampler=make_sampler(sweep.sampler, sweep.seed),
                                    pruner=make_pruner(sweep.pruner, defaults.get("epochs")))
    except Exception as e:
        raise Unavailable(f"cannot open study {sweep.study_name!r} in {url}: {e}") from None
    if not study.trials:  # a new study starts from the current defaults
        study.enqueue_trial({k: defaults[k] for k, s in space.items() if s["type"] != "fixed"})
    target = len(study.trials) - sum(t.state == optuna.trial.TrialState.WAITING for t in study.trials) \
        + sweep.n_trials

    if sweep.experiment:
        mlflow.set_experiment(sweep.experiment)
    parent_id = study.user_attrs.get("mlflow_parent_run_id")
    with mlflow.start_run(run_id=parent_id, run_name=None if parent_id else f"tune-{sweep.study_name}") as parent:
        study.set_user_attr("mlflow_parent_run_id", parent.info.run_id)
        mlflow.set_tags({"ktt.stage": "tune", "ktt.model": sweep.model, "ktt.study": sweep.study_name})
        if not parent_id:
            mlflow.log_params({"model": sweep.model, "dataset": sweep.dataset, "study_name": sweep.study_name,
                               "storage": url, "sampler": sweep.sampler, "pruner": sweep.pruner,
                               "metric": sweep.metric, "seed": sweep.seed, "search_space": json.dumps(space)})
        args = (sweep, space, defaults, parent.info.run_id, mlflow.get_tracking_uri(), parent.info.experiment_id,
                target)
        if sweep.workers == 1:
            _worker(*args)
        else:
            procs = [mp.get_context("spawn").Process(target=_worker, args=(*args, i)) for i in range(sweep.workers)]
            [p.start() for p in procs]
            [p.join() for p in procs]
        study = optuna.load_study(study_name=sweep.study_name, storage=storage)
        _log_study(study, sweep)
    return study


def _log_study(study, sweep: Sweep) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    import optuna
    from optuna.visualization import matplotlib as ovm

    states = [t.state.name for t in study.trials]
    mlflow.log_metrics({"n_trials": len(states), "n_complete": states.count("COMPLETE"),
                        "n_pruned": states.count("PRUNED"), "n_failed": states.count("FAIL")})
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        log.warning("study %s has no completed trial", study.study_name)
        return
    best = study.best_trial
    mlflow.log_metric("best_trial_value", best.value)
    mlflow.log_dict({"trial": best.number, "value": best.value, "params": best.params,
                     "mlflow_run_id": best.user_attrs.get("mlflow_run_id")}, "best_params.json")
    mlflow.set_tag("ktt.best_run_id", best.user_attrs.get("mlflow_run_id", ""))
    plots = [("optimization_history.png", ovm.plot_optimization_history)]
    if len(done) > 1 and len(best.params) > 1:
        plots.append(("param_importances.png", ovm.plot_param_importances))
    with tempfile.TemporaryDirectory() as tmp:
        for name, plot in plots:
            try:
                ax = plot(study)
                (ax.figure if hasattr(ax, "figure") else ax[0].figure).savefig(Path(tmp) / name, dpi=100,
                                                                                bbox_inches="tight")
                plt.close("all")
                mlflow.log_artifact(str(Path(tmp) / name), "plots")
            except (ValueError, RuntimeError) as e:  # e.g. importances of a constant objective
                log.warning("could not plot %s: %s", name, e)


def write_back(study, model: str, path=None) -> Path:
    """Put the best trial's params into the model's entry of hyperparameters.json, noting their origin."""
    path = hparams.file(path)
    data = json.loads(path.read_text())
    entry = data.setdefault(model, {})
    best = study.best_trial
    for k, v in best.params.items():
        entry[k] = v
    entry["_tuned_from"] = {"study": study.study_name, "trial": best.number, "value": best.value,
                            "mlflow_run_id": best.user_attrs.get("mlflow_run_id")}
    from .tracking import atomic_write
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))
    return path

