"""Ingestion into, and loading of, the intermediate dataset.

A dataset is a folder ``datasets/<name>/`` with ``train.parquet``, ``val.parquet``,
``test.parquet`` (columns ``text`` and ``labels``, a list of class names coarsest first),
``hierarchy.json`` and ``manifest.json`` (row counts, content hash, how it was made).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import BadValue, NotFound
from .hierarchy import Hierarchy

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow"}
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "dev": "val", "test": "test", "testing": "test"}


class IngestError(BadValue):
    """Bad input to ingestion; the message names the file, column and row."""


# -- reading ------------------------------------------------------------------------
def sniff_delimiter(path: Path, encoding: str) -> str:
    """The delimiter of a delimited text file: Python's ``csv.Sniffer`` on its first 64 KiB, among
    comma, tab, semicolon and pipe; a comma (a tab for ``.tsv``) when it cannot tell."""
    import csv

    with open(path, encoding=encoding, newline="") as f:
        sample = f.read(1 << 16)
    try:
        return csv.Sniffer().sniff(sample, delimiters=",\t;|").delimiter
    except csv.Error:
        return "\t" if path.suffix.lower() == ".tsv" else ","


def read_file(path: str | os.PathLike, fmt: str | None = None, *, encoding: str = "utf-8",
              sep: str | None = None, names: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a flat file into a DataFrame, with errors that name the file.

    A CSV/TSV's delimiter is ``sep`` or sniffed; ``names`` says the file has no header row and
    names its columns, in order.
    """
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"{path}: no such file")
    fmt = fmt or FORMATS.get(path.suffix.lower())
    if fmt not in set(FORMATS.values()):
        raise IngestError(f"{path}: unknown format {fmt or path.suffix!r}; use one of "
                          f"{sorted(set(FORMATS.values()))} (--format)")
    if names is not None and fmt != "csv":
        raise IngestError(f"{path}: --columns names the columns of a header-less CSV/TSV, not of {fmt}")
    if names is not None and len(set(names)) != len(names):
        raise IngestError(f"--columns {','.join(names)}: a name appears twice")
    try:
        if fmt == "csv":
            sep = sep or sniff_delimiter(path, encoding)
            df = pd.read_csv(path, encoding=encoding, sep=sep, dtype=str, keep_default_na=False, na_values=[""],
                             header=None if names is not None else "infer", names=names,
                             index_col=False if names is not None else None)
            if names is not None and df[names[-1]].isna().all() and len(df):
                raise IngestError(f"{path}: --columns names {len(names)} columns but the rows hold fewer "
                                  f"(delimiter {sep!r}); check the delimiter (--delimiter) or the names")
            return df
        if fmt in ("json", "jsonl"):
            return pd.read_json(path, lines=fmt == "jsonl", encoding=encoding, dtype=False)
        if fmt == "parquet":
            return pd.read_parquet(path)
        import pyarrow.ipc as ipc
        try:
            return ipc.open_file(path).read_pandas()
        except Exception:  # an Arrow *stream* rather than a file
            with open(path, "rb") as f:
                return ipc.open_stream(f).read_pandas()
    except IngestError:
        raise
    except UnicodeDecodeError as e:
        raise IngestError(f"{path}: not valid {encoding} text at byte {e.start}; pass --encoding "
                          f"(for example latin-1)") from None
    except Exception as e:  # pandas/pyarrow raise many types; the user needs the file and the cause
        raise IngestError(f"{path}: cannot read as {fmt}: {type(e).__name__}: {e}") from None


def read_sql(url: str, *, table: str | None = None, query: str | None = None) -> pd.DataFrame:
    """Read a table or query from any SQLAlchemy URL."""
    import sqlalchemy as sa

    if (table is None) == (query is None):
        raise IngestError("give exactly one of --table or --query for an SQL source")
    try:
        engine = sa.create_engine(url)
    except Exception as e:
        raise IngestError(f"bad SQLAlchemy URL {url!r}: {e}") from None
    try:
        with engine.connect() as conn:
            if table is not None:
                if not sa.inspect(conn).has_table(table):
                    raise IngestError(f"{url}: no table {table!r}")
                return pd.read_sql_table(table, conn)
            return pd.read_sql_query(sa.text(query), conn)
    except IngestError:
        raise
    except Exception as e:
        raise IngestError(f"{url}: {type(e).__name__}: {e}") from None
    finally:
        engine.dispose()


def paths_from_label_table(leaf_ids: pd.Series, labels: pd.DataFrame, *, id_col: str = "id",
                           name_col: str = "name", parent_col: str = "parent_id") -> list:
    """Resolve leaf ids through a ``(id, name, parent_id)`` table into label paths."""
    for c in (id_col, name_col, parent_col):
        if c not in labels.columns:
            raise IngestError(f"label table: no column {c!r} (has {list(labels.columns)})")
    table: dict = {}
    for i, (cid, name, parent) in enumerate(zip(labels[id_col], labels[name_col], labels[parent_col])):
        parent = None if pd.isna(parent) else parent
        if cid in table and table[cid] != (name, parent):
            raise IngestError(f"label table: class id {cid!r} (row {i + 1}) appears with two different "
                              f"parents or names: {table[cid]} and {(name, parent)}")
        table[cid] = (name, parent)
    out = []
    for row, cid in enumerate(leaf_ids):
        if pd.isna(cid):
            out.append(None)
            continue
        path, seen = [], set()
        while cid is not None:
            if cid not in table:
                raise IngestError(f"row {row + 1}: label id {cid!r} is not in the label table")
            if cid in seen:
                raise IngestError(f"label table: the parents of class id {cid!r} form a cycle")
            seen.add(cid)
            name, cid = table[cid]
            path.append(str(name))
        out.append(path[::-1])
    return out


# -- validating and splitting -----------------------------------------------------------
def _json_path(value: str, label_sep: str, where: str) -> list[str]:
    """A label cell holding a JSON list: its strings are the levels, or one string is the whole
    path (``["Clothing >> Women >> Shorts"]``), split on ``label_sep``."""
    try:
        parts = json.loads(value)
    except json.JSONDecodeError as e:
        raise IngestError(f"{where}: label {value[:80]!r} starts like a JSON list but is not one ({e.msg} at "
                          f"character {e.pos})") from None
    if not isinstance(parts, list) or not parts or not all(isinstance(x, str) for x in parts):
        raise IngestError(f"{where}: label {value[:80]!r} must be a JSON list of strings (class names)")
    if len(parts) == 1:
        parts = parts[0].split(label_sep)
    return [x.strip() for x in parts]


def _label_paths(df: pd.DataFrame, label_cols: Sequence[str], label_sep: str, where: str) -> list:
    """Each row's label path as a list of stripped strings, or None where it is missing."""
    if len(label_cols) > 1:
        out = []
        for vals in zip(*(df[c] for c in label_cols)):
            parts = ["" if pd.isna(v) else str(v).strip() for v in vals]
            while parts and not parts[-1]:  # empty deeper columns: the path ends above them
                parts.pop()
            out.append(parts or None)  # an empty column above a filled one stays: an empty class name
        return out
    col = label_cols[0]
    out = []
    for i, v in enumerate(df[col]):
        if isinstance(v, (list, tuple, np.ndarray)):
            if any(not isinstance(x, str) for x in v):
                raise IngestError(f"{where}: column {col!r}, row {i + 1}: label path {list(v)!r} holds "
                                  "non-string parts; class names must be strings")
            out.append([x.strip() for x in v])
        elif v is None or (isinstance(v, float) and np.isnan(v)):
            out.append(None)
        elif isinstance(v, str) and v.lstrip().startswith("["):
            out.append(_json_path(v, label_sep, f"{where}: column {col!r}, row {i + 1}"))
        elif isinstance(v, str):
            out.append([x.strip() for x in v.split(label_sep)])
        else:
            raise IngestError(f"{where}: column {col!r}, row {i + 1}: label {v!r} is a "
                              f"{type(v).__name__}, not a path; give class names as strings "
                              f"(`a{label_sep}b`) or a list column")
    present = [p for p in out if p]
    if present and all(len(p) == 1 and p[0].lstrip("-").isdigit() for p in present):
        # a CSV reads an id column as strings: numbers alone are class ids, not paths
        raise IngestError(f"{where}: column {col!r} holds only numbers (row 1: {present[0][0]!r}): class ids, "
                          f"not label paths; give class names (`a{label_sep}b`), several columns with -c, "
                          "or, for an SQL source, --label-table to map ids to names")
    return out


def prepare(df: pd.DataFrame, *, text_col: str = "text", label_cols: Sequence[str] = ("labels",),
            label_sep: str = ">", depth: int | None = None, invalid_rows: str = "error",
            keep_duplicates: bool = False, split_col: str | None = "split",
            split_ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0, where: str = "input",
            relabel=None, empty_splits: bool = False) -> tuple[dict[str, pd.DataFrame], Hierarchy, dict]:
    """Validate rows and split them. Returns the splits, the hierarchy and a report.

    ``relabel``: a function of the list of label paths (``ktt.taxonomy.relabel``), applied before
    validation; ``empty_splits``: allow a split without rows (rows appended to a dataset)."""
    if invalid_rows not in ("error", "drop"):
        raise IngestError(f"invalid_rows must be 'error' or 'drop', not {invalid_rows!r}")
    for c in (text_col, *label_cols):
        if c not in df.columns:
            raise IngestError(f"{where}: no column {c!r}; columns are {[str(x) for x in df.columns]}")
    if len(df) == 0:
        raise IngestError(f"{where}: no rows")
    text = df[text_col]
    if not all(isinstance(t, str) or pd.isna(t) for t in text):
        bad = next(i for i, t in enumerate(text) if not (isinstance(t, str) or pd.isna(t)))
        raise IngestError(f"{where}: column {text_col!r}, row {bad + 1}: text {text.iloc[bad]!r} is not a string")
    text = text.fillna("").str.strip()
    paths = _label_paths(df, label_cols, label_sep, where)
    if relabel is not None:
        paths = relabel(paths)
    lens = np.array([0 if p is None else len(p) for p in paths])
    if depth is None:  # paths may have different lengths; they keep them (see ktt.hierarchy)
        depth = int(lens.max()) if lens.any() else 1
    if depth < 1:
        raise IngestError(f"depth must be at least 1, not {depth}")

    problems = []  # (row, reason)
    for i, (t, p) in enumerate(zip(text, paths)):
        if not t:
            problems.append((i, f"column {text_col!r} is empty"))
        elif p is None:
            problems.append((i, f"label {'/'.join(label_cols)!r} is missing"))
        elif not p or any(not x for x in p[:depth]):
            problems.append((i, f"label path {p[:depth]!r} has an empty class name"))
    if problems and invalid_rows == "error":
        i, why = problems[0]
        raise IngestError(f"{where}: row {i + 1}: {why} ({len(problems)} invalid row(s) in all; "
                          "pass --invalid-rows drop to drop them)")
    keep = np.ones(len(df), dtype=bool)
    keep[[i for i, _ in problems]] = False
    out = pd.DataFrame({"text": text[keep].to_numpy(),
                        "labels": [p[:depth] for p, k in zip(paths, keep) if k]})
    if split_col and split_col in df.columns:
        raw = df[split_col][keep].astype(str).str.strip().str.lower()
        mapped = raw.map(_SPLIT_ALIASES)
        if mapped.isna().any():
            bad = int(np.flatnonzero(mapped.isna().to_numpy())[0])
            raise IngestError(f"{where}: column {split_col!r}: value {raw.iloc[bad]!r} is not one of "
                              f"train/val/test")
        out["split"] = mapped.to_numpy()
    report = {"rows_read": len(df), "rows_invalid": len(problems),
              "invalid_examples": [f"row {i + 1}: {w}" for i, w in problems[:5]]}

    key = out["text"] + "\x00" + out["labels"].map("\x00".join)
    dup = key.duplicated().to_numpy()
    report["rows_duplicate"] = 0 if keep_duplicates else int(dup.sum())
    if not keep_duplicates:
        out = out[~dup].reset_index(drop=True)
    # Titles seen under two different paths are kept (label noise or true ambiguity), but counted.
    report["texts_with_several_paths"] = int((out.groupby("text")["labels"].apply(
        lambda s: s.map(tuple).nunique()) > 1).sum())

    if "split" not in out.columns:
        out["split"] = _random_split(len(out), split_ratios, seed)
    splits = {s: out[out["split"] == s][["text", "labels"]].reset_index(drop=True) for s in SPLITS}
    for s, part in splits.items():
        if len(part) == 0 and not empty_splits:
            raise IngestError(f"{where}: the {s} split is empty ({len(out)} rows in all); "
                              "change --split or add rows")
    hierarchy = Hierarchy.from_paths(tuple(p) for p in out["labels"])
    report.update({f"rows_{s}": len(p) for s, p in splits.items()})
    report["classes_per_level"] = hierarchy.class_counts
    report["rows_per_path_length"] = {int(k): int(v) for k, v in
                                      sorted(out["labels"].map(len).value_counts().items())}
    return splits, hierarchy, report


def _random_split(n: int, ratios: Sequence[float], seed: int) -> np.ndarray:
    ratios = np.asarray(ratios, dtype=float)
    if ratios.shape != (3,) or (ratios < 0).any() or not np.isclose(ratios.sum(), 1.0):
        raise IngestError(f"split ratios must be three non-negative numbers summing to 1, not {ratios.tolist()}")
    order = np.random.default_rng(seed).permutation(n)
    cuts = np.round(np.cumsum(ratios)[:2] * n).astype(int)
    labels = np.empty(n, dtype=object)
    for name, idx in zip(SPLITS, np.split(order, cuts)):
        labels[idx] = name
    return labels


# -- writing --------------------------------------------------------------------------
def ingest(df: pd.DataFrame, root, name: str, *, where: str = "input", overwrite: bool = False,
           sample: dict | None = None, meta: dict | None = None, **options):
    """The one way data becomes a dataset (``ktt ingest``, ``ktt generate``, experiments):
    :func:`prepare` with ``options``, then a seeded sample of some splits (``sample``: split ->
    rows; the test split is best kept whole), then :func:`write_dataset`. Returns the dataset's
    folder, its hierarchy and the ingest report."""
    splits, hierarchy, report = prepare(df, where=where, **options)
    for split, n in (sample or {}).items():
        if n:
            splits[split] = splits[split].sample(min(int(n), len(splits[split])), random_state=options.get("seed", 0))
    path = write_dataset(splits, hierarchy, root, name, overwrite=overwrite,
                         meta={"source": where, "report": report, **(meta or {})})
    return path, hierarchy, report


def append(parent: "Dataset", df: pd.DataFrame, root, name: str, *, where: str = "input",
           overwrite: bool = False, **options):
    """A new version of ``parent`` with ``df``'s rows (reviewed rows: ``ktt.review``): a text the
    parent holds takes the new label where it is (a correction), a new text joins the train split
    (or its own ``split`` column's). The manifest's ``lineage`` lists every version it came from.
    Returns the folder, the hierarchy and the report."""
    splits, _, report = prepare(df, where=where, split_ratios=(1.0, 0.0, 0.0), empty_splits=True, **options)
    new = pd.concat([p.assign(split=s) for s, p in splits.items()], ignore_index=True)
    label_of = dict(zip(new["text"], new["labels"].map(tuple)))
    merged, corrected, known = {}, 0, set()
    for s in SPLITS:
        part = getattr(parent, s)
        labels = [label_of.get(t, p) for t, p in zip(part.texts, part.paths)]
        corrected += sum(a != b for a, b in zip(labels, part.paths))
        known.update(part.texts)
        merged[s] = pd.DataFrame({"text": part.texts, "labels": [list(p) for p in labels]})
    fresh = new[~new["text"].isin(known)]
    for s in SPLITS:
        merged[s] = pd.concat([merged[s], fresh[fresh["split"] == s][["text", "labels"]]], ignore_index=True)
    hierarchy = Hierarchy.from_paths(tuple(p) for part in merged.values() for p in part["labels"])
    from .taxonomy import digest

    report.update({"rows_added": len(fresh), "rows_corrected": int(corrected),
                   **{f"rows_{s}": len(p) for s, p in merged.items()}, "classes_per_level": hierarchy.class_counts,
                   **({"taxonomy_changed": True} if digest(hierarchy) != parent.taxonomy else {})})
    lineage = [*parent.manifest.get("lineage", []),
               {"dataset": parent.name, "digest": parent.digest, "taxonomy": parent.taxonomy, "source": where,
                "rows_added": len(fresh), "rows_corrected": int(corrected)}]
    path = write_dataset(merged, hierarchy, root, name, overwrite=overwrite,
                         meta={"source": where, "report": report, "lineage": lineage})
    return path, hierarchy, report


def write_dataset(splits: dict[str, pd.DataFrame], hierarchy: Hierarchy, root: str | os.PathLike,
                  name: str, *, meta: dict | None = None, overwrite: bool = False) -> Path:
    """Write a dataset folder all at once: built in a temp folder, then renamed into place."""
    if not name or "/" in name or name.startswith("."):
        raise IngestError(f"bad dataset name {name!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    if final.exists() and not overwrite:
        raise IngestError(f"dataset {final} already exists; pass --overwrite to replace it")
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        for s, part in splits.items():
            part.to_parquet(tmp / f"{s}.parquet", index=False)
        hierarchy.save(tmp / "hierarchy.json")
        from .taxonomy import digest

        manifest = {"name": name, "digest": _digest(tmp), "taxonomy": digest(hierarchy),
                    "rows": {s: len(p) for s, p in splits.items()},
                    "depth": hierarchy.depth, "classes_per_level": hierarchy.class_counts, **(meta or {})}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
        if final.exists():
            old = final.with_name(f".{name}.old")
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in (*(f"{s}.parquet" for s in SPLITS), "hierarchy.json"):
        h.update((folder / f).read_bytes())
    return h.hexdigest()[:16]


# -- loading --------------------------------------------------------------------------
@dataclass
class Split:
    """One split: texts, label paths, and the same paths as ``(n, depth)`` class indices."""

    texts: list[str]
    paths: list[tuple[str, ...]]
    hierarchy: Hierarchy
    weights: np.ndarray | None = None  # per row, for a loss that takes them (an update's rows: ktt.nn.update_rows)

    def __len__(self) -> int:
        return len(self.texts)

    @cached_property
    def codes(self) -> np.ndarray:
        return self.hierarchy.encode(self.paths)

    def head(self, n: int) -> "Split":
        return Split(self.texts[:n], self.paths[:n], self.hierarchy)

    def subset(self, rows) -> "Split":
        """The rows at indices ``rows``."""
        return Split([self.texts[i] for i in rows], [self.paths[i] for i in rows], self.hierarchy)


@dataclass
class Dataset:
    name: str
    path: Path
    hierarchy: Hierarchy
    manifest: dict
    train: Split
    val: Split
    test: Split

    @property
    def digest(self) -> str:
        return self.manifest["digest"]

    @property
    def taxonomy(self) -> str:
        """The hierarchy's content hash (``ktt.taxonomy.digest``)."""
        from .taxonomy import digest

        return digest(self.hierarchy)


def load_dataset(name_or_path: str | os.PathLike, root: str | os.PathLike = "datasets") -> Dataset:
    """Load ``datasets/<name>`` (or a dataset folder given by path)."""
    p = Path(name_or_path)
    if not (p / "hierarchy.json").exists():
        p = Path(root) / str(name_or_path)
    if not (p / "hierarchy.json").exists():
        known = sorted(d.name for d in Path(root).glob("*/") if (d / "hierarchy.json").exists()) \
            if Path(root).is_dir() else []
        raise NotFound(f"no dataset {str(name_or_path)!r} (looked in {p}); known datasets: "
                                f"{known or 'none'}; create one with `ktt ingest`")
    h = Hierarchy.load(p / "hierarchy.json")
    manifest = json.loads((p / "manifest.json").read_text()) if (p / "manifest.json").exists() else {}
    manifest.setdefault("digest", _digest(p))
    parts = {}
    for s in SPLITS:
        df = pd.read_parquet(p / f"{s}.parquet")
        parts[s] = Split(df["text"].tolist(), [tuple(x) for x in df["labels"]], h)
    return Dataset(manifest.get("name", p.name), p, h, manifest, **parts)
