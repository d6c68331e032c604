"""A stand-in for ``flipserve serve`` that runs the real model (modeling.TextClassifier).

For exercising the demo and bench/rollout.py before the server lands: same
routes the local platform and the demo use (``/v2/health/ready``,
``POST /predict``, ``GET /drift``, ``GET /traffic/sample``), one forward
pass per request, KS drift over a window of recent embeddings.
Run as ``python standin_model_server.py VOLUME PORT COLOUR``.
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

import numpy as np
import torch
from scipy.stats import ks_2samp

from flipserve import artifact
from flipserve.modeling import TextClassifier


def main() -> None:
    volume, port, colour = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    torch.set_num_threads(1)
    marker = artifact.read_ready(volume)
    model = TextClassifier.load(volume / "model")
    reference = np.load(volume / "model" / "drift" / "reference.npy")
    window: deque[np.ndarray] = deque(maxlen=128)
    seen: deque[str] = deque(maxlen=1000)
    drift = {"drift": False, "p_value": None, "threshold": 0.05, "window": 0}
    model_lock, active, count_lock = threading.Lock(), [0], threading.Lock()

    def monitor() -> None:
        while True:
            time.sleep(2.0)
            if len(window) < 32:
                continue
            sample = np.stack(list(window))
            dims = reference.shape[1]
            p = min(float(ks_2samp(reference[:, i], sample[:, i]).pvalue) for i in range(dims))
            p = min(1.0, p * dims)
            drift.update(drift=p < 0.05, p_value=p, window=len(sample))

    threading.Thread(target=monitor, daemon=True).start()

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
                self._send(200, {"texts": list(seen)[-200:]})
            elif self.path.startswith("/drift"):
                self._send(200, drift)
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            with count_lock:
                active[0] += 1
            try:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                texts = body.get("texts") or [body["text"]]
                seen.extend(texts)
                with model_lock:
                    out = model.run(texts)
                window.extend(out.embeddings)
                preds = [
                    {"label": model.labels[int(row.argmax())], "score": float(row.max())}
                    for row in out.probs
                ]
                self._send(200, {"predictions": preds, "version": marker.version})
            finally:
                with count_lock:
                    active[0] -= 1

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    deadline = time.monotonic() + 10
    while active[0] and time.monotonic() < deadline:
        time.sleep(0.01)
    server.server_close()


if __name__ == "__main__":
    main()
