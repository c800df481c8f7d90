"""Optuna sweeps on real BigBasket rows, each trial a nested run in a real MLflow store."""
import json
import shutil
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from ktt import registry, threads
from ktt.tune import Sweep, check_space, run_sweep, write_back

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def hp_file(tmp_path, monkeypatch):
    path = tmp_path / "hyperparameters.json"
    shutil.copy(ROOT / "hyperparameters.json", path)
    monkeypatch.setenv("KTT_HYPERPARAMETERS", str(path))
    return path


def children(parent_id):
    client = MlflowClient()
    exp = client.get_run(parent_id).info.experiment_id
    return client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent_id}'")


def test_sweep_with_two_workers_and_write_back(tracking, bigbasket_small, hp_file, tmp_path):
    sweep = Sweep("tfidf_hsgd", "bb_small", n_trials=6, workers=2, storage=str(tmp_path / "s.journal"),
                  datasets_root=bigbasket_small, weights_root=tmp_path / "w")
    study = run_sweep(sweep)
    assert len(study.trials) == 6
    defaults = registry.params("tfidf_hsgd", file=hp_file)  # what `ktt train` would use
    first = study.trials[0]
    assert first.params == {k: defaults[k] for k in ("alpha", "min_df", "ngram_max", "max_iter")}
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    kids = children(parent_id)
    # Optuna's best trial is the MLflow child run with the best objective, and they agree on it
    best_kid = max(kids, key=lambda r: r.data.metrics["best_val_h_f1"])
    assert best_kid.data.tags["ktt.trial"] == str(study.best_trial.number)
    assert best_kid.data.metrics["best_val_h_f1"] == pytest.approx(study.best_value)
    assert len(kids) == 6 and {r.data.tags["ktt.trial"] for r in kids} == {str(i) for i in range(6)}
    assert all("best_val_h_f1" in r.data.metrics for r in kids)
    # two workers share the cores: each trains with its share, not every core
    assert {r.data.tags["ktt.threads"] for r in kids} == {str(threads.share(2))}
    parent = MlflowClient().get_run(parent_id)
    assert parent.data.metrics["best_trial_value"] == pytest.approx(study.best_value)
    assert parent.data.params["storage"] == str(tmp_path / "s.journal")
    arts = {a.path for a in MlflowClient().list_artifacts(parent_id, "plots")}
    assert "plots/optimization_history.png" in arts and "plots/param_importances.png" in arts

    # resuming the same study adds trials and keeps the same parent run
    study = run_sweep(Sweep(**{**sweep.__dict__, "n_trials": 2, "workers": 1}))
    assert len(study.trials) == 8 and len(children(parent_id)) == 8

    before = json.loads(hp_file.read_text())
    write_back(study, "tfidf_hsgd", hp_file)
    after = json.loads(hp_file.read_text())
    assert {k: v for k, v in after.items() if k != "tfidf_hsgd"} == {k: v for k, v in before.items() if k != "tfidf_hsgd"}
    assert all(after["tfidf_hsgd"][k] == v for k, v in study.best_params.items())
    assert after["tfidf_hsgd"]["_tuned_from"]["trial"] == study.best_trial.number
    assert after["tfidf_hsgd"]["tune"] == before["tfidf_hsgd"]["tune"]


def test_failing_trial_recorded_and_study_goes_on(tracking, bigbasket_small, hp_file, tmp_path):
    hp = json.loads(hp_file.read_text())
    # min_df above the row count leaves no vocabulary: sklearn raises inside the trial
    hp["tfidf_lsgd"]["tune"] = {"min_df": {"type": "categorical", "choices": [1, 100000]}}
    hp_file.write_text(json.dumps(hp))
    study = run_sweep(Sweep("tfidf_lsgd", "bb_small", n_trials=6, sampler="random", seed=1,
                            storage=str(tmp_path / "f.journal"), datasets_root=bigbasket_small, weights_root=tmp_path))
    states = [t.state for t in study.trials]
    assert len(states) == 6 and optuna.trial.TrialState.FAIL in states and optuna.trial.TrialState.COMPLETE in states
    statuses = {r.info.status for r in children(study.user_attrs["mlflow_parent_run_id"])}
    assert statuses == {"FINISHED", "FAILED"}


def test_epochs_are_reported_for_pruning(tracking, bigbasket_small, hp_file, tmp_path, tiny_encoder):
    hp = json.loads(hp_file.read_text())
    hp["db_linear"] = {"encoder": tiny_encoder, "epochs": 2, "batch_size": 32,
                       "tune": {"classifier_lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}}}
    hp_file.write_text(json.dumps(hp))
    study = run_sweep(Sweep("db_linear", "bb_small", n_trials=2, pruner="none", storage=str(tmp_path / "p.journal"),
                            datasets_root=bigbasket_small, weights_root=tmp_path))
    assert [sorted(t.intermediate_values) for t in study.trials] == [[0, 1], [0, 1]]


def test_median_pruner_prunes_a_hopeless_trial(tracking, bigbasket_small, hp_file, tmp_path, tiny_encoder):
    hp = json.loads(hp_file.read_text())
    # a classifier learning rate of 1e-9 leaves a trial at its random start: the median pruner must
    # stop it after its first epoch, once two trials have finished
    hp["db_linear"] = {"encoder": tiny_encoder, "epochs": 3, "batch_size": 32, "encoder_lr": 1e-9,
                       "classifier_lr": 3e-3,
                       "tune": {"classifier_lr": {"type": "categorical", "choices": [3e-3, 1e-9]}}}
    hp_file.write_text(json.dumps(hp))
    study = run_sweep(Sweep("db_linear", "bb_small", n_trials=6, sampler="random", seed=3, pruner="median",
                            storage=str(tmp_path / "m.journal"), datasets_root=bigbasket_small,
                            weights_root=tmp_path))
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned and all(t.params["classifier_lr"] == 1e-9 for t in pruned)
    assert all(sorted(t.intermediate_values) == [0] for t in pruned)  # stopped after one epoch
    assert study.best_params["classifier_lr"] == 3e-3


@pytest.mark.parametrize("space, error", [
    ({"alpah": {"type": "uniform", "low": 0, "high": 1}}, r"parameter 'alpah': unknown hyperparameter"),
    ({"alpha": {"type": "uniform", "low": 1, "high": 1}}, r"parameter 'alpha': empty range \[1, 1\]"),
    ({"alpha": {"type": "loguniform", "low": 0, "high": 1}}, "log-uniform range must be positive"),
    ({"loss": {"type": "categorical", "choices": []}}, "empty \"choices\""),
    ({"alpha": {"type": "normal"}}, "type must be one of"),
    ({}, "has no search space"),
])
def test_bad_search_spaces(space, error):
    with pytest.raises(ValueError, match=error):
        check_space("tfidf_hsgd", space)


def test_unreachable_storage_fails_before_any_trial(tracking, bigbasket_small, hp_file, tmp_path):
    with pytest.raises(RuntimeError, match="cannot open Optuna storage 'postgresql://ktt@127.0.0.1:9/ktt'"):
        run_sweep(Sweep("tfidf_hsgd", "bb_small", storage="postgresql://ktt@127.0.0.1:9/ktt",
                        datasets_root=bigbasket_small, weights_root=tmp_path))
    assert MlflowClient().search_runs(["0"]) == []
