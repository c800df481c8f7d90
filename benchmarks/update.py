"""Update instead of retrain (issue 29): a model trained on taxonomy version 1 of a simulated change
(``benchmarks/taxonomy_change.py``), updated to version 2 (``Model.update``, what ``ktt train MODEL
DATASET --from RUN`` runs), against a full retrain on version 2; BigBasket and a generated catalog.

    .venv/bin/python benchmarks/update.py [--models tfidf_hsgd,db_bhcn] [--seeds 0,1,2] [--encoder-seeds 0]
"""
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import arguments, bigbasket, catalog, clocked, spread, table, workdir, write_section  # noqa: E402
from benchmarks.taxonomy_change import write_versions  # noqa: E402

GOALS = {"tfidf_hsgd": 0.10, "db_bhcn": 0.25}


def leaf_f1(truth: np.ndarray, pred: np.ndarray, leaves) -> float:
    """Macro F1 over ``leaves`` (leaf indices), from true and predicted leaf indices."""
    out = []
    for c in leaves:
        tp = np.sum((truth == c) & (pred == c))
        fp, fn = np.sum((truth != c) & (pred == c)), np.sum((truth == c) & (pred != c))
        out.append(2 * tp / max(2 * tp + fp + fn, 1))
    return float(np.mean(out))


def row(data: str, model: str, seeds, r: dict, goal: float) -> list:
    """One table row: mean ± sd over seeds of each measure, and whether each goal was met."""
    r = {**r, "ratio": np.divide(r["update_s"], r["full_s"]), "old_drop": 100 * np.subtract(r["old_full"], r["old_upd"]),
         "new_ratio": np.divide(r["new_upd"], np.maximum(r["new_full"], 1e-9))}
    ms = lambda k, fmt="{:.3f}": spread(r[k], fmt)  # noqa: E731
    met = ["met" if ok else "missed" for ok in (max(r["ratio"]) <= goal, min(r["new_ratio"]) >= 0.9,
                                                 max(r["old_drop"]) <= 0.5)]
    return [data, model, ",".join(map(str, seeds)), ms("full_s", "{:.1f}"), ms("update_s", "{:.2f}"),
            f"{ms('ratio', '{:.1%}')} (≤ {goal:.0%}: {met[0]})", ms("new_full"), ms("new_upd"),
            f"{ms('new_ratio', '{:.1%}')} (≥ 90%: {met[1]})", ms("old_full"), ms("old_upd"),
            f"{ms('old_drop', '{:+.2f}')} (≤ 0.5: {met[2]})"]


def compare(ds, root: Path, models: list[tuple[str, list[int]]], n_leaves: int) -> tuple[list[list], str]:
    """Table rows (one per model) and a sentence describing the change, for dataset ``ds``."""
    from ktt import registry, taxonomy
    from ktt.data import load_dataset
    from ktt.hierarchy import SEP
    from ktt.metrics import evaluate

    n1, n2, change = write_versions(ds, root, n_leaves)
    v1, v2 = load_dataset(n1, root), load_dataset(n2, root)
    diff = lambda: taxonomy.diff(taxonomy.of_dataset(v1), taxonomy.of_dataset(v2))  # noqa: E731
    d, diff_seconds = clocked(diff)
    h, test = v2.hierarchy, v2.test
    held = {tuple(p) for p in change["held_out"]}
    new_leaves = [i for i, p in enumerate(h.levels[-1]) if p in held]
    is_new = np.isin(test.codes[:, -1], new_leaves)
    touched = sum(c.rows or 0 for c in d.changes if c.kind != "removed")
    print(d, f"\ndiff: {diff_seconds:.2f} s; new-leaf test rows {is_new.sum()}, old {np.sum(~is_new)}", flush=True)
    v1.train.codes, v2.train.codes  # encoded once, outside the timings (both fits read them)
    rows = []
    for name, seeds in models:
        # encoder models: the default update (only the new classes' weights train) and the whole fine-tune
        variants = {"": {}} if not name.startswith("db_") else {" (update_scope=new)": {},
                                                                " (update_scope=all)": {"update_scope": "all"}}
        rs = {v: defaultdict(list) for v in variants}
        for seed in seeds:
            old = registry.create(name, v1.hierarchy, seed=seed).fit(v1.train, v1.val)
            if len(variants) > 1:
                old.save(root / "old.ckpt")
            full, full_s = clocked(registry.create(name, h, seed=seed).fit, v2.train, v2.val)
            pred_full = full.predict(test.texts)
            for label, over in variants.items():
                r = rs[label]
                if len(variants) > 1:  # each variant from the same version-1 model
                    old = registry.get(name).load(root / "old.ckpt")
                r["full_s"].append(full_s)
                upd, secs = clocked(lambda: registry.create(name, h, **{**old.params, **over}).update(
                    old, diff(), v2.train, v2.val))
                r["update_s"].append(secs)
                for tag, pred in (("full", pred_full), ("upd", upd.predict(test.texts))):
                    r[f"new_{tag}"].append(leaf_f1(test.codes[is_new, -1], pred[is_new, -1], new_leaves))
                    r[f"old_{tag}"].append(evaluate(h, test.codes[~is_new], pred[~is_new])["h_f1"])
                print(ds.name, name + label, seed, {k: round(v[-1], 4) for k, v in r.items()}, flush=True)
        for label, r in rs.items():
            rows.append(row(ds.name, name + label, seeds, r, GOALS.get(name, 0.25)))
            print(rows[-1], flush=True)

    ren, mov = change["renamed"], change["moved"]
    kinds = str(d).splitlines()[0].split(": ", 1)[1]
    about = (f"**{ds.name}** ({len(v2.train):,} training rows, {h.n_leaves:,} leaves in version 2): version 1 lacks "
             f"{len(held)} leaves and their rows; version 2 has them back, plus `{SEP.join(ren[0])}` renamed to "
             f"`{SEP.join(ren[1])}` and `{SEP.join(mov[0])}` moved to `{SEP.join(mov[1])}`. The diff: {kinds}, "
             f"{touched:,} rows under changed categories ({touched / len(d.new):.0%} of all), found in "
             f"{diff_seconds:.2f} s. New-leaf F1 over {int(is_new.sum())} test rows, old-row hF1 over "
             f"{int((~is_new).sum())}.")
    return rows, about


def main() -> None:
    args = arguments(__doc__, ("--models", "tfidf_hsgd,db_bhcn"), ("--seeds", "0,1,2", "TF-IDF models' seeds"),
                     ("--encoder-seeds", "0", "encoder models' seeds (about 15 minutes each on 2 cores)"),
                     ("--leaves", 30), ("--catalog", "100000,5600",
                                        "ROWS,CATEGORIES: also a generated catalog (TF-IDF models only); 0 to skip"))
    root = workdir("update")
    models = [(m, [int(s) for s in (args.encoder_seeds if m.startswith("db_") else args.seeds).split(",")])
              for m in args.models.split(",")]
    rows, about = compare(bigbasket(), root, models, args.leaves)
    abouts = [about]
    if args.catalog != "0":
        n, k = (int(x) for x in args.catalog.split(","))
        more, about = compare(catalog(n, k, root), root, [m for m in models if not m[0].startswith("db_")], args.leaves)
        rows, abouts = rows + more, abouts + [about]
    write_section(
        "taxonomy-update", "## Update instead of retrain (issue 29)", "Command: `.venv/bin/python benchmarks/update.py`",
        "A simulated taxonomy change (`benchmarks/taxonomy_change.py`); per seed: fit on version 1, then on "
        "version 2 a full retrain and an update from the version-1 model (`Model.update`, what "
        "`ktt train MODEL DATASET --from RUN` runs), one after the other on the same machine. Times: the fit alone "
        "(`fit` against `update`, the diff included), not calibration, scoring and tracking, which both pay "
        "alike. New leaves: macro F1 of the added leaves on their test rows; old rows: hierarchical F1 on the "
        "other test rows (renamed and moved categories included). Mean ± sd over seeds. The catalog is "
        f"`ktt generate --rows {args.catalog.split(',')[0]} --categories {args.catalog.split(',')[-1]}` "
        "(TF-IDF only: an encoder epoch over it takes hours on 2 cores).", *abouts,
        table(["data", "model", "seeds", "full retrain, s", "update, s", "update / full", "new-leaf F1, full",
               "new-leaf F1, update", "update / full", "old-row hF1, full", "old-row hF1, update", "loss, points"], rows))


if __name__ == "__main__":
    main()
