"""Rewrite a pickled TF-IDF checkpoint (how KTT saved them before December 2026) as plain arrays.

    .venv/bin/python scripts/convert_checkpoint.py OLD [NEW]

Unpickling runs whatever code the file names: convert only a file you trust. Without NEW (or
with NEW the same file), OLD is replaced once the new file is whole, and the original is kept
as OLD.pickle (refused if that exists).
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(old: str, new: str | None = None) -> None:
    from ktt.tfidf import convert_pickled

    old_path = Path(old)
    out = Path(new or old)
    in_place = out.resolve() == old_path.resolve()
    backup = old_path.with_name(old_path.name + ".pickle")
    if not old_path.is_file():
        sys.exit(f"error: no file {old_path}")
    if old_path.read_bytes()[:2] == b"PK":
        sys.exit(f"error: {old_path} is already in today's format (not a pickle): nothing to convert")
    if in_place and backup.exists():
        sys.exit(f"error: {backup} exists; move it away first (the original is kept there)")
    tmp = out.with_name(f".{out.name}.converting")
    try:
        convert_pickled(old_path, tmp)
    except Exception as e:  # a pickle, but not one of KTT's checkpoints
        Path(tmp).unlink(missing_ok=True)
        sys.exit(f"error: {old_path} is not a pickled KTT TF-IDF checkpoint ({type(e).__name__}: {e})")
    if in_place:
        os.replace(old_path, backup)
    os.replace(tmp, out)
    print(f"wrote {out}" + (f" (the original is now {backup})" if in_place else ""))


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    main(*sys.argv[1:])
