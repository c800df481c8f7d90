"""Served throughput and latency of tfidf_hsgd and db_bhcn, against onnxruntime in-process.

    .venv/bin/python benchmarks/serving.py

Each model is exported to ONNX, built as a BentoService and served by `bentoml serve-gunicorn`
(one worker, micro-batching on) from the serving environment; load comes from
benchmarks/loadgen.py in its own process, one JSON request per text, real BigBasket test
titles. The ceiling is the same graphs called in this process through ktt.serving.runtime.
db_bhcn is all-MiniLM-L6-v2 with an untrained head: latency does not depend on the weights.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import write_section  # noqa: E402
from ktt import registry  # noqa: E402
from ktt.data import Split, prepare  # noqa: E402
from ktt.export import build_bento, export_onnx  # noqa: E402
from ktt.serving.runtime import Predictor  # noqa: E402

DATA = Path(os.environ.get("KTT_SHARED_DATA", ROOT.parent / "shared" / "data")) / "bigbasket_products.parquet"
SECONDS = float(os.environ.get("KTT_BENCH_SECONDS", 10))
CONCURRENCY = (1, 8, 32)


def in_process(pred: Predictor, texts):
    lat = []
    for t in texts[:300]:
        t0 = time.perf_counter()
        pred.predict([t])
        lat.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(0, 1024, 32):
        pred.predict(texts[i:i + 32])
    batch_rps = 1024 / (time.perf_counter() - t0)
    ms = np.array(lat) * 1000
    return {"rps": len(lat) / sum(lat), "p50": np.percentile(ms, 50), "p99": np.percentile(ms, 99)}, batch_rps


def serve(bundle: Path, port: int):
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
    proc = subprocess.Popen([str(ROOT / ".venv-serving" / "bin" / "bentoml"), "serve-gunicorn", str(bundle),
                             "--port", str(port), "--workers", "1"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(240):
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                return proc
        except requests.ConnectionError:
            time.sleep(0.5)
    raise TimeoutError("service did not start")


def main():
    df = pd.read_parquet(DATA)
    splits, h, _ = prepare(df)
    train = Split(splits["train"].text.tolist(), [tuple(x) for x in splits["train"].labels], h)
    texts = splits["test"].text.tolist()
    tmp = Path(tempfile.mkdtemp(prefix="ktt-serve-bench-"))
    (tmp / "texts.json").write_text(json.dumps(texts))
    models = {"tfidf_hsgd": registry.get("tfidf_hsgd")(h).fit(train)}
    bhcn = registry.get("db_bhcn")(h)
    bhcn._build()
    models["db_bhcn"] = bhcn
    rows = []
    for port, (name, model) in enumerate(models.items(), start=5301):
        export_onnx(model, tmp / name / "onnx")
        bundle = build_bento(name, tmp / name / "onnx", tmp / name / "inference")
        ceiling, batch_rps = in_process(Predictor.from_dir(tmp / name / "onnx"), texts)
        rows.append(f"| {name} | onnxruntime in-process, one text a call | 1 | {ceiling['rps']:.0f} | "
                    f"{ceiling['p50']:.1f} | {ceiling['p99']:.1f} | 0 |")
        rows.append(f"| {name} | onnxruntime in-process, 32 texts a call | - | {batch_rps:.0f} | | | |")
        proc = serve(bundle, port)
        try:
            url = f"http://127.0.0.1:{port}/predict"
            for t in texts[:50]:  # warm-up
                requests.post(url, json={"text": t}, timeout=60)
            for c in CONCURRENCY:
                out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loadgen.py"), url,
                                      str(tmp / "texts.json"), "--concurrency", str(c), "--seconds", str(SECONDS)],
                                     capture_output=True, text=True, check=True)
                r = json.loads(out.stdout)
                rows.append(f"| {name} | bentoml serve-gunicorn (1 worker) | {c} | {r['rps']:.0f} | "
                            f"{r['p50']:.1f} | {r['p99']:.1f} | {r['errors']} |")
                print(rows[-1], flush=True)
        finally:
            os.killpg(proc.pid, 15)
            proc.wait()
    body = "\n".join([
        "## Serving: BentoML 0.13.1 vs onnxruntime in-process (issue 5)", "",
        "Command: `.venv/bin/python benchmarks/serving.py`", "",
        f"One JSON request per BigBasket test title, {SECONDS:.0f} s per concurrency level, load from a separate "
        "process (`benchmarks/loadgen.py`) on loopback; the server and the load share this machine's cores. "
        "db_bhcn is all-MiniLM-L6-v2 with an untrained head (latency does not depend on weight values).", "",
        "| model | where | concurrency | requests/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|---|",
        *rows])
    write_section("serving", body)


if __name__ == "__main__":
    main()
