"""Adapted C-HMCNN: an MLP with sigmoid outputs over all classes, then the max-constraint module.

MCM: ŷ_A = max over B in descendants(A) ∪ {A} of h_B (M = ancestor matrix), so a parent
never scores below its children. Trained with MCLoss: BCE (summed over classes) on (1 − y)·MCM(h) + y·MCM(y ⊙ h),
computed on logits (σ is monotonic), which keeps the gradients of saturated outputs alive.
Per-level argmax is *not* guaranteed to be a valid path (ties and near-ties across branches).
"""
import torch
from torch import nn

from ktt.nn import TorchModel, multilabel_bce
from models.db_bhcn.db_bhcn import ACTS


class DBACHMCNN(TorchModel):
    defaults = {**TorchModel.defaults, "encoder_lr": 2e-5, "classifier_lr": 5e-4, "h_dropout": 0.7,
                "h_nonlinear": "relu", "h_hidden_dim": 512, "h_layer_count": 3}

    def build_head(self, hidden):
        p, h = self.params, self.hierarchy
        if p["h_nonlinear"] not in ACTS:
            raise ValueError(f"h_nonlinear must be one of {sorted(ACTS)}, not {p['h_nonlinear']!r}")
        if p["h_layer_count"] < 1:
            raise ValueError(f"h_layer_count must be at least 1, not {p['h_layer_count']}")
        layers, width = [], hidden
        for _ in range(p["h_layer_count"] - 1):
            layers += [nn.Linear(width, p["h_hidden_dim"]), ACTS[p["h_nonlinear"]](), nn.Dropout(p["h_dropout"])]
            width = p["h_hidden_dim"]
        head = nn.Sequential(*layers, nn.Linear(width, h.n_classes))
        # additive mask: 0 where B is A or a descendant of A, else -1e9 (so B never wins the max)
        mask = (torch.as_tensor(h.ancestor_matrix()) - 1) * 1e9
        head.register_buffer("mask", mask.float(), persistent=False)
        return head

    def mcm(self, z):
        """The max-constraint module on logits: sigmoid is monotonic, so max of σ = σ of max."""
        return (z[:, None, :] + self.net_.head.mask[None]).amax(-1)

    def loss(self, logits, codes):
        y = self.multi_hot(codes)
        z = logits.float()
        # MCM(y ⊙ h) in logit space: non-positive classes are masked out (σ(-1e9) = 0)
        train_out = torch.where(y.bool(), self.mcm(z.masked_fill(~y.bool(), -1e9)), self.mcm(z))
        return multilabel_bce(train_out, y)

    def level_scores(self, logits):
        return self.split_levels(torch.sigmoid(self.mcm(logits.float())))
