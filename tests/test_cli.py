"""The command line and the MLproject entry points, run as a user runs them."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parent.parent


def ktt(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "ktt", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd or ROOT, timeout=600)


def test_startup_imports_nothing_heavy():
    code = "import sys, ktt.cli; print(sorted(m for m in ('mlflow', 'torch', 'transformers', 'pandas', 'sklearn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("cmd", ["ingest", "generate", "train", "tune", "export", "serve", "experiment", "models",
                                 "taxonomy"])
def test_help_of_every_command(cmd):
    out = ktt(cmd, "--help")
    assert out.returncode == 0 and out.stdout.startswith("Usage:") and out.stderr == ""


def test_every_command_is_tested():
    from ktt.cli import main
    assert set(main.commands) == {"ingest", "generate", "train", "tune", "export", "serve", "experiment", "models",
                                  "predict", "compare", "taxonomy", "audit", "figures", "discover"}
    # predict: tests/test_batch.py; compare: tests/test_compare.py; taxonomy: tests/test_taxonomy.py (add:
    # tests/test_zeroshot.py); audit: tests/test_review_queue.py; figures: tests/test_tracking.py;
    # discover: tests/test_zeroshot.py


def test_models_listed():
    assert {"tfidf_lsgd", "tfidf_hsgd"} <= set(ktt("models").stdout.split())


def test_ingest_raw_csv_and_errors(raw_csv, tmp_path, tracking):
    out = ktt("ingest", raw_csv, "-n", "bb", "--text-col", "product", "-c", "category,sub_category,type",
              "--out", tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and "column 'product' is empty" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "bb").exists()
    out = ktt("ingest", raw_csv, "-n", "bb", "--text-col", "product", "-c", "category,sub_category,type",
              "--invalid-rows", "drop", "--out", tmp_path)
    assert out.returncode == 0, out.stderr
    assert "classes per level [11," in out.stdout and "rows invalid: 1" in out.stderr
    manifest = json.loads((tmp_path / "bb" / "manifest.json").read_text())
    assert manifest["depth"] == 3
    run = MlflowClient().search_runs(["0"])[0]  # ingestion is logged as a dataset input
    assert run.inputs.dataset_inputs[0].dataset.digest == manifest["digest"]
    out = ktt("ingest", tmp_path / "nope.csv", "-n", "x", "--out", tmp_path, "--no-track")
    assert out.returncode == 2 and "nope.csv: no such file" in out.stderr


def test_train_errors_are_one_line(tmp_path, tracking):
    out = ktt("train", "nope", "synthetic", "--datasets", tmp_path)
    assert out.returncode == 2 and "no dataset 'synthetic'" in out.stderr and "Traceback" not in out.stderr
    ktt("generate", "--rows", 300, "--out", tmp_path, "--no-track")
    out = ktt("train", "nope", "synthetic", "--datasets", tmp_path)
    assert out.returncode == 2 and "unknown model 'nope'; available:" in out.stderr
    out = ktt("train", "tfidf_lsgd", "synthetic", "--datasets", tmp_path, "--alpha", "x")
    assert out.returncode == 2 and "'alpha': 'x' is not a valid float" in out.stderr
    out = ktt("train", "tfidf_lsgd", "synthetic", "--datasets", tmp_path, "-p", "min_df=0")
    assert out.returncode == 2 and out.stderr == ("error: hyperparameter 'min_df' of model 'tfidf_lsgd': 0 is not "
                                                  "in [1, inf)\n")
    out = ktt("-v", "train", "tfidf_lsgd", "synthetic", "--datasets", tmp_path, "-p", "min_df=0")
    assert out.returncode == 2 and "Traceback" in out.stderr and out.stderr.endswith("is not in [1, inf)\n")


def test_runs_go_to_an_experiment_named_after_the_dataset(tmp_path, tracking):
    ktt("generate", "--rows", 300, "--out", tmp_path, "--no-track")
    common = ["--datasets", tmp_path, "--weights", tmp_path / "w", "-p", "max_iter=50"]
    assert ktt("train", "tfidf_lsgd", "synthetic", *common).returncode == 0
    assert ktt("train", "tfidf_lsgd", "synthetic", *common, env={"MLFLOW_EXPERIMENT_NAME": "mine"}).returncode == 0
    client = MlflowClient()
    for name in ("synthetic", "mine"):
        exp = client.get_experiment_by_name(name)
        runs = client.search_runs([exp.experiment_id])
        assert len(runs) == 1 and runs[0].data.tags["ktt.dataset"] == "synthetic"


def test_a_bug_keeps_its_traceback(tmp_path):
    """An exception that is not a user's mistake is not disguised as one: traceback, a line saying so, exit 1."""
    code = ("import sys, ktt.train; ktt.train.train = lambda *a, **k: {}['oops']; from ktt.cli import main; "
            f"sys.argv = ['ktt', 'train', 'tfidf_lsgd', 'x', '--datasets', {str(tmp_path)!r}]; main()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1
    assert "Traceback" in out.stderr and "KeyError: 'oops'" in out.stderr
    assert out.stderr.splitlines()[-1] == ("error: unexpected KeyError (a bug in KTT, not a mistake in your input; "
                                           "the traceback above says where)")


@pytest.mark.slow
def test_mlflow_run_entry_points(tmp_path, tracking):
    """`mlflow run . --env-manager local` for generate and main, with a -P hyperparameter override."""
    env = {**os.environ, "KTT_DATASETS": str(tmp_path / "datasets"), "KTT_WEIGHTS": str(tmp_path / "weights"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")

    def mlflow_run(*args):
        out = subprocess.run([mlflow_bin, "run", ".", "--env-manager", "local", *args], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        return out
    mlflow_run("-e", "generate", "-P", "rows=800")
    mlflow_run("-P", "model=tfidf_lsgd", "-P", "dataset=synthetic", "-P", "alpha=0.0003")
    runs = MlflowClient().search_runs(["0"], order_by=["start_time DESC"])
    train_run = runs[0]
    assert train_run.data.params["alpha"] == "0.0003" and train_run.data.params["model"] == "tfidf_lsgd"
    assert train_run.data.tags["mlflow.project.entryPoint"] == "main"
    assert train_run.data.metrics["test_leaf_accuracy"] > 0.5
    assert len(list((tmp_path / "weights" / "tfidf_lsgd" / "synthetic").glob("best_*.pt"))) == 1


def test_make_run_names_its_experiment_after_the_dataset():
    """`make run` launches `mlflow run` in the dataset's experiment, as every other path does."""
    out = subprocess.run(["make", "-n", "run", "DATASET=bigbasket"], cwd=ROOT, capture_output=True, text=True)
    line = out.stdout[out.stdout.index("mlflow run"):].replace("\\\n", " ")
    assert "--experiment-name bigbasket" in line and "-P dataset=bigbasket" in line


@pytest.mark.parametrize("python, missing", [("/usr/bin/python3", "click"), (".venv-serving/bin/python", "mlflow")])
def test_an_inactive_environment_is_named_with_its_fix(python, missing, tmp_path):
    """`python -m ktt` (as `mlflow run` calls it) from a Python without KTT's packages: the
    environment problem it is and the command that fixes it, never "a bug in KTT"."""
    exe = Path(python) if Path(python).is_absolute() else ROOT / python
    if not exe.exists():
        pytest.skip(f"no {python} here")
    out = subprocess.run([str(exe), "-m", "ktt", "train", "tfidf_hsgd", "synthetic"], cwd=tmp_path, capture_output=True,
                         text=True, env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)}, timeout=60)
    if missing == "click" and "no module named 'click'" not in out.stderr:
        pytest.skip("this Python has click")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"no module named {missing!r}: KTT's environment is not the active one" in out.stderr
    assert "make env" in out.stderr and "source .venv/bin/activate" in out.stderr
