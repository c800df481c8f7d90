"""ktt.allocator: a fit's freed arrays stay on the heap instead of being faulted in again, and a
sweep's full collections skip what its first fit left."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# a fit's pattern: several arrays of a few MB (one chunk's scores per level) made and freed, again and again
PROBE = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from ktt import allocator
    state = allocator.configure() if sys.argv[1] == "configure" else "untouched"
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(2):
        arrays = [np.ones(1 << 20) for _ in range(4)]; del arrays
    before = faults()
    for _ in range(20):
        arrays = [np.ones(1 << 20) for _ in range(4)]; del arrays
    print(state, faults() - before)
""")


def probe(mode: str, **env) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, **env})
    state, faults = out.stdout.split()
    return state, int(faults)


@pytest.mark.skipif(not hasattr(os, "confstr") or not os.confstr("CS_GNU_LIBC_VERSION"), reason="glibc only")
def test_freed_arrays_are_reused_not_faulted_in_again():
    # 20 rounds of four 8 MB arrays: 163,840 pages touched; by default glibc hands most of them back
    _, untouched = probe("untouched")
    state, configured = probe("configure")
    assert state == "ktt"
    assert untouched > 20_000, untouched  # the churn this module exists for
    assert configured < 1_000, configured  # every round reuses the heap the first rounds faulted in


def test_glibcs_own_variables_win():
    state, _ = probe("configure", MALLOC_TRIM_THRESHOLD_="131072")
    assert state == "environment"  # set by the user: left as they are


SETTLE = textwrap.dedent("""
    import gc, json, weakref
    import pandas  # a library's modules: what a first fit leaves alive
    from ktt import allocator

    class Node:
        pass

    def cycle():
        a, b = Node(), Node()
        a.other, b.other = b, a
        return weakref.ref(a)

    first = allocator.settle()
    frozen_first = gc.get_freeze_count()
    before = cycle()  # garbage in a cycle when the second fit starts: collected, not frozen
    second = allocator.settle()
    out = {"calls": [first, second, allocator.settle()], "frozen_first": frozen_first,
           "frozen": gc.get_freeze_count(), "scanned": len(gc.get_objects()), "before_alive": before() is not None}
    after = cycle()  # garbage made after the freeze: still collected
    gc.collect()
    out["after_alive"] = after() is not None
    print(json.dumps(out))
""")


def test_second_fit_freezes_what_the_first_left():
    out = subprocess.run([sys.executable, "-c", SETTLE], cwd=ROOT, capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    assert got["calls"] == [False, True, False]  # once per process, at its second fit
    assert got["frozen_first"] == 0  # a process that fits once is left as it is
    assert got["frozen"] > 50_000, got  # pandas' modules, among others: never scanned again
    assert got["scanned"] < 1_000, got  # what a full collection still scans right after
    assert not got["before_alive"] and not got["after_alive"]  # garbage is collected, before and after
