"""Beyond one machine, measured (issue 12): what a second tuning worker on PostgreSQL buys, and
how fast `ktt predict` and Spark score 100,000 titles. (What tracking costs: benchmarks/tracking_ab.py.)

    .venv/bin/python benchmarks/scaling.py [--only tuning|scoring]

The engines are the tests' own (tests/conftest.py): a throw-away PostgreSQL (Debian's) and
`mlflow server` on it with served artifacts. Deduplicated BigBasket, official split.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import mlflow  # noqa: E402

from benchmarks.report import write_section  # noqa: E402
from conftest import Postgres, Server, clean_env, http_ok  # noqa: E402
from ktt.data import prepare, write_dataset  # noqa: E402

DATA = Path(os.environ.get("KTT_SHARED_DATA", ROOT.parent / "shared" / "data")) / "bigbasket_products.parquet"
KTT = ROOT / ".venv" / "bin" / "ktt"
CMD = ".venv/bin/python benchmarks/scaling.py"


def tracking_server(pg: Postgres, folder: Path) -> tuple[Server, str]:
    env = clean_env()
    server = Server(lambda ports: [str(ROOT / ".venv/bin/mlflow"), "server", "--backend-store-uri", pg.url("mlflow"),
                                   "--serve-artifacts", "--artifacts-destination", str(folder / "artifacts"),
                                   "--host", "127.0.0.1", "--port", str(ports[0]), "--workers", "2"],
                    lambda ports, log: http_ok(f"http://127.0.0.1:{ports[0]}/health"), env=env)
    return server, f"http://127.0.0.1:{server.ports[0]}"


def tuning(tmp: Path, pg: Postgres, server_url: str, trials: int = 8) -> str:
    env = clean_env(MLFLOW_TRACKING_URI=server_url, KTT_DATASETS=tmp / "datasets", KTT_WEIGHTS=tmp / "weights",
                    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    rows = []
    for workers in (1, 2):
        storage, study = pg.url(f"optuna_{workers}"), f"hsgd-{workers}-workers"
        cmd = [str(KTT), "tune", "tfidf_hsgd", "bigbasket", "--storage", storage, "--study-name", study,
               "--n-trials", str(trials // workers), "--experiment", study, "--pruner", "none"]
        t0 = time.perf_counter()
        procs = [subprocess.Popen(cmd, env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(workers)]
        outs = [p.communicate()[0] for p in procs]
        wall = time.perf_counter() - t0
        assert all(p.returncode == 0 for p in procs), outs
        import optuna

        done = optuna.load_study(study_name=study, storage=storage)
        n = sum(t.state.name == "COMPLETE" for t in done.trials)
        rows.append(f"| {workers} | {n} | {wall:.0f} | {60 * n / wall:.1f} | {done.best_value:.4f} |")
        print(rows[-1], flush=True)
    return "\n".join([
        f"`tfidf_hsgd` on BigBasket, {trials} trials into a new study on PostgreSQL, tracked on the HTTP server; "
        "2 workers are two `ktt tune` processes started at once (as on two machines), each adding half the trials. "
        "Wall time includes each process's start.", "",
        "| workers | trials complete | wall s | trials / min | best `best_val_h_f1` |", "|---|---|---|---|---|", *rows])


def scoring(tmp: Path, rows: int = 100_000) -> str:
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
        t0 = time.perf_counter()
        for i in range(0, rows, 10_000):  # the chunks ktt predict scores
            loaded.predict(titles.iloc[i:i + 10_000])
        ceiling = rows / (time.perf_counter() - t0)

        env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
        t0 = time.perf_counter()
        subprocess.run([str(KTT), "predict", uri, tmp / "titles.parquet", tmp / "scored.parquet"], env=env,
                       check=True, capture_output=True)
        cli = rows / (time.perf_counter() - t0)

        spark_rate = spark_scoring(uri, tmp, rows)
        out.append(f"| {model} | {ceiling:,.0f} | {cli:,.0f} | {spark_rate:,.0f} |")
        print(out[-1], flush=True)
    return "\n".join([
        f"{rows:,} BigBasket test titles (repeated), rows per second. In-process: the logged pyfunc model's "
        "`predict` in chunks of 10,000, loaded beforehand (the ceiling). `ktt predict`: the whole command, Parquet "
        "in and out, process start and model load included. Spark: `mlflow.pyfunc.spark_udf` on `local[2]`, "
        "reading and writing Parquet, session start excluded, 2 partitions, `KTT_THREADS=1` per task. "
        "db_bhcn here is 1 epoch on 2,000 rows: its speed, not its accuracy, is measured.", "",
        "| model | in-process `predict` | `ktt predict` | Spark `local[2]` |", "|---|---|---|---|", *out])


def spark_scoring(uri: str, tmp: Path, rows: int) -> float:
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["KTT_THREADS"] = "1"  # two tasks on two cores: one thread each (Spark's workers inherit it)
    spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
             .config("spark.driver.memory", "4g").getOrCreate())
    try:
        t0 = time.perf_counter()
        udf = mlflow.pyfunc.spark_udf(spark, uri, env_manager="local")
        frame = spark.read.parquet(str(tmp / "titles.parquet")).repartition(2)
        (frame.withColumn("answer", udf("text")).select("*", "answer.*").drop("answer")
         .write.mode("overwrite").parquet(str(tmp / "spark-out")))
        return rows / (time.perf_counter() - t0)
    finally:
        spark.stop()
        os.environ.pop("KTT_THREADS")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["tuning", "scoring"])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ktt-scaling-"))
    splits, h, _ = prepare(pd.read_parquet(DATA))
    write_dataset(splits, h, tmp / "datasets", "bigbasket")
    write_dataset(dict(splits, train=splits["train"].sample(2000, random_state=0),
                       val=splits["val"].sample(500, random_state=0)), h, tmp / "datasets", "bigbasket_short")
    pg = Postgres()
    server, url = tracking_server(pg, tmp)
    parts = {             "tuning": ("Tuning workers on PostgreSQL", lambda: tuning(tmp, pg, url)),
             "scoring": ("Batch scoring: in-process, `ktt predict`, Spark", lambda: scoring(tmp))}
    try:
        for key, (title, fn) in parts.items():
            if args.only and key != args.only:
                continue
            issues = "issue 12"
            cmd = CMD + (f" --only {key}" if args.only else "")
            write_section(f"scaling-{key}", f"## {title} ({issues})\n\nCommand: `{cmd}`\n\n{fn()}")
    finally:
        server.stop()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
