"""Everything a fit logs to MLflow, and checkpoints mirrored to ``weights/<model>/<dataset>/``, by
concern: :mod:`.checkpoints` (files), :mod:`.runs` (runs, and references to trained models),
:mod:`.logs` (what a run logs), :mod:`.comparisons` (runs against runs) and
:mod:`.mlflow_compat` (every reach into MLflow's internals)."""
from .checkpoints import KINDS, SUFFIX, TIME_FORMAT, atomic_write, checkpoint_time, newest
from .comparisons import TEST_ROWS, bootstrap_runs, compare_runs, load_test_rows, log_test_rows
from .logs import (RunLogger, TrackingLost, fail_model, log_batch, log_dataset, log_dict, log_file, log_parquet, log_path,
                   lenient, log_table, log_text, send, start_model)
from .mlflow_compat import artifact_store, set_experiment
from .runs import (RUN_ID, Source, check_tracking_uri, environment, from_run, git_commit, resolve_checkpoint,
                   resolve_source, run_artifact, run_of, run_side, start_run)

__all__ = ["KINDS", "SUFFIX", "TIME_FORMAT", "atomic_write", "checkpoint_time", "newest", "TEST_ROWS",
           "bootstrap_runs", "compare_runs", "load_test_rows", "log_test_rows", "RunLogger", "TrackingLost", "fail_model", "log_batch",
           "log_dataset", "log_dict", "log_file", "log_parquet", "log_path", "log_table", "log_text", "start_model",
           "lenient", "send", "artifact_store", "set_experiment", "RUN_ID", "Source", "check_tracking_uri",
           "environment", "from_run", "git_commit", "resolve_checkpoint", "resolve_source", "run_artifact", "run_of",
           "run_side", "start_run"]
