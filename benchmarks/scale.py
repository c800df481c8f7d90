"""Catalog scale: every model on catalogs shaped like a real taxonomy, 10k to 1M titles.

    .venv/bin/python benchmarks/scale.py            # the catalog table
    .venv/bin/python benchmarks/scale.py --steps    # one encoder training step, 707 vs 21k classes

Each catalog comes from `ktt generate --categories 5600 --max-depth 7` (Google's taxonomy's
shape: paths of 1 to 7 levels, 10% of rows labelled at inner categories; 80/10/10 split). Every
step is its own process, as a user runs it (`ktt generate`, `ktt train`, `ktt export --bento`,
`bentoml serve-gunicorn`), timed, with the peak RSS of its whole process tree (sampled every 0.1 s
from /proc). Columns: fit (the `train_time_s` of the run), peak RSS of `ktt train`, the build
folder's size (arrays or graphs, and the BentoService bundle), in-process answers with their
confidences (`Model.predict_confident`, what the pyfunc, `ktt predict` and `ktt train`'s test
scoring compute) in rows/s on the test split, `ktt predict` of the test split's parquet file
through the run's logged model (rows/s of the whole command, loading included), served p99 at 8
concurrent clients (one title per request, benchmarks/loadgen.py), test hierarchical F1. One more
catalog comes from a taxonomy file (`ktt generate --taxonomy`, the file written in Google's
format from `ktt.synth.random_taxonomy(5600, 7, seed=1)`), at `--taxonomy-rows` titles. Encoder models: 1 epoch of MiniLM fine-tuning on at most `--encoder-rows`
training titles (a CPU budget). fastText (`fasttext-community`, hierarchical softmax, word
bigrams, 10 epochs, labels = whole paths) is installed into a throwaway virtual environment, as
HiClass is, and trains on the same rows as the reference; it has no server, so no p99.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import write_section  # noqa: E402

KTT = str(ROOT / ".venv" / "bin" / "ktt")
PY = str(ROOT / ".venv" / "bin" / "python")
FASTTEXT = "fasttext-community==0.11.9"
ENCODERS = ["db_linear", "db_bhcn", "db_bhcn_awx", "db_ahmcnf", "db_achmcnn"]


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


def measured(cmd, env=None, timeout=None) -> dict:
    """Run ``cmd``; its wall time, the peak RSS of its process tree, output and exit code."""
    t0, peak = time.perf_counter(), [0]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    done = threading.Event()

    def sample():
        while not done.wait(0.1):
            peak[0] = max(peak[0], tree_rss(proc.pid))
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        out += f"\n(stopped after {timeout} s)"
    done.set()
    watcher.join()
    return {"s": time.perf_counter() - t0, "peak_gb": peak[0] / 2**30, "out": out, "rc": proc.returncode}


PREDICT = r'''
import json, sys, time
from ktt import registry
from ktt.data import load_dataset
from ktt.export import resolve_source
src = resolve_source(sys.argv[1])
model = registry.get(src.model).load(src.checkpoint)
texts = load_dataset(src.dataset, sys.argv[2]).test.texts
model.predict_confident(texts[:256])  # warm
t0 = time.perf_counter(); model.predict_confident(texts); s = time.perf_counter() - t0
print(json.dumps({"rows_per_s": len(texts) / s}))
'''

FASTTEXT_WORKER = r'''
import json, sys, time, resource
import fasttext
d = sys.argv[1]
t0 = time.perf_counter()
m = fasttext.train_supervised(f"{d}/train.txt", loss="hs", wordNgrams=2, epoch=10, thread=2, verbose=0)
fit = time.perf_counter() - t0
texts = open(f"{d}/test.txt").read().splitlines()
t0 = time.perf_counter(); labels, _ = m.predict(texts); pred_s = time.perf_counter() - t0
json.dump({"fit_s": fit, "rows_per_s": len(texts) / pred_s, "pred": [l[0] for l in labels]}, open(f"{d}/out.json", "w"))
'''


def fasttext_env(tmp: Path) -> str:
    venv = tmp / "fasttext-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", FASTTEXT, "numpy"], check=True)
    return str(venv / "bin" / "python")


def fasttext_row(py: str, ds_root: Path, name: str, tmp: Path) -> dict:
    """fastText on the dataset's own train/test rows; labels are whole paths (one class per path)."""
    import numpy as np

    from ktt.data import load_dataset
    from ktt.metrics import evaluate
    from ktt.text import words

    ds = load_dataset(name, ds_root)
    work = tmp / f"fasttext-{name}"
    work.mkdir(exist_ok=True)
    keys = {tuple(row): i for i, row in enumerate(np.unique(ds.train.codes, axis=0).tolist())}
    paths = list(keys)
    clean = [" ".join(w) for w in words(ds.train.texts)]
    (work / "train.txt").write_text("\n".join(f"__label__{keys[tuple(c)]} {t}"
                                              for c, t in zip(ds.train.codes.tolist(), clean)) + "\n")
    (work / "test.txt").write_text("\n".join(" ".join(w) for w in words(ds.test.texts)) + "\n")
    (work / "worker.py").write_text(FASTTEXT_WORKER)
    run = measured([py, str(work / "worker.py"), str(work)])
    if run["rc"]:
        return {"error": run["out"][-300:]}
    out = json.loads((work / "out.json").read_text())
    pred = np.array([paths[int(label[len("__label__"):])] for label in out["pred"]])
    return {"fit_s": out["fit_s"], "peak_gb": run["peak_gb"], "rows_per_s": out["rows_per_s"],
            "h_f1": evaluate(ds.hierarchy, ds.test.codes, pred)["h_f1"], "build_mb": None, "p99": None}


def model_row(model: str, name: str, tmp: Path, env: dict, params: list[str], timeout: float,
              train_only: bool = False) -> dict:
    """Train, export (BentoService), predict in-process and serve one model; what each step cost."""
    from benchmarks.serving import serve
    from mlflow import MlflowClient

    args = ["--datasets", str(tmp / "datasets"), "--weights", str(tmp / "weights")]
    train = measured([KTT, "train", model, name, *args, *params], env, timeout)
    if train["rc"]:
        return {"error": train["out"].strip().splitlines()[-1] if train["out"].strip() else "failed"}
    run_id = train["out"].split("MLflow run ")[1].split(":")[0]
    metrics = MlflowClient().get_run(run_id).data.metrics
    row = {"fit_s": metrics["train_time_s"], "train_s": train["s"], "peak_gb": train["peak_gb"],
           "h_f1": metrics["test_h_f1"]}
    if train_only:
        return row
    export = measured([KTT, "export", run_id, "--bento", "--build", str(tmp / "build"), *args], env)
    if export["rc"]:
        return {**row, "error": export["out"].strip().splitlines()[-1][:200]}
    build = tmp / "build" / f"{model}_{name}"
    row["build_mb"] = sum(f.stat().st_size for f in build.rglob("*") if f.is_file()) / 2**20
    (tmp / "predict.py").write_text(PREDICT)
    pred = measured([PY, str(tmp / "predict.py"), run_id, str(tmp / "datasets")], env)
    row["rows_per_s"] = json.loads(pred["out"].strip().splitlines()[-1])["rows_per_s"] if not pred["rc"] else None
    test = tmp / "datasets" / name / "test.parquet"
    batch = measured([KTT, "predict", f"runs:/{run_id}/model", str(test), str(tmp / "answers.parquet"),
                      ], env)
    row["ktt_predict"] = _rows(test) / batch["s"] if not batch["rc"] else None
    row["p99"] = served_p99(serve, build / "inference", tmp, name)
    return row


def _rows(parquet: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(parquet).metadata.num_rows


def served_p99(serve, bundle: Path, tmp: Path, name: str) -> float:
    import requests

    from ktt.data import load_dataset

    texts = load_dataset(name, tmp / "datasets").test.texts[:2000]
    (tmp / "texts.json").write_text(json.dumps(texts))
    proc = serve(bundle, 5411)
    try:
        for t in texts[:50]:  # warm
            requests.post("http://127.0.0.1:5411/predict", json={"text": t}, timeout=60)
        run = subprocess.run([PY, str(ROOT / "benchmarks" / "loadgen.py"), "http://127.0.0.1:5411/predict",
                              str(tmp / "texts.json"), "--concurrency", "8", "--seconds", "10"],
                             capture_output=True, text=True, check=True)
        return json.loads(run.stdout)["p99"]
    finally:
        os.killpg(proc.pid, 15)
        proc.wait()


def step_costs(steps: int = 12) -> None:
    """One MiniLM training step (batch 32 real titles, fused AdamW) of every encoder model over
    BigBasket's classes and over a generated 5,600-category taxonomy, median of ``steps``."""
    import numpy as np
    import torch

    from benchmarks import bigbasket
    from ktt import registry
    from ktt.hierarchy import Hierarchy
    from ktt.synth import random_taxonomy

    torch.set_num_threads(2)
    ds = bigbasket.load()
    big = Hierarchy.from_paths(random_taxonomy(5600, 7))
    texts = ds.train.texts[:32 * steps]
    rows = []
    for name in ENCODERS:
        ms = {}
        for label, h in (("bigbasket", ds.hierarchy), ("catalog", big)):
            model = registry.create(name, h)
            model._build()
            model.net_.train()
            opt = torch.optim.AdamW([q for q in model.net_.parameters() if q.requires_grad], lr=1e-4, fused=True)
            codes = torch.as_tensor(h.leaf_paths()[np.random.default_rng(0).integers(h.n_leaves, size=len(texts))])
            times = []
            for i in range(steps + 2):  # two warm-up steps
                batch = model._batch(texts[32 * (i % steps):32 * (i % steps) + 32])
                t0 = time.perf_counter()
                loss = model.loss(model.net_(*batch), codes[32 * (i % steps):32 * (i % steps) + 32]).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                times.append(time.perf_counter() - t0)
            ms[label] = 1000 * float(np.median(times[2:]))
            ms[label + "_params"] = sum(q.numel() for q in model.net_.head.parameters()) / 1e6
        rows.append(f"| {name} | {ms['bigbasket']:.0f} ({ms['bigbasket_params']:.1f}M) | "
                    f"{ms['catalog']:.0f} ({ms['catalog_params']:.1f}M) | {ms['catalog'] / ms['bigbasket']:.2f} |")
        print(rows[-1], flush=True)
    write_section("scale-steps", "\n".join([
        "## One encoder training step: BigBasket's classes vs 5,600 categories (issue 24)", "",
        "Command: `.venv/bin/python benchmarks/scale.py --steps`", "",
        f"all-MiniLM-L6-v2, batch 32 real BigBasket titles, fused AdamW, 2 threads, median of 12 steps. "
        f"BigBasket: {ds.hierarchy.n_classes} classes; the generated taxonomy (`random_taxonomy(5600, 7)`): "
        f"{big.n_classes} classes once paths are padded with end classes, {big.n_leaves} at the last level. "
        "In brackets: the head's weights. Goal: at most 1.3x.", "",
        "| model | step ms, BigBasket | step ms, 5,600 categories | ratio |", "|---|---|---|---|", *rows]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", action="store_true", help="only the encoder training-step table")
    ap.add_argument("--rows", default="10000,100000,1000000", help="catalog sizes, comma-separated")
    ap.add_argument("--models", default="tfidf_hsgd,tfidf_lsgd," + ",".join(ENCODERS) + ",fasttext")
    ap.add_argument("--encoder-rows", type=int, default=10000,
                    help="encoder models run on catalogs of at most this many titles (1 epoch each on CPU)")
    ap.add_argument("--timeout-min", type=float, default=25, help="a fit running longer is stopped and reported")
    ap.add_argument("--encoder-params", default="epochs=1", help="encoder models' overrides, space-separated")
    ap.add_argument("--train-only", action="store_true", help="no export, predict or serving columns")
    ap.add_argument("--section", default="scale", help="docs/benchmarks.md section to write (another run: another key)")
    ap.add_argument("--taxonomy-rows", type=int, default=100_000,
                    help="titles of the catalog generated from a taxonomy file (0: none)")
    args = ap.parse_args()
    if args.steps:
        return step_costs()
    tmp = Path(tempfile.mkdtemp(prefix="ktt-scale-"))
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db", "KTT_DATASETS": str(tmp / "datasets")}
    os.environ.update(env)
    models = args.models.split(",")
    ft_py = fasttext_env(tmp) if "fasttext" in models else None
    from ktt.synth import random_taxonomy

    taxonomy = tmp / "taxonomy.txt"  # Google's format, written by this code (no third-party file)
    taxonomy.write_text("".join(f"{i} - {' > '.join(p)}\n" for i, p in enumerate(random_taxonomy(5600, 7, seed=1), 1)))
    catalogs = [(n, f"catalog{n // 1000}k", ["--categories", "5600", "--max-depth", "7"])
                for n in map(int, args.rows.split(","))]
    if args.taxonomy_rows:
        catalogs.append((args.taxonomy_rows, f"taxonomy{args.taxonomy_rows // 1000}k", ["--taxonomy", str(taxonomy)]))
    rows, gen_rows = [], []
    for n, name, how in catalogs:
        gen = measured([KTT, "generate", "-n", name, "--rows", str(n), *how, "--no-track",
                        "--out", str(tmp / "datasets")], env)
        if gen["rc"]:
            raise SystemExit(gen["out"])
        label = f"{n:,}" + (" (taxonomy file)" if "--taxonomy" in how else "")
        gen_rows.append(f"| {label} | {gen['s']:.0f} | {gen['peak_gb']:.2f} |")
        print(gen_rows[-1], flush=True)
        for model in models:
            if model in ENCODERS and n > args.encoder_rows:
                continue
            if model == "fasttext":
                r = fasttext_row(ft_py, tmp / "datasets", name, tmp)
            else:
                params = [a for kv in args.encoder_params.split() for a in ("-p", kv)] if model in ENCODERS else []
                r = model_row(model, name, tmp, env, params, args.timeout_min * 60, args.train_only)

            def f(key, fmt):
                return format(r[key], fmt) if r.get(key) is not None else "—"
            rows.append(f"| {label} | {model} | {f('fit_s', '.0f')} | {f('train_s', '.0f')} | {f('peak_gb', '.2f')} | "
                        f"{f('build_mb', '.0f')} | {f('rows_per_s', ',.0f')} | {f('ktt_predict', ',.0f')} | "
                        f"{f('p99', '.0f')} | {f('h_f1', '.4f')} |" + (f" {r['error']} |" if "error" in r else " |"))
            print(rows[-1], flush=True)
    import shlex

    from ktt.data import load_dataset

    largest = load_dataset(catalogs[len(args.rows.split(",")) - 1][1], tmp / "datasets").hierarchy
    classes = (largest.n_classes, largest.n_leaves)

    given = " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {shlex.quote(str(v))}")
                     for k, v in vars(args).items() if k != "steps" and v != ap.get_default(k))
    title = "10k to 1M titles" if args.section == "scale" else f"{args.rows} titles, {args.models}"
    write_section(args.section, "\n".join([
        f"## Catalog scale: 5,600 categories, paths of 1 to 7 levels, {title} (issue 24)", "",
        f"Command: `.venv/bin/python benchmarks/scale.py{' ' + given if given else ''}`", "",
        "Catalogs from `ktt generate --rows N --categories 5600 --max-depth 7` (the largest: "
        f"{classes[0]:,} classes once paths are padded with end classes, {classes[1]:,} at the last level). "
        "Each step is its own process; RSS is the "
        f"peak of its whole process tree. Encoder models (`{args.encoder_params}`) on catalogs of at most "
        f"{args.encoder_rows:,} titles (CPU). fastText: the reference (no server).", "",
        "| titles | generate + ingest (s) | peak RSS (GB) |", "|---|---|---|", *gen_rows, "",
        "Goals (issue 39) at 1M titles: `tfidf_hsgd` answers with confidences at least 20,000 rows/s in-process "
        "and 10,000 through `ktt predict`; its whole `ktt train` run at most 4 minutes and 4 GB.", "",
        "| titles | model | fit (s) | `ktt train`, whole run (s) | peak RSS, train (GB) | build (MB) "
        "| answers with confidences (rows/s) | `ktt predict` (rows/s) | served p99, 8 clients (ms) "
        "| test hF1 | note |", "|---|---|---|---|---|---|---|---|---|---|---|", *rows]))


if __name__ == "__main__":
    main()
