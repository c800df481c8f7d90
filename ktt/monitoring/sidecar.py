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
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger("ktt.monitoring")
#: ``alert`` settings and their defaults (chosen by benchmarks/drift.py, docs/monitoring.md)
ALERT = {"p_value": 1e-3, "low_confidence": 0.3, "embedding_auc": 0.75, "classes_per_row": 0.2}
LEVEL_COLUMN = re.compile(r"level(\d+)_(class|confidence)")  # reference-set / row columns
MAX_BODY = 10 * 1024 * 1024


def is_drift(share: float, drift_share: float) -> bool:
    """The dataset drifted when at least ``drift_share`` of the monitored columns did."""
    return share >= drift_share


# -- drift signals: each one whole, in one place (docs/monitoring.md, "Adding a signal") --------

def _none(*_):
    return {}


@dataclass(frozen=True)
class Signal:
    """One drift signal. ``Monitor.calculate``, ``evidently.yaml``'s ``monitors`` and the
    Grafana panels (``ktt.monitoring.dashboard``) all come from :data:`SIGNALS`.

    ``name``: its entry in ``monitors``. ``gauges``: ``(attribute, Prometheus name, help,
    labels)``, created on the :class:`Monitor` under ``attribute``. ``metrics(monitor, ev)``: the
    Evidently metrics (``ev`` is ``evidently.metrics``) it asks of each window. ``reads(monitor,
    kind, column, value, results)``: takes one result of those metrics into its gauges and
    ``results``; True when the result was its own. ``after(monitor, window, results)``: what it
    computes beyond Evidently's report. ``flags(results, window_rows, alert)``: the alert signals
    it raises, by name. ``panels``: ``(title, PromQL expressions, legends, options)`` for the
    dashboard.
    """

    name: str
    gauges: tuple = ()
    metrics: Callable = lambda monitor, ev: []
    reads: Callable = lambda monitor, kind, column, value, results: False
    after: Callable = lambda monitor, window, results: None
    flags: Callable = _none
    panels: tuple = ()


def _read_data(m, kind, column, value, results) -> bool:
    if kind.endswith("DriftedColumnsCount"):
        m.drift_count.set(value["count"])
        m.drift_share.set(value["share"])
        m.dataset_drift.set(float(is_drift(value["share"], float(m.cfg.get("drift_share", 0.5)))))
        return True
    if column in m.numeric:
        m.column_drift.labels(column).set(value)
        return True
    return False


def _read_target(m, kind, column, value, results) -> bool:
    if column == "prediction":
        m.target_drift.set(value)
        return True
    return False


def _level_reader(suffixes: dict):
    """Reads ``level<d>_<suffix>`` results into ``results["levels"][d][key]`` and gauge ``attribute``
    (``suffixes``: suffix -> (key, attribute))."""
    pattern = re.compile(rf"level(\d+)_({'|'.join(suffixes)})")

    def read(m, kind, column, value, results) -> bool:
        hit = pattern.fullmatch(column or "")
        if not hit:
            return False
        key, gauge = suffixes[hit.group(2)]
        results["levels"][int(hit.group(1))][key] = value
        getattr(m, gauge).labels(hit.group(1)).set(value)
        return True
    return read


def _confidence_after(m, window, results) -> None:
    for d in m.levels:
        r = results["levels"][d]
        for name, df in (("window", window), ("reference", m.reference)):
            m.confidence_mean.labels(str(d), name).set(df[f"level{d}_confidence"].mean())
            m.low_share.labels(str(d), name).set((df[f"level{d}_low"] == "1").mean())
        r["confidence_lower"] = window[f"level{d}_confidence"].mean() < m.reference[f"level{d}_confidence"].mean()
        r["low_higher"] = (window[f"level{d}_low"] == "1").mean() > (m.reference[f"level{d}_low"] == "1").mean()


def _confidence_flags(results, window_rows, alert) -> dict[str, bool]:
    out = {}
    for d, r in sorted(results.get("levels", {}).items()):
        if "confidence_p" in r:
            out[f"confidence_level{d}"] = r["confidence_lower"] and r["confidence_p"] < alert["p_value"]
            out[f"low_confidence_level{d}"] = r["low_higher"] and r["low_p"] < alert["p_value"]
    return out


def _classes_after(m, window, results) -> None:
    for d in m.levels:
        results["levels"][d]["classes"] = m.reference[f"level{d}_class"].nunique()


def _prediction_flags(results, window_rows, alert) -> dict[str, bool]:
    """A level's predicted-class test counts only where the window holds at least
    1 / ``classes_per_row`` rows per class (the chi-square needs counts)."""
    return {f"prediction_level{d}": r["prediction_p"] < alert["p_value"]
            for d, r in sorted(results.get("levels", {}).items())
            if "prediction_p" in r and r["classes"] <= alert["classes_per_row"] * window_rows}


def _embedding_after(m, window, results) -> None:
    # Evidently's domain-classifier method itself: its EmbeddingsDrift metric also draws a
    # t-SNE plot, 6 s of every 8 s calculation
    from evidently.metrics.embeddings import ModelDriftMethod

    auc, _, _ = ModelDriftMethod()(window[m.features].copy(), m.reference[m.features].copy())
    m.embedding_drift.set(auc)
    results["embedding_auc"] = auc


def _embedding_flags(results, window_rows, alert) -> dict[str, bool]:
    return {"embedding": results["embedding_auc"] > alert["embedding_auc"]} if "embedding_auc" in results else {}


SIGNALS = [
    Signal("cat_target_drift",
           gauges=(("target_drift", "ktt_prediction_drift_score", "Drift score of the predicted leaf (Evidently's "
                    "default test: chi-square p-value for references up to 1,000 rows, else Jensen-Shannon "
                    "distance)", ()),),
           metrics=lambda m, ev: [ev.ValueDrift(column="prediction")], reads=_read_target,
           panels=(("Prediction drift (p-value: low is drift)", ["ktt_prediction_drift_score"], None, {"w": 6}),)),
    Signal("data_drift",
           gauges=(("column_drift", "ktt_feature_drift_score", "Drift score of one monitored column (K-S p-value: "
                    "low is drift)", ("column",)),
                   ("drift_share", "ktt_drifted_columns_share", "Share of feature columns that drifted", ()),
                   ("drift_count", "ktt_drifted_columns_count", "Feature columns that drifted", ()),
                   ("dataset_drift", "ktt_dataset_drift", "1 if the share of drifted columns reaches drift_share", ())),
           metrics=lambda m, ev: [ev.DriftedColumnsCount(columns=m.numeric, num_method=m.test),
                                  *(ev.ValueDrift(column=c, method=m.test) for c in m.numeric)],
           reads=_read_data,
           panels=(("Dataset drift (1 = drift)", ["ktt_dataset_drift"], None, {"w": 4, "kind": "stat"}),
                   ("Share of drifted columns", ["ktt_drifted_columns_share"], None, {"w": 6, "unit": "percentunit"}),
                   ("Drifted columns", ["ktt_drifted_columns_count"], None, {"w": 8}),
                   ("Per-column drift (p-value: low is drift)", ["ktt_feature_drift_score"], ["{{column}}"],
                    {"w": 12}))),
    Signal("confidence_drift",
           gauges=(("confidence_drift", "ktt_confidence_drift_score", "K-S p-value of a level's confidence, window "
                    "vs reference (low is drift)", ("level",)),
                   ("confidence_mean", "ktt_confidence_mean", "Mean confidence of a level's predicted class",
                    ("level", "set")),
                   ("low_share", "ktt_low_confidence_share", "Share of rows whose confidence at a level is below "
                    "alert.low_confidence", ("level", "set")),
                   ("low_drift", "ktt_low_confidence_drift_score", "z-test p-value of the low-confidence share, "
                    "window vs reference (low is drift)", ("level",))),
           metrics=lambda m, ev: [x for d in m.levels for x in (ev.ValueDrift(column=f"level{d}_confidence", method="ks"),
                                                                ev.ValueDrift(column=f"level{d}_low", method="z"))],
           reads=_level_reader({"confidence": ("confidence_p", "confidence_drift"), "low": ("low_p", "low_drift")}),
           after=_confidence_after, flags=_confidence_flags,
           panels=(("Mean confidence per level", ["ktt_confidence_mean"], ["level {{level}}, {{set}}"],
                    {"w": 12, "unit": "percentunit"}),
                   ("Share below the low-confidence threshold", ["ktt_low_confidence_share"],
                    ["level {{level}}, {{set}}"], {"w": 12, "unit": "percentunit"}),
                   ("Confidence drift per level (p-values: low is drift)",
                    ["ktt_confidence_drift_score", "ktt_low_confidence_drift_score"],
                    ["K-S, level {{level}}", "low share, level {{level}}"], {"w": 12}))),
    Signal("level_prediction_drift",
           gauges=(("level_drift", "ktt_level_prediction_drift_score", "Chi-square p-value of a level's predicted "
                    "class distribution (low is drift)", ("level",)),),
           metrics=lambda m, ev: [ev.ValueDrift(column=f"level{d}_class", method="chisquare") for d in m.levels],
           reads=_level_reader({"class": ("prediction_p", "level_drift")}), after=_classes_after,
           flags=_prediction_flags,
           panels=(("Predicted-class drift per level (p-value: low is drift)", ["ktt_level_prediction_drift_score"],
                    ["level {{level}}"], {"w": 12}),)),
    Signal("embedding_drift",
           gauges=(("embedding_drift", "ktt_embedding_drift_score", "ROC AUC of a classifier telling window from "
                    "reference on the pooled features (0.5: indistinguishable)", ()),),
           after=_embedding_after, flags=_embedding_flags,
           panels=(("Domain classifier ROC AUC (0.5: no drift)", ["ktt_embedding_drift_score"], None, {"w": 12}),)),
]
# Signals end here (docs/monitoring.md, "Adding a signal": a new one goes above this line)
MONITORS = tuple(s.name for s in SIGNALS)


def alert_signals(results: dict, window_rows: int, alert: dict, signals=None) -> dict[str, bool]:
    """Which signals flag a window; ``ktt_drift_alert`` is 1 when any does. ``results`` per level
    ``d``: ``confidence_p``, ``confidence_lower`` (window mean below the reference's), ``low_p``,
    ``low_higher`` (more answers below ``low_confidence`` than in the reference), ``prediction_p``
    and ``classes``; and ``embedding_auc`` (each signal's ``flags`` reads its own)."""
    return {k: v for s in (SIGNALS if signals is None else signals) for k, v in s.flags(results, window_rows, alert).items()}


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
        self.levels = range(1, self.depth + 1)
        self.numeric = self.features + ["confidence"]
        self.test = cfg.get("num_stattest", "ks")  # one test at every window size (Evidently would switch to Wasserstein)
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
        for signal in SIGNALS:
            for attr, name, doc, labels in signal.gauges:
                setattr(self, attr, Gauge(name, doc, list(labels), registry=r))
        self.class_share = Gauge("ktt_predicted_class_share", "Share of the window predicted as each class",
                                 ["class_name"], registry=r)
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
        import evidently.metrics as ev
        from evidently import DataDefinition, Dataset, Report

        started = time.time()
        with self.lock:
            rows = list(self.window)
        if len(rows) < max(int(self.cfg["min_reference_size"]), 2):
            return False
        current = self._with_prediction(pd.DataFrame(rows, columns=self.columns))
        signals = [s for s in SIGNALS if s.name in self.cfg["monitors"]]
        results: dict = {"levels": {d: {} for d in self.levels}}
        metrics = [x for s in signals for x in s.metrics(self, ev)]
        if metrics:
            confidences = [f"level{d}_confidence" for d in self.levels]
            categorical = ["prediction", *(f"level{d}_{k}" for d in self.levels for k in ("class", "low"))]
            definition = DataDefinition(numerical_columns=self.numeric + confidences, categorical_columns=categorical)
            cols = self.numeric + confidences + categorical
            snap = Report(metrics).run(Dataset.from_pandas(current[cols], data_definition=definition),
                                       Dataset.from_pandas(self.reference[cols], data_definition=definition))
            for m in snap.dict()["metrics"]:
                kind, column = m["config"]["type"], m["config"].get("column")
                for s in signals:  # the first signal that knows the result takes it
                    if s.reads(self, kind, column, m["value"], results):
                        break
        for s in signals:
            s.after(self, current, results)
        flagged = alert_signals(results, len(current), self.cfg["alert"])
        for name, on in flagged.items():
            self.alert_signal.labels(name).set(float(on))
        self.alert.set(float(any(flagged.values())))
        self.last_results = {**results, "signals": flagged}
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
