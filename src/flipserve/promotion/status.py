"""What a promotion asks for (spec) and where it stands (status): the state machine's data.

Both are pydantic models so the Kubernetes controller can store them as a
``Promotion`` object's ``spec``/``status`` (``model_dump(mode="json")``) and
the local backend in a JSON file, and read them back unchanged after a
crash. Field names are the contract with the CRD; change them together.
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from flipserve.errors import RefError
from flipserve.settings import Settings


class Phase(StrEnum):
    """Where a promotion is; the order of the happy path is the order below."""

    PENDING = "Pending"  # accepted; waiting for its turn and for the idle colour to be chosen
    COPYING = "Copying"  # the copy job fills the idle colour's volume from the store
    VERIFYING = (
        "Verifying"  # the volume's READY marker is checked and a preview server starts on it
    )
    GATING = "Gating"  # score and drift gates run against the preview server
    SWITCHING = "Switching"  # the API moves to the new colour and waits for the rollout
    OBSERVING = "Observing"  # the new colour's error rate, latency and drift are watched
    PROMOTED = "Promoted"  # terminal: the new colour serves and the store records it as production
    FAILED = "Failed"  # terminal: stopped before the switch; the active colour never moved
    ROLLED_BACK = "RolledBack"  # terminal: switched, then switched back to the previous colour

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Phase.PROMOTED, Phase.FAILED, Phase.ROLLED_BACK})


class Colour(StrEnum):
    """The two model volumes; the API serves exactly one of them."""

    BLUE = "blue"
    GREEN = "green"

    @property
    def other(self) -> Colour:
        return Colour.GREEN if self is Colour.BLUE else Colour.BLUE


class ModelTarget(BaseModel):
    """One model artifact in the store, pinned by its manifest digest (from a model ref)."""

    name: str = "flipserve"
    version: str
    uri: str
    """Where the artifact lives: ``s3://bucket/prefix/...`` or ``file:///...``."""
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    scores: dict[str, float] = Field(default_factory=dict)
    """Scores recorded at training time (informational; the gate measures its own)."""

    @classmethod
    def from_ref(cls, data: dict[str, Any]) -> ModelTarget:
        """From a model ref's JSON (``model_refs/model.json``, see refs.py)."""
        try:
            return cls(
                name=data.get("name", "flipserve"),
                version=str(data["version"]),
                uri=data.get("uri") or data["artifact_uri"],
                digest=data.get("digest") or data.get("sha256") or data["manifest_sha256"],
                scores=data.get("metrics") or data.get("scores") or {},
            )
        except (KeyError, ValidationError) as e:
            raise RefError(f"not a model ref: {e}") from e

    @classmethod
    def from_ref_file(cls, path: Path) -> ModelTarget:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RefError(f"{path}: cannot read the model ref: {e}") from e
        try:
            return cls.from_ref(data)
        except RefError as e:
            raise RefError(f"{path}: {e}") from e


class PromotionSpec(BaseModel):
    """What to promote and the thresholds its gates use (filled from settings by the caller)."""

    target: ModelTarget
    score_metric: str = "macro_f1"
    score_margin: float = 0.0
    """The candidate must beat production's score by more than this."""
    drift_p_value: float = 0.05
    """The drift gate fails when live traffic vs. the candidate's reference has p below this."""
    drift_sample_size: int = 200
    observe_seconds: float = 30.0
    max_error_rate: float = 0.01
    max_p99_latency_ms: float = 1000.0
    rollback_on_drift: bool = True
    """Whether drift detected on the new colour while observing rolls it back."""
    copy_timeout_seconds: float = 600.0
    ready_timeout_seconds: float = 300.0
    rollout_timeout_seconds: float = 300.0
    skip_drift_gate: bool = False
    """For a first deployment there is no live traffic to test; the machine skips it by itself."""

    @classmethod
    def from_settings(
        cls, target: ModelTarget, settings: Settings, **overrides: Any
    ) -> PromotionSpec:
        """The spec the settings describe, for both backends; ``overrides`` win when not None."""
        values: dict[str, Any] = {
            "score_metric": settings.score_metric,
            "score_margin": settings.score_margin,
            "drift_p_value": settings.drift_p_value,
            "drift_sample_size": settings.drift_sample_size,
            "observe_seconds": settings.observe_seconds,
            "max_error_rate": settings.max_error_rate,
            "max_p99_latency_ms": settings.max_p99_latency_ms,
            "copy_timeout_seconds": settings.copy_timeout_seconds,
            "ready_timeout_seconds": settings.ready_timeout_seconds,
            "rollout_timeout_seconds": settings.rollout_timeout_seconds,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(target=target, **values)


class GateResult(BaseModel):
    """The verdict of one gate, kept in the status for ``kubectl get`` and the report."""

    name: str  # "score" | "drift" | "observe"
    passed: bool
    value: float | None = None
    threshold: float | None = None
    detail: str = ""


class ObservedMetrics(BaseModel):
    """The new colour's behaviour over the observe window (from its own metrics)."""

    requests: int = 0
    errors: int = 0
    p99_latency_ms: float | None = None
    drift_p_value: float | None = None
    drift: bool = False

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


class ServerCounters(BaseModel):
    """One server's cumulative request counters, as its ``GET /metrics`` reports them.

    The observe window is the difference of two readings: a baseline when
    Observing starts, and each reading after it.
    """

    requests: float = 0.0
    errors: float = 0.0
    """Requests answered with a 5xx."""
    latency_buckets: dict[str, float] = Field(default_factory=dict)
    """The latency histogram's cumulative buckets: upper bound in seconds (``"0.05"``,
    ``"+Inf"``) → requests at most that slow."""

    def since(self, base: ServerCounters | None) -> ServerCounters:
        """What was counted after ``base``: all of it when there is no base, or when a
        counter went down (the server restarted and counts from zero again)."""
        if base is None or self._reset_since(base):
            return self
        buckets = {k: v - base.latency_buckets.get(k, 0.0) for k, v in self.latency_buckets.items()}
        return ServerCounters(
            requests=self.requests - base.requests,
            errors=self.errors - base.errors,
            latency_buckets=buckets,
        )

    def _reset_since(self, base: ServerCounters) -> bool:
        if self.requests < base.requests or self.errors < base.errors:
            return True
        return any(self.latency_buckets.get(k, 0.0) < v for k, v in base.latency_buckets.items())


class PromotionStatus(BaseModel):
    """Everything a promotion has done and decided; enough to resume after a crash."""

    phase: Phase = Phase.PENDING
    phase_times: dict[Phase, datetime] = Field(default_factory=dict)
    """When each phase was entered (the latest entry, if a phase was re-entered)."""
    from_colour: Colour | None = None
    """The colour serving when the promotion started (None: nothing was serving)."""
    to_colour: Colour | None = None
    previous: ModelTarget | None = None
    """The model that was serving when the promotion started, for rollback and the report."""
    copy_progress: float | None = None
    """Fraction (0..1) of the copy's bytes done, when the platform knows it."""
    candidate_scores: dict[str, float] = Field(default_factory=dict)
    production_scores: dict[str, float] = Field(default_factory=dict)
    """The production record's scores when the score gate read it: the baseline it judged."""
    production_etag: str | None = None
    """ETag of the store's production record when the score gate read it (None: there was
    none). The switch writes the record by compare-and-swap against it."""
    production_before: ModelTarget | None = None
    """The model that record named, with its scores: what a rollback writes back."""
    production_generation: int | None = None
    """The record's generation once it names this promotion's target (written at the switch)."""
    drift_p_value: float | None = None
    gates: list[GateResult] = Field(default_factory=list)
    observed: ObservedMetrics | None = None
    observe_baseline: dict[str, ServerCounters] | None = None
    """Each new-colour server's counters when Observing began, by server (a pod and its
    restart count, in a cluster): the observe window is measured from them. Empty
    where the platform windows its measurements itself (the local proxy)."""
    switched_at: datetime | None = None
    rolling_back: bool = False
    """Set when the observe gate (or a stuck rollout) breached: the API is moving back."""
    rollback_reason: str = ""
    reason: str = ""
    """Why the promotion is where it is: the last decision, in one line."""
    last_promoted: ModelTarget | None = None
    """The spec's target once it reached Promoted (Flagger's lastPromotedSpec)."""

    @property
    def done(self) -> bool:
        return self.phase.terminal

    def gate(self, name: str) -> GateResult | None:
        return next((g for g in self.gates if g.name == name), None)

    def entered(self, phase: Phase) -> datetime | None:
        return self.phase_times.get(phase)
