"""Catalog scale (issues 24, 39): every model on catalogs shaped like a real taxonomy, 10k to 1M titles.

    .venv/bin/python benchmarks/scale.py            # the catalog table
    .venv/bin/python benchmarks/scale.py --steps    # one encoder training step, 707 vs 21k classes

Catalogs: `ktt generate --categories 5600 --max-depth 7` (Google's taxonomy's shape), and one from a
taxonomy file in Google's format (``random_taxonomy(5600, 7, seed=1)``, ``--taxonomy-rows`` titles).
Every step runs as a user runs it, in its own process (`ktt generate`, `ktt train`, `ktt export
--bento`, `ktt predict`, `bentoml serve-gunicorn`). Columns: fit (the run's `train_time_s`), the
peak RSS of `ktt train`, the build folder's size, `Model.predict_confident` rows/s on the test split,
`ktt predict` of the test split's parquet (the whole command), served p99 at 8 clients, test hF1.
fastText (`fasttext-community`, hierarchical softmax, word bigrams, 10 epochs, labels = whole paths)
trains in a throwaway environment on the same rows: the reference, without a server.
"""
import json
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import (KTT, PY, arguments, bigbasket, clocked, load, run_measured, serve, table,  # noqa: E402
                                throwaway_env, workdir, write_section)

FASTTEXT = "fasttext-community==0.11.9"
ENCODERS = ["db_linear", "db_bhcn", "db_bhcn_awx", "db_ahmcnf", "db_achmcnn"]
FLAGS = (("--steps", False, "only the encoder training-step table"),
         ("--rows", "10000,100000,1000000", "catalog sizes, comma-separated"),
         ("--models", "tfidf_hsgd,tfidf_lsgd," + ",".join(ENCODERS) + ",fasttext"),
         ("--encoder-rows", 10000, "encoder models run on catalogs of at most this many titles (1 epoch each on CPU)"),
         ("--timeout-min", 25.0, "a fit running longer is stopped and reported"),
         ("--encoder-params", "epochs=1", "encoder models' overrides, space-separated"),
         ("--train-only", False, "no export, predict or serving columns"),
         ("--section", "scale", "docs/benchmarks.md section to write (another run: another key)"),
         ("--taxonomy-rows", 100_000, "titles of the catalog generated from a taxonomy file (0: none)"))

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
import json, sys, time
import fasttext
d = sys.argv[1]
t0 = time.perf_counter()
m = fasttext.train_supervised(f"{d}/train.txt", loss="hs", wordNgrams=2, epoch=10, thread=2, verbose=0)
fit = time.perf_counter() - t0
texts = open(f"{d}/test.txt").read().splitlines()
t0 = time.perf_counter(); labels, _ = m.predict(texts); pred_s = time.perf_counter() - t0
json.dump({"fit_s": fit, "rows_per_s": len(texts) / pred_s, "pred": [l[0] for l in labels]}, open(f"{d}/out.json", "w"))
'''


def fasttext_row(py: str, ds_root: Path, name: str, tmp: Path) -> dict:
    """fastText on the dataset's own train/test rows; labels are whole paths (one class per path)."""
    import numpy as np

    from ktt.data import load_dataset
    from ktt.metrics import evaluate
    from ktt.text import words

    ds, work = load_dataset(name, ds_root), tmp / f"fasttext-{name}"
    work.mkdir(exist_ok=True)
    paths = [tuple(row) for row in np.unique(ds.train.codes, axis=0).tolist()]
    keys = {p: i for i, p in enumerate(paths)}
    (work / "train.txt").write_text("\n".join(f"__label__{keys[tuple(c)]} {' '.join(w)}"
                                              for c, w in zip(ds.train.codes.tolist(), words(ds.train.texts))) + "\n")
    (work / "test.txt").write_text("\n".join(" ".join(w) for w in words(ds.test.texts)) + "\n")
    run = run_measured([py, "-c", FASTTEXT_WORKER, work])
    if run["rc"]:
        return {"error": run["out"][-300:]}
    out = json.loads((work / "out.json").read_text())
    pred = np.array([paths[int(label[len("__label__"):])] for label in out["pred"]])
    return {"fit_s": out["fit_s"], "peak_gb": run["rss"] / 2**30, "rows_per_s": out["rows_per_s"],
            "h_f1": evaluate(ds.hierarchy, ds.test.codes, pred)["h_f1"]}


def model_row(model: str, name: str, tmp: Path, env: dict, params: list[str], timeout: float,
              train_only: bool = False) -> dict:
    """Train, export (BentoService), predict in-process and serve one model; what each step cost."""
    import pyarrow.parquet as pq
    from mlflow import MlflowClient

    from ktt.data import load_dataset

    args = ["--datasets", tmp / "datasets", "--weights", tmp / "weights"]
    train = run_measured([KTT, "train", model, name, *args, *params], env, timeout)
    if train["rc"]:
        return {"error": train["out"].strip().splitlines()[-1] if train["out"].strip() else "failed"}
    run_id = train["out"].split("MLflow run ")[1].split(":")[0]
    metrics = MlflowClient().get_run(run_id).data.metrics
    row = {"fit_s": metrics["train_time_s"], "train_s": train["s"], "peak_gb": train["rss"] / 2**30,
           "h_f1": metrics["test_h_f1"]}
    if train_only:
        return row
    export = run_measured([KTT, "export", run_id, "--bento", "--build", tmp / "build", *args], env)
    if export["rc"]:
        return {**row, "error": export["out"].strip().splitlines()[-1][:200]}
    build = tmp / "build" / f"{model}_{name}"
    row["build_mb"] = sum(f.stat().st_size for f in build.rglob("*") if f.is_file()) / 2**20
    pred = run_measured([PY, "-c", PREDICT, run_id, tmp / "datasets"], env)
    row["rows_per_s"] = None if pred["rc"] else json.loads(pred["out"].strip().splitlines()[-1])["rows_per_s"]
    test = tmp / "datasets" / name / "test.parquet"
    batch = run_measured([KTT, "predict", f"runs:/{run_id}/model", test, tmp / "answers.parquet"], env)
    row["ktt_predict"] = None if batch["rc"] else pq.ParquetFile(test).metadata.num_rows / batch["s"]
    texts = load_dataset(name, tmp / "datasets").test.texts[:2000]
    (tmp / "texts.json").write_text(json.dumps(texts))
    with serve(build / "inference", warm=texts[:50]) as url:
        row["p99"] = load(f"{url}/predict", tmp / "texts.json", 8, 10)["p99"]
    return row


def step_costs(steps: int = 12) -> None:
    """One MiniLM training step (batch 32 real titles, fused AdamW) of every encoder model over
    BigBasket's classes and over a generated 5,600-category taxonomy, median of ``steps``."""
    import numpy as np
    import torch

    from ktt import registry
    from ktt.hierarchy import Hierarchy
    from ktt.synth import random_taxonomy

    torch.set_num_threads(2)
    ds = bigbasket()
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

            def step(batch, target):  # the batch is tokenised before the clock starts
                loss = model.loss(model.net_(*batch), target).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            times = [clocked(step, model._batch(texts[at]), codes[at])[1]  # two warm-up steps first
                     for at in (slice(32 * (i % steps), 32 * (i % steps) + 32) for i in range(steps + 2))]
            ms[label] = 1000 * float(np.median(times[2:]))
            ms[label + "_params"] = sum(q.numel() for q in model.net_.head.parameters()) / 1e6
        rows.append([name, f"{ms['bigbasket']:.0f} ({ms['bigbasket_params']:.1f}M)",
                     f"{ms['catalog']:.0f} ({ms['catalog_params']:.1f}M)", f"{ms['catalog'] / ms['bigbasket']:.2f}"])
        print(rows[-1], flush=True)
    write_section(
        "scale-steps", "## One encoder training step: BigBasket's classes vs 5,600 categories (issue 24)",
        "Command: `.venv/bin/python benchmarks/scale.py --steps`",
        f"all-MiniLM-L6-v2, batch 32 real BigBasket titles, fused AdamW, 2 threads, median of 12 steps. "
        f"BigBasket: {ds.hierarchy.n_classes} classes; the generated taxonomy (`random_taxonomy(5600, 7)`): "
        f"{big.n_classes} classes once paths are padded with end classes, {big.n_leaves} at the last level. "
        "In brackets: the head's weights. Goal: at most 1.3x.",
        table(["model", "step ms, BigBasket", "step ms, 5,600 categories", "ratio"], rows))


def main() -> None:
    args = arguments(__doc__, *FLAGS)
    if args.steps:
        return step_costs()
    from ktt.data import load_dataset
    from ktt.synth import random_taxonomy

    tmp = workdir("scale")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db", "KTT_DATASETS": str(tmp / "datasets")}
    os.environ.update(env)
    models = args.models.split(",")
    ft_py = throwaway_env(tmp / "fasttext-venv", FASTTEXT, "numpy") if "fasttext" in models else None
    taxonomy = tmp / "taxonomy.txt"  # Google's format, written by this code (no third-party file)
    taxonomy.write_text("".join(f"{i} - {' > '.join(p)}\n" for i, p in enumerate(random_taxonomy(5600, 7, seed=1), 1)))
    catalogs = [(n, f"catalog{n // 1000}k", ["--categories", "5600", "--max-depth", "7"])
                for n in map(int, args.rows.split(","))]
    if args.taxonomy_rows:
        catalogs.append((args.taxonomy_rows, f"taxonomy{args.taxonomy_rows // 1000}k", ["--taxonomy", taxonomy]))
    rows, gen_rows = [], []
    for n, name, how in catalogs:
        gen = run_measured([KTT, "generate", "-n", name, "--rows", n, *how, "--no-track", "--out", tmp / "datasets"], env)
        if gen["rc"]:
            raise SystemExit(gen["out"])
        label = f"{n:,}" + (" (taxonomy file)" if "--taxonomy" in how else "")
        gen_rows.append([label, f"{gen['s']:.0f}", f"{gen['rss'] / 2**30:.2f}"])
        print(gen_rows[-1], flush=True)
        for model in models:
            if model in ENCODERS and n > args.encoder_rows:
                continue
            if model == "fasttext":
                r = fasttext_row(ft_py, tmp / "datasets", name, tmp)
            else:
                params = [a for kv in args.encoder_params.split() for a in ("-p", kv)] if model in ENCODERS else []
                r = model_row(model, name, tmp, env, params, args.timeout_min * 60, args.train_only)
            rows.append([label, model, *(format(r[k], fmt) if r.get(k) is not None else "—" for k, fmt in (
                ("fit_s", ".0f"), ("train_s", ".0f"), ("peak_gb", ".2f"), ("build_mb", ".0f"), ("rows_per_s", ",.0f"),
                ("ktt_predict", ",.0f"), ("p99", ".0f"), ("h_f1", ".4f"))), r.get("error", "")])
            print(rows[-1], flush=True)
    largest = load_dataset(catalogs[len(args.rows.split(",")) - 1][1], tmp / "datasets").hierarchy
    defaults = arguments(__doc__, *FLAGS, argv=[])
    given = " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {shlex.quote(str(v))}")
                     for k, v in vars(args).items() if k != "steps" and v != getattr(defaults, k))
    title = "10k to 1M titles" if args.section == "scale" else f"{args.rows} titles, {args.models}"
    write_section(
        args.section, f"## Catalog scale: 5,600 categories, paths of 1 to 7 levels, {title} (issue 24)",
        f"Command: `.venv/bin/python benchmarks/scale.py{' ' + given if given else ''}`",
        "Catalogs from `ktt generate --rows N --categories 5600 --max-depth 7` (the largest: "
        f"{largest.n_classes:,} classes once paths are padded with end classes, {largest.n_leaves:,} at the last "
        f"level). Each step is its own process; RSS is the peak of its whole process tree. Encoder models "
        f"(`{args.encoder_params}`) on catalogs of at most {args.encoder_rows:,} titles (CPU). fastText: the "
        "reference (no server).",
        table(["titles", "generate + ingest (s)", "peak RSS (GB)"], gen_rows),
        "Goals (issue 39) at 1M titles: `tfidf_hsgd` answers with confidences at least 20,000 rows/s in-process "
        "and 10,000 through `ktt predict`; its whole `ktt train` run at most 4 minutes and 4 GB.",
        table(["titles", "model", "fit (s)", "`ktt train`, whole run (s)", "peak RSS, train (GB)", "build (MB)",
               "answers with confidences (rows/s)", "`ktt predict` (rows/s)", "served p99, 8 clients (ms)", "test hF1",
               "note"], rows))


if __name__ == "__main__":
    main()
