"""Served throughput and latency of tfidf_hsgd and db_bhcn, float and int8, against the same export
in-process (issues 5, 13, 24).

    .venv/bin/python benchmarks/serving.py [--weights DIR --dataset DIR]

With --weights/--dataset (the weights root holding `<model>/<dataset name>/best_*.pt` and the KTT
dataset folder they were trained on), those checkpoints are served and both graphs' test accuracy
reported; without, tfidf_hsgd is trained on the official split and db_bhcn is all-MiniLM-L6-v2 with
an untrained head (latency does not depend on the weights).
"""
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import arguments, bento, bigbasket, clocked, load, serve, table, workdir, write_section  # noqa: E402

SECONDS = float(os.environ.get("KTT_BENCH_SECONDS", 10))
CONCURRENCY = (1, 8, 32)


def in_process(pred, texts):
    """One text a call (latency, and where it goes), and batches of 32 (throughput)."""
    lat, stages = [], np.zeros(3)
    for t in texts[:300]:
        prepared, a = clocked(pred.prepare, [t])
        feats, b = clocked(pred.encode, prepared)
        c = clocked(pred.chains, feats)[1]
        lat.append(a + b + c)
        stages += (a, b, c)
    batch_s = clocked(lambda: [pred.predict(texts[i:i + 32]) for i in range(0, 1024, 32)])[1]
    ms = np.array(lat) * 1000
    return {"rps": len(lat) / sum(lat), "p50": np.percentile(ms, 50), "p99": np.percentile(ms, 99),
            "batch_rps": 1024 / batch_s, "stages_ms": stages / len(lat) * 1000}


def models(args):
    """(name, model, test split, trained)."""
    from ktt import registry
    from ktt.data import load_dataset

    if args.weights:
        ds = load_dataset(args.dataset)
        for name in ("tfidf_hsgd", "db_bhcn"):
            best = sorted((Path(args.weights) / name / ds.name).glob("best_*.pt"))[-1]
            yield name, registry.get(name).load(best), ds.test, True
        return
    ds = bigbasket()
    yield "tfidf_hsgd", registry.create("tfidf_hsgd", ds.hierarchy).fit(ds.train), ds.test, True
    bhcn = registry.create("db_bhcn", ds.hierarchy)
    bhcn._build()
    yield "db_bhcn", bhcn, ds.test, False


def main():
    args = arguments(__doc__, ("--weights", None, "weights root with <model>/<dataset>/best_*.pt (with --dataset)"),
                     ("--dataset", None, "the KTT dataset folder those checkpoints were trained on"))
    from ktt.export import check_quantized, export_onnx, quantize_int8
    from ktt.serving.runtime import Predictor

    tmp = workdir("serve-bench")
    rows, accuracy, profile, goals = [], [], [], []
    for name, model, test, trained in models(args):
        texts = test.texts
        (tmp / "texts.json").write_text(json.dumps(texts))
        export_onnx(model, tmp / name / "float")
        quantize_int8(tmp / name / "float", tmp / name / "int8")
        if trained:
            q = check_quantized(tmp / name / "float", tmp / name / "int8", test, max_drop=100)
            accuracy.append([name, *(f"{q['float'][k]:.4f} / {q['int8'][k]:.4f}" for k in ("L1_accuracy", "leaf_accuracy", "h_f1")),
                             f"{100 * (q['float']['h_f1'] - q['int8']['h_f1']):+.2f}"])
        for graphs in ("float", "int8"):
            size = sum(f.stat().st_size for f in (tmp / name / graphs).iterdir()) / 2**20
            ip = in_process(Predictor.from_dir(tmp / name / graphs), texts)
            with serve(bento(name, tmp / name / graphs, tmp / name / f"inference-{graphs}"), warm=texts[:50]) as url:
                srv = {c: load(f"{url}/predict", tmp / "texts.json", c, SECONDS) for c in CONCURRENCY}
            label = [name, f"{graphs} ({size:.0f} MiB)"]
            rows += [[*label, "in-process, 1 text a call", 1, f"{ip['rps']:.0f}", f"{ip['p50']:.1f}", f"{ip['p99']:.1f}", 0],
                     [*label, "in-process, 32 texts a call", "-", f"{ip['batch_rps']:.0f}", "", "", ""],
                     *([*label, "served", c, f"{r['rps']:.0f}", f"{r['p50']:.1f}", f"{r['p99']:.1f}", r["errors"]]
                       for c, r in srv.items())]
            print(rows[-5:], flush=True)
            s = ip["stages_ms"]
            profile.append([f"{name} {graphs}", *(f"{v:.2f}" for v in (*s, sum(s))), f"{srv[1]['p50']:.1f}"])
            goals.append([f"{name} {graphs}: served at 32 / in-process batched", ">= 70%",
                          f"{100 * srv[32]['rps'] / ip['batch_rps']:.0f}% ({srv[32]['rps']:.0f} / {ip['batch_rps']:.0f})"])
            if name == "db_bhcn" and graphs == "int8":
                goals.append(["db_bhcn int8: p99 at concurrency 8", "< 100 ms", f"{srv[8]['p99']:.0f} ms"])
    given = f" --weights {args.weights} --dataset {args.dataset}" if args.weights else ""
    write_section(
        "serving", "## Serving: float and int8, BentoML 0.13.1 vs in-process (issues 5, 13, 24)",
        f"Command: `.venv/bin/python benchmarks/serving.py{given}`",
        *(["The checkpoints and dataset are those an `experiments/hierarchy_pays.yaml` run trains "
           "(`ktt experiment`, or `benchmarks/experiment_table.py`; its temp folder holds `weights/` and "
           "`datasets/`)."] if args.weights else []),
        f"One JSON request per BigBasket test title, {SECONDS:.0f} s per concurrency level, load from a separate "
        "process (`benchmarks/loadgen.py`) on loopback; server and load share this machine's 2 cores. "
        "In-process: the same export through `ktt.serving.runtime.Predictor` (onnxruntime for db_bhcn's graphs, "
        "numpy over tfidf_hsgd's sparse arrays). int8: `quantize_int8` (db_bhcn: onnxruntime dynamic "
        "quantization, int8 weights of every MatMul/Gemm; tfidf_hsgd: int8 weights, one scale per decision). "
        "\"encoder graph\" below is the TF-IDF featurisation for tfidf_hsgd.",
        table(["model", "graphs", "where", "concurrency", "requests/s", "p50 ms", "p99 ms", "errors"], rows),
        *(["Test-split accuracy, float / int8 (`check_quantized`, what `ktt export --quantize int8` reports):",
           table(["model", "L1 accuracy", "leaf accuracy", "hF1", "hF1 drop, points"], accuracy)] if accuracy else []),
        "Goals:", table(["goal", "target", "measured"], goals),
        "Where one text's time goes in-process (mean ms per call, 300 calls) vs the served p50 at concurrency 1:",
        table(["graphs", "preprocess", "encoder graph", "classifier + decode", "total", "served p50"], profile))


if __name__ == "__main__":
    main()
