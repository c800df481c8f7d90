import numpy as np
import pytest

from ktt.hierarchy import Hierarchy


@pytest.fixture(scope="module")
def h(bigbasket_df):
    return Hierarchy.from_paths(bigbasket_df.labels)


def test_bigbasket_shape(h, bigbasket_df):
    assert h.depth == 3
    assert h.sizes == [11, 99, 597]
    assert h.offsets == [0, 11, 110]
    # A class is a path: fewer distinct names than classes at levels 2 and 3.
    assert len({p[-1] for p in h.levels[1]}) < h.sizes[1]
    assert len({p[-1] for p in h.levels[2]}) < h.sizes[2]


def test_encode_decode_roundtrip(h, bigbasket_df):
    paths = [tuple(p) for p in bigbasket_df.labels[:500]]
    codes = h.encode(paths)
    assert codes.shape == (500, 3)
    assert [tuple(p) for p in h.decode(codes)] == [tuple(p) for p in paths]
    assert h.is_consistent(codes).all()


def test_parents_and_children_agree(h):
    for d in range(1, h.depth):
        parents = h.parent_of(d)
        children = h.children_of(d - 1)
        assert sum(len(c) for c in children) == h.sizes[d]
        for i, kids in enumerate(children):
            assert (parents[kids] == i).all()
            assert all(h.levels[d][k][:-1] == h.levels[d - 1][i] for k in kids)


def test_matrices(h):
    r, m = h.leaf_matrix(), h.ancestor_matrix()
    assert r.shape == (h.n_classes, h.n_leaves) and m.shape == (h.n_classes, h.n_classes)
    assert (r.sum(axis=0) == h.depth).all()  # every leaf: itself and one ancestor per level
    assert (np.diag(m) == 1).all()
    # M restricted to leaf columns is R; a class's row counts itself plus its descendants
    assert np.array_equal(m[:, h.offsets[-1]:], r)
    l1_desc = m[: h.sizes[0]].sum(axis=1) - 1
    counts = [sum(1 for lv in h.levels[1:] for p in lv if p[0] == root[0]) for root in h.levels[0]]
    assert l1_desc.tolist() == counts


def test_inconsistent_codes_detected(h):
    codes = h.encode([h.levels[2][0]])
    other_parent = next(i for i in range(h.sizes[1]) if i != codes[0, 1])
    bad = codes.copy()
    bad[0, 1] = other_parent
    assert not h.is_consistent(bad)[0]


def test_save_load(tmp_path, h):
    h.save(tmp_path / "hierarchy.json")
    assert Hierarchy.load(tmp_path / "hierarchy.json") == h


def test_bad_hierarchies(tmp_path):
    with pytest.raises(ValueError, match="no parent"):
        Hierarchy(((("a",),), (("b", "x"),)))
    with pytest.raises(ValueError, match="same depth"):
        Hierarchy.from_paths([("a", "b"), ("a",)])
    with pytest.raises(ValueError, match="not in the hierarchy"):
        Hierarchy.from_paths([("a", "b")]).encode([("a", "c")])
    (tmp_path / "h.json").write_text("{}")
    with pytest.raises(ValueError, match="cannot read hierarchy"):
        Hierarchy.load(tmp_path / "h.json")
