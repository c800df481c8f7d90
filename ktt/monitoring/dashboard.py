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


def _signal_panels(signals, y: int) -> list[dict]:
    """Each drift signal's own panels (``Signal.panels``), laid out in rows 24 wide from ``y``."""
    out, x = [], 0
    for signal in signals:
        for title, exprs, legend, opts in signal.panels:
            w = opts.get("w", 8)
            if x + w > 24:
                x, y = 0, y + 8
            out.append(_panel(title, exprs, x, y, w=w, kind=opts.get("kind", "timeseries"), unit=opts.get("unit"),
                              legend=legend))
            x += w
    return out


def dashboard(service: str, model: str, signals=None) -> dict:
    """A dashboard for the BentoService class ``service`` of ``model``: the service's panels, the
    sidecar's, then every drift signal's (default: the sidecar's ``SIGNALS``)."""
    from .sidecar import SIGNALS

    signals = SIGNALS if signals is None else signals
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
        _panel("Predicted class share, top 10", ["topk(10, ktt_predicted_class_share)"], 0, 16, w=12,
               legend=["{{class_name}}"]),
        _panel("Drift alert (1 = drift)", ["ktt_drift_alert"], 12, 16, w=4, kind="stat"),
        _panel("Signals that flag the window", ["ktt_drift_alert_signal"], 16, 16, w=8, legend=["{{signal}}"]),
        *_signal_panels(signals, y=24),
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
