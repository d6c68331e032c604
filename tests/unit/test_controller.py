"""The controller's leader Lease: what each outcome of an attempt reports and logs."""

from __future__ import annotations

import logging

import pytest

from flipserve.controller import LeaderLease
from flipserve.errors import KubeError
from flipserve.health import Health


class FakeKube:
    """``hold_lease`` answers what the test sets: True, False, or raises."""

    def __init__(self, *outcomes: bool | Exception) -> None:
        self.outcomes = list(outcomes)

    def hold_lease(self, name: str, identity: str, duration_s: float) -> bool:
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def _lease(*outcomes: bool | Exception) -> tuple[LeaderLease, Health]:
    health = Health(stale_after_s=60)
    return LeaderLease(FakeKube(*outcomes), "rel-controller", 0.03, health), health  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "says"), [(401, "rejected the controller's credentials"), (403, "Role")]
)
def test_a_refused_lease_is_an_error_and_unready_not_a_standby(
    status: int, says: str, caplog: pytest.LogCaptureFixture
) -> None:
    refused = KubeError("GET /apis/coordination.k8s.io/v1/...: HTTP x", status=status)
    lease, health = _lease(refused, refused, refused, True)
    with caplog.at_level(logging.INFO, logger="flipserve.controller"):
        lease.acquire()

    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # said once, not on every attempt
    assert f"HTTP {status}" in errors[0].getMessage() and says in errors[0].getMessage()
    assert "not a standby" in errors[0].getMessage()
    assert not any("standby: lease" in r.getMessage() for r in caplog.records)
    assert health.readiness() == (True, "leader (lease rel-controller)")


def test_a_refusal_keeps_the_controller_unready() -> None:
    lease, health = _lease(KubeError("HTTP 401: Unauthorized", status=401))
    assert not lease._try()
    ready, detail = health.readiness()
    assert not ready and "HTTP 401" in detail


def test_a_lease_held_by_another_is_a_ready_standby(caplog: pytest.LogCaptureFixture) -> None:
    lease, health = _lease(False)
    with caplog.at_level(logging.INFO, logger="flipserve.controller"):
        assert not lease._try()
        assert not lease._try()
    ready, detail = health.readiness()
    assert ready and detail.startswith("standby")
    assert [r.getMessage() for r in caplog.records] == [
        "standby: lease rel-controller is held by another controller"
    ]


def test_an_unreachable_api_server_is_unready_and_a_warning() -> None:
    lease, health = _lease(KubeError("GET ...: connection refused", status=0))
    assert not lease._try()
    assert health.readiness() == (False, "lease rel-controller: GET ...: connection refused")
