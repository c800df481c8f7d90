"""The catalog loop as a property (issue 40): random edit scripts over a generated catalog, each
taken through the data path a team takes (a new version ingested, or the edits brought back as
reviewed rows with ``--append``), the taxonomy diff and ``--from``. For every script: no crash;
``ktt taxonomy diff`` reports exactly the edits the script made; every class of the new version is
answered for its own titles (TF-IDF) or has its outputs (encoder); a TF-IDF node whose classes and
rows the script left alone gives the old model's probabilities, value for value. 200 scripts for
each TF-IDF model and db_bhcn, 25 for each other encoder model (a tiny encoder)."""
import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ktt import registry
from ktt.data import append, ingest, load_dataset
from ktt.taxonomy import diff, of_dataset

SYLLABLES = ["ba", "ko", "mi", "tu", "re", "sa", "lo", "vi", "ne", "du"]
KINDS = ("add_leaf", "add_category", "remove_leaf", "rename", "move_category", "move_leaf", "lift_leaf", "merge",
         "split", "relabel", "new_rows")


def name(i: int) -> str:
    """A distinct word per class: its titles' own vocabulary."""
    return "".join(SYLLABLES[int(c)] for c in str(i + 100))


class Catalog:
    """A catalog being edited: classes by id (``name``, ``parent``: -1 for a department), titles by
    text (``leaf`` id, ``split``, ``own``: the leaf id it was written for)."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        self.names, self.parent, self.rows, self.next, self.locked = {}, {}, {}, itertools.count(), set()
        for _ in range(3):
            d = self.add(-1)
            for _ in range(2):
                c = self.add(d)
                for _ in range(int(rng.integers(2, 4))):
                    self.titles(self.add(c), 6)

    def add(self, parent: int) -> int:
        i = next(self.next)
        self.names[i], self.parent[i] = name(i), parent
        return i

    def titles(self, leaf: int, n: int, split=("train",) * 4 + ("val", "test")) -> None:
        for j in range(n):
            k = next(self.next)
            self.rows[f"{self.names[leaf]} item{k} {self.names[leaf]}x"] = {
                "leaf": leaf, "split": split[j % len(split)], "own": leaf}

    def path(self, i: int) -> tuple:
        return (self.path(self.parent[i]) if self.parent[i] >= 0 else ()) + (self.names[i],)

    def depth(self, i: int) -> int:
        return len(self.path(i)) - 1

    def kids(self, i: int) -> list[int]:
        return sorted(c for c, p in self.parent.items() if p == i and self.alive(c))

    def alive(self, i: int) -> bool:
        return any(self.under(r["leaf"], i) for r in self.rows.values())

    def under(self, leaf: int, i: int) -> bool:
        while leaf >= 0:
            if leaf == i:
                return True
            leaf = self.parent[leaf]
        return False

    def leaves(self) -> list[int]:
        return sorted({r["leaf"] for r in self.rows.values()})

    def family(self, i: int) -> set[int]:
        """``i``, its ancestors and its descendants: what an edit of ``i`` locks."""
        up, j = set(), i
        while j >= 0:
            up.add(j)
            j = self.parent[j]
        return up | {c for c in self.parent if self.under(c, i)}

    def free(self, ids) -> list[int]:
        return [i for i in ids if not (self.family(i) & self.locked)]

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame([{"text": t, "labels": " > ".join(self.path(r["leaf"])), "split": r["split"]}
                             for t, r in self.rows.items()])

    def copy(self) -> "Catalog":
        c = object.__new__(Catalog)
        c.names, c.parent, c.locked = dict(self.names), dict(self.parent), set()
        c.rows, c.next = {t: dict(r) for t, r in self.rows.items()}, self.next
        return c

    # -- edits: each returns the change the diff must report (or None), or False when it cannot apply
    def edit(self, kind: str, a: int, b: int):
        classes = [i for i in self.names if self.alive(i)]
        cats = [i for i in classes if self.depth(i) == 1 and self.kids(i)]
        depts = [i for i in classes if self.depth(i) == 0]
        # a leaf that can leave its parent: its parent keeps another child
        mobile = [i for i in self.leaves() if self.depth(i) == 2 and len(self.kids(self.parent[i])) >= 2]

        def pick(options):
            options = self.free(options)
            return options[a % len(options)] if options else None
        if kind in ("add_leaf", "add_category"):
            at = pick(cats if kind == "add_leaf" else depts)
            if at is None:
                return False
            new = self.add(at)
            if kind == "add_category":
                self.titles(self.add(new), 6)
            else:
                self.titles(new, 6)
            self.locked |= self.family(at) | {new}
            return ("added", None, self.path(new))
        if kind == "rename":
            x = pick(classes)
            if x is None:
                return False
            old = self.path(x)
            self.names[x] = self.names[x] + "ren"
            self.locked |= self.family(x)
            return ("renamed", old, self.path(x))
        if kind == "move_category":
            c = pick([i for i in cats if len(self.kids(self.parent[i])) >= 2])
            to = [d for d in self.free(depts) if c is not None and d != self.parent[c]]
            if c is None or not to:
                return False
            old, up = self.path(c), self.parent[c]
            self.parent[c] = to[b % len(to)]
            self.locked |= self.family(c) | self.family(up) | self.family(self.parent[c])
            return ("moved", old, self.path(c))
        x = pick(mobile if kind in ("remove_leaf", "move_leaf", "lift_leaf", "merge", "relabel") else
                 [i for i in self.leaves() if self.depth(i) == 2])
        if x is None:
            return False
        old, up = self.path(x), self.parent[x]
        if kind == "remove_leaf":
            self.rows = {t: r for t, r in self.rows.items() if r["leaf"] != x}
            self.locked |= self.family(x)
            return ("removed", old, None)
        if kind == "move_leaf":
            to = [c for c in self.free(cats) if c != up]
            if not to:
                return False
            self.parent[x] = to[b % len(to)]
            self.locked |= self.family(x) | self.family(up)
            return ("moved", old, self.path(x))
        if kind == "lift_leaf":  # a leaf one level up: its path now ends at level 1
            self.parent[x] = self.parent[up]
            self.locked |= self.family(x) | self.family(up)
            return ("moved", old, self.path(x))
        if kind == "new_rows":
            self.titles(x, 2, ("train",))
            self.locked |= self.family(x)
            return None
        if kind == "split":  # a new sibling takes two of its titles and has six of its own
            new = self.add(up)
            for t in [t for t, r in self.rows.items() if r["leaf"] == x and r["split"] == "train"][:2]:
                self.rows[t]["leaf"] = new
            self.titles(new, 6)
            self.locked |= self.family(x) | {new}
            return ("added", None, self.path(new))
        sibling = [s for s in self.free(self.kids(up)) if s != x]
        if not sibling:
            return False
        y = sibling[b % len(sibling)]
        self.locked |= self.family(x) | self.family(y)
        if kind == "merge":  # x's titles join y
            for r in self.rows.values():
                if r["leaf"] == x:
                    r["leaf"] = y
            return ("removed", old, None)
        for leaf, other in ((x, y), (y, x)):  # relabel: one training title of each given the other's label
            t = next(t for t, r in self.rows.items() if r["leaf"] == leaf and r["own"] == leaf and r["split"] == "train")
            self.rows[t]["leaf"] = other
        return None


scripts = st.tuples(st.integers(0, 2), st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 999),
                                                           st.integers(0, 999)), min_size=1, max_size=4),
                    st.booleans())


class Versions:
    """v1 of each catalog seed, ingested and fitted once per model."""

    def __init__(self, root, encoder=None):
        self.root, self.encoder, self.cache, self.n = root, encoder, {}, itertools.count()

    def v1(self, model: str, seed: int, **params):
        if (model, seed) not in self.cache:
            cat = Catalog(seed)
            ingest(cat.frame(), self.root, f"{model}-{seed}", label_sep=">", overwrite=True)
            ds = load_dataset(f"{model}-{seed}", self.root)
            est = registry.create(model, ds.hierarchy, **params).fit(ds.train, ds.val)
            self.cache[model, seed] = cat, ds, est
        return self.cache[model, seed]

    def v2(self, ds1, cat2: Catalog, cat1: Catalog, via_append: bool):
        """The edited catalog as a dataset: ingested anew, or (no title removed) its changed and
        new titles appended to v1 as reviewed rows."""
        name = f"v2-{next(self.n)}"
        df = cat2.frame()
        if via_append and set(cat1.rows) <= set(cat2.rows):
            before = cat1.frame().set_index("text")["labels"]
            df = df[df["text"].map(before).ne(df["labels"])]
            if len(df):
                append(ds1, df, self.root, name, label_sep=">")
                return load_dataset(name, self.root)
        ingest(cat2.frame(), self.root, name, label_sep=">")
        return load_dataset(name, self.root)


def edited(cat1: Catalog, ops) -> tuple[Catalog, set]:
    cat2, expected = cat1.copy(), set()
    for kind, a, b in ops:
        change = cat2.edit(kind, a, b)
        if change:
            expected.add(change)
    return cat2, expected


def titles(cat: Catalog, i: int) -> set[str]:
    return {t for t, r in cat.rows.items() if cat.under(r["leaf"], i)}


def unchanged_nodes(model: str, cat1: Catalog, cat2: Catalog) -> list[tuple[int, list[int]]]:
    """The model's nodes (a class id, -1: the root; ``tfidf_lsgd`` has one, over every leaf) whose
    children are the same classes, at the same levels, holding the same titles (every split's) in
    both versions, with those children."""
    if model == "tfidf_lsgd":
        nodes = [(-1, cat1.leaves(), cat2.leaves())]
    else:
        nodes = [(p, cat1.kids(p), cat2.kids(p)) for p in [-1, *[i for i in cat1.names if cat1.alive(i)]]]
    return [(p, a) for p, a, b in nodes if a and a == b and
            all(cat1.depth(k) == cat2.depth(k) and titles(cat1, k) == titles(cat2, k) for k in a)]


def check_diff(ds1, ds2, expected):
    d = diff(of_dataset(ds1), of_dataset(ds2))
    assert {(c.kind, c.old, c.new) for c in d.changes} == expected, str(d)
    return d


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    return Versions(tmp_path_factory.mktemp("catalogs"))


SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("model", ["tfidf_hsgd", "tfidf_lsgd"])
def test_tfidf_updates_hold_for_any_edit_script(model, versions):
    @SETTINGS
    @given(scripts)
    def check(script):
        seed, ops, via_append = script
        cat1, ds1, old = versions.v1(model, seed)
        cat2, expected = edited(cat1, ops)
        ds2 = versions.v2(ds1, cat2, cat1, via_append)
        d = check_diff(ds1, ds2, expected)
        upd = registry.create(model, ds2.hierarchy, **old.params).update(old, d, ds2.train, ds2.val)
        # every leaf answers its own titles
        for leaf in cat2.leaves():
            own = [t for t, r in cat2.rows.items() if r["leaf"] == leaf and r["own"] == leaf and r["split"] == "train"]
            assert upd.predict_paths(own[:1]) == [list(cat2.path(leaf))], (leaf, cat2.path(leaf))
        # an untouched node: the same probabilities, for titles the grown vocabulary leaves as they were
        probe = [t for t in cat1.rows if upd.features([t])[:, len(old.vectorizer_.vocabulary_):].nnz == 0]
        p_old, p_new = old.nodes_.conditional(old.features(probe)), upd.nodes_.conditional(upd.features(probe))
        for p, kids in unchanged_nodes(model, cat1, cat2):
            d1 = d2 = cat1.depth(kids[0])
            i1 = [ds1.hierarchy.class_index(cat1.path(k)) for k in kids]
            i2 = [ds2.hierarchy.class_index(cat2.path(k)) for k in kids]
            assert np.array_equal(p_old[d1][:, i1], p_new[d2][:, i2]), (p, cat2.path(kids[0]))
    check()


@pytest.mark.parametrize("model,examples", [("db_bhcn", 200), ("db_linear", 25), ("db_bhcn_awx", 25),
                                            ("db_ahmcnf", 25), ("db_achmcnn", 25)])
def test_encoder_updates_hold_for_any_edit_script(model, examples, versions, tiny_encoder):
    fast = {"epochs": 1, "batch_size": 16, "encoder_lr": 1e-3, "classifier_lr": 3e-3, "log_every": 1,
            "max_len": 16}

    @settings(SETTINGS, max_examples=examples)
    @given(scripts)
    def check(script):
        seed, ops, via_append = script
        cat1, ds1, old = versions.v1(model, seed, encoder=tiny_encoder, **fast)
        cat2, expected = edited(cat1, ops)
        ds2 = versions.v2(ds1, cat2, cat1, via_append)
        d = check_diff(ds1, ds2, expected)
        upd = registry.create(model, ds2.hierarchy, **old.params).update(old, d, ds2.train, ds2.val)
        scores = upd.raw_scores(ds2.test.texts)
        assert [s.shape for s in scores] == [(len(ds2.test), n) for n in ds2.hierarchy.sizes]
        assert all(np.isfinite(s).all() for s in scores)
    check()
