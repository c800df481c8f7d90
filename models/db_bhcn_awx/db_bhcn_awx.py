"""BHCN levels with an AWX output layer over sigmoid leaf scores.

ŷ_j = min(1, (Σ_leaves (R_jl σ(z_l))^n)^(1/n)) for every class j (n = ``awx_norm``; 0 means
max, the paper's other variant; n >= 1 is the paper's n-norm, 0 < n < 1 a generalised mean that is
not a norm but is computed the same way). Per-row loss = BCE(ŷ, multi-hot path) summed over classes + λ_L Σ_i w_i NLL_i
(the BHCN per-level term, no hierarchical term).

ŷ and the BCE are computed in log space (log σ(z) = −softplus(−z), then a log-sum-exp over each
class's leaves; a leaf's BCE on its logit): a confident leaf keeps an exact, non-zero gradient
where σ(z) rounds to 1 in float32, and no op runs that CUDA autocast refuses
(``binary_cross_entropy`` on probabilities). Where the n-norm overshoots 1 for a *negative*
inner class, the clip passes the gradient straight through (the class is still pushed down);
for a positive class the clip means "already right". Its scores are the log-odds of ŷ
(:func:`awx_log_odds`).
"""
import math

import torch
from torch import nn

from ktt.model import Interval
from ktt.nn import TorchModel, Tree, log_sigmoid, multilabel_bce
from models.db_bhcn.db_bhcn import ACTS, BHCNHead, bhcn_level_loss

#: an inner class's log(1 − ŷ) is evaluated at ŷ ≤ 1 − 1e-4 (bounded loss and gradient when it overshoots)
_LOG_MAX_NEG = math.log1p(-1e-4)


def awx_log(leaf_logits: torch.Tensor, tree: Tree, norm: float) -> torch.Tensor:
    """log of the unclipped AWX output, ``(batch, n_classes)``: per class, the max (n <= 0) or
    (1/n) log Σ exp(n log σ(z_l)) over the leaves l at or below it, level by level over ``tree``."""
    ls = log_sigmoid(leaf_logits.float())
    return tree.from_leaves(ls, "amax") if norm <= 0 else tree.from_leaves(norm * ls, "logsumexp") / norm


def awx_log_odds(log_y: torch.Tensor, leaf_logits: torch.Tensor) -> torch.Tensor:
    """log(ŷ / (1 − ŷ)) of every class from ``log_y`` (:func:`awx_log`, at most 0): a leaf's ŷ is
    σ(z), so its logit; an inner class's log(1 − ŷ) is log(−expm1(log ŷ)), floored at log(1e-30)
    where ŷ is 1 (the clip, or float32)."""
    n_leaves = leaf_logits.shape[1]
    inner = log_y[:, :-n_leaves]
    # torch.expm1 does not export to ONNX, and exp(x) - 1 loses x near 0: its series there
    expm1 = torch.where(inner > -0.1, inner * (1 + inner / 2 * (1 + inner / 3 * (1 + inner / 4 * (1 + inner / 5)))),
                        torch.exp(inner) - 1)
    return torch.cat([inner - torch.log((-expm1).clamp(min=1e-30)), leaf_logits.float()], dim=1)


def awx_bce(leaf_logits: torch.Tensor, tree: Tree, norm: float, target: torch.Tensor) -> torch.Tensor:
    """Per-row BCE of ŷ = min(1, AWX) against a multi-hot target, summed over classes.

    The leaves (the last ``n_leaves`` classes) have ŷ = σ(z): their BCE is taken on the logits,
    exact at any confidence. Inner classes use log ŷ; where ŷ overshoots 1 on a negative class the
    cap passes the gradient straight through.
    """
    n_leaves = leaf_logits.shape[1]
    log_y = awx_log(leaf_logits, tree, norm)[:, :-n_leaves]
    inner_t, leaf_t = target[:, :-n_leaves], target[:, -n_leaves:]
    capped = log_y - (log_y - log_y.clamp(max=_LOG_MAX_NEG)).detach()  # value capped, gradient straight through
    inner = inner_t * -log_y.clamp(max=0.0) + (1 - inner_t) * -torch.log(-torch.expm1(capped))
    return inner.sum(-1) + multilabel_bce(leaf_logits, leaf_t)


class DBBHCNAWX(TorchModel):
    paths = "logits"  # independent sigmoids: a path is worth the product of its classes' odds
    defaults = {**TorchModel.defaults, "gamma_l": -0.34, "lambda_l": 0.73, "dropout": 0.47,
                "act": "relu", "awx_norm": 5.0, "level_width": 384}
    kept_on_update = TorchModel.kept_on_update | {"level_width", "act"}  # the head's shapes
    constraints = {**TorchModel.constraints, "act": tuple(ACTS), "lambda_l": Interval(0), "awx_norm": Interval(0),
                   "level_width": Interval(1)}

    def build_head(self, hidden):
        p = self.params
        head = BHCNHead(hidden, self.hierarchy.sizes, p["dropout"], p["act"], p["level_width"])
        Tree.attach(head, self.hierarchy)
        return head

    def _log_y(self, z):
        return awx_log(z[-1], Tree.on(self.net_.head), self.params["awx_norm"])

    def loss(self, z, codes):
        p = self.params
        logp = [zi.float().log_softmax(-1) for zi in z]
        return (awx_bce(z[-1], Tree.on(self.net_.head), p["awx_norm"], self.multi_hot(codes))
                + bhcn_level_loss(logp, codes, p["gamma_l"], p["lambda_l"], 0.0, []))

    def level_scores(self, z):
        return self.split_levels(awx_log_odds(self._log_y(z).clamp(max=0.0), z[-1]))
