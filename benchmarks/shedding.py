"""When does a served model start to shed load, and does a cold start shed good requests (issue 28)?

    .venv/bin/python benchmarks/shedding.py

tfidf_hsgd (fitted on deduplicated BigBasket's official split) and db_bhcn (all-MiniLM-L6-v2 with
an untrained head: a request costs the same), float graphs, each served by `bentoml serve-gunicorn`
(one worker, the default micro-batching: 128 requests, 1 s latency budget). Cold: a fresh server,
32 clients at once the moment `/readyz` first answers 200 (28 real titles, 4 invalid bodies), 5
starts. Load: closed-loop clients from benchmarks/loadgen.py at rising concurrency, one JSON
request per BigBasket test title; answered requests/s, p50/p99 of the answered, and the share shed
(429 with Retry-After). The knee: the lowest concurrency whose throughput is within 10% of the
best; past it, more clients only queue.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from benchmarks.bigbasket import load  # noqa: E402
from benchmarks.report import write_section  # noqa: E402
from conftest import Served  # noqa: E402
from test_cold_start import BAD, burst  # noqa: E402

SECONDS = float(os.environ.get("KTT_BENCH_SECONDS", 8))
LEVELS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STARTS = 5


def bundle(name, ds, tmp: Path) -> Path:
    from ktt import registry
    from ktt.export import build_bento, export_onnx, service_files

    model = registry.create(name, ds.hierarchy)
    model.fit(ds.train, ds.val) if name.startswith("tfidf") else model._build()
    export_onnx(model, tmp / name / "float")
    svc = service_files(registry.get(name), tmp / name / "bentoml")["svc_lts.py"]
    return build_bento(svc, tmp / name / "float", tmp / name / "inference")


def cold(path: Path, titles, tmp: Path) -> tuple[int, int, float]:
    """Good requests shed over STARTS cold starts, good requests sent, mean seconds to ready."""
    shed = sent = 0
    ready = []
    for k in range(STARTS):
        t0 = time.perf_counter()
        svc = Served(path, gunicorn=True, probe="readyz", BENTOML_HOME=tmp / f"home{k}")
        ready.append(time.perf_counter() - t0)
        try:
            got = burst(svc.url, [json.dumps({"text": t}) for t in titles] + BAD)
        finally:
            svc.stop()
        shed += sum(r.status_code != 200 for r in got[:len(titles)])
        sent += len(titles)
    return shed, sent, sum(ready) / len(ready)


def sweep(path: Path, texts_file: Path, tmp: Path) -> list[dict]:
    svc = Served(path, gunicorn=True, probe="readyz", BENTOML_HOME=tmp / "home-load")
    try:
        out = []
        for c in LEVELS:
            run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loadgen.py"), f"{svc.url}/predict",
                                  str(texts_file), "--concurrency", str(c), "--seconds", str(SECONDS)],
                                 capture_output=True, text=True, check=True)
            r = {"c": c, **json.loads(run.stdout)}
            out.append(r)
            print(r, flush=True)
        return out
    finally:
        svc.stop()


def main() -> None:
    ds = load()
    tmp = Path(tempfile.mkdtemp(prefix="ktt-shed-"))
    texts_file = tmp / "texts.json"
    texts_file.write_text(json.dumps(ds.test.texts))
    titles = list(dict.fromkeys(ds.test.texts))[:28]
    cold_rows, load_rows, notes = [], [], []
    for name in ("tfidf_hsgd", "db_bhcn"):
        path = bundle(name, ds, tmp)
        shed, sent, ready_s = cold(path, titles, tmp)
        cold_rows.append(f"| {name} | {STARTS} | {ready_s:.1f} | {sent} | {shed} ({100 * shed / sent:.0f}%) |")
        print(cold_rows[-1], flush=True)
        levels = sweep(path, texts_file, tmp)
        best = max(r["rps"] for r in levels)
        knee = next(r["c"] for r in levels if r["rps"] >= 0.9 * best)
        first_shed = next((r["c"] for r in levels if r["statuses"].get("429")), None)
        for r in levels:
            total = sum(r["statuses"].values())
            share = 100 * r["statuses"].get("429", 0) / max(total, 1)
            load_rows.append(f"| {name} | {r['c']}{' (knee)' if r['c'] == knee else ''} | {r['rps']:.0f} | "
                             f"{r['p50']:.1f} | {r['p99']:.1f} | {share:.1f}% |")
        notes.append(f"{name}: throughput within 10% of its best ({best:.0f} requests/s) from concurrency {knee}; "
                     + (f"shedding (429) from concurrency {first_shed}." if first_shed else
                        f"no request shed up to concurrency {LEVELS[-1]}."))
    write_section("shedding", "\n".join([
        "## Cold start and load shedding, served (issue 28)", "",
        "Command: `.venv/bin/python benchmarks/shedding.py`", "",
        " ".join(__doc__.split("\n\n")[1].split()), "",
        "| model | cold starts | seconds to ready | good requests in the burst | shed (not 200) |",
        "|---|---|---|---|---|", *cold_rows, "",
        f"{SECONDS:.0f} s per concurrency level; server and load generator share this machine's 2 cores.", "",
        "| model | concurrency | answered requests/s | p50 ms | p99 ms | shed (429) |", "|---|---|---|---|---|---|",
        *load_rows, "", *(f"- {n}" for n in notes)]))


if __name__ == "__main__":
    main()
