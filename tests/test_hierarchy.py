import json

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


def test_parents_agree_with_paths(h):
    for d in range(1, h.depth):
        parents = h.parent_of(d)
        assert len(parents) == h.sizes[d]
        assert all(h.levels[d][k][:-1] == h.levels[d - 1][parents[k]] for k in range(h.sizes[d]))


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


def test_hierarchy_json_exactly(tmp_path):
    """The file a dataset ships: every field, non-ASCII names as written, one value per line."""
    import json

    h = Hierarchy.from_paths([("Café", "a1"), ("Café", "a2"), ("B", "b1")])
    h.save(tmp_path / "hierarchy.json")
    text = (tmp_path / "hierarchy.json").read_text()
    assert json.loads(text) == {"depth": 2, "sizes": [2, 3], "offsets": [0, 2],
                                "levels": [[["B"], ["Café"]], [["B", "b1"], ["Café", "a1"], ["Café", "a2"]]],
                                "parent_of": [[-1, -1], [0, 1, 1]], "may_end": [[], [0, 1, 2]]}
    assert '"Café"' in text and text.startswith('{\n "depth": 2,\n')
    assert h.names(1) == ["B > b1", "Café > a1", "Café > a2"]


@pytest.mark.parametrize("make, message", [
    (lambda: Hierarchy(()), "a hierarchy needs at least one level and one class per level"),
    (lambda: Hierarchy(((("a",),), ())), "a hierarchy needs at least one level and one class per level"),
    (lambda: Hierarchy(((("a", "b"),),)), "class 'a > b' is at level 1 but has 2 parts"),
    (lambda: Hierarchy(((("a",), ("a",)),)), "class 'a' appears twice at level 1"),
    (lambda: Hierarchy(((("a",),), (("a", "b"),), (("a", "c", "d"),))),
     "class 'a > c > d' has no parent 'a > c' at level 2"),
    (lambda: Hierarchy.from_paths([]), "cannot build a hierarchy from zero label paths"),
    (lambda: Hierarchy.from_paths([("a", "b"), ()]), "a label path needs at least one class"),
    (lambda: Hierarchy.from_paths([("a", "b")]).encode([("a", "b"), ("a", "b", "c")]),
     "row 1: label path ['a', 'b', 'c'] has 3 levels, expected 2"),
    (lambda: Hierarchy.from_paths([("a", "b")]).encode([("a", "c")]), "row 0: label path 'a > c' is not in the hierarchy"),
    (lambda: Hierarchy.from_dict({"levels": 3}), "not a KTT hierarchy: 'int' object is not iterable"),
])
def test_hierarchy_errors_exactly(make, message):
    with pytest.raises(ValueError) as err:
        make()
    assert str(err.value) == message


def test_path_log_scores_by_hand():
    h2 = Hierarchy.from_paths([("A", "a1"), ("A", "a2"), ("B", "b1")])
    got = h2.path_log_scores([np.array([[-1.0, -2.0]]), np.array([[-0.5, -0.25, -4.0]])])
    assert got.tolist() == [[-1.5, -1.25, -6.0]]  # A + a1, A + a2, B + b1
    scores = [np.array([[0.6, 0.4]]), np.array([[0.1, 0.2, 0.7]])]
    assert h2.decode_scores(scores).tolist() == h2.decode_scores(scores, "path").tolist() == [[1, 2]]


def test_logits_rule_keeps_the_odds_that_float32_sigmoids_tie():
    """A > a1, A > a2, B > b1; logits A 20, B -20, a1 17, a2 29, b1 -20. Paths A > a1 = 37, A > a2
    = 49, B > b1 = -40: P(a2) = 1 / (1 + e^-12) = .999994, P(a1) .000006. From the float32
    sigmoids (the ``log_odds`` rule), 17 and 29 both clip at 1 - 1e-7: .5 and .5. With a2 at 18
    instead: P(a1) = 1 / (1 + e), P(a2) = e / (1 + e)."""
    toy = Hierarchy.from_paths([("A", "a1"), ("A", "a2"), ("B", "b1")])
    logits = [np.array([[20, -20]], np.float32), np.array([[17, 29, -20]], np.float32)]
    level2 = toy.node_proba(toy.path_scores(logits, "logits"))[1][0]
    assert level2 == pytest.approx([1 / (1 + np.exp(12)), 1 / (1 + np.exp(-12)), 0], abs=1e-12)
    assert level2[1] == pytest.approx(.999994, abs=1e-6)
    sigmoids = [1 / (1 + np.exp(-s)) for s in logits]  # float32, as a graph gives them
    assert toy.node_proba(toy.path_scores(sigmoids, "log_odds"))[1][0] == pytest.approx([.5, .5, 0], abs=1e-12)
    near = [logits[0], np.array([[17, 18, -20]], np.float32)]
    e = np.e
    assert toy.node_proba(toy.path_scores(near, "logits"))[1][0] == pytest.approx([1 / (1 + e), e / (1 + e), 0], abs=1e-12)
    assert toy.decode_scores(near, "path", rule="logits").tolist() == [[0, 1]]


def test_bad_hierarchies(tmp_path):
    with pytest.raises(ValueError, match="no parent"):
        Hierarchy(((("a",),), (("b", "x"),)))
    with pytest.raises(ValueError, match="not in the hierarchy"):
        Hierarchy.from_paths([("a", "b")]).encode([("a", "c")])
    (tmp_path / "h.json").write_text("{}")
    with pytest.raises(ValueError, match=f"cannot read hierarchy {tmp_path / 'h.json'}: not a KTT hierarchy: 'levels'"):
        Hierarchy.load(tmp_path / "h.json")


# -- decoding ----------------------------------------------------------------------------------
def brute_force_best_path(h, levels):
    """The leaf whose path has the highest product of per-level scores, by enumerating every path."""
    best, best_score = None, -np.inf
    for leaf, path in enumerate(h.leaf_paths()):
        score = sum(np.log(levels[d][c]) if levels[d][c] > 0 else -np.inf for d, c in enumerate(path))
        if score > best_score:
            best, best_score = leaf, score
    return h.leaf_paths()[best]


def test_path_decoding_is_the_brute_force_best_path(h):
    rng = np.random.default_rng(0)
    scores = [rng.dirichlet(np.ones(n) * 0.3, size=40) for n in h.sizes]
    codes = h.decode_scores(scores, "path")
    assert h.is_consistent(codes).all()
    for row in range(40):
        assert codes[row].tolist() == brute_force_best_path(h, [s[row] for s in scores]).tolist()
    # with conditional scores P(class | parent) the joint is their product along the path
    cond = [rng.dirichlet(np.ones(n), size=40) for n in h.sizes]
    assert np.array_equal(h.decode_scores(scores, "path", conditional=cond), h.decode_scores(cond, "path"))


def test_every_decode_mode_but_argmax_gives_valid_paths(h):
    rng = np.random.default_rng(1)
    scores = [rng.random((200, n)) for n in h.sizes]
    for mode in ("path", "leaf", "top_down"):
        assert h.is_consistent(h.decode_scores(scores, mode)).all(), mode
    assert not h.is_consistent(h.decode_scores(scores, "argmax")).all()
    with pytest.raises(ValueError, match="decode must be one of path, leaf, top_down, argmax, not 'best'"):
        h.decode_scores(scores, "best")


def test_decoding_by_hand():
    # A = .9 and B = .85 at level 1; b1 (under B) = .8 beats a1 = .3 and a2 = .2 at level 2
    h = Hierarchy.from_paths([("A", "a1"), ("A", "a2"), ("B", "b1")])
    scores = [np.array([[0.9, 0.85]]), np.array([[0.3, 0.2, 0.8]])]
    assert h.decode_scores(scores, "argmax").tolist() == [[0, 2]]  # A > b1: not a path
    assert not h.is_consistent(h.decode_scores(scores, "argmax"))[0]
    assert h.decode_scores(scores, "top_down").tolist() == [[0, 0]]  # greedy: A, then its best child
    assert h.decode_scores(scores, "path").tolist() == [[1, 2]]  # .85 * .8 = .68 > .9 * .3 = .27
    assert h.decode_scores(scores, "leaf").tolist() == [[1, 2]]


# -- paths of different lengths ----------------------------------------------------------
@pytest.fixture
def ragged():
    """A > B ends at level 2 and also continues to A > B > C; F ends at level 1."""
    return Hierarchy.from_paths([("A", "B", "C"), ("A", "B"), ("A", "D", "E"), ("F",)])


def test_short_paths_continue_through_end_classes(ragged, tmp_path):
    assert ragged.levels == ((("A",), ("F",)), (("A", "B"), ("A", "D"), ("F", "")),
                             (("A", "B", ""), ("A", "B", "C"), ("A", "D", "E"), ("F", "", "")))
    assert ragged.variable_depth and not Hierarchy.from_paths([("A", "B")]).variable_depth
    assert ragged.class_counts == [2, 2, 2] and ragged.sizes == [2, 3, 4]
    assert [ragged.is_end(d).tolist() for d in range(3)] == [[False, False], [False, False, True],
                                                           [True, False, False, True]]
    assert [ragged.may_end(d).tolist() for d in range(3)] == [[1], [0], [1, 2]]  # F; A > B; both leaves
    assert ragged.names(2) == ["A > B", "A > B > C", "A > D > E", "F"]  # an end class shows the path it ends
    ragged.save(tmp_path / "h.json")
    assert Hierarchy.load(tmp_path / "h.json") == ragged
    assert json.loads((tmp_path / "h.json").read_text())["may_end"] == [[1], [0], [1, 2]]


def test_encode_decode_ragged(ragged):
    codes = ragged.encode([("A", "B"), ("F",), ("A", "B", "C")])
    assert codes.tolist() == [[0, 0, 0], [1, 2, 3], [0, 0, 1]]
    assert ragged.path_depths(codes).tolist() == [2, 1, 3]
    assert ragged.decode(codes) == [["A", "B"], ["F"], ["A", "B", "C"]]
    assert ragged.decode(codes, np.array([1, 0, 2])) == [["A"], [], ["A", "B"]]
    with pytest.raises(ValueError, match=r"row 0: label path \['A', 'B', 'C', 'X'\] has 4 levels, expected 1 to 3"):
        ragged.encode([("A", "B", "C", "X")])
    with pytest.raises(ValueError, match=r"row 0: label path \['A', 'B', 'C'\] has 3 levels, expected 2"):
        Hierarchy.from_paths([("A", "B")]).encode([("A", "B", "C")])


def test_empty_names_are_not_end_classes():
    with pytest.raises(ValueError, match=r"class \['A', '', 'C'\] has an empty class name"):
        Hierarchy(((("A",),), (("A", ""),), (("A", "", "C"),)))
    with pytest.raises(ValueError, match=r"class \[''\] has an empty class name"):
        Hierarchy(((("",),),))


def test_answers_stop_at_the_deepest_confident_level(ragged):
    """Hand-made scores: confidences are the level scores of the path's classes."""
    codes = ragged.encode([("A", "B"), ("F",), ("A", "B", "C"), ("A", "D", "E")])
    scores = [np.array([[.9, .1], [.2, .8], [.6, .4], [.7, .3]]),
              np.array([[.5, .4, .1], [.1, .1, .8], [.3, .3, .4], [.2, .45, .35]]),
              np.array([[.4, .1, .1, .4]] * 4)]
    assert ragged.confidences(codes, scores).tolist() == [[.9, .5, .4], [.8, .8, .4], [.6, .3, .1], [.7, .45, .1]]
    assert ragged.answers(codes, scores) == [[("A", .9), ("B", .5)], [("F", .8)], [("A", .6), ("B", .3), ("C", .1)],
                                             [("A", .7), ("D", .45), ("E", .1)]]
    # .45: A > B > C stops at A (B's .3 is below); A > D > E at D; the end class's .4 never counts
    assert ragged.answer_depths(codes, scores, .45).tolist() == [2, 1, 1, 2]
    assert ragged.answer_depths(codes, scores, [0, .85, .5, .75]).tolist() == [2, 0, 1, 0]
    # not monotone: the deepest level that clears it, with everything above
    assert ragged.answer_depths(codes[:1], [np.array([[.2, .8]]), np.array([[.6, 0, 0]]), scores[2][:1]], .5).tolist() == [2]
    for bad in (1.5, -0.1, float("nan"), "0.5", True, None):
        with pytest.raises(ValueError, match="threshold must be a number from 0 to 1, not "):
            ragged.answers(codes, scores, bad)


def test_answers_at_threshold_zero_keep_negative_margins(ragged):
    codes = ragged.encode([("A", "D", "E")])
    scores = [np.array([[1.0, -2.0]]), np.array([[-1.0, -0.5, -3.0]]), np.array([[-1.0, -1.0, -0.2, -1.0]])]
    assert ragged.answer_depths(codes, scores, 0).tolist() == [3]
