"""What ``ktt.allocator`` buys a fit: the same untracked fits in processes with glibc's default
allocator and with KTT's thresholds, the two kinds of process alternating.

    .venv/bin/python benchmarks/allocator.py [--rounds 5]

A fit here is what ``train`` does without tracking: load the dataset, fit ``tfidf_hsgd``,
calibrate, score validation and test. BigBasket (deduplicated, official split): three fits per
process, the first not counted; the generated catalog (``ktt generate --rows 100000 --categories
5600``): one fit per process, for peak memory at a size where arrays pass the 32 MB threshold.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CMD = ".venv/bin/python benchmarks/allocator.py"


def untracked_fit(root, dataset: str) -> float:
    """What ``train`` does without tracking: load ``dataset``, fit ``tfidf_hsgd``, calibrate, score
    validation and test (metrics and calibration errors); returns the fit's seconds."""
    from ktt import registry
    from ktt.data import load_dataset
    from ktt.metrics import evaluate, level_ece

    ds = load_dataset(dataset, root)
    t0 = time.perf_counter()
    model = registry.create("tfidf_hsgd", ds.hierarchy).fit(ds.train, ds.val)
    fit_s = time.perf_counter() - t0
    model.calibrate(ds.val)
    for split in (ds.val, ds.test):
        pred, conf = model.predict_confident(split.texts)
        evaluate(ds.hierarchy, split.codes, pred), level_ece(ds.hierarchy, split.codes, pred, conf)
    return fit_s


def child(mode: str, root: str, dataset: str, fits: int) -> None:
    """One process: ``fits`` fits; prints their wall, page faults and system seconds, and the peak RSS."""
    from ktt import allocator

    state = allocator.configure() if mode == "ktt" else "default"
    out = []
    for _ in range(fits):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        untracked_fit(root, dataset)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        out.append({"s": time.perf_counter() - t0, "faults": r1.ru_minflt - r0.ru_minflt,
                    "sys": r1.ru_stime - r0.ru_stime, "cpu": r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime})
    print(json.dumps({"state": state, "fits": out, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run(mode: str, root: Path, dataset: str, fits: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(root), dataset, str(fits)],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--child", nargs=4, metavar=("MODE", "ROOT", "DATASET", "FITS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, root, dataset, fits = args.child
        return child(mode, root, dataset, int(fits))
    import pandas as pd

    from benchmarks.bigbasket import DATA
    from benchmarks.report import write_section
    from benchmarks.update import catalog
    from ktt.data import prepare, write_dataset

    root = Path(tempfile.mkdtemp(prefix="ktt-allocator-"))
    splits, h, _ = prepare(pd.read_parquet(DATA))
    write_dataset(splits, h, root, "bigbasket")
    catalog(100_000, 5600, root)
    rows = []
    for dataset, fits, skip, rounds in (("bigbasket", 3, 1, args.rounds), ("catalog", 1, 0, 2)):
        got = {"default": [], "ktt": []}
        for _ in range(rounds):
            for mode in got:
                got[mode].append(run(mode, root, dataset, fits))
        med = {}
        for mode, runs in got.items():
            counted = [f for r in runs for f in r["fits"][skip:]]
            med[mode] = {k: float(np.median([f[k] for f in counted])) for k in ("s", "faults", "sys", "cpu")}
            med[mode]["peak"] = max(r["peak_mb"] for r in runs)
            med[mode]["n"] = len(counted)
            assert {r["state"] for r in runs} == {"default" if mode == "default" else "ktt"}, runs
        d, k = med["default"], med["ktt"]
        for mode, m in med.items():
            rows.append(f"| {dataset} | {'glibc default' if mode == 'default' else 'ktt.allocator'} | {m['n']} | "
                        f"{m['s']:.2f} | {m['cpu']:.2f} | {m['sys']:.2f} | {m['faults']:,.0f} | {m['peak']:,.0f} |")
        rows.append(f"| {dataset} | change | | {100 * (k['s'] / d['s'] - 1):+.0f}% | {100 * (k['cpu'] / d['cpu'] - 1):+.0f}% | "
                    f"{100 * (k['sys'] / d['sys'] - 1):+.0f}% | {100 * (k['faults'] / d['faults'] - 1):+.0f}% | "
                    f"{100 * (k['peak'] / d['peak'] - 1):+.0f}% |")
        print(*rows[-3:], sep="\n", flush=True)
    body = "\n".join([
        "## glibc's allocator: what `ktt.allocator` buys a fit (issue 28)", "", f"Command: `{CMD}`", "",
        "Untracked `tfidf_hsgd` fits (load, fit, calibrate, score validation and test) in processes with glibc's "
        "default allocator and with `ktt.allocator`'s thresholds (blocks under 32 MB kept on the heap, up to 256 MB "
        f"of free heap kept), the two kinds of process alternating: BigBasket, {args.rounds} processes of each "
        "kind, 3 fits each, the first not counted; the generated catalog (`ktt generate --rows 100000 "
        "--categories 5600`), 2 processes of each kind, 1 fit each. Per fit, the median: wall seconds, CPU "
        "seconds, of them in the kernel, minor page faults; peak RSS: the largest of the processes of a kind.", "",
        "| data | allocator | fits | s | CPU s | system s | page faults | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|", *rows])
    write_section("allocator", body)


if __name__ == "__main__":
    main()
