"""The controller's health endpoint over real HTTP on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from flipserve.health import Health, HealthServer


@pytest.fixture
def served() -> Iterator[tuple[Health, str]]:
    health = Health(stale_after_s=60)
    server = HealthServer(health, "127.0.0.1", 0).start()
    try:
        yield health, f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


def test_readiness_is_503_until_the_api_server_has_answered(served: tuple[Health, str]) -> None:
    health, url = served
    r = httpx.get(url + "/readyz")
    assert r.status_code == 503 and "starting" in r.text
    assert health.report(True, "leader (lease flipserve-controller)")
    r = httpx.get(url + "/readyz")
    assert r.status_code == 200 and "leader" in r.text


def test_a_failed_attempt_makes_it_unready_with_the_reason(served: tuple[Health, str]) -> None:
    health, url = served
    health.report(True, "leader")
    assert health.report(False, "HTTP 401: Unauthorized")
    assert not health.report(False, "HTTP 401: Unauthorized")  # unchanged
    r = httpx.get(url + "/readyz")
    assert r.status_code == 503 and "HTTP 401" in r.text
    assert httpx.get(url + "/healthz").status_code == 200  # refused, but not hung
    assert httpx.get(url + "/nope").status_code == 404


def test_liveness_fails_once_no_attempt_was_made_for_too_long() -> None:
    health = Health(stale_after_s=0.0)
    ok, detail = health.liveness()
    assert not ok and "no attempt" in detail
