"""The drift-monitoring sidecar: rows in over HTTP, Evidently 0.7 drift out as Prometheus gauges.

    python -m ktt.monitoring.sidecar evidently.yaml [--port 5001]

``POST /iterate`` takes ``{"data": [[...], ...]}`` rows in the reference set's column order
(minus ``targets``): 24 pooled features, one score per leaf class, then per level the predicted
class and its confidence. The latest ``window_size`` rows are kept; every
``calculation_period_sec`` a background thread compares them with the reference set (off the
request path) and updates the gauges on ``GET /metrics``.

Monitors: the spec's ``data_drift`` (K-S per pooled column) and ``cat_target_drift`` (the leaf
class), and the signals that catch a catalog change (docs/monitoring.md): ``confidence_drift``
(per level, K-S on the confidence and a z-test on the share below ``alert.low_confidence``),
``level_prediction_drift`` (chi-square on each level's predicted class) and ``embedding_drift``
(Evidently's domain classifier on the pooled features). ``ktt_drift_alert`` combines them
(:func:`alert_signals`).
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger("ktt.monitoring")
MONITORS = ("data_drift", "cat_target_drift", "confidence_drift", "level_prediction_drift", "embedding_drift")
#: ``alert`` settings and their defaults (chosen by benchmarks/drift.py, docs/monitoring.md)
ALERT = {"p_value": 1e-3, "low_confidence": 0.3, "embedding_auc": 0.75, "classes_per_row": 0.2}
LEVEL_COLUMN = re.compile(r"level(\d+)_(class|confidence)")  # reference-set / row columns
LEVEL_TESTED = re.compile(r"level(\d+)_(class|confidence|low)")  # the per-level columns Evidently tests
LEVEL_RESULT = {"confidence": "confidence_p", "low": "low_p", "class": "prediction_p"}
MAX_BODY = 10 * 1024 * 1024


def is_drift(share: float, drift_share: float) -> bool:
    """The dataset drifted when at least ``drift_share`` of the monitored columns did."""
    return share >= drift_share


def alert_signals(results: dict, window_rows: int, alert: dict) -> dict[str, bool]:
    """Which signals flag a window; ``ktt_drift_alert`` is 1 when any does. ``results`` per level
    ``d``: ``confidence_p``, ``confidence_lower`` (window mean below the reference's), ``low_p``,
    ``low_higher`` (more answers below ``low_confidence`` than in the reference), ``prediction_p``
    and ``classes``; and ``embedding_auc``. A level's predicted-class test counts only where the
    window holds at least 1 / ``classes_per_row`` rows per class (the chi-square needs counts)."""
    p = alert["p_value"]
    out = {}
    for d, r in sorted(results.get("levels", {}).items()):
        if "confidence_p" in r:
            out[f"confidence_level{d}"] = r["confidence_lower"] and r["confidence_p"] < p
            out[f"low_confidence_level{d}"] = r["low_higher"] and r["low_p"] < p
        if "prediction_p" in r and r["classes"] <= alert["classes_per_row"] * window_rows:
            out[f"prediction_level{d}"] = r["prediction_p"] < p
    if "embedding_auc" in results:
        out["embedding"] = results["embedding_auc"] > alert["embedding_auc"]
    return out


def load_config(path: str | Path) -> dict:
    """``evidently.yaml``: the ``service`` section, with ``reference_path`` relative to the file."""
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text())["service"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not an evidently.yaml with a 'service' section ({e})") from None
    required = ("reference_path", "min_reference_size", "use_reference", "moving_reference", "window_size",
                "calculation_period_sec", "monitors")
    missing = [k for k in required if k not in cfg]
    if missing:
        raise ValueError(f"{path}: missing {missing}")
    unknown = sorted(set(cfg["monitors"]) - set(MONITORS))
    if unknown:
        raise ValueError(f"{path}: unknown monitors {unknown}; known: {list(MONITORS)}")
    if cfg["window_size"] < 2 or cfg["calculation_period_sec"] <= 0:
        raise ValueError(f"{path}: window_size must be >= 2 and calculation_period_sec > 0")
    if not 0 < float(cfg.get("drift_share", 0.5)) <= 1:
        raise ValueError(f"{path}: drift_share must be in (0, 1], not {cfg['drift_share']!r}")
    alert = cfg.get("alert") or {}
    unknown = sorted(set(alert) - set(ALERT))
    if unknown or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in alert.values()):
        raise ValueError(f"{path}: alert takes numbers for {sorted(ALERT)}, not {alert!r}")
    cfg["alert"] = {**ALERT, **alert}
    cfg["reference_path"] = str((path.parent / cfg["reference_path"]).resolve())
    return cfg


class Monitor:
    """A window of recent rows, the reference set, and the gauges they drive."""

    def __init__(self, cfg: dict):
        self.cfg = {**cfg, "alert": {**ALERT, **(cfg.get("alert") or {})}}
        ref = pd.read_parquet(cfg["reference_path"])
        self.features = [c for c in ref.columns if c.isdigit()]
        self.level_columns = [c for c in ref.columns if LEVEL_COLUMN.fullmatch(c)]  # absent in old reference sets
        self.classes = [c for c in ref.columns if c != "targets" and not c.isdigit() and c not in self.level_columns]
        self.columns = self.features + self.classes + self.level_columns
        self.depth = len(self.level_columns) // 2
        self.reference = self._with_prediction(ref[self.columns])
        self.window: deque = deque(maxlen=int(cfg["window_size"]))
        self.lock = threading.Lock()
        r = self.registry = CollectorRegistry()
        self.rows_total = Counter("ktt_monitoring_rows", "Rows received", registry=r)
        self.rejected_total = Counter("ktt_monitoring_rejected_requests", "Requests refused with 400", registry=r)
        self.window_rows = Gauge("ktt_monitoring_window_rows", "Rows in the current window", registry=r)
        self.runs_total = Counter("ktt_monitoring_calculations", "Drift calculations done", registry=r)
        self.last_run = Gauge("ktt_monitoring_last_calculation_timestamp_seconds",
                              "Arrival time up to which the last drift calculation saw rows",
                              registry=r)
        self.column_drift = Gauge("ktt_feature_drift_score", "Drift score of one monitored column (K-S p-value: low is drift)",
                                  ["column"], registry=r)
        self.drift_share = Gauge("ktt_drifted_columns_share", "Share of feature columns that drifted", registry=r)
        self.drift_count = Gauge("ktt_drifted_columns_count", "Feature columns that drifted", registry=r)
        self.dataset_drift = Gauge("ktt_dataset_drift", "1 if the share of drifted columns reaches drift_share",
                                   registry=r)
        self.target_drift = Gauge("ktt_prediction_drift_score", "Drift score of the predicted leaf (Evidently's "
                                  "default test: chi-square p-value for references up to 1,000 rows, else "
                                  "Jensen-Shannon distance)", registry=r)
        self.class_share = Gauge("ktt_predicted_class_share", "Share of the window predicted as each class",
                                 ["class_name"], registry=r)
        self.confidence_drift = Gauge("ktt_confidence_drift_score", "K-S p-value of a level's confidence, window "
                                      "vs reference (low is drift)", ["level"], registry=r)
        self.confidence_mean = Gauge("ktt_confidence_mean", "Mean confidence of a level's predicted class",
                                     ["level", "set"], registry=r)
        self.low_share = Gauge("ktt_low_confidence_share", "Share of rows whose confidence at a level is below "
                               "alert.low_confidence", ["level", "set"], registry=r)
        self.low_drift = Gauge("ktt_low_confidence_drift_score", "z-test p-value of the low-confidence share, "
                               "window vs reference (low is drift)", ["level"], registry=r)
        self.level_drift = Gauge("ktt_level_prediction_drift_score", "Chi-square p-value of a level's predicted "
                                 "class distribution (low is drift)", ["level"], registry=r)
        self.embedding_drift = Gauge("ktt_embedding_drift_score", "ROC AUC of a classifier telling window from "
                                     "reference on the pooled features (0.5: indistinguishable)", registry=r)
        self.alert = Gauge("ktt_drift_alert", "1 when any drift signal flags the window (docs/monitoring.md)",
                           registry=r)
        self.alert_signal = Gauge("ktt_drift_alert_signal", "1 for each signal that flags the window",
                                  ["signal"], registry=r)

    def _with_prediction(self, df: pd.DataFrame) -> pd.DataFrame:
        """Adds the predicted class and the model's confidence (its top leaf score), a strong drift signal."""
        df = df.reset_index(drop=True).copy()
        scores = df[self.classes].to_numpy()
        df["prediction"] = np.array(self.classes, dtype=object)[scores.argmax(axis=1)]
        df["confidence"] = scores.max(axis=1)
        low = self.cfg["alert"]["low_confidence"]
        for d in range(1, self.depth + 1):
            df[f"level{d}_class"] = df[f"level{d}_class"].astype(int).astype(str)
            df[f"level{d}_low"] = (df[f"level{d}_confidence"] < low).astype(int).astype(str)
        return df

    def add(self, body) -> int:
        """Validate and keep the rows of one POST; raises ValueError with what is wrong."""
        rows = body.get("data") if isinstance(body, dict) else None
        if not isinstance(rows, list) or not rows:
            raise ValueError('expected {"data": [[...], ...]} with at least one row')
        arr = np.asarray(rows, dtype=object)
        if arr.ndim != 2 or arr.shape[1] != len(self.columns):
            raise ValueError(f"each row needs {len(self.columns)} numbers ({len(self.features)} features, "
                             f"{len(self.classes)} class scores)")
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError("rows must hold numbers only") from None
        if not np.isfinite(arr).all():
            raise ValueError("rows must hold finite numbers")
        with self.lock:
            self.window.extend(arr)
            self.window_rows.set(len(self.window))
        self.rows_total.inc(len(arr))
        return len(arr)

    def calculate(self) -> bool:
        """One drift calculation over the current window; False while too few rows arrived."""
        from evidently import DataDefinition, Dataset, Report
        from evidently.metrics import DriftedColumnsCount, ValueDrift

        started = time.time()
        with self.lock:
            rows = list(self.window)
        if len(rows) < max(int(self.cfg["min_reference_size"]), 2):
            return False
        current = self._with_prediction(pd.DataFrame(rows, columns=self.columns))
        numeric = self.features + ["confidence"]
        # one stat test for every window size (Evidently would switch K-S to Wasserstein for big references)
        test = self.cfg.get("num_stattest", "ks")
        monitors, levels = self.cfg["monitors"], range(1, self.depth + 1)
        metrics = []
        if "data_drift" in monitors:
            metrics += [DriftedColumnsCount(columns=numeric, num_method=test),
                        *(ValueDrift(column=c, method=test) for c in numeric)]
        if "cat_target_drift" in monitors:
            metrics.append(ValueDrift(column="prediction"))
        if "confidence_drift" in monitors:
            metrics += [m for d in levels for m in (ValueDrift(column=f"level{d}_confidence", method="ks"),
                                                    ValueDrift(column=f"level{d}_low", method="z"))]
        if "level_prediction_drift" in monitors:
            metrics += [ValueDrift(column=f"level{d}_class", method="chisquare") for d in levels]
        confidences = [f"level{d}_confidence" for d in levels]
        categorical = ["prediction", *(f"level{d}_{k}" for d in levels for k in ("class", "low"))]
        definition = DataDefinition(numerical_columns=numeric + confidences, categorical_columns=categorical)
        cols = numeric + confidences + categorical
        snap = Report(metrics).run(Dataset.from_pandas(current[cols], data_definition=definition),
                                   Dataset.from_pandas(self.reference[cols], data_definition=definition))
        results: dict = {"levels": {d: {} for d in levels}}
        for m in snap.dict()["metrics"]:
            cfg, value = m["config"], m["value"]
            kind, column = cfg["type"], cfg.get("column")
            level = LEVEL_TESTED.fullmatch(column or "")
            if kind.endswith("DriftedColumnsCount"):
                self.drift_count.set(value["count"])
                self.drift_share.set(value["share"])
                self.dataset_drift.set(float(is_drift(value["share"], float(self.cfg.get("drift_share", 0.5)))))
            elif column == "prediction":
                self.target_drift.set(value)
            elif level:
                d, key = int(level.group(1)), LEVEL_RESULT[level.group(2)]
                results["levels"][d][key] = value
                {"confidence_p": self.confidence_drift, "prediction_p": self.level_drift,
                 "low_p": self.low_drift}[key].labels(str(d)).set(value)
            else:
                self.column_drift.labels(column).set(value)
        if "embedding_drift" in monitors:
            # Evidently's domain-classifier method itself: its EmbeddingsDrift metric also draws a
            # t-SNE plot, 6 s of every 8 s calculation
            from evidently.metrics.embeddings import ModelDriftMethod

            auc, _, _ = ModelDriftMethod()(current[self.features].copy(), self.reference[self.features].copy())
            self.embedding_drift.set(auc)
            results["embedding_auc"] = auc
        for d in levels:
            r = results["levels"][d]
            for name, df in (("window", current), ("reference", self.reference)):
                self.confidence_mean.labels(str(d), name).set(df[f"level{d}_confidence"].mean())
                self.low_share.labels(str(d), name).set((df[f"level{d}_low"] == "1").mean())
            r["confidence_lower"] = current[f"level{d}_confidence"].mean() < self.reference[f"level{d}_confidence"].mean()
            r["low_higher"] = (current[f"level{d}_low"] == "1").mean() > (self.reference[f"level{d}_low"] == "1").mean()
            r["classes"] = self.reference[f"level{d}_class"].nunique()
        signals = alert_signals(results, len(current), self.cfg["alert"])
        for name, on in signals.items():
            self.alert_signal.labels(name).set(float(on))
        self.alert.set(float(any(signals.values())))
        self.last_results = {**results, "signals": signals}
        shares = current["prediction"].value_counts(normalize=True)
        for c in self.classes:
            self.class_share.labels(c).set(float(shares.get(c, 0.0)))
        if self.cfg.get("moving_reference") and not self.cfg.get("use_reference", True):
            self.reference = current
        self.runs_total.inc()
        self.last_run.set(started)  # the window as of this time: rows that came later are not in it
        return True

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.wait(float(self.cfg["calculation_period_sec"])):
            try:
                self.calculate()
            except Exception:  # a bad window must not stop monitoring
                log.exception("drift calculation failed")


def make_handler(monitor: Monitor):
    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: bytes, ctype: str = "application/json"):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/metrics":
                self._send(200, generate_latest(monitor.registry), CONTENT_TYPE_LATEST)
            elif self.path in ("/healthz", "/"):
                self._send(200, b'{"status": "ok"}')
            else:
                self._send(404, b'{"error": "not found"}')

        def do_POST(self):
            if self.path != "/iterate":
                return self._send(404, b'{"error": "not found"}')
            length = int(self.headers.get("Content-Length") or 0)
            try:
                if length > MAX_BODY:
                    raise ValueError(f"body of {length:,} bytes; the limit is {MAX_BODY:,}")
                added = monitor.add(json.loads(self.rfile.read(length) or b"null"))
            except (ValueError, json.JSONDecodeError) as e:
                monitor.rejected_total.inc()
                return self._send(400, json.dumps({"error": str(e)}).encode())
            self._send(200, json.dumps({"rows": added}).encode())

        def log_message(self, *args):  # requests are counted, not logged one by one
            pass

    return Handler


def serve(config: str | Path, host: str = "0.0.0.0", port: int = 5001, period: float | None = None) -> None:
    cfg = load_config(config)
    if period:
        cfg["calculation_period_sec"] = period
    monitor = Monitor(cfg)
    stop = threading.Event()
    threading.Thread(target=monitor.run_forever, args=(stop,), daemon=True).start()
    server = ThreadingHTTPServer((host, port), make_handler(monitor))
    log.info("monitoring on %s:%d, reference %s", host, port, monitor.cfg["reference_path"])
    try:
        server.serve_forever()
    finally:
        stop.set()
        server.server_close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=5001)
    ap.add_argument("--period", type=float, default=None, help="override calculation_period_sec")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    try:
        serve(args.config, args.host, args.port, args.period)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
