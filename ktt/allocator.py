"""Memory management for a process that fits: glibc's allocator and Python's garbage collector.

**glibc's allocator**, set for a process that scores and fits with large, short-lived arrays.

By default glibc maps every block over 128 kB (the bound rises with what is freed, to 32 MB)
straight from the kernel and unmaps it when freed, and hands freed heap back to the kernel as
soon as 128 kB of it sit at the top: every chunk of scores a model computes is faulted in, page
by page, once more. With blocks under 32 MB kept on the heap and up to 256 MB of free heap kept,
a `tfidf_hsgd` fit of BigBasket (load, fit, calibrate, score two splits) takes 94% fewer page
faults and 71% less system time, at the same peak RSS (``benchmarks/allocator.py``). Blocks of
32 MB and more are still mapped and unmapped, so the largest arrays (a catalog's weights, a
split's scores) go back to the kernel when freed.

**Python's collector.** A full collection scans every container object alive: after a tracked
fit, about 425,000 (mostly the modules of MLflow, SQLAlchemy, pandas and scikit-learn), 0.3 s
each time. A tracked fit leaves enough objects behind to start one every second fit or so
(untracked fits, none): 0.18 s a fit, measured. From a process's second fit on (:func:`settle`),
what is alive then, garbage collected first, is frozen (``gc.freeze``) and never scanned again;
a full collection then scans what later fits made. A process that fits once is left as it is.
"""
from __future__ import annotations

import os

MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for the bound it moves (DEFAULT_MMAP_THRESHOLD_MAX, 64-bit)
TRIM_THRESHOLD = 256 << 20
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_state: str | None = None
_fits = 0


def configure() -> str:
    """Set the thresholds once per process, unless the user set glibc's own variables (theirs
    win) or this is not glibc. Returns what the process runs with, for the run's tags:
    ``"ktt"`` (set here), ``"environment"`` (the user's ``MALLOC_*_``) or ``"default"``."""
    global _state
    if _state is None:
        _state = _configure()
    return _state


def _configure() -> str:
    if any(v in os.environ for v in _ENV):
        return "environment"
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return "default"
        import ctypes

        libc = ctypes.CDLL(None)
        m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
        ok = libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD) == 1 and libc.mallopt(m_trim_threshold, TRIM_THRESHOLD) == 1
    except (AttributeError, OSError, ValueError):  # not glibc (confstr's name unknown), or no mallopt
        return "default"
    return "ktt" if ok else "default"


def settle() -> bool:
    """Count a fit of this process; at its second, collect garbage and freeze what survived (the
    modules the first fit imported, the caches it filled), so that later full collections do not
    scan it again. Objects frozen are never collected if they later become garbage in a cycle:
    only what is alive at that moment, once per process. Returns whether it froze now."""
    import gc

    global _fits
    _fits += 1
    if _fits != 2:
        return False
    gc.collect()
    gc.freeze()
    return True
