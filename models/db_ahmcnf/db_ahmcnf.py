"""Adapted HMCN-F: a global flow of one layer per level, a local classifier branching off each.

Global layer i: act(LayerNorm(W_i [A_{i-1} ⊕ x])) (layer 1 sees x alone); local branch i:
transition layer + classifier over level i; a global classifier over all classes on the last
layer. Output ŷ = g · σ(global) + (1 − g) · σ(local), g = ``global_weight``.

Per-row loss = C · [mean_c BCE(local) + mean_c BCE(global) + λ_H Σ_(child, parent) max(0, ŷ_child − ŷ_parent)²],
C = number of classes: the paper's loss (BCE averaged over classes, the violation penalty summed
over parent-child pairs), multiplied by C so the positives' BCE gradient is not C times too weak
(written as BCE summed over classes + λ_H · C · Σ violations²). λ_H keeps its designed meaning.

Decoded by the best whole path (``decode=path``: the product of its classes' odds). Its scores are
the log-odds of ŷ, computed from the logits (:func:`hmcnf_log_odds`).
"""
import math

import torch
from torch import nn

from ktt.model import Interval
from ktt.nn import TorchModel, log_add_exp, log_sigmoid, multilabel_bce


class HMCNFHead(nn.Module):
    def __init__(self, hidden, sizes, global_hidden, local_hidden, dropout):
        super().__init__()
        ins = [hidden] + [global_hidden + hidden] * (len(sizes) - 1)
        self.flow = nn.ModuleList(nn.Sequential(nn.Linear(i, global_hidden), nn.LayerNorm(global_hidden), nn.ReLU(),
                                                nn.Dropout(dropout)) for i in ins)
        self.local = nn.ModuleList(nn.Sequential(nn.Linear(global_hidden, local_hidden), nn.ReLU(),
                                                 nn.Dropout(dropout), nn.Linear(local_hidden, n)) for n in sizes)
        self.glob = nn.Linear(global_hidden, sum(sizes))
        self.class_axes = {"glob.weight": ("all", None), "glob.bias": ("all",)}  # ktt.nn.transplant
        for d in range(len(sizes)):
            self.class_axes.update({f"local.{d}.3.weight": (d, None), f"local.{d}.3.bias": (d,)})

    def forward(self, x):
        a, local = None, []
        for layer, branch in zip(self.flow, self.local):
            a = layer(x if a is None else torch.cat([a, x], dim=-1))
            local.append(branch(a))
        return torch.cat(local, dim=-1), self.glob(a)  # logits: local (all levels), global


def hmcnf_output(local, glob, global_weight):
    """ŷ = g · σ(global) + (1 − g) · σ(local), over all classes."""
    return global_weight * torch.sigmoid(glob.float()) + (1 - global_weight) * torch.sigmoid(local.float())


def hmcnf_log_odds(local, glob, global_weight):
    """log(ŷ / (1 − ŷ)) of :func:`hmcnf_output`, from the logits: log ŷ and log(1 − ŷ) are each a
    log-sum of the two log-sigmoids (1 − σ(z) = σ(−z)), exact where ŷ rounds to 1 in float32."""
    glob, local = glob.float(), local.float()
    if global_weight in (0, 1):  # one sigmoid: its logit
        return glob if global_weight == 1 else local
    wg, wl = math.log(global_weight), math.log1p(-global_weight)
    return (log_add_exp(wg + log_sigmoid(glob), wl + log_sigmoid(local))
            - log_add_exp(wg + log_sigmoid(-glob), wl + log_sigmoid(-local)))


def hmcnf_loss(local, glob, target, pairs, global_weight, lambda_h):
    """Per-row HMCN-F loss, ``(batch,)``; ``pairs``: (2, n_pairs) global indices of (child, parent)."""
    y = hmcnf_output(local, glob, global_weight)
    child, parent = pairs
    violation = (y[:, child] - y[:, parent]).clamp(min=0).pow(2).sum(-1)
    return multilabel_bce(local, target) + multilabel_bce(glob, target) + lambda_h * target.shape[1] * violation


class DBAHMCNF(TorchModel):
    paths = "logits"  # independent sigmoids: a path is worth the product of its classes' odds
    defaults = {**TorchModel.defaults, "lambda_h": 0.05, "dropout": 0.25,
                "global_hidden": 384, "local_hidden": 384, "global_weight": 0.5}
    test_params = {**TorchModel.test_params, "global_hidden": 64, "local_hidden": 64}
    kept_on_update = TorchModel.kept_on_update | {"global_hidden", "local_hidden"}  # the head's shapes
    constraints = {**TorchModel.constraints, "lambda_h": Interval(0), "global_hidden": Interval(1),
                   "local_hidden": Interval(1), "global_weight": Interval(0, 1)}

    def build_head(self, hidden):
        p, h = self.params, self.hierarchy
        head = HMCNFHead(hidden, h.sizes, p["global_hidden"], p["local_hidden"], p["dropout"])
        pairs = [(o + c, h.offsets[d - 1] + par) for d, o in enumerate(h.offsets) if d
                 for c, par in enumerate(h.parent_of(d))]
        head.register_buffer("pairs", torch.as_tensor(pairs).T.contiguous(), persistent=False)
        return head

    def loss(self, out, codes):
        p = self.params
        return hmcnf_loss(*out, self.multi_hot(codes), self.net_.head.pairs, p["global_weight"], p["lambda_h"])

    def level_scores(self, out):
        return self.split_levels(hmcnf_log_odds(*out, self.params["global_weight"]))
