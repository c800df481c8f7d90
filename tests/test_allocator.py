"""ktt.allocator: a fit's freed arrays stay on the heap instead of being faulted in again; set
by the application, never by a library call."""
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


def test_set_where_the_application_starts_never_by_train(bigbasket_small, tmp_path):
    """The CLI sets it for its process; ``train()`` called from Python (a notebook) leaves the
    host process's allocator as it was (issue 43)."""
    code = textwrap.dedent(f"""
        import mlflow
        from ktt import allocator
        from ktt.train import train
        mlflow.set_tracking_uri("sqlite:///{tmp_path / 'm.db'}")
        train("tfidf_hsgd", "bb_small", datasets_root="{bigbasket_small}", weights_root="{tmp_path / 'w'}",
              log_model=False, figures=False)
        print(allocator.state())
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "default"
