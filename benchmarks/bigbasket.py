"""The benchmarks' BigBasket: deduplicated, official split, written as a KTT dataset in a temp folder."""
import tempfile
from pathlib import Path

import pandas as pd

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "bigbasket_products.parquet"


def load(data: Path = DATA):
    """The ``ktt.data.Dataset`` of ``data`` (``ktt ingest``'s defaults: duplicates dropped)."""
    from ktt.data import load_dataset, prepare, write_dataset

    root = Path(tempfile.mkdtemp(prefix="ktt-bench-"))
    splits, h, _ = prepare(pd.read_parquet(data))
    write_dataset(splits, h, root, "bigbasket")
    return load_dataset("bigbasket", root)
