"""What tracking costs, and what the mechanisms issue 43 removed bought: the tracking design before
it, the one after and today's (``DESIGNS``), each from its own checkout, in one run.

    .venv/bin/python benchmarks/tracking_ab.py --before a89a6e9 [--rounds 4] [--part sweep|fit]

``--before`` (and ``--thread``, for ``--part fit``) is checked out with ``git worktree`` (offline: the
clone's history has it) and run with this checkout's environment. ``--part sweep``: whole commands
in fresh processes, start-up and imports counted; ``--part fit``: one fit's cost in a warm process.
"""
import json
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from benchmarks.harness import (PY, arguments, bigbasket, mlflow_server, t_interval, table, timed,  # noqa: E402
                                workdir, write_section)
from conftest import clean_env  # noqa: E402

TRIALS = 20
DESIGNS = {"before": "the design at a89a6e9 (a tracking worker process for a sweep's MLflow calls, a forked figure "
                     "process, `gc.freeze` from a process's second fit)",
           "upload thread": "at e070668 (one upload thread sending a run's MLflow calls in order, figures inline)",
           "now": "every MLflow call made where it is logged, figures inline"}

WORKER = """
import json, sys, time, inspect
from ktt import registry
from ktt.data import load_dataset
from ktt.metrics import evaluate, level_ece

def untracked(**params):  # what train() does but log: fit, calibrate, score test and validation
    ds = load_dataset("bigbasket", "datasets")
    model = registry.create("tfidf_hsgd", ds.hierarchy, **params).fit(ds.train, ds.val)
    model.calibrate(ds.val)
    for split in (ds.test, ds.val):
        pred, conf = model.predict_confident(split.texts)
        evaluate(ds.hierarchy, split.codes, pred), level_ece(ds.hierarchy, split.codes, pred, conf)

def tracked():
    from ktt.train import train
    train("tfidf_hsgd", "bigbasket", experiment="in-process",
          **({"figures": True} if "figures" in inspect.signature(train).parameters else {}))
    try:  # the design before: figures drawn by another process, waited for as ktt train waits at exit
        from ktt import figures as f
        f.wait()
    except AttributeError:
        pass

if sys.argv[1] == "untracked":  # a sweep's trials (the sampler, seed and space of `ktt tune --sampler random --seed 0`) or one fit
    trials, params = int(sys.argv[2]), [{}]
    load_dataset("bigbasket", "datasets")
    if trials:
        import optuna
        from ktt.tune import load_space, make_sampler, suggest
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        space, study = load_space("tfidf_hsgd"), optuna.create_study(sampler=make_sampler("random", 0), direction="maximize")
        params = []
        for _ in range(trials):
            t = study.ask()
            params.append(suggest(t, space))
            study.tell(t, 0.0)
    for p in params:
        untracked(**p)
else:  # pairs of fits in a warm process
    import mlflow
    mlflow.set_tracking_uri(sys.argv[3])
    times = {"untracked": [], "tracked": []}
    untracked(), tracked()  # warm: imports, the experiment, MLflow's one-time model checks
    for _ in range(int(sys.argv[2])):
        for kind, fn in (("untracked", untracked), ("tracked", tracked)):
            t0 = time.perf_counter(); fn(); times[kind].append(time.perf_counter() - t0)
    print(json.dumps(times))
"""


@contextmanager
def checkouts(tmp: Path, commits: dict):
    """Each design's checkout (``git worktree``) by name, today's tree as ``now``."""
    trees = {name: tmp / name.replace(" ", "-") for name in commits}
    try:
        for name, commit in commits.items():
            subprocess.run(["git", "worktree", "add", "--detach", str(trees[name]), commit], cwd=ROOT, check=True,
                           capture_output=True)
        yield {**trees, "now": ROOT}
    finally:
        for tree in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def in_process(designs: dict, tmp: Path, rounds: int, fits: int = 4) -> str:
    """Per design, fresh processes that alternate untracked fits and ``ktt train``'s tracked fit
    (logged model, figures) after a warm-up: the cost of tracking one fit, start-up apart."""
    over: dict[str, list[float]] = {name: [] for name in designs}
    base: dict[str, list[float]] = {name: [] for name in designs}
    for r in range(rounds):
        for name, tree in list(designs.items())[::1 if r % 2 == 0 else -1]:
            out = subprocess.run([PY, "-c", WORKER, "pairs", str(fits), f"sqlite:///{tmp / f'{name}-fit.db'}"], cwd=tmp,
                                 env={**clean_env(), "PYTHONPATH": str(tree)}, capture_output=True, text=True)
            if out.returncode:
                raise RuntimeError(out.stderr[-3000:])
            t = json.loads(out.stdout.strip().splitlines()[-1])
            over[name] += list(np.subtract(t["tracked"], t["untracked"]))
            base[name] += t["untracked"]
            print(f"round {r + 1}: {name} {np.median(t['untracked']):.2f} s untracked, "
                  f"{np.median(t['tracked']):.2f} s tracked", flush=True)
    rows = [[name, f"{np.median(base[name]):.2f}", f"{np.median(base[name]) + np.median(over[name]):.2f}",
             t_interval(over[name], "", 2), f"at most +0.5 s: {'met' if np.mean(over[name]) <= 0.5 else 'missed'}"]
            for name in designs]
    return "\n\n".join([
        "## What tracking costs one fit, in a warm process (issue 43)",
        f"Command: `.venv/bin/python benchmarks/tracking_ab.py --part fit --rounds {rounds}`",
        "Designs: " + "; ".join(f"{name}: {what}" for name, what in DESIGNS.items() if name in designs) + ".",
        f"`tfidf_hsgd` on BigBasket, SQLite. Per design, {rounds} fresh processes (the designs alternating), each a "
        f"warm-up then {fits} pairs of an untracked fit (load, fit, calibrate, score test and validation) and `train()` "
        "as `ktt train` runs it (params, metrics, tables, both checkpoints, the logged pyfunc model, the five figures; "
        "the design before: its figures waited for, as `ktt train` waits at exit). Tracked minus untracked per pair: "
        "mean and 95% t-interval.",
        table(["design", "untracked s", "tracked s", "tracked - untracked, s", "goal"], rows)])


def sweeps(designs: dict, tmp: Path, rounds: int) -> dict[str, np.ndarray]:
    """Per round, in turn: each design's sweep to SQLite and to the HTTP server, the same trials
    untracked, each design's ``ktt train`` to SQLite, one untracked fit. Wall seconds by job."""
    times: dict[str, list[float]] = {}
    n = 0
    with mlflow_server(tmp) as (_, http):
        for r in range(rounds):
            order = list(designs.items())[::1 if r % 2 == 0 else -1]  # alternating: drift hits both alike
            jobs = [("untracked sweep", None, None, [PY, "-c", WORKER, "untracked", str(TRIALS)])]
            for name, tree in order:
                for store in ("sqlite", "http"):
                    n += 1
                    jobs.append((f"{name} sweep {store}", tree, f"sqlite:///{tmp / f'{name}.db'}" if store == "sqlite" else http,
                                 [PY, "-m", "ktt", "tune", "tfidf_hsgd", "bigbasket", "--n-trials", str(TRIALS),
                                  "--sampler", "random", "--pruner", "none", "--seed", "0", "--study-name", f"ab{n}",
                                  "--storage", str(tmp / f"ab{n}.journal"), "--experiment", f"ab-{name}"]))
            jobs.append(("untracked fit", None, None, [PY, "-c", WORKER, "untracked", "0"]))
            jobs += [(f"{name} train sqlite", tree, f"sqlite:///{tmp / f'{name}.db'}",
                      [PY, "-m", "ktt", "train", "tfidf_hsgd", "bigbasket", "--experiment", f"ab-{name}"]) for name, tree in order]
            for label, tree, uri, cmd in jobs:
                env = {**clean_env(), "PYTHONPATH": str(tree or ROOT), **({"MLFLOW_TRACKING_URI": uri} if uri else {})}
                times.setdefault(label, []).append(timed(cmd, cwd=tmp, env=env))
                print(f"round {r + 1}: {label} {times[label][-1]:.1f} s", flush=True)
    return {k: np.asarray(v) for k, v in times.items()}


def main():
    args = arguments(__doc__, ("--before", "a89a6e9", "the commit of the design before issue 43"),
                     ("--thread", "e070668", "the commit of the design with one upload thread (--part fit)"),
                     ("--rounds", 4), ("--part", ("sweep", "fit"),
                                       "sweep: whole commands (ktt tune, ktt train); fit: one fit's cost in a warm process"))
    tmp = workdir("tracking-ab")
    commits = {"before": args.before, **({"upload thread": args.thread} if args.part == "fit" else {})}
    with checkouts(tmp, commits) as designs:
        bigbasket(root=tmp / "datasets")
        if args.part == "fit":
            return write_section("tracking-fit", in_process(designs, tmp, args.rounds))
        t = sweeps(designs, tmp, args.rounds)
    rows = []
    for what, kind, base, goal in (("20-trial sweep", "sweep", "untracked sweep", "at most +10%"),
                                   ("one fit", "train", "untracked fit", "at most +0.5 s")):
        for store in ("sqlite", "http") if kind == "sweep" else ("sqlite",):
            where = "SQLite file" if store == "sqlite" else "HTTP: `mlflow server`, PostgreSQL"
            for name in designs:
                over, extra = 100 * (t[f"{name} {kind} {store}"] / t[base] - 1), t[f"{name} {kind} {store}"] - t[base]
                met = np.mean(over) <= 10 if kind == "sweep" else np.mean(extra) <= 0.5
                rows.append([what, where, name, f"{np.median(t[base]):.1f}", f"{np.median(t[f'{name} {kind} {store}']):.1f}",
                             t_interval(over), f"{np.mean(extra):+.2f}", f"{goal}: {'met' if met else 'missed'}"])
            now, before = t[f"now {kind} {store}"], t[f"before {kind} {store}"]
            rows.append([what, where, "now - before", "", "", t_interval(100 * (now / before - 1)),
                         f"{np.mean(now - before):+.2f}", ""])
    write_section(
        "tracking-ab", "## What tracking costs, and what issue 43's removals cost (issue 43)",
        f"Command: `.venv/bin/python benchmarks/tracking_ab.py --before {args.before} --rounds {args.rounds}`",
        f"`tfidf_hsgd` on BigBasket. Before: {DESIGNS['before']}; now: {DESIGNS['now']}, a sweep's for its best "
        f"trial only. A sweep: `ktt tune --n-trials {TRIALS} --sampler random --pruner none "
        "--seed 0` (the same trials every time); untracked: the same trials' fits, calibrations and evaluations in one "
        "process, nothing logged. One fit: `ktt train` (logged model, figures) against one untracked fit. Whole commands "
        f"in fresh processes, start-up and imports included; {args.rounds} rounds, the designs' order alternating; "
        "per round the overhead over that round's untracked run, as mean and 95% t-interval over the rounds.",
        table(["what", "tracking", "design", "untracked s", "tracked s", "over untracked", "s more", "goal"], rows))


if __name__ == "__main__":
    main()
