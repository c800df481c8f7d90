"""Adapted HMCN-F: a global flow of one layer per level, a local classifier branching off each.

Global layer i: act(LayerNorm(W_i [A_{i-1} ⊕ x])) (layer 1 sees x alone); local branch i:
transition layer + classifier over level i; a global classifier over all classes on the last
layer. Output = g · σ(global) + (1 − g) · σ(local), g = ``global_weight``. Loss =
BCE(local) + BCE(global) (summed over classes) + λ_H Σ max(0, ŷ_child − ŷ_parent)². Per-level argmax is *not*
guaranteed to be a valid path.
"""
import torch
from torch import nn

from ktt.nn import TorchModel, multilabel_bce


class HMCNFHead(nn.Module):
    def __init__(self, hidden, sizes, global_hidden, local_hidden, dropout):
        super().__init__()
        ins = [hidden] + [global_hidden + hidden] * (len(sizes) - 1)
        self.flow = nn.ModuleList(nn.Sequential(nn.Linear(i, global_hidden), nn.LayerNorm(global_hidden), nn.ReLU(),
                                                nn.Dropout(dropout)) for i in ins)
        self.local = nn.ModuleList(nn.Sequential(nn.Linear(global_hidden, local_hidden), nn.ReLU(),
                                                 nn.Dropout(dropout), nn.Linear(local_hidden, n)) for n in sizes)
        self.glob = nn.Linear(global_hidden, sum(sizes))

    def forward(self, x):
        a, local = None, []
        for layer, branch in zip(self.flow, self.local):
            a = layer(x if a is None else torch.cat([a, x], dim=-1))
            local.append(branch(a))
        return torch.cat(local, dim=-1), self.glob(a)  # logits: local (all levels), global


class DBAHMCNF(TorchModel):
    defaults = {**TorchModel.defaults, "encoder_lr": 3e-5, "classifier_lr": 1e-3, "lambda_h": 0.05,
                "dropout": 0.25, "global_hidden": 384, "local_hidden": 384, "global_weight": 0.5}

    def build_head(self, hidden):
        p, h = self.params, self.hierarchy
        head = HMCNFHead(hidden, h.sizes, p["global_hidden"], p["local_hidden"], p["dropout"])
        # (child, parent) global index pairs for the violation penalty
        pairs = [(o + c, h.offsets[d - 1] + par) for d, o in enumerate(h.offsets) if d
                 for c, par in enumerate(h.parent_of(d))]
        head.register_buffer("pairs", torch.as_tensor(pairs).T.contiguous(), persistent=False)
        return head

    def combined(self, out):
        g = self.params["global_weight"]
        local, glob = out
        return g * torch.sigmoid(glob.float()) + (1 - g) * torch.sigmoid(local.float())

    def loss(self, out, codes):
        target = self.multi_hot(codes)
        y = self.combined(out)
        child, parent = self.net_.head.pairs
        violation = (y[:, child] - y[:, parent]).clamp(min=0).pow(2).sum(-1).mean()
        return multilabel_bce(out[0], target) + multilabel_bce(out[1], target) + self.params["lambda_h"] * violation

    def level_scores(self, out):
        return self.split_levels(self.combined(out))
