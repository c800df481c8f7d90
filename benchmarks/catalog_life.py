"""A catalog's life, simulated (issue 40): ten weekly rounds of the loop a catalog team runs.

    .venv/bin/python benchmarks/catalog_life.py [--rounds 10] [--seeds 0,1,2] [--catalog 100000,5600]

Start: tfidf_hsgd fitted on 40% of the training titles, in a taxonomy that lacks some leaves. Each
round: (1) the taxonomy changes (leaves held back so far appear with their titles; on a schedule,
an inner category is renamed, one moved under another parent, two sibling leaves merged) and the
labelled rows are relabelled into it (what ``ktt ingest --map`` does); (2) a batch of new titles
arrives, the model answers them at target precision 0.95 (``ktt predict --target-precision 0.95
--review``), and an oracle reviews the review queue, least sure first, within a label budget (what
the queue leaves of the budget goes to spot checks: confident answers drawn at random);
(3) the reviewed rows are appended (``ktt ingest --append``) and the model is updated from last
round's *updated* model (``ktt train --from``: ``Model.update``), against a full refit on the same
rows. Validation is labelled in the current taxonomy (calibration needs it); the test split scores
both models in it: hierarchical F1, the gap (refit minus update, points), update and refit time (the
fit alone, the diff included in the update), labels spent, and coverage (the share of the round's
titles answered to the end of their path at the target, and the precision of those answers).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import (arguments, bigbasket, catalog, clocked, dataset, spread, table, workdir,  # noqa: E402
                                write_section)
from benchmarks.taxonomy_change import Rewrites, frame  # noqa: E402

MODEL, TARGET = "tfidf_hsgd", 0.95


class Taxonomy(Rewrites):
    """The truth as it changes: the rewrites of every row's original path so far."""

    def edit(self, kind: str, live: set[tuple], rng) -> str | None:
        """One edit of the current taxonomy (``live``: its leaves); a line describing it."""
        inner = sorted({p[:k] for p in live for k in range(1, len(p))})
        if kind == "rename":
            old = inner[rng.integers(len(inner))]
            new = old[:-1] + (old[-1] + " (renamed)",)
        elif kind == "move":
            cands = [p for p in inner if len(p) >= 2]
            old = cands[rng.integers(len(cands))]
            parents = [p for p in inner if len(p) == len(old) - 1 and p != old[:-1] and p + old[-1:] not in inner]
            if not parents:
                return None
            new = parents[rng.integers(len(parents))] + old[-1:]
        else:  # merge two sibling leaves
            by_parent = {}
            for p in sorted(live):
                by_parent.setdefault(p[:-1], []).append(p)
            pairs = [v for v in by_parent.values() if len(v) >= 3]
            if not pairs:
                return None
            sibs = pairs[rng.integers(len(pairs))]
            old, new = (sibs[i] for i in rng.choice(len(sibs), 2, replace=False))
        self.append((old, new))
        return f"{kind} {' > '.join(old)} -> {' > '.join(new)}"


def life(ds, seed: int, rounds: int, new_leaves: int, budget: int, root: Path) -> list[dict]:
    """One catalog's rounds, as records."""
    from ktt import registry, review, taxonomy
    from ktt.metrics import evaluate

    rng = np.random.default_rng(seed)
    df = frame(ds).rename(columns={"labels": "orig"})
    leaves = sorted(set(df["orig"]))
    counts = df["orig"].value_counts()
    held = [leaves[i] for i in rng.permutation(len(leaves)) if counts[leaves[i]] >= 10][:new_leaves * rounds]
    appears = {p: 1 + i // new_leaves for i, p in enumerate(held)}  # the round each held-back leaf appears in
    df["appears"] = df["orig"].map(lambda p: appears.get(p, 0))
    train = np.flatnonzero(df["split"].to_numpy() == "train")
    labelled = np.zeros(len(df), bool)
    labelled[rng.choice(train, int(0.4 * len(train)), replace=False)] = True
    labelled &= df["appears"].to_numpy() == 0
    stream = rng.permutation(np.flatnonzero((df["split"].to_numpy() == "train") & ~labelled))
    per_round = len(stream) // rounds
    truth, out = Taxonomy(), []

    def version(r: int):  # the labelled rows and the other splits, in the taxonomy of round r
        rows = df[(labelled | (df["split"].to_numpy() != "train")) & (df["appears"].to_numpy() <= r)]
        return dataset(rows.assign(labels=[list(truth(p)) for p in rows["orig"]])[["text", "labels", "split"]],
                       root, f"life-{seed}-{r}", keep_duplicates=True)
    prev = version(0)
    model = registry.create(MODEL, prev.hierarchy, seed=seed).fit(prev.train, prev.val)
    model.calibrate(prev.val)
    schedule = {2: "rename", 3: "move", 4: "merge"}
    for r in range(1, rounds + 1):
        live = {truth(p) for p in df["orig"][df["appears"] <= r]}
        edits = [f"{sum(1 for v in appears.values() if v == r)} leaves appear"]
        kind = schedule.get(2 + (r - 2) % 3) if r >= 2 else None
        if kind:
            edits.append(truth.edit(kind, live, rng) or f"{kind}: none possible")
        # the week's titles, answered by last round's model at the target
        batch = stream[(r - 1) * per_round:r * per_round]
        batch = batch[df["appears"].to_numpy()[batch] <= r]
        texts = df["text"].to_numpy()[batch].tolist()
        codes, conf = model.predict_confident(texts)
        t = model.stop_threshold(target_precision=TARGET)
        answers = model.hierarchy.answers_of(codes, conf, t)
        full = np.array([len(a) == len(p) for a, p in zip(answers, model.hierarchy.decode(codes))])
        truths = [truth(p) for p in df["orig"].to_numpy()[batch]]
        right = np.array([tuple(n for n, _ in a) == tp for a, tp in zip(answers, truths)])
        queue = np.flatnonzero(~full)[review.queue(conf[~full])][:budget]
        spot = rng.permutation(np.flatnonzero(full))[:budget - len(queue)]  # the rest of the budget: spot checks
        labelled[batch[np.concatenate([queue, spot])]] = True
        cur = version(r)

        def update():
            d = taxonomy.diff(taxonomy.of_dataset(prev), taxonomy.of_dataset(cur))
            return d, registry.create(MODEL, cur.hierarchy, **model.params).update(model, d, cur.train, cur.val)
        (d, upd), update_s = clocked(update)
        refit, refit_s = clocked(registry.create(MODEL, cur.hierarchy, seed=seed).fit, cur.train, cur.val)
        upd.calibrate(cur.val), refit.calibrate(cur.val)
        model, prev = upd, cur
        f1 = {k: evaluate(cur.hierarchy, cur.test.codes, m.predict(cur.test.texts))["h_f1"]
              for k, m in (("update", upd), ("refit", refit))}
        out.append({"round": r, "edits": "; ".join(edits), "labelled": len(cur.train), "spent": len(queue),
                    "spot": len(spot), "queue": int((~full).sum()), "titles": len(batch), "coverage": float(full.mean()),
                    "precision": float(right[full].mean()) if full.any() else float("nan"),
                    "hf1_update": f1["update"], "hf1_refit": f1["refit"],
                    "gap": 100 * (f1["refit"] - f1["update"]), "update_s": update_s, "refit_s": refit_s,
                    "changes": str(d).splitlines()[0].split(": ", 1)[-1]})
        print(seed, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out[-1].items()}, flush=True)
    return out


def rounds_table(name: str, runs: list[list[dict]]) -> str:
    """Per round: mean ± sd over seeds (one seed: the value)."""
    rows = []
    for i in range(len(runs[0])):
        rs = [run[i] for run in runs]
        col = lambda k, fmt="{:,.0f}": spread([r[k] for r in rs], fmt)  # noqa: E731
        rows.append([i + 1, f"{rs[0]['edits']}; diff: {rs[0]['changes']}", col("labelled"),
                     f"{col('spent')} + {col('spot')} / {col('queue')}", f"{col('coverage', '{:.1%}')} "
                     f"({col('precision', '{:.3f}')})", col("hf1_update", "{:.4f}"), col("hf1_refit", "{:.4f}"),
                     col("gap", "{:+.2f}"), col("update_s", "{:.2f}"), col("refit_s", "{:.2f}"),
                     spread([r["update_s"] / r["refit_s"] for r in rs], "{:.0%}")])
    gaps = [r["gap"] for run in runs for r in run]
    rows.append(["all", f"worst gap {max(gaps):+.2f} points over {len(gaps)} rounds x seeds "
                 f"({'met' if max(gaps) <= 0.5 else 'missed'}: ≤ 0.5)", *[""] * 9])
    return table(["round", f"{name}: what changed (seed 0)", "labelled rows", "labels: queue + spot checks / queue length",
                  "coverage at 0.95 (precision)", "hF1, update", "hF1, refit", "gap, points (≤ 0.5)", "update, s",
                  "refit, s", "update / refit"], rows)


def main() -> None:
    args = arguments(__doc__, ("--rounds", 10), ("--seeds", "0,1,2"),
                     ("--catalog", "100000,5600", "ROWS,CATEGORIES of a generated catalog; 0 to skip"),
                     ("--catalog-seeds", "0"), ("--doc", None, "write the table to this file, not docs/benchmarks.md"))
    root = workdir("life")
    data = [("bigbasket", bigbasket(), args.seeds, 3, 300)]
    if args.catalog != "0":
        n, k = (int(x) for x in args.catalog.split(","))
        data.append((f"catalog ({n:,} rows, {k:,} categories)", catalog(n, k, root), args.catalog_seeds, 20, 1500))
    sections = []
    for name, ds, seeds, new_leaves, budget in data:
        runs = [life(ds, int(s), args.rounds, new_leaves, budget, root) for s in seeds.split(",")]
        sections += [f"**{name}**: {len(ds.train):,} training rows; {new_leaves} held-back leaves appear each round; "
                     f"label budget {budget} a round; seeds {seeds} (mean ± sd).", rounds_table(name, runs)]
    write_section("catalog-life", "## A catalog's life (issue 40)",
                  f"Command: `.venv/bin/python benchmarks/catalog_life.py --rounds {args.rounds} --seeds {args.seeds} "
                  f"--catalog {args.catalog} --catalog-seeds {args.catalog_seeds}`",
                  __doc__.split("\n\n", 2)[2].strip().replace("\n", " "), *sections,
                  **({"doc": Path(args.doc)} if args.doc else {}))


if __name__ == "__main__":
    main()
