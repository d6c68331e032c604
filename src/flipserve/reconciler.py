"""One reconcile step of a Promotion custom resource against the cluster.

``step(promotion, platform, gates, now)`` reads the object's spec and status,
does at most one phase's worth of idempotent work through
:class:`~flipserve.kubeplatform.KubePlatform`, and returns the new status. The
controller calls it on a timer for every unfinished Promotion and writes the
status back; because every action is idempotent and the phase is only
advanced after its action took effect, a controller killed at any point
repeats the interrupted step on restart and goes on from there.

Phases (Argo Rollouts' blue/green sequence, with gates before the switch)::

    Pending → Copying → Verifying → Gating → Switching → Observing → Promoted
                  ↘          ↘          ↘  Failed  (the active colour never moved)
                                        Switching/Observing ↘ RolledBack

A rollback request (``spec.rollback: true``) goes Pending → Switching (to
the previous colour, whose volume still holds the previous model) → RolledBack.

Errors: :class:`~flipserve.errors.TemporaryError` and API failures that may
heal (connection, 409, 5xx) propagate for the controller to retry later;
anything else ends the promotion — Failed before the switch, a rollback after.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from flipserve.errors import FlipserveError, KubeError, PromotionError, TemporaryError
from flipserve.kubeplatform import Colour, KubePlatform, ModelRef, other


class Phase(StrEnum):
    PENDING = "Pending"  # waiting for the release lock, or just created
    COPYING = "Copying"  # the copy Job fills the idle colour's volume
    VERIFYING = "Verifying"  # the preview server must serve exactly the ref's digest
    GATING = "Gating"  # score and drift gates against the preview server
    SWITCHING = "Switching"  # the API Deployment's claim flips; waiting for the rollout
    OBSERVING = "Observing"  # error rate, latency and drift of the new colour
    PROMOTED = "Promoted"  # done: the new colour serves
    FAILED = "Failed"  # stopped before the switch: the active colour never moved
    ROLLED_BACK = "RolledBack"  # switched and switched back (or a rollback request)


TERMINAL = frozenset({Phase.PROMOTED, Phase.FAILED, Phase.ROLLED_BACK})


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class ModelSpec(_Camel):
    name: str = "model"
    uri: str
    version: str = ""
    digest: str = Field(pattern=r"^(sha256:)?[0-9a-f]{64}$")


class PromotionSpec(_Camel):
    """``spec`` of a Promotion (charts/flipserve/crds/promotions.flipserve.dev.yaml)."""

    model_ref: ModelSpec | None = None
    release: str | None = None
    score_margin: float | None = None
    skip_drift_gate: bool = False
    rollback: bool = False
    reason: str = ""


class Transition(_Camel):
    phase: Phase
    at: datetime
    message: str = ""


class PromotionStatus(_Camel):
    """``status`` of a Promotion; the CRD names the printed fields, the rest is preserved."""

    phase: Phase = Phase.PENDING
    reason: str = ""
    message: str = ""
    from_colour: Colour | None = None
    to_colour: Colour | None = None
    model_version: str | None = None
    model_digest: str | None = None
    previous_model_version: str | None = None
    previous_model_digest: str | None = None
    score: float | None = None
    production_score: float | None = None
    score_metric: str | None = None
    drift_p_value: float | None = None
    copy_job: str | None = None
    gates: dict[str, dict[str, Any]] = Field(default_factory=dict)
    rollback_reason: str | None = None
    outcome: Phase | None = None
    started_at: datetime | None = None
    switched_at: datetime | None = None
    finished_at: datetime | None = None
    phase_timestamps: dict[str, datetime] = Field(default_factory=dict)
    history: list[Transition] = Field(default_factory=list)

    @property
    def phase_since(self) -> datetime | None:
        return self.phase_timestamps.get(self.phase.value)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


class Gates(Protocol):
    """What the controller asks the model servers; URLs come from :class:`Urls`."""

    def verify(self, preview_url: str, ref: ModelRef) -> GateResult: ...
    def score(self, preview_url: str, ref: ModelRef, margin: float | None) -> GateResult: ...
    def drift(self, api_url: str, preview_url: str, ref: ModelRef) -> GateResult: ...
    def observe(self, api_url: str, since: datetime) -> GateResult: ...


@dataclass(frozen=True)
class Limits:
    copy_timeout_s: float = 1800.0
    preview_timeout_s: float = 600.0
    rollout_timeout_s: float = 600.0
    observe_seconds: float = 30.0


@dataclass(frozen=True)
class Urls:
    preview: str
    api: str


@dataclass
class Context:
    """Everything a step needs besides the Promotion object."""

    name: str
    platform: KubePlatform
    gates: Gates
    urls: Urls
    limits: Limits
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


def step(spec: PromotionSpec, status: PromotionStatus, ctx: Context) -> PromotionStatus:
    """Advance the promotion by at most one phase; returns the new status."""
    s = status.model_copy(deep=True)
    if s.started_at is None:
        s.started_at = ctx.now
        s.phase_timestamps[s.phase.value] = ctx.now
    if s.phase in TERMINAL:
        return s
    try:
        if s.outcome is not None:
            return _finish(s, ctx)
        return _HANDLERS[s.phase](spec, s, ctx)
    except TemporaryError:
        raise
    except KubeError as e:
        if e.status in (0, 409, 429) or e.status >= 500:
            raise TemporaryError(str(e), delay=2.0) from e
        return _give_up(s, f"Kubernetes API: {e}")
    except FlipserveError as e:
        return _give_up(s, str(e))


def _give_up(s: PromotionStatus, reason: str) -> PromotionStatus:
    if s.phase in (Phase.SWITCHING, Phase.OBSERVING):
        s.rollback_reason = s.rollback_reason or reason
        return _say(s, f"rolling back: {reason}")
    return _end(s, Phase.FAILED, reason)


def _pending(spec: PromotionSpec, s: PromotionStatus, ctx: Context) -> PromotionStatus:
    holder = ctx.platform.acquire(ctx.name)
    if holder is not None:
        return _say(s, f"waiting: promotion {holder} is in progress for this release")
    state = ctx.platform.state()
    s.from_colour, s.to_colour = state.active_colour, other(state.active_colour)
    s.previous_model_version, s.previous_model_digest = state.version, state.digest
    if spec.rollback:
        if not state.previous_digest:
            return _end(s, Phase.FAILED, "nothing to roll back to: no previous model recorded")
        s.model_version, s.model_digest = state.previous_version, state.previous_digest
        return _advance(s, Phase.SWITCHING, f"rolling back to {s.to_colour}", ctx)
    ref = _ref(spec)
    s.model_version, s.model_digest = ref.version, ref.digest
    if state.digest == ref.digest:
        return _end(s, Phase.FAILED, f"{ref.version} is already active on {state.active_colour}")
    return _advance(s, Phase.COPYING, f"copying {ref.version} to {s.to_colour}", ctx)


def _copying(spec: PromotionSpec, s: PromotionStatus, ctx: Context) -> PromotionStatus:
    assert s.to_colour is not None
    s.copy_job = ctx.platform.start_copy(ctx.name, s.to_colour, _ref(spec))
    state, message = ctx.platform.copy_state(s.copy_job)
    if state == "failed":
        return _end(s, Phase.FAILED, message)
    if state == "running":
        _check_timeout(s, ctx, ctx.limits.copy_timeout_s, "copy")
        return _say(s, message)
    return _advance(s, Phase.VERIFYING, "copied; starting the preview", ctx)


def _verifying(spec: PromotionSpec, s: PromotionStatus, ctx: Context) -> PromotionStatus:
    assert s.to_colour is not None
    ctx.platform.start_preview(s.to_colour)
    if not ctx.platform.preview_ready(s.to_colour):
        _check_timeout(s, ctx, ctx.limits.preview_timeout_s, "preview rollout")
        return _say(s, f"waiting for the preview on {s.to_colour}")
    result = ctx.gates.verify(ctx.urls.preview, _ref(spec))
    s.gates["verify"] = _record(result, ctx)
    if not result.passed:
        return _end(s, Phase.FAILED, f"verification failed: {result.reason}")
    return _advance(s, Phase.GATING, "verified; running the gates", ctx)


def _gating(spec: PromotionSpec, s: PromotionStatus, ctx: Context) -> PromotionStatus:
    ref = _ref(spec)
    gates = ["score"] if spec.skip_drift_gate else ["score", "drift"]
    for gate in gates:
        if gate in s.gates:  # evaluated before a restart; gates are not repeated
            result = GateResult(bool(s.gates[gate]["passed"]), str(s.gates[gate]["reason"]))
        else:
            if gate == "score":
                result = ctx.gates.score(ctx.urls.preview, ref, spec.score_margin)
            else:
                result = ctx.gates.drift(ctx.urls.api, ctx.urls.preview, ref)
            s.gates[gate] = _record(result, ctx)
            _copy_numbers(s, result)
        if not result.passed:
            return _end(s, Phase.FAILED, f"{gate} gate failed: {result.reason}")
    return _advance(s, Phase.SWITCHING, f"gates passed; switching to {s.to_colour}", ctx)


def _switching(spec: PromotionSpec, s: PromotionStatus, ctx: Context) -> PromotionStatus:
    assert s.to_colour is not None and s.from_colour is not None
    if s.rollback_reason:
        return _switch_back(s, ctx)
    ctx.platform.stop_preview()
    why = f"rollback requested by Promotion {ctx.name}" if spec.rollback else f"Promotion {ctx.name}"
    version, digest = s.model_version or "", s.model_digest or ""
    if ctx.platform.switch(s.to_colour, version, digest, why) or s.switched_at is None:
        s.switched_at = ctx.now  # also when a restart finds the patch already made
    if not ctx.platform.api_rollout_complete():
        _check_timeout(s, ctx, ctx.limits.rollout_timeout_s, "API rollout")
        return _say(s, f"waiting for the API rollout to {s.to_colour}")
    if spec.rollback:
        return _end(s, Phase.ROLLED_BACK, f"rolled back to {s.to_colour} ({version})")
    return _advance(s, Phase.OBSERVING, f"serving from {s.to_colour}; observing", ctx)


def _observing(spec: PromotionSpec, s: PromotionStatus, ctx: Context) -> PromotionStatus:
    if s.rollback_reason:
        return _switch_back(s, ctx)
    since = s.switched_at or s.phase_since or ctx.now
    result = ctx.gates.observe(ctx.urls.api, since)
    s.gates["observe"] = _record(result, ctx)
    if not result.passed:
        s.rollback_reason = f"observe gate failed: {result.reason}"
        return _switch_back(s, ctx)
    if (ctx.now - since).total_seconds() < ctx.limits.observe_seconds:
        return _say(s, f"observing {s.to_colour}: {result.reason}")
    return _end(s, Phase.PROMOTED, f"{s.model_version} serves from {s.to_colour}")


def _switch_back(s: PromotionStatus, ctx: Context) -> PromotionStatus:
    assert s.from_colour is not None
    reason = s.rollback_reason or "rollback"
    version, digest = s.previous_model_version or "", s.previous_model_digest or ""
    ctx.platform.switch(s.from_colour, version, digest, reason)
    if not ctx.platform.api_rollout_complete():
        return _say(s, f"rolling back to {s.from_colour}: {reason}")
    # Never switched (the failure came first): users saw no change, so it is a plain failure.
    return _end(s, Phase.ROLLED_BACK if s.switched_at else Phase.FAILED, reason)


def _end(s: PromotionStatus, outcome: Phase, message: str) -> PromotionStatus:
    """Record the verdict; the next step cleans up and makes it the phase."""
    s.outcome = outcome
    return _say(s, message)


def _finish(s: PromotionStatus, ctx: Context) -> PromotionStatus:
    assert s.outcome is not None
    ctx.platform.stop_preview()
    ctx.platform.release(ctx.name)
    s.finished_at = ctx.now
    return _advance(s, s.outcome, s.message, ctx)


def _advance(s: PromotionStatus, phase: Phase, message: str, ctx: Context) -> PromotionStatus:
    s.phase = phase
    s.phase_timestamps[phase.value] = ctx.now
    s.history.append(Transition(phase=phase, at=ctx.now, message=message))
    return _say(s, message)


def _say(s: PromotionStatus, message: str) -> PromotionStatus:
    s.reason = s.message = message
    return s


def _check_timeout(s: PromotionStatus, ctx: Context, limit_s: float, what: str) -> None:
    since = s.phase_since or ctx.now
    if (ctx.now - since).total_seconds() > limit_s:
        raise PromotionError(f"{what} did not finish within {limit_s:.0f}s")


def _record(result: GateResult, ctx: Context) -> dict[str, Any]:
    return {"passed": result.passed, "reason": result.reason, "at": ctx.now.isoformat()} | {
        k: v for k, v in result.details.items() if isinstance(v, str | int | float | bool)
    }


def _copy_numbers(s: PromotionStatus, result: GateResult) -> None:
    """Lift the numbers ``kubectl get promotions`` prints into their status fields."""
    d = result.details
    s.score = d.get("score", s.score)
    s.production_score = d.get("production_score", s.production_score)
    s.score_metric = d.get("metric", s.score_metric)
    s.drift_p_value = d.get("p_value", s.drift_p_value)


def _ref(spec: PromotionSpec) -> ModelRef:
    if spec.model_ref is None:
        raise PromotionError("spec.modelRef is required to promote")
    m = spec.model_ref
    return ModelRef(uri=m.uri, version=m.version, digest=m.digest.removeprefix("sha256:"), name=m.name)


_HANDLERS = {
    Phase.PENDING: _pending,
    Phase.COPYING: _copying,
    Phase.VERIFYING: _verifying,
    Phase.GATING: _gating,
    Phase.SWITCHING: _switching,
    Phase.OBSERVING: _observing,
}
