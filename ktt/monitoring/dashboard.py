"""The Grafana dashboard of one model's monitored service, built from the metrics it really exports.

``BENTOML_<Service>_*`` come from BentoML (``serve-gunicorn``), ``ktt_*`` from the service
(:mod:`ktt.serving.metrics`) and the drift sidecar (:mod:`ktt.monitoring.sidecar`). ``ktt export``
writes it into ``build/<model>_<dataset>/bentoml/dashboard.json`` and the Grafana provisioning;
the tests check every expression against a live scrape.
"""
from __future__ import annotations

import re

PROMQL_FUNCTIONS = {"sum", "max", "min", "rate", "increase", "histogram_quantile", "topk", "time", "by"}


def _panel(title, exprs, x, y, w=8, h=8, kind="timeseries", unit=None, legend=None):
    targets = [{"expr": e, "legendFormat": (legend or [""] * len(exprs))[i], "refId": chr(65 + i),
                "datasource": {"type": "prometheus", "uid": "prometheus"}} for i, e in enumerate(exprs)]
    panel = {"type": kind, "title": title, "gridPos": {"x": x, "y": y, "w": w, "h": h},
             "datasource": {"type": "prometheus", "uid": "prometheus"}, "targets": targets}
    if unit:
        panel["fieldConfig"] = {"defaults": {"unit": unit}, "overrides": []}
    return panel


def dashboard(service: str, model: str) -> dict:
    """A dashboard for the BentoService class ``service`` of ``model``."""
    b = f"BENTOML_{service}"
    q = "histogram_quantile({}, sum by (le) (rate({}_bucket[1m])))"
    panels = [
        _panel("Requests/s by HTTP code", [f"sum by (http_response_code) (rate({b}_request_total[1m]))"], 0, 0,
               unit="reqps", legend=["{{http_response_code}}"]),
        _panel("Latency", [q.format(0.5, f"{b}_request_duration_seconds"),
                           q.format(0.99, f"{b}_request_duration_seconds")], 8, 0, unit="s", legend=["p50", "p99"]),
        _panel("Micro-batch size (median)", [q.format(0.5, f"{b}_mb_batch_size")], 16, 0),
        _panel("Texts classified and refused per second",
               ["rate(ktt_predicted_rows_total[1m])", "sum by (endpoint) (rate(ktt_bad_requests_total[1m]))",
                "sum by (endpoint) (rate(ktt_failed_requests_total[1m]))"], 0, 8,
               legend=["classified", "400 on {{endpoint}}", "500 on {{endpoint}}"]),
        _panel("Rows to the drift sidecar per second",
               ["rate(ktt_forwarded_rows_total[1m])", "sum by (reason) (rate(ktt_forward_dropped_rows_total[1m]))"],
               8, 8, legend=["delivered", "dropped: {{reason}}"]),
        _panel("Sidecar window", ["ktt_monitoring_window_rows", "rate(ktt_monitoring_rows_total[1m])",
                                  "time() - ktt_monitoring_last_calculation_timestamp_seconds"], 16, 8,
               legend=["rows in window", "rows/s received", "seconds since last drift check"]),
        _panel("Dataset drift (1 = drift)", ["ktt_dataset_drift"], 0, 16, w=4, kind="stat"),
        _panel("Share of drifted columns", ["ktt_drifted_columns_share"], 4, 16, w=6, unit="percentunit"),
        _panel("Prediction drift (p-value: low is drift)", ["ktt_prediction_drift_score"], 10, 16, w=6),
        _panel("Drifted columns", ["ktt_drifted_columns_count"], 16, 16, w=8),
        _panel("Per-column drift (p-value: low is drift)", ["ktt_feature_drift_score"], 0, 24, w=12,
               legend=["{{column}}"]),
        _panel("Predicted class share, top 10", ["topk(10, ktt_predicted_class_share)"], 12, 24, w=12,
               legend=["{{class_name}}"]),
        _panel("Drift alert (1 = drift)", ["ktt_drift_alert"], 0, 32, w=4, kind="stat"),
        _panel("Signals that flag the window", ["ktt_drift_alert_signal"], 4, 32, w=10, legend=["{{signal}}"]),
        _panel("Domain classifier ROC AUC (0.5: no drift)", ["ktt_embedding_drift_score"], 14, 32, w=10),
        _panel("Mean confidence per level", ["ktt_confidence_mean"], 0, 40, w=12, unit="percentunit",
               legend=["level {{level}}, {{set}}"]),
        _panel("Share below the low-confidence threshold", ["ktt_low_confidence_share"], 12, 40, w=12,
               unit="percentunit", legend=["level {{level}}, {{set}}"]),
        _panel("Confidence drift per level (p-values: low is drift)",
               ["ktt_confidence_drift_score", "ktt_low_confidence_drift_score"], 0, 48, w=12,
               legend=["K-S, level {{level}}", "low share, level {{level}}"]),
        _panel("Predicted-class drift per level (p-value: low is drift)", ["ktt_level_prediction_drift_score"],
               12, 48, w=12, legend=["level {{level}}"]),
    ]
    for i, p in enumerate(panels, 1):
        p["id"] = i
    return {"title": f"KTT {model}", "uid": f"ktt-{model}".replace("_", "-"), "tags": ["ktt", model],
            "timezone": "browser", "schemaVersion": 39, "version": 1, "refresh": "10s",
            "time": {"from": "now-30m", "to": "now"}, "panels": panels}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label matchers, ranges and ``by (...)`` removed)."""
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]|by \([^)]*\)|\"[^\"]*\"", " ", expr)
    tokens = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return tokens - PROMQL_FUNCTIONS
