"""``ktt serve``: the monitored service of a build tree, natively, for machines without Docker.

Starts the drift sidecar (this environment: Evidently), the inference service
(``bentoml serve-gunicorn`` in the serving environment, so BentoML's request metrics are
exported) and, when a ``prometheus`` binary is installed, Prometheus scraping both. Logs go to
``<build>/logs/``. Ctrl-C (or SIGTERM) stops all of them; so does any one of them dying.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .. import threads
from ..errors import NotFound, Unavailable
from .build import PORTS, prometheus_config

log = logging.getLogger(__name__)


@dataclass
class Stack:
    build: Path
    inference_port: int = PORTS["inference"]
    monitoring_port: int = PORTS["monitoring"]
    prometheus_port: int = PORTS["prometheus"]
    workers: int = 1
    prometheus: str | None = "auto"  # "auto": the binary on PATH if any; None: never
    drift_period: float | None = None
    host: str = "127.0.0.1"
    procs: dict = field(default_factory=dict)

    def __post_init__(self):
        self.build = Path(self.build)
        for part in ("inference", "monitoring/evidently.yaml", "monitoring/monitoring.py"):
            if not (self.build / part).exists():
                raise NotFound(f"{self.build / part} is missing: build the tree with "
                                        f"`ktt export ... --monitoring`")
        if self.prometheus == "auto":
            self.prometheus = shutil.which("prometheus")
        self.logs = self.build / "logs"

    def urls(self) -> dict[str, str]:
        urls = {"inference": f"http://{self.host}:{self.inference_port}",
                "monitoring": f"http://{self.host}:{self.monitoring_port}"}
        if self.prometheus:
            urls["prometheus"] = f"http://{self.host}:{self.prometheus_port}"
        return urls

    def _spawn(self, name: str, cmd: list[str], env: dict | None = None, cwd: Path | None = None):
        self.logs.mkdir(exist_ok=True)
        out = open(self.logs / f"{name}.log", "w")
        # a session of its own: Ctrl-C reaches us only, and we stop each group in order
        self.procs[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                            env={**os.environ, **(env or {})}, start_new_session=True)
        out.close()

    def start(self, timeout: float = 120) -> dict[str, str]:
        from ..serving import serving_python

        mon = self.build / "monitoring"
        sidecar = [sys.executable, "monitoring.py", "evidently.yaml", "--host", self.host,
                   "--port", str(self.monitoring_port)]
        if self.drift_period:
            sidecar += ["--period", str(self.drift_period)]
        self._spawn("monitoring", sidecar, cwd=mon)
        bentoml = Path(serving_python()).parent / "bentoml"
        self._spawn("inference", [str(bentoml), "serve-gunicorn", str(self.build / "inference"),
                                  "--port", str(self.inference_port),  # it binds all interfaces
                                  "--workers", str(self.workers)],
                    env={"EVIDENTLY_HOST": self.host, "EVIDENTLY_PORT": str(self.monitoring_port),
                         threads.ENV: str(threads.share(self.workers)),
                         "BENTOML_DO_NOT_TRACK": "true", "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"})
        if self.prometheus:
            cfg = prometheus_config(f"{self.host}:{self.inference_port}", f"{self.host}:{self.monitoring_port}",
                                    interval="5s")
            path = self.build / "prometheus" / "prometheus.native.yaml"
            path.parent.mkdir(exist_ok=True)
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            self._tsdb = tempfile.mkdtemp(prefix="ktt-prometheus-")
            self._spawn("prometheus", [self.prometheus, f"--config.file={path}", f"--storage.tsdb.path={self._tsdb}",
                                       f"--web.listen-address={self.host}:{self.prometheus_port}"])
        health = {"inference": "/readyz", "monitoring": "/healthz", "prometheus": "/-/ready"}  # readyz: warm
        deadline = time.monotonic() + timeout
        for name, url in self.urls().items():
            while not _ok(url + health[name]):
                self.check()
                if time.monotonic() > deadline:
                    self.stop()
                    raise Unavailable(f"{name} did not answer on {url} within {timeout:.0f}s; "
                                       f"see {self.logs / name}.log")
                time.sleep(0.5)
        return self.urls()

    def check(self) -> None:
        """Raise (after stopping everything) if a process has exited."""
        for name, p in self.procs.items():
            if p.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text()[-2000:]
                self.stop()
                raise RuntimeError(f"{name} exited with code {p.returncode}:\n{tail}")

    def stop(self, grace: float = 15) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in self.procs.values():
            try:
                p.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()
        if getattr(self, "_tsdb", None):
            shutil.rmtree(self._tsdb, ignore_errors=True)

    def run_forever(self) -> None:
        """Block until Ctrl-C/SIGTERM or a process dies; always stop everything."""
        # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python keeps it so
        signal.signal(signal.SIGINT, _interrupt)
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            while True:
                self.check()
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()


def _interrupt(*_):
    raise KeyboardInterrupt


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False
