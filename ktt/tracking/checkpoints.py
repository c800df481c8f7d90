"""Checkpoint files: written atomically, named ``best_``/``last_<time>.pt`` under ``weights/<model>/<dataset>/``."""
from __future__ import annotations

import datetime as dt
import fcntl
import os
import re
import stat
import secrets
from pathlib import Path

from ..errors import BadValue

KINDS = ("best", "last")
SUFFIX = ".pt"  # every checkpoint file, whatever its model writes into it: best_<time>.pt, last_<time>.pt
# ISO 8601 basic format: no ':', which Windows and some artifact stores cannot write
TIME_FORMAT = "%Y%m%dT%H%M%S"
_TEMP = re.compile(r"^\.(best|last)_.+\.[0-9a-f]{12}\.tmp$")  # atomic_write's temp files of checkpoints and beside them


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename into ``path``: readers never see half a file. The temp
    file is locked while it is written, so that :func:`remove_stale` can tell one a killed
    process left (the kernel released its lock) from one being written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:  # not mkstemp: its 0600 mode would outlive the rename; 0666 here is cut by the umask
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            break
        except FileExistsError:
            continue
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def remove_stale(folder: Path) -> list[Path]:
    """Remove the temp files of :func:`atomic_write` in ``folder`` that no live process holds (a
    process killed mid-write leaves its temp file, as large as a checkpoint); the removed paths."""
    gone = []
    for tmp in Path(folder).glob(".*.tmp"):
        if not _TEMP.match(tmp.name):  # only atomic_write's names: a user's own dot-file stays
            continue
        try:
            if not stat.S_ISREG(os.lstat(tmp).st_mode):  # a link, a pipe: never opened, never removed
                continue
            fd = os.open(tmp, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError:  # removed meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: being written right now
            tmp.unlink(missing_ok=True)
            gone.append(tmp)
        except OSError:
            pass
        finally:
            os.close(fd)
    return gone


def claim(folder: Path, kind: str, ext: str = SUFFIX) -> tuple[Path, Path]:
    """Reserve ``<kind>_<ISO time, basic format><ext>`` exclusively (two runs in one second get
    distinct names): the reserved name, and the placeholder that holds it (remove it once written)."""
    t = dt.datetime.now().replace(microsecond=0)
    while True:
        final = folder / f"{kind}_{t.strftime(TIME_FORMAT)}{ext}"
        try:
            # O_EXCL on a placeholder: the name is ours even before the checkpoint is written.
            os.close(os.open(folder / f".{final.name}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            if not final.exists():
                return final, folder / f".{final.name}.claim"
            os.unlink(folder / f".{final.name}.claim")
        except FileExistsError:
            pass
        t += dt.timedelta(seconds=1)


def checkpoint_time(path: Path) -> dt.datetime:
    """When a ``best_``/``last_`` checkpoint was named: the basic format, or the extended one
    (``2026-11-27T22:55:44``) that earlier versions wrote."""
    stamp = Path(path).stem.partition("_")[2]
    for fmt, width in ((TIME_FORMAT, 15), ("%Y-%m-%dT%H:%M:%S", 19)):
        try:
            return dt.datetime.strptime(stamp[:width], fmt)
        except ValueError:
            continue
    raise BadValue(f"{Path(path).name}: not a best_/last_<time> checkpoint name")


def newest(folder: Path, kind: str = "best") -> Path | None:
    """The newest ``kind`` checkpoint in ``folder`` (by the time in its name), or None."""
    found = list(Path(folder).glob(f"{kind}_*{SUFFIX}"))
    return max(found, key=checkpoint_time) if found else None
