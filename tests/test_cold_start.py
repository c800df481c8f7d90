"""Steady from the first request (issue 28): a service started cold answers a burst sent the moment
it reports ready, sheds load only with Retry-After (counted by reason), and logs what each client
received. Real BentoML 0.13.1 servers (`bentoml serve-gunicorn`, one worker), real BigBasket titles."""
import base64
import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from conftest import Served, needs_serving

pytestmark = [needs_serving, pytest.mark.slow]
BAD = ['{"text": ""}', '{"txt": "Tata Salt"}', '{not json', '{"text": 3}']


@pytest.fixture(scope="module")
def bundles(bigbasket, tmp_path_factory):
    """tfidf_hsgd fitted on BigBasket, and db_bhcn (all-MiniLM-L6-v2, an untrained head: a request
    costs the same), each float and int8, built as BentoServices; built on first use."""
    from ktt import registry
    from ktt.export import build_bento, export_onnx, quantize_int8, service_files

    root, built = tmp_path_factory.mktemp("cold"), {}

    def get(name, graphs):
        if (name, graphs) not in built:
            folder = root / name
            if not (folder / "float").exists():
                model = registry.create(name, bigbasket.hierarchy)
                model.fit(bigbasket.train, bigbasket.val) if name.startswith("tfidf") else model._build()
                export_onnx(model, folder / "float")
                quantize_int8(folder / "float", folder / "int8")
            svc = service_files(registry.get(name), folder / "bentoml")["svc_lts.py"]
            built[name, graphs] = build_bento(svc, folder / graphs, folder / f"inference-{graphs}")
        return built[name, graphs]
    return get


@pytest.fixture(scope="module")
def titles(bigbasket_df):
    return bigbasket_df[bigbasket_df.split == "test"].text.drop_duplicates().head(28).tolist()


def burst(url: str, bodies: list[str], route="predict") -> list[requests.Response]:
    """Every body from its own client thread, released at the same instant."""
    out, gate = [None] * len(bodies), threading.Barrier(len(bodies))

    def send(i):
        gate.wait()
        out[i] = requests.post(f"{url}/{route}", data=bodies[i], headers={"Content-Type": "application/json"},
                               timeout=120)
    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


class Hold:
    """Holds the model server of a `bentoml serve-gunicorn` (SIGSTOP) from the moment its worker
    forks until ``release()``: a front server whose model server is still loading, however fast this
    machine would warm it. The worker is the CLI's only grandchild (the front's workers are its
    children, the model server's arbiter its first child)."""

    def __init__(self):
        self.held, self._done = set(), threading.Event()

    def start(self, root: int):
        self._thread = threading.Thread(target=self._watch, args=(root,), daemon=True)
        self._thread.start()

    def _watch(self, root):
        while not self._done.is_set():
            parent = {}  # pid -> ppid, for the server's session
            for d in filter(str.isdigit, os.listdir("/proc")):
                try:
                    _, ppid, _, sid = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[:4]
                except (OSError, ValueError):
                    continue
                if int(sid) == root:
                    parent[int(d)] = int(ppid)
            for pid, ppid in parent.items():
                if parent.get(ppid) == root and pid not in self.held:
                    os.kill(pid, signal.SIGSTOP)
                    self.held.add(pid)
            time.sleep(0.005)

    def release(self):
        self._done.set()
        self._thread.join()
        for pid in self.held:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:  # gone (the server stopped): nothing to let go
                pass
        self.held.clear()


def logged(home: Path) -> dict[bytes, dict]:
    """BentoML's prediction log: each request's body -> the result logged for it."""
    lines = (home / "logs" / "prediction.log").read_text().splitlines()
    return {base64.b64decode(e["task"]["data"]): e["result"] for e in map(json.loads, lines)}


@pytest.mark.parametrize("name, graphs", [("tfidf_hsgd", "float"), ("tfidf_hsgd", "int8"),
                                          ("db_bhcn", "float"), ("db_bhcn", "int8")])
def test_a_cold_service_answers_a_burst_sent_at_readiness(name, graphs, bundles, titles, tmp_path):
    """32 clients (28 real titles, 4 invalid bodies) the moment /readyz first answers 200: every
    good request gets 200 and the in-process answer, every bad one 400; the prediction log holds,
    for every request, the status and body its client received."""
    from ktt.serving.runtime import Predictor

    bundle = bundles(name, graphs)
    pred = Predictor.from_dir(bundle.parent / graphs)
    expected = ["\n".join(p) for p in pred.predict(titles).paths]
    known = {p[:d + 1] for p in pred.hierarchy.levels[-1] for d in range(len(p))}
    svc = Served(bundle, gunicorn=True, probe="readyz", BENTOML_HOME=tmp_path)
    try:
        bodies = [json.dumps({"text": t}) for t in titles] + BAD
        got = burst(svc.url, bodies)
        assert Counter(r.status_code for r in got[:28]) == {200: 28}, [(r.status_code, r.text[:80]) for r in got]
        if graphs == "float":
            assert [r.json() for r in got[:28]] == expected
        else:  # int8 activations are quantized per batch: answers depend on which requests share one
            assert all(tuple(r.json().split("\n")) in known for r in got[:28])
        assert [r.status_code for r in got[28:]] == [400] * 4
        ready = requests.get(f"{svc.url}/readyz", timeout=10).json()
        assert ready["ready"] and [n for n, _ in ready["batch_seconds"]] == [1, 8, 32, 128]
    finally:
        svc.stop()
    log = logged(tmp_path)
    for body, r in zip(bodies, got):
        entry = log[body.encode()]
        assert entry["http_status"] == r.status_code, body
        assert (json.loads(entry["data"]) == r.json()) if r.status_code == 200 else entry["err_msg"] == r.text


def test_shedding_says_when_to_retry_and_counts_why(bundles, titles, tmp_path):
    """Before the model server is warm (held loading), batched routes answer 503 with Retry-After;
    over the latency budget (here 20 ms, so that a burst must overflow it), 429 with Retry-After;
    /metrics counts each by reason, exactly as many as clients saw."""
    bundle, hold = bundles("db_bhcn", "float"), Hold()
    svc = Served(bundle, gunicorn=True, probe=None, args=["--mb-max-latency", "20"], BENTOML_HOME=tmp_path,
                 on_start=hold.start)
    try:
        early = [requests.post(f"{svc.url}/predict", json={"text": titles[0]}, timeout=30)]
        assert early[0].status_code == 503 and early[0].headers["Retry-After"] == "1", early[0].text
        assert "starting" in early[0].text
        r = requests.get(f"{svc.url}/readyz", timeout=30)
        assert r.status_code == 503 and r.headers["Retry-After"] == "1" and not r.json()["ready"]
        hold.release()
        while (r := requests.get(f"{svc.url}/readyz", timeout=30)).status_code != 200:
            assert r.status_code == 503 and r.headers["Retry-After"] == "1"
            time.sleep(0.1)
        got = burst(svc.url, [json.dumps({"text": t}) for t in (titles * 3)[:64]])
        shed = [r for r in got if r.status_code == 429]
        assert shed and all(r.status_code in (200, 429) for r in got)
        assert all(int(r.headers["Retry-After"]) >= 1 for r in shed) and "capacity" in shed[0].text
        metrics = requests.get(f"{svc.url}/metrics", timeout=10).text
        count = {line.split("reason=")[1].split('"')[1]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                 if "_mb_shed_total{" in line and 'endpoint="predict"' in line}
        assert count == {"not_ready": 1.0, "over_latency_budget": float(len(shed))}
    finally:
        hold.release()
        svc.stop()
