"""The promotion state machine: one idempotent step per ``reconcile`` call.

``reconcile(spec, status, platform, gates, now)`` looks at the current phase,
asks the platform how the world is, makes one pure decision and, at most,
one kind of side effect, and returns the new status. The caller (the local
runner or the Kubernetes controller) persists the status and calls again
until ``status.done``. A crash between a side effect and persisting the
status is safe because every platform call is idempotent and every step
re-reads the world before deciding: re-running a step does the same thing
or notices it was done.

The sequence follows Argo Rollouts' blue/green: fill the idle colour, bring
up a preview on it, analyse before promotion (score, drift), switch the
active side, analyse after promotion (observe), roll back on a breach.

The store's production record is the baseline and the outcome: the score
gate reads it (and its ETag) once; the switch first writes it by
compare-and-swap against that ETag and only then moves the active colour,
so of two promotions that passed their gates against the same record only
one moves its API; the other ends Failed. A rollback writes the record back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Literal

from flipserve.errors import ConflictError, PromotionError
from flipserve.promotion import gates as g
from flipserve.promotion.platform import (
    ActiveModel,
    CopyProgress,
    CopyState,
    Platform,
    Production,
)
from flipserve.promotion.status import (
    Colour,
    GateResult,
    ModelTarget,
    ObservedMetrics,
    Phase,
    PromotionSpec,
    PromotionStatus,
)

MIN_DRIFT_SAMPLE = 20
"""Fewer live texts than this make a drift test meaningless: the gate is skipped."""

Step = Callable[[PromotionSpec, PromotionStatus, Platform, g.GateRunner, datetime], None]


def reconcile(
    spec: PromotionSpec,
    status: PromotionStatus,
    platform: Platform,
    gates: g.GateRunner,
    now: datetime,
) -> PromotionStatus:
    """Advance the promotion by one step; a terminal status is returned unchanged."""
    st = status.model_copy(deep=True)
    if st.done:
        return st
    if not st.phase_times:
        st.phase_times[st.phase] = now
    step = _roll_back if st.rolling_back else _STEPS[st.phase]
    step(spec, st, platform, gates, now)
    return st


def abort(
    status: PromotionStatus, platform: Platform, now: datetime, reason: str
) -> PromotionStatus:
    """Give up on a promotion whose steps keep erroring: fail it, or roll back if switched.

    In Switching before the API moved, the production record may already name
    the target: the rollback step puts it back and then fails the promotion.
    """
    st = status.model_copy(deep=True)
    if st.done or st.rolling_back:
        return st
    if st.switched_at is not None:
        _start_rollback(st, f"gave up after the switch: {reason}")
    elif st.phase is Phase.SWITCHING:
        _start_rollback(st, f"gave up: {reason}")
    else:
        _fail(st, platform, now, f"gave up: {reason}")
    return st


# --- pure decisions -----------------------------------------------------------


def admission(running: Sequence[str]) -> str | None:
    """Why a new promotion must wait (another one of the release is running), or None."""
    if running:
        return f"waiting: promotion {running[0]} of this release is still running"
    return None


def choose_colours(active: ActiveModel | None) -> tuple[Colour | None, Colour]:
    """(from, to): the idle colour is the one not serving; blue on a fresh install."""
    if active is None:
        return None, Colour.BLUE
    return active.colour, active.colour.other


def already_serving(active: ActiveModel | None, target: ModelTarget) -> bool:
    return (
        active is not None and active.target is not None and active.target.digest == target.digest
    )


def copy_decision(progress: CopyProgress, elapsed: float, timeout: float) -> tuple[Phase, str]:
    """The phase after looking at the copy: stay in Copying, go on to Verifying, or fail."""
    if progress.state is CopyState.SUCCEEDED:
        return Phase.VERIFYING, "copy done"
    if progress.state is CopyState.FAILED:
        return Phase.FAILED, f"copy failed: {progress.message}"
    if elapsed > timeout:
        return Phase.FAILED, f"copy did not finish within {timeout:.0f}s"
    if progress.state is CopyState.ABSENT:
        return Phase.COPYING, "starting the copy"
    pct = "" if progress.fraction is None else f" ({progress.fraction:.0%})"
    return Phase.COPYING, f"copying{pct}"


def timed_out(elapsed: float, timeout: float) -> bool:
    return elapsed > timeout


def first_failed(results: Sequence[GateResult]) -> GateResult | None:
    return next((r for r in results if not r.passed), None)


def observe_decision(
    observed: ObservedMetrics, spec: PromotionSpec, elapsed: float
) -> tuple[Phase | None, str]:
    """(Promoted | None to keep watching, reason); a breach is reported by ``observe_breach``."""
    if elapsed >= spec.observe_seconds:
        return Phase.PROMOTED, f"observed {elapsed:.0f}s without a breach"
    return None, f"observing for {spec.observe_seconds:.0f}s"


def recorded_target(spec: PromotionSpec, st: PromotionStatus) -> ModelTarget:
    """The target as the production record names it: with the scores its gate measured."""
    return spec.target.model_copy(
        update={"scores": dict(st.candidate_scores or spec.target.scores)}, deep=True
    )


def record_conflict(
    current: Production | None, target: ModelTarget, read_etag: str | None
) -> Literal["recorded", "busy", "lost"]:
    """Why writing the record for ``target`` against ``read_etag`` raised ConflictError.

    ``"recorded"``: the record already names the target (an earlier run of the
    step wrote it and crashed before its status was saved); ``"busy"``: it
    has not changed since it was read (a contended lock or a transient 409),
    so try again; ``"lost"``: another promoter changed it.
    """
    if current is not None and current.target.digest == target.digest:
        return "recorded"
    if (current.etag if current else None) == read_etag:
        return "busy"
    return "lost"


def describe(record: Production | None) -> str:
    if record is None:
        return "there is no production record"
    by = f" by {record.updated_by}" if record.updated_by else ""
    return (
        f"it names {record.target.version} ({record.target.digest[:12]}), "
        f"generation {record.generation}{by}"
    )


def restore_production(
    platform: Platform, rolled_back: ModelTarget | None, restore: ModelTarget | None
) -> str | None:
    """After a rollback: make the production record name ``restore`` again (compare-and-swap).

    Only a record that still names ``rolled_back`` is rewritten; one that
    someone else changed since is left as it is. Idempotent: a record that
    already names ``restore`` is not written again. Returns what happened, for
    the status's reason, or None when the record changed between the read and
    the write (call again).
    """
    current = platform.production()
    if current is None:
        return "there is no production record to restore"
    if restore is not None and current.target.digest == restore.digest:
        return f"the production record names {restore.version} (generation {current.generation})"
    if rolled_back is None or current.target.digest != rolled_back.digest:
        return f"the production record was left as it is: {describe(current)}"
    if restore is None:
        return (
            f"the production record still names {rolled_back.version}: "
            "there is no earlier model to name"
        )
    try:
        written = platform.write_production(restore, current.etag)
    except ConflictError:
        return None
    return f"the production record names {restore.version} again (generation {written.generation})"


def rollback_target(
    active: ActiveModel | None, previous: ModelTarget | None, on_idle: ModelTarget | None
) -> Colour:
    """The colour a manual rollback switches to: the idle one, if it still holds ``previous``.

    ``previous`` is the model that served before the last switch; ``on_idle`` is
    what the idle colour's volume holds now. They differ after a promotion that
    copied its candidate onto the idle colour and was then refused (or failed):
    switching there would serve the refused model, so the rollback is refused
    and the user is told to promote the previous model again.
    """
    if active is None:
        raise PromotionError("nothing is being served, so there is nothing to roll back")
    idle = active.colour.other
    if previous is not None and on_idle is not None and on_idle.digest == previous.digest:
        return idle
    if on_idle is None:
        raise PromotionError(f"the idle colour {idle} holds no ready model to roll back to")
    if previous is None:
        raise PromotionError(
            f"the idle colour {idle} holds {on_idle.version}, which never served: "
            "there is no previous model to roll back to"
        )
    raise PromotionError(
        f"the idle colour {idle} now holds {on_idle.version}, not {previous.version} "
        f"(a later promotion copied it there); promote {previous.version} "
        f"({previous.uri}) again to go back to it"
    )


# --- steps (one per phase) ------------------------------------------------------


def _enter(st: PromotionStatus, phase: Phase, now: datetime, reason: str) -> None:
    st.phase = phase
    st.phase_times[phase] = now
    st.reason = reason


def _elapsed(st: PromotionStatus, now: datetime) -> float:
    since = st.phase_times.get(st.phase, now)
    return (now - since).total_seconds()


def _colours(st: PromotionStatus) -> Colour:
    if st.to_colour is None:
        raise PromotionError(f"promotion in {st.phase} has no target colour (corrupt status)")
    return st.to_colour


def _fail(st: PromotionStatus, platform: Platform, now: datetime, reason: str) -> None:
    """Stop before the switch: clean up the preview; the active colour never moved."""
    if st.to_colour is not None:
        platform.stop_preview(st.to_colour)
    _enter(st, Phase.FAILED, now, reason)


def _pending(
    spec: PromotionSpec, st: PromotionStatus, platform: Platform, gr: g.GateRunner, now: datetime
) -> None:
    active = platform.active()
    if already_serving(active, spec.target):
        assert active is not None
        _enter(st, Phase.FAILED, now, f"{spec.target.version} is already served on {active.colour}")
        return
    st.from_colour, st.to_colour = choose_colours(active)
    st.previous = active.target if active else None
    _enter(st, Phase.COPYING, now, f"copying {spec.target.version} to {st.to_colour}")


def _copying(
    spec: PromotionSpec, st: PromotionStatus, platform: Platform, gr: g.GateRunner, now: datetime
) -> None:
    to = _colours(st)
    progress = platform.copy_progress(to, spec.target)
    phase, reason = copy_decision(progress, _elapsed(st, now), spec.copy_timeout_seconds)
    if progress.state is CopyState.ABSENT and phase is Phase.COPYING:
        platform.start_copy(to, spec.target)
    st.copy_progress = 1.0 if phase is Phase.VERIFYING else progress.fraction
    if phase is Phase.FAILED:
        _fail(st, platform, now, reason)
    elif phase is not st.phase:
        _enter(st, phase, now, reason)
    else:
        st.reason = reason


def _verifying(
    spec: PromotionSpec, st: PromotionStatus, platform: Platform, gr: g.GateRunner, now: datetime
) -> None:
    to = _colours(st)
    problem = platform.verify(to, spec.target)
    if problem is not None:
        _fail(st, platform, now, f"volume {to} failed verification: {problem}")
        return
    platform.start_preview(to)
    if platform.preview_url(to) is not None:
        _enter(st, Phase.GATING, now, f"preview of {to} is ready")
    elif timed_out(_elapsed(st, now), spec.ready_timeout_seconds):
        _fail(st, platform, now, f"preview of {to} not ready within {spec.ready_timeout_seconds}s")
    else:
        st.reason = f"waiting for the preview of {to}"


def _gating(
    spec: PromotionSpec, st: PromotionStatus, platform: Platform, gr: g.GateRunner, now: datetime
) -> None:
    to = _colours(st)
    url = platform.preview_url(to)
    if url is None:  # the preview died (or a restarted platform lost it): bring it back
        if timed_out(_elapsed(st, now), spec.ready_timeout_seconds):
            _fail(st, platform, now, f"preview of {to} went away and did not come back")
            return
        platform.start_preview(to)
        st.reason = f"waiting for the preview of {to}"
        return
    if st.gate("score") is None:
        _score_gate(spec, st, platform, gr, url)
    elif st.gate("drift") is None:
        _drift_gate(spec, st, platform, gr, url, to)
    failed = first_failed(st.gates)
    if failed is not None:
        _fail(st, platform, now, f"{failed.name} gate failed: {failed.detail}")
    elif st.gate("score") and st.gate("drift"):
        _enter(st, Phase.SWITCHING, now, f"gates passed; switching the API to {to}")


def _score_gate(
    spec: PromotionSpec, st: PromotionStatus, platform: Platform, gr: g.GateRunner, url: str
) -> None:
    # Read once, here: the switch writes the record against this ETag, so a
    # record changed since (another promoter won) fails this promotion there.
    production = platform.production()
    st.production_etag = production.etag if production else None
    st.production_before = production.target if production else None
    st.production_scores = dict(production.target.scores) if production else {}
    st.candidate_scores = gr.score(url)
    result = g.score_verdict(
        st.candidate_scores, st.production_scores, spec.score_metric, spec.score_margin
    )
    st.gates.append(result)
    st.reason = f"score gate: {result.detail}"


def _drift_gate(
    spec: PromotionSpec,
    st: PromotionStatus,
    platform: Platform,
    gr: g.GateRunner,
    url: str,
    to: Colour,
) -> None:
    if spec.skip_drift_gate or st.from_colour is None:
        result = g.skipped_drift("no live traffic yet" if st.from_colour is None else "disabled")
    else:
        # Repeats (retries, load tests) are not independent evidence: test distinct texts.
        sample = list(dict.fromkeys(platform.traffic_sample(spec.drift_sample_size)))
        if len(sample) < MIN_DRIFT_SAMPLE:
            result = g.skipped_drift(f"only {len(sample)} live texts (< {MIN_DRIFT_SAMPLE})")
        else:
            st.drift_p_value = gr.drift(to, url, sample)
            result = g.drift_verdict(st.drift_p_value, spec.drift_p_value, len(sample))
    st.gates.append(result)
    st.reason = f"drift gate: {result.detail}"


def _switching(
    spec: PromotionSpec, st: PromotionStatus, platform: Platform, gr: g.GateRunner, now: datetime
) -> None:
    to = _colours(st)
    if st.switched_at is None:
        if st.production_generation is None:  # the record first, then the API
            _record_production(spec, st, platform, now, to)
            return
        changed = platform.switch(to, recorded_target(spec, st))
        st.switched_at = now
        st.reason = f"switched the API to {to}" if changed else f"the API already served {to}"
        return
    if not platform.rollout_done(to):
        if timed_out((now - st.switched_at).total_seconds(), spec.rollout_timeout_seconds):
            _start_rollback(st, f"rollout to {to} not done within {spec.rollout_timeout_seconds}s")
        else:
            st.reason = f"waiting for the API rollout to {to}"
        return
    platform.stop_preview(to)
    if st.from_colour is not None:  # the observe window starts now (none for a first deployment)
        st.observe_baseline = platform.observe_start(to)
    _enter(st, Phase.OBSERVING, now, f"the API serves {to}; observing")


def _record_production(
    spec: PromotionSpec, st: PromotionStatus, platform: Platform, now: datetime, to: Colour
) -> None:
    """Write the store's record for the target, against the ETag the score gate read."""
    target = recorded_target(spec, st)
    try:
        written = platform.write_production(target, st.production_etag)
    except ConflictError:
        current = platform.production()
        outcome = record_conflict(current, target, st.production_etag)
        if outcome == "lost":
            _fail(
                st,
                platform,
                now,
                f"the production record changed since the score gate read it "
                f"({describe(current)}): another promotion won; the active colour did not move",
            )
            return
        if outcome == "busy":
            if timed_out(_elapsed(st, now), spec.rollout_timeout_seconds):
                _fail(st, platform, now, "could not write the production record (busy)")
            else:
                st.reason = "the production record is busy; writing it again"
            return
        assert current is not None
        written = current  # an earlier run of this step wrote it
    st.production_generation = written.generation
    st.reason = (
        f"production record: {spec.target.version} (generation {written.generation}); "
        f"switching the API to {to}"
    )


def _observing(
    spec: PromotionSpec, st: PromotionStatus, platform: Platform, gr: g.GateRunner, now: datetime
) -> None:
    to = _colours(st)
    elapsed = _elapsed(st, now)
    if st.from_colour is not None:  # a first deployment has nothing to roll back to
        st.observed = platform.observe(to, elapsed, st.observe_baseline or {})
        breach = g.observe_breach(st.observed, spec)
        if breach is not None:
            st.gates.append(g.observe_verdict(st.observed, spec))
            _start_rollback(st, f"observe gate failed: {breach}")
            return
        phase, reason = observe_decision(st.observed, spec, elapsed)
        if phase is None:
            st.reason = reason
            return
        st.gates.append(g.observe_verdict(st.observed, spec))
    st.last_promoted = spec.target
    _enter(st, Phase.PROMOTED, now, f"{spec.target.version} promoted on {to}")


def _start_rollback(st: PromotionStatus, reason: str) -> None:
    st.rolling_back = True
    st.rollback_reason = reason
    st.reason = reason


def _roll_back(
    spec: PromotionSpec, st: PromotionStatus, platform: Platform, gr: g.GateRunner, now: datetime
) -> None:
    """Switch back to the previous colour, wait for that rollout, then restore the record.

    The API goes back first (users are hurting now; the store may be the thing
    that is down), then the production record is written back by
    compare-and-swap. When the API never moved (given up in Switching), only
    the record is restored and the promotion ends Failed.
    """
    back = st.from_colour
    moved = st.switched_at is not None
    if moved and back is not None:
        platform.switch(back, st.previous)
        if not platform.rollout_done(back):
            st.reason = f"rolling back to {back}"
            return
    note = restore_production(platform, spec.target, st.production_before or st.previous)
    if note is None:
        st.reason = "the production record changed while it was being restored; reading it again"
    elif not moved:
        _fail(st, platform, now, f"{st.rollback_reason}; {note}")
    elif back is None:  # a first deployment: there is no colour to return to
        _enter(
            st,
            Phase.FAILED,
            now,
            f"{st.rollback_reason}; no previous colour to return to; {note}",
        )
    else:
        _enter(st, Phase.ROLLED_BACK, now, f"rolled back to {back}: {st.rollback_reason}; {note}")


_STEPS: dict[Phase, Step] = {
    Phase.PENDING: _pending,
    Phase.COPYING: _copying,
    Phase.VERIFYING: _verifying,
    Phase.GATING: _gating,
    Phase.SWITCHING: _switching,
    Phase.OBSERVING: _observing,
}
