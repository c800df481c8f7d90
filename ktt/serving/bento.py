"""The BentoML 0.13.1 service every model's ``bentoml/svc_lts.py`` builds on.

``POST /predict`` takes ``{"text": "..."}``, ``{"text": ["...", ...]}`` or a list of
``{"text": ...}`` objects and answers the path as a newline-separated string (a list of them
for a list input). ``POST /predict_json`` answers the path with per-level scores. Requests
are micro-batched. Bad requests get HTTP 400 and a message; the service never crashes on input.
"""
from __future__ import annotations

import bentoml
from bentoml.adapters import JsonInput, JsonOutput
from bentoml.frameworks.onnx import OnnxModelArtifact
from bentoml.service.artifacts.common import JSONArtifact

import logging
from pathlib import Path

from ktt.serving import metrics
from ktt.serving.runtime import Predictor, parse_request

logger = logging.getLogger(__name__)
_REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements" / "serving.txt"
# The same pins as the serving environment; the base image exists for Python 3.11.
SERVING_ENV = {"requirements_txt_file": str(_REQUIREMENTS), "docker_base_image": "python:3.11-slim"}


@bentoml.artifacts([OnnxModelArtifact("encoder", backend="onnxruntime"),
                    OnnxModelArtifact("classifier", backend="onnxruntime"), JSONArtifact("config")])
class KTTService(bentoml.BentoService):
    _predictor = None

    @property
    def predictor(self) -> Predictor:
        if self._predictor is None:
            self._predictor = Predictor(self.artifacts.encoder, self.artifacts.classifier, self.artifacts.config)
        return self._predictor

    def _run(self, bodies, tasks, endpoint):
        """Parse every request (discarding bad ones with 400), run all texts as one batch."""
        per_task, texts = [], []
        for body, task in zip(bodies, tasks):
            try:
                got = parse_request(body)
            except ValueError as e:
                task.discard(http_status=400, err_msg=str(e))
                metrics.BAD_REQUESTS.labels(endpoint).inc()
                continue
            per_task.append((len(texts), len(got), isinstance(body, list) or isinstance(body.get("text"), list)))
            texts += got
        if not texts:
            return [], per_task, None
        try:
            paths, codes, scores, feats = self.predictor.predict(texts)
        except Exception as e:  # never a crash: the batch fails with a 500 that says why
            logger.exception("prediction failed")
            metrics.FAILED_BATCHES.inc()
            for task in tasks:
                if not task.is_discarded:
                    task.discard(http_status=500, err_msg=f"prediction failed: {type(e).__name__}: {e}")
            return [], [], None
        metrics.PREDICTED_ROWS.inc(len(texts))
        self.after_predict(texts, codes, scores, feats)
        return (paths, codes, scores), per_task, texts

    def after_predict(self, texts, codes, scores, features):
        """Forward pooled features and leaf scores to the drift sidecar, when built with monitoring."""
        if self.artifacts.config.get("monitoring"):
            from ktt.serving.forward import forwarder

            h = self.predictor.hierarchy
            forwarder().submit(features, scores[:, h.offsets[-1]:])

    @staticmethod
    def _regroup(values, per_task):
        return [values[i:i + n] if many else values[i] for i, n, many in per_task]

    @bentoml.api(input=JsonInput(), output=JsonOutput(), batch=True, mb_max_batch_size=128, mb_max_latency=1000)
    def predict(self, parsed_json_list, tasks):
        result, per_task, _ = self._run(parsed_json_list, tasks, "predict")
        if not per_task:
            return []
        return self._regroup(["\n".join(p) for p in result[0]], per_task)

    @bentoml.api(input=JsonInput(), output=JsonOutput(), batch=True, mb_max_batch_size=128, mb_max_latency=1000)
    def predict_json(self, parsed_json_list, tasks):
        result, per_task, _ = self._run(parsed_json_list, tasks, "predict_json")
        if not per_task:
            return []
        return self._regroup(self.predictor.explain(result[1], result[2]), per_task)
