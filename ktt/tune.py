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

import dataclasses
import json
import logging
import multiprocessing as mp
import os
import random
import secrets
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from . import figures, hparams, registry, threads
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
def open_storage(url: str | None, study_name: str, heartbeat: int | None = None):
    """A journal file by default; any other value is an Optuna RDB URL (SQLite, PostgreSQL, ...).

    On an RDB, every running trial records a heartbeat each ``heartbeat`` seconds: a trial whose
    worker died (killed, machine lost) is failed after two silent intervals and run again once,
    by whichever worker asks for a trial next.
    """
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if not url:
        url = str(Path("tuning") / f"{study_name}.journal")
    for attempt in range(3):
        try:
            if "://" in url:
                beat = {"heartbeat_interval": heartbeat, "heartbeat_stale_trial_callback": _stale_trial} if heartbeat else {}
                with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return url, optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, **beat)
            Path(url).parent.mkdir(parents=True, exist_ok=True)
            return url, JournalStorage(JournalFileBackend(url))
        except Exception as e:
            # workers starting together on a new database race to create Optuna's tables: the loser's
            # CREATE fails on a duplicate, and the tables exist when it tries again
            if "duplicate" in str(e).lower() and attempt < 2:
                time.sleep(0.5 + random.random())
                continue
            raise Unavailable(f"cannot open Optuna storage {url!r}: {type(e).__name__}: {str(e).splitlines()[0]}") from None


def _stale_trial(study, trial) -> None:
    """A trial whose worker died: run it again, and mark its MLflow run KILLED (it would stay RUNNING)."""
    import mlflow
    from optuna.storages import RetryFailedTrialCallback

    RetryFailedTrialCallback(max_retry=1)(study, trial)
    client = mlflow.MlflowClient()
    parent = study.user_attrs.get("mlflow_parent_run_id")
    if not parent:
        return
    exp = client.get_run(parent).info.experiment_id
    for run in client.search_runs([exp], f"tags.`ktt.study` = '{study.study_name}' and tags.`ktt.trial` = "
                                         f"'{trial.number}' and attributes.status = 'RUNNING'"):
        client.set_terminated(run.info.run_id, "KILLED")
        log.warning("trial %d: its worker died; MLflow run %s marked KILLED, trial queued again",
                    trial.number, run.info.run_id)


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
    heartbeat: int = 60
    datasets_root: str = "datasets"
    weights_root: str = "weights"
    experiment: str | None = None

    def __post_init__(self):
        self.study_name = self.study_name or f"{self.model}-{self.dataset}"
        self.timeout = self.timeout or None  # 0: no time limit
        if self.n_trials < 1 or self.workers < 1 or self.heartbeat < 1:
            raise BadValue(f"n_trials, workers and heartbeat must be at least 1, not {self.n_trials}, "
                           f"{self.workers} and {self.heartbeat}")


def _objective(sweep: Sweep, space: dict, defaults: dict, parent_run_id: str, lost: list):
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
                        weights_root=sweep.weights_root, run_name=f"trial-{trial.number}", log_model=False, figures=False,
                        tags={"mlflow.parentRunId": parent_run_id, "ktt.trial": str(trial.number),
                              "ktt.study": sweep.study_name}, callbacks=[report])
        except optuna.TrialPruned:
            run = mlflow.last_active_run()
            mlflow.MlflowClient().set_tag(run.info.run_id, "ktt.pruned", "true")
            raise
        except Unavailable as e:  # the tracking server is gone: every later trial would fail the same way
            lost.append(e)
            trial.study.stop()
            return float("nan")  # a failed trial, one line in Optuna's log; the sweep then raises it
        value = fit.metrics[sweep.metric]
        trial.set_user_attr("mlflow_run_id", fit.run_id)
        return value

    return objective


def _worker(sweep: Sweep, space: dict, defaults: dict, parent_run_id: str, tracking_uri: str, experiment_id: str,
            n_trials: int, index: int = 0, search: tuple | None = None):
    """One process of a sweep: runs ``n_trials`` trials (pruned and failed ones count). ``search``:
    the sweep's sampler and pruner when it runs in the sweep's own process; another process
    builds its own, its sampler seeded ``seed + index`` (the same seed would draw the same trials)."""
    import mlflow
    import optuna

    if sweep.workers > 1:  # each worker gets its share of the cores (read by training), not all of them
        os.environ[threads.ENV] = str(threads.share(sweep.workers))
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment_id=experiment_id)
    _, storage = open_storage(sweep.storage, sweep.study_name, sweep.heartbeat)
    sampler, pruner = search or (make_sampler(sweep.sampler, sweep.seed + index),
                                 make_pruner(sweep.pruner, defaults.get("epochs")))
    study = optuna.load_study(study_name=sweep.study_name, storage=storage, sampler=sampler, pruner=pruner)
    lost: list = []
    study.optimize(_objective(sweep, space, defaults, parent_run_id, lost), n_trials=n_trials, timeout=sweep.timeout,
                   catch=(Exception,))
    if lost:
        if search is None:  # a spawned worker: its one line, and a failed exit
            raise SystemExit(f"error: {lost[0]}")
        raise lost[0]


def _join(sweep: Sweep, storage, url: str, defaults: dict, space: dict, sampler, pruner):
    """Create the study, or join it: ``(study, created)``. Exactly one of several workers
    starting at once creates it (the storage's unique study name decides)."""
    import optuna

    kw = dict(study_name=sweep.study_name, storage=storage, sampler=sampler, pruner=pruner)
    try:
        study = optuna.create_study(direction="maximize", **kw)
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(**kw), False
    except Exception as e:
        raise Unavailable(f"cannot open study {sweep.study_name!r} in {url}: {e}") from None
    study.enqueue_trial({k: defaults[k] for k, s in space.items() if s["type"] != "fixed"})  # from the defaults
    return study, True


def _parent_run(study, storage, created: bool, sweep: Sweep, url: str, space: dict, wait_s: float = 60.0) -> str:
    """The study's MLflow parent run: made by the worker that created the study; a joining
    worker waits for it (a creator that died first leaves the joiner to make it)."""
    import mlflow
    import optuna

    from .tracking import start_run

    deadline = time.monotonic() + (0 if created else wait_s)
    while not (parent_id := study.user_attrs.get("mlflow_parent_run_id")) and time.monotonic() < deadline:
        time.sleep(0.5)
        study = optuna.load_study(study_name=sweep.study_name, storage=storage)  # re-read its attributes
    if parent_id:
        return parent_id
    with start_run(run_name=f"tune-{sweep.study_name}") as parent:
        mlflow.set_tags({"ktt.stage": "tune", "ktt.model": sweep.model, "ktt.study": sweep.study_name})
        mlflow.log_params({"model": sweep.model, "dataset": sweep.dataset, "study_name": sweep.study_name,
                           "storage": url, "sampler": sweep.sampler, "pruner": sweep.pruner,
                           "metric": sweep.metric, "seed": sweep.seed, "search_space": json.dumps(space)})
    study.set_user_attr("mlflow_parent_run_id", parent.info.run_id)
    return parent.info.run_id


def run_sweep(sweep: Sweep) -> "optuna.Study":  # noqa: F821
    """Run, resume or join a study and add ``n_trials`` trials to it; returns it.

    Everything is validated before any trial. Workers on other machines join by running the
    same command with the same ``--storage`` (an RDB such as PostgreSQL) and study name.
    """
    import mlflow
    import optuna

    from .data import load_dataset
    from .tracking import check_tracking_uri, set_experiment, start_run

    check_tracking_uri()
    load_dataset(sweep.dataset, sweep.datasets_root)
    space = load_space(sweep.model)
    defaults = registry.params(sweep.model)
    # built once per sweep (and so checked before any storage is touched)
    sampler, pruner = make_sampler(sweep.sampler, sweep.seed), make_pruner(sweep.pruner, defaults.get("epochs"))
    url, storage = open_storage(sweep.storage, sweep.study_name, sweep.heartbeat)
    study, created = _join(sweep, storage, url, defaults, space, sampler, pruner)
    if not created:  # a worker joining a running study: with the creator's seed it would sample the same trials
        sweep = dataclasses.replace(sweep, seed=secrets.randbits(31))
        sampler.reseed_rng()

    if sweep.experiment:
        set_experiment(sweep.experiment)
    parent_id = _parent_run(study, storage, created, sweep, url, space)
    experiment_id = mlflow.MlflowClient().get_run(parent_id).info.experiment_id
    shares = [sweep.n_trials // sweep.workers + (i < sweep.n_trials % sweep.workers) for i in range(sweep.workers)]
    args = (sweep, space, defaults, parent_id, mlflow.get_tracking_uri(), experiment_id)
    if sweep.workers == 1:
        _worker(*args, shares[0], search=(sampler, pruner))
    else:
        procs = [mp.get_context("spawn").Process(target=_worker, args=(*args, n, i)) for i, n in enumerate(shares) if n]
        [p.start() for p in procs]
        [p.join() for p in procs]
    study = optuna.load_study(study_name=sweep.study_name, storage=storage)
    with start_run(run_id=parent_id):  # the summary so far: each worker that finishes brings it up to date
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
    from mlflow.exceptions import MlflowException

    for attempt in range(2):  # fleet workers share the study's run and end together: a tag both insert
        try:                  # at once fails one of them on the server's key (seen on PostgreSQL); again, it updates
            mlflow.set_tag("ktt.best_run_id", best.user_attrs.get("mlflow_run_id", ""))
            break
        except MlflowException:
            if attempt:
                raise
    try:  # the best trial's figures: trials leave them out (ktt.train)
        figures.for_run(best.user_attrs["mlflow_run_id"], sweep.datasets_root)
    except Exception as e:  # the sweep's results stand without them
        from .tracking.logs import cause

        log.warning("no figures for the best trial: %s", cause(e))
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

