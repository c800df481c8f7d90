"""The label hierarchy: classes per level, parent links, and the matrices models need.

A class is a *path* (``("Food", "Pasta")``), not a name: the same name under two
parents is two classes. Classes are numbered level by level; ``offsets[i]`` is the
global index of level ``i``'s first class.

Paths of different lengths: a path that ends above the deepest level continues, inside the
hierarchy only, through *end* classes (``("Food", "Pasta", "")``: "the path ends at Pasta"), one
per level below its end. So every model sees a fixed-depth tree and learns "ends here" as a
choice at each node where a path may end, next to that node's real children. End classes never
appear outside: ``decode`` and ``answers`` cut a path at its first end class, the metrics leave
them out (see ``ktt.metrics``), and display names of an end class are the path it ends.
Fixed-depth data has no end classes, and everything is exactly as without them.
"""
from __future__ import annotations

import json
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import BadValue

SEP = " > "
END = ""  # the last part of an end class: the path ended one level up (never a class name)
DECODE_MODES = ("path", "leaf", "top_down", "argmax")
#: How a model's per-level scores score a whole path (:meth:`Hierarchy.path_scores`).
PATH_RULES = ("leaf", "joint", "logits", "log_odds")
_SURE = 1e-7   # sigmoid outputs are clipped to [1e-7, 1 - 1e-7] before their log-odds (float32 rounds to 0 and 1)


def check_threshold(value) -> float:
    """A stopping threshold in [0, 1] (a number, or one per text), or ``BadValue`` naming it."""
    values = np.atleast_1d(np.asarray(value, dtype=object))
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 <= v <= 1:
            raise BadValue(f"threshold must be a number from 0 to 1, not {v!r}")
    return value


@dataclass(frozen=True)
class Hierarchy:
    """Classes per level (each a full path tuple) and the parent of each class; ``descriptions``:
    words that describe some classes beyond their names (path -> text: ``ktt taxonomy add
    --describe``), read by a fit for the classes no training row has (``ktt.zeroshot``). Two
    hierarchies are equal when their classes are: descriptions never change a class."""

    levels: tuple[tuple[tuple[str, ...], ...], ...]
    descriptions: dict = field(default_factory=dict, compare=False, repr=False)
    _index: tuple[dict, ...] = field(init=False, repr=False, compare=False)
    _end: tuple[np.ndarray, ...] = field(init=False, repr=False, compare=False)
    _parents: tuple[np.ndarray, ...] = field(init=False, repr=False, compare=False)
    _cache: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not self.levels or any(len(lv) == 0 for lv in self.levels):
            raise BadValue("a hierarchy needs at least one level and one class per level")
        index = []
        for depth, lv in enumerate(self.levels, start=1):
            seen = {}
            for i, path in enumerate(lv):
                if len(path) != depth:
                    raise BadValue(f"class {SEP.join(path)!r} is at level {depth} but has {len(path)} parts")
                if path[0] == END or (depth > 1 and path[-2] == END and path[-1] != END):
                    raise BadValue(f"class {list(path)} has an empty class name")
                if path in seen:
                    raise BadValue(f"class {SEP.join(path)!r} appears twice at level {depth}")
                if depth > 1 and path[:-1] not in index[-1]:
                    raise BadValue(f"class {SEP.join(path)!r} has no parent {SEP.join(path[:-1])!r} at level {depth - 1}")
                seen[path] = i
            index.append(seen)
        for path in self.descriptions:
            if not isinstance(path, tuple) or path not in index[len(path) - 1 if 0 < len(path) <= len(index) else 0]:
                raise BadValue(f"a description is of {SEP.join(map(str, path))!r}, which is no class of the taxonomy")
        object.__setattr__(self, "_index", tuple(index))
        parents = [np.full(len(self.levels[0]), -1, dtype=np.int64)]
        for d in range(1, len(self.levels)):
            parents.append(np.array([index[d - 1][p[:-1]] for p in self.levels[d]], dtype=np.int64))
        object.__setattr__(self, "_parents", tuple(parents))
        object.__setattr__(self, "_cache", {})
        object.__setattr__(self, "_end", tuple(np.array([p[-1] == END for p in lv], dtype=bool)
                                               for lv in self.levels))

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_paths(cls, paths: Iterable[Sequence[str]]) -> "Hierarchy":
        """Build from label paths (of one or several lengths), classes sorted per level."""
        paths = [tuple(p) for p in paths]
        if not paths:
            raise BadValue("cannot build a hierarchy from zero label paths")
        depth = max(len(p) for p in paths)
        if min(len(p) for p in paths) == 0:
            raise BadValue("a label path needs at least one class")
        paths = {p + (END,) * (depth - len(p)) for p in paths}
        levels = tuple(tuple(sorted({p[: d + 1] for p in paths})) for d in range(depth))
        return cls(levels)

    # -- shape --------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.levels)

    @property
    def sizes(self) -> list[int]:
        return [len(lv) for lv in self.levels]

    @property
    def offsets(self) -> list[int]:
        return [0, *np.cumsum(self.sizes)[:-1].tolist()]

    @property
    def n_classes(self) -> int:
        return sum(self.sizes)

    @property
    def n_leaves(self) -> int:
        return self.sizes[-1]

    @property
    def variable_depth(self) -> bool:
        """True when some paths end above the deepest level."""
        return any(e.any() for e in self._end)

    @property
    def class_counts(self) -> list[int]:
        """Real classes per level (``sizes`` less the end classes)."""
        return [int((~e).sum()) for e in self._end]

    def is_end(self, level: int) -> np.ndarray:
        """Per class of ``level``: is it an end class (the path ended above)?"""
        return self._end[level]

    def may_end(self, level: int) -> np.ndarray:
        """Indices of the real classes of ``level`` at which a path may end."""
        if level == self.depth - 1:
            return np.flatnonzero(~self._end[level])
        ends = self.parent_of(level + 1)[self._end[level + 1]]
        return np.unique(ends[~self._end[level][ends]])

    def class_index(self, path: Sequence[str]) -> int | None:
        """The index of class ``path`` within its level (``len(path) - 1``), or None."""
        path = tuple(path)
        return self._index[len(path) - 1].get(path) if 0 < len(path) <= self.depth else None

    def names(self, level: int) -> list[str]:
        """Display names (full paths joined by ``' > '``) of one level's classes; an end class
        shows the path it ends."""
        return [SEP.join(x for x in p if x != END) for p in self.levels[level]]

    @property
    def leaf_names(self) -> list[str]:
        return self.names(self.depth - 1)

    def parent_of(self, level: int) -> np.ndarray:
        """Index (within level - 1) of the parent of every class at ``level``; -1 at level 0 (one
        array shared by every caller: read it, never write to it)."""
        return self._parents[level]

    def sum_up(self, leaf_values: np.ndarray, reduce=np.add) -> list[np.ndarray]:
        """``(n, n_leaves)`` values -> per level, ``(n, n_classes_at_level)``: each class's
        ``reduce`` (``np.add``, ``np.maximum``) over the leaves at or below it. Classes are sorted
        paths, so a parent's children are one contiguous run: one ``reduceat`` per level,
        O(n x classes), where a dense (classes x leaves) matrix costs O(n x classes x leaves)."""
        out = [np.asarray(leaf_values)]
        for d in range(self.depth - 1, 0, -1):
            out.insert(0, reduce.reduceat(out[0], self._sibling_starts(d), axis=1))
        return out

    def _sibling_starts(self, level: int) -> np.ndarray:
        """Where each parent's run of children starts among the classes of ``level`` (>= 1)."""
        return np.flatnonzero(np.diff(self._parents[level], prepend=-1))

    def sibling_runs(self, level: int) -> tuple[np.ndarray, np.ndarray]:
        """Per class of ``level``: where the run of its siblings (its parent's children, itself
        included; every class at level 0) starts and ends among the classes of ``level``."""
        n = self.sizes[level]
        if level == 0:
            return np.zeros(n, dtype=np.int64), np.full(n, n, dtype=np.int64)
        starts = self._sibling_starts(level)
        run = np.searchsorted(starts, np.arange(n), side="right") - 1
        return starts[run], np.r_[starts[1:], n][run]

    # -- encoding -----------------------------------------------------------------
    def encode(self, paths: Iterable[Sequence[str]]) -> np.ndarray:
        """Label paths -> ``(n, depth)`` class indices per level (a shorter path continues through
        end classes). Unknown paths raise."""
        leaf, pad = self._index[-1], self.depth
        out = []
        for row, p in enumerate(paths):  # a path is its leaf: one lookup per row, its ancestors by table
            p = tuple(p)
            i = leaf.get(p + (END,) * (pad - len(p))) if 0 < len(p) <= pad else None
            if i is None:
                if not 0 < len(p) <= pad:
                    raise BadValue(f"row {row}: label path {list(p)} has {len(p)} levels, expected "
                                   f"{self.depth if not self.variable_depth else f'1 to {self.depth}'}")
                raise BadValue(f"row {row}: label path {SEP.join(p)!r} is not in the hierarchy")
            out.append(i)
        return self.leaf_paths()[np.asarray(out, dtype=np.int64)].reshape(-1, self.depth)

    def decode(self, codes: np.ndarray, depths: np.ndarray | None = None) -> list[list[str]]:
        """``(n, depth)`` indices -> the class *name* at every level of the path, which ends at its
        first end class (or after ``depths[i]`` levels, when given: see :meth:`answer_depths`)."""
        codes = np.asarray(codes)
        if depths is None:
            depths = self.path_depths(codes)
        return [[self.levels[d][c][-1] for d, c in enumerate(row[:k])] for row, k in zip(codes, depths)]

    def path_depths(self, codes: np.ndarray) -> np.ndarray:
        """``(n,)``: how many levels each path has (the levels before its first end class)."""
        codes = np.asarray(codes)
        real = np.stack([~self._end[d][codes[:, d]] for d in range(self.depth)], axis=1)
        return np.where(real.all(axis=1), self.depth, np.argmin(real, axis=1))

    def confidences(self, codes: np.ndarray, scores: list[np.ndarray]) -> np.ndarray:
        """``(n, depth)``: each level's score of the class the path takes there."""
        rows = np.arange(len(codes))
        return np.stack([np.asarray(s)[rows, np.asarray(codes)[:, d]] for d, s in enumerate(scores)], axis=1)

    def answer_depths(self, codes: np.ndarray, scores: list[np.ndarray], threshold=0.0) -> np.ndarray:
        """``(n,)`` levels to answer: the path stops at its deepest level whose confidence is at least
        ``threshold`` (a number, or one per row); 0 when no level clears it. Never below the path's end."""
        return self.stop_depths(codes, self.confidences(codes, scores), threshold)

    def stop_depths(self, codes: np.ndarray, conf: np.ndarray, threshold, max_depth=None) -> np.ndarray:
        """:meth:`answer_depths` from the path's ``confidences``, never below ``max_depth`` (a
        number, or one per row; None: no cap), the levels a target precision holds at
        (``ktt.confidence.stop_for``)."""
        t = np.reshape(np.asarray(check_threshold(threshold), dtype=np.float64), (-1, 1))
        ok = (conf >= t) | (t <= 0)  # 0: never stop early (scores may be negative margins)
        cap = self.path_depths(codes)
        if max_depth is not None:
            cap = np.minimum(cap, [self.depth if k is None else k for k in np.atleast_1d(np.asarray(max_depth, object))])
        ok &= np.arange(self.depth)[None, :] < cap[:, None]
        return np.where(ok.any(axis=1), self.depth - np.argmax(ok[:, ::-1], axis=1), 0)

    def answers(self, codes: np.ndarray, scores: list[np.ndarray], threshold=0.0) -> list[list[tuple[str, float]]]:
        """Per row, ``(class name, confidence)`` at every level of the answered path (see
        :meth:`answer_depths`): the prediction as every front-end (``predict_paths``, the pyfunc,
        the service) returns it."""
        return self.answers_of(codes, self.confidences(codes, scores), threshold)

    def answers_of(self, codes: np.ndarray, conf: np.ndarray, threshold=0.0, max_depth=None) -> list[list[tuple[str, float]]]:
        """:meth:`answers` from the paths' ``(n, depth)`` :meth:`confidences` (``max_depth``: :meth:`stop_depths`)."""
        depths = self.stop_depths(codes, conf, threshold, max_depth)
        return [[(self.levels[d][c][-1], float(conf[i, d])) for d, c in enumerate(row[:k])]
                for i, (row, k) in enumerate(zip(np.asarray(codes), depths))]

    def leaf_paths(self) -> np.ndarray:
        """``(n_leaves, depth)`` indices of every leaf and its ancestors."""
        if "leaf_paths" not in self._cache:
            paths = np.empty((self.n_leaves, self.depth), dtype=np.int64)
            paths[:, -1] = np.arange(self.n_leaves)
            for d in range(self.depth - 1, 0, -1):
                paths[:, d - 1] = self._parents[d][paths[:, d]]
            self._cache["leaf_paths"] = paths
        return self._cache["leaf_paths"]

    def split_levels(self, scores: np.ndarray) -> list[np.ndarray]:
        """``(n, n_classes)`` scores over all classes -> one ``(n, n_i)`` slice per level."""
        return [scores[:, o:o + n] for o, n in zip(self.offsets, self.sizes)]

    def chain(self, conditional: list[np.ndarray]) -> list[np.ndarray]:
        """Per-level P(class | parent) -> per-level P(class) = P(parent) * P(class | parent)."""
        out = [conditional[0]]
        for d in range(1, self.depth):
            out.append(out[-1][:, self.parent_of(d)] * conditional[d])
        return out

    def path_log_scores(self, log_scores: list[np.ndarray]) -> np.ndarray:
        """``(n, n_leaves)``: for every leaf, the sum of ``log_scores`` along its path.

        A leaf has exactly one path, so summing top-down (each class adds its parent's total)
        scores every path of the tree in one pass over the classes: exhaustive search costs no
        more than reading the scores, and no beam is needed at any leaf count.
        """
        total = log_scores[0]
        for d in range(1, self.depth):
            total = total[:, self.parent_of(d)] + log_scores[d]
        return total

    def path_scores(self, scores: list[np.ndarray], rule: str = "joint") -> np.ndarray:
        """``(n, n_leaves)``: the log-score of every whole path (a path is its leaf), from a model's
        per-level ``scores`` by the model's ``rule``:

        ``leaf``: log of the leaf's own score, when the leaf level holds each path's probability
        (a softmax over leaves, or conditional probabilities already chained);
        ``joint``: the sum of log-scores along the path, when each level is a distribution of its
        own (per-level softmax heads): the product of the per-level probabilities;
        ``logits``: the sum of the scores along the path, when every class is an independent
        sigmoid s and its score is its log-odds log(s / (1 - s)) (its logit, or computed from
        logits): P(exactly this path's classes are on) is proportional to prod_path s *
        prod_other (1 - s), which is proportional to the product of the path's odds;
        ``log_odds``: the same from the sigmoids s themselves (exports from before ``logits``):
        a float32 sigmoid rounds to 1 above a logit of about 16.6, so those classes tie there.
        """
        with np.errstate(divide="ignore"):  # a path of probability 0 scores -inf: it stays 0 (node_proba)
            if rule == "leaf":
                return np.log(np.maximum(np.asarray(scores[-1], dtype=np.float64), 0))
            if rule == "joint":
                return self.path_log_scores([np.log(np.maximum(np.asarray(s, dtype=np.float64), 0)) for s in scores])
        if rule == "logits":
            return self.path_log_scores([np.asarray(s, dtype=np.float64) for s in scores])
        if rule == "log_odds":
            odds = []
            for s in scores:
                s = np.clip(np.asarray(s, dtype=np.float64), _SURE, 1 - _SURE)
                odds.append(np.log(s) - np.log1p(-s))
            return self.path_log_scores(odds)
        raise BadValue(f"paths must be one of {', '.join(PATH_RULES)}, not {rule!r}")

    def node_proba(self, path_scores: np.ndarray) -> list[np.ndarray]:
        """Per level, ``(n, n_classes_at_level)``: each class's probability, the sum over the
        paths through it of P(path) = softmax(path_scores) over all paths. A class never has more
        than its parent (its paths are some of the parent's)."""
        z = np.asarray(path_scores, dtype=np.float64)
        top = z.max(axis=1, keepdims=True)
        p = np.exp(z - np.where(np.isfinite(top), top, 0))
        p[~np.isfinite(top[:, 0])] = 1.0  # every path of probability 0: none preferred
        p /= p.sum(axis=1, keepdims=True)
        return self.sum_up(p)

    def temper(self, proba: list[np.ndarray], temperatures) -> list[np.ndarray]:
        """Node probabilities with each level's choice softened by its temperature: at level d,
        P(class | parent) becomes P(class | parent)^(1/T_d) normalised over its siblings, and the
        levels are chained again. Still one distribution over paths (a class never above its
        parent); level d's probabilities depend on T_1..T_d only (``proba`` may stop above the
        last level). All T = 1 changes nothing."""
        ts = np.broadcast_to(np.asarray(temperatures, dtype=np.float64), (len(proba),))
        if np.all(ts == 1.0):
            return proba
        out = []
        for d in range(len(proba)):
            out.append(self.temper_level(d, self.conditional(proba, d), ts[d], out[-1] if d else None))
        return out

    def conditional(self, proba: list[np.ndarray], level: int) -> np.ndarray:
        """P(class | parent) at ``level`` from per-level node probabilities (a parent of
        probability 0 leaves its children at 0)."""
        q = np.asarray(proba[level], dtype=np.float64)
        if level == 0:
            return q
        up = np.asarray(proba[level - 1], dtype=np.float64)[:, self._parents[level]]
        return np.divide(q, up, out=np.zeros_like(q), where=up > 0)

    def temper_level(self, level: int, conditional: np.ndarray, temperature: float, above) -> np.ndarray:
        """One step of :meth:`temper`: ``conditional`` P(class | parent) at ``level`` raised to
        1 / ``temperature``, normalised over siblings, times ``above`` (the tempered level above)."""
        q = conditional ** (1.0 / temperature)
        norm = np.add.reduceat(q, self._sibling_starts(level), axis=1)[:, self._parents[level]] if level else \
            q.sum(axis=1, keepdims=True)
        q = np.divide(q, norm, out=np.zeros_like(q), where=norm > 0)
        return q if level == 0 else above[:, self._parents[level]] * q

    def answer_scores(self, raw: list[np.ndarray], rule: str, decode: str = "path",
                      temperatures=1.0) -> tuple[np.ndarray, list[np.ndarray]]:
        """A model's raw per-level scores -> its decoded paths (``decode``, as
        :meth:`decode_scores`, ``path`` by ``rule``) and every class's probability, per level
        (:meth:`node_proba`, softened by :meth:`temper`): what every front-end answers with,
        in-process (``Model.calibrated``) and in the server alike."""
        ps = self.path_scores(raw, rule)
        codes = self.leaf_paths()[ps.argmax(axis=1)] if decode == "path" else self.decode_scores(raw, decode)
        return codes, self.temper(self.node_proba(ps), temperatures)

    def decode_scores(self, scores: list[np.ndarray], mode: str = "path",
                      conditional: list[np.ndarray] | None = None, rule: str = "joint") -> np.ndarray:
        """Per-level scores -> ``(n, depth)`` class indices.

        ``path`` (default): the most probable whole path, its score by ``rule``
        (:meth:`path_scores`), or the product of its ``conditional`` scores when given; ``leaf``: the best leaf and its ancestors; ``top_down``: greedy,
        each level picks the best child (by ``conditional`` P(class | parent) when given, else
        by ``scores``) of the class picked one level up. All three give valid paths only.
        ``argmax``: each level on its own, for research: the levels may disagree (a class of
        level 2 under another class than the one level 1 picked).
        """
        if mode == "argmax":
            return np.stack([s.argmax(axis=1) for s in scores], axis=1)
        if mode == "leaf":
            return self.leaf_paths()[scores[-1].argmax(axis=1)]
        if mode == "path":  # conditional probabilities: a path's probability is their product
            by = self.path_scores(conditional, "joint") if conditional is not None else self.path_scores(scores, rule)
            return self.leaf_paths()[by.argmax(axis=1)]
        cond = conditional if conditional is not None else scores
        if mode == "top_down":
            codes = np.empty((len(cond[0]), self.depth), dtype=np.int64)
            codes[:, 0] = cond[0].argmax(axis=1)
            for d in range(1, self.depth):
                under = self.parent_of(d)[None, :] == codes[:, d - 1][:, None]
                codes[:, d] = np.where(under, cond[d], -np.inf).argmax(axis=1)
            return codes
        raise BadValue(f"decode must be one of {', '.join(DECODE_MODES)}, not {mode!r}")

    def is_consistent(self, codes: np.ndarray) -> np.ndarray:
        """Per row: does each level's prediction sit under the previous level's?"""
        codes = np.asarray(codes)
        ok = np.ones(len(codes), dtype=bool)
        for d in range(1, self.depth):
            ok &= self.parent_of(d)[codes[:, d]] == codes[:, d - 1]
        return ok

    # -- matrices -----------------------------------------------------------------
    def ancestor_matrix(self) -> np.ndarray:
        """M, ``(n_classes, n_classes)``: ``M[a, b] = 1`` iff ``b`` is ``a`` or a descendant of ``a``."""
        n, off = self.n_classes, self.offsets
        m = np.eye(n, dtype=np.float32)
        for row in self.leaf_paths():
            g = [off[d] + c for d, c in enumerate(row)]
            for i, a in enumerate(g):
                m[a, g[i:]] = 1.0
        return m

    def leaf_matrix(self) -> np.ndarray:
        """R, ``(n_classes, n_leaves)``: ``R[j, l] = 1`` iff class ``j`` is leaf ``l`` or one of its ancestors."""
        off = self.offsets
        r = np.zeros((self.n_classes, self.n_leaves), dtype=np.float32)
        for leaf, row in enumerate(self.leaf_paths()):
            r[[off[d] + c for d, c in enumerate(row)], leaf] = 1.0
        return r

    # -- persistence --------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "depth": self.depth,
            "sizes": self.sizes,
            "offsets": self.offsets,
            "levels": [[list(p) for p in lv] for lv in self.levels],
            "parent_of": [self.parent_of(d).tolist() for d in range(self.depth)],
            # where a path may end, per level (every real class of the last level; above it, the
            # classes some path ends at); "" as a class name's last part marks an end class
            "may_end": [self.may_end(d).tolist() for d in range(self.depth)],
            # [path, text] pairs: a path joined into one string would be ambiguous when a name holds " > "
            **({"descriptions": [[list(p), text] for p, text in sorted(self.descriptions.items())]}
               if self.descriptions else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Hierarchy":
        try:
            described = {}
            for path, text in d.get("descriptions", []):
                if not isinstance(text, str) or not isinstance(path, list) or not all(isinstance(x, str) for x in path):
                    raise TypeError(f"a description is a [path, text] pair of strings, not {[path, text]!r}")
                described[tuple(path)] = text
            return cls(tuple(tuple(tuple(p) for p in lv) for lv in d["levels"]), described)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BadValue(f"not a KTT hierarchy: {e}") from None

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Hierarchy":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, ValueError) as e:
            raise BadValue(f"cannot read hierarchy {path}: {e}") from None
