"""What a fit logs to its MLflow run: metrics, params and tags, files, its dataset, its logged
model, and its checkpoints (:class:`RunLogger`). Every call is made where it is logged: a design
with one background upload thread saved 0.12 s a fit, not beyond noise (docs/benchmarks.md)."""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import mlflow

from ..errors import Unavailable
from .checkpoints import KINDS, SUFFIX, atomic_write, claim, remove_stale
from .mlflow_compat import artifact_store, dataset_input

_state = threading.local()  # .lost inside :func:`lenient`: its first failure; once set, nothing more is sent


@contextlib.contextmanager
def lenient(on_failure=None):
    """Within this block a failed MLflow call of this module (a tracking server gone, after
    MLflow's bounded retries: ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``) does not stop the fit: nothing
    more is sent, so the fit goes on to its end without waiting out every later request's
    retries, and leaving the block raises that failure, or ``on_failure(error)`` (an exception
    to raise instead). A nested block: the outer one raises. Each thread has its own."""
    if getattr(_state, "lost", None) is not None:
        yield
        return
    _state.lost = []
    try:
        yield
    finally:
        lost, _state.lost = _state.lost, None
    if lost:
        raise (on_failure(lost[0]) if on_failure else lost[0])


def send(work):
    """``work()``'s result; inside :func:`lenient`, None once a call failed (that one included)."""
    lost = getattr(_state, "lost", None)
    if lost is None:
        return work()
    if lost:
        return None
    try:
        return work()
    except Exception as e:
        lost.append(e)
        return None


def _run():
    """The active run; like MLflow's own ``log_*``, a run is started when none is."""
    return mlflow.active_run() or mlflow.start_run()


def log_batch(metrics: dict | None = None, params: dict | None = None, tags: dict | None = None,
              step: int | None = None, model_id=None) -> None:
    """Metrics, params and tags of the active run, in one request (MLflow's ``log_batch``);
    ``model_id``: the logged model the metrics belong to."""
    from mlflow.entities import Metric, Param, RunTag

    now, run_id = int(time.time() * 1000), _run().info.run_id

    send(lambda: mlflow.MlflowClient().log_batch(
        run_id, metrics=[Metric(k, float(v), now, step or 0, model_id=model_id) for k, v in (metrics or {}).items()],
        params=[Param(k, str(v)) for k, v in (params or {}).items()],
        tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()]))


def log_file(write, artifact_file: str) -> None:
    """Log an artifact of the active run that ``write(path)`` writes into a temp folder."""
    store, parent = _store(), str(Path(artifact_file).parent)

    def work():
        folder = Path(tempfile.mkdtemp(prefix="ktt-artifact-"))
        try:
            write(folder / Path(artifact_file).name)
            store.log_artifact(str(folder / Path(artifact_file).name), None if parent == "." else parent)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    send(work)


def log_path(path: Path, artifact_path: str | None = None) -> None:
    """Upload the file or folder ``path`` to the active run's ``artifact_path``."""
    store = _store()
    send(lambda: (store.log_artifacts if Path(path).is_dir() else store.log_artifact)(str(path), artifact_path))


def _store():
    return artifact_store(_run().info.artifact_uri, mlflow.get_tracking_uri())


def log_text(text: str, artifact_file: str) -> None:
    log_file(lambda p: p.write_text(text, encoding="utf-8"), artifact_file)


def log_dict(d: dict, artifact_file: str) -> None:
    log_file(lambda p: p.write_text(json.dumps(d, indent=1, default=str), encoding="utf-8"), artifact_file)


def log_table(df, artifact_file: str) -> None:
    """A DataFrame in the file format of ``mlflow.log_table`` (``{"columns", "data"}``), in one
    upload: ``mlflow.log_table`` also lists, re-reads and re-tags the run, seven requests to a
    tracking server per table (it keeps a tag for the UI's table comparison, which KTT does not use)."""
    log_file(lambda p: df.to_json(p, orient="split", index=False, date_format="iso"), artifact_file)


def log_parquet(table, artifact_file: str) -> None:
    """A pyarrow table (or a function that makes it, called when it is written: :func:`log_file`)
    as a Parquet run artifact (one upload)."""
    import pyarrow.parquet as pq

    log_file(lambda p: pq.write_table(table() if callable(table) else table, p), artifact_file)


def log_dataset(ds, context: str = "training") -> dict:
    """Log an intermediate dataset as an MLflow dataset input, with its row counts and hash (params, returned)."""
    inputs = [dataset_input(str(Path(ds.path).resolve()), ds.name, ds.digest, context)]
    run_id = _run().info.run_id
    send(lambda: _log_inputs(run_id, inputs))
    params = {"dataset": ds.name, "dataset_digest": ds.digest, **{f"rows_{s}": n for s, n in ds.manifest.get("rows", {}).items()}}
    log_batch(params=params)
    return params


def _log_inputs(run_id: str, inputs: list) -> None:
    client = mlflow.MlflowClient()
    try:
        client.log_inputs(run_id, datasets=inputs)
    except mlflow.exceptions.MlflowException as e:
        # MLflow's SQL store inserts a new dataset row after checking it is absent: two runs logging
        # the same dataset at once (tuning workers, parallel trainings) race to a unique-key error
        # (SQLite: "UNIQUE constraint failed", PostgreSQL through a server: "violates unique constraint").
        # The row exists by now, so a second try links to it.
        if "unique constraint" not in str(e).lower() and "IntegrityError" not in str(e):
            raise
        client.log_inputs(run_id, datasets=inputs)


def start_model(run_id: str, experiment_id: str, params: dict) -> str:
    """The run's logged model ``model``, created empty (MLflow's ``PENDING``) when the run starts,
    so that every metric of the run is logged as its own (MLflow 3). Created by ``Model.log``
    at the end instead, it would read the whole run and every metric's history back from the
    server to copy them to the model (a request per metric name). Its ID."""
    return mlflow.initialize_logged_model(name="model", source_run_id=run_id, experiment_id=experiment_id,
                                          params={k: str(v) for k, v in params.items()}).model_id


def fail_model(model_id: str) -> None:
    """Mark a model of :func:`start_model` that will not be filled ``FAILED`` (as ``Model.log``
    marks one it fails to log), not left pending."""
    from mlflow.entities import LoggedModelStatus

    mlflow.MlflowClient().finalize_logged_model(model_id, LoggedModelStatus.FAILED)


class RunLogger:
    """The :class:`ktt.model.FitLogger` of a tracked fit.

    Checkpoints are written atomically (temp file, fsync, rename) under
    ``weights/<model>/<dataset>/``; each run keeps one ``best_`` and one ``last_`` file.
    """

    def __init__(self, model_name: str, dataset_name: str, weights_root: str | os.PathLike = "weights",
                 callbacks=()):
        self.folder = Path(weights_root) / model_name / dataset_name
        self.callbacks = list(callbacks)  # each called as cb(metrics, step), e.g. to report to Optuna
        self.paths: dict[str, Path] = {}
        self.model_id = None  # the logged model metrics from now on belong to (MLflow 3)
        self.metrics: dict[str, float] = {}  # the last value of every metric logged: kept locally if tracking fails
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.folder, prefix=".write-test-"):
                pass
        except OSError as e:
            raise Unavailable(f"cannot write checkpoints to {self.folder}: {e.strerror}") from None
        remove_stale(self.folder)  # what killed fits left half-written

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        self.metrics.update(clean)
        if clean:
            log_batch(clean, step=step, model_id=self.model_id)
        for cb in self.callbacks:
            cb(clean, step)

    def checkpoint(self, model, kind: str, state: dict | None = None) -> Path:
        if kind not in KINDS:
            raise ValueError(f"checkpoint kind must be one of {KINDS}, not {kind!r}")
        final, placeholder = claim(self.folder, kind, SUFFIX)
        try:
            atomic_write(final, lambda tmp: model.save(tmp, state=state))
        except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0]
            free = shutil.disk_usage(self.folder).free / 1e9
            raise Unavailable(f"cannot write checkpoint {final}: {why} ({free:.1f} GB free there); "
                               f"the previous {kind} checkpoint is intact") from None
        finally:
            placeholder.unlink(missing_ok=True)
        old = self.paths.get(kind)
        self.paths[kind] = final
        if mlflow.active_run():  # lets `--resume runs:/<id>` find it even if this process dies
            log_batch(tags={f"ktt.checkpoint.{kind}": str(final.resolve())})
        if old is not None and old != final:
            old.unlink(missing_ok=True)
        return final

    def log_checkpoints(self) -> None:
        for p in self.paths.values():
            log_path(p, "checkpoints")

    def kept_locally(self, error: BaseException) -> "TrackingLost":
        """After tracking failed: every metric of the fit written beside its checkpoints, and the
        one-line error that names both (``lenient(on_failure=...)``)."""
        where = self.paths.get("best") or self.paths.get("last")
        path = where.with_name(where.stem + ".metrics.json") if where else self.folder / "metrics.json"
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(self.metrics, indent=1, sort_keys=True)))
        why = cause(error)
        kept = ", ".join(str(p) for p in self.paths.values()) or "none written"
        return TrackingLost(f"MLflow tracking failed during the run ({why}); the fit went on to its end, but the "
                            f"run may lack metrics, files or its model. Kept here: checkpoints {kept}; every "
                            f"metric it computed in {path}")


def cause(error: BaseException) -> str:
    """What went wrong under an MLflow request's error, in a few words: its socket's error
    (``[Errno 111] Connection refused``, ``Read timed out``) rather than the URL around it."""
    import re

    text = str(error)
    found = re.findall(r"\[Errno -?\d+\] [^'\")\]]+|Read timed out|Connection aborted|RemoteDisconnected[^'\")]*|"
                       r"Connection reset by peer|Connection broken: IncompleteRead|Max retries exceeded", text)
    return found[-1].strip() if found else (text.strip().splitlines() or [type(error).__name__])[0][:200]


class TrackingLost(Unavailable):
    """Tracking failed during a run whose fit finished: what was kept is named in the message."""

    tracking_lost = True  # QuietRun ends such a run without MLflow's retries (ktt.tracking.mlflow_compat)
