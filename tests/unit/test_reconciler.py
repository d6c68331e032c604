from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from flipserve.promotion import GateResult, ModelTarget, Phase, PromotionStatus
from flipserve.reconciler import PromotionRequest, dump_status, load_status
from flipserve.settings import Settings

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
DIGEST = "b" * 64


def _request(**spec: object) -> PromotionRequest:
    ref = {"uri": "s3://b/m/v2", "version": "v2", "digest": f"sha256:{DIGEST}"}
    return PromotionRequest.model_validate({"modelRef": ref} | spec)


def test_the_spec_maps_onto_the_machine_spec_with_settings_as_defaults() -> None:
    spec = _request(scoreMargin=0.05, skipDriftGate=True).machine_spec(
        Settings(score_metric="accuracy", observe_seconds=7)
    )
    assert spec.target.digest == DIGEST  # the optional sha256: prefix is dropped
    assert (spec.score_metric, spec.score_margin, spec.observe_seconds) == ("accuracy", 0.05, 7)
    assert spec.skip_drift_gate


def test_a_malformed_digest_is_refused() -> None:
    with pytest.raises(ValidationError):
        PromotionRequest.model_validate({"modelRef": {"uri": "x", "digest": "nope"}})


def test_status_survives_a_round_trip_through_the_custom_resource() -> None:
    st = PromotionStatus(
        phase=Phase.GATING,
        phase_times={Phase.PENDING: T0, Phase.GATING: T0},
        from_colour="blue",
        to_colour="green",
        previous=ModelTarget(version="v1", uri="s3://b/m/v1", digest="a" * 64),
        candidate_scores={"macro_f1": 0.9},
        production_scores={"macro_f1": 0.8},
        gates=[GateResult(name="score", passed=True, value=0.9)],
        reason="score gate: ok",
    )
    raw = dump_status(st, _request(), "macro_f1")

    assert raw["fromColour"] == "blue" and raw["toColour"] == "green"
    assert set(raw["phaseTimestamps"]) == {"Pending", "Gating"}
    assert (raw["score"], raw["productionScore"]) == (0.9, 0.8)
    assert (raw["modelVersion"], raw["previousModelVersion"]) == ("v2", "v1")
    assert "finishedAt" not in raw
    assert load_status(raw) == st
