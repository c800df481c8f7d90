"""Issue 15, before and after on this CPU: TF-IDF featurisation, a MiniLM training step, a full
db_bhcn epoch, and what MLflow tracking costs a fit.

    .venv/bin/python benchmarks/hardware.py [--epoch-before REV]

Run it on an otherwise idle machine. "Before" is the code this issue replaced: the pure-Python
Snowball stemmer word by word (featurisation); torch's default AdamW with every weight trained
and randomly composed batches (training step); for the epoch, ``ktt train`` of commit REV in a
git worktree (``--epoch-before``; without it the epoch table is not rewritten).
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import write_section  # noqa: E402
from ktt import registry  # noqa: E402
from ktt.data import Split, load_dataset, prepare, write_dataset  # noqa: E402

SHARED = Path(os.environ.get("KTT_SHARED_DATA", ROOT.parent / "shared" / "data"))
_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)


def best_of(fn, repeat=3) -> float:
    """The fastest of ``repeat`` timed calls, in seconds (the least disturbed one)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def splits_of(df: pd.DataFrame) -> dict[str, Split]:
    splits, h, _ = prepare(df)
    return {k: Split(v.text.tolist(), [tuple(x) for x in v.labels], h) for k, v in splits.items()}


def long_clinc(per_row: int = 8) -> pd.DataFrame:
    """Paragraph-length texts: ``per_row`` CLINC150 utterances of one intent joined, split kept."""
    df = pd.read_parquet(SHARED / "clinc150.parquet")
    df["key"] = df.labels.map(lambda p: " > ".join(p))
    rows = []
    for (split, _), g in df.groupby(["split", "key"], sort=True):
        for i in range(0, len(g) - per_row + 1, per_row):
            chunk = g.iloc[i:i + per_row]
            rows.append({"text": " ".join(chunk.text), "labels": chunk.labels.iloc[0], "split": split})
    return pd.DataFrame(rows)


# -- 1. featurisation -----------------------------------------------------------------------------
def featurisation() -> str:
    from snowballstemmer.english_stemmer import EnglishStemmer

    def stem_before(texts):
        words = EnglishStemmer().stemWords
        return [" ".join(words(_TOKEN.findall(t.lower()))) for t in texts]

    rows = []
    for name, df in (("BigBasket titles", pd.read_parquet(SHARED / "bigbasket_products.parquet")),
                     ("CLINC150, 8 utterances a text", long_clinc())):
        s = splits_of(df)
        model = registry.create("tfidf_hsgd", s["train"].hierarchy).fit(s["train"])
        test = s["test"].texts
        texts = (test * (20_000 // len(test) + 1))[:20_000]  # the test split repeated: long enough to time
        x = model.features(texts)
        assert (model.vectorizer_.transform(stem_before(texts)) != x).nnz == 0  # identical features
        n, chars = len(texts), np.mean([len(t) for t in test])
        clf = best_of(lambda: model.predict_from_features(x))
        before = best_of(lambda: model.predict_from_features(model.vectorizer_.transform(stem_before(texts))), 1)
        after = best_of(lambda: model.predict(texts))
        rows.append(f"| {name} | {len(test)} x {n // len(test)} | {chars:.0f} | {n / clf:,.0f} | {n / before:,.0f} | "
                    f"{n / after:,.0f} | {clf / after:.0%} | {before / after:.0f}x |")
        print(rows[-1], flush=True)
    return "\n".join([
        "| data | rows (test split x times) | characters a text | classifier only, rows/s | before: end to end, "
        "rows/s | after: end to end, rows/s | after / classifier only (goal >= 50%) | after vs before |",
        "|---|---|---|---|---|---|---|---|", *rows])


# -- 2. a training step ----------------------------------------------------------------------------
def training_steps(steps: int = 30) -> str:
    import torch

    df = pd.read_parquet(SHARED / "bigbasket_products.parquet")
    s = splits_of(df)
    train = s["train"]
    codes = torch.as_tensor(train.codes)
    configs = [("before: AdamW default (for-loop), all weights, random batches", {}, dict(bucket=False)),
               ("AdamW foreach", {"foreach": True}, dict(bucket=False)),
               ("AdamW fused", {"fused": True}, dict(bucket=False)),
               ("fused + length buckets", {"fused": True}, dict(bucket=True)),
               ("after: fused + buckets + frozen word embeddings", {"fused": True},
                dict(bucket=True, freeze_embeddings=True))]
    rows = []
    for label, opt_kw, params in configs:
        model = registry.create("db_bhcn", train.hierarchy, **params)
        model._build()
        net = model.net_
        if model.params["freeze_embeddings"]:
            net.encoder.get_input_embeddings().requires_grad_(False)
        opt = torch.optim.AdamW([q for q in net.parameters() if q.requires_grad], lr=1e-4, **opt_kw)
        lengths = model._lengths(train.texts) if model.params["bucket"] else None
        batches = model._batches(len(train), 0, lengths)
        fwd, bwd, step = [], [], []
        net.train()
        for i, idx in enumerate(batches[:steps + 3]):
            t0 = time.perf_counter()
            loss = model.loss(net(*model._batch([train.texts[j] for j in idx])), codes[idx]).mean()
            t1 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            t2 = time.perf_counter()
            opt.step()
            t3 = time.perf_counter()
            if i >= 3:  # warm-up steps left out
                fwd.append(t1 - t0)
                bwd.append(t2 - t1)
                step.append(t3 - t2)
        f, b, o = (1000 * statistics.median(v) for v in (fwd, bwd, step))
        rows.append(f"| {label} | {f:.0f} | {b:.0f} | {o:.0f} | {f + b + o:.0f} | {(f + b + o) / (f + b):.2f} |")
        print(rows[-1], flush=True)
    return "\n".join([
        f"| db_bhcn, batch 32 BigBasket titles, {torch.get_num_threads()} threads | forward ms | backward ms "
        "(with clipping) | optimiser ms | step ms | step / (forward + backward) (goal <= 1.3) |",
        "|---|---|---|---|---|---|", *rows])


# -- 2b. what the new options cost in accuracy -----------------------------------------------------
def options(train_rows: int = 8000, epochs: int = 2) -> str:
    """db_bhcn with and without length buckets and frozen word embeddings: time and test scores."""
    from ktt.metrics import evaluate

    splits, h, _ = prepare(pd.read_parquet(SHARED / "bigbasket_products.parquet"))
    s = {k: Split(v.text.tolist(), [tuple(x) for x in v.labels], h) for k, v in splits.items()}
    sample = splits["train"].sample(train_rows, random_state=0)
    train = Split(sample.text.tolist(), [tuple(x) for x in sample.labels], h)
    val = Split(s["val"].texts[:1000], s["val"].paths[:1000], h)
    rows = []
    for label, params in (("random batches, all weights (before)", {"bucket": False}),
                          ("length buckets", {"bucket": True}),
                          ("length buckets + frozen word embeddings", {"bucket": True, "freeze_embeddings": True})):
        t0 = time.perf_counter()
        model = registry.create("db_bhcn", h, epochs=epochs, patience=epochs, **params).fit(train, val)
        fit_s = time.perf_counter() - t0
        m = evaluate(h, s["test"].codes, model.predict(s["test"].texts))
        rows.append(f"| {label} | {fit_s:.0f} | {m['h_f1']:.4f} | {m['leaf_accuracy']:.4f} | {m['L1_accuracy']:.4f} |")
        print(rows[-1], flush=True)
    return "\n".join([
        f"| db_bhcn, a seeded {train_rows}-row BigBasket sample, {epochs} epochs, fused AdamW | fit s | test hF1 | "
        "test leaf accuracy | test L1 accuracy |", "|---|---|---|---|---|", *rows])


# -- 3. a full epoch, before and after --------------------------------------------------------------
def epoch(before_rev: str) -> str:
    """``ktt train db_bhcn -p epochs=1`` on the full BigBasket split, at ``before_rev`` and here."""
    tmp = Path(tempfile.mkdtemp(prefix="ktt-epoch-"))
    worktree = tmp / "before"
    subprocess.run(["git", "worktree", "add", "--detach", str(worktree), before_rev], cwd=ROOT, check=True,
                   capture_output=True)
    rows = []
    try:
        for label, code in ((f"before ({before_rev[:8]})", worktree), ("after (this tree)", ROOT)):
            env = {**os.environ, "PYTHONPATH": str(code), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"}
            env.pop("KTT_HYPERPARAMETERS", None)
            subprocess.run([sys.executable, "-m", "ktt", "ingest", str(SHARED / "bigbasket_products.parquet"),
                            "-n", "bigbasket", "--out", str(tmp / "datasets"), "--overwrite", "--no-track"],
                           cwd=code, env=env, check=True, capture_output=True)
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "ktt", "train", "db_bhcn", "bigbasket", "-p", "epochs=1",
                                  "--datasets", str(tmp / "datasets"), "--weights", str(tmp / "weights")],
                                 cwd=code, env=env, check=True, capture_output=True, text=True).stdout
            wall = time.perf_counter() - t0
            run_id = re.search(r"MLflow run ([0-9a-f]{32})", out).group(1)
            import mlflow

            m = mlflow.MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}").get_run(run_id).data.metrics
            rows.append(f"| {label} | {m['train_time_s'] / 60:.1f} | {wall / 60:.1f} | {m['test_h_f1']:.4f} | "
                        f"{m['test_leaf_accuracy']:.4f} |")
            print(rows[-1], flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, capture_output=True)
    n = len(load_dataset("bigbasket", tmp / "datasets").train)
    return "\n".join([
        f"| db_bhcn, 1 epoch of the full BigBasket training split ({n} rows), batch 32 | fit min (epoch + "
        "validation + checkpoints) | `ktt train` wall min | test hF1 | test leaf accuracy |",
        "|---|---|---|---|---|", *rows])


# -- 4. tracking overhead ----------------------------------------------------------------------------
def tracking(short_rows: int = 2000) -> str:
    import mlflow

    from ktt.metrics import evaluate
    from ktt.train import train

    tmp = Path(tempfile.mkdtemp(prefix="ktt-track-"))
    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
    splits, h, _ = prepare(pd.read_parquet(SHARED / "bigbasket_products.parquet"))
    write_dataset(splits, h, tmp / "datasets", "bigbasket")
    short = dict(splits, train=splits["train"].sample(short_rows, random_state=0),
                 val=splits["val"].sample(500, random_state=0))
    write_dataset(short, h, tmp / "datasets", "bigbasket_short")
    rows = []
    for name, dataset, params in (("tfidf_hsgd", "bigbasket", {}),
                                  ("db_bhcn", "bigbasket_short", {"epochs": 1})):
        ds = load_dataset(dataset, tmp / "datasets")

        def untracked():  # the same fit and evaluations, nothing logged or saved
            model = registry.create(name, ds.hierarchy, **params).fit(ds.train, ds.val)
            for split in (ds.val, ds.test):
                evaluate(ds.hierarchy, split.codes, model.predict(split.texts))

        def tracked(log_model):  # one fit, as `ktt train`: its figures waited for (drawn after the run)
            train(name, dataset, overrides=params, datasets_root=tmp / "datasets", weights_root=tmp / "weights",
                  log_model=log_model)

        repeat = 3
        base = best_of(untracked, repeat)
        for label, log_model in (("SQLite: params, metrics, tables, figures; checkpoints as artifacts", False),
                                 ("... and the logged pyfunc model", True)):
            t = best_of(lambda: tracked(log_model), repeat)
            rows.append(f"| {name} ({dataset}) | {label} | {base:.1f} | {t:.1f} | {100 * (t - base) / base:+.1f}% |")
            print(rows[-1], flush=True)
    return "\n".join(["| fit | tracking | untracked s | tracked s | overhead (goal < 3%) |",
                      "|---|---|---|---|---|", *rows])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epoch-before", metavar="REV", help="also time a full db_bhcn epoch at REV and here")
    ap.add_argument("--only", choices=["featurisation", "steps", "options", "epoch", "tracking"])
    args = ap.parse_args()
    cmd = ".venv/bin/python benchmarks/hardware.py" + (f" --epoch-before {args.epoch_before}" if args.epoch_before
                                                       else "")
    parts = {"featurisation": ("TF-IDF featurisation: tfidf_hsgd predict, before and after", featurisation),
             "steps": ("A MiniLM training step (db_bhcn)", training_steps),
             "options": ("Length buckets and frozen word embeddings: time and accuracy", options),
             "tracking": ("What MLflow tracking costs a fit", tracking)}
    if args.epoch_before:
        parts["epoch"] = ("A full db_bhcn epoch, before and after", lambda: epoch(args.epoch_before))
    for key, (title, fn) in parts.items():
        if args.only and key != args.only:
            continue
        write_section(f"hardware-{key}", f"## {title} (issue 15)\n\nCommand: `{cmd}`\n\n{fn()}")


if __name__ == "__main__":
    main()
