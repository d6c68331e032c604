"""The drive loop: a step that keeps raising is retried, then the promotion is given up."""

from __future__ import annotations

from tests.unit.test_machine import FakeGates, FakePlatform, _spec

from flipserve.promotion import runner
from flipserve.promotion.status import Colour, Phase


class BrokenGates(FakeGates):
    def score(self, preview_url: str) -> dict[str, float]:
        raise ConnectionError("preview answers 500")


def test_a_step_that_keeps_failing_fails_the_promotion_without_switching() -> None:
    platform = FakePlatform()
    status = runner.drive(_spec(), platform, BrokenGates(), poll_seconds=0.0, retries=3)
    assert status.phase is Phase.FAILED
    assert "gave up: ConnectionError: preview answers 500" in status.reason
    assert platform.active_colour is Colour.BLUE and platform.switches == []


def test_drive_reports_every_step() -> None:
    seen: list[Phase] = []
    runner.drive(
        _spec(observe_seconds=0.1),
        FakePlatform(),
        FakeGates(),
        poll_seconds=0.0,
        on_step=lambda s: seen.append(s.phase),
    )
    assert seen[0] is Phase.COPYING and seen[-1] is Phase.PROMOTED
