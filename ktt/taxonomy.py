"""Taxonomy versions: a hierarchy's content hash, what changed between two taxonomies, and
relabelling old paths into a new taxonomy.

A taxonomy *side* is a hierarchy and, where known, its rows (each row's path and a hash of its
text): a dataset, or what a training run logged (``taxonomy.parquet``). The diff matches classes
top-down: a class whose parent matched and whose name is unchanged is the same class (a moved
subtree carries its children along, unreported); what is left on each side is matched by rows
(the same texts under it, at least half of either side's): a *renamed* class has the same parent
and a new name, a *moved* one another parent. Without rows on both sides a class is matched only
by a name that appears once among the unmatched of its level (a move; renames need rows).
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
MATCH = 0.5  # a class matches another by rows when they share at least this share of both sides' rows


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
    (``codes``) and text hash (``rows``)."""

    name: str
    hierarchy: Hierarchy
    codes: np.ndarray | None = None
    rows: np.ndarray | None = None
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
        """This side as the ``taxonomy.parquet`` a run logs: each row's path and text hash."""
        import pyarrow as pa

        names = np.asarray(self.hierarchy.leaf_names, dtype=object)
        table = pa.table({"path": pa.array(names[self.codes[:, -1]], pa.string()).dictionary_encode(),
                          "row": pa.array(self.rows, pa.uint64())})
        return table.replace_schema_metadata({"ktt.hierarchy": json.dumps(self.hierarchy.to_dict()["levels"])})


def of_dataset(ds) -> Side:
    """A loaded :class:`ktt.data.Dataset` as a side: every split's rows."""
    splits = (ds.train, ds.val, ds.test)
    return Side(ds.name, ds.hierarchy, np.concatenate([s.codes for s in splits]),
                text_hashes([t for s in splits for t in s.texts]))


def read_side(path, name: str) -> Side:
    import pandas as pd
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    levels = json.loads(table.schema.metadata[b"ktt.hierarchy"])
    h = Hierarchy(tuple(tuple(tuple(p) for p in lv) for lv in levels))
    leaf = pd.Series(table.column("path").to_pandas().astype(str)).map(
        {n: i for i, n in enumerate(h.leaf_names)}).to_numpy()
    return Side(name, h, h.leaf_paths()[leaf.astype(np.int64)], table.column("row").to_numpy())


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
    by_rows = old.has_rows and new.has_rows
    match: dict[tuple, tuple] = {}
    changes: list[Change] = []
    for d in range(nh.depth):
        olds = set(oh.levels[d]) if d < oh.depth else set()
        for p in nh.levels[d]:
            up = match.get(p[:-1]) if d else ()
            if up is not None and up + p[-1:] in olds:
                match[p] = up + p[-1:]
        matched = set(match.values())
        left_new = [p for p in nh.levels[d] if p not in match and p[-1] != END]
        left_old = [p for p in (oh.levels[d] if d < oh.depth else ()) if p not in matched and p[-1] != END]
        pairs = _by_rows(old, new, d, left_old, left_new) if by_rows else _by_name(left_old, left_new)
        for o, n in pairs:
            match[n] = o
            kind = "renamed" if match.get(n[:-1], ()) == o[:-1] else "moved"
            changes.append(Change(kind, o, n, new.count(n)))
        paired_old, paired_new = {o for o, _ in pairs}, {n for _, n in pairs}
        matched = set(match.values())
        # a class whose parent was itself added or removed is reported with it, not again
        changes += [Change("added", None, n, new.count(n)) for n in left_new
                    if n not in paired_new and (d == 0 or n[:-1] in match)]
        changes += [Change("removed", o, None, old.count(o)) for o in left_old
                    if o not in paired_old and (d == 0 or o[:-1] in matched)]
    matched = set(match.values())
    for d in range(nh.depth, oh.depth):  # levels only the old taxonomy has
        changes += [Change("removed", o, None, old.count(o)) for o in oh.levels[d] if o[-1] != END and o[:-1] in matched]
    return Diff(old, new, changes, match)


def _by_rows(old: Side, new: Side, d: int, left_old, left_new) -> list[tuple]:
    """Unmatched classes of level ``d`` paired by the rows under them."""
    if not left_old or not left_new or d >= old.hierarchy.depth:
        return []
    ido = np.array([old.hierarchy.class_index(p) for p in left_old])
    idn = np.array([new.hierarchy.class_index(p) for p in left_new])
    mask = np.isin(old.codes[:, d], ido)
    owner = dict(zip(old.rows[mask].tolist(), old.codes[mask, d].tolist()))
    size_old = old.counts(d)
    mask = np.isin(new.codes[:, d], idn)
    hits = Counter((c, owner[r]) for c, r in zip(new.codes[mask, d].tolist(), new.rows[mask].tolist()) if r in owner)
    size_new = new.counts(d)
    candidates = sorted((-k, n, o) for (n, o), k in hits.items()
                        if k >= MATCH * size_new[n] and k >= MATCH * size_old[o])
    pairs, taken_n, taken_o = [], set(), set()
    for _, n, o in candidates:
        if n not in taken_n and o not in taken_o:
            pairs.append((old.hierarchy.levels[d][o], new.hierarchy.levels[d][n]))
            taken_n.add(n)
            taken_o.add(o)
    return pairs


def _by_name(left_old, left_new) -> list[tuple]:
    names_old, names_new = Counter(p[-1] for p in left_old), Counter(p[-1] for p in left_new)
    once = {k for k in names_old if names_old[k] == 1 and names_new.get(k) == 1}
    new_of = {p[-1]: p for p in left_new if p[-1] in once}
    return [(o, new_of[o[-1]]) for o in left_old if o[-1] in once]


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
