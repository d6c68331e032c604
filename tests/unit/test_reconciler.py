from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from tests.unit.test_machine import NEW, OLD_RECORD, FakeGates, FakePlatform, _spec

from flipserve.promotion import (
    Colour,
    GateResult,
    ModelTarget,
    Phase,
    Production,
    PromotionStatus,
    ServerCounters,
    reconcile,
)
from flipserve.reconciler import PromotionRequest, dump_status, give_up, load_status
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


def test_the_production_etag_survives_a_round_trip_through_the_custom_resource() -> None:
    """A restarted controller writes the record against the ETag read before its crash."""
    st = PromotionStatus(
        phase=Phase.SWITCHING,
        from_colour="blue",
        to_colour="green",
        production_etag='"0a1b2c"',
        production_before=ModelTarget(
            version="v1", uri="s3://b/m/v1", digest="a" * 64, scores={"macro_f1": 0.8}
        ),
        production_generation=7,
        production_scores={"macro_f1": 0.8},
    )
    raw = dump_status(st, _request(), "macro_f1")
    assert raw["productionEtag"] == '"0a1b2c"' and raw["productionGeneration"] == 7
    assert raw["productionBefore"]["scores"] == {"macro_f1": 0.8}
    assert load_status(raw) == st


def _gave_up(phase: Phase, **fields: object) -> tuple[PromotionStatus, FakePlatform]:
    platform = FakePlatform(active_colour=Colour.BLUE, previews={Colour.GREEN})
    st = PromotionStatus(phase=phase, from_colour="blue", to_colour="green", **fields)  # type: ignore[arg-type]
    return give_up(st, platform, "boom", T0), platform  # type: ignore[arg-type]


def test_giving_up_before_switching_fails_at_once_and_stops_the_preview() -> None:
    st, platform = _gave_up(Phase.GATING)
    assert st.phase is Phase.FAILED and st.reason == "boom"
    assert platform.previews == set()


def test_giving_up_in_switching_restores_the_record_before_failing() -> None:
    """The record may name the target already: the machine's rollback step puts it back."""
    platform = FakePlatform(record=Production(target=NEW, generation=2, etag="etag-2"))
    platform.previews.add(Colour.GREEN)
    st = PromotionStatus(
        phase=Phase.SWITCHING,
        phase_times={Phase.SWITCHING: T0},
        from_colour="blue",
        to_colour="green",
        production_etag="etag-1",
        production_before=OLD_RECORD.target,
        production_generation=2,
    )
    st = give_up(st, platform, "Kubernetes API: 403 forbidden", T0)  # type: ignore[arg-type]
    assert st.rolling_back and st.phase is Phase.SWITCHING
    st = reconcile(_spec(), st, platform, FakeGates(), T0)
    assert st.phase is Phase.FAILED
    assert "403 forbidden; the production record names v1 again (generation 3)" in st.reason
    assert platform.switches == [] and platform.active_colour is Colour.BLUE
    assert platform.record is not None and platform.record.target == OLD_RECORD.target


def test_a_rollback_request_that_has_switched_is_retried_not_failed() -> None:
    platform = FakePlatform()
    st = PromotionStatus(
        phase=Phase.SWITCHING, from_colour="green", to_colour="blue", switched_at=T0
    )
    st = give_up(st, platform, "store down", T0, rollback_request=True)  # type: ignore[arg-type]
    assert st.phase is Phase.SWITCHING and not st.rolling_back
    assert st.reason == "retrying the rollback: store down"


def test_the_observe_baseline_survives_a_round_trip_through_the_custom_resource() -> None:
    """A restarted controller measures the window from the same readings."""
    baseline = {
        "flipserve-6f7c-abcde#0": ServerCounters(
            requests=1200, errors=3, latency_buckets={"0.05": 1100, "+Inf": 1200}
        )
    }
    st = PromotionStatus(
        phase=Phase.OBSERVING, from_colour="blue", to_colour="green", observe_baseline=baseline
    )
    raw = dump_status(st, _request(), "macro_f1")
    assert raw["observeBaseline"]["flipserve-6f7c-abcde#0"]["latency_buckets"]["+Inf"] == 1200
    assert load_status(raw) == st
