"""The review loop, simulated on BigBasket (issue 29): start from 20% of the training labels, then
in rounds send titles to "review" (their true labels come back) and retrain, choosing them by the
review queue (least confident first, ``ktt.review.queue``) or at random; and, with 10% of the
training labels flipped to a sibling, how many flipped rows the first 1,000 of a queue hold.

    .venv/bin/python benchmarks/review_loop.py [--seeds 0,1,2] [--batch 1000]

tfidf_hsgd with its defaults, deduplicated BigBasket, official split. Each round scores the
unlabelled rows with the current model, moves ``--batch`` of them into the labelled set, and
refits from scratch. "Labels needed": the fewest labelled rows at which test hierarchical F1 is
within 1 point of the model trained on every training label (measured after each round).
"""
import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import bigbasket  # noqa: E402
from benchmarks.report import write_section  # noqa: E402

MODEL = "tfidf_hsgd"


def fit(h, train, rows, seed: int):
    from ktt import registry

    return registry.create(MODEL, h, seed=seed).fit(train.subset(rows))


def test_f1(model, test) -> float:
    from ktt.metrics import evaluate

    return evaluate(model.hierarchy, test.codes, model.predict(test.texts))["h_f1"]


def curve(ds, strategy: str, seed: int, start: float, batch: int) -> list[tuple[int, float]]:
    """(labelled rows, test hF1) after every round of one strategy."""
    from ktt.review import queue

    rng = np.random.default_rng(seed)
    n = len(ds.train)
    labelled = np.zeros(n, bool)
    labelled[rng.choice(n, int(start * n), replace=False)] = True
    out = []
    while True:
        model = fit(ds.hierarchy, ds.train, np.flatnonzero(labelled), seed)
        out.append((int(labelled.sum()), test_f1(model, ds.test)))
        pool = np.flatnonzero(~labelled)
        if not len(pool):
            return out
        if strategy == "queue":
            codes, proba = model.predict_scored([ds.train.texts[i] for i in pool])
            pick = pool[queue(ds.hierarchy.confidences(codes, proba))[:batch]]
        else:
            pick = rng.choice(pool, min(batch, len(pool)), replace=False)
        labelled[pick] = True


def flip_to_siblings(h, codes: np.ndarray, share: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """``codes`` with ``share`` of the rows given a sibling leaf (another leaf under the same
    parent; rows whose leaf has no sibling are left alone), and which rows were flipped."""
    leaf_paths = h.leaf_paths()
    parent = leaf_paths[:, -2] if h.depth > 1 else np.zeros(h.n_leaves, np.int64)
    siblings = {p: np.flatnonzero(parent == p) for p in np.unique(parent)}
    can = np.array([len(siblings[parent[c]]) > 1 for c in codes[:, -1]])
    rows = rng.choice(np.flatnonzero(can), int(share * len(codes)), replace=False)
    out = codes.copy()
    for r in rows:
        leaf = codes[r, -1]
        out[r] = leaf_paths[rng.choice(siblings[parent[leaf]][siblings[parent[leaf]] != leaf])]
    return out, rows


def noise(ds, seed: int, share: float = 0.1, top: int = 1000) -> dict:
    """Flipped rows among the first ``top`` of two orders of the training rows, each scored by a
    model that never saw it (2-fold cross-fitting): the review queue (least confident answer
    first) and the label audit (lowest probability of the row's own label first)."""
    from ktt.data import Split
    from ktt.review import queue

    rng = np.random.default_rng(seed)
    h, train = ds.hierarchy, ds.train
    noisy, flipped = flip_to_siblings(h, train.codes, share, rng)
    paths = [tuple(x for x in p if x) for p in (h.levels[-1][c] for c in noisy[:, -1])]
    data = Split(train.texts, paths, h)
    fold = rng.permutation(len(train)) % 2
    conf = np.zeros((len(train), h.depth))
    own = np.zeros(len(train))
    for k in (0, 1):
        model = fit(h, data, np.flatnonzero(fold != k), seed)
        rows = np.flatnonzero(fold == k)
        codes, proba = model.predict_scored([train.texts[i] for i in rows])
        conf[rows] = h.confidences(codes, proba)
        own[rows] = proba[-1][np.arange(len(rows)), noisy[rows, -1]]
    is_flipped = np.isin(np.arange(len(train)), flipped)
    return {"flipped": len(flipped), "queue": int(is_flipped[queue(conf)[:top]].sum()),
            "audit": int(is_flipped[np.argsort(own, kind="stable")[:top]].sum()),
            "random": top * len(flipped) / len(train)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--start", type=float, default=0.2)
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args()
    from ktt.compare import mean_sd

    ds = bigbasket.load()
    seeds = [int(s) for s in args.seeds.split(",")]
    full = [test_f1(fit(ds.hierarchy, ds.train, np.arange(len(ds.train)), s), ds.test) for s in seeds]
    need = {"queue": [], "random": []}
    curves = {}
    for s, f in zip(seeds, full):
        for strategy in need:
            c = curves[strategy, s] = curve(ds, strategy, s, args.start, args.batch)
            need[strategy].append(next(n for n, v in c if v >= f - 0.01))
            print(strategy, s, f"full {f:.4f}", [(n, round(v, 4)) for n, v in c], flush=True)
    ratio = [q / r for q, r in zip(need["queue"], need["random"])]
    noisy = [noise(ds, s) for s in seeds]
    print(noisy, flush=True)
    fmt = lambda xs, f="{:,.0f}": " ± ".join(f.format(v) for v in mean_sd(xs))  # noqa: E731
    n = len(ds.train)
    steps = sorted({k for c in curves.values() for k, _ in c})[:8]
    table = ["| labelled rows | " + " | ".join(f"{k:,}" for k in steps) + " |", "|---" * (len(steps) + 1) + "|"]
    for strategy in need:
        vals = [[dict(curves[strategy, s]).get(k) for s in seeds] for k in steps]
        table.append(f"| {strategy} | " + " | ".join(fmt(v, "{:.4f}") for v in vals) + " |")
    write_section("review-loop", "\n".join([
        "## The review loop (issue 29)", "",
        "Command: `.venv/bin/python benchmarks/review_loop.py`", "",
        f"{MODEL} with its defaults; deduplicated BigBasket, official split ({n:,} training rows, {len(ds.test):,} "
        f"test rows). Start from {args.start:.0%} of the training labels ({int(args.start * n):,} rows, drawn per "
        f"seed); each round scores the unlabelled rows, sends {args.batch:,} to review (their true labels come "
        "back) and refits from scratch. *queue*: the least confident answers first (the lowest confidence along "
        "the answered path: the review queue of `ktt predict --review` and the service); *random*: drawn at "
        "random. Labels needed: the fewest labelled rows at which test hF1 is within 1 point of the model "
        f"trained on all {n:,} labels (hF1 {fmt(full, '{:.4f}')}). Mean ± sd over seeds {args.seeds}.", "",
        "| | labels needed, queue | labels needed, random | queue / random (goal ≤ 50%) |", "|---|---|---|---|",
        f"| per seed | {', '.join(f'{x:,}' for x in need['queue'])} | {', '.join(f'{x:,}' for x in need['random'])} | "
        f"{', '.join(f'{x:.0%}' for x in ratio)} |",
        f"| mean ± sd | {fmt(need['queue'])} | {fmt(need['random'])} | {fmt(ratio, '{:.0%}')} "
        f"({'met' if max(ratio) <= 0.5 else 'missed'}) |", "",
        "Test hF1 by labelled rows, the first rounds:", "", *table, "",
        f"Injected label errors: {noisy[0]['flipped']:,} training rows ({0.1:.0%}) given a sibling leaf. Each row "
        "is scored by a model fitted on the other half (2-fold), so no model judges a label it learned. Flipped "
        "rows among the first 1,000 of each order (random order: "
        f"{noisy[0]['random']:.0f} expected):", "",
        "| order | flipped rows in the first 1,000 |", "|---|---|",
        f"| review queue (least confident answer first) | {fmt([x['queue'] for x in noisy])} |",
        f"| label audit (lowest probability of the row's own label first) | {fmt([x['audit'] for x in noisy])} |"]))


if __name__ == "__main__":
    main()
