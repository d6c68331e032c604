"""A small closed-loop load generator: N workers posting to ``/predict`` until stopped.

The demo and bench/rollout.py run it against the API while a promotion
switches colours, and count what users would have seen: every request that
did not come back with a 2xx is a failure. Each answer's ``X-Model-Version``
header is recorded so the switch is visible in the timeline.

The workers are coroutines on one event loop in a background thread, with
an aiohttp session: on a 2-core machine a thread per worker (or httpx's
async pool, which tops out near 90 requests/s) spent more CPU generating
load than the server spent answering it.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp


@dataclass
class LoadStats:
    requests: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    # (seconds since start, version) sampled on each answer, for the report's timeline
    versions: list[tuple[float, str]] = field(default_factory=list)
    # seconds since start at which each failed request ended
    failure_times: list[float] = field(default_factory=list)

    def failing_seconds(self) -> float:
        """From the first failed request to the last: how long users saw errors (0: none)."""
        if not self.failure_times:
            return 0.0
        return max(self.failure_times) - min(self.failure_times)

    def percentile(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        values = sorted(self.latencies_ms)
        return values[min(len(values) - 1, int(q * len(values)))]


class LoadGenerator:
    """Workers send the texts (one per request, shuffled, cycling) to ``url`` until :meth:`stop`."""

    def __init__(
        self,
        url: str,
        texts: Sequence[str],
        workers: int = 4,
        timeout: float = 30.0,
        seed: int = 0,
    ) -> None:
        self.url = url.rstrip("/") + "/predict"
        self.texts = list(texts)
        self.workers = workers
        self.timeout = timeout
        self.stats = LoadStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rng = random.Random(seed)
        self._queue: list[str] = []
        self._start = 0.0

    def start(self) -> LoadGenerator:
        self._start = time.monotonic()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._run()), name="loadgen", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> LoadStats:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.stats

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _run(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.workers)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(*(self._work(session) for _ in range(self.workers)))

    async def _work(self, session: aiohttp.ClientSession) -> None:
        headers = {"content-type": "application/json"}
        while not self._stop.is_set():
            body = json.dumps({"texts": [self._next_text()]})
            start = time.monotonic()
            error = None
            version = ""
            try:
                async with session.post(self.url, data=body, headers=headers) as r:
                    await r.read()
                    version = r.headers.get("X-Model-Version", "")
                    if r.status >= 300:
                        error = f"HTTP {r.status}"
            except (aiohttp.ClientError, TimeoutError) as e:
                error = type(e).__name__
            self._record(start, error, version)

    def _next_text(self) -> str:
        """Texts in a shuffled cycle, so a window of recent traffic holds few repeats."""
        with self._lock:
            if not self._queue:
                self._queue = list(self.texts)
                self._rng.shuffle(self._queue)
            return self._queue.pop()

    def _record(self, start: float, error: str | None, version: str) -> None:
        now = time.monotonic()
        with self._lock:
            self.stats.requests += 1
            self.stats.latencies_ms.append((now - start) * 1000)
            if error is not None:
                self.stats.failed += 1
                self.stats.errors[error] += 1
                self.stats.failure_times.append(now - self._start)
            if version and (not self.stats.versions or self.stats.versions[-1][1] != version):
                self.stats.versions.append((now - self._start, version))
