"""The review loop: answers a model is not sure of go to people, and come back as data.

An answer goes to review when it stopped above its path's end: some level's confidence was below
the threshold (the model's, a request's, or the one that reached a target precision on
validation). ``ktt predict --review FILE`` and the service (``KTT_REVIEW_FILE``) append such rows
to a review file; a reviewer fills its ``labels`` column; ``ktt ingest FILE --append DATASET``
brings the reviewed rows back as a new version of the dataset (rows left without a label are
still waiting and are left out).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .hierarchy import SEP

COLUMNS = ("text", "answer", "guess", "confidences", "model", "taxonomy", "labels")


def review_rows(texts, codes, conf, hierarchy, depths, model: str | None, taxonomy: str) -> list[dict]:
    """One review row per text: its ``answer`` (the path answered, stopped at ``depths``), the
    model's ``guess`` (the whole path), each level's confidence in the guess (``conf``:
    ``Hierarchy.confidences``), the model, the taxonomy version, and an empty ``labels`` for the reviewer."""
    full = hierarchy.decode(codes)
    return [{"text": t, "answer": SEP.join(g[:k]), "guess": SEP.join(g),
             "confidences": json.dumps([round(float(c), 4) for c in conf[i, :len(g)]]),
             "model": model or "", "taxonomy": taxonomy, "labels": ""}
            for i, (t, g, k) in enumerate(zip(texts, full, depths))]


def append_rows(path: str | os.PathLike, rows: list[dict]) -> None:
    """Append review rows to a ``.jsonl`` or ``.csv`` file (a header when the CSV is new). One
    write per call, on a file opened for appending: concurrent writers (server workers) never
    interleave inside a line on a local file system."""
    if not rows:
        return
    path = Path(path)
    if path.suffix.lower() == ".csv":
        import pandas as pd

        text = pd.DataFrame(rows, columns=COLUMNS).to_csv(index=False, header=not path.exists()
                                                         or path.stat().st_size == 0)
    else:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def queue(confidences: np.ndarray) -> np.ndarray:
    """Row order for review: the least sure first, by the lowest confidence along each row's path
    (``(n, depth)``, NaN where the path has ended)."""
    return np.argsort(np.nanmin(np.asarray(confidences, dtype=np.float64), axis=1), kind="stable")
