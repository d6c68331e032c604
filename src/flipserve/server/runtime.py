"""Run the model server: KServe's ModelServer, on our host and port, stopping gracefully.

``kserve.ModelServer.start`` refuses to start without a ready model and
binds 0.0.0.0; a blue/green pod must start before its volume is READY (its
readiness probe says when), and tests must bind 127.0.0.1. So this module
registers the model itself and runs KServe's REST server with the host from
settings, next to three background tasks: the batcher, the volume watcher
and the drift monitor. On SIGTERM uvicorn stops accepting connections and
lets in-flight requests finish (``shutdown_grace_s``); then the background
tasks are cancelled and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
from pathlib import Path
from typing import Any

import kserve
import uvicorn
from kserve.protocol.rest.server import RESTServer

from flipserve.server.app import install, not_supported_handler
from flipserve.server.model import FlipserveModel
from flipserve.settings import Settings

log = logging.getLogger(__name__)


def cpu_limit(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: the cgroup quota (a pod's CPU limit) or its affinity."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, min(cpus or 1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus or 1)


def configure_torch(threads: int) -> int:
    """Intra-op threads for the one forward pass at a time; 0 means the CPU limit."""
    import torch

    n = threads or cpu_limit()
    torch.set_num_threads(n)
    # One pass at a time: no inter-op parallelism to use. Raises if already set.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    return n


class _RESTServer(RESTServer):  # type: ignore[misc]
    """KServe's REST server on a chosen host (KServe's own binds 0.0.0.0)."""

    def __init__(self, host: str, access_log: bool, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config.host = host
        self.config.access_log = access_log
        if not access_log:
            # uvicorn decides on access logging when its Config is built (the
            # logger has handlers or not); KServe builds it with logging on, so
            # setting the flag afterwards alone still logged every request.
            access = logging.getLogger("uvicorn.access")
            access.handlers = []
            access.propagate = False
        self._server = uvicorn.Server(self.config)

    def _add_middlewares(self, app: Any) -> None:
        # KServe's TimingMiddleware logs two trace lines per request; flipserve's
        # middleware already records latency by endpoint and status in Prometheus.
        pass

    def _add_exception_handlers(self, app: Any) -> None:
        super()._add_exception_handlers(app)
        # KServe answers 501 to a model_version it does not support; flipserve
        # serves one version per process, so asking for another is a bad request.
        app.add_exception_handler(NotImplementedError, not_supported_handler)


class FlipserveServer(kserve.ModelServer):  # type: ignore[misc]
    """kserve.ModelServer for one FlipserveModel that may not be ready yet."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(
            http_port=settings.http_port,
            workers=1,
            enable_grpc=False,
            enable_latency_logging=False,
            grace_period=settings.shutdown_grace_s,
        )
        self.settings = settings

    def serve(self, model: FlipserveModel) -> None:
        """Load (if READY), serve until SIGTERM/SIGINT, drain, return."""
        threads = configure_torch(self.settings.torch_threads)
        log.info(
            "torch intra-op threads: %d, OMP_WAIT_POLICY=%s",
            threads,
            os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        )
        if not model.load():
            log.warning(
                "starting unready: %s (re-checking every %.1fs)",
                model.not_ready_reason,
                self.settings.ready_poll_s,
            )
        self.register_model(model)
        install(kserve.model_server.app, model)
        rest = _RESTServer(
            self.settings.host,
            self.settings.access_log,
            "kserve.model_server:app",
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            grace_period=self.grace_period,
            timeout_keep_alive=5,
        )
        # uvicorn re-raises the signal it stopped on after draining; a no-op
        # handler lets this process finish its cleanup and exit 0.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
        asyncio.run(self._run(rest, model))
        log.info("stopped")

    async def _run(self, rest: _RESTServer, model: FlipserveModel) -> None:
        tasks = [
            asyncio.create_task(model.batcher.run_forever(), name="batcher"),
            asyncio.create_task(model.watch_volume(), name="volume-watch"),
            asyncio.create_task(model.monitor.run_forever(), name="drift-monitor"),
        ]
        try:
            await rest.start()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
