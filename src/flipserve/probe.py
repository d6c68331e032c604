"""What the controller asks running model servers over HTTP (the gates' measurements).

In a cluster the URLs are the API and preview Services; in the integration
tests (KWOK pods serve nothing) they are overridden with servers on
127.0.0.1 through ``FLIPSERVE_SERVICE_URLS``. The endpoints used, the
contract with ``server/``:

- ``GET /v2/health/ready`` — 200 once the volume's model is verified and loaded;
- ``GET /v2/models/{name}`` — metadata; ``parameters.digest`` and
  ``parameters.version`` name what is served;
- ``POST /predict`` ``{"texts": [...]}`` — one prediction per text, at most
  ``FLIPSERVE_MAX_ITEMS_PER_REQUEST`` texts a request (the held-out set goes in chunks);
- ``GET /traffic/sample?n=N`` (bearer token) — recent live request texts;
- ``GET /metrics`` — Prometheus text: ``flipserve_requests_total{endpoint,status}``
  (5xx are errors), the ``flipserve_request_latency_seconds`` histogram, the
  ``flipserve_drift_p_value`` and ``flipserve_drift`` gauges. The counters are
  cumulative since the server started: the observe window reads every pod of
  the new colour at its start and again later (:func:`observed_window`);
- ``POST /drift`` ``{"texts": [...]}`` → ``{"p_value", ...}``: the drift gate's test
  of live texts against the *candidate's* reference, run by the preview server that
  holds it (``GET /drift`` is the online test of a server's own traffic).

:class:`HttpProbe` also is the Kubernetes backend's ``GateRunner`` (score, drift).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from flipserve.errors import TemporaryError
from flipserve.promotion import gates as g
from flipserve.promotion.status import Colour, ObservedMetrics, ServerCounters
from flipserve.settings import Settings

_SCRAPE_TIMEOUT = 5.0
"""Seconds a server may take to answer ``GET /metrics`` (a slow pod is skipped, not waited on)."""


@dataclass(frozen=True)
class Served:
    """What a server says it serves."""

    version: str | None
    digest: str | None


class HttpProbe:
    """HTTP client for the flipserve model server's gate endpoints."""

    def __init__(self, settings: Settings, timeout: float = 30.0) -> None:
        self.model_name = settings.model_name
        self.eval_set = settings.heldout_path
        self.batch = settings.max_items_per_request  # the servers refuse more per request
        token = settings.api_token.get_secret_value() if settings.api_token else None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(timeout=timeout, headers=headers)

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self.http.request(method, url, **kwargs)
            resp.raise_for_status()
        except httpx.HTTPError as e:
            raise TemporaryError(f"{method} {url}: {e}", delay=3.0) from e
        return resp

    def served(self, url: str) -> Served:
        self._call("GET", f"{url}/v2/health/ready")
        resp = self._call("GET", f"{url}/v2/models/{self.model_name}")
        body = resp.json() if resp.content else {}
        params = body.get("parameters") or {}
        versions = body.get("versions") or [None]
        return Served(version=params.get("version") or versions[0], digest=params.get("digest"))

    # --- GateRunner ---------------------------------------------------------

    def score(self, preview_url: str) -> dict[str, float]:
        if self.eval_set is None:
            raise TemporaryError("no held-out set configured (FLIPSERVE_HELDOUT_PATH)", 30.0)
        texts, labels = read_eval_set(self.eval_set)
        predictions: list[str] = []
        for i in range(0, len(texts), self.batch):
            chunk = {"texts": texts[i : i + self.batch]}
            body = self._call("POST", f"{preview_url}/predict", json=chunk).json()
            predictions.extend(g.labels_from_response(body))
        return g.classification_scores(labels, predictions)

    def drift(self, colour: Colour, preview_url: str, texts: list[str]) -> float:
        body = self._call("POST", f"{preview_url}/drift", json={"texts": texts}).json()
        return float(body["p_value"])

    # --- observe ------------------------------------------------------------

    def traffic_sample(self, api_url: str, n: int) -> list[str]:
        body = self._call("GET", f"{api_url}/traffic/sample", params={"n": n}).json()
        return [str(t) for t in body.get("texts", [])][:n]

    def server_metrics(self, url: str) -> ServerMetrics:
        """One server's cumulative counters and drift gauges now (``GET /metrics``)."""
        return parse_metrics(self._call("GET", f"{url}/metrics", timeout=_SCRAPE_TIMEOUT).text)


def read_eval_set(path: Path) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            texts.append(str(row["text"]))
            labels.append(str(row["label"]))
    return texts, labels


@dataclass(frozen=True)
class ServerMetrics:
    """What one server's ``GET /metrics`` says: counters (for windows) and drift gauges."""

    counters: ServerCounters
    drift_p_value: float | None = None
    drift: bool = False


def parse_metrics(text: str) -> ServerMetrics:
    """Requests, 5xx errors, latency buckets and drift out of Prometheus exposition text.

    Every labelled series is summed: all endpoints and statuses, and, per upper
    bound, the latency histogram of each.
    """
    requests = errors = 0.0
    drift_p: float | None = None
    drift = False
    buckets: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        metric = name.split("{", 1)[0]
        if metric == "flipserve_requests_total":
            requests += float(value)
            if 'status="5' in name:
                errors += float(value)
        elif metric == "flipserve_request_latency_seconds_bucket":
            le = name.split('le="', 1)[1].split('"', 1)[0]
            buckets[le] = buckets.get(le, 0.0) + float(value)
        elif metric == "flipserve_drift_p_value":
            drift_p = float(value) if drift_p is None else min(drift_p, float(value))
        elif metric == "flipserve_drift":
            drift = drift or float(value) > 0
    counters = ServerCounters(requests=requests, errors=errors, latency_buckets=buckets)
    return ServerMetrics(counters=counters, drift_p_value=drift_p, drift=drift)


def observed_window(
    baseline: Mapping[str, ServerCounters], now: Mapping[str, ServerMetrics]
) -> ObservedMetrics:
    """The window from ``baseline`` to ``now``, summed over servers (keyed alike).

    A server absent from the baseline (started, or restarted, since) counts from
    zero; one absent from ``now`` (gone) is not counted. Drift is the servers'
    gauges now: the lowest p-value, and whether any of them flags drift.
    """
    requests = errors = 0.0
    buckets: dict[str, float] = {}
    for key, metrics in now.items():
        delta = metrics.counters.since(baseline.get(key))
        requests, errors = requests + delta.requests, errors + delta.errors
        for le, count in delta.latency_buckets.items():
            buckets[le] = buckets.get(le, 0.0) + count
    p_values = [m.drift_p_value for m in now.values() if m.drift_p_value is not None]
    return ObservedMetrics(
        requests=round(requests),
        errors=round(errors),
        p99_latency_ms=_p99_ms(buckets),
        drift_p_value=min(p_values) if p_values else None,
        drift=any(m.drift for m in now.values()),
    )


def observed_from_prometheus(text: str) -> ObservedMetrics:
    """One server's counters since it started (a window from zero)."""
    return observed_window({}, {"": parse_metrics(text)})


def _p99_ms(buckets: dict[str, float]) -> float | None:
    bounds = {math.inf if le == "+Inf" else float(le): count for le, count in buckets.items()}
    total = bounds.get(math.inf, 0.0)
    if total <= 0:
        return None
    for bound in sorted(bounds):
        if bounds[bound] >= 0.99 * total:
            return None if math.isinf(bound) else bound * 1000.0
    return None
