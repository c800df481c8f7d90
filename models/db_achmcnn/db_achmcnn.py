"""Adapted C-HMCNN: an MLP with sigmoid outputs over all classes, then the max-constraint module.

MCM: ŷ_A = max over B in descendants(A) ∪ {A} of h_B (M = ancestor matrix), so a parent never
scores below its children. Trained with MCLoss: per row, BCE summed over classes on
(1 − y)·MCM(h) + y·MCM(y ⊙ h). Both run on logits (σ is monotonic, so max of σ = σ of max, and
σ(−∞) = 0 = y ⊙ h off the true path), which keeps the gradients of saturated outputs alive.

Consistent scores do not make per-level argmax a path: with A = .9, B = .85 at level 1 and
b1 = .8 (a child of B) above every child of A, argmax picks A then b1. Decoded by the best whole
path (``decode=path``: the product of its classes' odds), which is always in the tree. Its scores
are the logits after MCM (σ's log-odds: exact where σ rounds to 1 in float32).
"""
import torch
from torch import nn

from ktt.model import Interval
from ktt.nn import TorchModel, Tree, multilabel_bce
from models.db_bhcn.db_bhcn import ACTS


def mcm(z: torch.Tensor, tree: Tree) -> torch.Tensor:
    """Max-constraint module on logits: each class's max over itself and its descendants,
    computed level by level (``Tree.subtree_max``, O(batch x classes))."""
    return tree.subtree_max(z)


def mc_loss(z: torch.Tensor, target: torch.Tensor, tree: Tree) -> torch.Tensor:
    """Per-row MCLoss, ``(batch,)``: BCE on (1 − y)·MCM(h) + y·MCM(y ⊙ h), h = σ(z)."""
    positive = target.bool()
    out = torch.where(positive, mcm(z.masked_fill(~positive, -1e9), tree), mcm(z, tree))
    return multilabel_bce(out, target)


class DBACHMCNN(TorchModel):
    paths = "logits"  # independent sigmoids: a path is worth the product of its classes' odds
    defaults = {**TorchModel.defaults, "h_dropout": 0.7, "h_nonlinear": "relu", "h_hidden_dim": 512, "h_layer_count": 3}
    test_params = {**TorchModel.test_params, "h_hidden_dim": 64}
    kept_on_update = TorchModel.kept_on_update | {"h_hidden_dim", "h_layer_count", "h_nonlinear"}  # the head's shapes
    constraints = {**TorchModel.constraints, "h_nonlinear": tuple(ACTS), "h_dropout": Interval(0, 1, "left"),
                   "h_hidden_dim": Interval(1), "h_layer_count": Interval(1)}

    def build_head(self, hidden):
        p, h = self.params, self.hierarchy
        layers, width = [], hidden
        for _ in range(p["h_layer_count"] - 1):
            layers += [nn.Linear(width, p["h_hidden_dim"]), ACTS[p["h_nonlinear"]](), nn.Dropout(p["h_dropout"])]
            width = p["h_hidden_dim"]
        head = nn.Sequential(*layers, nn.Linear(width, h.n_classes))
        head.class_axes = {f"{len(layers)}.weight": ("all", None), f"{len(layers)}.bias": ("all",)}  # ktt.nn.transplant
        Tree.attach(head, h)
        return head

    def loss(self, logits, codes):
        return mc_loss(logits.float(), self.multi_hot(codes), Tree.on(self.net_.head))

    def level_scores(self, logits):
        return self.split_levels(mcm(logits.float(), Tree.on(self.net_.head)))
