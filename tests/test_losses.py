"""Every head's loss against a value computed by hand on tiny tensors, per row and batch-independent.

The tiny hierarchy: level 1 {A, B}; level 2 {a1, a2} under A and {b1} under B. Global class order
A, B, a1, a2, b1 (offsets 0, 2).
"""
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ktt import registry
from ktt.hierarchy import Hierarchy
from ktt.nn import Tree
from models.db_achmcnn.db_achmcnn import mc_loss, mcm
from models.db_ahmcnf.db_ahmcnf import hmcnf_loss
from models.db_bhcn.db_bhcn import bhcn_level_loss
from models.db_bhcn_awx.db_bhcn_awx import awx_bce, awx_log

H = Hierarchy.from_paths([("A", "a1"), ("A", "a2"), ("B", "b1")])
TORCH_MODELS = ["db_linear", "db_bhcn", "db_bhcn_awx", "db_ahmcnf", "db_achmcnn"]


def sig(x):
    return 1 / (1 + math.exp(-x))


def softmax(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def bce(p, y):
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


# -- BHCN ---------------------------------------------------------------------------------
def bhcn(z1, z2, codes, gamma_l=-0.1, lambda_l=1.0, lambda_h=0.7):
    logp = [t(*z1).log_softmax(-1), t(*z2).log_softmax(-1)]
    parents = [torch.as_tensor(H.parent_of(d)) for d in range(2)]
    return bhcn_level_loss(logp, torch.tensor(codes), gamma_l, lambda_l, lambda_h, parents)


def test_bhcn_by_hand():
    # true path (B, b1); level 2 prefers a2 (child of A): the hierarchical term asks level 1
    # for A, weighted by f = 1 - (−log p(b1) − min) / (max − min) over the row's level-2 classes
    z1, z2 = [1.0, 0.0], [0.0, 2.0, 1.0]
    p1, p2 = softmax(z1), softmax(z2)
    neg = [-math.log(p) for p in p2]
    f = 1 - (neg[2] - min(neg)) / (max(neg) - min(neg))
    assert f == pytest.approx(0.5)
    w1, w2 = 1 - 0.1, 1 + 0.1  # w = 1 − linspace(−γ, γ, 2), γ = −0.1
    expected = 1.0 * (w1 * -math.log(p1[1]) + w2 * -math.log(p2[2])) + 0.7 * f * -math.log(p1[0])
    assert bhcn([z1], [z2], [[1, 2]]).item() == pytest.approx(expected, rel=1e-6)


def bhcn_reference(z, codes, parent, gamma_l, lambda_l, lambda_h):
    """BHCN's per-row loss for one row, written from models.md with plain floats."""
    depth = len(z)
    logp = [[math.log(p) for p in softmax(zi)] for zi in z]
    w = [1 - (-gamma_l + 2 * gamma_l * i / (depth - 1)) for i in range(depth)]
    loss = lambda_l * sum(w[i] * -logp[i][codes[i]] for i in range(depth))
    for i in range(depth - 1):
        neg = [-v for v in logp[i + 1]]
        f = 1 - (neg[codes[i + 1]] - min(neg)) / max(max(neg) - min(neg), 1e-9)
        pred_child = max(range(len(z[i + 1])), key=lambda c: z[i + 1][c])
        loss += lambda_h * f * -logp[i][parent[i + 1][pred_child]]
    return loss


def test_bhcn_three_levels_against_the_written_formula():
    """Three levels (the two-level cases cannot tell level i + 1 from level i - 1), logits close
    together (max - min of -log p under 1)."""
    h3 = Hierarchy.from_paths([("A", "a", "x"), ("A", "a", "y"), ("A", "b", "z"), ("B", "c", "w")])
    gen = torch.Generator().manual_seed(3)
    z = [0.3 * torch.randn(4, n, generator=gen) for n in h3.sizes]
    codes = torch.tensor([[0, 0, 1], [0, 1, 2], [1, 2, 3], [0, 0, 0]])
    parents = [torch.as_tensor(h3.parent_of(d)) for d in range(3)]
    got = bhcn_level_loss([zi.log_softmax(-1) for zi in z], codes, 0.2, 0.9, 0.7, parents)
    want = [bhcn_reference([zi[r].tolist() for zi in z], codes[r].tolist(), [p.tolist() for p in parents],
                           0.2, 0.9, 0.7) for r in range(4)]
    assert got.tolist() == pytest.approx(want, rel=1e-5)


def test_bhcn_f_is_per_row():
    # one row whose true child is its most likely class: f = 1 whatever else is in the batch
    z2 = [0.0, 2.0, 1.0]
    p1, p2 = softmax([0.3, 0.0]), softmax(z2)
    alone = bhcn([[0.3, 0.0]], [z2], [[0, 1]]).item()
    expected = 0.9 * -math.log(p1[0]) + 1.1 * -math.log(p2[1]) + 0.7 * 1.0 * -math.log(p1[0])
    assert alone == pytest.approx(expected, rel=1e-6)
    both = bhcn([[0.3, 0.0], [2.0, -1.0]], [z2, [3.0, 0.0, 0.0]], [[0, 1], [1, 2]])
    assert both[0].item() == pytest.approx(alone, rel=1e-6)


# -- AWX ----------------------------------------------------------------------------------
TREE = Tree.of(H)


def awx(leaf_logits, norm):
    return awx_log(t(*leaf_logits), TREE, norm)


def test_awx_propagation_and_bce_by_hand():
    z = [0.0, 1.0, -2.0]  # leaves a1, a2, b1
    s = [sig(v) for v in z]
    y_hat = [min(1.0, (s[0] ** 2 + s[1] ** 2) ** 0.5), s[2], s[0], s[1], s[2]]  # n = 2: A, B, a1, a2, b1
    assert awx([z], 2.0).exp()[0].tolist() == pytest.approx(y_hat, rel=1e-5)
    assert awx([z], 0.0).exp()[0].tolist() == pytest.approx([max(s[0], s[1]), s[2], *s], rel=1e-5)
    assert awx([z], 1.0).exp()[0].tolist() == pytest.approx([s[0] + s[1], s[2], *s], rel=1e-5)  # unclipped
    target = [1, 0, 1, 0, 0]  # path (A, a1)
    expected = sum(bce(p, y) for p, y in zip(y_hat, target))
    assert awx_bce(t(z), TREE, 2.0, t(target)).item() == pytest.approx(expected, rel=1e-5)


def test_awx_keeps_gradient_where_sigmoid_saturates():
    # σ(40) is 1.0 in float32: a wrong but confident leaf must still be pushed down
    logits = t([40.0, 0.0, 0.0]).requires_grad_()
    loss = awx_bce(logits, TREE, 5.0, t([0, 1, 0, 0, 1]))  # true path (B, b1); a1 and A are wrong
    loss.sum().backward()
    assert torch.isfinite(loss).all() and loss.item() > 40  # −log(1 − σ(40)) = 40 for the leaf alone
    assert logits.grad[0, 0] > 0.99  # the leaf's own BCE gradient, σ(40) − 0
    # an inner class overshooting 1 (two confident leaves under A, n = 1) still gets a bounded push down
    logits = t([3.0, 3.0, 0.0]).requires_grad_()
    loss = awx_bce(logits, TREE, 1.0, t([0, 1, 0, 0, 1]))
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logits.grad).all() and logits.grad[0, 0] > 1


# -- HMCN-F -------------------------------------------------------------------------------
def test_hmcnf_by_hand():
    local, glob = [0.5, -0.5, 2.0, -1.0, 0.0], [1.0, 0.0, -1.0, 0.5, 1.5]
    g, lam, target = 0.5, 0.05, [1, 0, 1, 0, 0]
    y = [g * sig(b) + (1 - g) * sig(a) for a, b in zip(local, glob)]
    pairs = [(2, 0), (3, 0), (4, 1)]  # (child, parent): a1-A, a2-A, b1-B
    violation = sum(max(0.0, y[c] - y[p]) ** 2 for c, p in pairs)
    assert violation > 0  # b1 scores above B here
    n = 5  # the paper's loss (BCE averaged over classes + λ_H Σ violations²), times n_classes
    expected = n * (sum(bce(sig(v), y_) for v, y_ in zip(local, target)) / n
                    + sum(bce(sig(v), y_) for v, y_ in zip(glob, target)) / n + lam * violation)
    got = hmcnf_loss(t(local), t(glob), t(target), torch.tensor(pairs).T, g, lam)
    assert got.item() == pytest.approx(expected, rel=1e-5)


# -- C-HMCNN ------------------------------------------------------------------------------
def test_mcm_by_hand():
    z = [0.1, -1.0, 0.5, 2.0, -3.0]  # A, B, a1, a2, b1
    assert mcm(t(z), TREE)[0].tolist() == pytest.approx([2.0, -1.0, 0.5, 2.0, -3.0])


def test_mcloss_by_hand():
    z = [0.1, -1.0, 0.5, 2.0, -3.0]
    target = [1, 0, 1, 0, 0]  # path (A, a1)
    # positives: MCM of y ⊙ h, so A takes max(A, a1) (a2 is off the path); negatives: MCM of h
    out = [max(z[0], z[2]), max(z[1], z[4]), z[2], z[3], z[4]]
    expected = sum(bce(sig(v), y) for v, y in zip(out, target))
    assert mc_loss(t(z), t(target), TREE).item() == pytest.approx(expected, rel=1e-5)
    assert expected != pytest.approx(sum(bce(sig(v), y) for v, y in zip(mcm(t(z), TREE)[0].tolist(), target)))


# -- level by level equals the dense formulas (a depth-7 tree with paths ending at every depth) ---
def deep_tree():
    import random

    rng, paths = random.Random(0), []
    for i in range(60):
        depth = rng.randint(1, 7)
        paths.append(tuple(f"c{rng.randint(0, 2)}" for _ in range(depth)))
    return Hierarchy.from_paths(paths)


def dense_mcm(z, h):
    """The original C-HMCNN formula: max over a (batch, classes, classes) masked tensor."""
    mask = (torch.as_tensor(h.ancestor_matrix()) - 1) * 1e9
    return (z[:, None, :] + mask[None]).amax(-1)


def dense_awx_log(leaf_logits, h, norm):
    """The original AWX formula over a (batch, classes, leaves) masked tensor."""
    ls = torch.nn.functional.logsigmoid(leaf_logits)[:, None, :] + \
        torch.where(torch.as_tensor(h.leaf_matrix()) > 0, 0.0, -math.inf)[None]
    return ls.amax(-1) if norm <= 0 else torch.logsumexp(norm * ls, dim=-1) / norm


def test_level_by_level_equals_dense_on_a_depth_7_tree():
    h = deep_tree()
    assert h.depth == 7 and h.variable_depth
    tree, g = Tree.of(h), torch.Generator().manual_seed(0)
    z = (torch.randn(4, h.n_classes, generator=g) * 3).requires_grad_()
    target = torch.zeros(4, h.n_classes)
    for i, leaf in enumerate(torch.randint(h.n_leaves, (4,), generator=g).tolist()):
        for d, c in enumerate(h.leaf_paths()[leaf]):
            target[i, h.offsets[d] + c] = 1
    torch.testing.assert_close(mcm(z, tree), dense_mcm(z, h))
    mask = (torch.as_tensor(h.ancestor_matrix()) - 1) * 1e9
    pos = target.bool()
    dense_loss = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.where(pos, dense_mcm(z.masked_fill(~pos, -1e9), h), dense_mcm(z, h)), target, reduction="none").sum(-1)
    torch.testing.assert_close(mc_loss(z, target, tree), dense_loss)
    grad = torch.autograd.grad(mc_loss(z, target, tree).sum(), z)[0]
    torch.testing.assert_close(grad, torch.autograd.grad(dense_loss.sum(), z)[0])
    assert mask.shape == (h.n_classes, h.n_classes)
    leaf = (torch.randn(4, h.n_leaves, generator=g) * 4).requires_grad_()
    for norm in (0.0, 1.0, 5.0):
        torch.testing.assert_close(awx_log(leaf, tree, norm), dense_awx_log(leaf, h, norm))
        got = torch.autograd.grad(awx_log(leaf, tree, norm).sum(), leaf)[0]
        torch.testing.assert_close(got, torch.autograd.grad(dense_awx_log(leaf, h, norm).sum(), leaf)[0])
    p = leaf.softmax(-1)
    torch.testing.assert_close(tree.from_leaves(p, "sum"), p @ torch.as_tensor(h.leaf_matrix()).T)


# -- every model: per-row losses, batch-independent, nothing CUDA autocast refuses -----------
@pytest.fixture(scope="module", params=TORCH_MODELS)
def tiny_model(request, bb300, tiny_encoder):
    cls = registry.get(request.param)
    params = {k: v for k, v in {"h_hidden_dim": 16, "global_hidden": 16, "local_hidden": 16}.items()
              if k in cls.defaults}
    model = cls(bb300["train"].hierarchy, encoder=tiny_encoder, **params)
    model._build()
    model.net_.eval()  # no dropout: the same rows must give the same outputs
    return model


def test_losses_are_per_row_and_batch_independent(tiny_model, bb300):
    texts, codes = bb300["train"].texts[:8], torch.as_tensor(bb300["train"].codes[:8])
    with torch.no_grad():
        whole = tiny_model.loss(tiny_model.net_(*tiny_model._batch(texts)), codes)
        halves = torch.cat([tiny_model.loss(tiny_model.net_(*tiny_model._batch(texts[i:i + 4])), codes[i:i + 4])
                            for i in (0, 4)])
        one = tiny_model.loss(tiny_model.net_(*tiny_model._batch(texts[5:6])), codes[5:6])
    assert whole.shape == (8,) and torch.isfinite(whole).all()
    torch.testing.assert_close(whole, halves, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(whole[5:6], one, rtol=1e-4, atol=1e-5)


def test_scores_are_per_row(tiny_model, bb300):
    """A row's per-level scores do not depend on the other rows of its batch."""
    texts = bb300["train"].texts[:8]
    with torch.no_grad():
        whole = tiny_model.level_scores(tiny_model.net_(*tiny_model._batch(texts)))
        halves = [tiny_model.level_scores(tiny_model.net_(*tiny_model._batch(texts[i:i + 4]))) for i in (0, 4)]
    for d, level in enumerate(whole):
        torch.testing.assert_close(level, torch.cat([h[d] for h in halves]), rtol=1e-4, atol=1e-5)


# CUDA autocast raises on these (torch.amp docs: "unsafe to autocast")
REFUSED = {"binary_cross_entropy", "binary_cross_entropy_backward"}


class OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func._overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_no_op_that_cuda_autocast_refuses(tiny_model, bb300):
    texts, codes = bb300["train"].texts[:4], torch.as_tensor(bb300["train"].codes[:4])
    with OpRecorder() as rec:
        loss = tiny_model.loss(tiny_model.net_(*tiny_model._batch(texts)), codes).mean()
        loss.backward()
        tiny_model.level_scores(tiny_model.net_(*tiny_model._batch(texts)))
    assert "addmm" in rec.ops or "mm" in rec.ops  # the recorder sees the ops
    assert not rec.ops & REFUSED


def test_default_decode_gives_valid_paths(tiny_model, bb300):
    h = bb300["test"].hierarchy
    assert tiny_model.params["decode"] in ("path", "leaf") and tiny_model.consistent
    assert h.is_consistent(tiny_model.predict(bb300["test"].texts[:50])).all()


def test_model_losses_wire_their_formulas_with_their_own_parameters(bb300, tiny_encoder):
    """Each model's ``loss`` is its formula, fed the model's hyperparameters and hierarchy."""
    h = bb300["train"].hierarchy
    codes = torch.as_tensor(bb300["train"].codes[:6])
    z = [torch.randn(6, n, generator=torch.Generator().manual_seed(d)) for d, n in enumerate(h.sizes)]
    logp = [zi.log_softmax(-1) for zi in z]
    parents = [torch.as_tensor(h.parent_of(d)) for d in range(h.depth)]
    target = torch.zeros(6, h.n_classes)
    for i, row in enumerate(codes.tolist()):
        for d, c in enumerate(row):
            target[i, h.offsets[d] + c] = 1

    def built(name, **params):
        model = registry.get(name)(h, encoder=tiny_encoder, **params)
        model._build()
        return model

    torch.testing.assert_close(built("db_linear").loss(z[-1], codes),
                               torch.nn.functional.cross_entropy(z[-1], codes[:, h.depth - 1], reduction="none"))
    torch.testing.assert_close(built("db_bhcn", gamma_l=0.2, lambda_l=0.9, lambda_h=0.3).loss(z, codes),
                               bhcn_level_loss(logp, codes, 0.2, 0.9, 0.3, parents))
    torch.testing.assert_close(built("db_bhcn_awx", gamma_l=0.2, lambda_l=0.9, awx_norm=3.0).loss(z, codes),
                               awx_bce(z[-1], Tree.of(h), 3.0, target) + bhcn_level_loss(logp, codes, 0.2, 0.9, 0, []))
