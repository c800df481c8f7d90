"""Every reach of KTT into MLflow's internals, in one place: each is what MLflow's public API
does not offer, and each has a test (tests/test_mlflow_compat.py) that fails loudly when an
MLflow upgrade moves it. Checked against :data:`CHECKED_WITH`."""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys

import mlflow

CHECKED_WITH = "3.17.2"


@functools.lru_cache(maxsize=16)
def artifact_store(artifact_uri: str, tracking_uri: str):
    """The artifact store at a run's ``artifact_uri``. (MLflow's client finds it by reading the
    run back from the tracking server: a request from each thread that first logs to a run.)"""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)


def set_experiment(name: str):
    """``mlflow.set_experiment(name)``, made active also when another process creates it at the same
    moment (tuning workers starting together): MLflow 3.17 then returns it without making it
    active (``fluent._active_experiment_id``), and the runs would go to the Default experiment."""
    exp = mlflow.set_experiment(name)
    if getattr(mlflow.tracking.fluent, "_active_experiment_id", None) != exp.experiment_id:
        exp = mlflow.set_experiment(experiment_id=exp.experiment_id)
    return exp


class QuietRun(mlflow.ActiveRun):
    """MLflow's, but at its end the run's link is printed from what is known: MLflow reads the
    whole run back from the server to print it (every metric, param and tag: the heaviest request
    of a fit, and the last before the run ends)."""

    def __exit__(self, *exc):
        from mlflow.environment_variables import MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT as QUIET

        top = mlflow.active_run()
        ends = top is not None and top.info.run_id == self.info.run_id  # else MLflow leaves it, silently
        quiet = QUIET.get() or not ends
        lost = getattr(exc[1], "tracking_lost", False)  # the server is gone: one try to end the run, no retries
        try:
            with _environ(**{QUIET.name: "true"}, **({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"} if lost else {})):
                done = super().__exit__(*exc)  # fluent.end_run takes the run off its stack before the request
        except Exception as e:
            if exc[1] is None:
                raise
            logging.getLogger(__name__).info("MLflow could not end run %s: %s", self.info.run_id,
                                                (str(e).splitlines() or [""])[0][:200])
            return False
        uri = mlflow.get_tracking_uri().rstrip("/")
        if not quiet and uri.startswith(("http://", "https://")):  # where MLflow prints it
            exp = f"{uri}/#/experiments/{self.info.experiment_id}"
            sys.stdout.write(f"🏃 View run {self.info.run_name} at: {exp}/runs/{self.info.run_id}\n"
                             f"🧪 View experiment at: {exp}\n")
        return done


@contextlib.contextmanager
def _environ(**values):
    """Environment variables set for the block (MLflow reads its settings at each request)."""
    was = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in was.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def no_active_run():
    """This thread without an active run for the block. ``Model.log`` links a model to the active
    run, and then reads every metric of the run back to copy it to the model: a request per metric
    name to a tracking server (KTT logs the metrics as the model's already, and links the two)."""
    from mlflow.tracking import fluent

    stack = fluent._active_run_stack.get()
    saved = list(stack)
    stack.clear()
    try:
        yield
    finally:
        stack[:] = saved


def dataset_input(path: str, name: str, digest: str, context: str):
    """The MLflow dataset input of a dataset folder (text and labels columns) under its own name and
    digest: ``MetaDataset`` is the only dataset that takes both without reading the data."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.types import ColSpec, Schema
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are local files
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(path)
    schema = Schema([ColSpec("string", "text"), ColSpec("string", "labels")])
    dataset = MetaDataset(source, name=name, digest=digest, schema=schema)._to_mlflow_entity()
    return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])


class UncheckedPyfunc:
    """``mlflow.pyfunc`` as a flavor for ``Model.log`` that takes ``validate_serving_input``
    (``mlflow.pyfunc.save_model`` refuses it; ``Model.log`` reads it, then passes it on). Without
    it, the requirements are not checked against this environment either
    (``mlflow.utils.environment.warn_dependency_requirement_mismatches``, 0.1 s a fit)."""

    @staticmethod
    def save_model(validate_serving_input=True, source_run_id=None, **kwargs):
        from unittest import mock

        from mlflow.utils import environment

        if source_run_id and not kwargs["mlflow_model"].run_id:
            kwargs["mlflow_model"].run_id = source_run_id
        check = "warn_dependency_requirement_mismatches"
        if validate_serving_input or not hasattr(environment, check):
            return mlflow.pyfunc.save_model(**kwargs)
        with mock.patch.object(environment, check, lambda requirements: None):
            return mlflow.pyfunc.save_model(**kwargs)


def log_model_checked(log, **kwargs) -> tuple[object, bool]:
    """``log(validate_serving_input=True, **kwargs)`` (``Model.log``), and whether MLflow found the
    input example answered: it warns and goes on when it fails (logger ``mlflow.models.model``)."""

    class Failed(logging.Handler):
        failed = False

        def emit(self, record):
            Failed.failed |= "Failed to validate serving input" in record.getMessage()
    handler = Failed(logging.WARNING)
    logging.getLogger("mlflow.models.model").addHandler(handler)
    try:
        info = log(validate_serving_input=True, **kwargs)
    finally:
        logging.getLogger("mlflow.models.model").removeHandler(handler)
    return info, not Failed.failed
