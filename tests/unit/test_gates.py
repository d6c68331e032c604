"""The gates' pure verdicts and the /predict answer parsing."""

from __future__ import annotations

import pytest

from flipserve.promotion import gates
from flipserve.promotion.status import ModelTarget, ObservedMetrics, PromotionSpec

SPEC = PromotionSpec(
    target=ModelTarget(version="v2", uri="file:///x", digest="b" * 64),
    max_error_rate=0.01,
    max_p99_latency_ms=500,
)


def test_score_must_beat_production_by_more_than_the_margin() -> None:
    ok = gates.score_verdict({"macro_f1": 0.71}, {"macro_f1": 0.60}, "macro_f1", 0.1)
    tie = gates.score_verdict({"macro_f1": 0.70}, {"macro_f1": 0.60}, "macro_f1", 0.1)
    assert ok.passed and ok.threshold == pytest.approx(0.70)
    assert not tie.passed and "does not beat" in tie.detail


def test_score_without_production_record_passes() -> None:
    assert gates.score_verdict({"macro_f1": 0.2}, {}, "macro_f1", 0.0).passed


def test_drift_verdict_fails_below_the_threshold() -> None:
    assert gates.drift_verdict(0.2, 0.05, 100).passed
    bad = gates.drift_verdict(0.01, 0.05, 100)
    assert not bad.passed and "drift: p=0.01 over 100 live texts" in bad.detail


def test_observe_breaches_in_order_errors_latency_drift() -> None:
    assert gates.observe_breach(ObservedMetrics(requests=1000, errors=10), SPEC) is None
    assert "error rate" in str(gates.observe_breach(ObservedMetrics(requests=100, errors=2), SPEC))
    slow = ObservedMetrics(requests=100, p99_latency_ms=900)
    assert "p99 latency 900 ms" in str(gates.observe_breach(slow, SPEC))
    drifted = ObservedMetrics(requests=100, drift=True, drift_p_value=0.001)
    assert "drift" in str(gates.observe_breach(drifted, SPEC))
    assert gates.observe_verdict(ObservedMetrics(), SPEC).passed  # no traffic is no breach


@pytest.mark.parametrize(
    "body",
    [
        {"predictions": [{"label": "pos", "scores": {}}, {"label": "neg"}]},
        [{"label": "pos"}, {"label": "neg"}],
        {"predictions": ["pos", "neg"]},
    ],
)
def test_labels_are_read_from_every_predict_answer_shape(body: object) -> None:
    assert gates.labels_from_response(body) == ["pos", "neg"]


def test_classification_scores_match_hand_computed_values() -> None:
    refs = ["a", "a", "b", "b"]
    preds = ["a", "b", "b", "b"]
    scores = gates.classification_scores(refs, preds)
    assert scores["accuracy"] == pytest.approx(0.75)
    # F1(a) = 2*1/(2+0+1) = 2/3 ; F1(b) = 2*2/(4+1+0) = 0.8
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    with pytest.raises(ValueError, match="references vs"):
        gates.classification_scores(["a"], [])
