"""Adapted C-HMCNN: an MLP with sigmoid outputs over all classes, then the max-constraint module.

MCM: ŷ_A = max over B in descendants(A) ∪ {A} of h_B (M = ancestor matrix), so a parent
never scores below its children. Trained with MCLoss: BCE on (1 − y)·MCM(h) + y·MCM(y ⊙ h).
Per-level argmax is *not* guaranteed to be a valid path (ties and near-ties across branches).
"""
import torch
from torch import nn

from ktt.nn import TorchModel
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
        head.register_buffer("M", torch.as_tensor(h.ancestor_matrix()), persistent=False)
        return head

    def mcm(self, h):
        return (h[:, None, :] * self.net_.head.M[None]).amax(-1)

    def loss(self, logits, codes):
        y = self.multi_hot(codes)
        h = torch.sigmoid(logits.float())
        train_out = (1 - y) * self.mcm(h) + y * self.mcm(y * h)
        return nn.functional.binary_cross_entropy(train_out.clamp(1e-7, 1 - 1e-7), y)

    def level_scores(self, logits):
        return self.split_levels(self.mcm(torch.sigmoid(logits.float())))
