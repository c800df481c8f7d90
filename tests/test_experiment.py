"""experiments/*.yaml: the shipped files are valid, the smoke experiment runs as one MLflow experiment."""
from pathlib import Path

import mlflow
import pytest
import yaml
from click.testing import CliRunner
from mlflow import MlflowClient

from ktt import registry
from ktt.cli import main
from ktt.experiment import load_spec

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["smoke", "bigbasket", "clinc150", "hierarchy_pays"])
def test_shipped_experiments_are_valid(name):
    spec = load_spec(ROOT / "experiments" / f"{name}.yaml")
    assert spec["name"] == name and spec["models"]
    if "source" in spec["data"]:
        assert Path(spec["data"]["source"]).exists(), spec["data"]["source"]


def test_smoke_experiment(tracking, tmp_path):
    result = CliRunner().invoke(main, ["experiment", str(ROOT / "experiments/smoke.yaml"),
                                       "--datasets", str(tmp_path / "d"), "--weights", str(tmp_path / "w")])
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    exp = client.get_experiment_by_name("ktt-smoke")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("ktt.stage") == "experiment")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.params["model"] for r in children) == ["tfidf_hsgd", "tfidf_lsgd"]
    assert all(r.info.status == "FINISHED" for r in children)
    table = Path(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="ranking.md",
                                                     dst_path=str(tmp_path))).read_text()
    ranked = [line.split("|")[2].strip() for line in table.splitlines()[2:]]
    by_score = sorted(children, key=lambda r: -r.data.metrics["test_h_f1"])
    assert ranked == [r.data.params["model"] for r in by_score]
    assert parent.data.metrics["best_test_h_f1"] == by_score[0].data.metrics["test_h_f1"]
    png = Path(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="ranking.png",
                                                   dst_path=str(tmp_path)))
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("change, message", [
    ({"colour": "red"}, "unknown keys \\['colour'\\]"),
    ({"models": {"tfidf_nope": {}}}, "models.tfidf_nope: unknown model"),
    ({"models": {"tfidf_lsgd": {"epochs": 3}}}, "models.tfidf_lsgd: unknown hyperparameter"),
    ({"data": {"generate": {}, "source": "x.csv"}}, "exactly one of 'generate'"),
    ({"data": {"generate": {}, "ingest": {"delimiter": ","}}}, "unknown ingest options \\['delimiter'\\]"),
    ({"baseline": {"tfidf_hsgd": "db_linear"}}, "baseline names 'db_linear', which is not one of the models"),
    ({"models": {"tfidf_lsgd": {"seeds": [0, 0]}}}, "models.tfidf_lsgd: seeds \\[0, 0\\] repeat a seed"),
])
def test_bad_experiment_files(tmp_path, change, message):
    spec = {**yaml.safe_load((ROOT / "experiments/smoke.yaml").read_text()), **change}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match=message):
        load_spec(tmp_path / "e.yaml")


def test_a_bad_value_anywhere_fails_before_anything_trains(tracking, tmp_path):
    """The last model's value is out of range: the whole file is refused in under a second, no run started."""
    import time

    from ktt.experiment import run_experiment

    spec = {**yaml.safe_load((ROOT / "experiments/smoke.yaml").read_text()),
            "models": {"tfidf_lsgd": {}, "tfidf_hsgd": {}, "db_bhcn": {"epochs": 1, "act": "swish"}}}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(spec))
    registry.get("db_bhcn")  # importing torch is not what is timed (about 1 s cold on this machine)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"models.db_bhcn: hyperparameter 'act' of model 'db_bhcn': 'swish' is not "
                                         r"one of \['relu', 'gelu', 'tanh'\]"):
        run_experiment(tmp_path / "e.yaml", datasets_root=tmp_path / "d", weights_root=tmp_path / "w")
    assert time.perf_counter() - t0 < 1.0
    assert mlflow.search_runs(search_all_experiments=True).empty and not (tmp_path / "d").exists()


def test_ranking_in_both_directions(tmp_path):
    from ktt.experiment import load_spec, rank

    rows = [{"model": "a", "test_h_f1": 0.7, "val_loss": 1.2}, {"model": "b", "test_h_f1": 0.8, "val_loss": 0.9},
            {"model": "c", "test_h_f1": 0.7, "val_loss": 2.0}]
    assert [r["model"] for r in rank(rows, "test_h_f1", "max")] == ["b", "a", "c"]  # ties keep file order
    assert rank(rows, "test_h_f1") == rank(rows, "test_h_f1", "max")  # higher is better unless told
    assert [r["model"] for r in rank(rows, "val_loss", "min")] == ["b", "a", "c"]
    spec = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    for rank_by, order in (("test_h_f1", "max"), ("test_violation_rate", "min"), ("train_time_s", "min"),
                           ("best_val_loss", "min")):
        (tmp_path / "e.yaml").write_text(yaml.safe_dump({**spec, "rank_by": rank_by}))
        assert load_spec(tmp_path / "e.yaml")["rank_order"] == order
    (tmp_path / "e.yaml").write_text(yaml.safe_dump({**spec, "rank_by": "train_time_s", "rank_order": "max"}))
    assert load_spec(tmp_path / "e.yaml")["rank_order"] == "max"
