"""Promotions on the local platform: the real copier, proxy and ``flipserve serve`` on loopback.

The models are real fine-tunes of different quality published to a real
``file://`` store (promotion_support.py): the score gate scores held-out
tweets through the preview server, the drift gate embeds the API's live
traffic with the candidate (``embedding_drift``). A server takes 10-30 s to
start on 2 cores (torch and transformers imports), so each test follows one
story through several promotions on one platform instead of re-promoting v1
for every assertion.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from flipserve import artifact
from flipserve.errors import PromotionError
from flipserve.loadgen import LoadGenerator
from flipserve.promotion import runner
from flipserve.promotion.gates import HttpGates
from flipserve.promotion.local import LocalPlatform, embedding_drift
from flipserve.promotion.status import (
    Colour,
    ModelTarget,
    Phase,
    PromotionSpec,
    PromotionStatus,
)
from tests.integration.promotion_support import (
    DRIFT_P_VALUE,
    heldout,
    live_emails,
    live_tweets,
    platform,
    published,
)

__all__ = ["heldout", "live_emails", "live_tweets", "platform", "published"]  # fixtures

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class Local:
    """One local root with the session's published models and held-out set."""

    platform: LocalPlatform
    models: dict[str, ModelTarget]
    heldout: tuple[list[str], list[str]]

    def promote(self, target: str | ModelTarget) -> PromotionStatus:
        if isinstance(target, str):
            target = self.models[target]
        spec = PromotionSpec(
            target=target,
            drift_p_value=DRIFT_P_VALUE,
            observe_seconds=2.0,
            # Latency is not judged here: servers, load and test share 2 cores.
            max_p99_latency_ms=120_000,
        )
        drift = embedding_drift(self.platform, threshold=DRIFT_P_VALUE)
        return runner.run_local(spec, self.platform, HttpGates(*self.heldout, drift))

    @property
    def api(self) -> str:
        url = self.platform.api_url
        assert url is not None, "the local API (proxy) is not running"
        return url

    def version(self) -> str:
        """The model version the API answers with now."""
        r = httpx.post(self.api + "/predict", json={"texts": ["what a lovely day"]}, timeout=60)
        r.raise_for_status()
        return r.headers["X-Model-Version"]


@pytest.fixture
def local(
    platform: LocalPlatform,
    published: dict[str, ModelTarget],
    heldout: tuple[list[str], list[str]],
) -> Local:
    return Local(platform, published, heldout)


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _history(platform: LocalPlatform) -> list[str]:
    return [h["status"]["phase"] for h in platform.load()["history"]]


def test_a_better_model_is_promoted_under_load_and_rolled_back_in_seconds(
    local: Local, live_tweets: list[str]
) -> None:
    first = local.promote("v1")
    assert first.phase is Phase.PROMOTED and first.to_colour is Colour.BLUE, first.reason
    assert local.version() == "v1"

    load = LoadGenerator(local.api, live_tweets, workers=4).start()
    try:
        # Two cycles through the 100 tweets: the drift gate's sample is all of them.
        _wait_for(lambda: load.stats.requests >= 200, "200 requests through the API")
        second = local.promote("v2")
        record = local.platform.production_scores()
        colour, seconds = runner.rollback_local(local.platform)
        time.sleep(0.5)
    finally:
        stats = load.stop()

    assert second.phase is Phase.PROMOTED, second.reason
    assert (second.from_colour, second.to_colour) == (Colour.BLUE, Colour.GREEN)
    assert second.production_scores == first.candidate_scores  # v1's measured scores
    assert second.candidate_scores["macro_f1"] > second.production_scores["macro_f1"] + 0.15
    assert record == second.candidate_scores
    drift = second.gate("drift")
    assert drift is not None and drift.passed and "no drift" in drift.detail, drift
    assert second.drift_p_value is not None and second.drift_p_value >= DRIFT_P_VALUE
    observe = second.gate("observe")
    assert observe is not None and observe.passed, observe
    assert second.observed is not None and second.observed.requests > 0
    assert _history(local.platform) == ["Promoted", "Promoted"]

    assert colour is Colour.BLUE and seconds < 5.0
    assert stats.failed == 0, stats.errors
    versions = [v for _, v in stats.versions]  # in-flight answers may interleave at a switch
    assert versions[0] == "v1" and "v2" in versions and versions[-1] == "v1"
    assert local.version() == "v1"

    # Everything stopped (a reboot, `flipserve stop`): a rollback brings the API back.
    local.platform.stop_all()
    assert local.platform.api_url is None
    colour, _ = runner.rollback_local(local.platform)
    assert colour is Colour.GREEN and local.version() == "v2"


def test_a_worse_model_is_refused_and_not_even_a_rollback_serves_it(local: Local) -> None:
    results: list[PromotionStatus] = []
    running = threading.Thread(target=lambda: results.append(local.promote("v1")))
    running.start()
    _wait_for(lambda: local.platform.load().get("current") is not None, "v1's promotion")
    with pytest.raises(PromotionError, match=r"waiting: promotion .* is still running"):
        local.promote("v3")  # one promotion at a time
    running.join()
    assert results and results[0].phase is Phase.PROMOTED, results
    with pytest.raises(PromotionError, match="holds no ready model"):
        runner.rollback_local(local.platform)  # nothing was served before v1

    second = local.promote("v2")  # blue → green; blue keeps v1 as the standby
    assert second.phase is Phase.PROMOTED, second.reason
    worse = local.promote("v3")  # v1's weights again: worse than v2

    assert worse.phase is Phase.FAILED
    assert "score gate failed" in worse.reason and "does not beat" in worse.reason
    assert worse.candidate_scores["macro_f1"] < worse.production_scores["macro_f1"]
    assert Phase.SWITCHING not in worse.phase_times
    active = local.platform.active()
    assert active is not None and active.colour is Colour.GREEN
    assert local.platform.preview_url(Colour.BLUE) is None  # the preview was stopped
    assert local.version() == "v2"
    with pytest.raises(PromotionError, match="the idle colour blue now holds v3, not v1"):
        runner.rollback_local(local.platform)  # the refused v3's copy overwrote v1 on blue
    assert local.version() == "v2"
    assert _history(local.platform) == ["Promoted", "Promoted", "Failed"]


def test_neither_a_corrupt_artifact_nor_drifted_traffic_moves_the_active_colour(
    local: Local, live_emails: list[str], tmp_path: Path
) -> None:
    assert local.promote("v1").phase is Phase.PROMOTED

    good = local.models["v2"]
    tampered = tmp_path / "tampered" / "v2"
    shutil.copytree(Path(good.uri.removeprefix("file://")), tampered)
    (tampered / "config.json").write_text('{"tampered": true}')
    corrupt = local.promote(good.model_copy(update={"uri": tampered.as_uri()}))
    assert corrupt.phase is Phase.FAILED and "copy failed" in corrupt.reason, corrupt.reason
    assert Phase.VERIFYING not in corrupt.phase_times
    with pytest.raises(Exception, match="READY"):
        artifact.read_ready(local.platform.volume(Colour.GREEN))
    assert local.version() == "v1"

    with LoadGenerator(local.api, live_emails, workers=2) as load:
        _wait_for(lambda: load.stats.requests >= 200, "200 emails through the API")
        drifted = local.promote("v2")  # better than v1, but not for this traffic

    assert drifted.phase is Phase.FAILED and "drift gate failed" in drifted.reason
    score = drifted.gate("score")
    assert score is not None and score.passed  # the drift gate alone refused it
    assert drifted.drift_p_value is not None and drifted.drift_p_value < DRIFT_P_VALUE
    assert load.stats.failed == 0, load.stats.errors
    active = local.platform.active()
    assert active is not None and active.colour is Colour.BLUE
    assert local.version() == "v1"
