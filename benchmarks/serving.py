"""Served throughput and latency of tfidf_hsgd and db_bhcn, float and int8, against the same export in-process.

    .venv/bin/python benchmarks/serving.py [--weights DIR --dataset DIR]

Each model's graphs (float, and int8 from `ktt export --quantize int8`'s quantize_int8) are
built as a BentoService and served by `bentoml serve-gunicorn` (one worker, micro-batching on)
from the serving environment; load comes from benchmarks/loadgen.py in its own process, one
JSON request per text, real BigBasket test titles. The ceiling is the same graphs called in this
process through ktt.serving.runtime. With --weights/--dataset (a KTT dataset folder and the
weights root that holds `<model>/<dataset name>/best_*.pt`), the trained checkpoints are used and
both graphs' test-split accuracy is reported; without, tfidf_hsgd is trained on the official split
and db_bhcn is all-MiniLM-L6-v2 with an untrained head (latency does not depend on the weights).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bigbasket import load  # noqa: E402
from benchmarks.report import write_section  # noqa: E402
from ktt import registry  # noqa: E402
from ktt.data import load_dataset  # noqa: E402
from ktt.export import build_bento, check_quantized, export_onnx, quantize_int8, service_files  # noqa: E402
from ktt.serving.runtime import Predictor  # noqa: E402

SECONDS = float(os.environ.get("KTT_BENCH_SECONDS", 10))
CONCURRENCY = (1, 8, 32)


def in_process(pred: Predictor, texts):
    """One text a call (latency, and where it goes), and batches of 32 (throughput)."""
    lat, stages = [], np.zeros(3)
    for t in texts[:300]:
        t0 = time.perf_counter()
        prepared = pred.prepare([t])
        t1 = time.perf_counter()
        feats = pred.encode(prepared)
        t2 = time.perf_counter()
        pred.chains(feats)
        t3 = time.perf_counter()
        lat.append(t3 - t0)
        stages += (t1 - t0, t2 - t1, t3 - t2)
    t0 = time.perf_counter()
    for i in range(0, 1024, 32):
        pred.predict(texts[i:i + 32])
    ms = np.array(lat) * 1000
    return {"rps": len(lat) / sum(lat), "p50": np.percentile(ms, 50), "p99": np.percentile(ms, 99),
            "batch_rps": 1024 / (time.perf_counter() - t0), "stages_ms": stages / len(lat) * 1000}


def serve(bundle: Path, port: int):
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
    proc = subprocess.Popen([str(ROOT / ".venv-serving" / "bin" / "bentoml"), "serve-gunicorn", str(bundle),
                             "--port", str(port), "--workers", "1"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(240):
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                return proc
        except requests.RequestException:  # not listening yet, or busy warming up
            time.sleep(0.5)
    raise TimeoutError("service did not start")


def served(bundle, port, texts_file, texts):
    proc = serve(bundle, port)
    try:
        url = f"http://127.0.0.1:{port}/predict"
        for t in texts[:50]:  # warm-up
            requests.post(url, json={"text": t}, timeout=60)
        out = {}
        for c in CONCURRENCY:
            run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loadgen.py"), url, str(texts_file),
                                  "--concurrency", str(c), "--seconds", str(SECONDS)],
                                 capture_output=True, text=True, check=True)
            out[c] = json.loads(run.stdout)
        return out
    finally:
        os.killpg(proc.pid, 15)
        proc.wait()


def models(args):
    if args.weights:
        ds = load_dataset(args.dataset)
        for name in ("tfidf_hsgd", "db_bhcn"):
            best = sorted((Path(args.weights) / name / ds.name).glob("best_*.pt"))[-1]
            yield name, registry.get(name).load(best), ds.test, True
        return
    ds = load()
    yield "tfidf_hsgd", registry.create("tfidf_hsgd", ds.hierarchy).fit(ds.train), ds.test, True
    bhcn = registry.create("db_bhcn", ds.hierarchy)
    bhcn._build()
    yield "db_bhcn", bhcn, ds.test, False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", help="weights root with <model>/<dataset>/best_*.pt (with --dataset)")
    ap.add_argument("--dataset", help="the KTT dataset folder those checkpoints were trained on")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ktt-serve-bench-"))
    rows, accuracy, profile, goals = [], [], [], []
    port = 5301
    for name, model, test, trained in models(args):
        texts = test.texts
        (tmp / "texts.json").write_text(json.dumps(texts))
        export_onnx(model, tmp / name / "float")
        quantize_int8(tmp / name / "float", tmp / name / "int8")
        if trained:
            q = check_quantized(tmp / name / "float", tmp / name / "int8", test, max_drop=100)
            accuracy.append(f"| {name} | {q['float']['L1_accuracy']:.4f} / {q['int8']['L1_accuracy']:.4f} | "
                            f"{q['float']['leaf_accuracy']:.4f} / {q['int8']['leaf_accuracy']:.4f} | "
                            f"{q['float']['h_f1']:.4f} / {q['int8']['h_f1']:.4f} | "
                            f"{100 * (q['float']['h_f1'] - q['int8']['h_f1']):+.2f} |")
        for graphs in ("float", "int8"):
            size = sum(f.stat().st_size for f in (tmp / name / graphs).iterdir()) / 2**20
            ip = in_process(Predictor.from_dir(tmp / name / graphs), texts)
            svc = service_files(registry.get(name), tmp / name / "bentoml")["svc_lts.py"]
            bundle = build_bento(svc, tmp / name / graphs, tmp / name / f"inference-{graphs}")
            port += 1
            srv = served(bundle, port, tmp / "texts.json", texts)
            label = f"{name} | {graphs} ({size:.0f} MiB)"
            rows.append(f"| {label} | in-process, 1 text a call | 1 | {ip['rps']:.0f} | {ip['p50']:.1f} | "
                        f"{ip['p99']:.1f} | 0 |")
            rows.append(f"| {label} | in-process, 32 texts a call | - | {ip['batch_rps']:.0f} | | | |")
            for c, r in srv.items():
                rows.append(f"| {label} | served | {c} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | "
                            f"{r['errors']} |")
            print("\n".join(rows[-5:]), flush=True)
            s = ip["stages_ms"]
            profile.append(f"| {name} {graphs} | {s[0]:.2f} | {s[1]:.2f} | {s[2]:.2f} | {sum(s):.2f} | "
                           f"{srv[1]['p50']:.1f} |")
            share = srv[32]["rps"] / ip["batch_rps"]
            goals.append(f"| {name} {graphs}: served at 32 / in-process batched | >= 70% | {100 * share:.0f}% "
                         f"({srv[32]['rps']:.0f} / {ip['batch_rps']:.0f}) |")
            if name == "db_bhcn" and graphs == "int8":
                goals.append(f"| db_bhcn int8: p99 at concurrency 8 | < 100 ms | {srv[8]['p99']:.0f} ms |")
    cmd = "`.venv/bin/python benchmarks/serving.py" + (
        f" --weights {args.weights} --dataset {args.dataset}`" if args.weights else "`")
    body = "\n".join([
        "## Serving: float and int8, BentoML 0.13.1 vs in-process (issues 5, 13, 24)", "",
        f"Command: {cmd}", "",
        *(["The checkpoints and dataset are those an `experiments/hierarchy_pays.yaml` run trains "
           "(`ktt experiment`, or `benchmarks/experiment_table.py`; its temp folder holds `weights/` and "
           "`datasets/`).", ""] if args.weights else []),
        f"One JSON request per BigBasket test title, {SECONDS:.0f} s per concurrency level, load from a separate "
        "process (`benchmarks/loadgen.py`) on loopback; server and load share this machine's 2 cores. "
        "In-process: the same export through `ktt.serving.runtime.Predictor` (onnxruntime for db_bhcn's graphs, "
        "numpy over tfidf_hsgd's sparse arrays). int8: `quantize_int8` (db_bhcn: onnxruntime dynamic "
        "quantization, int8 weights of every MatMul/Gemm; tfidf_hsgd: int8 weights, one scale per decision). "
        "\"encoder graph\" below is the TF-IDF featurisation for tfidf_hsgd.", "",
        "| model | graphs | where | concurrency | requests/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|", *rows, "",
        *(["Test-split accuracy, float / int8 (`check_quantized`, what `ktt export --quantize int8` reports):", "",
           "| model | L1 accuracy | leaf accuracy | hF1 | hF1 drop, points |", "|---|---|---|---|---|",
           *accuracy, ""] if accuracy else []),
        "Goals:", "", "| goal | target | measured |", "|---|---|---|", *goals, "",
        "Where one text's time goes in-process (mean ms per call, 300 calls) vs the served p50 at concurrency 1:", "",
        "| graphs | preprocess | encoder graph | classifier + decode | total | served p50 |",
        "|---|---|---|---|---|---|", *profile])
    write_section("serving", body)


if __name__ == "__main__":
    main()
