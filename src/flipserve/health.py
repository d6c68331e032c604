"""The controller's health endpoint: readiness and liveness for its pod's probes.

``GET /readyz`` answers 200 once the controller has talked to the API server
successfully, holding the Lease (leader) or reading it held by another
(standby), and 503 otherwise: still starting, or its last attempt failed
(a refused token, a missing Role rule, an unreachable API server). The body
is one line saying which, so ``kubectl describe pod`` shows the reason.

``GET /healthz`` answers 200 while the lease loop keeps making attempts
(whatever their outcome) and 503 once it has been silent for ``stale_after_s``:
a hung process is restarted, one that cannot authenticate is not (a restart
would not help; it stays unready instead).
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Health:
    """The outcome of the controller's last attempt to talk to the API server (thread-safe)."""

    def __init__(self, stale_after_s: float) -> None:
        self.stale_after_s = stale_after_s
        self._lock = threading.Lock()
        self._ready = False
        self._detail = "starting: the API server has not answered yet"
        self._at = time.monotonic()

    def report(self, ready: bool, detail: str) -> bool:
        """Record an attempt's outcome; True when it differs from the previous one."""
        with self._lock:
            changed = (ready, detail) != (self._ready, self._detail)
            self._ready, self._detail, self._at = ready, detail, time.monotonic()
            return changed

    def readiness(self) -> tuple[bool, str]:
        with self._lock:
            return self._ready, self._detail

    def liveness(self) -> tuple[bool, str]:
        with self._lock:
            silent = time.monotonic() - self._at
        if silent > self.stale_after_s:
            return False, f"the lease loop has made no attempt for {silent:.0f}s"
        return True, "alive"


class HealthServer:
    """``/readyz`` and ``/healthz`` over HTTP, on a daemon thread."""

    def __init__(self, health: Health, host: str, port: int) -> None:
        routes = {"/readyz": health.readiness, "/healthz": health.liveness}

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass  # the kubelet probes every few seconds

            def do_GET(self) -> None:
                check = routes.get(self.path.split("?", 1)[0])
                ok, detail = check() if check else (False, "not found")
                status = 200 if ok else (503 if check else 404)
                body = (detail + "\n").encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port: int = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="health", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
