"""`ktt taxonomy diff` on small taxonomies worked out by hand: rows win over names, a rename that
grew, moves across levels, and what a merge and a split report (ktt.taxonomy's docstring)."""
import numpy as np

from ktt.data import Split
from ktt.hierarchy import Hierarchy
from ktt.taxonomy import Side, diff, text_hashes

BASE = {("Food", "Pasta", "Spaghetti"): ["sp1", "sp2", "sp3"], ("Food", "Pasta", "Penne"): ["pe1", "pe2"],
        ("Food", "Bread", "Rye"): ["ry1", "ry2"], ("Home", "Clean", "Soap"): ["so1", "so2"]}


def side(rows: dict, name: str, extra=()) -> Side:
    """A side holding ``rows`` (path -> texts); ``extra``: classes without rows."""
    paths = [p for p, texts in rows.items() for _ in texts]
    h = Hierarchy.from_paths(paths + list(extra))
    return Side(name, h, h.encode(paths), text_hashes([t for texts in rows.values() for t in texts]))


def split(rows: dict) -> Split:
    paths = [p for p, texts in rows.items() for _ in texts]
    return Split([t for texts in rows.values() for t in texts], paths, Hierarchy.from_paths(paths))


def words(name: str, n: int = 6) -> list[str]:
    return [f"{name.lower()} item{i} {name.lower()}y" for i in range(n)]


def changes(old: dict, new: dict, **kw) -> set:
    return {(c.kind, c.old, c.new, c.rows) for c in diff(side(old, "v1", **kw), side(new, "v2")).changes}


def test_a_reused_name_is_not_the_class_whose_rows_went_elsewhere():
    """Snacks' rows went to Crisps; a new Snacks holds other products: a rename and an add, not
    Snacks kept and Crisps added (the name used to pair the two Snacks first)."""
    old = {**BASE, ("Food", "Snacks", "Chips"): ["ch1", "ch2", "ch3"]}
    new = {**BASE, ("Food", "Crisps", "Chips"): ["ch1", "ch2", "ch3"], ("Food", "Snacks", "Nuts"): ["nu1", "nu2"]}
    d = diff(side(old, "v1"), side(new, "v2"))
    assert {(c.kind, c.old, c.new, c.rows) for c in d.changes} == {
        ("renamed", ("Food", "Snacks"), ("Food", "Crisps"), 3), ("added", None, ("Food", "Snacks"), 2)}
    assert d.match[("Food", "Crisps", "Chips")] == ("Food", "Snacks", "Chips")  # carried along
    # the rows went three ways, a minority of each class they joined: the new Snacks is still not the old one
    old = {**BASE, ("Food", "Snacks"): ["s1", "s2", "s3"]}
    new = {**BASE, ("Food", "Bread", "Rye"): ["ry1", "ry2", "s1"], ("Food", "Pasta", "Penne"): ["pe1", "pe2", "s2"],
           ("Home", "Clean", "Soap"): ["so1", "so2", "s3"], ("Food", "Snacks"): ["nu1", "nu2"]}
    assert changes(old, new) == {("removed", ("Food", "Snacks"), None, 3), ("added", None, ("Food", "Snacks"), 2)}
    # Snacks kept one of its rows and got two from other classes: under half either way, not the same class
    new = {**BASE, ("Food", "Bread", "Rye"): ["ry1"], ("Home", "Clean", "Soap"): ["so2"],
           ("Food", "Snacks"): ["s1", "ry2", "so1"], ("Food", "Pasta", "Penne"): ["pe1", "pe2", "s2", "s3"]}
    assert changes(old, new) == {("removed", ("Food", "Snacks"), None, 3), ("added", None, ("Food", "Snacks"), 3)}


def test_a_class_that_gained_and_lost_rows_is_the_same_class():
    # Spaghetti: two of its three rows relabelled to Penne (it keeps less than half), two new rows
    new = {**BASE, ("Food", "Pasta", "Spaghetti"): ["sp1", "new1", "new2"],
           ("Food", "Pasta", "Penne"): ["pe1", "pe2", "sp2", "sp3"]}
    assert changes(BASE, new) == set()
    # every old Soap row gone, new ones in: the same class
    assert changes(BASE, {**BASE, ("Home", "Clean", "Soap"): ["so9"]}) == set()
    # a class with no rows on either side is matched by name
    d = diff(side(BASE, "v1", extra=[("Home", "Garden")]), side(BASE, "v2", extra=[("Home", "Garden")]))
    assert d.changes == [] and d.match[("Home", "Garden")] == ("Home", "Garden")


def test_b_a_renamed_class_that_more_than_doubled_is_a_rename():
    new = {**BASE, ("Food", "Pasta", "Spaghettini"): ["sp1", "sp2", "sp3", "n1", "n2", "n3", "n4"]}
    del new[("Food", "Pasta", "Spaghetti")]
    assert changes(BASE, new) == {("renamed", ("Food", "Pasta", "Spaghetti"), ("Food", "Pasta", "Spaghettini"), 7)}
    # only the rows still present count: two of three gone, the third under the new name
    new[("Food", "Pasta", "Spaghettini")] = ["sp3", "n1"]
    assert changes(BASE, new) == {("renamed", ("Food", "Pasta", "Spaghetti"), ("Food", "Pasta", "Spaghettini"), 2)}


def test_c_a_move_to_another_level_is_one_move():
    from ktt import registry
    from ktt.nn import update_rows

    # up: Food > Pasta > Spaghetti becomes Food > Spaghetti (Pasta keeps Penne)
    new = {**BASE, ("Food", "Spaghetti"): BASE["Food", "Pasta", "Spaghetti"]}
    del new[("Food", "Pasta", "Spaghetti")]
    d = diff(side(BASE, "v1"), side(new, "v2"))
    assert [(c.kind, c.old, c.new, c.rows) for c in d.changes] == [
        ("moved", ("Food", "Pasta", "Spaghetti"), ("Food", "Spaghetti"), 3)]
    assert d.match[("Food", "Spaghetti")] == ("Food", "Pasta", "Spaghetti")
    # per level, a class paired across levels has no counterpart: level 1 new: Food > Bread, Food > Pasta,
    # Food > Spaghetti, Home > Clean; old: Food > Bread 0, Food > Pasta 1, Home > Clean 2
    assert d.correspondence()[1].tolist() == [0, 1, -1, 2]
    s2 = split(new)
    rows, _ = update_rows(d, s2, 0.0, 0)
    assert [s2.texts[i] for i in rows] == ["sp1", "sp2", "sp3"]
    # a TF-IDF model updated across the move answers with the class's new place
    s1, s2 = split({p: words(p[-1]) for p in BASE}), split({p: words(p[-1]) for p in new})
    old = registry.create("tfidf_hsgd", s1.hierarchy).fit(s1, s1)
    d = diff(Side("v1", s1.hierarchy, s1.codes, text_hashes(s1.texts)),
             Side("v2", s2.hierarchy, s2.codes, text_hashes(s2.texts)))
    upd = registry.create("tfidf_hsgd", s2.hierarchy, **old.params).update(old, d, s2, s2)
    assert upd.predict_paths(["spaghetti item1 spaghettiy", "penne item2 penney"]) == [
        ["Food", "Spaghetti"], ["Food", "Pasta", "Penne"]]
    # down: a leaf under a new intermediate class
    old = {**BASE, ("Food", "Rice"): ["ri1", "ri2"]}
    new = {**BASE, ("Food", "Grain", "Rice"): ["ri1", "ri2"]}
    assert changes(old, new) == {("added", None, ("Food", "Grain"), 2),
                                 ("moved", ("Food", "Rice"), ("Food", "Grain", "Rice"), 2)}
    # moved across levels and renamed: a move
    new = {**BASE, ("Food", "Long pasta"): BASE["Food", "Pasta", "Spaghetti"]}
    del new[("Food", "Pasta", "Spaghetti")]
    assert changes(BASE, new) == {("moved", ("Food", "Pasta", "Spaghetti"), ("Food", "Long pasta"), 3)}


def test_merge_and_split_are_reported_as_defined():
    # A merged into its sibling: Penne removed
    new = {**BASE, ("Food", "Pasta", "Spaghetti"): ["sp1", "sp2", "sp3", "pe1", "pe2"]}
    del new[("Food", "Pasta", "Penne")]
    assert changes(BASE, new) == {("removed", ("Food", "Pasta", "Penne"), None, 2)}
    # both into a new class: the larger contributor (Spaghetti, 3 rows) is renamed, the other removed
    new = {k: v for k, v in new.items() if k[1] != "Pasta"} | {
        ("Food", "Pasta", "Noodles"): new["Food", "Pasta", "Spaghetti"]}
    assert changes(BASE, new) == {("renamed", ("Food", "Pasta", "Spaghetti"), ("Food", "Pasta", "Noodles"), 5),
                                  ("removed", ("Food", "Pasta", "Penne"), None, 2)}
    # split, the old name keeping most rows: the other part added
    new = {**BASE, ("Food", "Pasta", "Spaghetti"): ["sp1", "sp2"], ("Food", "Pasta", "Linguine"): ["sp3"]}
    assert changes(BASE, new) == {("added", None, ("Food", "Pasta", "Linguine"), 1)}
    # split, the new part holding most rows: still an add (the old name's rows all came from it)
    new = {**BASE, ("Food", "Pasta", "Spaghetti"): ["sp1"], ("Food", "Pasta", "Linguine"): ["sp2", "sp3"]}
    assert changes(BASE, new) == {("added", None, ("Food", "Pasta", "Linguine"), 2)}
    # split into two new names: renamed to the one with more of its rows
    new = {**BASE, ("Food", "Pasta", "Thin"): ["sp1"], ("Food", "Pasta", "Linguine"): ["sp2", "sp3"]}
    del new[("Food", "Pasta", "Spaghetti")]
    assert changes(BASE, new) == {("renamed", ("Food", "Pasta", "Spaghetti"), ("Food", "Pasta", "Linguine"), 2),
                                  ("added", None, ("Food", "Pasta", "Thin"), 1)}
    # split in halves under two new names: ties go to the first path
    new = {**BASE, ("Home", "Clean", "Bar"): ["so1"], ("Home", "Clean", "Liquid"): ["so2"]}
    del new[("Home", "Clean", "Soap")]
    assert changes(BASE, new) == {("renamed", ("Home", "Clean", "Soap"), ("Home", "Clean", "Bar"), 1),
                                  ("added", None, ("Home", "Clean", "Liquid"), 1)}


def test_diff_is_deterministic_under_row_order():
    old = {**BASE, ("Food", "Snacks"): ["s1", "s2"]}
    new = {**BASE, ("Food", "Crisps"): ["s1"], ("Food", "Chips"): ["s2"]}
    a, b = side(old, "v1"), side(new, "v2")
    perm = np.random.default_rng(0).permutation(len(b.rows))
    shuffled = type(b)("v2", b.hierarchy, b.codes[perm], b.rows[perm])
    assert [str(c) for c in diff(a, b).changes] == [str(c) for c in diff(a, shuffled).changes]


def test_a_text_under_two_classes_counts_for_both():
    """BigBasket lists a product under two categories (duplicates kept): "coconut diced" was the
    only row of Fresh > Cut, and a review added it under Cuts > Cut too (listed first). Counting
    a text's first row only, Fresh > Cut had a row left on the new side that went "elsewhere" and
    was reported removed and added at the same path; the same class, with every row counted."""
    old = {("F", "Cuts", "Cut"): ["carrot diced", "onion diced"], ("F", "Fresh", "Cut"): ["coconut diced"],
           ("F", "Fresh", "Apple"): ["apple red", "apple green"]}
    new = {("F", "Cuts", "Cut"): ["coconut diced", "carrot diced", "onion diced"], **old}
    new[("F", "Cuts", "Cut")] = ["coconut diced", "carrot diced", "onion diced"]  # first in the new side's order
    assert changes(old, new) == set()
