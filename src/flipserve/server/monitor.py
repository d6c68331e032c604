"""Online drift monitoring: a bounded window of live embeddings, tested periodically.

Requests only append their embeddings (a deque append, no test on the
request path). A background task tests the window against the model's
reference sample every ``interval_s`` on a worker thread, and keeps the last
verdict for ``GET /drift`` and the Prometheus gauges.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import Any

import numpy as np

from flipserve.drift import Detector, DriftResult, Embeddings
from flipserve.errors import ModelNotReadyError
from flipserve.server import telemetry

log = logging.getLogger(__name__)


class DriftMonitor:
    """Keeps the last ``window`` embeddings and the last test's result."""

    def __init__(self, window: int, min_samples: int, interval_s: float, threshold: float) -> None:
        self._window: deque[np.ndarray[Any, Any]] = deque(maxlen=max(2, window))
        self._lock = threading.Lock()
        self._test_lock = threading.Lock()  # a detector may not be thread-safe (alibi's is torch)
        self.min_samples = max(2, min_samples)
        self.interval_s = interval_s
        self.threshold = threshold
        self.detector: Detector | None = None
        self.last: DriftResult | None = None
        self.seen = 0
        self.tested_seen = 0
        self.tested_at: float | None = None

    def observe(self, embeddings: Embeddings) -> None:
        with self._lock:
            self._window.extend(embeddings)
            self.seen += len(embeddings)
        telemetry.DRIFT_WINDOW.set(len(self._window))

    def _snapshot(self) -> tuple[Embeddings | None, int]:
        with self._lock:
            if len(self._window) < self.min_samples:
                return None, self.seen
            return np.stack(self._window), self.seen

    def test_now(self) -> DriftResult | None:
        """Test the current window (blocking); None when there is no detector or too little data."""
        if self.detector is None:
            return None
        window, seen = self._snapshot()
        if window is None:
            return None
        with self._test_lock:
            result = self.detector.test(window)
        self.last, self.tested_seen, self.tested_at = result, seen, time.time()
        telemetry.DRIFT_P_VALUE.set(result.p_value)
        telemetry.DRIFT.set(int(result.drift))
        return result

    def test_sample(self, sample: Embeddings) -> DriftResult:
        """Test an explicit sample (not the live window) against the reference; blocking."""
        if self.detector is None:
            raise ModelNotReadyError("this model has no drift reference (drift/reference.npy)")
        with self._test_lock:
            return self.detector.test(sample)

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if self.seen == self.tested_seen:
                continue  # nothing new since the last test
            try:
                await asyncio.to_thread(self.test_now)
            except Exception:  # the monitor must outlive one failed test
                log.exception("online drift test failed")

    def status(self) -> dict[str, Any]:
        last = self.last
        return {
            "drift": bool(last.drift) if last else False,
            "p_value": last.p_value if last else None,
            "threshold": self.threshold,
            "window": len(self._window),
            "backend": self.detector.backend if self.detector else None,
            "tested_samples": self.tested_seen,
            "seen_samples": self.seen,
            "tested_at": self.tested_at,
        }
