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
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from benchmarks.harness import arguments, bento, bigbasket, clocked, load, serve, table, workdir, write_section  # noqa: E402
from conftest import Served  # noqa: E402
from test_cold_start import BAD, burst  # noqa: E402

SECONDS = float(os.environ.get("KTT_BENCH_SECONDS", 8))
LEVELS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STARTS = 5


def cold(path: Path, titles, tmp: Path) -> tuple[int, int, float]:
    """Good requests shed over STARTS cold starts, good requests sent, mean seconds to ready."""
    shed, ready = 0, []
    for k in range(STARTS):
        svc, secs = clocked(Served, path, gunicorn=True, probe="readyz", BENTOML_HOME=tmp / f"home{k}")
        ready.append(secs)
        try:
            got = burst(svc.url, [json.dumps({"text": t}) for t in titles] + BAD)
        finally:
            svc.stop()
        shed += sum(r.status_code != 200 for r in got[:len(titles)])
    return shed, STARTS * len(titles), sum(ready) / len(ready)


def main() -> None:
    arguments(__doc__)
    from ktt import registry
    from ktt.export import export_onnx

    ds = bigbasket()
    tmp = workdir("shed")
    texts_file = tmp / "texts.json"
    texts_file.write_text(json.dumps(ds.test.texts))
    titles = list(dict.fromkeys(ds.test.texts))[:28]
    cold_rows, load_rows, notes = [], [], []
    for name in ("tfidf_hsgd", "db_bhcn"):
        model = registry.create(name, ds.hierarchy)
        model.fit(ds.train, ds.val) if name.startswith("tfidf") else model._build()
        export_onnx(model, tmp / name / "float")
        path = bento(name, tmp / name / "float", tmp / name / "inference")
        shed, sent, ready_s = cold(path, titles, tmp)
        cold_rows.append([name, STARTS, f"{ready_s:.1f}", sent, f"{shed} ({100 * shed / sent:.0f}%)"])
        print(cold_rows[-1], flush=True)
        with serve(path, BENTOML_HOME=tmp / "home-load") as url:
            levels = [{"c": c, **load(f"{url}/predict", texts_file, c, SECONDS)} for c in LEVELS]
        print(levels, flush=True)
        best = max(r["rps"] for r in levels)
        knee = next(r["c"] for r in levels if r["rps"] >= 0.9 * best)
        first_shed = next((r["c"] for r in levels if r["statuses"].get("429")), None)
        load_rows += [[name, f"{r['c']}{' (knee)' if r['c'] == knee else ''}", f"{r['rps']:.0f}", f"{r['p50']:.1f}",
                       f"{r['p99']:.1f}", f"{100 * r['statuses'].get('429', 0) / max(sum(r['statuses'].values()), 1):.1f}%"]
                      for r in levels]
        notes.append(f"{name}: throughput within 10% of its best ({best:.0f} requests/s) from concurrency {knee}; "
                     + (f"shedding (429) from concurrency {first_shed}." if first_shed else
                        f"no request shed up to concurrency {LEVELS[-1]}."))
    write_section(
        "shedding", "## Cold start and load shedding, served (issue 28)", "Command: `.venv/bin/python benchmarks/shedding.py`",
        " ".join(__doc__.split("\n\n")[1].split()),
        table(["model", "cold starts", "seconds to ready", "good requests in the burst", "shed (not 200)"], cold_rows),
        f"{SECONDS:.0f} s per concurrency level; server and load generator share this machine's 2 cores.",
        table(["model", "concurrency", "answered requests/s", "p50 ms", "p99 ms", "shed (429)"], load_rows),
        "\n".join(f"- {n}" for n in notes))


if __name__ == "__main__":
    main()
