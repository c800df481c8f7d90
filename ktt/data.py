"""Ingestion into, and loading of, the intermediate dataset.

A dataset is a folder ``datasets/<name>/`` with ``train.parquet``, ``val.parquet``,
``test.parquet`` (columns ``text`` and ``labels``, a list of class names coarsest first),
``hierarchy.json`` and ``manifest.json`` (row counts, content hash, how it was made).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import BadValue, NotFound
from .hierarchy import END, Hierarchy

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


def _csv_options(encoding: str, sep: str, names) -> dict:
    """How every CSV/TSV is read: all strings, empty cells missing, ``names``: no header row."""
    return dict(encoding=encoding, sep=sep, dtype=str, keep_default_na=False, na_values=[""],
                header=None if names is not None else "infer", names=names,
                index_col=False if names is not None else None)


def _check_names(path: Path, fmt: str, names) -> None:
    if names is not None and fmt != "csv":
        raise IngestError(f"{path}: --columns names the columns of a header-less CSV/TSV, not of {fmt}")
    if names is not None and len(set(names)) != len(names):
        raise IngestError(f"--columns {','.join(names)}: a name appears twice")


def _check_columns(path: Path, df: pd.DataFrame, names, sep: str) -> pd.DataFrame:
    if names is not None and df[names[-1]].isna().all() and len(df):
        raise IngestError(f"{path}: --columns names {len(names)} columns but the rows hold fewer "
                          f"(delimiter {sep!r}); check the delimiter (--delimiter) or the names")
    return df


def read_table(source):
    """A whole Parquet file (a path or its bytes) as an Arrow table, read on the calling thread.

    A process that exits right after one of Arrow's threaded reads can abort in Arrow's thread pool
    (``terminate called without an active exception``, apache/arrow#34314): under load,
    `ktt train nope DATASET` did 4 times in 150, and 0 times in 150 reading this way. Read from
    memory on one thread, Arrow starts no thread; on two cores it is no slower (1M titles: 0.7 s).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    return pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)


def read_parquet(source) -> pd.DataFrame:
    """:func:`read_table` as a DataFrame (converted on the calling thread too)."""
    return read_table(source).to_pandas(use_threads=False)


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
    _check_names(path, fmt, names)
    try:
        if fmt == "csv":
            sep = sep or sniff_delimiter(path, encoding)
            return _check_columns(path, pd.read_csv(path, **_csv_options(encoding, sep, names)), names, sep)
        if fmt in ("json", "jsonl"):
            return pd.read_json(path, lines=fmt == "jsonl", encoding=encoding, dtype=False)
        if fmt == "parquet":
            return read_parquet(path)
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


def read_chunks(path: str | os.PathLike, fmt: str | None = None, *, encoding: str = "utf-8",
                sep: str | None = None, names: Sequence[str] | None = None, rows: int = 100_000):
    """:func:`read_file` a chunk of ``rows`` rows at a time (CSV/TSV, JSON lines, Parquet, Arrow;
    a JSON array is read whole): what :func:`ingest` streams. Errors name the file, as
    :func:`read_file`'s, when the chunk that holds the fault is read."""
    path = Path(path)
    fmt = fmt or FORMATS.get(path.suffix.lower())
    if fmt not in ("csv", "jsonl", "parquet", "arrow"):
        yield read_file(path, fmt, encoding=encoding, sep=sep, names=names)
        return
    if not path.is_file():
        raise IngestError(f"{path}: no such file")
    _check_names(path, fmt, names)
    try:
        if fmt == "csv":
            sep = sep or sniff_delimiter(path, encoding)
            for i, chunk in enumerate(pd.read_csv(path, chunksize=rows, **_csv_options(encoding, sep, names))):
                if i == 0:
                    _check_columns(path, chunk, names, sep)
                yield chunk
        elif fmt == "jsonl":
            yield from pd.read_json(path, lines=True, encoding=encoding, dtype=False, chunksize=rows)
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=rows, use_threads=False):
                yield batch.to_pandas(use_threads=False)
        else:
            import pyarrow.ipc as ipc

            try:
                reader = ipc.open_file(path)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            except Exception:  # an Arrow *stream* rather than a file
                batches = iter(ipc.open_stream(open(path, "rb")))
            for batch in batches:
                yield batch.to_pandas()
    except IngestError:
        raise
    except UnicodeDecodeError as e:
        raise IngestError(f"{path}: not valid {encoding} text at byte {e.start}; pass --encoding "
                          f"(for example latin-1)") from None
    except Exception as e:
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


def _label_paths(df: pd.DataFrame, label_cols: Sequence[str], label_sep: str, where: str, offset: int = 0) -> list:
    """Each row's label path as a list of stripped strings, or None where it is missing (``offset``:
    the rows of the source before ``df``, for the row numbers in errors)."""
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
    for i, v in enumerate(df[col], start=offset):
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
    return out


def _valid_rows(df: pd.DataFrame, offset: int, *, text_col: str, label_cols: Sequence[str], label_sep: str,
                depth: int | None, split_col: str | None, relabel, where: str) -> tuple[pd.DataFrame, list]:
    """One chunk of the source checked (``offset``: the rows before it): ``text``, ``labels`` (and
    ``split``, from ``split_col``) of its valid rows in order, and its problems (row, reason), rows
    numbered from 1 over the whole source."""
    for c in (text_col, *label_cols):
        if c not in df.columns:
            raise IngestError(f"{where}: no column {c!r}; columns are {[str(x) for x in df.columns]}")
    text = df[text_col]
    if not all(isinstance(t, str) or pd.isna(t) for t in text):
        bad = next(i for i, t in enumerate(text) if not (isinstance(t, str) or pd.isna(t)))
        raise IngestError(f"{where}: column {text_col!r}, row {offset + bad + 1}: text {text.iloc[bad]!r} "
                          "is not a string")
    text = text.fillna("").str.strip()
    paths = _label_paths(df, label_cols, label_sep, where, offset)
    if relabel is not None:
        paths = relabel(paths)
    problems = []  # (row, reason)
    for i, (t, p) in enumerate(zip(text, paths), start=offset):
        if not t:
            problems.append((i, f"column {text_col!r} is empty"))
        elif p is None:
            problems.append((i, f"label {'/'.join(label_cols)!r} is missing"))
        elif not p or any(not x for x in p[:depth]):
            problems.append((i, f"label path {p[:depth]!r} has an empty class name"))
    keep = np.ones(len(df), dtype=bool)
    keep[[i - offset for i, _ in problems]] = False
    out = pd.DataFrame({"text": text[keep].to_numpy(), "labels": [p[:depth] for p, k in zip(paths, keep) if k]})
    if split_col and split_col in df.columns:
        raw = df[split_col][keep].astype(str).str.strip().str.lower()
        mapped = raw.map(_SPLIT_ALIASES)
        if mapped.isna().any():
            bad = int(np.flatnonzero(mapped.isna().to_numpy())[0])
            raise IngestError(f"{where}: column {split_col!r}: value {raw.iloc[bad]!r} is not one of "
                              f"train/val/test")
        out["split"] = mapped.to_numpy()
    return out, problems


class _Rows:
    """What deduplication, the split and the report need of the valid rows, a chunk at a time
    (:meth:`add`): per row a 128-bit key of its text and path, a key of its text alone, its
    split when the source gives one, and the set of paths. Rows themselves are not kept, so a
    source of any size passes in bounded memory (a few dozen bytes a row)."""

    def __init__(self):
        self.keys, self.texts, self.splits, self.lengths = [], [], [], []
        self.paths, self.problems, self.n_problems, self.n_read = set(), [], 0, 0

    @staticmethod
    def _hash(parts, size: int) -> np.ndarray:
        """A BLAKE2 digest of ``size`` bytes per row, as uint64 columns; each row's strings are
        length-prefixed, so no two different rows can be the same bytes."""
        from hashlib import blake2b

        def encoded(row):
            return b"".join(len(b).to_bytes(8, "little") + b for b in (x.encode("utf-8", "surrogatepass") for x in row))
        out = b"".join(blake2b(encoded(row), digest_size=size).digest() for row in parts)
        return np.frombuffer(out, np.uint64).reshape(-1, size // 8)

    def add(self, valid: pd.DataFrame, problems: list, n_read: int) -> None:
        texts, paths = valid["text"].tolist(), valid["labels"].tolist()
        self.keys.append(self._hash(([t, *p] for t, p in zip(texts, paths)), 16))
        self.texts.append(np.concatenate([self._hash(([t] for t in texts), 8), self._hash(paths, 8)], axis=1))
        self.lengths.append(valid["labels"].map(len).to_numpy().astype(np.uint16))
        if "split" in valid:
            self.splits.append(valid["split"].map(SPLITS.index).to_numpy().astype(np.uint8))
        self.paths.update(map(tuple, valid["labels"]))
        self.problems += problems[:5 - len(self.problems)]
        self.n_problems += len(problems)
        self.n_read += n_read

    def finish(self, *, invalid_rows: str, keep_duplicates: bool, split_ratios, seed: int, empty_splits: bool,
               where: str):
        """Which valid rows stay (the first of each exact duplicate), each kept row's split (its
        index in ``SPLITS``), the hierarchy and the ingest report."""
        if self.n_read == 0:
            raise IngestError(f"{where}: no rows")
        if self.problems and invalid_rows == "error":
            i, why = self.problems[0]
            raise IngestError(f"{where}: row {i + 1}: {why} ({self.n_problems} invalid row(s) in all; "
                              "pass --invalid-rows drop to drop them)")
        keys = np.concatenate(self.keys) if self.keys else np.zeros((0, 2), np.uint64)
        self.keys = None
        keep = np.ones(len(keys), bool) if keep_duplicates else _first_of_each(keys)
        del keys
        report = {"rows_read": self.n_read, "rows_invalid": self.n_problems,
                  "invalid_examples": [f"row {i + 1}: {w}" for i, w in self.problems],
                  "rows_duplicate": int((~keep).sum())}
        # titles seen under two different paths are kept (label noise or true ambiguity), but counted
        pairs = np.concatenate(self.texts)[keep] if self.texts else np.zeros((0, 2), np.uint64)
        self.texts = None
        texts = pairs[_first_of_each(pairs), :1]  # one per distinct (text, path)
        report["texts_with_several_paths"] = len(np.unique(texts[~_first_of_each(texts)]))
        n = int(keep.sum())
        if self.splits:
            split = np.concatenate(self.splits)[keep]
        else:
            drawn = _random_split(n, split_ratios, seed)
            split = (drawn == "val").astype(np.uint8) + 2 * (drawn == "test").astype(np.uint8)
        counts = {s: int((split == i).sum()) for i, s in enumerate(SPLITS)}
        for s in SPLITS:
            if counts[s] == 0 and not empty_splits:
                raise IngestError(f"{where}: the {s} split is empty ({n} rows in all); change --split or add rows")
        hierarchy = Hierarchy.from_paths(self.paths)
        lengths = np.concatenate(self.lengths)[keep]
        report.update({f"rows_{s}": counts[s] for s in SPLITS})
        report["classes_per_level"] = hierarchy.class_counts
        report["rows_per_path_length"] = {int(k): int(v) for k, v in zip(*np.unique(lengths, return_counts=True))}
        return keep, split, hierarchy, report


def _first_of_each(keys: np.ndarray) -> np.ndarray:
    """Per row of ``keys`` (rows of uint64 columns): is it the first row with its key?"""
    order = np.lexsort(keys.T[::-1])  # stable: equal keys stay in row order
    ranked = keys[order]
    new = np.ones(len(keys), bool)
    new[1:] = (ranked[1:] != ranked[:-1]).any(axis=1)
    first = np.zeros(len(keys), bool)
    first[order[new]] = True
    return first


def prepare(df: pd.DataFrame, *, text_col: str = "text", label_cols: Sequence[str] = ("labels",),
            label_sep: str = ">", depth: int | None = None, invalid_rows: str = "error",
            keep_duplicates: bool = False, split_col: str | None = "split",
            split_ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0, where: str = "input",
            relabel=None, empty_splits: bool = False) -> tuple[dict[str, pd.DataFrame], Hierarchy, dict]:
    """Validate rows and split them, in memory. Returns the splits, the hierarchy and a report
    (:func:`ingest` does the same a chunk at a time).

    ``relabel``: a function of the list of label paths (``ktt.taxonomy.relabel``), applied before
    validation; ``empty_splits``: allow a split without rows (rows appended to a dataset)."""
    rows, valid = _checked([df], text_col=text_col, label_cols=label_cols, label_sep=label_sep, depth=depth,
                           split_col=split_col, relabel=relabel, where=where, invalid_rows=invalid_rows)
    valid = pd.concat(valid, ignore_index=True)
    keep, split, hierarchy, report = rows.finish(invalid_rows=invalid_rows, keep_duplicates=keep_duplicates,
                                                 split_ratios=split_ratios, seed=seed, empty_splits=empty_splits,
                                                 where=where)
    out = valid[keep].reset_index(drop=True)
    splits = {s: out[split == i][["text", "labels"]].reset_index(drop=True) for i, s in enumerate(SPLITS)}
    return splits, hierarchy, report


def _checked(chunks, *, text_col, label_cols, label_sep, depth, split_col, relabel, where, invalid_rows, sink=None):
    """:func:`_valid_rows` of every chunk into a :class:`_Rows`; each chunk's valid rows go to
    ``sink`` (a function), or are returned in a list."""
    if invalid_rows not in ("error", "drop"):
        raise IngestError(f"invalid_rows must be 'error' or 'drop', not {invalid_rows!r}")
    if depth is not None and depth < 1:
        raise IngestError(f"depth must be at least 1, not {depth}")
    if not label_sep:
        raise IngestError("the label separator (--label-sep) must not be empty")
    rows, kept, offset, with_split = _Rows(), [], 0, None
    for chunk in chunks:
        valid, problems = _valid_rows(chunk, offset, text_col=text_col, label_cols=label_cols, label_sep=label_sep,
                                      depth=depth, split_col=split_col, relabel=relabel, where=where)
        if with_split is not None and ("split" in valid) != with_split and len(chunk):
            raise IngestError(f"{where}: column {split_col!r} is {'missing from' if with_split else 'given from'} "
                              f"row {offset + 1} on, {'given' if with_split else 'missing'} before: give every row "
                              "a split (train/val/test), or none")
        with_split = "split" in valid if len(chunk) else with_split
        rows.add(valid, problems, len(chunk))
        offset += len(chunk)
        kept.append(valid) if sink is None else sink(valid)
    if getattr(relabel, "check", None):
        relabel.check()
    numbers = [p[0] for p in rows.paths if len(p) == 1 and p[0].lstrip("-").isdigit()]
    if len(label_cols) == 1 and rows.paths and len(numbers) == len(rows.paths):
        # a CSV reads an id column as strings: numbers alone are class ids, not paths
        raise IngestError(f"{where}: column {label_cols[0]!r} holds only numbers (for example {min(numbers)!r}): "
                          f"class ids, not label paths; give class names (`a{label_sep}b`), several columns "
                          "with -c, or, for an SQL source, --label-table to map ids to names")
    return rows, kept


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
ROW_GROUP = 65_536  # rows of a split file's row groups: the same rows make the same bytes, however they came


class _SplitWriter:
    """A split's parquet file (``text``: string, ``labels``: list of strings), written in row
    groups of exactly ``ROW_GROUP`` rows whatever the chunks it is given: a dataset written a chunk
    at a time and one written at once are the same bytes (the manifest's content hash)."""

    def __init__(self, path: Path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.schema = pa.schema([("text", pa.string()), ("labels", pa.list_(pa.string()))])
        self.writer, self.parts, self.n = pq.ParquetWriter(path, self.schema), [], 0

    def add(self, part: pd.DataFrame) -> None:
        import pyarrow as pa

        self.parts.append(pa.table({"text": pa.array(part["text"].tolist(), pa.string()),
                                    "labels": pa.array([list(p) for p in part["labels"]], pa.list_(pa.string()))},
                                   schema=self.schema))
        self.n += len(part)
        if self.n >= ROW_GROUP:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        import pyarrow as pa

        table = pa.concat_tables(self.parts) if self.parts else self.schema.empty_table()
        done = len(table) if final else len(table) // ROW_GROUP * ROW_GROUP
        for i in range(0, done, ROW_GROUP):
            self.writer.write_table(table.slice(i, min(ROW_GROUP, done - i)), row_group_size=ROW_GROUP)
        self.parts, self.n = ([table.slice(done)] if done < len(table) else []), len(table) - done

    def close(self) -> None:
        self._flush(final=True)
        self.writer.close()


def ingest(source, root, name: str, *, where: str = "input", overwrite: bool = False,
           sample: dict | None = None, meta: dict | None = None, **options):
    """The one way data becomes a dataset (``ktt ingest``, ``ktt generate``, experiments).
    ``source``: a DataFrame, or DataFrame chunks (a file read a chunk at a time: :func:`read_chunks`).
    Rows are checked as :func:`prepare` checks them (``options``), a chunk at a time, into a temp
    file beside the dataset, then deduplicated and split from their keys (:class:`_Rows`) and
    written split by split: memory stays bounded at any number of rows, and the dataset is the
    one :func:`prepare` and :func:`write_dataset` would make of the same rows at once. ``sample``:
    split -> rows, a seeded sample of that split (it is read back into memory; the test split is
    best kept whole). Returns the dataset's folder, its hierarchy and the ingest report."""
    import pyarrow.parquet as pq

    chunks = [source] if isinstance(source, pd.DataFrame) else source
    split_ratios, seed = options.pop("split_ratios", (0.8, 0.1, 0.1)), options.get("seed", 0)
    keep_duplicates, invalid_rows = options.pop("keep_duplicates", False), options.pop("invalid_rows", "error")
    options.pop("seed", None), options.pop("empty_splits", None)
    defaults = {"text_col": "text", "label_cols": ("labels",), "label_sep": ">", "depth": None, "split_col": "split",
                "relabel": None}
    unknown = set(options) - set(defaults)
    if unknown:
        raise TypeError(f"ingest() got unexpected options {sorted(unknown)}")

    def fill(tmp: Path):
        rows_file = _SplitWriter(tmp / ".rows.parquet")  # each valid row's text and path; _Rows keeps its split
        try:
            rows, _ = _checked(chunks, where=where, invalid_rows=invalid_rows, sink=rows_file.add,
                               **{**defaults, **options})
        finally:
            rows_file.close()
        keep, split, hierarchy, report = rows.finish(invalid_rows=invalid_rows, keep_duplicates=keep_duplicates,
                                                     split_ratios=split_ratios, seed=seed, empty_splits=False,
                                                     where=where)
        writers, at, kept = {s: _SplitWriter(tmp / f"{s}.parquet") for s in SPLITS}, 0, 0
        try:
            for batch in pq.ParquetFile(tmp / ".rows.parquet").iter_batches(batch_size=16_384, use_threads=False):
                part = batch.to_pandas(use_threads=False)
                mine = keep[at:at + len(part)]
                part, where_to = part[mine], split[kept:kept + int(mine.sum())]
                at, kept = at + len(mine), kept + len(part)
                for i, s in enumerate(SPLITS):
                    writers[s].add(part[where_to == i])
        finally:
            for w in writers.values():
                w.close()
            (tmp / ".rows.parquet").unlink()
        for s, n in (sample or {}).items():
            if n:
                part = read_parquet(tmp / f"{s}.parquet")
                part = part.sample(min(int(n), len(part)), random_state=seed)
                _write_split(tmp / f"{s}.parquet", part)
        return hierarchy, {"source": where, "report": report, **(meta or {})}, report

    path, hierarchy, report = _write_folder(root, name, overwrite, fill)
    return path, hierarchy, report


def _write_split(path: Path, part: pd.DataFrame) -> None:
    w = _SplitWriter(path)
    try:
        w.add(part)
    finally:
        w.close()


def append(parent: "Dataset", df: pd.DataFrame, root, name: str, *, where: str = "input",
           overwrite: bool = False, **options):
    """A new version of ``parent`` with ``df``'s rows (reviewed rows: ``ktt.review``): a text the
    parent holds takes the new label where it is (a correction; a copy of it that the correction makes
    the same row as one in an earlier split is dropped: train, then val, then test), a new text
    joins the train split (or its own ``split`` column's). A text reviewed more than once takes its last row's label
    (review files are appended to: the last row is the latest review), whether the parent holds it
    or not; the report counts the earlier reviews it overrode (``reviews_overridden``). The
    manifest's ``lineage`` lists every version it came from. Returns the folder, the hierarchy and the report.
    A CSV's text and label cells lose the ``'`` KTT put before a would-be formula (``ktt.text.unescape``)."""
    if str(where).lower().endswith((".csv", ".tsv")):
        from .text import unescape

        cols = [options.get("text_col") or "text", *(options.get("label_cols") or ("labels",))]
        df = df.assign(**{c: unescape(df[c]) for c in cols if c in df.columns})
    splits, _, report = prepare(df, where=where, split_ratios=(1.0, 0.0, 0.0), empty_splits=True,
                                **{**options, "keep_duplicates": True})
    new = pd.concat([p.assign(split=s) for s, p in splits.items()], ignore_index=True)
    # the last valid review of a text decides, in file order (prepare keeps it within a split only):
    # each kept row's place in the file, from the same row checks
    o = {"text_col": "text", "label_cols": ("labels",), "label_sep": ">", "depth": None, "split_col": "split",
         **{k: v for k, v in options.items() if k in ("text_col", "label_cols", "label_sep", "depth", "split_col")}}
    checked, problems = _valid_rows(df, 0, relabel=None, where=where, **o)
    place = np.delete(np.arange(len(df)), [i for i, _ in problems])
    split = checked["split"].to_numpy() if "split" in checked else np.full(len(place), "train")
    at = np.concatenate([place[split == s] for s in SPLITS])
    if len(at) == len(new):  # always, but for a --map that empties a label
        new = new.assign(_at=at).sort_values("_at", kind="stable")
    earlier = new["text"].duplicated(keep="last").to_numpy()
    new = new[~earlier]
    report["reviews_overridden"] = int(earlier.sum())
    label_of = dict(zip(new["text"], new["labels"].map(tuple)))
    merged, corrected, known = {}, 0, set()
    for s in SPLITS:
        part = getattr(parent, s)
        labels = [label_of.get(t, p) for t, p in zip(part.texts, part.paths)]
        corrected += sum(a != b for a, b in zip(labels, part.paths))
        known.update(part.texts)
        merged[s] = pd.DataFrame({"text": part.texts, "labels": [list(p) for p in labels]})
    # a text held under two labels, corrected to one, is kept once, at its first row (train, then
    # val, then test): no test row the same as a training row (rows no review touched stay as they were)
    seen, dropped = set(), 0
    for s in SPLITS:
        again = np.zeros(len(merged[s]), bool)
        for i, (t, p) in enumerate(zip(merged[s]["text"], merged[s]["labels"])):
            if t in label_of:
                again[i] = (t, tuple(p)) in seen
                seen.add((t, tuple(p)))
        merged[s], dropped = merged[s][~again].reset_index(drop=True), dropped + int(again.sum())
    fresh = new[~new["text"].isin(known)]
    for s in SPLITS:
        merged[s] = pd.concat([merged[s], fresh[fresh["split"] == s][["text", "labels"]]], ignore_index=True)
    report["rows_dropped_as_duplicates"] = dropped
    hierarchy = waiting_classes(parent, (tuple(p) for part in merged.values() for p in part["labels"]))
    from .taxonomy import digest

    report.update({"rows_added": len(fresh), "rows_corrected": int(corrected),
                   **{f"rows_{s}": len(p) for s, p in merged.items()}, "classes_per_level": hierarchy.class_counts,
                   **({"taxonomy_changed": True} if digest(hierarchy) != parent.taxonomy else {}),
                   "paths_added": sorted(set(hierarchy.leaf_names) - set(parent.hierarchy.leaf_names))})
    lineage = [*parent.manifest.get("lineage", []),
               {"dataset": parent.name, "digest": parent.digest, "taxonomy": parent.taxonomy, "source": where,
                "rows_added": len(fresh), "rows_corrected": int(corrected)}]
    path = write_dataset(merged, hierarchy, root, name, overwrite=overwrite,
                         meta={"source": where, "report": report, "lineage": lineage})
    return path, hierarchy, report


def waiting_classes(parent: "Dataset", paths) -> Hierarchy:
    """The hierarchy of label ``paths`` and of every leaf of ``parent`` that no row of it has (a
    category ``ktt taxonomy add`` added, still waiting for its rows), with the descriptions of
    the classes it keeps: a class that lost its last row to a correction goes, one that never
    had a row stays."""
    from .zeroshot import unlabelled

    codes = np.concatenate([getattr(parent, s).codes for s in SPLITS])
    h = Hierarchy.from_paths([*paths, *unlabelled(parent.hierarchy, codes)])
    return Hierarchy(h.levels, {p: t for p, t in parent.hierarchy.descriptions.items() if h.class_index(p) is not None})


def add_classes(parent: "Dataset", paths: Sequence[str], root, name: str, *, descriptions: Sequence[str] = (),
                label_sep: str = ">", overwrite: bool = False) -> tuple[Path, Hierarchy]:
    """A new version of ``parent`` (``ktt taxonomy add``): its rows, and its taxonomy plus the
    categories ``paths`` (``"Dept > Category > New"``; any class of the path not yet in it is
    added too), no row labelled with them yet; ``descriptions[i]``, if given, describes
    ``paths[i]`` (words, synonyms: ``ktt.zeroshot``)."""
    if not label_sep.strip():
        raise BadValue(f"--label-sep must hold a character other than a space, not {label_sep!r}")
    if len(descriptions) > len(paths):
        raise BadValue(f"{len(descriptions)} descriptions for {len(paths)} categories: each --describe goes "
                       "with the category in the same place")
    new, h = [], parent.hierarchy
    for text in paths:
        path = tuple(x.strip() for x in str(text).split(label_sep))
        if not all(path) or any(c.isspace() and c != " " for x in path for c in x):
            raise BadValue(f"category {text!r} has an empty class name or a line break; write it as "
                           f"'Dept {label_sep} Category {label_sep} New'")
        if h.class_index(path) is not None or path in new:
            raise BadValue(f"category {' > '.join(path)!r} is already in the taxonomy of dataset {parent.name!r}")
        new.append(path)
    if not new:
        raise BadValue("name at least one category to add")
    old = [tuple(x for x in p if x != END) for p in h.levels[-1]]
    hierarchy = Hierarchy.from_paths([*old, *new])
    described = {**h.descriptions, **{p: " ".join(d.split()) for p, d in zip(new, descriptions) if d and d.strip()}}
    hierarchy = Hierarchy(hierarchy.levels, described)
    frames = {s: pd.DataFrame({"text": getattr(parent, s).texts, "labels": [list(p) for p in getattr(parent, s).paths]})
              for s in SPLITS}
    lineage = [*parent.manifest.get("lineage", []),
               {"dataset": parent.name, "digest": parent.digest, "taxonomy": parent.taxonomy,
                "source": "ktt taxonomy add", "categories_added": [" > ".join(p) for p in new]}]
    path = write_dataset(frames, hierarchy, root, name, overwrite=overwrite,
                         meta={"source": f"ktt taxonomy add {parent.name}", "lineage": lineage,
                               "report": {f"rows_{s}": len(f) for s, f in frames.items()} |
                                         {"categories_added": [" > ".join(p) for p in new]}})
    return path, hierarchy


def write_dataset(splits: dict[str, pd.DataFrame], hierarchy: Hierarchy, root: str | os.PathLike,
                  name: str, *, meta: dict | None = None, overwrite: bool = False) -> Path:
    """Write a dataset folder all at once: built in a temp folder, then renamed into place."""
    def fill(tmp: Path):
        for s, part in splits.items():
            _write_split(tmp / f"{s}.parquet", part)
        return hierarchy, meta or {}, None
    return _write_folder(root, name, overwrite, fill)[0]


def check_name(name: str, what: str = "dataset name") -> str:
    """A dataset name as a folder name: from a user, or from a run's tags (anyone who can tag a
    run on a shared server could otherwise point ``ktt export`` outside ``build/``)."""
    import unicodedata

    if not isinstance(name, str) or not name or name.startswith(".") or len(name.encode()) > 200 or \
            any(c in "/\\" or unicodedata.category(c) == "Cc" for c in name):
        raise BadValue(f"bad {what} {name!r}: up to 200 bytes of UTF-8, no / or \\ or control characters, "
                       "not starting with '.'")
    return name


@contextlib.contextmanager
def claim_name(root: Path, name: str, busy: str):
    """Hold folder ``root/name`` exclusively while it is written (a dataset, an export): a lock on
    ``.<name>.lock``, released by the kernel if the process dies, so a killed writer never blocks
    the next. Holding it, the temp folders (``.<name>.tmp-*``) of killed writers are removed.
    ``busy``: the error when another process holds it."""
    import fcntl

    lock = root / f".{name}.lock"
    while True:
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BadValue(busy) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))  # not a lock file its holder just removed
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        # exactly this name's temp folders (mkdtemp's 8 characters, or the swap's "old"): a prefix
        # would also take those of a name like "<name>.tmp-x", held by another writer
        ours = re.compile(rf"\.{re.escape(name)}\.tmp-([a-z0-9_]{{8}}|old)")
        for stale in root.iterdir():
            if ours.fullmatch(stale.name):
                shutil.rmtree(stale, ignore_errors=True)
        yield
    finally:
        lock.unlink(missing_ok=True)  # while still held: a waiter that opened it retries on the new file
        os.close(fd)


def _write_folder(root, name: str, overwrite: bool, fill):
    """A dataset folder built by ``fill(tmp)`` (the split files; it returns the hierarchy, the
    manifest's extra keys and a value passed back) in a temp folder beside it, then renamed into
    place, the name held exclusively meanwhile (:func:`claim_name`)."""
    check_name(name)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    with claim_name(root, name, f"dataset {name!r} is being written by another ingest right now; "
                                "run this one when it has finished"):
        if final.exists() and not overwrite:
            raise IngestError(f"dataset {final} already exists; pass --overwrite to replace it")
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would stay on the dataset folder
        try:
            hierarchy, meta, back = fill(tmp)
            hierarchy.save(tmp / "hierarchy.json")
            from .taxonomy import digest

            manifest = {"name": name, "digest": _digest(tmp), "taxonomy": digest(hierarchy),
                        "rows": {s: pq_rows(tmp / f"{s}.parquet") for s in SPLITS},
                        "depth": hierarchy.depth, "classes_per_level": hierarchy.class_counts, **meta}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
            if final.exists():
                old = final.with_name(f".{name}.tmp-old")
                shutil.rmtree(old, ignore_errors=True)
                final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old)
            else:
                tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final, hierarchy, back


def pq_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


DIGESTED = (*(f"{s}.parquet" for s in SPLITS), "hierarchy.json")  # in this order


def _digest(folder: Path, blobs: dict | None = None) -> str:
    """The dataset's content hash, of its files' bytes (``blobs``: those already read, by name)."""
    h = hashlib.sha256()
    for f in DIGESTED:
        h.update(blobs[f] if blobs else (folder / f).read_bytes())
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
    try:
        h = Hierarchy.load(p / "hierarchy.json")
        manifest = json.loads((p / "manifest.json").read_text()) if (p / "manifest.json").exists() else {}
        blobs = {f: (p / f).read_bytes() for f in DIGESTED}  # read once: hashed, then parsed
        # what the files hold now: a folder edited after ingest is not logged under its old content
        digest = _digest(p, blobs)
        if manifest.get("digest", digest) != digest:
            raise BadValue(f"dataset {p.name!r} was changed after it was written (its files no longer match the "
                           f"digest in {p / 'manifest.json'}); write it again with `ktt ingest ... --overwrite`")
        manifest["digest"] = digest
        parts = {}
        for s in SPLITS:
            df = read_parquet(blobs.pop(f"{s}.parquet"))
            parts[s] = Split(df["text"].tolist(), [tuple(x) for x in df["labels"]], h)
    except BadValue:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:  # a truncated parquet, a missing file, bad JSON
        why = " ".join(str(e).split())[:300]
        raise BadValue(f"dataset {p.name!r} cannot be read ({type(e).__name__}: {why}); write it again with "
                       "`ktt ingest ... --overwrite`") from None
    return Dataset(manifest.get("name", p.name), p, h, manifest, **parts)
