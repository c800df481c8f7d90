"""TF-IDF models on BigBasket against the README's TF-IDF + LinearSVC sanity baseline.

    .venv/bin/python benchmarks/tfidf_bigbasket.py

Two protocols: the official split as-is (the baseline's rows), and KTT's default ingest,
which drops exact (text, path) duplicates first, so no test row repeats a training row.
"""
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import write_section  # noqa: E402
from ktt import registry  # noqa: E402
from ktt.data import load_dataset, prepare, write_dataset  # noqa: E402
from ktt.metrics import evaluate  # noqa: E402

DATA = Path(os.environ.get("KTT_SHARED_DATA", ROOT.parent / "shared" / "data")) / "bigbasket_products.parquet"
BASELINE = {"L1": 0.863, "L2": 0.769, "L3": 0.700}


def main():
    df = pd.read_parquet(DATA)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for protocol, keep in (("official split as-is", True), ("deduplicated (KTT default)", False)):
            splits, h, _ = prepare(df, keep_duplicates=keep)
            ds = load_dataset(write_dataset(splits, h, tmp, "bb_dup" if keep else "bb"))
            for name in ("tfidf_lsgd", "tfidf_hsgd"):
                t0 = time.perf_counter()
                model = registry.create(name, ds.hierarchy).fit(ds.train, ds.val)
                fit_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                pred = model.predict(ds.test.texts)
                pred_s = time.perf_counter() - t0
                m = evaluate(ds.hierarchy, ds.test.codes, pred)
                rows.append(f"| {protocol} | {name} | {len(ds.train)}/{len(ds.test)} | {m['L1_accuracy']:.3f} | "
                            f"{m['L2_accuracy']:.3f} | {m['L3_accuracy']:.3f} | {m['L3_macro_f1']:.3f} | "
                            f"{m['h_f1']:.3f} | {m['violation_rate']:.3f} | {fit_s:.1f} | "
                            f"{len(ds.test) / pred_s:,.0f} |")
                print(rows[-1], flush=True)
    body = "\n".join([
        "## TF-IDF models on BigBasket (issue 2)", "",
        "Command: `.venv/bin/python benchmarks/tfidf_bigbasket.py` (hyperparameters from `hyperparameters.json`).",
        "", "| protocol | model | train/test rows | L1 acc | L2 acc | L3 (leaf) acc | leaf macro-F1 | hier. F1 | "
        "violations | fit s | predict rows/s |", "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows, f"| official split as-is | sanity baseline (char TF-IDF + LinearSVC, data README) | | "
        f"{BASELINE['L1']} | {BASELINE['L2']} | {BASELINE['L3']} | | | | | |"])
    write_section("tfidf-bigbasket", body)


if __name__ == "__main__":
    main()
