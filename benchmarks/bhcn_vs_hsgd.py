"""Why db_bhcn trails tfidf_hsgd at 8,000 rows: learning curve and decoding, at equal data.

    .venv/bin/python benchmarks/bhcn_vs_hsgd.py --epochs 6

Same data as benchmarks/all_models_bigbasket.py (seeded 8,000-row training sample, 1,000
validation rows, full deduplicated test split). Reports db_bhcn's validation hierarchical F1
after every epoch and its test scores under each decoding rule, next to tfidf_hsgd.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import write_section  # noqa: E402
from ktt import registry  # noqa: E402
from ktt.data import Split, prepare  # noqa: E402
from ktt.metrics import evaluate  # noqa: E402
from ktt.model import NullLogger  # noqa: E402

DATA = Path(os.environ.get("KTT_SHARED_DATA", ROOT.parent / "shared" / "data")) / "bigbasket_products.parquet"


class Curve(NullLogger):
    def __init__(self):
        self.val = []

    def log_metrics(self, metrics, step=None):
        if "val_h_f1" in metrics:
            self.val.append((step + 1, metrics["val_h_f1"], metrics["val_L1_accuracy"], metrics["val_loss"]))
            print("epoch", self.val[-1], flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--train-rows", type=int, default=8000)
    args = ap.parse_args()
    splits, h, _ = prepare(pd.read_parquet(DATA))
    tr = splits["train"].sample(args.train_rows, random_state=0)
    va = splits["val"].sample(1000, random_state=0)

    def split(df):
        return Split(df.text.tolist(), [tuple(x) for x in df.labels], h)
    train, val, test = split(tr), split(va), split(splits["test"])

    hsgd = registry.get("tfidf_hsgd")(h).fit(train, val)
    rows = [f"| tfidf_hsgd | top_down | {evaluate(h, test.codes, hsgd.predict(test.texts))['h_f1']:.3f} | "
            f"{evaluate(h, test.codes, hsgd.predict(test.texts))['L1_accuracy']:.3f} | 0.000 |"]
    curve = Curve()
    t0 = time.perf_counter()
    bhcn = registry.get("db_bhcn")(h, epochs=args.epochs, patience=args.epochs, batch_size=32, encoder_lr=1e-4,
                                   classifier_lr=2e-3).fit(train, val, curve)
    fit_s = time.perf_counter() - t0
    scores = bhcn.predict_proba(test.texts)  # the last epoch's weights
    for mode in ("argmax", "path", "leaf"):
        m = evaluate(h, test.codes, h.decode_scores(scores, mode))
        rows.append(f"| db_bhcn, {args.epochs} epochs (last) | {mode} | {m['h_f1']:.3f} | {m['L1_accuracy']:.3f} | "
                    f"{m['violation_rate']:.3f} |")
    body = "\n".join([
        "## db_bhcn vs tfidf_hsgd at equal data (issue 3)", "",
        f"Command: `.venv/bin/python benchmarks/bhcn_vs_hsgd.py --epochs {args.epochs}` "
        f"({args.train_rows} training rows, as in the table above; db_bhcn fit took {fit_s:.0f} s).", "",
        "db_bhcn validation curve:", "", "| epoch | val hier. F1 | val L1 acc | val loss |", "|---|---|---|---|",
        *[f"| {e} | {f:.3f} | {a:.3f} | {loss:.3f} |" for e, f, a, loss in curve.val], "",
        "Test split:", "", "| model | decoding | hier. F1 | L1 acc | violation rate |", "|---|---|---|---|---|", *rows])
    write_section("bhcn-vs-hsgd", body)


if __name__ == "__main__":
    main()
