"""A stand-in for ``flipserve serve`` in the production-record tests: same routes, no torch.

Used only by test_production_record.py (see standin_support.py for why).

Only the model is faked (a keyword rule read from ``model/rule.json``, so a
test can publish a better or a worse "model"); it serves a volume only when
its READY marker checks out, like the real server. Run as
``python standin_server.py VOLUME PORT COLOUR``.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from flipserve import artifact


def main() -> None:
    volume, port, colour = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    marker = artifact.read_ready(volume)  # refuses a half-copied volume, like the real server
    rule = json.loads((volume / "model" / "rule.json").read_text())
    delay = float(rule.get("delay_s", 0.0))
    seen: deque[str] = deque(maxlen=1000)
    active, lock = [0], threading.Lock()
    time.sleep(float(rule.get("startup_s", 0.0)))

    def label(text: str) -> str:
        for word, lab in rule["keywords"].items():
            if word in text:
                return str(lab)
        return str(rule["default"])

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, code: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Model-Version", marker.version)
            self.send_header("X-Model-Colour", colour)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.startswith("/v2/health/ready"):
                self._send(200, {"ready": True})
            elif self.path.startswith("/traffic/sample"):
                self._send(200, {"texts": list(seen)})
            elif self.path.startswith("/drift"):
                self._send(200, {"drift": False, "p_value": 0.5, "threshold": 0.05, "window": 0})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            with lock:
                active[0] += 1
            try:
                self._predict()
            finally:
                with lock:
                    active[0] -= 1

        def _predict(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            texts = body.get("texts") or [body["text"]]
            seen.extend(texts)
            if delay:
                time.sleep(delay)
            preds = [{"label": label(t)} for t in texts]
            self._send(200, {"predictions": preds, "version": marker.version})

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True

    def stop(*_: object) -> None:
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    server.serve_forever()
    # Graceful: no new connections; let in-flight requests finish, then leave
    # (idle keep-alive connections would otherwise hold the process forever).
    deadline = time.monotonic() + 10
    while active[0] and time.monotonic() < deadline:
        time.sleep(0.01)
    server.server_close()


if __name__ == "__main__":
    main()
