"""Rows from the inference service to the drift sidecar, never in the way of a prediction.

A bounded queue and one background thread: ``submit`` only enqueues (dropping, and counting,
when the queue is full); the thread posts with a short timeout and counts rows it could not
deliver. The sidecar is at ``EVIDENTLY_HOST``:``EVIDENTLY_PORT`` (default localhost:5001).
"""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
import urllib.error
import urllib.request

import numpy as np
from ktt.serving.metrics import DROPPED_ROWS, FORWARDED_ROWS
from ktt.schema import monitoring_rows

log = logging.getLogger(__name__)
_lock = threading.Lock()
_instance = None


class Forwarder:
    def __init__(self, url: str, maxsize: int = 256, timeout: float = 0.5):
        self.url, self.timeout = url, timeout
        self.queue: queue.Queue = queue.Queue(maxsize=maxsize)
        threading.Thread(target=self._run, daemon=True, name="ktt-forwarder").start()

    def submit(self, features: np.ndarray, leaf_scores: np.ndarray, levels: np.ndarray | None = None) -> None:
        """Queue the rows of one batch (``ktt.schema.monitoring_rows``); never waits."""
        rows = monitoring_rows(features, leaf_scores, levels)
        try:
            self.queue.put_nowait(rows)
        except queue.Full:
            DROPPED_ROWS.labels("queue_full").inc(len(rows))

    def _run(self) -> None:
        while True:
            rows = self.queue.get()
            body = json.dumps({"data": rows.round(6).tolist()}).encode()
            req = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
            try:
                urllib.request.urlopen(req, timeout=self.timeout).close()
                FORWARDED_ROWS.inc(len(rows))
            except (urllib.error.URLError, OSError) as e:
                DROPPED_ROWS.labels("unreachable" if not isinstance(e, urllib.error.HTTPError) else "refused").inc(len(rows))


def forwarder() -> Forwarder:
    global _instance
    with _lock:
        if _instance is None:
            host, port = os.environ.get("EVIDENTLY_HOST", "localhost"), os.environ.get("EVIDENTLY_PORT", "5001")
            _instance = Forwarder(f"http://{host}:{port}/iterate")
        return _instance
