"""Precision against coverage of the stopping threshold, tfidf_hsgd and db_bhcn on BigBasket.

    .venv/bin/python benchmarks/stop_threshold.py

Trains both models with their defaults on the official split (tracked, in the MLflow experiment
``bigbasket``; each fit logs its own curve, ``metrics/test_stop_curve.json`` and
``figures/test_precision_coverage.png``), then draws both curves in one figure, logs it to both
runs (``figures/stop_threshold_bigbasket.png``) and writes it and the table to docs/benchmarks.md.
A threshold t answers each test title down to the deepest level whose confidence (the model's
score of the predicted class there) is at least t (``Hierarchy.answer_depths``).
"""
import os
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT / 'mlflow.db'}")

from benchmarks.bigbasket import load  # noqa: E402
from benchmarks.report import write_section  # noqa: E402

FIGURE = ROOT / "docs" / "figures" / "stop_threshold_bigbasket.png"
SHOWN = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95)


def main():
    import mlflow

    from ktt.figures import precision_coverage
    from ktt.train import train

    ds = load()
    curves, runs = {}, {}
    for model in ("tfidf_hsgd", "db_bhcn"):
        fit = train(model, "bigbasket", datasets_root=ds.path.parent, weights_root=ROOT / "weights",
                    experiment="bigbasket", run_name=f"{model}-bigbasket-stop-threshold")
        table = mlflow.artifacts.load_dict(f"runs:/{fit.run_id}/metrics/test_stop_curve.json")
        curves[model] = pd.DataFrame(table["data"], columns=table["columns"])
        runs[model] = fit.run_id

    fig = precision_coverage(curves, f"BigBasket test ({len(ds.test):,} titles)")
    FIGURE.parent.mkdir(exist_ok=True)
    fig.savefig(FIGURE, dpi=110)
    for run_id in runs.values():
        mlflow.MlflowClient().log_figure(run_id, fig, "figures/stop_threshold_bigbasket.png")

    rows = ["| model | threshold | coverage | h-precision | h-recall | h-F1 | answered to the leaf | not answered |",
            "|---|---|---|---|---|---|---|---|"]
    for model, c in curves.items():
        for _, r in c[c.threshold.round(2).isin(SHOWN)].iterrows():
            rows.append(f"| {model} | {r.threshold:.2f} | {r.coverage:.3f} | {r.h_precision:.4f} | {r.h_recall:.4f} | "
                        f"{r.h_f1:.4f} | {r.full:.1%} | {r.none:.1%} |")
    body = f"""## Knowing when to stop: precision against coverage (BigBasket)

    .venv/bin/python benchmarks/stop_threshold.py

Both models trained with their defaults on the official split ({len(ds.train):,} train, {len(ds.test):,} test
titles), MLflow runs {', '.join(f'`{m}` {r}' for m, r in runs.items())} (experiment `bigbasket`). Coverage is
the share of the predicted paths' classes still answered; precision and recall are hierarchical
(the classes answered against the true path's). Threshold 0 answers every level.

![precision against coverage](figures/{FIGURE.name})

""" + "\n".join(rows) + "\n"
    write_section("stop-threshold", body)
    print(body)


if __name__ == "__main__":
    main()
