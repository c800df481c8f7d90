"""What the benchmarks share, written once: the command line, the datasets, wall time, the peak RSS
of a process tree, intervals, markdown tables, a served bundle under load, and a section of
docs/benchmarks.md written between its markers."""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KTT_SHARED_DATA", ROOT.parent / "shared" / "data"))
DATA = SHARED / "bigbasket_products.parquet"
DOC = ROOT / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEvery number below is written by the command shown above it.\n"
PY, KTT = str(ROOT / ".venv" / "bin" / "python"), str(ROOT / ".venv" / "bin" / "ktt")


def write_section(key: str, *parts: str, doc: Path = DOC) -> None:
    """Replace section ``key`` of the page (append it when new) with ``parts``, a blank line
    between them, and print it. Its title keeps the level the section has on the page; a new
    one goes one level under the page's questions (``## How accurate?``)."""
    text = doc.read_text() if doc.exists() else HEADER
    pattern = re.compile(rf"<!-- {re.escape(key)}:start -->.*?<!-- {re.escape(key)}:end -->", re.S)
    old = pattern.search(text)
    level = re.search(r"^(#+) ", old.group(0), re.M) if old else None
    body = re.sub(r"^## ", (level.group(1) if level else "###") + " ", "\n\n".join(parts), flags=re.M)
    print(body, flush=True)
    block = f"<!-- {key}:start -->\n{body.rstrip()}\n\nMachine: {platform.processor() or platform.machine()}, " \
            f"Python {platform.python_version()}.\n<!-- {key}:end -->"
    text = pattern.sub(lambda _: block, text) if old else text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(exist_ok=True)
    doc.write_text(text)


def arguments(doc: str, *flags: tuple, argv=None) -> argparse.Namespace:
    """The command line. A flag is ``(name, default[, help])``, typed by its default (False: a
    switch; a tuple: the choices, the first the default; a list: choices, each flag given adds
    one); a name without ``--`` is positional."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, *rest in flags:
        default, help_ = (rest + [None, None])[:2]
        if not name.startswith("--"):
            ap.add_argument(name, help=help_)
        elif default is False:
            ap.add_argument(name, action="store_true", help=help_)
        elif isinstance(default, list):
            ap.add_argument(name, choices=default, action="append", help=help_)
        elif isinstance(default, tuple):
            ap.add_argument(name, choices=[c for c in default if c is not None], default=default[0], help=help_)
        else:
            ap.add_argument(name, default=default, type=str if default is None else type(default), help=help_)
    return ap.parse_args(argv)


def workdir(prefix: str, tracking: bool = False) -> Path:
    """A new temp folder; ``tracking``: MLflow runs go to a SQLite store in it, unless
    MLFLOW_TRACKING_URI says where."""
    tmp = Path(tempfile.mkdtemp(prefix=f"ktt-{prefix}-"))
    if tracking:
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    return tmp


def dataset(source=DATA, root=None, name: str = "bigbasket", *, sample: dict | None = None,
            keep_duplicates: bool = False):
    """``source`` (a parquet file or a DataFrame) as ``ktt ingest`` writes it (duplicates dropped,
    its split column kept), dataset ``name`` under ``root`` (a new temp folder by default), loaded.
    ``sample``: split -> rows, a seeded sample of that split. BigBasket by default."""
    import pandas as pd

    from ktt.data import ingest, load_dataset

    root = Path(root or tempfile.mkdtemp(prefix="ktt-bench-"))
    frame = source if isinstance(source, pd.DataFrame) else pd.read_parquet(source)
    ingest(frame, root, name, overwrite=True, sample=sample, keep_duplicates=keep_duplicates)
    return load_dataset(name, root)


bigbasket = dataset


def catalog(rows: int, categories: int = 5600, root=None, name: str = "catalog"):
    """A generated catalog, as ``ktt generate --rows ROWS --categories CATEGORIES --max-depth 7``
    makes it (paths of 1 to 7 levels, 10% labelled at inner categories, 5% a sibling's label)."""
    import pandas as pd

    from ktt import synth

    taxonomy = synth.random_taxonomy(categories, 7, 0)
    return dataset(pd.concat(synth.generate_catalog(rows, taxonomy, 0, 0.05, 0.1), ignore_index=True), root, name)


def throwaway_env(folder: Path, *packages: str) -> str:
    """A virtual environment at ``folder`` with ``packages``, for a reference that is no dependency
    of KTT: its python."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    subprocess.run([str(folder / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", *packages], check=True)
    return str(folder / "bin" / "python")


def clocked(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` and the wall seconds it took."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def best_of(fn, repeat: int = 5) -> float:
    """The fewest wall seconds of ``repeat`` calls of ``fn()``: the least disturbed."""
    return min(clocked(fn)[1] for _ in range(repeat))


def timed(cmd, **kwargs) -> float:
    """Wall seconds of subprocess ``cmd`` (``subprocess.run`` keywords); a failure raises with the
    end of its stderr."""
    out, s = clocked(subprocess.run, [str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    if out.returncode:
        raise RuntimeError(f"{cmd} failed:\n{out.stderr[-3000:]}")
    return s


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants, now."""
    children, rss = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
            rss[int(stat.parent.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total


def run_measured(cmd, env: dict | None = None, timeout: float | None = None) -> dict:
    """Run ``cmd`` (``env`` over this process's): wall seconds ``s``, the peak resident bytes ``rss``
    of its whole process tree (sampled every 0.1 s), its output ``out`` and exit code ``rc``."""
    t0, peak, done = time.perf_counter(), [0], threading.Event()
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})

    def sample():
        while not done.wait(0.1):
            peak[0] = max(peak[0], tree_rss(proc.pid))
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate()[0] + f"\n(stopped after {timeout} s)"
    done.set()
    watcher.join()
    return {"s": time.perf_counter() - t0, "rss": peak[0], "out": out, "rc": proc.returncode}


def t_interval(x, unit: str = "%", digits: int = 1) -> str:
    """Mean and 95% t-interval, as ``+1.2% [-0.3, +2.7]``."""
    import numpy as np
    from scipy import stats

    x = np.asarray(x, dtype=float)
    m = float(x.mean())
    h = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
    return f"{m:+.{digits}f}{unit} [{m - h:+.{digits}f}, {m + h:+.{digits}f}]"


def spread(values, fmt: str = "{:.3f}") -> str:
    """Mean ± sample sd over seeds (a single value alone)."""
    from ktt.compare import mean_sd

    m, sd = mean_sd(values)
    return fmt.format(m) + (f" ± {fmt.format(sd)}" if len(values) > 1 else "")


def paired(h, truth, a: list, b: list) -> dict:
    """``ktt.compare.paired_bootstrap`` of b against a, each a list of per-seed predicted codes of
    the same test rows (``truth``)."""
    from ktt.compare import paired_bootstrap
    from ktt.metrics import row_counts

    return paired_bootstrap(*([row_counts(h, truth, c) for c in side] for side in (a, b)))


def table(header: list, rows: list[list]) -> str:
    """A markdown table of cells."""
    def line(cells):
        return "| " + " | ".join(map(str, cells)) + " |"
    return "\n".join([line(header), "|---" * len(header) + "|", *map(line, rows)])


def bento(name: str, graphs: Path, out: Path) -> Path:
    """The BentoService bundle of model ``name``'s exported ``graphs``, built at ``out``."""
    from ktt import registry
    from ktt.export import build_bento, service_files

    svc = service_files(registry.get(name), Path(out).with_name(Path(out).name + "-bentoml"))["svc_lts.py"]
    return build_bento(svc, graphs, out)


def tests_helpers():
    """tests/conftest.py, where the tests' engines live (a served bundle, PostgreSQL, a tracking server)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import conftest

    return conftest


@contextmanager
def serve(bundle: Path, warm=(), **env):
    """``bentoml serve-gunicorn`` of ``bundle`` from the serving environment (one worker,
    micro-batching on; the tests' ``Served``), once ready warmed with a request per text of
    ``warm``: its URL."""
    import requests

    svc = tests_helpers().Served(bundle, gunicorn=True, probe="readyz", **env)
    try:
        for t in warm:
            requests.post(f"{svc.url}/predict", json={"text": t}, timeout=60)
        yield svc.url
    finally:
        svc.stop()


def load(url: str, texts_file: Path, concurrency: int, seconds: float, batch: int = 0) -> dict:
    """benchmarks/loadgen.py's closed-loop load on ``url``, from its own process: its JSON line."""
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loadgen.py"), url, str(texts_file),
                          "--concurrency", str(concurrency), "--seconds", str(seconds), "--batch", str(batch)],
                         capture_output=True, text=True, check=True)
    return json.loads(run.stdout)


@contextmanager
def mlflow_server(folder: Path):
    """A throw-away PostgreSQL and ``mlflow server`` on it, artifacts served from ``folder`` (the
    tests' own engines): ``(postgres, url)``."""
    t = tests_helpers()
    pg = t.Postgres()
    try:
        server = t.Server(lambda ports: [str(ROOT / ".venv/bin/mlflow"), "server", "--backend-store-uri", pg.url("mlflow"),
                                         "--serve-artifacts", "--artifacts-destination", str(folder / "artifacts"),
                                         "--host", "127.0.0.1", "--port", str(ports[0]), "--workers", "2"],
                          lambda ports, log: t.http_ok(f"http://127.0.0.1:{ports[0]}/health"), env=t.clean_env())
        try:
            yield pg, f"http://127.0.0.1:{server.ports[0]}"
        finally:
            server.stop()
    finally:
        pg.stop()
