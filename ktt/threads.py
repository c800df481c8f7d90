"""Threads per process: the machine's cores divided among the processes that share them.

torch and onnxruntime each default to every core in every process. Two busy processes with
that default fight: a MiniLM training step took 1.18 s beside another busy process with 2
threads, 0.58 s with 1 (2 cores). Whoever starts several processes (``ktt tune --workers``,
``ktt serve``) sets ``KTT_THREADS`` for them; training and the server read it.
"""
from __future__ import annotations

import os

ENV = "KTT_THREADS"


def cores() -> int:
    """The cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def share(processes: int) -> int:
    """Threads for each of ``processes`` busy processes on this machine (at least 1)."""
    return max(1, cores() // max(1, processes))


def configured() -> int | None:
    """``KTT_THREADS`` when set (and valid), else ``None``: leave the library's default."""
    value = os.environ.get(ENV, "")
    return int(value) if value.isdigit() and int(value) > 0 else None
