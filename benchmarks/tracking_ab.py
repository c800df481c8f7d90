"""What tracking costs, and what the mechanisms issue 43 removed bought: the tracking design before
it (a tracking worker process for a sweep's MLflow calls, a forked figure process, ``gc.freeze``
from a process's second fit), the one after (one upload thread) and today's (every call made where it
is logged; figures drawn inline, a sweep's for its best trial only), each from its own checkout, in one run.

    .venv/bin/python benchmarks/tracking_ab.py --before a89a6e9 [--rounds 4] [--part sweep|fit]

``--before`` (and ``--thread``, for ``--part fit``) is checked out with ``git worktree`` (offline: the clone's history has it) and run
with this checkout's environment. Each round runs, in fresh processes and in turn: a 20-trial
``ktt tune tfidf_hsgd bigbasket`` of each design (random sampler, seed 0, no pruner: the same 20
trials) to SQLite and to an ``mlflow server`` on PostgreSQL (tests/conftest.py's), the same 20
trials untracked, one ``ktt train`` of each design to SQLite, and one untracked fit. Whole
commands are timed: start-up and imports count. ``--part fit``: one fit's cost in a warm process
(:func:`in_process`). Deduplicated BigBasket, official split.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from benchmarks.report import write_section  # noqa: E402
from conftest import Postgres, Server, clean_env, http_ok  # noqa: E402

DATA = Path(os.environ.get("KTT_SHARED_DATA", ROOT.parent / "shared" / "data")) / "bigbasket_products.parquet"
PY = str(ROOT / ".venv" / "bin" / "python")
TRIALS = 20
DESIGNS = {"before": "the design at a89a6e9 (a tracking worker process for a sweep's MLflow calls, a forked figure "
                     "process, `gc.freeze` from a process's second fit)",
           "upload thread": "at e070668 (one upload thread sending a run's MLflow calls in order, figures inline)",
           "now": "every MLflow call made where it is logged, figures inline"}

UNTRACKED = """
import sys, time
from ktt import registry
from ktt.data import load_dataset
from ktt.metrics import evaluate, level_ece
trials = int(sys.argv[1])
ds = load_dataset("bigbasket", "datasets")
if trials:  # the sweep's trials: the same sampler, seed and space as `ktt tune --sampler random --seed 0`
    import optuna
    from ktt.tune import load_space, make_sampler, suggest
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space, study = load_space("tfidf_hsgd"), optuna.create_study(sampler=make_sampler("random", 0), direction="maximize")
    params = []
    for _ in range(trials):
        t = study.ask()
        params.append(suggest(t, space))
        study.tell(t, 0.0)
else:
    params = [{}]
for p in params:  # what train() does but log: fit, calibrate, score test and validation
    ds = load_dataset("bigbasket", "datasets")
    model = registry.create("tfidf_hsgd", ds.hierarchy, **p).fit(ds.train, ds.val)
    model.calibrate(ds.val)
    for split in (ds.test, ds.val):
        pred, conf = model.predict_confident(split.texts)
        evaluate(ds.hierarchy, split.codes, pred), level_ece(ds.hierarchy, split.codes, pred, conf)
"""


IN_PROCESS = """
import json, sys, time, inspect
import mlflow
from ktt import registry
from ktt.data import load_dataset
from ktt.metrics import evaluate, level_ece
from ktt.train import train
mlflow.set_tracking_uri(sys.argv[2])
n = int(sys.argv[1])
figures = {"figures": True} if "figures" in inspect.signature(train).parameters else {}

def untracked():
    ds = load_dataset("bigbasket", "datasets")
    model = registry.create("tfidf_hsgd", ds.hierarchy).fit(ds.train, ds.val)
    model.calibrate(ds.val)
    for split in (ds.test, ds.val):
        pred, conf = model.predict_confident(split.texts)
        evaluate(ds.hierarchy, split.codes, pred), level_ece(ds.hierarchy, split.codes, pred, conf)

def tracked():
    train("tfidf_hsgd", "bigbasket", experiment="in-process", **figures)
    try:  # the design before: figures drawn by another process, waited for as ktt train waits at exit
        from ktt import figures as f
        f.wait()
    except AttributeError:
        pass
times = {"untracked": [], "tracked": []}
untracked(), tracked()  # warm: imports, the experiment, MLflow's one-time model checks
for _ in range(n):
    for kind, fn in (("untracked", untracked), ("tracked", tracked)):
        t0 = time.perf_counter(); fn(); times[kind].append(time.perf_counter() - t0)
print(json.dumps(times))
"""


def in_process(designs: dict, tmp: Path, rounds: int, fits: int) -> str:
    """Per design, fresh processes that alternate untracked fits and ``ktt train``'s tracked fit
    (logged model, figures) after a warm-up: the cost of tracking one fit, start-up apart."""
    import json

    over: dict[str, list[float]] = {name: [] for name in designs}
    base: dict[str, list[float]] = {name: [] for name in designs}
    for r in range(rounds):
        for name, tree in list(designs.items())[::1 if r % 2 == 0 else -1]:
            env = {**clean_env(), "PYTHONPATH": str(tree)}
            out = subprocess.run([PY, "-c", IN_PROCESS, str(fits), f"sqlite:///{tmp / f'{name}-fit.db'}"], cwd=tmp,
                                 env=env, capture_output=True, text=True)
            if out.returncode:
                raise RuntimeError(out.stderr[-3000:])
            t = json.loads(out.stdout.strip().splitlines()[-1])
            over[name] += list(np.subtract(t["tracked"], t["untracked"]))
            base[name] += t["untracked"]
            print(f"round {r + 1}: {name} {np.median(t['untracked']):.2f} s untracked, "
                  f"{np.median(t['tracked']):.2f} s tracked", flush=True)
    rows = [f"| {name} | {np.median(base[name]):.2f} | {np.median(base[name]) + np.median(over[name]):.2f} | "
            f"{interval(np.asarray(over[name]), '', 2)} | at most +0.5 s: {'met' if np.mean(over[name]) <= 0.5 else 'missed'} |"
            for name in designs]
    return "\n".join([
        "## What tracking costs one fit, in a warm process (issue 43)", "",
        f"Command: `.venv/bin/python benchmarks/tracking_ab.py --part fit --rounds {rounds}`", "",
        "Designs: " + "; ".join(f"{name}: {what}" for name, what in DESIGNS.items() if name in designs) + ".", "",
        f"`tfidf_hsgd` on BigBasket, SQLite. Per design, {rounds} fresh processes (the designs alternating), each a "
        f"warm-up then {fits} pairs of an untracked fit (load, fit, calibrate, score test and validation) and `train()` "
        "as `ktt train` runs it (params, metrics, tables, both checkpoints, the logged pyfunc model, the five figures; "
        "the design before: its figures waited for, as `ktt train` waits at exit). Tracked minus untracked per pair: "
        "mean and 95% t-interval.", "",
        "| design | untracked s | tracked s | tracked - untracked, s | goal |", "|---|---|---|---|---|", *rows])


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{cmd} failed:\n{out.stderr[-3000:]}")
    return time.perf_counter() - t0


def interval(x: np.ndarray, unit: str = "%", digits: int = 1) -> str:
    """Mean and 95% t-interval (over the rounds, or the pairs)."""
    from scipy import stats

    m = float(np.mean(x))
    h = float(stats.t.ppf(0.975, len(x) - 1) * np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
    return f"{m:+.{digits}f}{unit} [{m - h:+.{digits}f}, {m + h:+.{digits}f}]"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="a89a6e9", help="the commit of the design before issue 43")
    ap.add_argument("--thread", default="e070668", help="the commit of the design with one upload thread (--part fit)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--part", choices=("sweep", "fit"), default="sweep",
                    help="sweep: whole commands (ktt tune, ktt train); fit: one fit's cost in a warm process")
    args = ap.parse_args()
    from ktt.data import prepare, write_dataset

    tmp = Path(tempfile.mkdtemp(prefix="ktt-tracking-ab-"))
    trees = {"before": (tmp / "before", args.before), "upload thread": (tmp / "thread", args.thread)}
    if args.part == "sweep":
        del trees["upload thread"]
    for tree, commit in trees.values():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=ROOT, check=True, capture_output=True)
    splits, h, _ = prepare(pd.read_parquet(DATA))
    write_dataset(splits, h, tmp / "datasets", "bigbasket")
    designs = {**{name: tree for name, (tree, _) in trees.items()}, "now": ROOT}
    if args.part == "fit":
        try:
            body = in_process(designs, tmp, args.rounds, fits=4)
        finally:
            for tree, _ in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
            shutil.rmtree(tmp, ignore_errors=True)
        print(body)
        return write_section("tracking-fit", body)
    pg = Postgres()
    server = Server(lambda ports: [str(ROOT / ".venv/bin/mlflow"), "server", "--backend-store-uri", pg.url("mlflow"),
                                   "--serve-artifacts", "--artifacts-destination", str(tmp / "artifacts"),
                                   "--host", "127.0.0.1", "--port", str(ports[0]), "--workers", "2"],
                    lambda ports, log: http_ok(f"http://127.0.0.1:{ports[0]}/health"), env=clean_env())
    http = f"http://127.0.0.1:{server.ports[0]}"
    times: dict[str, list[float]] = {}
    n = 0
    try:
        for r in range(args.rounds):
            order = list(designs.items())[::1 if r % 2 == 0 else -1]  # alternating: drift hits both alike
            jobs = [("untracked sweep", None, None, [PY, "-c", UNTRACKED, str(TRIALS)])]
            for name, tree in order:
                for store in ("sqlite", "http"):
                    n += 1
                    uri = f"sqlite:///{tmp / f'{name}.db'}" if store == "sqlite" else http
                    jobs.append((f"{name} sweep {store}", tree, uri,
                                 [PY, "-m", "ktt", "tune", "tfidf_hsgd", "bigbasket", "--n-trials", str(TRIALS),
                                  "--sampler", "random", "--pruner", "none", "--seed", "0",
                                  "--study-name", f"ab{n}", "--storage", str(tmp / f"ab{n}.journal"),
                                  "--experiment", f"ab-{name}"]))
            jobs.append(("untracked fit", None, None, [PY, "-c", UNTRACKED, "0"]))
            for name, tree in order:
                jobs.append((f"{name} train sqlite", tree, f"sqlite:///{tmp / f'{name}.db'}",
                             [PY, "-m", "ktt", "train", "tfidf_hsgd", "bigbasket", "--experiment", f"ab-{name}"]))
            for label, tree, uri, cmd in jobs:
                env = {**clean_env(), "PYTHONPATH": str(tree or ROOT)}
                if uri:
                    env["MLFLOW_TRACKING_URI"] = uri
                times.setdefault(label, []).append(timed(cmd, tmp, env))
                print(f"round {r + 1}: {label} {times[label][-1]:.1f} s", flush=True)
    finally:
        server.stop()
        pg.stop()
        for tree, _ in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)

    t = {k: np.asarray(v) for k, v in times.items()}
    rows = []
    for what, base, goal in (("20-trial sweep", "untracked sweep", "at most +10%"), ("one fit", "untracked fit", "at most +0.5 s")):
        for store in (("sqlite", "http") if what != "one fit" else ("sqlite",)):
            for name in designs:
                label = f"{name} {'sweep' if what != 'one fit' else 'train'} {store}"
                over = 100 * (t[label] / t[base] - 1)
                extra = t[label] - t[base]
                met = (np.mean(over) <= 10) if what != "one fit" else (np.mean(extra) <= 0.5)
                rows.append(f"| {what} | {'SQLite file' if store == 'sqlite' else 'HTTP: `mlflow server`, PostgreSQL'} | "
                            f"{name} | {np.median(t[base]):.1f} | {np.median(t[label]):.1f} | {interval(over)} | "
                            f"{np.mean(extra):+.2f} | {goal}: {'met' if met else 'missed'} |")
            now, before = t[f"now {'sweep' if what != 'one fit' else 'train'} {store}"], \
                t[f"before {'sweep' if what != 'one fit' else 'train'} {store}"]
            rows.append(f"| {what} | {'SQLite file' if store == 'sqlite' else 'HTTP: `mlflow server`, PostgreSQL'} | "
                        f"now - before | | | {interval(100 * (now / before - 1))} | {np.mean(now - before):+.2f} | |")
    body = "\n".join([
        "## What tracking costs, and what issue 43's removals cost (issue 43)", "",
        f"Command: `.venv/bin/python benchmarks/tracking_ab.py --before {args.before} --rounds {args.rounds}`", "",
        f"`tfidf_hsgd` on BigBasket. Before: {DESIGNS['before']}; now: {DESIGNS['now']}, a sweep's for its best "
        f"trial only. A sweep: `ktt tune --n-trials {TRIALS} --sampler random --pruner none "
        "--seed 0` (the same trials every time); untracked: the same trials' fits, calibrations and evaluations in one "
        "process, nothing logged. One fit: `ktt train` (logged model, figures) against one untracked fit. Whole commands "
        f"in fresh processes, start-up and imports included; {args.rounds} rounds, the designs' order alternating; "
        "per round the overhead over that round's untracked run, as mean and 95% t-interval over the rounds.", "",
        "| what | tracking | design | untracked s | tracked s | over untracked | s more | goal |",
        "|---|---|---|---|---|---|---|---|", *rows])
    print(body)
    write_section("tracking-ab", body)


if __name__ == "__main__":
    main()
