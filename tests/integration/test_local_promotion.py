"""Promotions on the local platform: real copier, proxy and server processes on loopback."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from flipserve import artifact
from flipserve.errors import PromotionError
from flipserve.loadgen import LoadGenerator
from flipserve.promotion import runner
from flipserve.promotion.gates import HttpGates
from flipserve.promotion.local import LocalPlatform
from flipserve.promotion.status import Colour, ModelTarget, Phase, PromotionSpec
from tests.integration.promotion_support import HELDOUT, RULES, Store, platform, store

__all__ = ["platform", "store"]  # fixtures

pytestmark = pytest.mark.integration


def _gates(p_value: float = 0.5) -> HttpGates:
    texts, labels = zip(*HELDOUT, strict=True)
    return HttpGates(texts, labels, drift_fn=lambda colour, sample: p_value)


def _promote(platform: LocalPlatform, target: ModelTarget, p_value: float = 0.5, **kw: object):  # type: ignore[no-untyped-def]
    spec = PromotionSpec.model_validate({"target": target, "observe_seconds": 1.5, **kw})
    return runner.run_local(spec, platform, _gates(p_value))


def _version(platform: LocalPlatform) -> str:
    assert platform.api_url is not None
    r = httpx.post(platform.api_url + "/predict", json={"texts": ["great day"]})
    r.raise_for_status()
    return r.headers["X-Model-Version"]


def test_first_promotion_serves_blue_and_a_better_model_is_promoted_to_green(
    platform: LocalPlatform, store: Store
) -> None:
    first = _promote(platform, store.publish("v1", RULES["v1"]))
    assert first.phase is Phase.PROMOTED and first.to_colour is Colour.BLUE
    assert _version(platform) == "v1"
    second = _promote(platform, store.publish("v2", RULES["v2"]))
    assert second.phase is Phase.PROMOTED, second.reason
    assert (second.from_colour, second.to_colour) == (Colour.BLUE, Colour.GREEN)
    assert second.candidate_scores["macro_f1"] == pytest.approx(1.0)
    assert second.production_scores["macro_f1"] < 0.7
    assert _version(platform) == "v2"
    assert platform.production_scores()["macro_f1"] == pytest.approx(1.0)
    assert [h["status"]["phase"] for h in platform.load()["history"]] == ["Promoted", "Promoted"]


def test_worse_model_fails_and_the_active_colour_does_not_move(
    platform: LocalPlatform, store: Store
) -> None:
    _promote(platform, store.publish("v1", RULES["v1"]))
    status = _promote(platform, store.publish("v3", RULES["v3"]))
    assert status.phase is Phase.FAILED
    assert "score gate failed" in status.reason
    active = platform.active()
    assert active is not None and active.colour is Colour.BLUE
    assert _version(platform) == "v1"
    assert platform.preview_url(Colour.GREEN) is None  # the preview was stopped


def test_drift_gate_failure_keeps_the_active_colour(platform: LocalPlatform, store: Store) -> None:
    _promote(platform, store.publish("v1", RULES["v1"]))
    with LoadGenerator(platform.api_url or "", [t for t, _ in HELDOUT], workers=2):
        time.sleep(1.0)  # enough live traffic for the drift gate to run
        status = _promote(platform, store.publish("v2", RULES["v2"]), p_value=0.001)
    assert status.phase is Phase.FAILED and "drift gate failed" in status.reason
    assert _version(platform) == "v1"


def test_corrupt_artifact_fails_before_any_switch(platform: LocalPlatform, store: Store) -> None:
    _promote(platform, store.publish("v1", RULES["v1"]))
    bad = store.publish("v2", RULES["v2"])
    (Path(bad.uri.removeprefix("file://")) / "rule.json").write_text('{"tampered": true}')
    status = _promote(platform, bad)
    assert status.phase is Phase.FAILED and "copy failed" in status.reason
    assert Phase.SWITCHING not in status.phase_times
    assert _version(platform) == "v1"
    with pytest.raises(Exception, match="READY"):
        artifact.read_ready(platform.volume(Colour.GREEN))


def test_switch_under_load_drops_no_request_and_rollback_takes_seconds(
    platform: LocalPlatform, store: Store
) -> None:
    _promote(platform, store.publish("v1", RULES["v1"]))
    load = LoadGenerator(platform.api_url or "", [t for t, _ in HELDOUT], workers=4).start()
    try:
        status = _promote(platform, store.publish("v2", RULES["v2"]))
        colour, seconds = runner.rollback_local(platform)
        time.sleep(0.5)
    finally:
        stats = load.stop()
    assert status.phase is Phase.PROMOTED
    assert colour is Colour.BLUE and seconds < 5.0
    assert stats.requests > 100
    assert stats.failed == 0, stats.errors
    versions = [v for _, v in stats.versions]  # in-flight answers may interleave at a switch
    assert versions[0] == "v1" and "v2" in versions and versions[-1] == "v1"
    assert _version(platform) == "v1"


def test_a_second_promotion_at_the_same_time_is_refused(
    platform: LocalPlatform, store: Store
) -> None:
    _promote(platform, store.publish("v1", RULES["v1"]))
    v2, v3 = store.publish("v2", RULES["v2"]), store.publish("v3", RULES["v3"])
    results: list[object] = []
    t = threading.Thread(target=lambda: results.append(_promote(platform, v2)))
    t.start()
    time.sleep(0.3)
    with pytest.raises(PromotionError, match=r"waiting: promotion .* is still running"):
        _promote(platform, v3)
    t.join()
    assert results and results[0].phase is Phase.PROMOTED  # type: ignore[attr-defined]


def test_rollback_without_a_previous_model_is_refused(
    platform: LocalPlatform, store: Store
) -> None:
    _promote(platform, store.publish("v1", RULES["v1"]))
    with pytest.raises(PromotionError, match="holds no ready model"):
        runner.rollback_local(platform)


def test_a_stopped_local_api_comes_back_on_rollback(platform: LocalPlatform, store: Store) -> None:
    _promote(platform, store.publish("v1", RULES["v1"]))
    _promote(platform, store.publish("v2", RULES["v2"]))
    platform.stop_all()
    assert platform.api_url is None
    colour, _ = runner.rollback_local(platform)
    assert colour is Colour.BLUE and _version(platform) == "v1"


def test_after_a_refused_candidate_rollback_does_not_serve_it(
    platform: LocalPlatform, store: Store
) -> None:
    _promote(platform, store.publish("v1", RULES["v1"]))
    _promote(platform, store.publish("v2", RULES["v2"]))  # blue → green; blue keeps v1
    assert _promote(platform, store.publish("v3", RULES["v3"])).phase is Phase.FAILED
    with pytest.raises(PromotionError, match="holds no ready model"):
        runner.rollback_local(platform)  # blue now holds the refused v3
    assert _version(platform) == "v2"
