"""A simulated taxonomy change, for the update benchmark and tests: version 1 of a dataset lacks
some leaves and their rows; version 2 has them back, plus one inner category renamed and one moved
under another parent.

    python benchmarks/taxonomy_change.py bigbasket --leaves 30   # writes bigbasket-v1, bigbasket-v2
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def frame(ds) -> pd.DataFrame:
    """Every row of dataset ``ds``: ``text``, ``labels`` (a tuple) and ``split``."""
    return pd.concat([pd.DataFrame({"text": s.texts, "labels": [tuple(p) for p in s.paths], "split": name})
                      for name, s in (("train", ds.train), ("val", ds.val), ("test", ds.test))], ignore_index=True)


class Rewrites(list):
    """Prefix rewrites of paths (``(old, new)`` pairs), applied in order."""

    def __call__(self, path: tuple) -> tuple:
        for old, new in self:
            if path[:len(old)] == old:
                path = new + path[len(old):]
        return path


def simulate(ds, n_leaves: int = 30, seed: int = 0):
    """``(v1, v2, change)``: two frames (``text``, ``labels``, ``split``: each row keeps its split)
    and what was changed: the held-out leaves, the renamed and the moved category (old and new path)."""
    rng = np.random.default_rng(seed)
    rows = frame(ds)
    depth = ds.hierarchy.depth
    full = rows[rows["labels"].map(len) == depth]
    leaves = sorted(full["labels"].unique())
    inner = sorted({p[:depth - 1] for p in leaves})
    # the renamed and the moved category: two inner classes one level above the leaves, under different parents
    renamed, moved = (inner[i] for i in rng.choice(len(inner), 2, replace=False))
    while moved[:-1] == renamed[:-1] or len({p[:-1] for p in inner}) < 2:
        moved = inner[rng.integers(len(inner))]
    # another parent with no child of that name: a move, not a merge into an existing category
    target = next(p[:-1] for p in inner if p[:-1] not in (moved[:-1], renamed[:-1]) and p[:-1] + moved[-1:] not in inner)
    new_name = {renamed: renamed[:-1] + (renamed[-1] + " (renamed)",), moved: target + moved[-1:]}
    # held-out leaves: not under the renamed or moved class, so each change is seen on its own
    free = [p for p in leaves if p[:depth - 1] not in new_name]
    held = {free[i] for i in rng.choice(len(free), min(n_leaves, len(free) - 1), replace=False)}
    v1 = rows[~rows["labels"].isin(held)].reset_index(drop=True)
    v2 = rows.assign(labels=rows["labels"].map(Rewrites(new_name.items())))
    change = {"held_out": sorted(held), "renamed": (renamed, new_name[renamed]), "moved": (moved, new_name[moved])}
    return v1.assign(labels=v1["labels"].map(list)), v2.assign(labels=v2["labels"].map(list)), change


def write_versions(ds, root, n_leaves: int = 30, seed: int = 0, name: str | None = None):
    """Ingest both versions as ``<name>-v1`` and ``<name>-v2``; returns their names and the change."""
    from ktt.data import ingest

    v1, v2, change = simulate(ds, n_leaves, seed)
    name = name or ds.name
    for tag, df in (("v1", v1), ("v2", v2)):
        ingest(df, root, f"{name}-{tag}", where=f"{ds.name} ({tag} of a simulated change)", overwrite=True,
               keep_duplicates=True)
    return f"{name}-v1", f"{name}-v2", change


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.harness import arguments
    from ktt.data import load_dataset

    args = arguments(__doc__, ("dataset",), ("--leaves", 30), ("--datasets", "datasets"))
    print(write_versions(load_dataset(args.dataset, args.datasets), args.datasets, args.leaves))
