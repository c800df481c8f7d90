"""Ingestion from every supported source, on real data, and its errors."""
import json
import sqlite3

import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather
import pytest

from ktt.errors import BadValue
from ktt.data import IngestError, load_dataset, prepare, read_file, read_sql, write_dataset, paths_from_label_table

RAW_COLS = ["category", "sub_category", "type"]


def ingest_df(df, tmp_path, name="ds", **kw):
    splits, h, report = prepare(df, **kw)
    return load_dataset(write_dataset(splits, h, tmp_path, name)), report


def test_raw_bigbasket_csv_as_is(raw_csv, tmp_path):
    df = read_file(raw_csv)
    assert len(df) == 27555
    with pytest.raises(IngestError, match=r"row \d+: column 'product' is empty.*--invalid-rows drop"):
        prepare(df, text_col="product", label_cols=RAW_COLS)
    ds, report = ingest_df(df, tmp_path, text_col="product", label_cols=RAW_COLS, invalid_rows="drop")
    assert ds.hierarchy.depth == 3
    assert report["rows_invalid"] == 1
    assert report["rows_duplicate"] > 1000  # the scrape repeats rows
    n = report["rows_train"] + report["rows_val"] + report["rows_test"]
    assert n == 27555 - 1 - report["rows_duplicate"]
    assert abs(report["rows_train"] / n - 0.8) < 0.01
    assert ds.hierarchy.sizes[0] == 11
    # nothing lost: every kept row is an original (product, path) pair
    orig = set(zip(df["product"].str.strip(), *(df[c].str.strip() for c in RAW_COLS)))
    assert all((t, *p) in orig for t, p in zip(ds.train.texts, ds.train.paths))


def test_official_split_column_honoured(bigbasket_df, tmp_path):
    ds, _ = ingest_df(bigbasket_df, tmp_path, "all", keep_duplicates=True)
    assert [len(ds.train), len(ds.val), len(ds.test)] == [(bigbasket_df.split == s).sum() for s in ("train", "val", "test")]
    assert ds.hierarchy.sizes == [11, 99, 597]
    assert set(ds.test.texts) == set(bigbasket_df[bigbasket_df.split == "test"].text)
    # by default exact (text, path) duplicates go, the first occurrence (and its split) kept
    dedup, report = ingest_df(bigbasket_df, tmp_path, "dedup")
    key = bigbasket_df.text.str.strip() + bigbasket_df.labels.map(" > ".join)
    first = bigbasket_df[~key.duplicated()]
    assert report["rows_duplicate"] == key.duplicated().sum() > 0
    assert [len(dedup.train), len(dedup.val), len(dedup.test)] == [(first.split == s).sum() for s in ("train", "val", "test")]


@pytest.mark.parametrize("fmt", ["csv_string", "json", "jsonl", "parquet", "arrow", "feather", "tsv"])
def test_every_file_format(clinc_df, tmp_path, fmt):
    df = clinc_df.sample(400, random_state=0)[["text", "labels"]].reset_index(drop=True)
    path = tmp_path / f"data.{fmt.split('_')[0]}"
    if fmt == "csv_string":
        df.assign(labels=df.labels.map(" > ".join)).to_csv(path, index=False)
    elif fmt == "tsv":
        df.assign(labels=df.labels.map("/".join)).to_csv(path, sep="\t", index=False)
    elif fmt == "json":
        df.assign(labels=df.labels.map(list)).to_json(path, orient="records")
    elif fmt == "jsonl":
        df.assign(labels=df.labels.map(list)).to_json(path, orient="records", lines=True)
    elif fmt == "parquet":
        df.to_parquet(path)
    elif fmt == "arrow":
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, pa.Table.from_pandas(df).schema) as w:
            w.write_table(pa.Table.from_pandas(df))
    else:
        feather.write_feather(df, path)
    ds, _ = ingest_df(read_file(path), tmp_path, label_sep="/" if fmt == "tsv" else ">", seed=1)
    all_paths = set(ds.train.paths) | set(ds.val.paths) | set(ds.test.paths)
    assert all_paths == {tuple(p) for p in df.labels}
    assert sorted(ds.train.texts + ds.val.texts + ds.test.texts) == sorted(df.text.str.strip())


def test_split_is_seeded(clinc_df, tmp_path):
    df = clinc_df.drop(columns="split").head(500)
    a, _ = ingest_df(df, tmp_path, "a", seed=3)
    b, _ = ingest_df(df, tmp_path, "b", seed=3)
    c, _ = ingest_df(df, tmp_path, "c", seed=4)
    assert a.test.texts == b.test.texts != c.test.texts
    assert (len(a.train), len(a.val), len(a.test)) == (400, 50, 50)


def test_depth_cut_and_ragged_paths(bigbasket_df, tmp_path):
    df = bigbasket_df.head(300).copy()
    ds, _ = ingest_df(df, tmp_path, "d2", depth=2)
    assert ds.hierarchy.depth == 2 and not ds.hierarchy.variable_depth
    df.at[5, "labels"] = list(df.at[5, "labels"][:2])
    short = tuple(df.at[5, "labels"])
    for depth in (None, 3):  # a shorter path keeps its length, with or without a cap
        ds, report = ingest_df(df, tmp_path, f"r{depth}", depth=depth)
        lengths = report["rows_per_path_length"]
        assert report["rows_invalid"] == 0 and lengths[2] == 1 and sum(lengths.values()) == len(ds.train) + len(ds.val) + len(ds.test)
        assert ds.hierarchy.depth == 3 and ds.hierarchy.variable_depth
        split = next(s for s in (ds.train, ds.val, ds.test) if short in s.paths)
        assert ds.hierarchy.decode(split.codes[[split.paths.index(short)]]) == [list(short)]
    ds, _ = ingest_df(df, tmp_path, "cut1", depth=1)
    assert ds.hierarchy.depth == 1 and not ds.hierarchy.variable_depth


def test_label_columns_with_empty_deeper_levels(tmp_path):
    """Several label columns: empty deeper columns end the path; an empty one above a filled one is invalid."""
    df = pd.DataFrame({"text": [f"t{i}" for i in range(40)], "l1": ["A", "B"] * 20,
                       "l2": ["a1", None] * 20, "l3": ["x", ""] * 20})
    splits, h, _ = prepare(df, label_cols=["l1", "l2", "l3"])
    assert h.names(2) == ["A > a1 > x", "B"] and sorted(map(tuple, splits["train"].labels))[0] == ("A", "a1", "x")
    df.loc[2, "l2"] = None
    with pytest.raises(IngestError, match=r"row 3: label path \['A', '', 'x'\] has an empty class name"):
        prepare(df, label_cols=["l1", "l2", "l3"])


def test_same_name_under_two_parents_is_two_classes(tmp_path):
    df = pd.DataFrame({"text": [f"t{i}" for i in range(40)],
                       "labels": [["Food", "Organic"], ["Drinks", "Organic"]] * 20})
    ds, _ = ingest_df(df, tmp_path)
    assert ds.hierarchy.sizes == [2, 2]


def test_sqlite_table_query_and_label_table(bigbasket_df, tmp_path):
    db = tmp_path / "shop.db"
    df = bigbasket_df.head(500)
    with sqlite3.connect(db) as con:
        df.assign(path=df.labels.map(" > ".join))[["text", "path"]].to_sql("products", con, index=False)
        # a label table with parent links; products_ids refers to leaf ids
        paths = sorted({tuple(p[: d + 1]) for p in df.labels for d in range(3)}, key=len)
        ids = {p: i for i, p in enumerate(paths)}
        pd.DataFrame({"id": list(ids.values()), "name": [p[-1] for p in ids],
                      "parent_id": [ids.get(p[:-1]) for p in ids]}).to_sql("labels", con, index=False)
        pd.DataFrame({"text": df.text, "label_id": [ids[tuple(p)] for p in df.labels]}).to_sql("items", con, index=False)
    url = f"sqlite:///{db}"
    a, _ = ingest_df(read_sql(url, table="products"), tmp_path, "a", label_cols=["path"], split_col=None)
    b, _ = ingest_df(read_sql(url, query="SELECT text, path FROM products WHERE rowid <= 400"), tmp_path, "b", keep_duplicates=True,
                     label_cols=["path"])
    items = read_sql(url, table="items")
    items["labels"] = paths_from_label_table(items.label_id, read_sql(url, table="labels"))
    c, _ = ingest_df(items, tmp_path, "c")
    assert a.hierarchy == c.hierarchy == ingest_df(df, tmp_path, "d")[0].hierarchy
    assert len(b.train) + len(b.val) + len(b.test) == 400
    with pytest.raises(IngestError, match="no table 'nope'"):
        read_sql(url, table="nope")
    with pytest.raises(IngestError, match="exactly one of"):
        read_sql(url)
    bad = pd.DataFrame({"id": [1, 1], "name": ["x", "x"], "parent_id": [None, 7]})
    with pytest.raises(IngestError, match="class id 1 .* two different parents"):
        paths_from_label_table(pd.Series([1]), bad)


def test_bad_files(tmp_path, bigbasket_path):
    with pytest.raises(IngestError, match="no such file"):
        read_file(tmp_path / "missing.csv")
    (tmp_path / "x.xlsx").write_text("x")
    with pytest.raises(IngestError, match="unknown format '.xlsx'"):
        read_file(tmp_path / "x.xlsx")
    trunc = tmp_path / "trunc.parquet"
    trunc.write_bytes(bigbasket_path.read_bytes()[:5000])
    with pytest.raises(IngestError, match="trunc.parquet: cannot read as parquet"):
        read_file(trunc)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,labels\ncr\xe8me br\xfbl\xe9e,Food > Dessert\n".encode("latin-1"))
    with pytest.raises(IngestError, match="latin.csv: not valid utf-8 .* --encoding"):
        read_file(latin)
    assert read_file(latin, encoding="latin-1").text[0] == "crème brûlée"


def test_bad_rows_are_named(bigbasket_df):
    df = bigbasket_df.head(100).copy()
    with pytest.raises(IngestError, match=r"input: no column 'title'; columns are \['text'"):
        prepare(df, text_col="title")
    nums = df.assign(labels=range(100))
    with pytest.raises(IngestError, match=r"column 'labels', row 1: label 0 is a int"):
        prepare(nums)
    nan = df.copy()
    nan.loc[3, "labels"] = None
    with pytest.raises(IngestError, match=r"row 4: label 'labels' is missing"):
        prepare(nan)
    with pytest.raises(IngestError, match="value 'holdout' is not one of train/val/test"):
        prepare(df.assign(split="holdout"))


def test_write_is_all_or_nothing(bigbasket_df, tmp_path):
    splits, h, _ = prepare(bigbasket_df.head(300))
    write_dataset(splits, h, tmp_path, "x")
    before = (tmp_path / "x" / "test.parquet").read_bytes()
    with pytest.raises(IngestError, match="already exists; pass --overwrite"):
        write_dataset(splits, h, tmp_path, "x")
    broken = dict(splits, test=object())  # fails while writing
    with pytest.raises(TypeError):
        write_dataset(broken, h, tmp_path, "x", overwrite=True)
    assert (tmp_path / "x" / "test.parquet").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # no temp folders left behind
    manifest = json.loads((tmp_path / "x" / "manifest.json").read_text())
    assert manifest["rows"] == {s: len(p) for s, p in splits.items()}
    assert len(manifest["digest"]) == 16


def catalog_export(bigbasket_df, path, sep):
    """A raw catalog export as it comes: no header row, the category a JSON list holding one
    '>>'-separated string (a few rows: a JSON list of the levels), a delimiter other than a comma."""
    rows = bigbasket_df.head(400)
    with open(path, "w", newline="") as f:
        import csv

        w = csv.writer(f, delimiter=sep)
        for i, (text, labels) in enumerate(zip(rows.text, rows.labels)):
            cat = json.dumps(list(labels)) if i % 10 == 0 else json.dumps([" >> ".join(labels)])
            w.writerow([f"sku-{i}", text, cat, f"{i % 7}.99"])
    return rows


@pytest.mark.parametrize("sep", [";", "\t", ","])
def test_headerless_csv_with_json_list_labels(bigbasket_df, tmp_path, sep):
    rows = catalog_export(bigbasket_df, tmp_path / "export.csv", sep)
    df = read_file(tmp_path / "export.csv", names=["sku", "title", "category", "price"])  # delimiter sniffed
    assert list(df.columns) == ["sku", "title", "category", "price"] and len(df) == len(rows)
    splits, h, _ = prepare(df, text_col="title", label_cols=["category"], label_sep=">>", keep_duplicates=True)
    got = pd.concat(splits.values())
    assert sorted(map(tuple, got.labels)) == sorted(map(tuple, rows.labels))  # no wrapper left on any level
    assert all(not c.startswith(("[", '"')) and not c.endswith(("]", '"')) for lv in h.levels for p in lv for c in p)


def test_headerless_csv_through_the_cli(bigbasket_df, tmp_path):
    import subprocess
    import sys

    catalog_export(bigbasket_df, tmp_path / "export.csv", ";")
    cmd = [sys.executable, "-m", "ktt", "ingest", str(tmp_path / "export.csv"), "-n", "shop", "--out", str(tmp_path),
           "--no-track", "--columns", "sku,title,category,price", "--text-col", "title", "-c", "category",
           "--label-sep", ">>"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert load_dataset("shop", tmp_path).hierarchy.depth == 3
    # a header-less file read as if it had a header: the first product became the column names
    bad_cmd = [("shop2" if a == "shop" else a) for a in cmd[:10] + cmd[12:]]
    bad = subprocess.run(bad_cmd, capture_output=True, text=True)
    assert bad.returncode == 2 and "no column 'title'" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "shop2").exists()


@pytest.mark.parametrize("cell, message", [
    ('["Food >> Pasta', "starts like a JSON list but is not one"),
    ('[1, 2]', "must be a JSON list of strings"),
    ('[]', "must be a JSON list of strings"),
])
def test_bad_json_list_labels(cell, message):
    df = pd.DataFrame({"text": ["a", "b"], "labels": ['["Food >> Pasta"]', cell]})
    with pytest.raises(IngestError, match=f"column 'labels', row 2: label .* {message}"):
        prepare(df, label_sep=">>")


def test_columns_are_checked(tmp_path):
    (tmp_path / "a.csv").write_text("x;y\n")
    with pytest.raises(IngestError, match="a name appears twice"):
        read_file(tmp_path / "a.csv", names=["t", "t"])
    with pytest.raises(IngestError, match="names the columns of a header-less CSV/TSV, not of parquet"):
        read_file(tmp_path / "a.csv", "parquet", names=["t"])


def test_ingest_streams_chunks_into_the_same_dataset(raw_csv, tmp_path):
    """``ingest`` a chunk at a time (a CSV read 5,000 rows at a time, or DataFrame chunks) makes the
    dataset that checking, deduplicating and splitting every row at once makes (``prepare`` and
    ``write_dataset``): the same files, byte for byte, so the same manifest hash; the same report.
    The raw BigBasket export has an invalid row, about 1,800 exact duplicates and titles under two paths."""
    from ktt.data import ingest, read_chunks

    opts = dict(text_col="product", label_cols=RAW_COLS, invalid_rows="drop")
    whole = read_file(raw_csv)
    splits, h, report = prepare(whole, **opts)
    at_once = write_dataset(splits, h, tmp_path, "at_once", meta={"source": "x", "report": report})
    chunked = list(read_chunks(raw_csv, rows=5000))
    assert len(chunked) == 6 and sum(map(len, chunked)) == len(whole)
    streamed, h2, report2 = ingest(iter(chunked), tmp_path, "streamed", where="x", **opts)
    assert h2 == h and report2 == report and report["rows_duplicate"] > 1000 and report["texts_with_several_paths"]
    for f in ("train.parquet", "val.parquet", "test.parquet", "hierarchy.json"):
        assert (at_once / f).read_bytes() == (streamed / f).read_bytes(), f
    manifest = [json.loads((p / "manifest.json").read_text()) for p in (at_once, streamed)]
    assert manifest[0]["digest"] == manifest[1]["digest"] and manifest[0]["rows"] == manifest[1]["rows"]
    # a DataFrame at once, and with the official split column honoured chunk by chunk
    assert (ingest(whole, tmp_path, "one", **opts)[0] / "train.parquet").read_bytes() == \
        (at_once / "train.parquet").read_bytes()
    clean = whole.dropna(subset=["product", *RAW_COLS]).reset_index(drop=True)
    second = clean.iloc[5000:6000].copy()
    second.iloc[0, second.columns.get_loc("product")] = "  "  # rows are numbered over the whole source
    with pytest.raises(IngestError, match=r"row 5001: column 'product' is empty \(1 invalid row\(s\) in all"):
        ingest(iter([clean.head(5000), second]), tmp_path, "bad", text_col="product", label_cols=RAW_COLS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["at_once", "one", "streamed"]  # nothing half-written


def test_ingest_memory_stays_bounded(tmp_path):
    """The rows held at once are a chunk's, whatever the source's size: what grows with the rows
    is their keys (deduplication and the split: about 40 bytes a row, and the sorts that read
    them), under 100 bytes a row at the peak (Python's allocations, tracemalloc: 60,000 more
    generated rows, chunks of 5,000; measured 22). Holding every row (a DataFrame of texts and
    label lists, as before) costs several hundred bytes a row."""
    import tracemalloc

    from ktt import synth
    from ktt.data import ingest

    taxonomy = synth.random_taxonomy(300, 4)
    peaks = []
    for rows in (20_000, 80_000):
        tracemalloc.start()
        ingest(synth.generate_catalog(rows, taxonomy, chunk=5000), tmp_path, f"c{rows}")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert (peaks[1] - peaks[0]) / 60_000 < 100, peaks


def test_streamed_ingest_judges_the_whole_source(tmp_path):
    """Found by the hostile review of issue 39, each read a chunk at a time as `ktt ingest` reads a
    file: a split column given only from some row on is a one-line error (it crashed); labels
    that are numbers in the first chunk only are accepted, as read at once (the check is over every
    row); a --map error names the row over the whole source and counts every chunk; an empty
    label separator is refused."""
    from ktt.data import ingest
    from ktt.hierarchy import Hierarchy
    from ktt.taxonomy import Relabel

    first = pd.DataFrame({"text": [f"t{i}" for i in range(40)], "labels": [f"{i % 5}" for i in range(40)]})
    later = pd.DataFrame({"text": [f"u{i}" for i in range(40)], "labels": ["A > a", "B > b"] * 20,
                          "split": ["train", "val", "test", "train"] * 10})
    with pytest.raises(IngestError, match=r"column 'split' is given from row 41 on, missing before"):
        ingest(iter([first, later]), tmp_path, "mixed")
    path, h, report = ingest(iter([first, later.drop(columns="split")]), tmp_path, "numbers_then_names")
    assert report["rows_read"] == 80 and ("A", "a") in h.levels[1]
    with pytest.raises(IngestError, match=r"holds only numbers \(for example '0'\)"):
        ingest(iter([first, first.assign(text=first.text + "x")]), tmp_path, "numbers")
    target = Hierarchy.from_paths([("A", "a"), ("B", "b"), ("C",)])
    relabel = Relabel({(str(i),): ("C",) for i in range(5)}, target)
    second = first.assign(text=first.text + "x", labels=["0", "1", "9"] + ["9", "8"] * 18 + ["0"])
    with pytest.raises(BadValue, match=r"row 43: label path '9' is not in the new taxonomy .*\(19 rows; 2 such"):
        ingest(iter([first, second]), tmp_path, "mapped", relabel=relabel)
    with pytest.raises(IngestError, match="label separator"):
        ingest(first, tmp_path, "sep", label_sep="")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["numbers_then_names"]


def test_reading_a_dataset_starts_no_thread(bigbasket_small):
    """A process that exits right after one of Arrow's threaded reads can abort in Arrow's thread
    pool (apache/arrow#34314: `ktt train nope DATASET` did, about 1 run in 25 under load), so KTT
    reads Parquet on the calling thread: loading a dataset leaves the process's thread count as it was."""
    import subprocess
    import sys

    code = ("import os, ktt.data as d\n"
            "count = lambda: len(os.listdir('/proc/self/task'))\n"
            f"before = count(); ds = d.load_dataset('bb_small', {str(bigbasket_small)!r})\n"
            "print(before, count(), len(ds.train.texts))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == out[1] and int(out[2]) > 500, out
