"""The review queue's order and the label audit (issue 40): the formulas on inputs small enough to
work out by hand, then ``ktt audit`` end to end on a real BigBasket slice with injected label errors."""
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from ktt.cli import main
from ktt.errors import BadValue
from ktt import registry
from ktt.review import AUDIT_COLUMNS, audit_order, cross_scores, queue, spread

NAN = np.nan


def test_queue_puts_the_lowest_mean_confidence_along_the_path_first():
    # means over each path's levels: 0.7, 0.9 (one level: the path ended), 0.575, 0.6
    conf = np.array([[0.9, 0.5], [0.9, NAN], [0.2, 0.95], [0.6, 0.6]])
    assert queue(conf).tolist() == [2, 3, 0, 1]
    assert queue(np.array([[0.5, 0.5], [0.5, 0.5]])).tolist() == [0, 1]  # ties keep row order


def test_spread_moves_near_copies_of_a_kept_row_behind_the_others():
    # unit rows: cos(a, b) = 0.8, cos(b, c) = 0.8 * 0.28 + 0.6 * 0.96 = 0.8, cos(a, c) = 0.28
    x = np.array([[1.0, 0.0], [0.8, 0.6], [0.28, 0.96]])
    assert spread(np.array([0, 1, 2]), x, 0.7).tolist() == [0, 2, 1]  # b waits: like a; c is like b only, which waits
    assert spread(np.array([1, 0, 2]), x, 0.7).tolist() == [1, 0, 2]  # b kept first: a and c, both like it, wait
    assert spread(np.array([0, 1, 2]), x, 0.9).tolist() == [0, 1, 2]  # nothing above 0.9
    assert spread(np.array([2, 0]), x, 0.7).tolist() == [2, 0]  # only the rows in the order count
    # least sure first (means 0.3, 0.4, 0.5), then b moved behind c
    assert queue(np.array([[0.3], [0.4], [0.5]]), x).tolist() == [0, 2, 1]
    import scipy.sparse as sp
    assert queue(np.array([[0.3], [0.4], [0.5]]), sp.csr_matrix(x)).tolist() == [0, 2, 1]


def test_audit_order_lowest_own_label_first_then_the_surest_guess():
    own = np.array([0.5, 0.0, 0.0, 0.2])
    guess = np.array([0.9, 0.3, 0.8, 0.1])
    assert audit_order(own, guess).tolist() == [2, 1, 3, 0]


def test_cross_scores_needs_two_parts(bb300):
    with pytest.raises(BadValue, match="2 parts or more"):
        cross_scores(lambda h: registry.create("tfidf_hsgd", h), bb300["train"], folds=1)
    with pytest.raises(BadValue, match="a row in each"):
        cross_scores(lambda h: registry.create("tfidf_hsgd", h), bb300["train"].head(3), folds=4)


def test_audit_cli_ranks_injected_label_errors_first(bigbasket_small, tmp_path):
    """``ktt audit`` on a real 888-row BigBasket slice whose training labels had 30 flipped to a
    sibling leaf: the flipped rows come first far more often than by chance, the file is what the
    review loop reads, and its corrections come back through ``ktt ingest --append``."""
    from ktt.data import load_dataset, write_dataset

    ds = load_dataset("bb_small", bigbasket_small)
    h, rng = ds.hierarchy, np.random.default_rng(0)
    leaves = sorted({p for s in (ds.train, ds.val, ds.test) for p in s.paths})
    siblings = {p: [q for q in leaves if q[:-1] == p[:-1] and q != p] for p in leaves}
    paths = list(ds.train.paths)
    flipped = rng.choice([i for i, p in enumerate(paths) if siblings[p]], 30, replace=False)
    for i in flipped:
        sib = siblings[paths[i]]
        paths[i] = sib[rng.integers(len(sib))]
    splits = {"train": pd.DataFrame({"text": ds.train.texts, "labels": [list(p) for p in paths]}),
              **{s: pd.DataFrame({"text": getattr(ds, s).texts, "labels": [list(p) for p in getattr(ds, s).paths]})
                 for s in ("val", "test")}}
    write_dataset(splits, h, tmp_path, "bb_noisy")  # beside the shared fixture's datasets, not among them

    out = tmp_path / "audit.csv"
    res = CliRunner().invoke(main, ["audit", "tfidf_hsgd", "bb_noisy", str(out), "--datasets", str(tmp_path)])
    assert res.exit_code == 0, res.output
    n = len(ds.train) + len(ds.val) + len(ds.test)  # 888: the slice's duplicates dropped
    assert f"{n} rows" in res.output
    table = pd.read_csv(out, keep_default_na=False)
    assert tuple(table.columns) == AUDIT_COLUMNS
    assert len(table) == n and sorted(table["split"].unique()) == ["test", "train", "val"]
    assert table["label_probability"].is_monotonic_increasing and (table["labels"] == "").all()
    bad = {ds.train.texts[i] for i in flipped}
    top = int(table["text"].head(90).isin(bad).sum())  # by chance: 30 / 888 of 90 rows, 3
    assert top >= 9, top  # 12 here (8 to 14 over five draws of the flips): a model fitted on 444 rows

    # a reviewer restores the true label of every flipped row among the first 90; ingest brings them back
    truth = {ds.train.texts[i]: " > ".join(ds.train.paths[i]) for i in flipped}
    table.loc[:89, "labels"] = [truth.get(t, "") for t in table["text"].head(90)]
    table.to_csv(out, index=False)
    res = CliRunner().invoke(main, ["ingest", str(out), "-n", "bb_fixed", "--append", "bb_noisy", "--no-track",
                                    "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    fixed = load_dataset("bb_fixed", tmp_path)
    assert sum(a != b for a, b in zip(fixed.train.paths, ds.train.paths)) == 30 - top


def test_audit_cli_refuses_what_it_cannot_write(bigbasket_small, tmp_path):
    res = CliRunner().invoke(main, ["audit", "tfidf_hsgd", "bb_small", str(tmp_path / "a.txt"),
                                    "--datasets", str(bigbasket_small)])
    assert res.exit_code == 2 and "use a .csv or .jsonl file" in res.output
    res = CliRunner().invoke(main, ["audit", "tfidf_hsgd", "bb_small", str(tmp_path / "a.csv"), "--folds", "1",
                                    "--datasets", str(bigbasket_small)])
    assert res.exit_code == 2
