"""The promotion gates: pure verdicts, and the runner that measures what they judge.

A verdict is a pure function of numbers (``score_verdict``,
``drift_verdict``, ``observe_verdict``), so the state machine's decisions
are unit-tested without a server. Measuring those numbers is the
:class:`GateRunner`'s job: the score gate sends the held-out set through the
preview server over HTTP (``POST /predict``) and scores the answers; the
drift gate embeds a sample of live traffic with the candidate model and
tests it against the candidate's own reference sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import httpx

from flipserve.promotion.status import Colour, GateResult, ObservedMetrics, PromotionSpec


class GateRunner(Protocol):
    """Measures what the gates judge; one implementation per platform."""

    def score(self, preview_url: str) -> dict[str, float]:
        """Scores (``accuracy``, ``macro_f1``, ...) of the held-out set through the preview."""
        ...

    def drift(self, colour: Colour, preview_url: str, texts: list[str]) -> float:
        """p-value of ``texts`` (live traffic) against ``colour``'s reference sample."""
        ...


# --- verdicts (pure) --------------------------------------------------------


def score_verdict(
    candidate: dict[str, float], production: dict[str, float], metric: str, margin: float
) -> GateResult:
    """Pass when the candidate beats production's ``metric`` by more than ``margin``.

    With no production record (first promotion) any measured score passes.
    """
    if metric not in candidate:
        return GateResult(name="score", passed=False, detail=f"candidate has no {metric!r} score")
    value = candidate[metric]
    if metric not in production:
        return GateResult(
            name="score",
            passed=True,
            value=value,
            detail=f"{metric} {value:.4f}; no production record to beat",
        )
    threshold = production[metric] + margin
    passed = value > threshold
    verb = "beats" if passed else "does not beat"
    detail = f"{metric} {value:.4f} {verb} production {production[metric]:.4f} + margin {margin}"
    return GateResult(name="score", passed=passed, value=value, threshold=threshold, detail=detail)


def drift_verdict(p_value: float, threshold: float, n: int) -> GateResult:
    """Pass unless live traffic differs from the candidate's reference (p below threshold)."""
    passed = p_value >= threshold
    what = "no drift" if passed else "drift"
    return GateResult(
        name="drift",
        passed=passed,
        value=p_value,
        threshold=threshold,
        detail=f"{what}: p={p_value:.4g} over {n} live texts (threshold {threshold})",
    )


def skipped_drift(reason: str) -> GateResult:
    return GateResult(name="drift", passed=True, detail=f"skipped: {reason}")


def observe_breach(observed: ObservedMetrics, spec: PromotionSpec) -> str | None:
    """Why the new colour must be rolled back, or None while it behaves."""
    if observed.error_rate > spec.max_error_rate:
        return (
            f"error rate {observed.error_rate:.2%} over {observed.requests} requests "
            f"> {spec.max_error_rate:.2%}"
        )
    p99 = observed.p99_latency_ms
    if p99 is not None and p99 > spec.max_p99_latency_ms:
        return f"p99 latency {p99:.0f} ms > {spec.max_p99_latency_ms:.0f} ms"
    if spec.rollback_on_drift and observed.drift:
        return f"drift on the new colour (p={observed.drift_p_value})"
    return None


def observe_verdict(observed: ObservedMetrics, spec: PromotionSpec) -> GateResult:
    breach = observe_breach(observed, spec)
    if breach is not None:
        return GateResult(name="observe", passed=False, value=observed.error_rate, detail=breach)
    p99 = "n/a" if observed.p99_latency_ms is None else f"{observed.p99_latency_ms:.0f} ms"
    return GateResult(
        name="observe",
        passed=True,
        value=observed.error_rate,
        threshold=spec.max_error_rate,
        detail=f"{observed.requests} requests, error rate {observed.error_rate:.2%}, p99 {p99}",
    )


# --- helpers for runners ----------------------------------------------------


def labels_from_response(body: Any) -> list[str]:
    """The predicted labels in a ``POST /predict`` answer (one per input text)."""
    items = body.get("predictions", body) if isinstance(body, dict) else body
    if not isinstance(items, list):
        raise ValueError(f"unexpected /predict answer: {str(body)[:200]}")
    return [str(item["label"]) if isinstance(item, dict) else str(item) for item in items]


def classification_scores(
    references: Sequence[str], predictions: Sequence[str]
) -> dict[str, float]:
    """accuracy, macro_f1 and per-label F1 (flipserve.metrics, the project's evaluate metrics)."""
    if len(references) != len(predictions) or not references:
        raise ValueError(f"{len(references)} references vs {len(predictions)} predictions")
    from flipserve.metrics import score_classification  # evaluate is slow to import

    return score_classification(list(predictions), list(references))


# --- the HTTP runner ----------------------------------------------------------

DriftFn = Callable[[Colour, list[str]], float]
"""p-value of live texts against a colour's reference sample (platform-specific)."""


class HttpGates:
    """Score through the preview server's ``POST /predict``; drift through ``drift_fn``."""

    def __init__(
        self,
        texts: Sequence[str],
        labels: Sequence[str],
        drift_fn: DriftFn,
        batch: int = 64,
        timeout: float = 120.0,
    ) -> None:
        if len(texts) != len(labels) or not texts:
            raise ValueError("the held-out set needs as many labels as texts, and at least one")
        self.texts, self.labels = list(texts), list(labels)
        self.drift_fn = drift_fn
        self.batch = batch
        self.timeout = timeout

    def score(self, preview_url: str) -> dict[str, float]:
        predictions: list[str] = []
        with httpx.Client(timeout=self.timeout) as client:
            for i in range(0, len(self.texts), self.batch):
                chunk = self.texts[i : i + self.batch]
                r = client.post(f"{preview_url}/predict", json={"texts": chunk})
                r.raise_for_status()
                predictions.extend(labels_from_response(r.json()))
        return classification_scores(self.labels, predictions)

    def drift(self, colour: Colour, preview_url: str, texts: list[str]) -> float:
        return self.drift_fn(colour, texts)
