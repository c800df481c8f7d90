"""Prometheus metrics of the inference service, beside BentoML's own ``BENTOML_<Service>_*``.

Under ``bentoml serve-gunicorn`` BentoML sets ``prometheus_multiproc_dir`` before this module
is imported, so every worker's counts add up on ``/metrics``. Labelled series are created at
import so that dashboards and alerts see 0, not "no data", before the first event.
"""
from prometheus_client import Counter, Histogram

PREDICTED_ROWS = Counter("ktt_predicted_rows", "Texts classified")
BAD_REQUESTS = Counter("ktt_bad_requests", "Requests refused with HTTP 400", ["endpoint"])
FAILED_REQUESTS = Counter("ktt_failed_requests", "Requests answered HTTP 500 (a server fault)", ["endpoint"])
FORWARDED_ROWS = Counter("ktt_forwarded_rows", "Rows delivered to the drift sidecar")
REVIEW_ANSWERS = Counter("ktt_review_answers", "Answers stopped above their path's end (below the threshold): "
                         "routed to review", ["endpoint"])
BATCH_SECONDS = Histogram("ktt_batch_seconds", "Seconds KTT's code spent on a micro-batch in the model server "
                          "(parse, preprocess, predict, answer): the rest of a request's time is BentoML's",
                          ["endpoint"], buckets=(.0005, .001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5))
DROPPED_ROWS = Counter("ktt_forward_dropped_rows", "Rows not delivered to the drift sidecar", ["reason"])
REVIEW_DROPPED = Counter("ktt_review_dropped_rows", "Answers for review not written to KTT_REVIEW_FILE: over the "
                         "rows kept per request, or the file at its size cap", ["reason"])

for _endpoint in ("predict", "predict_json"):
    BAD_REQUESTS.labels(_endpoint)
    FAILED_REQUESTS.labels(_endpoint)
    REVIEW_ANSWERS.labels(_endpoint)
    BATCH_SECONDS.labels(_endpoint)
for _reason in ("queue_full", "unreachable", "refused"):
    DROPPED_ROWS.labels(_reason)
for _reason in ("per_request", "file_full"):
    REVIEW_DROPPED.labels(_reason)
