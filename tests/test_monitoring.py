"""The drift sidecar on a real reference set, and the whole monitored stack run natively with a real Prometheus."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import requests
import yaml

from conftest import KTT, SERVING_BIN, Server, free_port
from ktt import registry
from ktt.export import service_files
from ktt.monitoring.build import evidently_template
from ktt.monitoring.dashboard import dashboard, metric_names
from ktt.monitoring.sidecar import Monitor, alert_signals, is_drift, load_config, make_handler
from ktt.schema import level_column_names

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def setup(bigbasket, clinc_df, tmp_path_factory):
    """tfidf_lsgd on BigBasket, its reference set, and rows built from BigBasket and CLINC150 texts."""
    tmp = tmp_path_factory.mktemp("mon")
    model = registry.get("tfidf_lsgd")(bigbasket.hierarchy).fit(bigbasket.train)
    model.gen_reference_set(bigbasket.test).to_parquet(tmp / "references.parquet")
    (tmp / "evidently.yaml").write_text(evidently_template(type(model).drift_share))

    def rows(texts):
        return model.monitoring_frame(texts).to_numpy()
    return tmp, rows(bigbasket.val.texts[:200]), rows(clinc_df.text.sample(200, random_state=0).tolist())


def test_no_drift_on_same_distribution_and_drift_on_another(setup):
    tmp, bb_rows, clinc_rows = setup
    mon = Monitor(load_config(tmp / "evidently.yaml"))
    assert mon.calculate() is False  # fewer rows than min_reference_size
    mon.add({"data": bb_rows[:100].tolist()})
    assert mon.calculate() is True
    assert mon.dataset_drift._value.get() == 0.0
    calm_share = mon.drift_share._value.get()
    assert calm_share < 0.1
    mon.add({"data": clinc_rows[:100].tolist()})  # the window now holds CLINC150 utterances only
    mon.calculate()
    assert mon.drift_share._value.get() > calm_share
    assert mon.column_drift.labels("confidence")._value.get() < 1e-6  # the model is far less sure of these
    # the flag follows the configured drift_share, at its exact boundary
    share = mon.drift_share._value.get()
    for drift_share, flagged in ((share, 1.0), (min(1.0, share + 0.01), 0.0 if share < 1 else 1.0)):
        mon.cfg["drift_share"] = drift_share
        mon.calculate()
        assert mon.dataset_drift._value.get() == flagged, (share, drift_share)


def test_new_signals_on_real_data(setup):
    """The per-level signals on real rows: calm on BigBasket, every one of them up on CLINC150."""
    tmp, bb_rows, clinc_rows = setup
    mon = Monitor(load_config(tmp / "evidently.yaml"))
    assert mon.depth == 3 and mon.columns[-6:] == level_column_names(3)
    mon.add({"data": bb_rows[:100].tolist()})
    mon.calculate()
    assert mon.alert._value.get() == 0.0
    assert mon.embedding_drift._value.get() < 0.75
    mon.add({"data": clinc_rows[:100].tolist()})
    mon.calculate()
    assert mon.alert._value.get() == 1.0
    for d in ("1", "2", "3"):
        assert mon.confidence_drift.labels(d)._value.get() < 1e-3 and mon.low_drift.labels(d)._value.get() < 1e-3
        assert mon.confidence_mean.labels(d, "window")._value.get() < mon.confidence_mean.labels(d, "reference")._value.get()
        assert mon.low_share.labels(d, "window")._value.get() > mon.low_share.labels(d, "reference")._value.get()
    assert mon.level_drift.labels("1")._value.get() < 1e-3
    assert mon.alert_signal.labels("confidence_level1")._value.get() == 1.0
    # 100 rows over BigBasket's 11 level-1 classes: tested; over its leaves: not (too few rows per class)
    assert "prediction_level1" in mon.last_results["signals"] and "prediction_level3" not in mon.last_results["signals"]


def test_alert_signals_by_hand():
    """Each signal's rule, on hand-made results: p below p_value in the drifting direction only."""
    alert = {"p_value": 1e-3, "low_confidence": 0.3, "embedding_auc": 0.75, "classes_per_row": 0.2}
    calm = {"confidence_p": 0.5, "confidence_lower": True, "low_p": 0.5, "low_higher": True, "prediction_p": 0.5,
            "classes": 10}
    assert alert_signals({"levels": {1: calm}, "embedding_auc": 0.6}, 100, alert) == {
        "confidence_level1": False, "low_confidence_level1": False, "prediction_level1": False, "embedding": False}
    lower = {**calm, "confidence_p": 1e-4}
    assert alert_signals({"levels": {1: lower}}, 100, alert)["confidence_level1"]
    assert not alert_signals({"levels": {1: {**lower, "confidence_lower": False}}}, 100, alert)["confidence_level1"]
    assert not alert_signals({"levels": {1: {**calm, "confidence_p": 1e-3}}}, 100, alert)["confidence_level1"]  # strict
    assert alert_signals({"levels": {1: {**calm, "low_p": 0}}}, 100, alert)["low_confidence_level1"]
    assert not alert_signals({"levels": {1: {**calm, "low_p": 0, "low_higher": False}}}, 100, alert)["low_confidence_level1"]
    # 10 classes need 50 rows (0.2 classes per row); 49 rows: not tested at all
    assert alert_signals({"levels": {1: {**calm, "prediction_p": 0}}}, 50, alert)["prediction_level1"]
    assert "prediction_level1" not in alert_signals({"levels": {1: {**calm, "prediction_p": 0}}}, 49, alert)
    assert alert_signals({"levels": {}, "embedding_auc": 0.76}, 100, alert) == {"embedding": True}
    assert alert_signals({"levels": {}, "embedding_auc": 0.75}, 100, alert) == {"embedding": False}


def test_reference_sets_without_level_columns_still_work(setup, tmp_path):
    import pandas as pd

    tmp, bb_rows, clinc_rows = setup
    ref = pd.read_parquet(tmp / "references.parquet")
    ref.drop(columns=level_column_names(3)).to_parquet(tmp_path / "references.parquet")
    (tmp_path / "evidently.yaml").write_text((tmp / "evidently.yaml").read_text())
    mon = Monitor(load_config(tmp_path / "evidently.yaml"))
    assert mon.depth == 0
    mon.add({"data": clinc_rows[:100, :-6].tolist()})
    assert mon.calculate() and mon.dataset_drift._value.get() == 1.0
    assert set(mon.last_results["signals"]) == {"embedding"}


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool comes with Debian's prometheus (`make test`)")
def test_alert_rules_pass_promtool(monitored_build):
    build, _ = monitored_build
    out = subprocess.run(["promtool", "check", "rules", str(build / "prometheus" / "alerts.yaml")],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "SUCCESS: 3 rules found" in out.stdout, out.stdout + out.stderr
    out = subprocess.run(["promtool", "check", "config", str(build / "prometheus" / "prometheus.yaml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_drift_decision():
    assert is_drift(0.25, 0.25) and is_drift(0.6, 0.5)
    assert not is_drift(0.2499, 0.25) and not is_drift(0.49, 0.5)


def test_http_interface(setup):
    tmp, bb_rows, _ = setup
    mon = Monitor(load_config(tmp / "evidently.yaml"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(mon))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"

    def post(body):
        req = urllib.request.Request(url + "/iterate", body if isinstance(body, bytes) else json.dumps(body).encode())
        try:
            with urllib.request.urlopen(req) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
    try:
        assert post({"data": bb_rows[:5].tolist()}) == (200, {"rows": 5})
        for bad, msg in [(b"{not json", "Expecting"), ({"rows": []}, "expected"), ({"data": [[1, 2]]}, "numbers"),
                         ({"data": [["a"] * bb_rows.shape[1]]}, "numbers only")]:
            code, body = post(bad)
            assert code == 400 and msg in body["error"]
        assert len(mon.window) == 5  # bad posts added nothing, good rows were all kept
        text = urllib.request.urlopen(url + "/metrics").read().decode()
        assert "ktt_monitoring_rows_total 5.0" in text and "ktt_monitoring_rejected_requests_total 4.0" in text
    finally:
        server.shutdown()


def test_bad_config(tmp_path):
    (tmp_path / "e.yaml").write_text(yaml.safe_dump({"service": {"reference_path": "r.parquet"}}))
    with pytest.raises(ValueError, match="missing"):
        load_config(tmp_path / "e.yaml")


# -- the whole monitored stack, natively: ktt export --monitoring, ktt serve, a real Prometheus ----------

needs_stack = pytest.mark.skipif(not (SERVING_BIN / "bentoml").exists() or not shutil.which("prometheus"),
                                 reason="needs the serving env (`make env`) and Prometheus (`make test` installs it)")


def service_class(model):
    return registry.get(model).__name__  # the generated BentoService is named after the model class


HELD_OUT = ("Kitchen, Garden & Pets", "Baby Care")


@pytest.fixture(scope="module")
def monitored_build(bigbasket_df, tmp_path_factory):
    """tfidf_hsgd trained on BigBasket without two top-level categories (a catalog change to come)
    and exported with --monitoring, all through the CLI."""
    tmp = tmp_path_factory.mktemp("stack")
    known = tmp / "bigbasket_known.parquet"
    bigbasket_df[~bigbasket_df.labels.map(lambda p: p[0]).isin(HELD_OUT)].to_parquet(known)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")}
    env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "KTT_DATASETS": str(tmp / "datasets"),
           "KTT_WEIGHTS": str(tmp / "weights"), "KTT_BUILD": str(tmp / "build")}
    for cmd in (["ingest", str(known), "--name", "bigbasket"], ["train", "tfidf_hsgd", "bigbasket"],
                ["export", "--model", "tfidf_hsgd", "--dataset", "bigbasket", "--monitoring"]):
        proc = subprocess.run([str(KTT), *cmd], env=env, capture_output=True, text=True, cwd=tmp)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "build" / "tfidf_hsgd_bigbasket", env


def test_build_tree_and_compose(monitored_build):
    build, _ = monitored_build
    for part in ("docker-compose.yaml", "grafana/provisioning/dashboards/dashboard.json",
                 "grafana/provisioning/dashboards/dashboard.yml", "grafana/provisioning/datasources/datasource.yml",
                 "inference/Dockerfile", "monitoring/Dockerfile", "monitoring/evidently.yaml", "monitoring/monitoring.py",
                 "monitoring/references.parquet", "monitoring/requirements.txt", "prometheus/prometheus.yaml",
                 "prometheus/alerts.yaml"):
        assert (build / part).is_file(), part
    compose = yaml.safe_load((build / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"inference", "monitoring", "prometheus", "grafana"}
    ports = {name: int(s["ports"][0].split(":")[0]) for name, s in services.items()}
    assert ports == {"inference": 5000, "monitoring": 5001, "prometheus": 9090, "grafana": 3000}
    assert services["inference"]["environment"] == {"EVIDENTLY_HOST": "monitoring", "EVIDENTLY_PORT": "5001"}
    for name, s in services.items():
        if "build" in s:
            assert (build / s["build"] / "Dockerfile").is_file()
        for vol in s.get("volumes", []):
            src = vol.split(":")[0]
            assert src in compose["volumes"] or (build / src).exists(), f"{name}: {src}"
        assert set(s.get("depends_on", [])) <= set(services)
    prom = yaml.safe_load((build / "prometheus/prometheus.yaml").read_text())
    targets = {c["job_name"]: c["static_configs"][0]["targets"] for c in prom["scrape_configs"]}
    assert targets == {"inference": ["inference:5000"], "monitoring": ["monitoring:5001"]}
    ds = yaml.safe_load((build / "grafana/provisioning/datasources/datasource.yml").read_text())["datasources"][0]
    assert ds["url"] == "http://prometheus:9090" and ds["uid"] == "prometheus"
    dash = json.loads((build / "grafana/provisioning/dashboards/dashboard.json").read_text())
    assert dash == dashboard("TfidfHSGD", "tfidf_hsgd")
    # the spec's per-model bentoml/ folder, generated beside the tree
    assert sorted(p.name for p in (build / "bentoml").iterdir()) == ["__init__.py", "dashboard.json",
                                                                      "evidently.yaml", "svc_lts.py"]
    assert json.loads((build / "bentoml/dashboard.json").read_text()) == dash
    assert "class TfidfHSGD(TfidfService)" in (build / "bentoml/svc_lts.py").read_text()


def test_service_files_are_generated_per_model(tmp_path):
    """Every model's svc_lts.py, evidently.yaml and dashboard.json come from one template each."""
    for model in registry.available():
        cls = registry.get(model)
        files = service_files(cls, tmp_path / model)
        assert json.loads(files["dashboard.json"].read_text()) == dashboard(service_class(model), model)
        base = "TfidfService" if cls.served_from == "arrays" else "KTTService"  # sparse arrays or ONNX graphs
        assert f"class {cls.__name__}({base})" in files["svc_lts.py"].read_text()
        cfg = yaml.safe_load(files["evidently.yaml"].read_text())["service"]
        assert cfg["drift_share"] == (0.25 if model.startswith("tfidf") else 0.5)
        assert cfg["monitors"] == ["cat_target_drift", "data_drift", "confidence_drift", "level_prediction_drift",
                                   "embedding_drift"] and cfg["window_size"] == 100
        assert cfg["alert"] == {"p_value": 0.001, "low_confidence": 0.3, "embedding_auc": 0.75, "classes_per_row": 0.2}


class Stack:
    """`ktt serve` as a user runs it, on free loopback ports, stopped with Ctrl-C (SIGINT)."""

    def __init__(self, build, env):
        names = ("inference", "monitoring", "prometheus")
        self.server = Server(
            lambda p: [str(KTT), "serve", str(build), "--port", str(p[0]), "--monitoring-port", str(p[1]),
                       "--prometheus-port", str(p[2]), "--drift-period", "2"],
            lambda p, log: "Ctrl-C stops everything" in log, env=env, n_ports=3)
        self.ports = dict(zip(names, self.server.ports))
        self.urls = {k: f"http://127.0.0.1:{p}" for k, p in self.ports.items()}

    def query(self, expr):
        r = requests.get(self.urls["prometheus"] + "/api/v1/query", params={"query": expr}, timeout=10).json()
        assert r["status"] == "success", (expr, r)
        return r["data"]["result"]

    def has_data(self, expr, within=30.0):
        """Whether ``expr`` returns data within ``within`` seconds (a rate needs two scrapes that
        succeeded inside its window; one slow scrape of a busy service can leave a gap)."""
        deadline = time.monotonic() + within
        while not self.query(expr):
            if time.monotonic() > deadline:
                return False
            time.sleep(1)
        return True

    def value(self, expr):
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def send(self, texts):
        """Post ``texts``, 20 a request; then wait for a drift calculation that saw them all to
        reach Prometheus."""
        for i in range(0, len(texts), 20):
            for attempt in range(10):  # 408/429: BentoML's micro-batcher shedding load on a busy machine
                r = requests.post(self.urls["inference"] + "/predict",
                                  json=[{"text": t} for t in texts[i:i + 20]], timeout=60)
                if r.status_code not in (408, 429):
                    break
                time.sleep(1 + attempt)
            assert r.status_code == 200, r.text
        sent = time.time()
        # wait until Prometheus has scraped a drift calculation made after the last row arrived
        for _ in range(120):
            last = self.value("ktt_monitoring_last_calculation_timestamp_seconds")
            if last and last > sent:
                return
            time.sleep(0.5)
        raise TimeoutError("no drift calculation reached Prometheus")

    def interrupt(self):
        """Ctrl-C; a stack still up after 60 s still fails the test, but is killed, not left behind."""
        return self.server.stop(signal.SIGINT)


@pytest.mark.slow
@needs_stack
def test_native_stack_shows_drift_in_prometheus(monitored_build, bigbasket_df, clinc_df):
    build, env = monitored_build
    stack = Stack(build, env)
    try:
        top = bigbasket_df.labels.map(lambda p: p[0])
        titles = bigbasket_df[(bigbasket_df.split == "test") & ~top.isin(HELD_OUT)].text.sample(200, random_state=1)
        stack.send(titles.tolist())
        assert stack.value("ktt_dataset_drift") == 0.0
        assert stack.value("ktt_drift_alert") == 0.0 and not stack.query('ALERTS{alertname="KTTDrift"}')
        calm = stack.value("ktt_drifted_columns_share")
        assert stack.value("ktt_prediction_drift_score") > 0.01

        # a catalog change: products of the two categories the model never saw
        new = bigbasket_df[top.isin(HELD_OUT)].text.sample(200, random_state=1).tolist()
        seen, done = {}, threading.Event()

        def watch():  # when Prometheus first shows the gauge, and the alert firing
            while not done.wait(0.5):
                if "gauge" not in seen and stack.value("ktt_drift_alert") == 1.0:
                    seen["gauge"] = time.time()
                if "alert" not in seen and stack.query('ALERTS{alertname="KTTDrift", alertstate="firing"}'):
                    seen["alert"] = time.time()
        watcher = threading.Thread(target=watch, daemon=True)
        started = time.time()
        watcher.start()
        stack.send(new)
        deadline = time.time() + 60
        while len(seen) < 2 and time.time() < deadline:
            time.sleep(0.5)
        done.set()
        assert set(seen) == {"gauge", "alert"}, seen
        print(f"ktt_drift_alert = 1 in Prometheus {seen['gauge'] - started:.1f} s after the first shifted request; "
              f"KTTDrift firing after {seen['alert'] - started:.1f} s")
        assert stack.value("ktt_drift_alert") == 1.0  # the window is all new products now
        assert stack.value('ktt_drift_alert_signal{signal="confidence_level1"}') == 1.0

        stack.send(clinc_df.text.sample(200, random_state=1).tolist())  # the window is all CLINC150 now
        assert stack.value("ktt_dataset_drift") == 1.0
        assert stack.value("ktt_drifted_columns_share") > calm
        assert stack.value('ktt_feature_drift_score{column="confidence"}') < 1e-6  # far less sure of these
        # the service's side: every row classified and delivered, none dropped (a request timed out
        # by the batcher may still have been classified, hence >=)
        own = requests.get(stack.urls["inference"] + "/metrics", timeout=10).text  # exact, not a scrape ago
        count = {m: float(re.search(rf"^{m} (\S+)$", own, re.M).group(1))
                 for m in ("ktt_predicted_rows_total", "ktt_forwarded_rows_total")}
        assert count["ktt_predicted_rows_total"] >= 400
        assert count["ktt_forwarded_rows_total"] == count["ktt_predicted_rows_total"]
        assert stack.value("sum(ktt_forward_dropped_rows_total)") == 0

        # every dashboard queries only metrics that really exist, and each expression is valid PromQL
        scraped = set()
        for name in ("inference", "monitoring"):
            text = requests.get(stack.urls[name] + "/metrics", timeout=10).text
            scraped |= {re.split(r"[{ ]", line)[0] for line in text.splitlines() if line and line[0] != "#"}
        for model in registry.available():
            dash = dashboard(service_class(model), model)
            exprs = [t["expr"].replace(f"BENTOML_{service_class(model)}_", "BENTOML_TfidfHSGD_")
                     for p in dash["panels"] for t in p["targets"]]
            for expr in exprs:
                missing = metric_names(expr) - scraped
                assert not missing, f"{model}: {expr} reads {missing}, which no service exports"
                assert model != "tfidf_hsgd" or stack.has_data(expr), f"no data for {expr}"
    finally:
        code = stack.interrupt()
    assert code == 0
    for port in stack.ports.values():  # Ctrl-C stopped all three
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0


def test_forwarder_never_blocks_and_counts_what_it_drops(setup):
    """Sidecar down, then too slow: submit() stays instant and every undelivered row is counted."""
    from ktt.serving import metrics
    from ktt.serving.forward import Forwarder

    def dropped(reason):
        return metrics.DROPPED_ROWS.labels(reason)._value.get()

    feats, scores = np.random.rand(5, 64), np.random.rand(5, 10)
    before = dropped("unreachable")
    down = Forwarder(f"http://127.0.0.1:{free_port()}/iterate", maxsize=4, timeout=0.2)
    for _ in range(3):
        down.submit(feats, scores)
    for _ in range(50):
        if dropped("unreachable") - before == 15:
            break
        time.sleep(0.1)
    assert dropped("unreachable") - before == 15

    class Sleepy(BaseHTTPRequestHandler):
        def do_POST(self):
            time.sleep(1)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass
    server = ThreadingHTTPServer(("127.0.0.1", 0), Sleepy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        full_before = dropped("queue_full")
        slow = Forwarder(f"http://127.0.0.1:{server.server_address[1]}/iterate", maxsize=2, timeout=5)
        start = time.perf_counter()
        for _ in range(20):
            slow.submit(feats, scores)
        assert time.perf_counter() - start < 0.5  # never waits on the sidecar
        assert dropped("queue_full") - full_before >= 5 * (20 - 3)  # at most one in flight + 2 queued
    finally:
        server.shutdown()


def test_adding_a_signal_as_the_doc_says(setup, tmp_path):
    """docs/monitoring.md "Adding a signal", word for word: its block pasted into a copy of the
    sidecar gives a gauge, a flag in the one alert, an entry in evidently.yaml and a panel."""
    import importlib.util
    import re

    block = re.search(r"```python\n# ktt/monitoring/sidecar.py[^\n]*\n(.*?)```",
                      (ROOT / "docs" / "monitoring.md").read_text(), re.S).group(1)
    source = (ROOT / "ktt" / "monitoring" / "sidecar.py").read_text()
    marker = "# Signals end here"
    assert source.count(marker) == 1
    (tmp_path / "toy_sidecar.py").write_text(source.replace(marker, block + "\n" + marker))
    spec = importlib.util.spec_from_file_location("toy_sidecar", tmp_path / "toy_sidecar.py")
    toy = importlib.util.module_from_spec(spec)
    sys.modules["toy_sidecar"] = toy  # dataclasses look their module up there
    spec.loader.exec_module(toy)
    assert toy.MONITORS[-1] == "top_score_drift"

    ref, bb_rows, clinc_rows = setup
    yaml_text = evidently_template(0.25, signals=toy.SIGNALS)
    assert "    - top_score_drift" in yaml_text
    (tmp_path / "evidently.yaml").write_text(yaml_text)
    (tmp_path / "references.parquet").write_bytes((ref / "references.parquet").read_bytes())
    mon = toy.Monitor(toy.load_config(tmp_path / "evidently.yaml"))
    mon.add({"data": bb_rows[:100].tolist()})
    assert mon.calculate() and not mon.last_results["signals"]["top_score"]
    calm = mon.top_score_ratio._value.get()
    mon.add({"data": clinc_rows[:100].tolist()})
    mon.calculate()
    assert mon.top_score_ratio._value.get() < calm
    assert mon.last_results["signals"]["top_score"] == (mon.top_score_ratio._value.get() < 0.5)
    assert mon.alert._value.get() == 1.0  # CLINC150 flags the built-in signals in any case
    panels = dashboard("S", "m", signals=toy.SIGNALS)["panels"]
    assert [p for p in panels if p["title"] == "Top leaf score, window / reference"][0]["targets"][0]["expr"] == \
        "ktt_top_score_ratio"
