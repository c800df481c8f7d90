"""Why tfidf_hsgd does not beat tfidf_lsgd: the variants tried, on one split, in one run.

    .venv/bin/python benchmarks/tfidf_hsgd_variants.py

Deduplicated BigBasket, official split, the TF-IDF features of ``hyperparameters.json`` for all
rows. Each row changes one thing about the per-parent-node classifiers or their decoding. Every
variant is fitted with seeds 0-4 (SGD's shuffling): mean ± sd, and the paired bootstrap interval
of its test difference from the default tfidf_hsgd, seeds pooled: test texts resampled, the same
draw for every seed (issues 27, 41).
"""
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import bigbasket  # noqa: E402
from benchmarks.report import write_section  # noqa: E402



def group_softmax(decision, parents, temperature):
    """Softmax of decision values over each parent's children."""
    out = np.zeros_like(decision)
    for p in np.unique(parents):
        cols = np.flatnonzero(parents == p)
        z = decision[:, cols] / temperature
        e = np.exp(z - z.max(axis=1, keepdims=True))
        out[:, cols] = e / e.sum(axis=1, keepdims=True)
    return out


SEEDS = (0, 1, 2, 3, 4)
DEFAULT = "tfidf_hsgd, whole path (default)"


def main() -> None:
    from ktt.compare import format_interval, mean_sd, paired_bootstrap
    from ktt.metrics import evaluate, row_counts

    warnings.simplefilter("ignore")
    ds = bigbasket.load()
    h, test = ds.hierarchy, ds.test
    runs = [variants(ds, seed) for seed in SEEDS]  # per seed: (variant -> test paths, temperatures)
    ref = [row_counts(h, test.codes, r[DEFAULT]) for r, _ in runs]
    rows = []
    for name in runs[0][0]:
        per_seed = [evaluate(h, test.codes, r[name]) for r, _ in runs]
        cells = [" ± ".join(f"{v:.3f}" for v in mean_sd([m[k] for m in per_seed])) for k in ("L1_accuracy",
                                                                                         "leaf_accuracy", "h_f1")]
        if name == DEFAULT:
            ci = "(reference)"
        else:
            x = paired_bootstrap(ref, [row_counts(h, test.codes, r[name]) for r, _ in runs])["h_f1"]
            ci = format_interval(x)
        rows.append(f"| {name} | {' | '.join(cells)} | {ci} |")
        print(rows[-1], flush=True)
    temps = np.array([t for _, t in runs])
    write_section("tfidf-hsgd-variants", "\n".join([
        "## tfidf_hsgd against tfidf_lsgd: variants tried (issues 10, 41)", "",
        "Command: `.venv/bin/python benchmarks/tfidf_hsgd_variants.py`", "",
        f"Deduplicated BigBasket, official split ({len(ds.train)} training / {len(test)} test rows), "
        "hyperparameters from `hyperparameters.json`; each row changes one thing. Each variant fitted with seeds "
        f"{', '.join(map(str, SEEDS))} (SGD's shuffling): mean ± sd over the seeds, and the paired bootstrap 95% "
        "interval of its test hierarchical F1 minus the default tfidf_hsgd's (2,000 resamples of the test texts, "
        "the same draw for every seed of both). Fitted per-level temperatures (mean over seeds): "
        f"{', '.join(f'{t:.2f}' for t in temps.mean(axis=0))}.", "",
        "| variant | L1 acc | leaf acc | hier. F1 | hF1 - default [95% CI] |", "|---|---|---|---|---|", *rows]))


def variants(ds, seed: int):
    """Every variant's test paths for one seed, and the fitted per-level temperatures."""
    from scipy.optimize import minimize_scalar

    from ktt import registry

    h, test, out = ds.hierarchy, ds.test, {}

    def add(name, codes):
        out[name] = codes

    def hsgd(**sgd):
        # the loss is the model's own hyperparameter: it also says how decisions become probabilities
        model = registry.create("tfidf_hsgd", h, seed=seed, **({"loss": sgd.pop("loss")} if "loss" in sgd else {}))
        make = model.make_sgd
        model.make_sgd = lambda: make().set_params(**sgd)  # every node clones this classifier
        return model.fit(ds.train, ds.val)

    add("tfidf_lsgd (flat, the target)",
        registry.create("tfidf_lsgd", h, seed=seed).fit(ds.train, ds.val).predict(test.texts))
    base = hsgd()
    cond = base.conditional_proba(base.features(test.texts))
    add("tfidf_hsgd, greedy top-down", h.decode_scores([], "top_down", conditional=cond))
    add(DEFAULT, h.decode_scores([], "path", conditional=cond))
    for name, kw in (("loss=log_loss", {"loss": "log_loss"}), ("averaged SGD", {"average": True}),
                     ("class_weight=balanced", {"class_weight": "balanced"})):
        add(f"tfidf_hsgd, {name}, whole path", hsgd(**kw).predict(test.texts))

    # per-level temperature on the nodes' decision values, fitted on validation
    def decisions(texts):
        """Per level, each class's decision value (a binary node's one decision split +-d/2;
        a lone child 0; a class whose node was never trained -1e4)."""
        nodes = base.nodes_
        d_all, out = nodes.blocks.decisions(base.features(texts)), []
        for d in range(h.depth):
            dec = np.full((len(d_all), h.sizes[d]), -1e4)
            dec[:, nodes.single_child[nodes.single_level == d]] = 0.0
            for b in np.flatnonzero(nodes.level == d):
                kids = nodes.children[nodes.blocks.first_out[b]:nodes.blocks.first_out[b] + nodes.blocks.width[b]]
                f = d_all[:, nodes.blocks.first_dec[b]:nodes.blocks.first_dec[b] + nodes.blocks.n_dec_of[b]]
                if len(kids) == 2:
                    dec[:, kids[1]], dec[:, kids[0]] = f[:, 0] / 2, -f[:, 0] / 2
                else:
                    dec[:, kids] = f
            out.append(dec)
        return out

    parents = [np.zeros(h.sizes[0], int)] + [h.parent_of(d) for d in range(1, h.depth)]
    val_dec, test_dec = decisions(ds.val.texts), decisions(test.texts)
    temps = []
    for d in range(h.depth):
        def nll(log_t, d=d):
            c = group_softmax(val_dec[d], parents[d], np.exp(log_t))
            return -np.log(np.maximum(c[np.arange(len(c)), ds.val.codes[:, d]], 1e-12)).mean()
        temps.append(float(np.exp(minimize_scalar(nll, bounds=(-5, 3), method="bounded").x)))
    cond_t = [group_softmax(test_dec[d], parents[d], temps[d]) for d in range(h.depth)]
    add("tfidf_hsgd, temperature-scaled softmax per level (T fitted on validation), whole path",
        h.decode_scores([], "path", conditional=cond_t))

    # every parent node classifies the *leaves* below it; a child's probability sums its leaves'
    x, codes, leaves = base.features(ds.train.texts), ds.train.codes, h.leaf_paths()
    x_test = base.features(test.texts)
    cond_l = [np.zeros((len(test), n)) for n in h.sizes]
    for d in range(h.depth):
        parent_codes = codes[:, d - 1] if d else np.full(len(codes), -1)
        for p in np.unique(parent_codes):
            rows_p = parent_codes == p
            if len(np.unique(codes[rows_p, d])) == 1:
                cond_l[d][:, codes[rows_p, d][0]] = 1.0
                continue
            clf = base.make_sgd().fit(x[rows_p], codes[rows_p, -1])
            np.add.at(cond_l[d].T, leaves[clf.classes_, d], clf.predict_proba(x_test).T)
    add("tfidf_hsgd, each node over the leaves below it (root = the flat model), whole path",
        h.decode_scores([], "path", conditional=cond_l))

    print(f"seed {seed} done", flush=True)
    return out, temps


if __name__ == "__main__":
    main()
