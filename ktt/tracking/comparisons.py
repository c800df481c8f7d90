"""Comparisons of runs: each run's per-row test counts, and paired bootstrap intervals between
groups of runs (``ktt compare``), logged as runs of their own."""
from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np

from ..errors import BadValue, NotFound
from .logs import log_dict, log_parquet
from .runs import run_artifact

TEST_ROWS = "metrics/test_rows.parquet"  # per test row: what hF1 and leaf accuracy pool (ktt.compare)


def log_test_rows(counts: dict, true_leaf) -> None:
    """A run's per-row counts on the test split (``metrics.row_counts``) and the true leaf of each
    row (two runs are compared only on the same rows)."""
    import pyarrow as pa

    log_parquet(pa.table({**counts, "true_leaf": np.asarray(true_leaf)}), TEST_ROWS)


def load_test_rows(run_id: str) -> dict:
    """What :func:`log_test_rows` logged for ``run_id``; NotFound for a run without it."""
    from ..data import read_parquet

    try:
        path = run_artifact(run_id, str(Path(TEST_ROWS).parent), lambda n: n == Path(TEST_ROWS).name)
    except Exception as e:  # MLflow raises several types for an unknown run
        raise NotFound(f"no MLflow run {run_id!r} ({str(e).splitlines()[0]})") from None
    if path is None:
        children = mlflow.MlflowClient().search_runs(
            [mlflow.get_run(run_id).info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'", max_results=100)
        if children:  # ``ktt train --seeds`` prints the parent; its seeds are what a comparison pools
            raise NotFound(f"run {run_id} is the parent of {len(children)} runs and scored no test rows itself: "
                           f"compare its runs, {','.join(sorted(c.info.run_id for c in children))}")
        raise NotFound(f"run {run_id} logged no {TEST_ROWS} (runs trained before it was logged cannot be compared)")
    return {k: v.to_numpy() for k, v in read_parquet(path).items()}


def bootstrap_runs(a: list[str], b: list[str], n_boot: int = 2000, seed: int = 0, resample: str = "texts") -> dict:
    """:func:`ktt.compare.paired_bootstrap` of runs ``b`` against runs ``a`` (seeds: the same number
    on each side) from their logged test rows: each resample draws the test texts once, the same
    draw for every run of both sides (``resample``: see there). ``BadValue`` naming the run unless
    every run scored the same test rows in the same order (a run logs no text per row: its true
    leaves are compared, and their number)."""
    from ..compare import paired_bootstrap

    if len(a) != len(b):
        raise BadValue(f"{len(a)} runs against {len(b)}: give each side the same number of seeds")
    ids = [*a, *b]
    rows = {r: load_test_rows(r) for r in dict.fromkeys(ids)}
    first = rows[ids[0]]["true_leaf"]
    for r in ids[1:]:
        leaf = rows[r]["true_leaf"]
        if len(leaf) != len(first):
            raise BadValue(f"run {r} scored {len(leaf)} test rows, run {ids[0]} {len(first)}: "
                           "compare runs on the same test rows")
        if (leaf != first).any():
            raise BadValue(f"run {r} and run {ids[0]} differ in the true leaf of test row {np.argmax(leaf != first)} "
                           f"(of {len(first)}): compare runs on the same test rows, in the same order")
    return paired_bootstrap(*([rows[r] for r in side] for side in (a, b)), n_boot, seed, resample=resample)


def compare_runs(a: list[str], b: list[str], n_boot: int = 2000, seed: int = 0, resample: str = "texts") -> dict:
    """:func:`bootstrap_runs`, logged as a run of its own (``ktt.stage`` compare) in the experiment
    of ``a``'s first run; returns the numbers and that run's ID."""
    result = bootstrap_runs(a, b, n_boot, seed, resample)
    experiment_id = mlflow.MlflowClient().get_run(a[0]).info.experiment_id
    with mlflow.start_run(experiment_id=experiment_id, run_name="compare", nested=mlflow.active_run() is not None,
                          tags={"ktt.stage": "compare", "ktt.compare.a": ",".join(a), "ktt.compare.b": ",".join(b)}):
        mlflow.log_params({"n_boot": n_boot, "seed": seed, "runs_per_side": len(a), "resample": resample})
        mlflow.log_metrics({f"{m}_{k}": float(v) for m, r in result.items() for k, v in r.items()})
        log_dict(result, "compare.json")
        run_id = mlflow.active_run().info.run_id
    return {"run_id": run_id, **result}
