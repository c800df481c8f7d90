"""Beyond one machine, measured (issue 12): what a second tuning worker on PostgreSQL buys, and
how fast `ktt predict` and Spark score 100,000 titles. (What tracking costs: benchmarks/tracking_ab.py.)

    .venv/bin/python benchmarks/scaling.py [--only tuning|scoring]

The engines are the tests' own (tests/conftest.py): a throw-away PostgreSQL (Debian's) and
`mlflow server` on it with served artifacts. Deduplicated BigBasket, official split.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from benchmarks.harness import (KTT, arguments, bigbasket, clocked, mlflow_server, table, timed,  # noqa: E402
                                workdir, write_section)
from conftest import clean_env  # noqa: E402


def tuning(tmp: Path, pg, server_url: str, trials: int = 8) -> str:
    import optuna

    env = clean_env(MLFLOW_TRACKING_URI=server_url, KTT_DATASETS=tmp / "datasets", KTT_WEIGHTS=tmp / "weights",
                    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    rows = []
    for workers in (1, 2):
        storage, study = pg.url(f"optuna_{workers}"), f"hsgd-{workers}-workers"
        cmd = [KTT, "tune", "tfidf_hsgd", "bigbasket", "--storage", storage, "--study-name", study,
               "--n-trials", str(trials // workers), "--experiment", study, "--pruner", "none"]

        def run():  # the workers started at once, as on two machines
            procs = [subprocess.Popen(cmd, env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                     for _ in range(workers)]
            outs = [p.communicate()[0] for p in procs]
            assert all(p.returncode == 0 for p in procs), outs
        wall = clocked(run)[1]
        done = optuna.load_study(study_name=study, storage=storage)
        n = sum(t.state.name == "COMPLETE" for t in done.trials)
        rows.append([workers, n, f"{wall:.0f}", f"{60 * n / wall:.1f}", f"{done.best_value:.4f}"])
        print(rows[-1], flush=True)
    return "\n\n".join([
        f"`tfidf_hsgd` on BigBasket, {trials} trials into a new study on PostgreSQL, tracked on the HTTP server; "
        "2 workers are two `ktt tune` processes started at once (as on two machines), each adding half the trials. "
        "Wall time includes each process's start.",
        table(["workers", "trials complete", "wall s", "trials / min", "best `best_val_h_f1`"], rows)])


def scoring(tmp: Path, rows: int = 100_000) -> str:
    import mlflow
    import pandas as pd

    from ktt.train import train

    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'scoring.db'}")
    test = pd.read_parquet(tmp / "datasets" / "bigbasket" / "test.parquet")[["text"]]
    titles = pd.concat([test] * (rows // len(test) + 1), ignore_index=True).head(rows)
    titles.to_parquet(tmp / "titles.parquet", index=False)
    out = []
    for model, dataset, params in (("tfidf_hsgd", "bigbasket", {}), ("db_bhcn", "bigbasket_short", {"epochs": 1})):
        fit = train(model, dataset, overrides=params, datasets_root=tmp / "datasets", weights_root=tmp / "weights",
                    experiment="scoring")
        uri = f"runs:/{fit.run_id}/model"
        loaded = mlflow.pyfunc.load_model(uri)
        ceiling = rows / clocked(lambda: [loaded.predict(titles.iloc[i:i + 10_000])  # the chunks ktt predict scores
                                          for i in range(0, rows, 10_000)])[1]
        cli = rows / timed([KTT, "predict", uri, tmp / "titles.parquet", tmp / "scored.parquet"],
                           env={**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()})
        out.append([model, f"{ceiling:,.0f}", f"{cli:,.0f}", f"{spark_scoring(uri, tmp, rows):,.0f}"])
        print(out[-1], flush=True)
    return "\n\n".join([
        f"{rows:,} BigBasket test titles (repeated), rows per second. In-process: the logged pyfunc model's "
        "`predict` in chunks of 10,000, loaded beforehand (the ceiling). `ktt predict`: the whole command, Parquet "
        "in and out, process start and model load included. Spark: `mlflow.pyfunc.spark_udf` on `local[2]`, "
        "reading and writing Parquet, session start excluded, 2 partitions, `KTT_THREADS=1` per task. "
        "db_bhcn here is 1 epoch on 2,000 rows: its speed, not its accuracy, is measured.",
        table(["model", "in-process `predict`", "`ktt predict`", "Spark `local[2]`"], out)])


def spark_scoring(uri: str, tmp: Path, rows: int) -> float:
    import mlflow
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["KTT_THREADS"] = "1"  # two tasks on two cores: one thread each (Spark's workers inherit it)
    spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
             .config("spark.driver.memory", "4g").getOrCreate())
    try:
        def score():
            udf = mlflow.pyfunc.spark_udf(spark, uri, env_manager="local")
            frame = spark.read.parquet(str(tmp / "titles.parquet")).repartition(2)
            (frame.withColumn("answer", udf("text")).select("*", "answer.*").drop("answer")
             .write.mode("overwrite").parquet(str(tmp / "spark-out")))
        return rows / clocked(score)[1]
    finally:
        spark.stop()
        os.environ.pop("KTT_THREADS")


def main():
    args = arguments(__doc__, ("--only", (None, "tuning", "scoring")))
    tmp = workdir("scaling")
    bigbasket(root=tmp / "datasets")
    bigbasket(root=tmp / "datasets", name="bigbasket_short", sample={"train": 2000, "val": 500})
    try:
        with mlflow_server(tmp) as (pg, url):
            for key, title, fn in (("tuning", "Tuning workers on PostgreSQL", lambda: tuning(tmp, pg, url)),
                                   ("scoring", "Batch scoring: in-process, `ktt predict`, Spark", lambda: scoring(tmp))):
                if args.only in (None, key):
                    write_section(f"scaling-{key}", f"## {title} (issue 12)",
                                  f"Command: `.venv/bin/python benchmarks/scaling.py{f' --only {key}' if args.only else ''}`",
                                  fn())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
