"""One reconcile of a Promotion custom resource: the state machine, in a cluster.

:func:`step` maps the object's ``spec`` (the CRD in
``charts/flipserve/crds/``) onto :class:`flipserve.promotion.PromotionSpec`,
loads the machine's status from the object's ``status``, and calls
:func:`flipserve.promotion.reconcile` with the Kubernetes platform. Around
the machine it adds what only a cluster needs:

- **one promotion at a time per release**: a Pending promotion first takes the
  release lock (an annotation on the API Deployment); while another live
  promotion holds it, it stays Pending with the reason in its status, and the
  lock is dropped once the promotion is finished;
- **rollback requests** (``spec.rollback: true``): switch to the idle colour,
  if its volume still holds the previous model, wait for the rollout, write
  the store's production record back to that model (compare-and-swap, only
  if it still names the model rolled back from), RolledBack. A promotion that
  copied onto the idle colour since (and was refused) left its candidate
  there: the rollback then fails, saying to promote the previous model again;
- **retry-later vs give-up**: TemporaryError and API failures that may heal
  (no connection, 409, 429, 5xx) propagate for the controller to retry with a
  delay and the status untouched; any other error ends the promotion — Failed
  before the switch (the active colour never moved), a rollback after it
  (and in Switching, where the production record may already name the
  target: the rollback step writes it back, then the promotion fails).

The status written back is the machine's own (top-level keys in camelCase;
``phaseTimestamps`` for its phase times) plus the fields ``kubectl get
promotions`` prints (score, productionScore, driftPValue, ...).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from flipserve.errors import FlipserveError, KubeError, PromotionError, TemporaryError
from flipserve.kubeplatform import KubePlatform
from flipserve.promotion import (
    GateRunner,
    ModelTarget,
    Phase,
    PromotionSpec,
    PromotionStatus,
    reconcile,
    restore_production,
    rollback_target,
)
from flipserve.settings import Settings

_RENAMED = {"phase_times": "phaseTimestamps"}


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class ModelRefSpec(_Camel):
    uri: str
    digest: str = Field(pattern=r"^(sha256:)?[0-9a-f]{64}$")
    version: str = "unknown"
    name: str = "flipserve"


class PromotionRequest(_Camel):
    """A Promotion's ``spec``."""

    model_ref: ModelRefSpec | None = None
    release: str | None = None
    score_margin: float | None = None
    skip_drift_gate: bool = False
    rollback: bool = False
    reason: str = ""

    def target(self) -> ModelTarget:
        if self.model_ref is None:
            raise PromotionError("spec.modelRef is required unless spec.rollback is true")
        m = self.model_ref
        digest = m.digest.removeprefix("sha256:")
        return ModelTarget(name=m.name, version=m.version, uri=m.uri, digest=digest)

    def machine_spec(self, settings: Settings) -> PromotionSpec:
        return PromotionSpec.from_settings(
            self.target(),
            settings,
            score_margin=self.score_margin,
            skip_drift_gate=self.skip_drift_gate,
        )


def load_status(raw: dict[str, Any] | None) -> PromotionStatus:
    raw = raw or {}
    data = {}
    for field in PromotionStatus.model_fields:
        key = _RENAMED.get(field, to_camel(field))
        if key in raw:
            data[field] = raw[key]
    return PromotionStatus.model_validate(data)


def dump_status(st: PromotionStatus, spec: PromotionRequest, metric: str) -> dict[str, Any]:
    """The machine's status under camelCase keys, plus the printed columns."""
    raw = st.model_dump(mode="json", exclude_none=True)
    out = {_RENAMED.get(k, to_camel(k)): v for k, v in raw.items()}
    target = st.last_promoted or (spec.target() if spec.model_ref else None)
    extras: dict[str, Any] = {
        "message": st.reason,
        "modelVersion": target.version if target else None,
        "modelDigest": target.digest if target else None,
        "previousModelVersion": st.previous.version if st.previous else None,
        "scoreMetric": metric,
        "score": st.candidate_scores.get(metric),
        "productionScore": st.production_scores.get(metric),
    }
    times = sorted(st.phase_times.values())
    if times:
        extras["startedAt"] = times[0].isoformat()
    if st.done:
        extras["finishedAt"] = st.phase_times[st.phase].isoformat()
    return out | {k: v for k, v in extras.items() if v is not None}


def step(
    name: str,
    spec: PromotionRequest,
    status: PromotionStatus,
    platform: KubePlatform,
    gates: GateRunner,
    settings: Settings,
    is_live: Callable[[str], bool],
    now: datetime | None = None,
) -> PromotionStatus:
    """Advance one Promotion by one step (see module docstring); returns the new status."""
    now = now or datetime.now(UTC)
    if status.done:
        platform.release()  # idempotent: a crash may have come between status and unlock
        return status
    try:
        if status.phase is Phase.PENDING and status.to_colour is None:
            holder = platform.acquire(is_live)
            if holder is not None:
                return _waiting(status, holder, now)
            if spec.rollback:
                return _start_rollback(status, platform, now)
        if spec.rollback:
            return _continue_rollback(status, platform, now)
        new = reconcile(spec.machine_spec(settings), status, platform, gates, now)
    except TemporaryError:
        raise
    except KubeError as e:
        if e.status in (0, 409, 429) or e.status >= 500:
            raise TemporaryError(str(e), delay=2.0) from e
        new = give_up(status, platform, f"Kubernetes API: {e}", now, spec.rollback)
    except FlipserveError as e:
        new = give_up(status, platform, str(e), now, spec.rollback)
    if new.done:
        platform.release()
    return new


def give_up(
    status: PromotionStatus,
    platform: KubePlatform,
    reason: str,
    now: datetime,
    rollback_request: bool = False,
) -> PromotionStatus:
    """A permanent error: roll back when the API or the production record may have moved.

    Once a promotion is in Switching the record may name the target, and after
    ``switched_at`` the API may serve it: the machine's rollback step puts both
    back (a first deployment, or an API that never moved, then ends Failed).
    Earlier, and for rollback requests that have not switched, fail where we are.
    """
    st = status.model_copy(deep=True)
    may_have_moved = st.switched_at is not None or st.phase is Phase.SWITCHING
    if may_have_moved and not rollback_request:
        st.rolling_back, st.rollback_reason, st.reason = True, reason, f"rolling back: {reason}"
        return st
    if rollback_request and st.switched_at is not None:
        st.reason = f"retrying the rollback: {reason}"
        return st
    if st.to_colour is not None:
        with contextlib.suppress(FlipserveError):  # best effort: no user reaches the preview
            platform.stop_preview(st.to_colour)
    return _enter(st, Phase.FAILED, now, reason)


def _waiting(status: PromotionStatus, holder: str, now: datetime) -> PromotionStatus:
    st = status.model_copy(deep=True)
    st.phase_times.setdefault(Phase.PENDING, now)
    st.reason = f"waiting: promotion {holder} of this release is still running"
    return st


def _start_rollback(
    status: PromotionStatus, platform: KubePlatform, now: datetime
) -> PromotionStatus:
    st = status.model_copy(deep=True)
    st.phase_times.setdefault(Phase.PENDING, now)
    state = platform.state()
    previous = state.target("previous-")
    active = platform.active()
    to = rollback_target(active, previous, state.held(state.active_colour.other))
    st.from_colour, st.to_colour = state.active_colour, to
    st.previous = state.target()
    st.last_promoted = previous
    return _enter(
        st, Phase.SWITCHING, now, f"rolling back to {to} ({previous and previous.version})"
    )


def _continue_rollback(
    status: PromotionStatus, platform: KubePlatform, now: datetime
) -> PromotionStatus:
    st = status.model_copy(deep=True)
    assert st.to_colour is not None
    if st.switched_at is None:
        platform.switch(st.to_colour, st.last_promoted)
        st.switched_at = now
        st.reason = f"switched the API back to {st.to_colour}"
        return st
    if not platform.rollout_done(st.to_colour):
        st.reason = f"waiting for the API rollout to {st.to_colour}"
        return st
    # Then the store: the record names the model now served again (compare-and-swap).
    note = restore_production(platform, st.previous, st.last_promoted)
    if note is None:
        st.reason = "the production record changed while it was being restored; reading it again"
        return st
    return _enter(st, Phase.ROLLED_BACK, now, f"rolled back to {st.to_colour} on request; {note}")


def _enter(st: PromotionStatus, phase: Phase, now: datetime, reason: str) -> PromotionStatus:
    st.phase, st.reason = phase, reason
    st.phase_times[phase] = now
    return st
