"""The monitored build tree: sidecar, Prometheus, Grafana and docker-compose around the inference service."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import yaml

from ..errors import NotFound

log = logging.getLogger(__name__)
PORTS = {"inference": 5000, "monitoring": 5001, "prometheus": 9090, "grafana": 3000}
SIDECAR_REQUIREMENTS = ["evidently==0.7.23", "pandas<3", "pyarrow<26", "numpy", "prometheus-client", "pyyaml"]


EVIDENTLY = """# Template of the drift sidecar's configuration; `ktt export --monitoring` copies it into
# build/<model>_<dataset>/monitoring/ beside the reference set.
service:
  reference_path: './references.parquet'
  min_reference_size: 100
  use_reference: true
  moving_reference: false
  window_size: 100
  calculation_period_sec: 60
  # dataset drift when this share of the monitored columns drifts (the model's `drift_share`:
  # Evidently's default 0.5, and 0.25 for the TF-IDF models, whose sparse pooled features move
  # less: on BigBasket 0.0 of them drift for held-out titles, 0.40-0.48 for CLINC150 utterances)
  drift_share: {drift_share}
  monitors:
{monitors}
  # ktt_drift_alert: 1 when any signal flags the window (docs/monitoring.md, "One alert"):
  # a level's confidence lower than the reference's (K-S) or more often below low_confidence
  # (z-test), at p < p_value; a level's predicted classes (chi-square, p < p_value) where the
  # window holds 1 / classes_per_row rows per class; the domain classifier's ROC AUC over embedding_auc
  alert:
    p_value: {p_value}
    low_confidence: {low_confidence}
    embedding_auc: {embedding_auc}
    classes_per_row: {classes_per_row}
"""


def evidently_template(drift_share: float, signals=None) -> str:
    """The ``evidently.yaml`` template of a model whose ``drift_share`` is given, monitoring every
    drift signal (default: the sidecar's ``SIGNALS``)."""
    from .sidecar import ALERT, SIGNALS

    monitors = "\n".join(f"    - {s.name}" for s in (SIGNALS if signals is None else signals))
    return EVIDENTLY.format(drift_share=drift_share, monitors=monitors, **ALERT)


def find_reference(src) -> Path | None:
    """The ``*_reference.parquet`` of the source: beside its checkpoint, else in its run."""
    local = sorted(Path(src.checkpoint).parent.glob("*_reference.parquet"))
    if local:
        return local[-1]
    if src.run_id:
        from ..tracking import run_artifact

        return run_artifact(src.run_id, "checkpoints", lambda name: name.endswith("_reference.parquet"))
    return None


def _write_yaml(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def build_monitoring(est, src, out: Path, files: dict[str, Path], datasets_root="datasets") -> dict:
    """Write everything but ``inference/`` (built before) under ``out``; ``files`` are the model's
    ``evidently.yaml`` and ``dashboard.json`` (``ktt.export.service_files``). Returns what was written."""
    from ..data import load_dataset

    ref_path = find_reference(src)
    mon = out / "monitoring"
    mon.mkdir(parents=True, exist_ok=True)
    if ref_path is None:
        try:
            ds = load_dataset(src.dataset, datasets_root)
        except FileNotFoundError:
            raise NotFound(f"no reference set for {src.model} on {src.dataset}: train with --reference "
                                    f"or keep datasets/{src.dataset} so one can be made") from None
        log.info("no reference set found: making one from the test split of %s", src.dataset)
        est.gen_reference_set(ds.test).to_parquet(mon / "references.parquet", index=False)
    else:
        shutil.copy(ref_path, mon / "references.parquet")

    template = yaml.safe_load(files["evidently.yaml"].read_text())
    template["service"]["reference_path"] = "./references.parquet"
    _write_yaml(mon / "evidently.yaml", template)
    shutil.copy(Path(__file__).with_name("sidecar.py"), mon / "monitoring.py")
    (mon / "requirements.txt").write_text("\n".join(SIDECAR_REQUIREMENTS) + "\n")
    (mon / "Dockerfile").write_text(
        "FROM python:3.11-slim\nWORKDIR /app\nCOPY requirements.txt ./\n"
        "RUN pip install --no-cache-dir -r requirements.txt\nCOPY . ./\n"
        f"EXPOSE {PORTS['monitoring']}\nCMD [\"python\", \"monitoring.py\", \"evidently.yaml\", \"--port\", "
        f"\"{PORTS['monitoring']}\"]\n")

    _write_yaml(out / "prometheus" / "prometheus.yaml", prometheus_config(f"inference:{PORTS['inference']}",
                                                                        f"monitoring:{PORTS['monitoring']}"))
    _write_yaml(out / "prometheus" / "alerts.yaml", alert_rules())
    prov = out / "grafana" / "provisioning"
    (prov / "dashboards").mkdir(parents=True, exist_ok=True)
    shutil.copy(files["dashboard.json"], prov / "dashboards" / "dashboard.json")
    _write_yaml(prov / "dashboards" / "dashboard.yml", {"apiVersion": 1, "providers": [{
        "name": "ktt", "folder": "KTT", "type": "file", "disableDeletion": False,
        "options": {"path": "/etc/grafana/provisioning/dashboards"}}]})
    _write_yaml(prov / "datasources" / "datasource.yml", {"apiVersion": 1, "datasources": [{
        "name": "Prometheus", "type": "prometheus", "access": "proxy", "uid": "prometheus",
        "url": f"http://prometheus:{PORTS['prometheus']}", "isDefault": True}]})
    _write_yaml(out / "docker-compose.yaml", compose())
    return {"monitoring": str(mon), "compose": str(out / "docker-compose.yaml")}


def alert_rules() -> dict:
    """Prometheus alerting rules (``prometheus/alerts.yaml``, checked by ``promtool check rules``)."""
    return {"groups": [{"name": "ktt-drift", "rules": [
        {"alert": "KTTDrift", "expr": "max(ktt_drift_alert) == 1",
         "labels": {"severity": "warning"},
         "annotations": {"summary": "Live texts no longer look like the reference set",
                         "description": "A drift signal flags the latest window (ktt_drift_alert_signal says "
                                        "which): a catalog change or another kind of text. Check answers "
                                        "before trusting them; retrain on the new data."}},
        {"alert": "KTTDriftCheckStale", "expr": "time() - max(ktt_monitoring_last_calculation_timestamp_seconds) > 600",
         "labels": {"severity": "warning"},
         "annotations": {"summary": "No drift calculation for 10 minutes",
                         "description": "The drift sidecar is down, or receives no rows."}},
        {"alert": "KTTRowsDropped", "expr": "sum(rate(ktt_forward_dropped_rows_total[5m])) > 0", "for": "10m",
         "labels": {"severity": "info"},
         "annotations": {"summary": "Rows for the drift sidecar are being dropped",
                         "description": "The sidecar is unreachable or too slow; drift is computed on fewer rows."}},
    ]}]}


def prometheus_config(inference: str, monitoring: str, interval: str = "10s") -> dict:
    """Scrape the inference service and the sidecar, each given as ``host:port``; the alerting rules
    (``alerts.yaml``) are read from beside the configuration file."""
    return {"global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": ["alerts.yaml"],
            "scrape_configs": [{"job_name": "inference", "static_configs": [{"targets": [inference]}]},
                               {"job_name": "monitoring", "static_configs": [{"targets": [monitoring]}]}]}


def compose() -> dict:
    return {"services": {
        "inference": {"build": "./inference", "ports": [f"{PORTS['inference']}:5000"],
                      "environment": {"EVIDENTLY_HOST": "monitoring", "EVIDENTLY_PORT": str(PORTS["monitoring"])},
                      "depends_on": ["monitoring"]},
        "monitoring": {"build": "./monitoring", "ports": [f"{PORTS['monitoring']}:{PORTS['monitoring']}"]},
        "prometheus": {"image": "prom/prometheus:v2.53.0", "ports": [f"{PORTS['prometheus']}:9090"],
                       "command": ["--config.file=/etc/prometheus/prometheus.yaml"],
                       "volumes": ["./prometheus/prometheus.yaml:/etc/prometheus/prometheus.yaml:ro",
                                   "./prometheus/alerts.yaml:/etc/prometheus/alerts.yaml:ro",
                                   "prometheus_data:/prometheus"],
                       "depends_on": ["inference", "monitoring"]},
        "grafana": {"image": "grafana/grafana:10.4.2", "ports": [f"{PORTS['grafana']}:3000"],
                    "volumes": ["./grafana/provisioning:/etc/grafana/provisioning:ro", "grafana_data:/var/lib/grafana"],
                    "depends_on": ["prometheus"]}},
        "volumes": {"prometheus_data": {}, "grafana_data": {}}}

