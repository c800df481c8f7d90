"""BHCN: one head per level, each fed the encoder output and the previous level's activations.

z_1 = W_1 x;  z_i = W_i [dropout(LayerNorm(act(z_{i-1}))) ⊕ x];  outputs LogSoftmax(z_i).
A level wider than ``level_width`` classes is first projected to that width (P_i, no bias) before
it feeds the next: W_i [P_i dropout(LayerNorm(act(z_{i-1}))) ⊕ x], so the head's size grows with
the number of classes, not with the product of two levels' sizes (at 5,600 categories: 22M
weights instead of 87M). A deliberate difference from the spec, which has no P_i; levels of at
most ``level_width`` classes (BigBasket's, CLINC150's) are exactly the spec's.
Per-row loss = λ_L Σ_i w_i NLL(z_i, y_i) + λ_H Σ_{i<D} f_i · NLL(z_i, parent(argmax z_{i+1})),
w = 1 − linspace(−γ_L, γ_L, D); f_i = 1 − (−log p_{i+1} min-max-normalised over the classes of
level i+1 *within the row*, read at the true child): 1 when the true child is the row's most
likely class, 0 when it is the least likely, so the hierarchical term fades when the child
prediction it relies on is itself wrong. f_i is a weight (no gradient flows through it).

Decoded by the best whole path (``decode=path``: the product of the per-level probabilities).
"""
import torch
from torch import nn

from ktt.model import Interval
from ktt.nn import TorchModel

ACTS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class BHCNHead(nn.Module):
    def __init__(self, hidden: int, sizes: list[int], dropout: float, act: str, width: int):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.act = ACTS[act]()
        self.first = nn.Linear(hidden, sizes[0])
        self.norms = nn.ModuleList(nn.LayerNorm(n) for n in sizes[:-1])
        # Identity holds no weights: heads over narrow levels keep the spec's layers and checkpoints
        self.down = nn.ModuleList(nn.Linear(n, width, bias=False) if n > width else nn.Identity() for n in sizes[:-1])
        self.levels = nn.ModuleList(nn.Linear(min(n, width) + hidden, m) for n, m in zip(sizes[:-1], sizes[1:]))
        # which level's classes each axis indexes (ktt.nn.transplant): level d's outputs, its
        # LayerNorm, and level d + 1's inputs (level d's classes then the features, unless projected)
        self.class_axes = {"first.weight": (0, None), "first.bias": (0,)}
        for d, n in enumerate(sizes[:-1]):
            self.class_axes.update({f"norms.{d}.weight": (d,), f"norms.{d}.bias": (d,), f"levels.{d}.bias": (d + 1,),
                                    f"levels.{d}.weight": (d + 1, None if n > width else d)})
            if n > width:
                self.class_axes[f"down.{d}.weight"] = (None, d)

    def forward(self, x):
        x = self.drop(x)
        z = [self.first(x)]
        for norm, down, lin in zip(self.norms, self.down, self.levels):
            z.append(lin(torch.cat([down(self.drop(norm(self.act(z[-1])))), x], dim=-1)))
        return z  # logits per level


def bhcn_level_loss(logp, codes, gamma_l, lambda_l, lambda_h, parents):
    """Per-row BHCN loss, ``(batch,)``, from per-level log-probabilities ``logp[i]`` (batch, n_i).

    ``parents[i]`` maps each class of level i to its parent's index at level i - 1.
    """
    depth = len(logp)
    w = 1 - torch.linspace(-gamma_l, gamma_l, depth, device=codes.device)
    nll = [-lp.gather(1, codes[:, i:i + 1]).squeeze(1) for i, lp in enumerate(logp)]
    loss = lambda_l * sum(w[i] * nll[i] for i in range(depth))
    for i in range(depth - 1 if lambda_h else 0):
        neg = -logp[i + 1].detach()
        lo, hi = neg.min(1).values, neg.max(1).values
        f = 1 - (nll[i + 1].detach() - lo) / (hi - lo).clamp(min=1e-9)
        parent_of_pred = parents[i + 1][logp[i + 1].argmax(1)]
        loss = loss + lambda_h * f * -logp[i].gather(1, parent_of_pred[:, None]).squeeze(1)
    return loss


class DBBHCN(TorchModel):
    defaults = {**TorchModel.defaults, "gamma_l": -0.1, "lambda_l": 1.0, "lambda_h": 0.7,
                "dropout": 0.3, "act": "relu", "level_width": 384}
    kept_on_update = TorchModel.kept_on_update | {"level_width", "act"}  # the head's shapes
    constraints = {**TorchModel.constraints, "act": tuple(ACTS), "lambda_l": Interval(0), "lambda_h": Interval(0),
                   "level_width": Interval(1)}

    def build_head(self, hidden):
        p = self.params
        head = BHCNHead(hidden, self.hierarchy.sizes, p["dropout"], p["act"], p["level_width"])
        for d in range(self.hierarchy.depth):
            head.register_buffer(f"parent{d}", torch.tensor(self.hierarchy.parent_of(d)), persistent=False)
        return head

    def _parents(self):
        return [getattr(self.net_.head, f"parent{d}") for d in range(self.hierarchy.depth)]

    def loss(self, z, codes):
        p = self.params
        logp = [zi.float().log_softmax(-1) for zi in z]
        return bhcn_level_loss(logp, codes, p["gamma_l"], p["lambda_l"], p["lambda_h"], self._parents())

    def level_scores(self, z):
        return [zi.float().softmax(-1) for zi in z]
