"""Taxonomy versions, diffs, relabelling, updates and the review loop, on small taxonomies whose
answers are worked out by hand (issue 29)."""
import json

import numpy as np
import pandas as pd
import pytest

from conftest import KTT, clean_env  # noqa: F401
from ktt.data import Split
from ktt.errors import BadValue
from ktt.hierarchy import Hierarchy
from ktt.taxonomy import Side, diff, digest, read_mapping, relabel, text_hashes

# Version 1 -> 2 by hand: Food > Pasta > Penne renamed Penne Rigate (same rows); Food > Dairy
# moved under Home (its child Milk carried along, not reported); Home > Clean > Mop removed (its
# rows gone); Home > Garden added with its child Rake (reported once, as Garden).
OLD = {("Food", "Pasta", "Spaghetti"): ["spaghetti long", "spaghetti thin"],
       ("Food", "Pasta", "Penne"): ["penne tubes"],
       ("Food", "Dairy", "Milk"): ["milk whole", "milk skim"],
       ("Home", "Clean", "Soap"): ["soap bar"],
       ("Home", "Clean", "Mop"): ["mop head", "mop stick"]}
NEW = {("Food", "Pasta", "Spaghetti"): ["spaghetti long", "spaghetti thin"],
       ("Food", "Pasta", "Penne Rigate"): ["penne tubes"],
       ("Home", "Dairy", "Milk"): ["milk whole", "milk skim"],
       ("Home", "Clean", "Soap"): ["soap bar"],
       ("Home", "Garden", "Rake"): ["rake metal"]}


def side(rows: dict, name: str, with_rows: bool = True) -> Side:
    paths = [p for p, texts in rows.items() for _ in texts]
    h = Hierarchy.from_paths(paths)
    if not with_rows:
        return Side(name, h)
    return Side(name, h, h.encode(paths), text_hashes([t for texts in rows.values() for t in texts]))


def test_digest_is_the_taxonomy_not_the_row_order():
    a = Hierarchy.from_paths(list(OLD))
    assert digest(a) == digest(Hierarchy.from_paths(list(reversed(list(OLD)))))
    assert digest(a) != digest(Hierarchy.from_paths(list(NEW)))
    assert len(digest(a)) == 12


def test_diff_by_rows():
    d = diff(side(OLD, "v1"), side(NEW, "v2"))
    got = {(c.kind, c.old, c.new, c.rows) for c in d.changes}
    assert got == {("moved", ("Food", "Dairy"), ("Home", "Dairy"), 2),
                   ("added", None, ("Home", "Garden"), 1),
                   ("renamed", ("Food", "Pasta", "Penne"), ("Food", "Pasta", "Penne Rigate"), 1),
                   ("removed", ("Home", "Clean", "Mop"), None, 2)}
    # new class -> old class, level by level (classes are sorted paths):
    # level 1 old: Food>Dairy 0, Food>Pasta 1, Home>Clean 2; new: Food>Pasta, Home>Clean, Home>Dairy, Home>Garden
    # level 2 old: Dairy>Milk 0, Pasta>Penne 1, Pasta>Spaghetti 2, Clean>Mop 3, Clean>Soap 4
    corr = d.correspondence()
    assert corr[0].tolist() == [0, 1]
    assert corr[1].tolist() == [1, 2, 0, -1]
    assert corr[2].tolist() == [1, 2, 4, 0, -1]  # Penne Rigate, Spaghetti, Soap, Milk, Rake
    text = str(d)
    assert "1 moved" in text and "~ Food > Pasta > Penne  ->  Food > Pasta > Penne Rigate  (1 rows)" in text
    assert d.to_dict()["old"]["taxonomy"] == digest(side(OLD, "x").hierarchy)


def test_diff_without_rows_finds_moves_by_name_but_not_renames():
    d = diff(side(OLD, "v1", with_rows=False), side(NEW, "v2", with_rows=False))
    got = {(c.kind, c.old, c.new, c.rows) for c in d.changes}
    assert ("moved", ("Food", "Dairy"), ("Home", "Dairy"), None) in got
    assert ("removed", ("Food", "Pasta", "Penne"), None, None) in got
    assert ("added", None, ("Food", "Pasta", "Penne Rigate"), None) in got
    assert not any(c.kind == "renamed" for c in d.changes)


def test_identical_taxonomies_have_no_changes():
    d = diff(side(OLD, "a"), side(OLD, "b"))
    assert d.same and d.changes == [] and "the same" in str(d)


def test_relabel_longest_prefix_and_errors(tmp_path):
    f = tmp_path / "map.csv"
    f.write_text("old,new\nFood > Dairy,Home > Dairy\nFood > Pasta > Penne,Food > Pasta > Penne Rigate\n")
    mapping = read_mapping(f)
    target = Hierarchy.from_paths(list(NEW))
    old_rows = [list(p) for p in OLD if p[-1] != "Mop"]
    assert relabel(old_rows, mapping, target) == [list(p) for p in NEW if p[-1] != "Rake"]
    with pytest.raises(BadValue, match=r"row 5: label path 'Home > Clean > Mop' is not in the new taxonomy and "
                                       r"map.csv does not map it \(1 rows; 1 such paths in all\); add a line"):
        relabel([list(p) for p in OLD], mapping, target, where="map.csv")
    f.write_text("old,new\nFood > Dairy,Garage > Dairy\n")
    with pytest.raises(BadValue, match="'Food > Dairy' is mapped to 'Garage > Dairy', which is not a category"):
        relabel(old_rows, read_mapping(f), target)
    f.write_text("from,to\na,b\n")
    with pytest.raises(BadValue, match="needs exactly the columns old,new"):
        read_mapping(f)
    f.write_text("old,new\na,b\na,c\n")
    with pytest.raises(BadValue, match="line 3: 'a' is mapped twice"):
        read_mapping(f)


def split(rows: dict, h=None) -> Split:
    paths = [p for p, texts in rows.items() for _ in texts]
    return Split([t for texts in rows.values() for t in texts], paths, h or Hierarchy.from_paths(paths))


def words(name: str, n: int = 6) -> list[str]:
    return [f"{name.lower()} item{i} {name.lower()}y" for i in range(n)]


class Logged:
    def __init__(self):
        self.metrics = {}

    def log_metrics(self, m, step=None):
        self.metrics.update(m)

    def checkpoint(self, *a, **k):
        pass


def test_tfidf_update_refits_only_the_changed_nodes():
    """By hand, for OLD -> NEW with six rows a leaf: Food > Pasta (children Spaghetti, Penne ->
    Penne Rigate, the same rows) and the moved Dairy (its lone child Milk) are kept; the root (Dairy
    moved from Food to Home: the root is their lowest common ancestor, and Food's rows go 18 -> 12,
    Home's 12 -> 18), Food (lost Dairy), Home (gained Dairy and Garden), Home > Clean (lost Mop) and
    the new Home > Garden are refitted: 5 of 7."""
    from ktt import registry

    old_rows = {p: words(p[-1]) for p in OLD}
    new_rows = {(p if p[-1] != "Penne" else ("Food", "Pasta", "Penne Rigate")): w for p, w in old_rows.items()
                if p[-1] != "Mop"}
    new_rows = {(("Home",) + p[1:] if p[1] == "Dairy" else p): w for p, w in new_rows.items()}
    new_rows[("Home", "Garden", "Rake")] = words("Rake")
    s1, s2 = split(old_rows), split(new_rows)
    old = registry.create("tfidf_hsgd", s1.hierarchy).fit(s1, s1)
    d = diff(Side("v1", s1.hierarchy, s1.codes, text_hashes(s1.texts)),
             Side("v2", s2.hierarchy, s2.codes, text_hashes(s2.texts)))
    log = Logged()
    upd = registry.create("tfidf_hsgd", s2.hierarchy, **old.params).update(old, d, s2, s2, log)
    assert log.metrics["nodes_kept"] == 2 and log.metrics["nodes_refit"] == 5
    assert log.metrics["rows_featurised"] == 30  # the root's
    # only the 6 Rake rows are new to training: "rake", "rakey" and 12 bigrams ("rake itemN", "itemN rakey")
    assert log.metrics["vocabulary_added"] == 14
    # the kept Pasta block answers with its renamed child; the moved Dairy keeps its only child
    assert upd.predict_paths(["penne item1 penney"]) == [["Food", "Pasta", "Penne Rigate"]]
    assert upd.predict_paths(["milk item2 milky"]) == [["Home", "Dairy", "Milk"]]
    assert upd.predict_paths(["rake item3 rakey"]) == [["Home", "Garden", "Rake"]]
    # a node whose children's rows changed by more than update_share is refitted too: Pasta with one
    # more Spaghetti row (1 of 12 rows: more than 5%)
    more = dict(new_rows)
    more[("Food", "Pasta", "Spaghetti")] = words("Spaghetti", 7)
    s3 = split(more)
    d3 = diff(d.old, Side("v3", s3.hierarchy, s3.codes, text_hashes(s3.texts)))
    log = Logged()
    registry.create("tfidf_hsgd", s3.hierarchy, **old.params).update(old, d3, s3, s3, log)
    assert log.metrics["nodes_refit"] == 6


def test_grow_vocabulary_appends_with_scikit_learn_idf():
    from ktt.tfidf import grow_vocabulary, make_vectorizer

    v = make_vectorizer({"min_df": 1, "ngram_max": 1})
    v.fit(["a b", "a c", "b c", "a"])
    g = grow_vocabulary(v, ["d e", "d"], n_docs=6)
    assert g.vocabulary_ == {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4}
    # idf = ln((1 + n) / (1 + df)) + 1: d in 2 of 6 documents, e in 1
    assert g.idf_[3:].tolist() == pytest.approx([np.log(7 / 3) + 1, np.log(7 / 2) + 1])
    assert g.idf_[:3].tolist() == pytest.approx(v.idf_.tolist()) and len(v.vocabulary_) == 3  # the old one unchanged
    assert g.transform(["d a"]).shape == (1, 5)
    assert grow_vocabulary(v, ["a b"], 6) is v


def test_encoder_head_transplant_copies_matched_classes():
    import torch

    from ktt.nn import transplant
    from models.db_bhcn.db_bhcn import BHCNHead

    h1, h2 = side(OLD, "v1").hierarchy, side(NEW, "v2").hierarchy
    corr = diff(side(OLD, "v1"), side(NEW, "v2")).correspondence()
    torch.manual_seed(0)
    old = BHCNHead(8, h1.sizes, 0.0, "relu", 384)
    new = BHCNHead(8, h2.sizes, 0.0, "relu", 384)
    before = {k: v.clone() for k, v in new.state_dict().items()}
    assert transplant(old, new, corr, h1, h2) == []
    # level 2 rows: new Penne Rigate (0) <- old Penne (1); Milk (3) <- old Milk (0); Rake (4) is new
    w_old, w_new = old.levels[1].weight, new.levels[1].weight  # (level-2 classes, level-1 classes + hidden)
    assert torch.equal(w_new[0, 4:], w_old[1, 3:]) and torch.equal(w_new[3, 4:], w_old[0, 3:])
    # input columns are level-1 classes: new Home > Dairy (2) <- old Food > Dairy (0); Garden (3) is new
    assert torch.equal(w_new[0, 2], w_old[1, 0]) and torch.equal(w_new[0, 3], before["levels.1.weight"][0, 3])
    assert torch.equal(w_new[4], before["levels.1.weight"][4])
    assert torch.equal(new.first.weight, old.first.weight)  # level 0 unchanged
    assert torch.equal(new.norms[1].weight[:3], old.norms[1].weight[[1, 2, 0]])


def test_update_rows_are_the_changed_classes_and_as_many_others():
    from ktt.nn import update_rows

    s2 = split({p: words(p[-1]) for p in NEW})
    d = diff(side(OLD, "v1"), side(NEW, "v2"))
    rows = update_rows(d, s2, 0.5, 0)
    # the moved Dairy's, the added Garden's and the renamed Penne Rigate's rows, and half as many others
    changed = [i for i, p in enumerate(s2.paths) if p[:2] in {("Home", "Dairy"), ("Home", "Garden")} or
               p[-1] == "Penne Rigate"]
    assert len(changed) == 18 and set(changed) <= set(rows.tolist()) and len(rows) == 27


def test_review_rows_and_queue(tmp_path):
    from ktt.review import append_rows, queue, review_rows

    h = Hierarchy.from_paths(list(NEW))
    codes = h.encode([("Food", "Pasta", "Spaghetti"), ("Home", "Garden", "Rake")])
    scores = [np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[0.9, 0.0, 0.1, 0.0], [0.0, 0.1, 0.2, 0.5]]),
              np.array([[0.3, 0.6, 0, 0, 0], [0, 0, 0.05, 0.05, 0.4]])]
    rows = review_rows(["t1", "t2"], codes, scores, h, [2, 1], "m", "abc")
    assert rows[0] == {"text": "t1", "answer": "Food > Pasta", "guess": "Food > Pasta > Spaghetti",
                       "confidences": "[0.9, 0.9, 0.6]", "model": "m", "taxonomy": "abc", "labels": ""}
    assert rows[1]["answer"] == "Home" and rows[1]["confidences"] == "[0.8, 0.5, 0.4]"
    append_rows(tmp_path / "r.csv", rows[:1])
    append_rows(tmp_path / "r.csv", rows[1:])
    df = pd.read_csv(tmp_path / "r.csv", keep_default_na=False)
    assert df["text"].tolist() == ["t1", "t2"] and list(df.columns)[-1] == "labels"
    append_rows(tmp_path / "r.jsonl", rows)
    assert [json.loads(x)["text"] for x in (tmp_path / "r.jsonl").read_text().splitlines()] == ["t1", "t2"]
    assert queue(np.array([[0.9, 0.5], [0.9, np.nan], [0.2, 0.95]])).tolist() == [2, 0, 1]


def test_moved_through_stops_at_the_lowest_common_ancestor():
    from ktt.tfidf import moved_through

    d = diff(side(OLD, "v1"), side(NEW, "v2"))
    assert moved_through(d) == {(), ("Home",), ("Food",)}  # Dairy left Food, joined Home: the root chose between them
    deep_old = {("A", "B", "C", "x"): ["x1", "x2"], ("A", "B", "D", "y"): ["y1"], ("A", "E", "F", "z"): ["z1"]}
    deep_new = {("A", "B", "C", "x"): ["x1", "x2"], ("A", "B", "C", "y"): ["y1"], ("A", "E", "F", "z"): ["z1"]}
    d = diff(side(deep_old, "v1"), side(deep_new, "v2"))
    assert [(c.kind, c.old, c.new) for c in d.changes] == [("removed", ("A", "B", "D"), None),
                                                           ("moved", ("A", "B", "D", "y"), ("A", "B", "C", "y"))]
    assert moved_through(d) == {("A", "B"), ("A", "B", "C")}  # A > B > D is gone; above A > B nothing changed
