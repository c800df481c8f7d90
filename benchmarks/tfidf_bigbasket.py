"""TF-IDF models on BigBasket against the README's TF-IDF + LinearSVC sanity baseline, on the
official split as-is (the baseline's rows) and deduplicated (KTT's default ingest: no test row
repeats a training row).

    .venv/bin/python benchmarks/tfidf_bigbasket.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import arguments, bigbasket, clocked, table, write_section  # noqa: E402

BASELINE = {"L1": 0.863, "L2": 0.769, "L3": 0.700}


def main():
    arguments(__doc__)
    from ktt import registry
    from ktt.metrics import evaluate

    rows = []
    for protocol, keep in (("official split as-is", True), ("deduplicated (KTT default)", False)):
        ds = bigbasket(keep_duplicates=keep)
        for name in ("tfidf_lsgd", "tfidf_hsgd"):
            model, fit_s = clocked(registry.create(name, ds.hierarchy).fit, ds.train, ds.val)
            pred, pred_s = clocked(model.predict, ds.test.texts)
            m = evaluate(ds.hierarchy, ds.test.codes, pred)
            rows.append([protocol, name, f"{len(ds.train)}/{len(ds.test)}",
                         *(f"{m[k]:.3f}" for k in ("L1_accuracy", "L2_accuracy", "L3_accuracy", "L3_macro_f1", "h_f1",
                                                   "violation_rate")), f"{fit_s:.1f}", f"{len(ds.test) / pred_s:,.0f}"])
            print(rows[-1], flush=True)
    rows.append(["official split as-is", "sanity baseline (char TF-IDF + LinearSVC, data README)", "",
                 *BASELINE.values(), "", "", "", "", ""])
    write_section("tfidf-bigbasket", "## TF-IDF models on BigBasket (issue 2)",
                  "Command: `.venv/bin/python benchmarks/tfidf_bigbasket.py` (hyperparameters from "
                  "`hyperparameters.json`).",
                  table(["protocol", "model", "train/test rows", "L1 acc", "L2 acc", "L3 (leaf) acc", "leaf macro-F1",
                         "hier. F1", "violations", "fit s", "predict rows/s"], rows))


if __name__ == "__main__":
    main()
