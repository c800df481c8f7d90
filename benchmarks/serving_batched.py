"""Served against in-process throughput for tfidf_hsgd, batched requests and single titles, and
where a request's time goes in BentoML 0.13.1 (issue 39).

    .venv/bin/python benchmarks/serving_batched.py

Two models: BigBasket (the official split) and a generated catalog of 5,600 categories
(`ktt.synth.generate_catalog`, 100,000 titles, paths of 1 to 7 levels), each calibrated, exported
(`tfidf.npz`) and served by `bentoml serve-gunicorn` (one worker, micro-batching on). Load from
benchmarks/loadgen.py in its own process: 8 clients sending 64 titles a request, then 32 and 1
clients sending one title. In-process: the same export through `ktt.serving.runtime.Predictor`,
64 titles a call. Where the time goes, from the service's own /metrics over each load: BentoML's
front server (`_mb_request_duration_seconds`, per request, from arrival to answer: queueing and
micro-batching included), its model server (`_request_duration_seconds`, per micro-batch) and
KTT's code inside it (`ktt_batch_seconds`: parse, preprocess, predict, answer).
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import write_section  # noqa: E402
from benchmarks.serving import serve  # noqa: E402

SECONDS = float(os.environ.get("KTT_BENCH_SECONDS", 10))
LOADS = ((8, 64), (32, 0), (1, 0))  # (clients, titles a request; 0: one title, not a list)


def datasets():
    """(name, train, val, test) of BigBasket and of the generated catalog."""
    import pandas as pd

    from benchmarks.bigbasket import load
    from ktt import synth
    from ktt.data import Split, prepare

    ds = load()
    yield "BigBasket", ds.train, ds.val, ds.test
    df = pd.concat(synth.generate_catalog(100_000, synth.random_taxonomy(5600, 7)), ignore_index=True)
    splits, h, _ = prepare(df)
    s = {k: Split(v["text"].tolist(), [tuple(p) for p in v["labels"]], h) for k, v in splits.items()}
    yield "5,600 categories", s["train"], s["val"], s["test"]


def sums(url: str) -> dict:
    """(sum, count) of the service's duration histograms, by metric name."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(requests.get(url, timeout=10).text):
        for sample in family.samples:
            for end in ("_sum", "_count"):
                if sample.name.endswith(end) and ("duration" in sample.name or "ktt_batch" in sample.name):
                    key = (sample.name[:-len(end)], end)
                    out[key] = out.get(key, 0) + sample.value
    return out


def where_time_goes(before: dict, after: dict) -> dict:
    """Mean ms per request at the front, per micro-batch in the model server and in KTT's code."""
    def mean(prefix):
        name = next((n for n, e in after if e == "_sum" and n.endswith(prefix) and
                     ("_mb_" in prefix or "_mb_" not in n)), None)
        if name is None:
            return None, 0
        count = after[name, "_count"] - before.get((name, "_count"), 0)
        return (1000 * (after[name, "_sum"] - before.get((name, "_sum"), 0)) / count if count else None), count
    (front, requests_), (model, batches), (ours, _) = (mean("_mb_request_duration_seconds"),
                                                        mean("_request_duration_seconds"), mean("ktt_batch_seconds"))
    return {"front_ms": front, "model_ms": model, "ours_ms": ours,
            "per_batch": requests_ / batches if batches else None}


def main() -> None:
    from ktt import registry
    from ktt.export import build_bento, export_onnx, service_files
    from ktt.serving.runtime import Predictor

    tmp = Path(tempfile.mkdtemp(prefix="ktt-serve-batched-"))
    rows, port = [], 5521
    for name, train, val, test in datasets():
        model = registry.create("tfidf_hsgd", train.hierarchy).fit(train)
        model.calibrate(val)
        folder = tmp / f"export{port}"
        export_onnx(model, folder)
        pred, texts = Predictor.from_dir(folder), test.texts
        pred.predict(texts[:64])
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for i in range(0, 4096, 64):
                pred.predict(texts[i:i + 64])
            best = min(best, time.perf_counter() - t0)
        in_process = 4096 / best
        svc = service_files(registry.get("tfidf_hsgd"), tmp / "bentoml")["svc_lts.py"]
        bundle = build_bento(svc, folder, tmp / f"inference{port}")
        (tmp / "texts.json").write_text(json.dumps(texts))
        proc = serve(bundle, port)
        try:
            url = f"http://127.0.0.1:{port}"
            for t in texts[:50]:  # warm
                requests.post(url + "/predict", json={"text": t}, timeout=60)
            for clients, batch in LOADS:
                before = sums(url + "/metrics")
                run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loadgen.py"), url + "/predict",
                                      str(tmp / "texts.json"), "--concurrency", str(clients), "--seconds",
                                      str(SECONDS), "--batch", str(batch)], capture_output=True, text=True, check=True)
                r, t = json.loads(run.stdout), where_time_goes(before, sums(url + "/metrics"))

                def ms(v):
                    return "—" if v is None else f"{v:.1f}"
                rows.append(f"| {name} | {clients} | {batch or 1} | {r['titles_per_s']:,.0f} | {in_process:,.0f} | "
                            f"{100 * r['titles_per_s'] / in_process:.0f}% | {r['p50']:.1f} | {r['p99']:.1f} | "
                            f"{ms(t['front_ms'])} | {ms(t['model_ms'])} | {ms(t['ours_ms'])} | "
                            f"{'—' if t['per_batch'] is None else format(t['per_batch'], '.1f')} | {r['errors']} |")
                print(rows[-1], flush=True)
        finally:
            os.killpg(proc.pid, 15)
            proc.wait()
        port += 1
    write_section("serving-batched", "\n".join([
        "## Served tfidf_hsgd: batched requests, single titles, and where the time goes (issue 39)", "",
        "Command: `.venv/bin/python benchmarks/serving_batched.py`", "",
        f"{SECONDS:.0f} s per load; server, load generator and nothing else on this machine's 2 cores. "
        "Goals: 64 titles a request at 8 clients at least 70% of in-process; single titles at 32 clients "
        "on BigBasket p99 at most 20 ms. Front: BentoML's front server, per request (queueing and "
        "micro-batching included); model server: BentoML's, per micro-batch; KTT: our code inside it, "
        "per micro-batch.", "",
        "| model | clients | titles a request | served titles/s | in-process titles/s | share | p50 ms | p99 ms "
        "| front ms | model server ms | KTT ms | requests a batch | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|", *rows]))


if __name__ == "__main__":
    main()
