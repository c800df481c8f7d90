"""All seven models on one BigBasket split, each a tracked `ktt.train.train` run.

    .venv/bin/python benchmarks/all_models_bigbasket.py --train-rows 8000 --epochs 3

Every model gets the same seeded subsample of the deduplicated training split, the same
validation rows and the full test split; hyperparameters come from hyperparameters.json
(``--epochs`` overrides the encoder models'). Runs go to a throw-away MLflow store unless
MLFLOW_TRACKING_URI is set.
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mlflow  # noqa: E402

from benchmarks.report import write_section  # noqa: E402
from ktt import registry  # noqa: E402
from ktt.data import prepare, write_dataset  # noqa: E402
from ktt.train import train  # noqa: E402

DATA = Path(os.environ.get("KTT_SHARED_DATA", ROOT.parent / "shared" / "data")) / "bigbasket_products.parquet"
MODELS = ["tfidf_lsgd", "tfidf_hsgd", "db_linear", "db_bhcn", "db_bhcn_awx", "db_ahmcnf", "db_achmcnn"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-rows", type=int, default=8000)
    ap.add_argument("--val-rows", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true", help="print the rows, leave docs/benchmarks.md alone")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ktt-bench-"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])

    splits, h, _ = prepare(pd.read_parquet(DATA))
    splits["train"] = splits["train"].sample(min(args.train_rows, len(splits["train"])), random_state=args.seed)
    splits["val"] = splits["val"].sample(min(args.val_rows, len(splits["val"])), random_state=args.seed)
    # the hierarchy stays the full one, so every model scores over all 597 leaves
    write_dataset(splits, h, tmp / "datasets", "bigbasket")
    rows = []
    for name in args.models.split(","):
        overrides = {"epochs": args.epochs} if "epochs" in registry.get(name).defaults else {}
        run_id = train(name, "bigbasket", overrides=overrides, datasets_root=tmp / "datasets",
                       weights_root=tmp / "weights", experiment="benchmark-all-models", log_model=False)
        m = mlflow.MlflowClient().get_run(run_id).data.metrics
        rows.append(f"| {name} | {m['test_L1_accuracy']:.3f} | {m['test_L2_accuracy']:.3f} | "
                    f"{m['test_L3_accuracy']:.3f} | {m['test_L1_macro_f1']:.3f} | {m['test_L2_macro_f1']:.3f} | "
                    f"{m['test_L3_macro_f1']:.3f} | {m['test_h_f1']:.3f} | {m['test_violation_rate']:.3f} | "
                    f"{m['train_time_s']:.0f} |")
        print(rows[-1], flush=True)
    body = "\n".join([
        "## All seven models on BigBasket (issue 3)", "",
        f"Command: `.venv/bin/python benchmarks/all_models_bigbasket.py --train-rows {args.train_rows} "
        f"--epochs {args.epochs}`", "",
        f"Deduplicated BigBasket, a seeded {args.train_rows}-row sample of the training split, "
        f"{args.val_rows} validation rows (early stopping on hierarchical F1), the full test split "
        f"({len(splits['test'])} rows), all {h.sizes[-1]} leaves. Encoder models: all-MiniLM-L6-v2, "
        f"{args.epochs} epochs on this machine's CPU; hyperparameters from `hyperparameters.json`.", "",
        "| model | L1 acc | L2 acc | L3 acc | L1 macro-F1 | L2 macro-F1 | L3 macro-F1 | hier. F1 | "
        "violation rate | train s |", "|---|---|---|---|---|---|---|---|---|---|", *rows])
    if not args.no_write:
        write_section("all-models-bigbasket", body)


if __name__ == "__main__":
    main()
