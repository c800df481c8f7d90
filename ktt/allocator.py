"""glibc's allocator, set for a process that scores and fits with large, short-lived arrays.

By default glibc maps every block over 128 kB (the bound rises with what is freed, to 32 MB)
straight from the kernel and unmaps it when freed, and hands freed heap back to the kernel as
soon as 128 kB of it sit at the top: every chunk of scores a model computes is faulted in, page
by page, once more. With blocks under 32 MB kept on the heap and up to 256 MB of free heap kept,
a process fits and scores faster at the same peak RSS (``benchmarks/allocator.py``). Blocks of
32 MB and more are still mapped and unmapped, so the largest arrays (a catalog's weights, a
split's scores) go back to the kernel when freed. Set where an application starts (the CLI, a
sweep's worker process, a Spark executor's scoring), never by a library call such as ``train()``.
"""
from __future__ import annotations

import os

MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for the bound it moves (DEFAULT_MMAP_THRESHOLD_MAX, 64-bit)
TRIM_THRESHOLD = 256 << 20
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_state: str | None = None


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


def state() -> str:
    """What :func:`configure` set in this process, or ``"default"`` when it did not run."""
    return _state or ("environment" if any(v in os.environ for v in _ENV) else "default")
