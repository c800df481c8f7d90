"""Property tests (Hypothesis) of the formulas: metrics, decoders, the max-constraint module.

Random trees and random scores; each property is checked against sklearn or against a
definition written out plainly here, never against the code under test.
"""
import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, f1_score

from ktt.hierarchy import Hierarchy
from ktt.metrics import evaluate
from ktt.nn import Tree
from models.db_achmcnn.db_achmcnn import mcm
from models.db_bhcn.db_bhcn import bhcn_level_loss

SETTINGS = settings(deadline=None)  # case counts: the profiles in conftest.py


@st.composite
def trees(draw, max_depth=4):
    """A random hierarchy: 1-4 levels, 1-4 children per class (names repeat across parents)."""
    depth = draw(st.integers(1, max_depth))
    paths = [()]
    for _ in range(depth):
        paths = [p + (f"c{i}",) for p in paths for i in range(draw(st.integers(1, 4)))]
    return Hierarchy.from_paths(paths)


@st.composite
def tree_and_codes(draw, n=st.integers(1, 30)):
    """A hierarchy and two ``(n, depth)`` code arrays: valid true paths, predictions of any class."""
    h = draw(trees())
    rows = draw(n)
    leaves = h.leaf_paths()
    y_true = leaves[draw(st.lists(st.integers(0, h.n_leaves - 1), min_size=rows, max_size=rows))]
    y_pred = np.stack([np.array(draw(st.lists(st.integers(0, s - 1), min_size=rows, max_size=rows)))
                       for s in h.sizes], axis=1)
    return h, y_true, y_pred


def ancestors(h, d, c):
    """Class ``c`` of level ``d`` and every class above it, as (level, index) pairs."""
    out = {(d, c)}
    for up in range(d, 0, -1):
        c = int(h.parent_of(up)[c])
        out.add((up - 1, c))
    return out


@SETTINGS
@given(tree_and_codes())
def test_metrics_against_definitions(case):
    h, y_true, y_pred = case
    m = evaluate(h, y_true, y_pred)
    for d in range(h.depth):
        t, p = y_true[:, d], y_pred[:, d]
        assert math.isclose(m[f"L{d + 1}_accuracy"], accuracy_score(t, p))
        assert math.isclose(m[f"L{d + 1}_micro_f1"], f1_score(t, p, average="micro"))
        assert math.isclose(m[f"L{d + 1}_macro_f1"], f1_score(t, p, average="macro", zero_division=0))
    assert math.isclose(m["path_accuracy"], np.mean([list(a) == list(b) for a, b in zip(y_true, y_pred)]))
    # Kiritchenko et al.: label sets augmented with all ancestors, pooled over rows
    inter = n_pred = n_true = 0
    for t, p in zip(y_true, y_pred):
        ts = set().union(*(ancestors(h, d, int(c)) for d, c in enumerate(t)))
        ps = set().union(*(ancestors(h, d, int(c)) for d, c in enumerate(p)))
        inter, n_pred, n_true = inter + len(ts & ps), n_pred + len(ps), n_true + len(ts)
    hp, hr = inter / n_pred, inter / n_true
    assert math.isclose(m["h_precision"], hp) and math.isclose(m["h_recall"], hr)
    assert math.isclose(m["h_f1"], 2 * hp * hr / (hp + hr) if hp + hr else 0.0)
    broken = [any(h.parent_of(d)[r[d]] != r[d - 1] for d in range(1, h.depth)) for r in y_pred]
    assert math.isclose(m["violation_rate"], np.mean(broken))


@SETTINGS
@given(tree_and_codes(), st.data())
def test_decoders_give_valid_paths_and_path_is_the_joint_argmax(case, data):
    h, _, _ = case
    n = data.draw(st.integers(1, 8))
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    scores = [rng.random((n, s)) for s in h.sizes]
    for mode in ("path", "leaf", "top_down"):
        assert h.is_consistent(h.decode_scores(scores, mode)).all()
    codes = h.decode_scores(scores, "path")
    for row in range(n):
        joint = {leaf: sum(math.log(scores[d][row, c]) for d, c in enumerate(path))
                 for leaf, path in enumerate(h.leaf_paths())}
        best = max(joint.values())
        chosen = h.encode([h.levels[-1][codes[row, -1]]])[0]
        assert math.isclose(sum(math.log(scores[d][row, c]) for d, c in enumerate(chosen)), best, rel_tol=1e-9)
    # greedy: level by level, the best child of the class picked above
    greedy = h.decode_scores(scores, "top_down")
    for row in range(n):
        assert greedy[row, 0] == scores[0][row].argmax()
        for d in range(1, h.depth):
            kids = np.flatnonzero(h.parent_of(d) == greedy[row, d - 1])
            assert greedy[row, d] == kids[scores[d][row, kids].argmax()]


@SETTINGS
@given(trees(), st.integers(0, 2 ** 32 - 1))
def test_mcm_never_scores_a_parent_below_a_child(h, seed):
    z = torch.randn(5, h.n_classes, generator=torch.Generator().manual_seed(seed)) * 3
    y = mcm(z, Tree.of(h))
    for d in range(1, h.depth):
        child = torch.arange(h.sizes[d]) + h.offsets[d]
        parent = torch.as_tensor(h.parent_of(d)) + h.offsets[d - 1]
        assert (y[:, parent] >= y[:, child]).all()
    assert (y >= z).all()  # a class is one of its own descendants


@SETTINGS
@given(trees(), st.integers(0, 2 ** 32 - 1), st.integers(2, 9))
def test_bhcn_rows_do_not_depend_on_the_batch(h, seed, n):
    g = torch.Generator().manual_seed(seed)
    logp = [torch.randn(n, s, generator=g).log_softmax(-1) for s in h.sizes]
    codes = torch.as_tensor(h.leaf_paths()[torch.randint(h.n_leaves, (n,), generator=g).numpy()])
    parents = [torch.as_tensor(h.parent_of(d)) for d in range(h.depth)]
    whole = bhcn_level_loss(logp, codes, -0.1, 1.0, 0.7, parents)
    singles = torch.cat([bhcn_level_loss([lp[i:i + 1] for lp in logp], codes[i:i + 1], -0.1, 1.0, 0.7, parents)
                         for i in range(n)])
    torch.testing.assert_close(whole, singles)
    assert (whole >= 0).all()
