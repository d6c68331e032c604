"""The server's Prometheus metrics, exported on ``GET /metrics``.

They live in prometheus-client's default registry, which KServe's own
``/metrics`` route exposes next to KServe's histograms. Endpoint labels are
route templates (``/v1/models/{model_name}:predict``), never raw paths, so
the label set stays bounded whatever clients send.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "flipserve_requests_total", "HTTP requests by endpoint and status", ["endpoint", "status"]
)
LATENCY = Histogram(
    "flipserve_request_latency_seconds",
    "HTTP request latency by endpoint and status",
    ["endpoint", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
BATCH_SIZE = Histogram(
    "flipserve_batch_size",
    "Texts per forward pass",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
MODEL_INFO = Gauge(
    "flipserve_model_info",
    "The served model: 1 for the loaded version, colour and digest",
    ["version", "colour", "digest"],
)
READY = Gauge("flipserve_ready", "1 when the model is loaded from a READY volume")
DRIFT_P_VALUE = Gauge("flipserve_drift_p_value", "p-value of the last online drift test")
DRIFT = Gauge("flipserve_drift", "1 when the last online drift test flagged drift")
DRIFT_WINDOW = Gauge("flipserve_drift_window", "Embeddings in the online drift window")


def set_model(version: str, colour: str, digest: str) -> None:
    MODEL_INFO.clear()
    MODEL_INFO.labels(version=version, colour=colour, digest=digest).set(1)
