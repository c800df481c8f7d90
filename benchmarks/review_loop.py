"""The review loop, simulated on BigBasket (issues 29 and 40): from 20% of the training labels, rounds
of sending titles to review (their true labels come back) and refitting, the titles chosen by the
review queue (``ktt.review.queue``), by issue 29's queue or at random; and, with 10% of the training
labels flipped to a sibling, how many flipped rows the first 1,000 of the review queue and of the
label audit (``ktt audit``) hold.

    .venv/bin/python benchmarks/review_loop.py [--seeds 0,1,2] [--batch 1000]
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import arguments, bigbasket, spread, table, write_section  # noqa: E402
from ktt.review import SIMILAR  # noqa: E402

MODEL = "tfidf_hsgd"


STRATEGIES = ("queue", "lowest", "random")


def fitted(ds, rows, seed: int):
    """The model fitted on training rows ``rows``, and its test hF1."""
    from ktt import registry
    from ktt.metrics import evaluate

    model = registry.create(MODEL, ds.hierarchy, seed=seed).fit(ds.train.subset(rows))
    return model, evaluate(ds.hierarchy, ds.test.codes, model.predict(ds.test.texts))["h_f1"]


def curve(ds, strategy: str, seed: int, start: float, batch: int) -> list[tuple[int, float]]:
    """(labelled rows, test hF1) after every round of one strategy."""
    from ktt.review import queue

    rng = np.random.default_rng(seed)
    n = len(ds.train)
    labelled = np.zeros(n, bool)
    labelled[rng.choice(n, int(start * n), replace=False)] = True
    out = []
    while True:
        model, f1 = fitted(ds, np.flatnonzero(labelled), seed)
        out.append((int(labelled.sum()), f1))
        pool = np.flatnonzero(~labelled)
        if not len(pool):
            return out
        if strategy == "random":
            pick = rng.choice(pool, min(batch, len(pool)), replace=False)
        else:
            texts = [ds.train.texts[i] for i in pool]
            codes, proba = model.predict_scored(texts)
            conf = ds.hierarchy.confidences(codes, proba)
            order = queue(conf, model.features(texts)) if strategy == "queue" else \
                np.argsort(np.nanmin(conf, axis=1), kind="stable")
            pick = pool[order[:batch]]
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
    """Flipped rows among the first ``top`` of four orders of the training rows, each row scored by
    a model that never saw it (2-fold cross-fitting, ``ktt.review.cross_scores``): the review queue
    (least sure answer first; not spread: the two folds' models featurise differently), the label
    audit of issue 29 (lowest probability of the row's own label first, ties in row order) and
    ``ktt audit``'s (ties: the surer the model of its own guess, the earlier), also with 5 folds."""
    from ktt import registry
    from ktt.data import Split
    from ktt.review import audit_order, cross_scores, queue

    rng = np.random.default_rng(seed)
    h, train = ds.hierarchy, ds.train
    noisy, flipped = flip_to_siblings(h, train.codes, share, rng)
    paths = [tuple(x for x in p if x) for p in (h.levels[-1][c] for c in noisy[:, -1])]
    data, is_flipped = Split(train.texts, paths, h), np.isin(np.arange(len(train)), flipped)
    out = {"flipped": len(flipped), "random": top * len(flipped) / len(train)}
    for folds in (2, 5):
        codes, conf, own = cross_scores(lambda h: registry.create(MODEL, h, seed=seed), data, folds=folds, seed=seed)
        sure = conf[np.arange(len(train)), h.path_depths(codes) - 1]
        out[f"audit{folds}"] = int(is_flipped[audit_order(own, sure)[:top]].sum())
        if folds == 2:
            out["queue"] = int(is_flipped[queue(conf)[:top]].sum())
            out["audit29"] = int(is_flipped[np.argsort(own, kind="stable")[:top]].sum())
    return out


def main() -> None:
    args = arguments(__doc__, ("--seeds", "0,1,2"), ("--start", 0.2), ("--batch", 1000))
    ds = bigbasket()
    seeds = [int(s) for s in args.seeds.split(",")]
    full = [fitted(ds, np.arange(len(ds.train)), s)[1] for s in seeds]
    need = {k: [] for k in STRATEGIES}
    curves = {}
    for s, f in zip(seeds, full):
        for strategy in need:
            c = curves[strategy, s] = curve(ds, strategy, s, args.start, args.batch)
            need[strategy].append(next(n for n, v in c if v >= f - 0.01))
            print(strategy, s, f"full {f:.4f}", [(n, round(v, 4)) for n, v in c], flush=True)
    ratio = {k: [q / r for q, r in zip(need[k], need["random"])] for k in need}
    noisy = [noise(ds, s) for s in seeds]
    print(noisy, flush=True)
    n = len(ds.train)
    names = {"queue": "queue", "lowest": "lowest confidence (issue 29's queue)", "random": "random"}
    steps = sorted({k for c in curves.values() for k, _ in c})[:8]
    by_rows = [[names[k], *(spread([dict(curves[k, s]).get(m) for s in seeds], "{:.4f}") for m in steps)] for k in need]
    needed = [[names[k], ", ".join(f"{x:,}" for x in need[k]), spread(need[k], "{:,.0f}"),
               *([", ".join(f"{x:.0%}" for x in ratio[k]),
                  f"{spread(ratio[k], '{:.0%}')} ({'met' if max(ratio[k]) <= 0.5 else 'missed'})"]
                 if k != "random" else ["", ""])] for k in need]
    flipped = [["review queue (lowest mean confidence first; 2 folds, not spread)", "queue"],
               ["label audit of issue 29 (lowest probability of the row's own label first, ties in row order; 2 folds)",
                "audit29"],
               ["`ktt audit` (the same, ties: the surer the model of its own guess, the earlier; 2 folds)", "audit2"],
               ["`ktt audit --folds 5`", "audit5"]]
    write_section(
        "review-loop", "## The review loop (issues 29 and 40)", "Command: `.venv/bin/python benchmarks/review_loop.py`",
        f"{MODEL} with its defaults; deduplicated BigBasket, official split ({n:,} training rows, {len(ds.test):,} "
        f"test rows). Start from {args.start:.0%} of the training labels ({int(args.start * n):,} rows, drawn per "
        f"seed); each round scores the unlabelled rows, sends {args.batch:,} to review (their true labels come "
        "back) and refits from scratch. *queue*: `ktt.review.queue`, the lowest mean confidence along the path "
        "first (the answer's expected hierarchical F1), a title whose TF-IDF (the model's features) has a cosine "
        f"above {SIMILAR} with one queued before it moved behind the rest; *lowest confidence*: issue 29's "
        "queue, the lowest confidence along the path first; *random*: drawn at random. Labels needed: the fewest "
        "labelled rows at which test hF1 is within 1 point of the model trained on all "
        f"{n:,} labels (hF1 {spread(full, '{:.4f}')}). Mean ± sd over seeds {args.seeds}.",
        table(["order", "labels needed, per seed", "mean ± sd", "share of random's, per seed",
               "mean ± sd (goal ≤ 50%)"], needed),
        "Test hF1 by labelled rows, the first rounds:",
        table(["labelled rows", *(f"{k:,}" for k in steps)], by_rows),
        f"Injected label errors: {noisy[0]['flipped']:,} training rows ({0.1:.0%}) given a sibling leaf. Each row "
        "is scored by a model fitted without it (cross-fitting: `ktt.review.cross_scores`), so no model judges "
        "a label it learned. Flipped rows among the first 1,000 of each order (random order: "
        f"{noisy[0]['random']:.0f} expected):",
        table(["order", "flipped rows in the first 1,000"], [[what, spread([x[k] for x in noisy], "{:,.0f}")]
                                                             for what, k in flipped]))


if __name__ == "__main__":
    main()
