"""The label hierarchy: classes per level, parent links, and the matrices models need.

A class is a *path* (``("Food", "Pasta")``), not a name: the same name under two
parents is two classes. Classes are numbered level by level; ``offsets[i]`` is the
global index of level ``i``'s first class.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import BadValue

SEP = " > "
DECODE_MODES = ("path", "leaf", "top_down", "argmax")


@dataclass(frozen=True)
class Hierarchy:
    """Classes per level (each a full path tuple) and the parent of each class."""

    levels: tuple[tuple[tuple[str, ...], ...], ...]
    _index: tuple[dict, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not self.levels or any(len(lv) == 0 for lv in self.levels):
            raise BadValue("a hierarchy needs at least one level and one class per level")
        index = []
        for depth, lv in enumerate(self.levels, start=1):
            seen = {}
            for i, path in enumerate(lv):
                if len(path) != depth:
                    raise BadValue(f"class {SEP.join(path)!r} is at level {depth} but has {len(path)} parts")
                if path in seen:
                    raise BadValue(f"class {SEP.join(path)!r} appears twice at level {depth}")
                if depth > 1 and path[:-1] not in index[-1]:
                    raise BadValue(f"class {SEP.join(path)!r} has no parent {SEP.join(path[:-1])!r} at level {depth - 1}")
                seen[path] = i
            index.append(seen)
        object.__setattr__(self, "_index", tuple(index))

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_paths(cls, paths: Iterable[Sequence[str]]) -> "Hierarchy":
        """Build from label paths (all the same depth), classes sorted per level."""
        paths = [tuple(p) for p in paths]
        if not paths:
            raise BadValue("cannot build a hierarchy from zero label paths")
        depth = len(paths[0])
        if any(len(p) != depth for p in paths):
            raise BadValue("all label paths must have the same depth")
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

    def names(self, level: int) -> list[str]:
        """Display names (full paths joined by ``' > '``) of one level's classes."""
        return [SEP.join(p) for p in self.levels[level]]

    @property
    def leaf_names(self) -> list[str]:
        return self.names(self.depth - 1)

    def parent_of(self, level: int) -> np.ndarray:
        """Index (within level - 1) of the parent of every class at ``level``; -1 at level 0."""
        if level == 0:
            return np.full(self.sizes[0], -1, dtype=np.int64)
        up = self._index[level - 1]
        return np.array([up[p[:-1]] for p in self.levels[level]], dtype=np.int64)

    # -- encoding -----------------------------------------------------------------
    def encode(self, paths: Iterable[Sequence[str]]) -> np.ndarray:
        """Label paths -> ``(n, depth)`` class indices per level. Unknown paths raise."""
        out = []
        for row, p in enumerate(paths):
            p = tuple(p)
            if len(p) != self.depth:
                raise BadValue(f"row {row}: label path {list(p)} has {len(p)} levels, expected {self.depth}")
            try:
                out.append([self._index[d][p[: d + 1]] for d in range(self.depth)])
            except KeyError:
                raise BadValue(f"row {row}: label path {SEP.join(p)!r} is not in the hierarchy") from None
        return np.asarray(out, dtype=np.int64).reshape(-1, self.depth)

    def decode(self, codes: np.ndarray) -> list[list[str]]:
        """``(n, depth)`` indices -> the predicted class *name* at every level."""
        return [[self.levels[d][c][-1] for d, c in enumerate(row)] for row in np.asarray(codes)]

    def leaf_paths(self) -> np.ndarray:
        """``(n_leaves, depth)`` indices of every leaf and its ancestors."""
        return self.encode(self.levels[-1])

    def split_levels(self, scores: np.ndarray) -> list[np.ndarray]:
        """``(n, n_classes)`` scores over all classes -> one ``(n, n_i)`` slice per level."""
        return [scores[:, o:o + n] for o, n in zip(self.offsets, self.sizes)]

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

    def decode_scores(self, scores: list[np.ndarray], mode: str = "path",
                      conditional: list[np.ndarray] | None = None) -> np.ndarray:
        """Per-level scores -> ``(n, depth)`` class indices.

        ``path`` (default): the whole path with the highest joint score, the product of its
        classes' ``conditional`` scores P(class | parent) when given, else of its per-level
        ``scores``; ``leaf``: the best leaf and its ancestors (the joint score when level
        scores are derived from leaf probabilities); ``top_down``: greedy, each level picks the
        best child of the class picked one level up. All three give valid paths only.
        ``argmax``: each level on its own, for research: the levels may disagree (a class of
        level 2 under another class than the one level 1 picked).
        """
        if mode == "argmax":
            return np.stack([s.argmax(axis=1) for s in scores], axis=1)
        if mode == "leaf":
            return self.leaf_paths()[scores[-1].argmax(axis=1)]
        cond = conditional if conditional is not None else scores
        if mode == "path":
            logs = [np.log(np.maximum(np.asarray(s, dtype=np.float64), 1e-30)) for s in cond]
            return self.leaf_paths()[self.path_log_scores(logs).argmax(axis=1)]
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
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Hierarchy":
        try:
            return cls(tuple(tuple(tuple(p) for p in lv) for lv in d["levels"]))
        except (KeyError, TypeError) as e:
            raise BadValue(f"not a KTT hierarchy: {e}") from None

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Hierarchy":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, ValueError) as e:
            raise BadValue(f"cannot read hierarchy {path}: {e}") from None
