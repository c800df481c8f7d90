"""Every reach of KTT into MLflow's internals (ktt/tracking/mlflow_compat.py), each checked against
the installed MLflow: an upgrade that moves one fails here, by name, not in a user's fit."""
import inspect
import io
from contextlib import redirect_stdout

import mlflow

from ktt.tracking import mlflow_compat as compat


def test_the_mlflow_these_reaches_were_checked_with():
    assert mlflow.__version__ == compat.CHECKED_WITH, (
        f"MLflow {mlflow.__version__} is not {compat.CHECKED_WITH}: run this file, fix what fails in "
        "ktt/tracking/mlflow_compat.py, then set CHECKED_WITH")


def test_artifact_store_from_the_registry(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    store = compat.artifact_store((tmp_path / "store").as_uri(), "sqlite:///unused.db")
    store.log_artifact(str(tmp_path / "a.txt"), "sub")
    assert (tmp_path / "store" / "sub" / "a.txt").read_text() == "x"


def test_set_experiment_reads_fluents_active_experiment(tracking):
    exp = compat.set_experiment("compat")
    assert mlflow.tracking.fluent._active_experiment_id == exp.experiment_id
    with mlflow.start_run() as run:
        assert run.info.experiment_id == exp.experiment_id


def test_quiet_run_ends_the_run_and_the_env_switch_exists(tracking):
    from mlflow.environment_variables import MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT

    assert MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.name == "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
    out = io.StringIO()
    with redirect_stdout(out), compat.QuietRun(mlflow.start_run()) as run:
        pass
    assert mlflow.active_run() is None and out.getvalue() == ""  # SQLite: MLflow prints no link either
    assert mlflow.get_run(run.info.run_id).info.status == "FINISHED"


def test_dataset_input_keeps_name_and_digest(tracking, tmp_path):
    with mlflow.start_run() as run:
        mlflow.MlflowClient().log_inputs(run.info.run_id, [compat.dataset_input(str(tmp_path), "ds", "abc123", "training")])
    (got,) = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    assert (got.dataset.name, got.dataset.digest, got.tags[0].value) == ("ds", "abc123", "training")


def test_pyfunc_flavor_hooks_exist():
    from mlflow.models import Model
    from mlflow.utils import environment

    assert callable(environment.warn_dependency_requirement_mismatches)
    assert "validate_serving_input" in inspect.signature(Model.log).parameters or \
        "validate_serving_input" in inspect.getsource(Model.log)
    import mlflow.models.model as model_module

    # log_model_checked listens for this warning of MLflow's
    assert "Failed to validate serving input" in inspect.getsource(model_module)



def test_no_active_run_hides_the_run_for_the_block(tracking):
    """``Model.log`` would read every metric of an active run back (a request per metric)."""
    from ktt.tracking.mlflow_compat import no_active_run

    with mlflow.start_run() as run:
        with no_active_run():
            assert mlflow.active_run() is None
        assert mlflow.active_run().info.run_id == run.info.run_id
