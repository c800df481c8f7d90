"""Fast tracked paths that only slow tests touched before: registry versions and aliases,
resume by MLflow run ID, and ``ktt train -r`` (the reference set)."""
import os
import subprocess
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from ktt.export import register
from ktt.tracking import resolve_source
from ktt.train import train

ROOT = Path(__file__).resolve().parent.parent


def test_alias_version_and_latest_are_told_apart(tracking, bigbasket_small, tmp_path):
    first = train("tfidf_lsgd", "bb_small", overrides={"alpha": "0.0001"}, datasets_root=bigbasket_small,
                  weights_root=tmp_path).run_id
    second = train("tfidf_lsgd", "bb_small", overrides={"alpha": "0.001"}, datasets_root=bigbasket_small,
                   weights_root=tmp_path).run_id
    assert register(first, "bb-lsgd") == 1  # champion -> version 1
    assert register(second, "bb-lsgd", alias="challenger") == 2  # the latest version, not the champion
    assert resolve_source("models:/bb-lsgd@champion").run_id == first
    assert resolve_source("models:/bb-lsgd@challenger").run_id == second
    assert resolve_source("models:/bb-lsgd/1").run_id == first
    assert resolve_source("models:/bb-lsgd/2").run_id == second
    src = resolve_source(f"runs:/{second}/model")
    assert (src.model, src.dataset, src.run_id) == ("tfidf_lsgd", "bb_small", second)
    assert src.checkpoint.name.startswith("best_") and src.checkpoint.is_file()


def test_resume_by_run_id(tracking, bigbasket_small, tmp_path, tiny_encoder):
    common = {"encoder": tiny_encoder, "batch_size": "32", "patience": "5", "log_every": "1000"}
    first = train("db_linear", "bb_small", overrides={**common, "epochs": "1"}, datasets_root=bigbasket_small,
                  weights_root=tmp_path, log_model=False).run_id
    resumed = train("db_linear", "bb_small", overrides={"epochs": "3"}, resume=first,
                    datasets_root=bigbasket_small, weights_root=tmp_path, log_model=False).run_id
    client = MlflowClient()
    assert [m.step for m in client.get_metric_history(first, "val_h_f1")] == [0]
    assert [m.step for m in client.get_metric_history(resumed, "val_h_f1")] == [1, 2]  # continues, epoch 2 on
    run = client.get_run(resumed)
    assert run.data.tags["ktt.resumed_from"] == first
    assert run.data.params["encoder"] == tiny_encoder and run.data.params["epochs"] == "3"


def test_train_with_reference_set(tracking, bigbasket_small, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "KTT_DATASETS": str(bigbasket_small),
           "KTT_WEIGHTS": str(tmp_path / "weights")}
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "ktt"), "train", "tfidf_hsgd", "bb_small", "-r"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    refs = list((tmp_path / "weights" / "tfidf_hsgd" / "bb_small").glob("*_reference.parquet"))
    assert len(refs) == 1
    ref = pd.read_parquet(refs[0])
    from ktt.data import load_dataset

    ds = load_dataset("bb_small", bigbasket_small)
    from ktt.schema import level_column_names

    assert list(ref.columns) == ["targets", *map(str, range(24)), *ds.hierarchy.leaf_names, *level_column_names(3)]
    assert len(ref) == len(ds.test) and set(ref.targets) <= set(ds.hierarchy.leaf_names)
    run = MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()])[0]
    arts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "checkpoints")}
    assert f"checkpoints/{refs[0].name}" in arts
