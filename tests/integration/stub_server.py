"""A stand-in for the model server's gate endpoints, on 127.0.0.1 (test double).

KWOK fakes the pods of the local control plane, so nothing in it serves HTTP;
the controller's gates reach servers through ``FLIPSERVE_SERVICE_URLS``. Until
the real ``flipserve serve`` can be started here with a trained artifact, this
is the thinnest server that answers the endpoints flipserve/probe.py calls (the
real server's, plus ``POST /drift``) with numbers a test sets: which digest it serves, how well it
predicts, the drift p-value, the live traffic and error counters.

Predictions: an eval text is ``"<label> <n>"``; the stub answers the right
label for the first ``quality`` fraction of a request's texts and ``"wrong"``
for the rest, so ``quality`` is the candidate's accuracy.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Model:
    version: str
    digest: str
    quality: float = 0.8
    drift_p_value: float = 0.5
    errors: int = 0
    requests: int = 100
    traffic: list[str] = field(default_factory=lambda: [f"live text {i}" for i in range(50)])


@dataclass
class Load:
    """Traffic a pod serves between two readings of its ``/metrics`` (and how much of it fails)."""

    requests: int
    errors: int = 0


class StubServer:
    """One stub server; ``model`` is what it serves and can be swapped at any time.

    It also stands in for the pods behind it (``FLIPSERVE_POD_URL`` pointing at
    ``/pods/<name>``): each pod starts from ``model``'s counters the first time it
    is read and, while ``load`` is set, has served ``load`` more by every later
    reading. ``GET /metrics`` (the Service) answers with one of those pods, in turn,
    as a Service does.
    """

    def __init__(self, model: Model, name: str = "flipserve") -> None:
        self.model, self.name = model, name
        self.calls: list[str] = []
        self.pods: dict[str, Model] = {}
        self.load: Load | None = None
        self._lock = threading.Lock()
        self._turn = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, body: Any, status: int = 200, text: bool = False) -> None:
                data = body.encode() if text else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if text else "application/json")
                self.send_header("X-Model-Version", stub.model.version)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                stub.calls.append(f"GET {self.path}")
                path = self.path.split("?", 1)[0]
                m = stub.model
                if path == "/v2/health/ready":
                    self._send({"ready": True})
                elif path == f"/v2/models/{stub.name}":
                    params = {"digest": m.digest, "version": m.version}
                    self._send({"name": stub.name, "versions": [m.version], "parameters": params})
                elif path == "/traffic/sample":
                    self._send({"texts": m.traffic})
                elif path == "/metrics":
                    self._send(_metrics(stub.service_pick()), text=True)
                elif path.startswith("/pods/") and path.endswith("/metrics"):
                    self._send(_metrics(stub.pod_read(path.split("/")[2])), text=True)
                else:
                    self._send({"error": "not found"}, 404)

            def do_POST(self) -> None:
                stub.calls.append(f"POST {self.path}")
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path == "/predict":
                    self._send({"predictions": _predict(body["texts"], stub.model.quality)})
                elif self.path == "/drift":
                    self._send({"p_value": stub.model.drift_p_value})
                else:
                    self._send({"error": "not found"}, 404)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def pod_read(self, pod: str) -> Model:
        """A pod's counters at this reading (see the class docstring)."""
        with self._lock:
            if pod not in self.pods:
                self.pods[pod] = replace(self.model)
            elif self.load is not None:
                m = self.pods[pod]
                m.requests, m.errors = m.requests + self.load.requests, m.errors + self.load.errors
            return replace(self.pods[pod])

    def service_pick(self) -> Model:
        """What ``/metrics`` through the Service reads: one pod's cumulative counters."""
        with self._lock:
            if not self.pods:
                return self.model
            self._turn += 1
            pod = sorted(self.pods)[self._turn % len(self.pods)]
        return self.pod_read(pod)

    def __enter__(self) -> StubServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _predict(texts: list[str], quality: float) -> list[dict[str, str]]:
    right = round(len(texts) * quality)
    return [{"label": t.split()[0] if i < right else "wrong"} for i, t in enumerate(texts)]


def _metrics(m: Model) -> str:
    return "\n".join(
        [
            "# TYPE flipserve_requests_total counter",
            f'flipserve_requests_total{{endpoint="/predict",status="200"}} {m.requests - m.errors}',
            f'flipserve_requests_total{{endpoint="/predict",status="500"}} {m.errors}',
            'flipserve_request_latency_seconds_bucket{le="0.05"} ' + str(m.requests),
            'flipserve_request_latency_seconds_bucket{le="+Inf"} ' + str(m.requests),
            "",
        ]
    )


def eval_set(n: int = 40) -> str:
    """A held-out set the stub can score: JSONL of ``{"text": "<label> i", "label"}``."""
    rows = [{"text": f"{lab} {i}", "label": lab} for i in range(n) for lab in ("pos", "neg")]
    return "\n".join(json.dumps(r) for r in rows) + "\n"
