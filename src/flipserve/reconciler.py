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

A rollback request (``spec.action: rollback``) goes Pending → Switching (to
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
    version: str
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")


class PromotionSpec(_Camel):
    release: str | None = None
    action: Literal["promote", "rollback"] = "promote"
    model: ModelSpec | None = None


class Transition(_Camel):
    phase: Phase
    at: datetime
    message: str = ""


class PromotionStatus(_Camel):
    phase: Phase = Phase.PENDING
    message: str = ""
    from_colour: Colour | None = None
    to_colour: Colour | None = None
    from_version: str | None = None
    from_digest: str | None = None
    copy_job: str | None = None
    gates: dict[str, dict[str, Any]] = Field(default_factory=dict)
    rollback_reason: str | None = None
    outcome: Phase | None = None
    started_at: datetime | None = None
    phase_since: datetime | None = None
    switched_at: datetime | None = None
    finished_at: datetime | None = None
    history: list[Transition] = Field(default_factory=list)

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
    def score(self, preview_url: str, ref: ModelRef) -> GateResult: ...
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
    s.started_at = s.started_at or ctx.now
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
        return _give_up(s, f"Kubernetes API: {e}", ctx)
    except FlipserveError as e:
        return _give_up(s, str(e), ctx)


def _give_up(s: PromotionStatus, reason: str, ctx: Context) -> PromotionStatus:
    if s.phase in (Phase.SWITCHING, Phase.OBSERVING):
        s.rollback_reason = s.rollback_reason or reason
        s.message = f"rolling back: {reason}"
        return s
    return _end(s, Phase.FAILED, reason)


def _pending(spec: PromotionSpec, s: PromotionStatus, ctx: Context) -> PromotionStatus:
    holder = ctx.platform.acquire(ctx.name)
    if holder is not None:
        s.message = f"waiting: promotion {holder} is in progress for this release"
        return s
    state = ctx.platform.state()
    s.from_colour, s.to_colour = state.active_colour, other(state.active_colour)
    s.from_version, s.from_digest = state.version, state.digest
    if spec.action == "rollback":
        if not state.previous_digest:
            return _end(s, Phase.FAILED, "nothing to roll back to: no previous model recorded")
        return _advance(s, Phase.SWITCHING, f"rolling back to {s.to_colour}", ctx)
    ref = _ref(spec)
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
        s.message = message
        return s
    return _advance(s, Phase.VERIFYING, "copied; starting the preview", ctx)


def _verifying(spec: PromotionSpec, s: PromotionStatus, ctx: Context) -> PromotionStatus:
    assert s.to_colour is not None
    ctx.platform.start_preview(s.to_colour)
    if not ctx.platform.preview_ready(s.to_colour):
        _check_timeout(s, ctx, ctx.limits.preview_timeout_s, "preview rollout")
        s.message = f"waiting for the preview on {s.to_colour}"
        return s
    result = ctx.gates.verify(ctx.urls.preview, _ref(spec))
    s.gates["verify"] = _record(result, ctx)
    if not result.passed:
        return _end(s, Phase.FAILED, f"verification failed: {result.reason}")
    return _advance(s, Phase.GATING, "verified; running the gates", ctx)


def _gating(spec: PromotionSpec, s: PromotionStatus, ctx: Context) -> PromotionStatus:
    ref = _ref(spec)
    for gate in ("score", "drift"):
        if gate in s.gates:  # evaluated before a restart; gates are not repeated
            result = GateResult(bool(s.gates[gate]["passed"]), str(s.gates[gate]["reason"]))
        elif gate == "score":
            result = ctx.gates.score(ctx.urls.preview, ref)
            s.gates[gate] = _record(result, ctx)
        else:
            result = ctx.gates.drift(ctx.urls.api, ctx.urls.preview, ref)
            s.gates[gate] = _record(result, ctx)
        if not result.passed:
            return _end(s, Phase.FAILED, f"{gate} gate failed: {result.reason}")
    return _advance(s, Phase.SWITCHING, f"gates passed; switching to {s.to_colour}", ctx)


def _switching(spec: PromotionSpec, s: PromotionStatus, ctx: Context) -> PromotionStatus:
    assert s.to_colour is not None and s.from_colour is not None
    if s.rollback_reason:
        return _switch_back(s, ctx)
    ctx.platform.stop_preview()
    if spec.action == "rollback":
        state = ctx.platform.state()
        version, digest = state.previous_version or "", state.previous_digest or ""
        if state.active_colour == s.to_colour:  # flipped before a restart
            version, digest = state.version or "", state.digest or ""
        reason = f"rollback requested by Promotion {ctx.name}"
    else:
        ref = _ref(spec)
        version, digest, reason = ref.version, ref.digest, f"Promotion {ctx.name}"
    if ctx.platform.switch(s.to_colour, version, digest, reason):
        s.switched_at = ctx.now
    s.switched_at = s.switched_at or ctx.now
    if not ctx.platform.api_rollout_complete():
        _check_timeout(s, ctx, ctx.limits.rollout_timeout_s, "API rollout")
        s.message = f"waiting for the API rollout to {s.to_colour}"
        return s
    if spec.action == "rollback":
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
        s.message = f"observing {s.to_colour}: {result.reason}"
        return s
    return _end(s, Phase.PROMOTED, f"{_ref(spec).version} serves from {s.to_colour}")


def _switch_back(s: PromotionStatus, ctx: Context) -> PromotionStatus:
    assert s.from_colour is not None
    reason = s.rollback_reason or "rollback"
    ctx.platform.switch(s.from_colour, s.from_version or "", s.from_digest or "", reason)
    if not ctx.platform.api_rollout_complete():
        s.message = f"rolling back to {s.from_colour}: {reason}"
        return s
    # Never switched (the failure came first): users saw no change, so it is a plain failure.
    return _end(s, Phase.ROLLED_BACK if s.switched_at else Phase.FAILED, reason)


def _end(s: PromotionStatus, outcome: Phase, message: str) -> PromotionStatus:
    """Record the verdict; the next step cleans up and makes it the phase."""
    s.outcome, s.message = outcome, message
    return s


def _finish(s: PromotionStatus, ctx: Context) -> PromotionStatus:
    assert s.outcome is not None
    ctx.platform.stop_preview()
    ctx.platform.release(ctx.name)
    s.finished_at = ctx.now
    return _advance(s, s.outcome, s.message, ctx)


def _advance(s: PromotionStatus, phase: Phase, message: str, ctx: Context) -> PromotionStatus:
    s.phase, s.message, s.phase_since = phase, message, ctx.now
    s.history.append(Transition(phase=phase, at=ctx.now, message=message))
    return s


def _check_timeout(s: PromotionStatus, ctx: Context, limit_s: float, what: str) -> None:
    since = s.phase_since or ctx.now
    if (ctx.now - since).total_seconds() > limit_s:
        raise PromotionError(f"{what} did not finish within {limit_s:.0f}s")


def _record(result: GateResult, ctx: Context) -> dict[str, Any]:
    return {"passed": result.passed, "reason": result.reason, "at": ctx.now.isoformat()} | {
        k: v for k, v in result.details.items() if isinstance(v, str | int | float | bool)
    }


def _ref(spec: PromotionSpec) -> ModelRef:
    if spec.model is None:
        raise PromotionError("spec.model is required to promote")
    m = spec.model
    return ModelRef(uri=m.uri, version=m.version, digest=m.digest, name=m.name)


_HANDLERS = {
    Phase.PENDING: _pending,
    Phase.COPYING: _copying,
    Phase.VERIFYING: _verifying,
    Phase.GATING: _gating,
    Phase.SWITCHING: _switching,
    Phase.OBSERVING: _observing,
}
