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


def test_a_text_reviewed_twice_takes_its_last_label_whether_new_or_known(tmp_path):
    """The policy for conflicting reviews: a new text reviewed Penne, Spaghetti, Penne joins train
    once, as Penne (its last review; the first is an exact repeat of it, kept so order decides);
    a known text reviewed twice takes its last label, in its own split."""
    import pandas as pd

    from ktt.data import append, ingest, load_dataset

    rows = [{"text": t, "labels": " > ".join(p)} for p, ts in PASTA.items() for t in ts]
    ingest(pd.DataFrame(rows), tmp_path, "v1", label_sep=">", split_ratios=(0.6, 0.2, 0.2))
    v1 = load_dataset("v1", tmp_path)
    reviews = pd.DataFrame({"text": ["new title", "new title", "new title", "milk item0 milky", "milk item0 milky"],
                            "labels": ["Food > Pasta > Penne", "Food > Pasta > Spaghetti", "Food > Pasta > Penne",
                                       "Food > Dairy > Milk", "Home > Clean > Soap"]})
    _, _, report = append(v1, reviews, tmp_path, "v2", label_sep=">")
    v2 = load_dataset("v2", tmp_path)
    label = {t: p for s in (v2.train, v2.val, v2.test) for t, p in zip(s.texts, s.paths)}
    assert v2.train.texts.count("new title") == 1 and "new title" not in v2.val.texts + v2.test.texts and label["new title"] == ("Food", "Pasta", "Penne")
    assert label["milk item0 milky"] == ("Home", "Clean", "Soap")
    assert (report["rows_added"], report["rows_corrected"], report["reviews_overridden"]) == (1, 1, 3)
