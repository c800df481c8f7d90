"""`ktt predict MODEL_URI INPUT OUTPUT`: chunked file scoring with the logged model, identical to its predict."""
import os
import shutil
import subprocess
import sys

import mlflow
import pandas as pd
import pytest

from conftest import KTT
from ktt.data import load_dataset
from ktt.train import train


@pytest.fixture(scope="module")
def logged(bigbasket_small, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batch")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        fit = train("tfidf_hsgd", "bb_small", datasets_root=bigbasket_small, weights_root=tmp / "w")
    finally:
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    return uri, f"runs:/{fit.run_id}/model", load_dataset("bb_small", bigbasket_small)


def ktt(uri, *args):
    return subprocess.run([str(KTT), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri})


@pytest.mark.parametrize("src, dst", [("in.csv", "out.csv"), ("in.parquet", "out.parquet"), ("in.csv", "out.tsv")])
def test_chunked_scoring_matches_the_model(logged, tmp_path, src, dst):
    uri, model_uri, ds = logged
    frame = pd.DataFrame({"sku": [f"s{i}" for i in range(len(ds.test))], "title": ds.test.texts})
    (frame.to_csv if src.endswith("csv") else frame.to_parquet)(tmp_path / src, index=False)
    out = ktt(uri, "predict", model_uri, tmp_path / src, tmp_path / dst, "--text-col", "title", "--rows", 40)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"{len(frame)} rows" in out.stdout
    got = (pd.read_parquet(tmp_path / dst) if dst.endswith("parquet") else
           pd.read_csv(tmp_path / dst, sep="\t" if dst.endswith("tsv") else ",", keep_default_na=False))
    mlflow.set_tracking_uri(uri)
    want = mlflow.pyfunc.load_model(model_uri).predict(pd.DataFrame({"text": frame.title}))
    assert got.columns.tolist() == ["sku", "title", *want.columns]
    assert got.sku.tolist() == frame.sku.tolist() and got.path.tolist() == want.path.tolist()
    for c in want.columns:
        if c.endswith("_confidence"):
            assert (got[c] - want[c]).abs().max() < 1e-6, c
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({src, dst})  # no part file left


def test_threshold_and_errors(logged, tmp_path):
    uri, model_uri, ds = logged
    pd.DataFrame({"text": ds.test.texts[:30]}).to_csv(tmp_path / "in.csv", index=False)
    out = ktt(uri, "predict", model_uri, tmp_path / "in.csv", tmp_path / "cut.parquet", "--threshold", "0.9")
    assert out.returncode == 0, out.stderr[-2000:]
    cut = pd.read_parquet(tmp_path / "cut.parquet")
    assert cut.L3.isna().any() and (cut.L1_confidence.dropna() >= 0.9).all()
    # a target precision: the threshold the fit chose for it on validation, as the model answers
    out = ktt(uri, "predict", model_uri, tmp_path / "in.csv", tmp_path / "tp.csv", "--target-precision", "0.95")
    assert out.returncode == 0, out.stderr[-2000:]
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(model_uri).unwrap_python_model().model
    got = pd.read_csv(tmp_path / "tp.csv", keep_default_na=False).path.tolist()
    assert got == [" > ".join(p) for p in model.predict_paths(ds.test.texts[:30], target_precision=0.95)]
    bad = ktt(uri, "predict", model_uri, tmp_path / "in.csv", tmp_path / "o.csv", "--threshold", "0.5",
              "--target-precision", "0.9")
    assert bad.returncode == 2 and "not both" in bad.stderr
    for args, msg in [((tmp_path / "in.csv", tmp_path / "o.csv", "--text-col", "title"), "no column 'title'"),
                      ((tmp_path / "nope.csv", tmp_path / "o.csv"), "nope.csv: no such file"),
                      ((tmp_path / "in.csv", tmp_path / "o.json"), "use a .csv, .tsv or .parquet file, not '.json'")]:
        bad = ktt(uri, "predict", model_uri, *args)
        assert bad.returncode == 2 and msg in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    bad = ktt(uri, "predict", "models:/nope@champion", tmp_path / "in.csv", tmp_path / "o.csv")
    assert bad.returncode == 2 and "cannot load model 'models:/nope@champion'" in bad.stderr
    assert not (tmp_path / "o.csv").exists() and not list(tmp_path.glob(".*part"))


@pytest.mark.skipif(not shutil.which("java"), reason="Spark needs Java: `make test` installs openjdk-17-jre-headless")
def test_spark_udf_scores_like_the_model(logged):
    """A registered model on Spark local[2] through MLflow's own spark_udf: the same answers as predict."""
    from pyspark.sql import SparkSession

    uri, model_uri, ds = logged
    mlflow.set_tracking_uri(uri)
    os.environ["PYSPARK_PYTHON"] = sys.executable  # Spark's Python workers: this environment
    spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", "2").getOrCreate())
    try:
        udf = mlflow.pyfunc.spark_udf(spark, model_uri, env_manager="local")  # output type from the signature
        frame = pd.DataFrame({"sku": range(len(ds.test)), "title": ds.test.texts})
        got = (spark.createDataFrame(frame).repartition(2).withColumn("answer", udf("title"))
               .select("sku", "answer.*").toPandas().sort_values("sku"))
    finally:
        spark.stop()
    want = mlflow.pyfunc.load_model(model_uri).predict(pd.DataFrame({"text": frame.title}))
    assert got.path.tolist() == want.path.tolist() and got.L3.tolist() == want.L3.tolist()
    assert (got.L1_confidence.to_numpy() - want.L1_confidence.to_numpy()).max() < 1e-9


def test_spreadsheet_escape_is_exact_for_every_text_dtype():
    from ktt.text import spreadsheet_safe, unescape

    texts = ["=1+1", "'=x", "'-5", "'plain", "plain", "-", "", None]
    for dtype in (object, "string", "category"):
        df = pd.DataFrame({"t": pd.Series(texts, dtype=dtype), "n": range(len(texts))})
        out = spreadsheet_safe(df)
        assert not any(isinstance(v, str) and v.startswith(("=", "+", "-", "@")) for v in out.t), dtype
        assert [v if isinstance(v, str) else None for v in unescape(out.t)] == texts, dtype
        assert out.n.tolist() == list(range(len(texts)))


def test_cells_a_spreadsheet_would_run_are_escaped_and_come_back_whole(logged, bigbasket_small, tmp_path):
    """A CSV a person may open in a spreadsheet (`ktt predict`'s output, the review file) never
    holds a cell that starts a formula; `ktt ingest REVIEW.csv --append` takes the escape off, so
    the dataset gets the text as it came (issue 42)."""
    uri, model_uri, ds = logged
    hostile = ['=HYPERLINK("http://x.example","click")', "+1 Tea 100 g", "-20% Basmati Rice 5 kg",
               "@SUM(A1) Cola 1 l", "\tTab Soap 3 x 100 g", "'=not a formula Jam 200 g", "'-5 Cookies"]
    pd.DataFrame({"text": hostile, "ref": ["=1+1"] * len(hostile)}).to_csv(tmp_path / "in.csv", index=False)
    out = ktt(uri, "predict", model_uri, tmp_path / "in.csv", tmp_path / "out.csv", "--threshold", "1",
              "--review", tmp_path / "review.csv")
    assert out.returncode == 0, out.stderr[-2000:]
    for name in ("out.csv", "review.csv"):
        cells = pd.read_csv(tmp_path / name, dtype=str, keep_default_na=False)
        assert all(not v.startswith(("=", "+", "-", "@", "\t")) for col in cells for v in cells[col]), name
    review = pd.read_csv(tmp_path / "review.csv", dtype=str, keep_default_na=False)
    assert sorted(review.text) == sorted("'" + t for t in hostile)  # a leading ' too: the way back is exact
    review["labels"] = [" > ".join(ds.test.paths[0])] * len(review)
    review.to_csv(tmp_path / "review.csv", index=False)
    shutil.copytree(bigbasket_small / "bb_small", tmp_path / "datasets" / "bb_small")  # --append's parent
    back = ktt(uri, "ingest", tmp_path / "review.csv", "-n", "bb_reviewed", "--append", "bb_small",
               "--out", tmp_path / "datasets", "--no-track")
    assert back.returncode == 0, back.stderr
    reviewed = load_dataset("bb_reviewed", tmp_path / "datasets")
    assert {t.strip() for t in hostile} <= set(reviewed.train.texts)  # ingest strips outer whitespace
