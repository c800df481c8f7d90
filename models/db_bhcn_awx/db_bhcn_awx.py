"""BHCN levels with an AWX output layer over sigmoid leaf scores.

ŷ_j = min(1, (Σ_leaves (R_jl σ(z_l))^n)^(1/n)) for every class j (n = ``awx_norm``;
n <= 0 means max). Trained with BCE on the global multi-hot target plus the BHCN per-level
term λ_L Σ w_i NLL_i. A parent's score is never below its children's, but the per-level
argmax is *not* guaranteed to be a valid path.
"""
import torch
from torch import nn

from ktt.nn import TorchModel
from models.db_bhcn.db_bhcn import BHCNHead, bhcn_level_loss


class DBBHCNAWX(TorchModel):
    defaults = {**TorchModel.defaults, "encoder_lr": 5.2e-5, "classifier_lr": 3.7e-4, "gamma_l": -0.34,
                "lambda_l": 0.73, "dropout": 0.47, "act": "relu", "awx_norm": 5.0}

    def build_head(self, hidden):
        head = BHCNHead(hidden, self.hierarchy.sizes, self.params["dropout"], self.params["act"])
        head.register_buffer("R", torch.as_tensor(self.hierarchy.leaf_matrix()), persistent=False)
        return head

    def awx(self, leaf_logits):
        s = torch.sigmoid(leaf_logits.float())[:, None, :] * self.net_.head.R[None]  # (batch, classes, leaves)
        n = self.params["awx_norm"]
        y = s.amax(-1) if n <= 0 else s.pow(n).sum(-1).clamp(min=1e-12).pow(1 / n)
        return y.clamp(max=1 - 1e-6)

    def loss(self, z, codes):
        p = self.params
        target = self.multi_hot(codes)
        bce = nn.functional.binary_cross_entropy(self.awx(z[-1]), target)
        logp = [zi.float().log_softmax(-1) for zi in z]
        return bce + bhcn_level_loss(logp, codes, p["gamma_l"], p["lambda_l"], 0.0, [])

    def level_scores(self, z):
        return self.split_levels(self.awx(z[-1]))
