from datetime import UTC, datetime, timedelta

from flipserve.kube import lease_is_free

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _spec(holder: str | None, renewed: datetime, duration: int = 15) -> dict:
    return {
        "holderIdentity": holder,
        "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "leaseDurationSeconds": duration,
    }


def test_a_lease_held_and_renewed_by_another_is_not_free() -> None:
    assert not lease_is_free(_spec("other", NOW - timedelta(seconds=5)), "me", NOW)


def test_a_lease_is_free_to_its_holder_when_unheld_or_once_expired() -> None:
    assert lease_is_free(_spec("me", NOW), "me", NOW)
    assert lease_is_free(_spec(None, NOW), "me", NOW)
    assert lease_is_free(_spec("other", NOW - timedelta(seconds=16)), "me", NOW)
