"""The catalog loop's joins (issue 40): updates with ``--from`` for every kind of change, each
defect reproduced on a tree small enough to work out by hand."""
import numpy as np
import pytest

from ktt import registry
from ktt.data import Split
from ktt.hierarchy import Hierarchy
from ktt.taxonomy import Side, diff, text_hashes


def words(name: str, n: int = 6) -> list[str]:
    return [f"{name.lower()} item{i} {name.lower()}y" for i in range(n)]


def version(train: dict, held: dict | None = None, name: str = "v"):
    """A taxonomy version: its training split (``{path: texts}``) and its side, whose rows are
    the training rows and ``held``'s (rows of other splits: they make a class exist without
    training rows)."""
    held = held or {}
    paths = [p for p, t in train.items() for _ in t]
    every = paths + [p for p, t in held.items() for _ in t]
    h = Hierarchy.from_paths(every)
    texts = [t for ts in train.values() for t in ts]
    side = Side(name, h, h.encode(every), text_hashes(texts + [t for ts in held.values() for t in ts]))
    return Split(texts, paths, h), side


class Logged:
    def __init__(self):
        self.metrics = {}

    def log_metrics(self, m, step=None):
        self.metrics.update(m)


def updated(model: str, v1, v2, **params):
    (s1, side1), (s2, side2) = v1, v2
    old = registry.create(model, s1.hierarchy, **params).fit(s1)
    log = Logged()
    upd = registry.create(model, s2.hierarchy, **old.params).update(old, diff(side1, side2), s2, s2, log)
    full = registry.create(model, s2.hierarchy, **old.params).fit(s2)
    return old, upd, full, log.metrics


PASTA = {("Food", "Pasta", "Spaghetti"): words("Spaghetti"), ("Food", "Pasta", "Penne"): words("Penne"),
         ("Food", "Dairy", "Milk"): words("Milk"), ("Home", "Clean", "Soap"): words("Soap"),
         ("Home", "Clean", "Mop"): words("Mop")}


@pytest.mark.parametrize("model", ["tfidf_hsgd", "tfidf_lsgd"])
def test_an_update_with_nothing_to_refit_keeps_every_node(model):
    """The crash of an update that changes no node ("Found array with 0 sample(s)"): the same rows
    again keep every classifier as it was."""
    v1, v2 = version(PASTA), version(PASTA)
    old, upd, _, m = updated(model, v1, v2)
    assert m["nodes_refit"] == m["nodes_partly_refit"] == m["rows_featurised"] == 0
    texts = [t for ts in PASTA.values() for t in ts] + ["penne reviewed later", "anything else"]
    assert upd.predict_paths(texts) == old.predict_paths(texts)
    assert np.array_equal(upd.nodes_.blocks.w, old.nodes_.blocks.w)


def test_a_lone_child_node_is_refitted_once_a_sibling_has_training_rows():
    """Penne exists (its rows are in validation) but Pasta trained on Spaghetti alone, which had
    P = 1; once Penne's reviewed rows join training the node has two children, and Penne is
    answered as a refit answers it."""
    train = {p: t for p, t in PASTA.items() if p[-1] != "Penne"}
    v1 = version(train, {("Food", "Pasta", "Penne"): ["penne held out"]})
    v2 = version(PASTA, {("Food", "Pasta", "Penne"): ["penne held out"]})
    old, upd, full, m = updated("tfidf_hsgd", v1, v2)
    probe = words("Penne")
    assert ["Food", "Pasta", "Penne"] not in old.predict_paths(probe)
    assert upd.predict_paths(probe) == full.predict_paths(probe) == [["Food", "Pasta", "Penne"]] * 6


def test_relabels_between_siblings_refit_the_node_though_its_counts_hold():
    """v1 had Spaghetti's and Penne's titles swapped; v2 corrects both: every count is the same,
    the rows are not, and the update answers as the refit does."""
    swapped = {**PASTA, ("Food", "Pasta", "Spaghetti"): words("Penne"), ("Food", "Pasta", "Penne"): words("Spaghetti")}
    old, upd, full, m = updated("tfidf_hsgd", version(swapped), version(PASTA))
    probe = words("Spaghetti") + words("Penne")
    assert old.predict_paths(probe[:1]) == [["Food", "Pasta", "Penne"]]
    assert upd.predict_paths(probe) == full.predict_paths(probe) == [list(p) for p in
                                                                     [("Food", "Pasta", "Spaghetti")] * 6 +
                                                                     [("Food", "Pasta", "Penne")] * 6]
    assert m["nodes_refit"] == 1 and m["nodes_kept"] == 5  # Pasta; the root, Food, Home, Dairy, Clean


def test_a_child_left_without_training_rows_refits_its_one_vs_rest_node():
    """Food is one-vs-rest over Pasta, Dairy and Bread; v2 relabels every Bread training row to
    Dairy (Bread lives on in validation): the partial refit of Bread's decision had no positive
    row and crashed; the node is refitted whole over its two remaining children."""
    three = {**PASTA, ("Food", "Bread", "Rye"): words("Rye")}
    moved = {**PASTA, ("Food", "Dairy", "Milk"): words("Milk") + words("Rye")}
    v1 = version(three, {("Food", "Bread", "Rye"): ["rye held out"]})
    v2 = version(moved, {("Food", "Bread", "Rye"): ["rye held out"]})
    _, upd, full, m = updated("tfidf_hsgd", v1, v2)
    probe = words("Rye")
    assert upd.predict_paths(probe) == full.predict_paths(probe) == [["Food", "Dairy", "Milk"]] * 6
