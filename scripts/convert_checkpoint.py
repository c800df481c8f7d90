"""Rewrite a pickled TF-IDF checkpoint (how KTT saved them before December 2026) as plain arrays.

    .venv/bin/python scripts/convert_checkpoint.py OLD.pt [NEW.pt]

Unpickling runs whatever code the file names: convert only a file you trust. NEW defaults to
OLD (replaced once the new file is whole; the old one is kept as OLD.pickle).
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ktt.tfidf import convert_pickled  # noqa: E402


def main(old: str, new: str | None = None) -> None:
    old_path = Path(old)
    out = Path(new or old)
    tmp = out.with_name(f".{out.name}.converting")
    convert_pickled(old_path, tmp)
    if new is None:
        os.replace(old_path, old_path.with_suffix(".pickle"))
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    main(*sys.argv[1:])
