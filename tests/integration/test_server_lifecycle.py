"""The server's life: unready on a half-copied volume, ready once READY lands, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest
from tests.integration.server_support import ServerProcess, make_volume

from flipserve import artifact

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _wait_ready(server: ServerProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(server.url + "/v2/health/ready").status_code == 200:
            return
        time.sleep(0.2)
    raise TimeoutError(server.output())


def test_half_copied_volume_stays_unready_until_its_ready_marker_checks_out(
    tmp_path: Path, server_artifact: Path
) -> None:
    volume = tmp_path / "green"
    digest = make_volume(volume, server_artifact, "tiny-1", ready=False)
    server = ServerProcess(volume, tmp_path, colour="green")
    try:
        server.wait_live()
        ready = httpx.get(server.url + "/v2/health/ready")
        assert ready.status_code == 503
        assert "no READY marker" in ready.json()["error"]
        r = httpx.post(server.url + "/predict", json={"text": "hello"})
        assert r.status_code == 503 and "error" in r.json()
        assert httpx.get(server.url + "/v2/models/flipserve/ready").status_code == 503
        # A marker naming another digest (a copy in progress over an old one) is not enough.
        artifact.write_ready(volume, "tiny-1", "0" * 64)
        time.sleep(1.0)
        assert httpx.get(server.url + "/v2/health/ready").status_code == 503
        assert "does not match" in server.output()
        artifact.write_ready(volume, "tiny-1", digest)
        _wait_ready(server)
        r = httpx.post(server.url + "/predict", json={"text": "hello"}, timeout=60)
        assert r.status_code == 200
        assert r.headers["X-Model-Version"] == "tiny-1"
        assert r.headers["X-Model-Colour"] == "green"
    finally:
        server.stop()


def test_sigterm_under_load_finishes_every_in_flight_request(
    tmp_path: Path, server_artifact: Path, server_tweets: list[str]
) -> None:
    volume = tmp_path / "blue"
    make_volume(volume, server_artifact, "tiny-1")
    server = ServerProcess(volume, tmp_path, colour="blue", max_batch_size=8)
    server.wait_live()
    _wait_ready(server)
    bodies = [{"texts": server_tweets[3000 + 8 * i : 3008 + 8 * i]} for i in range(24)]

    async def load() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            tasks = [asyncio.create_task(client.post("/predict", json=b)) for b in bodies]
            await asyncio.sleep(0.5)  # all connected and queued behind the forward pass
            server.proc.send_signal(signal.SIGTERM)
            responses = await asyncio.gather(*tasks)
        return [r.status_code for r in responses]

    try:
        statuses = asyncio.run(load())
        assert statuses == [200] * len(bodies)
        assert server.proc.wait(timeout=60) == 0, server.output()
        assert "stopped" in server.output()
    finally:
        server.stop()
