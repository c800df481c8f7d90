"""The BentoML 0.13.1 service every model's ``bentoml/svc_lts.py`` builds on.

``POST /predict`` takes ``{"text": "..."}``, ``{"text": ["...", ...]}`` or a list of
``{"text": ...}`` objects and answers the path as a newline-separated string (a list of them
for a list input). ``POST /predict_json`` answers the path with per-level scores. An object may
add ``"threshold": t`` (0 to 1): its paths stop at the deepest level whose confidence (the
probability the model gives that class) clears ``t``; or ``"target_precision": p``: the
threshold that reached hierarchical precision ``p`` on validation, no deeper than the levels
that reached it (default: the model's). Requests
are micro-batched, but each is parsed and preprocessed on its own first, and a batch that still
fails is re-run request by request: one client's bad input never fails another's request.
A client mistake gets HTTP 400 and a one-line reason; a server fault gets a 500 that names only
the request id (the traceback goes to the log under that id).
"""
from __future__ import annotations

import bentoml
from bentoml.adapters import JsonInput, JsonOutput
from bentoml.frameworks.onnx import OnnxModelArtifact
from bentoml.service.artifacts import BentoServiceArtifact
from bentoml.service.artifacts.common import JSONArtifact
from bentoml.types import InferenceTask

import logging
import os
from pathlib import Path

import numpy as np


from ktt.serving import metrics
from ktt.serving.requests import load_json, parse_request, parse_thresholds
from ktt.serving.runtime import Predictor, load_arrays

logger = logging.getLogger(__name__)
_REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements" / "serving.txt"
# The same pins as the serving environment; the base image exists for Python 3.11.
SERVING_ENV = {"requirements_txt_file": str(_REQUIREMENTS), "docker_base_image": "python:3.11-slim"}


class RawJsonInput(JsonInput):
    """JsonInput that hands the raw bodies to the API, which parses them (``load_json``): BentoML's
    own parsing answers a body that is not UTF-8 with its bytes and an exception name, and one
    nested too deeply with a 500 carrying a traceback. Bodies are UTF-8 JSON (RFC 8259)."""

    def from_http_request(self, req):
        return InferenceTask(http_headers=req.headers, data=req.body)

    def extract_user_func_args(self, tasks):
        return ([task.data for task in tasks],)


@bentoml.artifacts([OnnxModelArtifact("encoder", backend="onnxruntime"),
                    OnnxModelArtifact("classifier", backend="onnxruntime"), JSONArtifact("config")])
class KTTService(bentoml.BentoService):
    _predictor = None
    _ready = None  # readiness(): (HTTP status, JSON body), set by warm_up

    def __init__(self):
        super().__init__()
        if self._bento_service_bundle_path:  # loaded to serve (not being built): warm up before serving
            self.warm_up()

    def warm_up(self, sizes=(1, 8, 32, 128), repeats=2):
        """Run every path a request takes (preprocessing, graphs or arrays, decoder, answers, the
        drift forwarder's row format) before the first request, and time batches of ``sizes``
        texts: the micro-batcher's cost model starts from these times (``/readyz``), not from
        BentoML's cold guess of 2 s a request. A failure leaves the service alive but not ready."""
        import time

        from ktt.schema import monitoring_rows

        try:
            pred = self.predictor
            names = [" ".join(p) for p in pred.hierarchy.levels[-1] if p]  # every leaf's path as a title-like text
            texts = [names[i % len(names)] for i in range(max(sizes))]
            seconds = []
            for n in sizes:
                best = float("inf")
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    ans = pred.run(pred.prepare(texts[:n]))
                    pred.explain(ans)
                    best = min(best, time.perf_counter() - t0)
                seconds.append([n, round(best, 6)])
            monitoring_rows(*self._monitoring_args(ans))
            if self.artifacts.config.get("monitoring"):
                from ktt.serving.forward import forwarder

                forwarder()  # its thread and queue, nothing sent
        except Exception:
            logger.exception("warm-up failed: the service is not ready")
            self._ready = 503, {"ready": False, "reason": "warm-up failed (see the server log)"}
            return
        self._ready = 200, {"ready": True, "taxonomy": pred.taxonomy, "batch_seconds": seconds}
        logger.info("warm: batch seconds %s", seconds)

    def readiness(self):
        """``GET /readyz`` of the model server (scripts/patch_bentoml.py): 200 once warm."""
        return self._ready or (503, {"ready": False, "reason": "warming up"})

    @property
    def predictor(self) -> Predictor:
        if self._predictor is None:
            self._predictor = Predictor(self.artifacts.encoder, self.artifacts.classifier, self.artifacts.config)
        return self._predictor

    @staticmethod
    def _fail(task, endpoint, error=None):
        if error is not None:  # the client's mistake
            metrics.BAD_REQUESTS.labels(endpoint).inc()
            task.discard(http_status=400, err_msg=str(error))
        else:
            logger.exception("request %s failed", task.task_id)
            metrics.FAILED_REQUESTS.labels(endpoint).inc()
            task.discard(http_status=500, err_msg=f"prediction failed (request id {task.task_id}; see the server log)")

    def _run(self, bodies, tasks, endpoint):
        """Parse and preprocess each request alone; predict the survivors as one batch."""
        with metrics.BATCH_SECONDS.labels(endpoint).time():
            return self._answer(bodies, tasks, endpoint)

    def _answer(self, bodies, tasks, endpoint):
        ready = []  # (task, prepared texts, answer is a list, (threshold, max_depth) per text, texts)
        for body, task in zip(bodies, tasks):
            try:
                parsed = load_json(body)
                texts = parse_request(parsed)
                stops = parse_thresholds(parsed, (self.predictor.threshold, self.predictor.max_depth),
                                         self.predictor.stop_for)
                prepared = self.predictor.prepare(texts)
            except ValueError as e:
                self._fail(task, endpoint, e)
                continue
            except Exception:  # a preprocessing fault: this request alone fails
                self._fail(task, endpoint)
                continue
            ready.append((task, prepared, isinstance(parsed, list) or isinstance(parsed.get("text"), list),
                          stops, texts))
        answers = self._predict(ready, endpoint)
        return [a for a in answers if a is not None]

    def _predict(self, ready, endpoint):
        """One answer per request in ``ready`` (None for one that failed): the whole batch at once,
        or, when that fails, each request alone so that only the faulty one fails."""
        if not ready:
            return []
        try:
            stops = [s for _, _, _, ss, _ in ready for s in ss]
            ans = self.predictor.run([p for _, prepared, *_ in ready for p in prepared],
                                     [t for t, _ in stops], [k for _, k in stops])
        except Exception:
            if len(ready) == 1:
                self._fail(ready[0][0], endpoint)
                return [None]
            return [a for r in ready for a in self._predict([r], endpoint)]
        metrics.PREDICTED_ROWS.inc(len(ans.paths))
        try:
            self.after_predict(ans)
            self.review([t for *_, texts in ready for t in texts], ans, endpoint, [len(r[4]) for r in ready])
        except Exception:  # monitoring never fails a prediction
            logger.exception("after_predict failed")
        rows = ["\n".join(p) for p in ans.paths] if endpoint == "predict" else self.predictor.explain(ans)
        answers, i = [], 0
        for _, prepared, many, _, _ in ready:
            answers.append(rows[i:i + len(prepared)] if many else rows[i])
            i += len(prepared)
        return answers

    def after_predict(self, ans):
        """Forward pooled features and leaf scores to the drift sidecar, when built with monitoring."""
        if self.artifacts.config.get("monitoring"):
            from ktt.serving.forward import forwarder

            forwarder().submit(*self._monitoring_args(ans))

    def review(self, texts, ans, endpoint, sizes):
        """Answers that stopped above their path's end (below the threshold) go to review: counted,
        and, when ``KTT_REVIEW_FILE`` names a file, appended to it as JSON lines (``ktt.review``):
        at most ``KTT_REVIEW_ROWS_PER_REQUEST`` (32) of each request's (``sizes``: texts per request),
        while the file is under ``KTT_REVIEW_MAX_MB`` (100). Any client can ask for a threshold of
        0.999: without the caps, one could grow the file as fast as it can send texts."""
        pred = self.predictor
        todo = [i for i, (p, k) in enumerate(zip(ans.paths, pred.hierarchy.path_depths(ans.codes))) if len(p) < k]
        if not todo:
            return
        metrics.REVIEW_ANSWERS.labels(endpoint).inc(len(todo))
        path = os.environ.get("KTT_REVIEW_FILE")
        if not path:
            return
        per_request = int(os.environ.get("KTT_REVIEW_ROWS_PER_REQUEST", 32))
        request = np.repeat(np.arange(len(sizes)), sizes)[todo]
        kept, seen = [], np.zeros(len(sizes), np.int64)
        for i, r in zip(todo, request):
            if seen[r] < per_request:
                kept.append(i)
                seen[r] += 1
        metrics.REVIEW_DROPPED.labels("per_request").inc(len(todo) - len(kept))
        try:
            full = os.path.getsize(path) >= float(os.environ.get("KTT_REVIEW_MAX_MB", 100)) * 1e6
        except OSError:
            full = False
        if full:
            metrics.REVIEW_DROPPED.labels("file_full").inc(len(kept))
            return
        from ktt.review import append_rows, review_rows

        rows = review_rows([texts[i] for i in kept], ans.codes[kept], ans.conf[kept], pred.hierarchy,
                           [len(ans.paths[i]) for i in kept], pred.config.get("model"), pred.taxonomy)
        append_rows(path, rows)

    def _monitoring_args(self, ans):
        """What the drift sidecar is sent of a batch: features, leaf scores, each level's class and confidence."""
        from ktt.schema import level_columns

        return ans.features, self.predictor.leaf_scores(ans.features), level_columns(ans.codes, ans.conf)

    @bentoml.api(input=RawJsonInput(), output=JsonOutput(), batch=True, mb_max_batch_size=128, mb_max_latency=1000)
    def predict(self, bodies, tasks):
        return self._run(bodies, tasks, "predict")

    @bentoml.api(input=RawJsonInput(), output=JsonOutput(), batch=True, mb_max_batch_size=128, mb_max_latency=1000)
    def predict_json(self, bodies, tasks):
        return self._run(bodies, tasks, "predict_json")


class NpzArtifact(BentoServiceArtifact):
    """Named arrays, saved as ``<name>.npz`` and read back with ``allow_pickle=False``: a bundle's
    arrays are data (BentoML's ``PickleArtifact`` would run whatever code its file names)."""

    def __init__(self, name):
        super().__init__(name)
        self._arrays = None

    def _path(self, base):
        return os.path.join(base, self.name + ".npz")

    def pack(self, arrays, metadata=None):  # noqa: ARG002 (BentoML's signature)
        self._arrays = dict(arrays)
        return self

    def load(self, path):
        return self.pack(load_arrays(self._path(path)))

    def get(self):
        return self._arrays

    def save(self, dst):
        with open(self._path(dst), "wb") as f:
            np.savez(f, **self._arrays)


@bentoml.artifacts([NpzArtifact("arrays"), JSONArtifact("config")])
class TfidfService(KTTService):
    """The same API over a TF-IDF model's sparse arrays (``tfidf.npz``) instead of two graphs."""

    @property
    def predictor(self) -> Predictor:
        if self._predictor is None:
            self._predictor = Predictor(None, self.artifacts.arrays, self.artifacts.config)
        return self._predictor
