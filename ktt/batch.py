"""Batch scoring of a file on one machine: ``ktt predict MODEL_URI INPUT OUTPUT``.

The model is loaded as MLflow loads it anywhere (``mlflow.pyfunc.load_model``: the same object
``mlflow.pyfunc.spark_udf`` runs on a Spark cluster), the input is read and the output written
in chunks, so a file larger than memory streams through; the output appears only when complete.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .errors import BadValue, NotFound
from .text import spreadsheet_safe

FORMATS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def _format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise BadValue(f"{path.name}: use a .csv, .tsv or .parquet file, not {path.suffix or 'no extension'!r}")
    return fmt


def _chunks(path: Path, fmt: str, rows: int):
    """(DataFrame chunk, total rows or None) from a CSV/TSV or Parquet file, ``rows`` at a time."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        f = pq.ParquetFile(path)
        return ((b.to_pandas(use_threads=False) for b in f.iter_batches(batch_size=rows, use_threads=False)),
                f.metadata.num_rows)
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, chunksize=rows), None
    except pd.errors.EmptyDataError:
        raise BadValue(f"{path.name}: an empty file (not even a header row)") from None


def _review(pyfunc, texts: list[str], depths: list[int], model_uri: str, path) -> None:
    """Append the review rows of ``texts`` (answered down to ``depths`` levels) to ``path``."""
    from .review import append_rows, review_rows
    from .taxonomy import digest

    model = pyfunc.unwrap_python_model().model
    h = model.hierarchy
    codes, conf = model.predict_confident(texts)
    append_rows(path, review_rows(texts, codes, conf, h, depths, model_uri, digest(h)))


def _load(model_uri: str, src: Path, dst: Path, threshold, target_precision):
    """The pyfunc model at ``model_uri``, once the input file, the output's folder and the stopping
    options are checked."""
    import mlflow

    if not src.is_file():
        raise NotFound(f"{src}: no such file")
    if not dst.parent.is_dir():  # before the model scores every row
        raise NotFound(f"{dst.parent}: no such folder for the output")
    if model_uri.startswith(("models:/", "runs:/")):
        from .tracking import check_tracking_uri

        check_tracking_uri()
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except Exception as e:  # MLflow raises several types for a bad URI; the user needs which URI and why
        raise NotFound(f"cannot load model {model_uri!r}: {str(e).splitlines()[0]}") from None
    if threshold is not None and target_precision is not None:
        raise BadValue("give a threshold or a target precision, not both")
    return model


def discover_file(model_uri: str, src: str | os.PathLike, dst: str | os.PathLike, *, text_col: str = "text",
                  threshold: float | None = None, target_precision: float | None = None, **options) -> int:
    """Candidate categories (``ktt.discover.propose``, ``options`` its own) among the titles of
    ``src`` whose answer stops above its leaf, written to ``dst`` (.csv, .tsv or .parquet).
    Returns how many were proposed."""
    from .discover import propose

    src, dst = Path(src), Path(dst)
    fmt_in, fmt_out = _format(src), _format(dst)
    model = _load(model_uri, src, dst, threshold, target_precision).unwrap_python_model().model
    chunks, _ = _chunks(src, fmt_in, 100_000)
    texts = []
    for chunk in chunks:
        if text_col not in chunk.columns:
            raise BadValue(f"{src.name}: no column {text_col!r} (columns: {list(chunk.columns)}); "
                           "name the text column with --text-col")
        texts += chunk[text_col].astype(str).tolist()
    if not texts:
        raise BadValue(f"{src.name}: no titles")
    codes, conf = model.predict_confident(texts)
    depths = model.hierarchy.stop_depths(codes, conf, *model.stop(threshold, target_precision))
    found = propose(model.hierarchy, texts, codes, depths, **options).drop(columns="rows")
    tmp = dst.with_name(f".{dst.name}.part")
    try:
        if fmt_out == "csv":
            spreadsheet_safe(found).to_csv(tmp, index=False, sep="\t" if dst.suffix.lower() == ".tsv" else ",")
        else:
            found.to_parquet(tmp, index=False)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return len(found)


def predict_file(model_uri: str, src: str | os.PathLike, dst: str | os.PathLike, *, text_col: str = "text",
                 rows: int = 10_000, threshold: float | None = None, target_precision: float | None = None,
                 review: str | os.PathLike | None = None, progress: bool = True) -> int:
    """Score every row of ``src`` into ``dst``: its columns, then ``path``, ``L<d>``,
    ``L<d>_confidence`` and ``review`` (``ktt.pyfunc.answers``; stopped at ``threshold`` or at the
    threshold that reached ``target_precision`` on validation). With ``review`` (a ``.csv`` or
    ``.jsonl`` file), the rows whose answer stopped above its path's end are appended to it
    (``ktt.review``). Returns the rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    src, dst = Path(src), Path(dst)
    fmt_in, fmt_out = _format(src), _format(dst)
    model = _load(model_uri, src, dst, threshold, target_precision)
    params = ({"threshold": float(threshold)} if threshold is not None else
              {"target_precision": float(target_precision)} if target_precision is not None else None)
    chunks, total = _chunks(src, fmt_in, rows)
    tmp = dst.with_name(f".{dst.name}.part")
    written, writer = 0, None
    try:
        with tqdm(total=total, unit="rows", disable=not progress) as bar:
            for chunk in chunks:
                if text_col not in chunk.columns:
                    raise BadValue(f"{src.name}: no column {text_col!r} (columns: {list(chunk.columns)}); "
                                   "name the text column with --text-col")
                texts = chunk[text_col].astype(str)
                answers = model.predict(pd.DataFrame({"text": texts}), params=params)
                if review is not None and answers["review"].any():
                    stopped = answers[answers["review"]]
                    depths = stopped.filter(regex=r"^L\d+$").notna().sum(axis=1).tolist()
                    _review(model, texts[answers["review"].to_numpy()].tolist(), depths, model_uri, review)
                out = pd.concat([chunk.reset_index(drop=True), answers.reset_index(drop=True)], axis=1)
                if fmt_out == "csv":
                    spreadsheet_safe(out).to_csv(tmp, mode="a" if written else "w", header=not written, index=False,
                               sep="\t" if dst.suffix.lower() == ".tsv" else ",")
                else:
                    table = pa.Table.from_pandas(out, preserve_index=False)
                    if writer is None:  # answers typed once: a chunk whose level 3 is all empty is still strings
                        schema = pa.schema([pa.field(f.name, pa.float64() if f.name.endswith("_confidence") else
                                                     pa.string()) if f.name in answers.columns else f
                                            for f in table.schema])
                        writer = pq.ParquetWriter(tmp, schema)
                    writer.write_table(table.cast(writer.schema))
                written += len(out)
                bar.update(len(out))
        if writer is not None:
            writer.close()
            writer = None
        if not written:
            raise BadValue(f"{src.name}: no rows to score")
        os.replace(tmp, dst)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return written
