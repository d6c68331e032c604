"""The local backend's API endpoint: a tiny reverse proxy that can switch backends atomically.

Users (and the demo's load generator) talk to the proxy; the proxy forwards
every request to the server of the active colour. A switch only changes
which backend *new* requests go to, so requests already in flight finish on
the old server and none is dropped; ``in_flight`` per backend tells the
platform when the old one has drained. The proxy also keeps what the local
platform needs for the observe gate (per-colour request outcomes and
latencies) and a ring buffer of recent ``/predict`` texts as a fallback
traffic sample.

Upstream calls go through one aiohttp session: httpx's async pool costs so
much CPU per request that on 2 cores the proxy, not the model, set the
ceiling.

Admin routes live under ``/-/`` and need the ``X-Flipserve-Admin`` token
the platform generated; everything else is forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import uvicorn
import yarl
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ADMIN_HEADER = "X-Flipserve-Admin"
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
_OUTCOMES = 20_000
_TEXTS = 2_000


@dataclass
class Backend:
    url: str
    colour: str
    in_flight: int = 0


@dataclass
class ProxyState:
    token: str
    backend: Backend | None = None
    backends: dict[str, Backend] = field(default_factory=dict)
    # (finished at monotonic s, colour, ok, latency ms) for the observe gate
    outcomes: deque[tuple[float, str, bool, float]] = field(
        default_factory=lambda: deque(maxlen=_OUTCOMES)
    )
    texts: deque[str] = field(default_factory=lambda: deque(maxlen=_TEXTS))
    switches: int = 0

    def switch(self, url: str, colour: str) -> bool:
        if self.backend is not None and self.backend.url == url:
            return False
        self.backend = self.backends.setdefault(url, Backend(url=url, colour=colour))
        self.switches += 1
        return True

    def stats(self, colour: str, since_seconds: float) -> dict[str, Any]:
        cutoff = time.monotonic() - since_seconds
        rows = [o for o in self.outcomes if o[1] == colour and o[0] >= cutoff]
        latencies = sorted(o[3] for o in rows)
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if rows else None
        in_flight = {b.colour: b.in_flight for b in self.backends.values()}
        return {
            "requests": len(rows),
            "errors": sum(not o[2] for o in rows),
            "p99_latency_ms": p99,
            "in_flight": in_flight,
            "backend": None if self.backend is None else self.backend.colour,
        }


def build_app(state: ProxyState, timeout: float = 60.0) -> Starlette:
    sessions: list[aiohttp.ClientSession] = []  # made in the lifespan, on the server's loop

    def authorised(request: Request) -> bool:
        return request.headers.get(ADMIN_HEADER) == state.token

    async def put_backend(request: Request) -> Response:
        if not authorised(request):
            return JSONResponse({"error": "admin token required"}, status_code=401)
        body = await request.json()
        changed = state.switch(str(body["url"]), str(body["colour"]))
        return JSONResponse({"changed": changed, "colour": body["colour"]})

    async def get_stats(request: Request) -> Response:
        if not authorised(request):
            return JSONResponse({"error": "admin token required"}, status_code=401)
        colour = request.query_params.get("colour", "")
        since = float(request.query_params.get("since", "60"))
        return JSONResponse(state.stats(colour, since))

    async def get_traffic(request: Request) -> Response:
        if not authorised(request):
            return JSONResponse({"error": "admin token required"}, status_code=401)
        n = int(request.query_params.get("n", "200"))
        return JSONResponse({"texts": list(state.texts)[-n:]})

    async def health(request: Request) -> Response:
        ready = state.backend is not None
        return JSONResponse({"backend": ready}, status_code=200 if ready else 503)

    async def forward(request: Request) -> Response:
        backend = state.backend
        if backend is None:
            return JSONResponse({"error": "no model is being served yet"}, status_code=503)
        body = await request.body()
        if request.url.path == "/predict":
            _capture_texts(state, body)
        backend.in_flight += 1
        start = time.monotonic()
        ok = False
        url = backend.url + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        try:
            async with sessions[0].request(
                request.method, yarl.URL(url, encoded=True), data=body, headers=headers
            ) as upstream:
                content = await upstream.read()
                ok = upstream.status < 500
                back = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
                return Response(content, upstream.status, headers=back)
        except (aiohttp.ClientError, TimeoutError) as e:
            return JSONResponse({"error": f"backend {backend.colour}: {e!r}"}, status_code=502)
        finally:
            backend.in_flight -= 1
            elapsed = (time.monotonic() - start) * 1000
            state.outcomes.append((time.monotonic(), backend.colour, ok, elapsed))

    routes = [
        Route("/-/backend", put_backend, methods=["PUT"]),
        Route("/-/stats", get_stats, methods=["GET"]),
        Route("/-/traffic", get_traffic, methods=["GET"]),
        Route("/-/health", health, methods=["GET"]),
        Route("/{path:path}", forward, methods=["GET", "POST", "PUT", "DELETE"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        sessions.append(
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256),
                timeout=aiohttp.ClientTimeout(total=timeout),
                auto_decompress=False,  # pass bodies through as the backend sent them
            )
        )
        yield
        await sessions.pop().close()

    return Starlette(routes=routes, lifespan=lifespan)


def _capture_texts(state: ProxyState, body: bytes) -> None:
    try:
        data = json.loads(body)
    except ValueError:
        return
    if isinstance(data, dict):
        texts = data.get("texts") or ([data["text"]] if "text" in data else [])
        state.texts.extend(str(t) for t in texts if isinstance(t, str))


def serve(host: str, port: int, token: str, backend: str | None, colour: str | None) -> None:
    """Run the proxy until SIGTERM; prints ``listening <port>`` once bound (for port 0)."""
    state = ProxyState(token=token)
    if backend and colour:
        state.switch(backend, colour)
    config = uvicorn.Config(
        build_app(state), host=host, port=port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)

    async def main() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                await task
                return
            await asyncio.sleep(0.05)
        bound = server.servers[0].sockets[0].getsockname()[1]
        print(f"listening {bound}", flush=True)
        await task

    asyncio.run(main())
