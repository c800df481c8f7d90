"""Encoder + dropout + one linear layer over the leaf classes, cross-entropy.

Predictions are always valid paths: the leaf is predicted, ancestors follow from it. Level
scores are the leaf probabilities summed under each ancestor, so a leaf's probability *is* its
whole path's joint score and ``decode=leaf`` (the default here) is the joint-path decoding.
"""
import torch
from torch import nn

from ktt.nn import TorchModel, Tree


class DBLinear(TorchModel):
    paths = "leaf"  # the softmax over leaves is the distribution over paths
    defaults = {**TorchModel.defaults, "dropout": 0.25, "decode": "leaf"}

    def build_head(self, hidden):
        head = nn.Sequential(nn.Dropout(self.params["dropout"]), nn.Linear(hidden, self.hierarchy.n_leaves))
        leaves = self.hierarchy.depth - 1
        head.class_axes = {"1.weight": (leaves, None), "1.bias": (leaves,)}  # ktt.nn.transplant
        Tree.attach(head, self.hierarchy)
        return head

    def loss(self, logits, codes):
        return nn.functional.cross_entropy(logits.float(), codes[:, -1], reduction="none")

    def level_scores(self, logits):
        return self.split_levels(Tree.on(self.net_.head).from_leaves(logits.float().softmax(-1), "sum"))
