"""Confidences a team can act on: the temperature of each level that calibrates a model's node
probabilities, and the stopping threshold that reaches a target hierarchical precision.

A model's per-level scores become a distribution over whole paths and every node's probability
(``Hierarchy.path_scores``, ``Hierarchy.node_proba``); this module fits what makes those
probabilities honest, on validation, and turns a target precision into a threshold and a depth
answers stop at (no deeper than the levels that reach it). numpy only (scipy when fitting): the
server reads the saved curves with :func:`stop_for`.
"""
from __future__ import annotations

import logging
import numbers

import numpy as np

from .errors import BadValue

log = logging.getLogger(__name__)

MAX_CURVE_POINTS = 512  # a saved precision curve (in checkpoints and serving.json) stays small
TEMPERATURE_RANGE = (0.05, 20.0)
#: a level reaches a target precision only at a threshold that answers at least this many of its
#: validation classes: one lucky row is no evidence
MIN_ANSWERED = 30
#: a level's temperature is fitted only on at least this many rows whose confidence depends on it;
#: with fewer the search drifts to a bound of TEMPERATURE_RANGE on nothing (T = 1 instead)
MIN_INFORMATIVE = 30
#: a level map is fitted on rows holding at least this many of each outcome (right, wrong) in each
#: half; the held-out check decides the rest (few wrong answers is where a level's map pays most:
#: tfidf_hsgd's level 1 on the generated catalog, ECE .021 -> .002)
MIN_MAP_OUTCOMES = 5
LOGIT_CLIP = 1e-7


def check_target(value) -> float:
    """A target precision in (0, 1], or ``BadValue`` naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value <= 1:
        raise BadValue(f"target_precision must be a number above 0 and at most 1, not {value!r}")
    return float(value)


def brier(conf: np.ndarray, correct: np.ndarray) -> float:
    """Mean squared difference between a confidence and whether the class it is in is right."""
    return float(np.mean((np.asarray(conf, np.float64) - np.asarray(correct, np.float64)) ** 2))


class PathChains:
    """What calibration reads of node probabilities (``Hierarchy.node_proba``) on rows with
    predicted paths: for the predicted class of each level and each of its ancestors, P(class |
    parent) of its siblings (``Hierarchy.sibling_runs``), and nothing of the other classes.

    The tempered confidence in a predicted class (``Hierarchy.temper``) is a product down its
    ancestors of P(class | parent)^(1/T) over the same power summed over the siblings: it reads
    nothing else. Fitting a temperature then costs rows x the sibling runs on the predicted
    paths at every trial, instead of rows x every class (a catalog of 21,000 classes). Gathered
    a chunk of rows at a time (:meth:`gather`, :meth:`concat`), the split's scores of all
    classes are never held at once.
    """

    def __init__(self, n: int, groups: list, links: list[list[int]]):
        self.n = n
        # (values, where each row's run starts in them, where its class is, each value's class)
        self.groups = groups
        self.links = links  # links[d][k]: the group of the level-k ancestor of level d's class

    @classmethod
    def of_paths(cls, groups: list) -> "PathChains":
        """From one group per level of valid paths (each level's class under the one above, so
        every deeper level shares its ancestors' groups): ``(values, where each row's run
        starts, where its class is, each value's class)`` per level, as a chained model computes
        them along its paths (``ktt.sparse.NodeClassifiers.path_runs``). A run may leave out
        siblings of probability 0: they add nothing to a tempered sum."""
        return cls(len(groups[0][1]), list(groups), [list(range(d + 1)) for d in range(len(groups))])

    @classmethod
    def gather(cls, h, proba: list[np.ndarray], codes: np.ndarray) -> "PathChains":
        codes = np.asarray(codes)
        n, groups, links = len(codes), [], []
        for d in range(h.depth):
            chain, classes = [0] * (d + 1), codes[:, d]
            for k in range(d, -1, -1):
                if k < d and np.array_equal(classes, codes[:, k]):  # a valid path: its level k's group
                    chain[k] = links[k][k]
                else:
                    chain[k] = len(groups)
                    groups.append(cls._group(h, proba, k, classes))
                if k:
                    classes = h.parent_of(k)[classes]
            links.append(chain)
        return cls(n, groups, links)

    @staticmethod
    def _group(h, proba, level: int, classes: np.ndarray):
        start, end = (a[classes] for a in h.sibling_runs(level))
        lens = end - start
        first = np.cumsum(lens) - lens  # where each row's run starts in the values
        rows, cols = np.repeat(np.arange(len(classes)), lens), np.arange(lens.sum()) - np.repeat(first - start, lens)
        values = np.asarray(proba[level], dtype=np.float64)[rows, cols]
        if level:  # P(class | parent); a parent of probability 0 leaves its children at 0 (Hierarchy.conditional)
            up = np.repeat(np.asarray(proba[level - 1], dtype=np.float64)[np.arange(len(classes)),
                                                                         h.parent_of(level)[classes]], lens)
            values = np.divide(values, up, out=np.zeros_like(values), where=up > 0)
        return values, first, first + classes - start, cols

    @classmethod
    def concat(cls, parts: list["PathChains"]) -> "PathChains":
        """The rows of ``parts`` in order (gathered from the same hierarchy, codes of the same kind)."""
        if len(parts) == 1:
            return parts[0]
        groups, links, made = [], [], {}
        for d in range(len(parts[0].links)):
            links.append([])
            for k in range(d + 1):
                key = tuple(p.links[d][k] for p in parts)  # a group the parts share across links, once
                if key not in made:
                    made[key] = len(groups)
                    vals, first, pos, of, shift = [], [], [], [], 0
                    for p, g in zip(parts, key):
                        v, f, c, k = p.groups[g]
                        vals.append(v), first.append(f + shift), pos.append(c + shift), of.append(k)
                        shift += len(v)
                    groups.append(tuple(map(np.concatenate, (vals, first, pos, of))))
                links[d].append(made[key])
        return cls(sum(p.n for p in parts), groups, links)

    def factor(self, group: int, temperature: float) -> np.ndarray:
        """Per row, the tempered P(class | parent) of ``group``'s class: P^(1/T) over the sum of its
        siblings' (0 when they are all 0)."""
        q, z = self._tempered(group, temperature)
        return np.divide(q[self.groups[group][2]], z, out=np.zeros(len(z)), where=z > 0)

    def varies(self, group: int) -> np.ndarray:
        """Per row, whether ``group``'s tempered P(class | parent) changes with T: its class is
        above 0 and its run's values above 0 are not all equal (a single class, or 1 against 0s,
        stays what it is at any T)."""
        values, first, pos, _ = self.groups[group]
        if not len(first):
            return np.zeros(0, dtype=bool)
        low = np.minimum.reduceat(np.where(values > 0, values, np.inf), first)
        return (values[pos] > 0) & (np.maximum.reduceat(values, first) > low)

    def _tempered(self, group: int, temperature: float) -> tuple[np.ndarray, np.ndarray]:
        """``group``'s values raised to 1 / T, and their sum over each row's run."""
        values, first = self.groups[group][:2]
        q = values ** (1.0 / temperature)
        return q, (np.add.reduceat(q, first) if len(first) else np.zeros(0))

    def siblings(self, level: int, temperatures) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row, the tempered probability of every class in the run of siblings of level
        ``level``'s class (the alternatives at that step): ``(values, where each row's run
        starts, each value's class)``."""
        ts = np.broadcast_to(np.asarray(temperatures, dtype=np.float64), (len(self.links),))
        group = self.links[level][level]
        _, first, _, classes = self.groups[group]
        q, z = self._tempered(group, ts[level])
        lens = np.diff(np.append(first, len(q)))
        q = np.divide(q, np.repeat(z, lens), out=np.zeros_like(q), where=np.repeat(z, lens) > 0)
        return q * np.repeat(self.above(level, ts), lens), first, classes

    def above(self, level: int, temperatures) -> np.ndarray:
        """Per row, the tempered probability of the parent of level ``level``'s class (1 at level 0)."""
        out = np.ones(self.n)
        for k in range(level):
            out = out * self.factor(self.links[level][k], temperatures[k])
        return out

    def confidences(self, temperatures) -> np.ndarray:
        """``(n, depth)``: each level's tempered probability of the predicted class, as
        ``Hierarchy.confidences(codes, Hierarchy.temper(proba, temperatures))``."""
        ts = np.broadcast_to(np.asarray(temperatures, dtype=np.float64), (len(self.links),))
        factors: dict = {}  # a group that deeper levels share (their ancestors on valid paths): tempered once

        def factor(d, k):
            key = (self.links[d][k], k)
            if key not in factors:
                factors[key] = self.factor(key[0], ts[k])
            return factors[key]
        out = np.empty((self.n, len(self.links)))
        for d in range(len(self.links)):
            if d and self.links[d][:d] == self.links[d - 1]:  # the level above's chain: its product, once
                out[:, d] = out[:, d - 1] * factor(d, d)
            else:
                out[:, d] = np.prod([factor(d, k) for k in range(d + 1)], axis=0)
        return out


def fit_temperatures(h, proba, codes: np.ndarray, truth: np.ndarray) -> list[float]:
    """One temperature per level (``Hierarchy.temper``), fitted on labelled rows level by level
    from the top (level d's probabilities depend on T_1..T_d only): T_d minimises the Brier
    score of the confidence in the predicted class at level d against whether it is right,
    searched on a log scale within ``TEMPERATURE_RANGE``. ``proba``: the rows' node
    probabilities per level, or what calibration reads of them (:class:`PathChains`). A level
    with fewer than ``MIN_INFORMATIVE`` rows whose confidence depends on T keeps T = 1 (logged).

    Brier, not the likelihood of the true path: a TF-IDF model's clipped probabilities give the
    true path exactly 0 on some rows (6-12% of BigBasket's validation rows), and the likelihood
    then buys those rows a little probability by flattening every answer (T = 10, ECE .55)."""
    from scipy.optimize import minimize_scalar

    codes, truth = np.asarray(codes), np.asarray(truth)
    ts = [1.0] * h.depth
    if len(codes) == 0:
        return ts
    chains = proba if isinstance(proba, PathChains) else PathChains.gather(h, proba, codes)
    lo_hi = tuple(np.log(TEMPERATURE_RANGE))
    for d in range(h.depth):  # the levels above are fitted, and their part of the product taken, once
        right, above, group = codes[:, d] == truth[:, d], chains.above(d, ts), chains.links[d][d]
        informative = int(((above > 0) & chains.varies(group)).sum())
        if informative < MIN_INFORMATIVE:
            log.info("level %d keeps temperature 1: %d validation rows have a confidence that depends on it "
                     "(fitted from %d)", d + 1, informative, MIN_INFORMATIVE)
            continue

        def loss(log_t, right=right, above=above, group=group):
            return brier(above * chains.factor(group, np.exp(log_t)), right)

        ts[d] = float(np.exp(minimize_scalar(loss, bounds=lo_hi, method="bounded", options={"xatol": 1e-3}).x))
    return ts


def _logit(c) -> np.ndarray:
    c = np.clip(np.asarray(c, np.float64), LOGIT_CLIP, 1 - LOGIT_CLIP)  # a confidence of 0 or 1 still orders
    return np.log(c) - np.log1p(-c)


def fit_level_maps(h, conf: np.ndarray, codes: np.ndarray, truth: np.ndarray) -> list[list[float]]:
    """Per level, ``[a, b, u, a_end, b_end, u_end]``: the (a > 0, b, ceiling 0 < u <= 1) of
    ``u sigmoid(a logit(c) + b)`` that minimise the Brier score of the mapped confidence in the
    predicted class (``conf``: ``(n, depth)``, after the temperatures) against whether it is right,
    for the rows whose predicted path goes on below that level (``a, b, u``) and those whose path
    ends there (``_end``: :func:`ends_at`): Platt scaling of each level's confidence, with a
    ceiling for answers that tie at exactly 1 (clipped probabilities: tfidf_lsgd on a generated
    catalog gives half its answers 1 at every level, right 96% of the time at level 7, and no
    slope on logits brings them there without flattening the rest). Below where a path ends, its
    confidence is its last class's (:func:`recalibrate`). Each side is fitted on its own rows
    when they hold at least ``MIN_MAP_OUTCOMES`` rows of each outcome in each half, else it takes
    the map fitted on the level's rows of both sides. A map stays (1, 0, 1), the identity, unless
    the map fitted on half its rows lowers the Brier score of the other half (both ways round,
    summed): a map must show its gain on rows it was not fitted on.

    Why on top of the temperatures: a temperature reshapes each node's distribution, which is
    what alternatives and paths read, but one per level cannot make a level's confidence honest
    where right and wrong answers get the same margins (a generated 5,600-category catalog's
    label noise; docs/benchmarks.md). Why two per level: where paths end at many depths, the
    classes answers end at and those they pass through are calibrated differently, and an end
    class's confidence is what every level below reports (on the catalog, one map per level left
    tfidf_hsgd's levels 5-7 at ECE .040-.044). Fixed-depth data has no end above its last level:
    one map per level, as before. On BigBasket the held-out check keeps the identity where a map
    would only fit noise."""
    codes, truth, conf = np.asarray(codes), np.asarray(truth), np.asarray(conf, np.float64)
    maps = []
    for d in range(h.depth):
        reach = ~h.is_end(d)[codes[:, d]]
        c, right, ends = conf[reach, d], codes[reach, d] == truth[reach, d], ends_at(h, codes, d)[reach]
        both = _held_out_map(c, right)
        maps.append([v for side in (~ends, ends)
                     for v in (_held_out_map(c[side], right[side]) if _enough(right[side]) else both)])
    return maps


def ends_at(h, codes: np.ndarray, level: int) -> np.ndarray:
    """Per row, whether path ``codes`` ends at ``level`` (its last class is there)."""
    codes = np.asarray(codes)
    return np.ones(len(codes), dtype=bool) if level == h.depth - 1 else h.is_end(level + 1)[codes[:, level + 1]]


def _enough(right: np.ndarray) -> bool:
    """Whether both halves of rows (alternate rows) hold ``MIN_MAP_OUTCOMES`` right and wrong ones."""
    half = np.arange(len(right)) % 2 == 0
    return min(right[half].sum(), (~right[half]).sum(), right[~half].sum(), (~right[~half]).sum()) >= MIN_MAP_OUTCOMES


IDENTITY = [1.0, 0.0, 1.0]  # a level map (a, b, u) that changes nothing


def _held_out_map(c: np.ndarray, right: np.ndarray) -> list[float]:
    """:func:`fit_level_maps`'s map of confidences ``c`` against ``right``, or the identity."""
    if not _enough(right):
        return list(IDENTITY)
    z, half = _logit(c), np.arange(len(c)) % 2 == 0
    gain = sum(brier(c[~on], right[~on]) - brier(_mapped(z[~on], _fit_map(z[on], right[on])), right[~on])
               for on in (half, ~half))
    return _fit_map(z, right) if gain > 0 else list(IDENTITY)


def _fit_map(z: np.ndarray, right: np.ndarray) -> list[float]:
    from scipy.optimize import minimize

    fit = minimize(lambda v: brier(_mapped(z, v), right), IDENTITY, method="L-BFGS-B",
                   bounds=[(1e-3, 1e3), (-50, 50), (1e-3, 1.0)])
    return [float(v) for v in fit.x]


def _mapped(z: np.ndarray, m) -> np.ndarray:
    """``u sigmoid(a z + b)`` for map ``m`` = (a, b, u)."""
    return m[2] * np.exp(-np.logaddexp(0, -(m[0] * z + m[1])))  # sigmoid, as ``LinearBlocks``'s: no overflow at a z of 16 x a of 1000


def map_sides(m, level: int = 0) -> tuple[list, list]:
    """Level ``level``'s maps, ``[a, b, u]`` for paths that go on and for those that end, from what
    a checkpoint or ``serving.json`` holds: six numbers, four (a, b each: before the ceiling, u = 1)
    or two (one map: before ends had their own). Anything else is a ValueError that says so: a
    misread map would report confidences of 0 or above 1."""
    try:
        v = [float(x) for x in m]
    except (TypeError, ValueError):
        v = []
    if len(v) not in (2, 4, 6) or not np.all(np.isfinite(v)):
        raise ValueError(f"level map of level {level + 1}: {m!r} is not 2, 4 or 6 finite numbers")
    k = 3 if len(v) == 6 else 2
    sides = [s + [1.0] * (3 - k) for s in (v[:k], v[k:] or v[:k])]
    if not all(a > 0 and 0 < u <= 1 for a, _, u in sides):
        raise ValueError(f"level map of level {level + 1}: {m!r} needs a slope a > 0 and a ceiling 0 < u <= 1")
    return sides[0], sides[1]


def check_level_maps(maps, depth: int) -> None:
    """Raise ValueError unless ``maps`` is None or one readable map (:func:`map_sides`) per level."""
    if maps is None:
        return
    if not isinstance(maps, (list, tuple)) or len(maps) != depth:
        raise ValueError(f"level_maps must be a list of {depth} maps, one per level")
    for d, m in enumerate(maps):
        map_sides(m, d)


def map_level(values, level: int, maps, ends=False) -> np.ndarray:
    """Confidences of level ``level`` through its fitted map (:func:`fit_level_maps`; ``maps``
    None: the identity); ``ends`` (per value, or one for all): the map of paths that end there. A
    map of two numbers (fitted before paths' ends had their own) is both."""
    values = np.asarray(values, np.float64)
    if maps is None:
        return values
    (on, end), z = map_sides(maps[level], level), _logit(values)
    return np.where(ends, _mapped(z, end), _mapped(z, on))


def recalibrate(h, codes: np.ndarray, conf: np.ndarray, maps) -> np.ndarray:
    """``(n, depth)`` confidences of paths ``codes`` through each level's map, never above the
    level above's (a child's confidence never exceeds its parent's); below where a path ends,
    its last class's (its end has probability 1 under it)."""
    conf = np.asarray(conf, np.float64)
    if maps is None or not len(conf):
        return conf
    codes = np.asarray(codes)
    out = np.stack([np.where(h.is_end(d)[codes[:, d]], np.inf, map_level(conf[:, d], d, maps, ends_at(h, codes, d)))
                    for d in range(h.depth)], axis=1)
    return np.minimum.accumulate(out, axis=1)


def precision_curve(h, codes: np.ndarray, conf: np.ndarray, truth: np.ndarray,
                    max_points: int = MAX_CURVE_POINTS) -> dict[str, list[float]]:
    """What each stopping threshold gives on labelled rows: ``threshold`` (ascending), the
    hierarchical ``precision`` of the answers it leaves and their ``coverage`` (the share of
    the predicted paths' classes still answered).

    With confidences that never rise down a path, a threshold answers each path down to its
    deepest class whose confidence clears it, and an answered class is right when the true path
    holds it: so every (row, level) of the predicted paths is one answered-or-not class, and one
    sort gives the precision at every threshold. Kept to at most ``max_points`` thresholds
    (exact at each)."""
    c, right, real = _classes(h, codes, conf, truth)
    return _curve(c[real], right[real], max_points)


def target_curve(h, codes: np.ndarray, conf: np.ndarray, truth: np.ndarray,
                 max_points: int = MAX_CURVE_POINTS) -> dict:
    """:func:`precision_curve`, with what a target precision needs level by level
    (:func:`stop_for`): ``level_precision``, per level, the best precision of that level's
    answered classes at a threshold that answers at least ``MIN_ANSWERED`` of them (None: fewer
    were predicted); ``capped``, for k = 1 .. depth - 1, the curve of the classes of levels 1..k
    alone (what answers stopped at level k give)."""
    c, right, real = _classes(h, codes, conf, truth)
    best = []
    for d in range(h.depth):
        _, hits, n = _tie_ends(c[real[:, d], d], right[real[:, d], d])
        ok = n >= MIN_ANSWERED
        best.append(float((hits[ok] / n[ok]).max()) if ok.any() else None)
    capped = [_curve(c[:, :k][real[:, :k]], right[:, :k][real[:, :k]], max_points) for k in range(1, h.depth)]
    return {**_curve(c[real], right[real], max_points), "level_precision": best, "capped": capped}


def _classes(h, codes, conf, truth):
    """``(n, depth)`` confidences, whether each level's class is right, and whether the path has that level."""
    codes, conf = np.asarray(codes), np.asarray(conf, dtype=np.float64)
    real = np.arange(h.depth)[None, :] < h.path_depths(codes)[:, None]
    return conf, codes == np.asarray(truth), real


def _tie_ends(c: np.ndarray, right: np.ndarray):
    """Each distinct confidence (descending), the right classes and the classes at or above it:
    a threshold answers every class tied at it."""
    order = np.argsort(-c, kind="stable")
    c, hits = c[order], np.cumsum(right[order])
    last = np.r_[c[1:] != c[:-1], True] if len(c) else np.zeros(0, dtype=bool)
    return c[last], hits[last], np.arange(1, len(c) + 1)[last]


def _curve(c: np.ndarray, right: np.ndarray, max_points: int) -> dict[str, list[float]]:
    if len(c) == 0:
        return {"threshold": [], "precision": [], "coverage": []}
    t, hits, n = _tie_ends(c, right)
    t, prec, cov = t[::-1], (hits / n)[::-1], (n / len(c))[::-1]
    if len(t) > max_points:
        keep = np.unique(np.linspace(0, len(t) - 1, max_points).round().astype(int))
        t, prec, cov = t[keep], prec[keep], cov[keep]
    return {"threshold": t.tolist(), "precision": prec.tolist(), "coverage": cov.tolist()}


def threshold_for(curve: dict, target: float) -> float:
    """The lowest threshold of ``curve`` whose answers reach ``target`` precision (the most
    coverage at that precision); 1.0 (answer only certainties) when no threshold reaches it.
    What answers stop at for a target is :func:`stop_for`: this threshold, and a depth cap."""
    t = _lowest(curve, check_target(target))
    return 1.0 if t is None else t


def _lowest(curve: dict, target: float) -> float | None:
    t, prec = np.asarray(curve["threshold"]), np.asarray(curve["precision"])
    ok = np.flatnonzero(prec >= target - 1e-12)
    return float(t[ok[0]]) if len(ok) else None


def stop_for(curve: dict, target: float) -> tuple[float, int | None]:
    """Where answers stop for ``target`` precision, from a :func:`target_curve`: ``(threshold,
    max_depth)``. Answers stop above the first level whose validation precision never reached
    the target (``level_precision``), and the threshold is the lowest that reaches it on the
    curve of the levels above (one level higher while that curve does not reach it); ``(1.0,
    0)``: no level reaches it, nothing is answered. A curve saved before ``level_precision``:
    ``(threshold_for(curve, target), None)``, no cap, as it was then."""
    target = check_target(target)
    best = curve.get("level_precision")
    if best is None:
        return threshold_for(curve, target), None
    top = next((d for d, b in enumerate(best) if b is None or b < target - 1e-12), len(best))
    curves = [*curve["capped"], curve]  # curves[k - 1]: the classes of levels 1..k
    for k in range(top, 0, -1):
        t = _lowest(curves[k - 1], target)
        if t is not None:
            return t, k
    return 1.0, 0


def shortfall(curve: dict, target: float) -> str | None:
    """Why answers for ``target`` stop above the deepest level (:func:`stop_for`), naming the best
    precision validation reached at the first level left out; None when they do not stop early."""
    best = curve.get("level_precision")
    _, k = stop_for(curve, target)
    if best is None or k == len(best):
        return None
    b = best[k]
    why = (f"fewer than {MIN_ANSWERED} of its classes were predicted" if b is None else
           f"its best precision was {b:.4f}, answering at least {MIN_ANSWERED} of its classes" if b < target - 1e-12
           else f"levels 1-{k + 1} together never reached it")
    return (f"target precision {target:g} is not reached at level {k + 1} on validation ({why}): answers stop "
            + (f"at level {k}" if k else "before level 1, nothing is answered"))
