"""Taxonomy versions: a hierarchy's content hash, what changed between two taxonomies, and
relabelling old paths into a new taxonomy.

A taxonomy *side* is a hierarchy and, where known, its rows (each row's path and a hash of its
text): a dataset, or what a training run logged (``taxonomy.parquet``). The diff pairs classes of
the two sides (``Diff.match``: new class -> old class, each at most once, at any two levels):

1. By rows, when both sides have them (a row is known across versions by its text). Old class
   ``o`` *can be* new class ``n`` when at least ``MATCH`` (half) of the rows they could share are
   under both: of o's rows still on the new side, or of n's rows that were on the old side (so a
   renamed class that doubled, or lost a child that moved away, is still a candidate). Candidates
   are paired greedily, each class once, in this order: the same path first, then the same name,
   then any; then the most shared rows; then the fewest rows under ``n``, then under ``o`` (the
   most specific class: an ancestor holds the same rows); then the nearest levels; then the
   paths' order.
2. By name, top-down: an unpaired new class whose parent is paired with ``up`` is the unpaired
   old class ``up + (its name,)`` if that one has no rows left on the new side (or without rows
   on both sides): a reused name whose rows went elsewhere is not the same class. Without rows on
   both sides, the classes then left at a level are paired by a name that appears once among each
   side's unpaired ones (a move; renames need rows).

Reported, for a pair: nothing when the parents are paired (or both are the root) and the name is
the same (a moved class carries its subtree along); *renamed* when the parents are paired and the
name differs; *moved* otherwise (another parent or another level, renamed or not). An unpaired
new class is *added*, an unpaired old one *removed*, unless its parent is added or removed too
(reported with it). So a *merge* of A into B (A's rows relabelled to B) reports A removed; of A
and B into a new C, the one that gave C more rows is renamed (or moved) to C, the other removed.
A *split* of A into A and A2 (some of A's rows relabelled to a new A2) reports A2 added; into two
new classes, A is renamed to the one with more of its rows, the other added. Rows added, removed
or relabelled between classes change nothing so long as each class keeps at least half of its
rows still present (or has none left).
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import BadValue
from .hierarchy import END, SEP, Hierarchy

ARTIFACT = "taxonomy.parquet"  # a run's taxonomy: its rows (path, text hash), the hierarchy in the metadata
KINDS = ("added", "removed", "renamed", "moved")
MATCH = 0.5  # two classes can be one when they share this share of one's rows (the module's docstring)


def digest(h: Hierarchy) -> str:
    """The content hash of a hierarchy (its classes, level by level): equal exactly when the
    taxonomies are."""
    return hashlib.sha256(json.dumps(h.to_dict()["levels"], ensure_ascii=False).encode()).hexdigest()[:12]


def text_hashes(texts) -> np.ndarray:
    """A 64-bit hash per text (what identifies a row across two versions of a dataset)."""
    import pandas as pd

    return pd.util.hash_pandas_object(pd.Series(list(texts), dtype=object), index=False).to_numpy()


@dataclass
class Side:
    """One taxonomy: ``hierarchy``, and optionally its rows: each row's ``(depth,)`` class indices
    (``codes``), text hash (``rows``) and whether it is a training row (``train``; None when not
    known: a run logged before it was)."""

    name: str
    hierarchy: Hierarchy
    codes: np.ndarray | None = None
    rows: np.ndarray | None = None
    train: np.ndarray | None = None
    _counts: list = field(default=None, repr=False)

    @property
    def digest(self) -> str:
        return digest(self.hierarchy)

    @property
    def has_rows(self) -> bool:
        return self.codes is not None

    def __len__(self) -> int:
        return 0 if self.codes is None else len(self.codes)

    def counts(self, level: int) -> np.ndarray | None:
        """Rows at or below each class of ``level`` (None without rows)."""
        if self.codes is None:
            return None
        if self._counts is None:
            self._counts = [np.bincount(self.codes[:, d], minlength=n) for d, n in enumerate(self.hierarchy.sizes)]
        return self._counts[level]

    def count(self, path) -> int | None:
        """Rows at or below the class ``path`` (a real path, or one ending in an end class)."""
        d = len(path) - 1
        i = self.hierarchy.class_index(tuple(path))
        return None if self.codes is None else int(self.counts(d)[i]) if i is not None else 0

    def frame(self):
        """This side as the ``taxonomy.parquet`` a run logs: each row's path, text hash and
        whether it trained the run."""
        import pyarrow as pa

        names = np.asarray(self.hierarchy.leaf_names, dtype=object)
        table = pa.table({"path": pa.array(names[self.codes[:, -1]], pa.string()).dictionary_encode(),
                          "row": pa.array(self.rows, pa.uint64()),
                          **({} if self.train is None else {"train": pa.array(self.train, pa.bool_())})})
        return table.replace_schema_metadata({"ktt.hierarchy": json.dumps(self.hierarchy.to_dict()["levels"])})


def of_dataset(ds) -> Side:
    """A loaded :class:`ktt.data.Dataset` as a side: every split's rows."""
    splits = (ds.train, ds.val, ds.test)
    return Side(ds.name, ds.hierarchy, np.concatenate([s.codes for s in splits]),
                text_hashes([t for s in splits for t in s.texts]),
                np.arange(sum(map(len, splits))) < len(ds.train))


def read_side(table, name: str) -> Side:
    """The :class:`Side` a ``taxonomy.parquet`` holds (an Arrow table: ``ktt.data.read_table``)."""
    import pandas as pd

    levels = json.loads(table.schema.metadata[b"ktt.hierarchy"])
    h = Hierarchy(tuple(tuple(tuple(p) for p in lv) for lv in levels))
    leaf = pd.Series(table.column("path").to_pandas(use_threads=False).astype(str)).map(
        {n: i for i, n in enumerate(h.leaf_names)}).to_numpy()
    return Side(name, h, h.leaf_paths()[leaf.astype(np.int64)], table.column("row").to_numpy(),
                table.column("train").to_numpy() if "train" in table.column_names else None)


# -- the diff ----------------------------------------------------------------------------------
@dataclass
class Change:
    kind: str  # added, removed, renamed, moved
    old: tuple | None
    new: tuple | None
    rows: int | None  # rows under the class (the new side's; the old side's for a removed class)

    def __str__(self) -> str:
        old, new = (SEP.join(p) if p else "" for p in (self.old, self.new))
        what = {"added": f"+ {new}", "removed": f"- {old}", "renamed": f"~ {old}  ->  {new}",
                "moved": f"> {old}  ->  {new}"}[self.kind]
        return f"{self.kind:<8} {what}" + (f"  ({self.rows:,} rows)" if self.rows is not None else "")


@dataclass
class Diff:
    old: Side
    new: Side
    changes: list[Change]
    match: dict[tuple, tuple]  # new class path -> old class path, for every class that has one (end classes too)

    @property
    def same(self) -> bool:
        return self.old.digest == self.new.digest

    def correspondence(self) -> list[np.ndarray]:
        """Per level of the new hierarchy, each class's index in the old one's level (-1: new)."""
        oh, nh = self.old.hierarchy, self.new.hierarchy
        out = []
        for d, lv in enumerate(nh.levels):
            index = {p: i for i, p in enumerate(oh.levels[d])} if d < oh.depth else {}
            out.append(np.array([index.get(self.match.get(p), -1) for p in lv], dtype=np.int64))
        return out

    def to_dict(self) -> dict:
        return {"old": {"name": self.old.name, "taxonomy": self.old.digest},
                "new": {"name": self.new.name, "taxonomy": self.new.digest},
                "rows": {"old": len(self.old) if self.old.has_rows else None,
                         "new": len(self.new) if self.new.has_rows else None},
                "changes": [{"kind": c.kind, "old": list(c.old) if c.old else None,
                             "new": list(c.new) if c.new else None, "rows": c.rows} for c in self.changes]}

    def __str__(self) -> str:
        head = f"taxonomy {self.old.digest} ({self.old.name}) -> {self.new.digest} ({self.new.name})"
        if not self.changes:
            return head + ": " + ("the same" if self.same else "no category added, removed, renamed or moved "
                                  "(paths that end at another level changed)")
        counts = Counter(c.kind for c in self.changes)
        return "\n".join([head + ": " + ", ".join(f"{counts[k]} {k}" for k in KINDS if counts[k]),
                          *(f"  {c}" for c in self.changes)])


def diff(old: Side, new: Side) -> Diff:
    """What changed from ``old`` to ``new`` (see the module's docstring)."""
    oh, nh = old.hierarchy, new.hierarchy
    match, kept = _by_rows(old, new) if old.has_rows and new.has_rows else ({}, None)
    taken = set(match.values())
    olds = {p for lv in oh.levels for p in lv}
    for d in range(nh.depth):  # top-down: a class under its parent's counterpart, by name
        for n in nh.levels[d]:
            up = match.get(n[:-1]) if d else ()
            o = None if up is None else up + n[-1:]
            if n not in match and o in olds and o not in taken and \
                    (kept is None or n[-1] == END or o not in kept):
                match[n] = o
                taken.add(o)
        if kept is None:
            left_old = [p for p in (oh.levels[d] if d < oh.depth else ()) if p not in taken and p[-1] != END]
            for o, n in _by_name(left_old, [p for p in nh.levels[d] if p not in match and p[-1] != END]):
                match[n] = o
                taken.add(o)
    changes: list[Change] = []
    for d in range(max(oh.depth, nh.depth)):
        news = [n for n in (nh.levels[d] if d < nh.depth else ()) if n[-1] != END]
        for n in news:
            o = match.get(n)
            same_up = o is not None and (match.get(n[:-1]) if d else ()) == o[:-1]
            if o is not None and not (same_up and o[-1] == n[-1]):  # else the same class, or carried along
                changes.append(Change("renamed" if same_up else "moved", o, n, new.count(n)))
        # a class whose parent was itself added or removed is reported with it, not again
        changes += [Change("added", None, n, new.count(n)) for n in news
                    if n not in match and (d == 0 or n[:-1] in match)]
        changes += [Change("removed", o, None, old.count(o)) for o in (oh.levels[d] if d < oh.depth else ())
                    if o[-1] != END and o not in taken and (d == 0 or o[:-1] in taken)]
    return Diff(old, new, changes, match)


def _by_rows(old: Side, new: Side) -> tuple[dict[tuple, tuple], set]:
    """New class -> old class by rows, any two levels (the module's docstring, step 1), and the old
    classes with rows left on the new side."""
    oh, nh = old.hierarchy, new.hierarchy
    import pandas as pd

    # every (old row, new row) pair with the same text: a text under two classes (duplicates kept) is in both
    pairs = pd.DataFrame({"h": old.rows, "a": np.arange(len(old))}).merge(
        pd.DataFrame({"h": new.rows, "b": np.arange(len(new))}), on="h")
    a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
    co, cn = old.codes[a].astype(np.int64), new.codes[b].astype(np.int64)
    ua, ub = np.unique(a), np.unique(b)  # each row counted once below, however many rows share its text
    kept = [np.bincount(old.codes[ua, d], minlength=k) for d, k in enumerate(oh.sizes)]  # an old class's rows still there
    came = [np.bincount(new.codes[ub, d], minlength=k) for d, k in enumerate(nh.sizes)]  # a new class's rows that were there
    candidates = []
    for do in range(oh.depth):
        for dn in range(nh.depth):
            pair, k = np.unique(co[:, do] * nh.sizes[dn] + cn[:, dn], return_counts=True)
            i, j = np.divmod(pair, nh.sizes[dn])
            ok = (k >= MATCH * kept[do][i]) | (k >= MATCH * came[dn][j])
            for i, j, k in zip(i[ok].tolist(), j[ok].tolist(), k[ok].tolist()):
                o, n = oh.levels[do][i], nh.levels[dn][j]
                if o[-1] != END and n[-1] != END:  # best first: see the module's docstring
                    candidates.append(((o != n) + (o[-1] != n[-1]), -k, int(new.counts(dn)[j]),
                                       int(old.counts(do)[i]), abs(do - dn), n, o))
    match, taken = {}, set()
    for *_, n, o in sorted(candidates):
        if n not in match and o not in taken:
            match[n] = o
            taken.add(o)
    return match, {p for d, lv in enumerate(oh.levels) for p, k in zip(lv, kept[d]) if k}


def _by_name(left_old, left_new) -> list[tuple]:
    """Unmatched classes of one level paired by a name that appears once among each side's."""
    names_old, names_new = Counter(p[-1] for p in left_old), Counter(p[-1] for p in left_new)
    once = {k for k in names_old if names_old[k] == 1 and names_new.get(k) == 1}
    new_of = {p[-1]: p for p in left_new if p[-1] in once}
    return [(o, new_of[o[-1]]) for o in left_old if o[-1] in once]


def old_to_new(diff) -> list[np.ndarray]:
    """Per level of the old taxonomy, each class's index in the new one's level (-1: none)."""
    back = [np.full(n, -1, np.int64) for n in diff.old.hierarchy.sizes]
    for d, c in enumerate(diff.correspondence()[:diff.old.hierarchy.depth]):
        back[d][c[c >= 0]] = np.flatnonzero(c >= 0)
    return back


def changed_classes(diff) -> list[np.ndarray] | None:
    """Per level of the new taxonomy, which classes' training rows changed: a row (a text hash)
    that joined or left the class, or was relabelled into or out of it. Training rows where both
    sides know them (a run logs which rows trained it); else every split's rows, so that a class
    whose validation rows changed counts as changed too (a refit more, never one less; a row
    that moved between splits, as a dataset ingested anew without a split column may draw them,
    is then missed). None without rows on both sides."""
    import pandas as pd

    if not (diff.old.has_rows and diff.new.has_rows):
        return None
    both = diff.old.train is not None and diff.new.train is not None
    on_old, on_new = (diff.old.train, diff.new.train) if both else (slice(None), slice(None))
    back, out = old_to_new(diff), []
    for d, n in enumerate(diff.new.hierarchy.sizes):
        old = (back[d][diff.old.codes[:, d]] if d < len(back) else np.full(len(diff.old), -1, np.int64))[on_old]
        new = diff.new.codes[on_new, d]
        k_old, k_new = (pd.util.hash_pandas_object(pd.DataFrame({"r": r, "c": c}), index=False).to_numpy()
                        for r, c in ((diff.old.rows[on_old], old), (diff.new.rows[on_new], new)))
        hit = np.zeros(n, bool)
        hit[new[~np.isin(k_new, k_old)]] = True
        gone = old[~np.isin(k_old, k_new)]
        hit[gone[gone >= 0]] = True
        out.append(hit)
    return out


# -- relabelling old data -------------------------------------------------------------------------
def read_mapping(path, label_sep: str = ">") -> dict[tuple, tuple]:
    """A mapping file: a CSV with columns ``old`` and ``new``, one path each (``A > B``)."""
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:
        raise BadValue(f"mapping {Path(path).name}: cannot read as CSV: {e}") from None
    if list(df.columns)[:2] != ["old", "new"] or len(df.columns) != 2:
        raise BadValue(f"mapping {Path(path).name}: needs exactly the columns old,new (has {list(df.columns)})")
    out = {}
    for i, (o, n) in enumerate(zip(df["old"], df["new"]), start=2):
        old, new = (tuple(x.strip() for x in v.split(label_sep)) for v in (o, n))
        if not all(old) or not all(new):
            raise BadValue(f"mapping {Path(path).name}, line {i}: {o!r} -> {n!r} has an empty class name")
        if old in out and out[old] != new:
            raise BadValue(f"mapping {Path(path).name}, line {i}: {o!r} is mapped twice")
        out[old] = new
    return out


def relabel(paths: list, mapping: dict[tuple, tuple], target: Hierarchy | None = None,
            where: str = "mapping") -> list:
    """Each path with its longest mapped prefix replaced (``A > B -> C`` relabels ``A > B > x``
    as ``C > x``). With ``target``, every relabelled path must be one of its paths: an old path
    the mapping does not map into it is an error naming the path and the first row."""
    r = Relabel(mapping, target, where)
    out = r(paths)
    r.check()
    return out


class Relabel:
    """:func:`relabel` of a source a chunk at a time (``ktt ingest --map`` streams): each chunk
    relabelled as it comes, its rows numbered over the whole source; the paths it could not map
    are counted over every row and reported by :meth:`check`, once all were seen."""

    def __init__(self, mapping: dict[tuple, tuple], target: Hierarchy | None = None, where: str = "mapping"):
        self.mapping, self.where, self.offset = mapping, where, 0
        self.valid = None if target is None else {tuple(x for x in p if x != END) for p in target.levels[-1]}
        if self.valid is not None:
            for old, new in mapping.items():
                if not any(v[:len(new)] == new for v in self.valid):
                    raise BadValue(f"{where}: {SEP.join(old)!r} is mapped to {SEP.join(new)!r}, which is not a "
                                   f"category of the new taxonomy")
        self.longest = max(map(len, mapping), default=0)
        self.bad, self.first = Counter(), {}

    def __call__(self, paths: list) -> list:
        out = []
        for i, p in enumerate(paths, start=self.offset):
            if p is None:
                out.append(None)
                continue
            p = orig = tuple(p)
            for k in range(min(len(p), self.longest), 0, -1):
                if p[:k] in self.mapping:
                    p = self.mapping[p[:k]] + p[k:]
                    break
            if self.valid is not None and p not in self.valid:
                self.bad[orig, p] += 1
                self.first.setdefault((orig, p), i)
            out.append(list(p))
        self.offset += len(paths)
        return out

    def check(self) -> None:
        if self.bad:
            (orig, p), n = self.bad.most_common(1)[0]
            how = f"becomes {SEP.join(p)!r}, which is not in the new taxonomy" if p != orig else \
                f"is not in the new taxonomy and {self.where} does not map it"
            raise BadValue(f"row {self.first[orig, p] + 1}: label path {SEP.join(orig)!r} {how} ({n} rows; "
                           f"{len(self.bad)} such paths in all); add a line `{SEP.join(orig)},<new path>` to {self.where}")
