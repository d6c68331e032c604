"""Every transition and every crash point of the promotion state machine (no I/O)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from flipserve.errors import ConflictError, PromotionError
from flipserve.promotion import machine
from flipserve.promotion.platform import ActiveModel, CopyProgress, CopyState, Production
from flipserve.promotion.status import (
    Colour,
    ModelTarget,
    ObservedMetrics,
    Phase,
    PromotionSpec,
    PromotionStatus,
    ServerCounters,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
OLD = ModelTarget(version="v1", uri="file:///s/v1", digest="a" * 64)
NEW = ModelTarget(version="v2", uri="file:///s/v2", digest="b" * 64)
RIVAL = ModelTarget(version="v9", uri="file:///s/v9", digest="c" * 64, scores={"macro_f1": 0.9})
OLD_RECORD = Production(
    target=OLD.model_copy(update={"scores": {"macro_f1": 0.60}}),
    generation=1,
    etag="etag-1",
    updated_by="an earlier promotion",
)


@dataclass
class FakePlatform:
    """An in-memory world: copies, previews and rollouts finish after a few polls."""

    active_colour: Colour | None = Colour.BLUE
    volumes: dict[Colour, ModelTarget] = field(default_factory=lambda: {Colour.BLUE: OLD})
    record: Production | None = field(default_factory=lambda: OLD_RECORD.model_copy(deep=True))
    """The store's production record (compare-and-swap on its etag)."""
    busy: int = 0
    """How many record writes fail as if the record were locked, though it did not change."""
    copy_polls: int = 2
    copy_fails: str | None = None
    preview_polls: int = 1
    rollout_polls: int = 1
    stuck: Colour | None = None
    corrupt: bool = False
    observed: ObservedMetrics = field(default_factory=lambda: ObservedMetrics(requests=100))
    traffic: list[str] = field(default_factory=lambda: [f"hello {i}" for i in range(50)])
    copies_started: list[Colour] = field(default_factory=list)
    switches: list[Colour] = field(default_factory=list)
    previews: set[Colour] = field(default_factory=set)
    writes: list[str] = field(default_factory=list)
    """Versions written to the production record, in order."""
    events: list[str] = field(default_factory=list)
    """Record writes and API switches, in the order they happened."""
    windows: list[Colour] = field(default_factory=list)
    """The colours an observe window was started on."""
    baselines: list[dict[str, ServerCounters]] = field(default_factory=list)
    """The baseline each ``observe`` was given."""
    _copy_seen: int = 0
    _preview_seen: int = 0
    _rollout_seen: int = 0

    def active(self) -> ActiveModel | None:
        if self.active_colour is None:
            return None
        return ActiveModel(colour=self.active_colour, target=self.volumes.get(self.active_colour))

    def production(self) -> Production | None:
        return self.record.model_copy(deep=True) if self.record else None

    def write_production(self, target: ModelTarget, expected_etag: str | None) -> Production:
        if self.busy:
            self.busy -= 1
            raise ConflictError("production.json: locked by another writer")
        if expected_etag != (self.record.etag if self.record else None):
            raise ConflictError("production.json: changed by another writer")
        generation = self.record.generation + 1 if self.record else 1
        self.record = Production(
            target=target, generation=generation, etag=f"etag-{generation}", updated_by="test"
        )
        self.writes.append(target.version)
        self.events.append(f"record {target.version}")
        return self.record.model_copy(deep=True)

    def rival_writes(self, target: ModelTarget = RIVAL) -> None:
        """Another promoter, sharing the store, changes the record."""
        generation = self.record.generation + 1 if self.record else 1
        self.record = Production(
            target=target, generation=generation, etag=f"rival-{generation}", updated_by="rival"
        )

    def start_copy(self, colour: Colour, target: ModelTarget) -> None:
        assert colour != self.active_colour, "copy into the active colour"
        if colour not in self.copies_started:
            self.copies_started.append(colour)

    def copy_progress(self, colour: Colour, target: ModelTarget) -> CopyProgress:
        if colour not in self.copies_started:
            return CopyProgress(state=CopyState.ABSENT)
        if self.copy_fails:
            return CopyProgress(state=CopyState.FAILED, message=self.copy_fails)
        self._copy_seen += 1
        if self._copy_seen <= self.copy_polls:
            return CopyProgress(state=CopyState.RUNNING, fraction=0.5)
        self.volumes[colour] = target
        return CopyProgress(state=CopyState.SUCCEEDED, fraction=1.0)

    def verify(self, colour: Colour, target: ModelTarget) -> str | None:
        return "digest mismatch" if self.corrupt else None

    def start_preview(self, colour: Colour) -> None:
        self.previews.add(colour)

    def preview_url(self, colour: Colour) -> str | None:
        if colour not in self.previews:
            return None
        self._preview_seen += 1
        return "http://preview" if self._preview_seen > self.preview_polls else None

    def stop_preview(self, colour: Colour) -> None:
        self.previews.discard(colour)

    def traffic_sample(self, n: int) -> list[str]:
        return self.traffic[:n]

    def switch(self, colour: Colour, target: ModelTarget | None) -> bool:
        if self.active_colour == colour:
            return False
        self.active_colour = colour
        self.switches.append(colour)
        self.events.append(f"switch {colour}")
        self._rollout_seen = 0
        return True

    def rollout_done(self, colour: Colour) -> bool:
        self._rollout_seen += 1
        if colour == self.stuck:
            return False
        return self.active_colour == colour and self._rollout_seen > self.rollout_polls

    def observe_start(self, colour: Colour) -> dict[str, ServerCounters]:
        self.windows.append(colour)
        return {"api-0#0": ServerCounters(requests=1000)}

    def observe(
        self, colour: Colour, since_seconds: float, baseline: dict[str, ServerCounters]
    ) -> ObservedMetrics:
        self.baselines.append(baseline)
        return self.observed


@dataclass
class FakeGates:
    scores: dict[str, float] = field(default_factory=lambda: {"macro_f1": 0.70, "accuracy": 0.7})
    p_value: float = 0.5
    score_calls: int = 0

    def score(self, preview_url: str) -> dict[str, float]:
        self.score_calls += 1
        return dict(self.scores)

    def drift(self, colour: Colour, preview_url: str, texts: list[str]) -> float:
        return self.p_value


def _spec(**kw: object) -> PromotionSpec:
    return PromotionSpec.model_validate({"target": NEW, "observe_seconds": 10, **kw})


def _run(
    platform: FakePlatform,
    gates: FakeGates,
    spec: PromotionSpec | None = None,
    tick: float = 1.0,
    crash_at: int | None = None,
    max_steps: int = 200,
    before: Callable[[PromotionStatus], None] | None = None,
) -> tuple[PromotionStatus, list[Phase]]:
    """Reconcile until done; at step ``crash_at`` throw the result away (a crash before saving).

    ``before`` sees the saved status before each step (to change the world there).
    """
    spec = spec or _spec()
    status, now, phases = PromotionStatus(), T0, []
    for i in range(max_steps):
        if before is not None:
            before(status)
        new = machine.reconcile(spec, status, platform, gates, now)
        if i != crash_at:
            status = new
        if not phases or phases[-1] != status.phase:
            phases.append(status.phase)
        if status.done:
            return status, phases
        now += timedelta(seconds=tick)
    raise AssertionError(f"not done after {max_steps} steps: {status}")


HAPPY = [
    Phase.PENDING,
    Phase.COPYING,
    Phase.VERIFYING,
    Phase.GATING,
    Phase.SWITCHING,
    Phase.OBSERVING,
    Phase.PROMOTED,
]


def test_happy_path_goes_through_every_phase_in_order_and_records_production() -> None:
    platform = FakePlatform()
    status, phases = _run(platform, FakeGates())
    assert phases == HAPPY[1:]
    assert status.from_colour is Colour.BLUE and status.to_colour is Colour.GREEN
    assert platform.active_colour is Colour.GREEN
    assert platform.switches == [Colour.GREEN]
    # The store's record is written (once) before the API moves, with the measured scores.
    assert platform.events == ["record v2", "switch green"]
    assert platform.record is not None and platform.record.generation == 2
    assert platform.record.target.digest == NEW.digest
    assert platform.record.target.scores == {"macro_f1": 0.70, "accuracy": 0.7}
    assert status.production_generation == 2
    assert platform.previews == set()
    assert status.last_promoted == NEW and status.previous == OLD
    assert [g.name for g in status.gates] == ["score", "drift", "observe"]
    assert all(g.passed for g in status.gates)
    assert status.candidate_scores["macro_f1"] == 0.70
    assert status.production_scores["macro_f1"] == 0.60
    assert status.drift_p_value == 0.5
    assert set(status.phase_times) == set(HAPPY)
    assert status.phase_times[Phase.PROMOTED] > status.phase_times[Phase.PENDING]


def test_the_observe_window_starts_when_observing_does_and_every_reading_is_against_it() -> None:
    """The baseline is taken once, as the phase is entered, and kept in the status."""
    platform = FakePlatform()
    entered: list[PromotionStatus] = []

    def watch(st: PromotionStatus) -> None:
        if st.phase is Phase.OBSERVING and not entered:
            entered.append(st.model_copy(deep=True))

    status, _ = _run(platform, FakeGates(), before=watch)

    assert platform.windows == [Colour.GREEN]
    baseline = {"api-0#0": ServerCounters(requests=1000)}
    assert entered and entered[0].observe_baseline == baseline
    assert status.observe_baseline == baseline
    assert platform.baselines and all(b == baseline for b in platform.baselines)


def test_a_first_deployment_starts_no_observe_window() -> None:
    platform = FakePlatform(active_colour=None, volumes={})
    status, _ = _run(platform, FakeGates())
    assert status.phase is Phase.PROMOTED
    assert platform.windows == [] and status.observe_baseline is None


def test_phase_times_are_monotonic_along_the_path() -> None:
    status, _ = _run(FakePlatform(), FakeGates())
    times = [status.phase_times[p] for p in HAPPY]
    assert times == sorted(times)


CRASH_POINTS = 40
"""Every step of the runs below: ``_steps`` checks each run is shorter than this."""


def _steps(platform: FakePlatform, gates: FakeGates) -> int:
    status, now, n = PromotionStatus(), T0, 0
    while not status.done:
        status = machine.reconcile(_spec(), status, platform, gates, now)
        now, n = now + timedelta(seconds=1), n + 1
    return n


def test_the_crash_tests_cover_every_step() -> None:
    assert _steps(FakePlatform(), FakeGates()) < CRASH_POINTS
    failing = FakePlatform(observed=ObservedMetrics(requests=100, errors=50))
    assert _steps(failing, FakeGates()) < CRASH_POINTS
    assert _steps(FakePlatform(), FakeGates(scores={"macro_f1": 0.1})) < 12


@pytest.mark.parametrize("crash_at", range(CRASH_POINTS))
def test_a_crash_before_saving_any_step_ends_the_same_way(crash_at: int) -> None:
    clean_platform = FakePlatform()
    clean, _ = _run(clean_platform, FakeGates())
    platform = FakePlatform()
    status, _ = _run(platform, FakeGates(), crash_at=crash_at)
    assert status.phase is Phase.PROMOTED
    assert platform.switches == [Colour.GREEN]  # switched exactly once, never flapped
    assert platform.copies_started == [Colour.GREEN]
    # Written once, before the switch, even when the write's step was thrown away.
    assert platform.events == ["record v2", "switch green"]
    assert platform.record == clean_platform.record
    assert status.production_generation == 2
    assert platform.previews == set()
    assert [g.name for g in status.gates] == [g.name for g in clean.gates]


@pytest.mark.parametrize("crash_at", range(CRASH_POINTS))
def test_a_crash_during_a_rollback_still_ends_rolled_back_on_the_old_colour(crash_at: int) -> None:
    platform = FakePlatform(observed=ObservedMetrics(requests=100, errors=50))
    status, _ = _run(platform, FakeGates(), crash_at=crash_at)
    assert status.phase is Phase.ROLLED_BACK
    assert platform.active_colour is Colour.BLUE
    assert platform.switches == [Colour.GREEN, Colour.BLUE]
    # The record went to v2 before the switch and back to v1 (its scores) after the rollback.
    assert platform.events == ["record v2", "switch green", "switch blue", "record v1"]
    assert platform.record is not None and platform.record.generation == 3
    assert platform.record.target == OLD_RECORD.target


@pytest.mark.parametrize("crash_at", range(12))
def test_a_crash_during_a_failing_gate_still_fails_without_switching(crash_at: int) -> None:
    platform = FakePlatform()
    status, _ = _run(platform, FakeGates(scores={"macro_f1": 0.1}), crash_at=crash_at)
    assert status.phase is Phase.FAILED
    assert platform.switches == [] and platform.active_colour is Colour.BLUE
    assert platform.previews == set()
    assert platform.writes == [] and platform.record == OLD_RECORD


def test_pending_chooses_the_idle_colour_and_goes_to_copying() -> None:
    platform = FakePlatform(active_colour=Colour.GREEN, volumes={Colour.GREEN: OLD})
    st = machine.reconcile(_spec(), PromotionStatus(), platform, FakeGates(), T0)
    assert st.phase is Phase.COPYING
    assert (st.from_colour, st.to_colour) == (Colour.GREEN, Colour.BLUE)
    assert st.previous == OLD


def test_pending_fails_when_the_target_is_already_served() -> None:
    platform = FakePlatform(volumes={Colour.BLUE: NEW})
    st = machine.reconcile(_spec(), PromotionStatus(), platform, FakeGates(), T0)
    assert st.phase is Phase.FAILED
    assert "already served on blue" in st.reason
    assert platform.copies_started == []


def test_copying_starts_the_copy_once_and_reports_progress() -> None:
    platform = FakePlatform(copy_polls=5)
    st = PromotionStatus(phase=Phase.COPYING, from_colour=Colour.BLUE, to_colour=Colour.GREEN)
    for i in range(3):
        st = machine.reconcile(_spec(), st, platform, FakeGates(), T0 + timedelta(seconds=i))
    assert platform.copies_started == [Colour.GREEN]
    assert st.phase is Phase.COPYING
    assert st.copy_progress == 0.5
    assert "copying (50%)" in st.reason


def test_copy_failure_fails_the_promotion_before_any_switch() -> None:
    platform = FakePlatform(copy_fails="sha256 mismatch in model.safetensors")
    status, phases = _run(platform, FakeGates())
    assert phases[-1] is Phase.FAILED and Phase.SWITCHING not in phases
    assert "copy failed: sha256 mismatch" in status.reason
    assert platform.active_colour is Colour.BLUE


def test_copy_timeout_fails() -> None:
    platform = FakePlatform(copy_polls=1000)
    status, _ = _run(platform, FakeGates(), spec=_spec(copy_timeout_seconds=5))
    assert status.phase is Phase.FAILED
    assert "did not finish within 5s" in status.reason


def test_verification_failure_fails_and_starts_no_preview() -> None:
    platform = FakePlatform(corrupt=True)
    status, phases = _run(platform, FakeGates())
    assert phases[-2:] == [Phase.VERIFYING, Phase.FAILED]
    assert "failed verification: digest mismatch" in status.reason
    assert platform.previews == set() and platform.switches == []


def test_preview_that_never_gets_ready_fails_and_is_stopped() -> None:
    platform = FakePlatform(preview_polls=1000)
    status, _ = _run(platform, FakeGates(), spec=_spec(ready_timeout_seconds=3))
    assert status.phase is Phase.FAILED
    assert "not ready within" in status.reason
    assert platform.previews == set()


def test_preview_lost_during_gating_is_restarted() -> None:
    platform = FakePlatform(preview_polls=0)
    st = PromotionStatus(phase=Phase.GATING, from_colour=Colour.BLUE, to_colour=Colour.GREEN)
    st = machine.reconcile(_spec(), st, platform, FakeGates(), T0)
    assert st.phase is Phase.GATING and "waiting for the preview" in st.reason
    assert Colour.GREEN in platform.previews


def test_preview_lost_for_too_long_fails() -> None:
    platform = FakePlatform(preview_polls=1000)
    st = PromotionStatus(
        phase=Phase.GATING,
        phase_times={Phase.GATING: T0},
        from_colour=Colour.BLUE,
        to_colour=Colour.GREEN,
    )
    st = machine.reconcile(_spec(), st, platform, FakeGates(), T0 + timedelta(seconds=10_000))
    assert st.phase is Phase.FAILED and "went away" in st.reason


def test_worse_score_fails_with_the_active_colour_unchanged() -> None:
    platform = FakePlatform()
    status, phases = _run(platform, FakeGates(scores={"macro_f1": 0.55}))
    assert phases[-2:] == [Phase.GATING, Phase.FAILED]
    assert "score gate failed" in status.reason and "does not beat" in status.reason
    assert platform.active_colour is Colour.BLUE and platform.switches == []
    assert status.gate("drift") is None  # stops at the first failed gate


def test_equal_score_within_margin_fails() -> None:
    status, _ = _run(FakePlatform(), FakeGates(), spec=_spec(score_margin=0.2))
    assert status.phase is Phase.FAILED
    assert status.gate("score") is not None and status.gate("score").threshold == pytest.approx(0.8)  # type: ignore[union-attr]


def test_drift_fails_the_promotion() -> None:
    platform = FakePlatform()
    status, _ = _run(platform, FakeGates(p_value=0.001))
    assert status.phase is Phase.FAILED
    assert "drift gate failed" in status.reason
    assert status.drift_p_value == 0.001
    assert platform.switches == []


def test_drift_gate_is_skipped_with_too_little_live_traffic() -> None:
    platform = FakePlatform(traffic=["x", "y", "z"])
    status, _ = _run(platform, FakeGates(p_value=0.0))
    assert status.phase is Phase.PROMOTED
    drift = status.gate("drift")
    assert drift is not None and drift.passed and "skipped: only 3 live texts" in drift.detail


def test_first_deployment_goes_to_blue_skips_drift_and_observation() -> None:
    platform = FakePlatform(active_colour=None, volumes={}, record=None)
    status, _ = _run(platform, FakeGates(p_value=0.0))
    assert status.phase is Phase.PROMOTED and status.to_colour is Colour.BLUE
    assert status.from_colour is None
    assert "no production record" in status.gates[0].detail
    assert "skipped: no live traffic" in status.gates[1].detail
    assert status.production_etag is None and status.production_before is None
    assert platform.events == ["record v2", "switch blue"]
    assert platform.record is not None and platform.record.generation == 1


def test_score_gate_without_the_metric_fails() -> None:
    status, _ = _run(FakePlatform(), FakeGates(scores={"accuracy": 0.9}))
    assert status.phase is Phase.FAILED and "no 'macro_f1' score" in status.reason


def test_switching_is_idempotent_when_the_api_already_serves_the_colour() -> None:
    platform = FakePlatform(active_colour=Colour.GREEN)
    st = PromotionStatus(
        phase=Phase.SWITCHING,
        from_colour=Colour.BLUE,
        to_colour=Colour.GREEN,
        production_generation=2,  # the record was written: the API moves next
    )
    st = machine.reconcile(_spec(), st, platform, FakeGates(), T0)
    assert platform.switches == [] and "already served green" in st.reason


def test_stuck_rollout_rolls_back() -> None:
    platform = FakePlatform(stuck=Colour.GREEN)
    status, phases = _run(platform, FakeGates(), spec=_spec(rollout_timeout_seconds=5))
    assert status.phase is Phase.ROLLED_BACK
    assert Phase.OBSERVING not in phases
    assert "not done within" in status.reason
    assert platform.active_colour is Colour.BLUE
    assert platform.record is not None and platform.record.target == OLD_RECORD.target


@pytest.mark.parametrize(
    ("observed", "expected"),
    [
        (ObservedMetrics(requests=100, errors=5), "error rate 5.00%"),
        (ObservedMetrics(requests=100, p99_latency_ms=5000), "p99 latency 5000 ms"),
        (ObservedMetrics(requests=100, drift=True, drift_p_value=0.001), "drift on the new colour"),
    ],
)
def test_observe_breach_rolls_back_to_the_previous_colour(
    observed: ObservedMetrics, expected: str
) -> None:
    platform = FakePlatform(observed=observed)
    status, phases = _run(platform, FakeGates())
    assert phases[-2:] == [Phase.OBSERVING, Phase.ROLLED_BACK]
    assert expected in status.reason and status.rollback_reason.startswith("observe gate failed")
    assert platform.active_colour is Colour.BLUE
    assert platform.events == ["record v2", "switch green", "switch blue", "record v1"]
    assert platform.record is not None and platform.record.target == OLD_RECORD.target
    assert "the production record names v1 again (generation 3)" in status.reason
    observe = status.gate("observe")
    assert observe is not None and not observe.passed


def test_drift_while_observing_is_tolerated_when_configured() -> None:
    platform = FakePlatform(observed=ObservedMetrics(requests=10, drift=True))
    status, _ = _run(platform, FakeGates(), spec=_spec(rollback_on_drift=False))
    assert status.phase is Phase.PROMOTED


def test_observing_waits_for_the_whole_window() -> None:
    status, _ = _run(FakePlatform(), FakeGates(), spec=_spec(observe_seconds=30), tick=1.0)
    assert status.phase is Phase.PROMOTED
    observing = status.phase_times[Phase.PROMOTED] - status.phase_times[Phase.OBSERVING]
    assert observing >= timedelta(seconds=30)


@pytest.mark.parametrize("phase", [Phase.PROMOTED, Phase.FAILED, Phase.ROLLED_BACK])
def test_terminal_status_is_returned_unchanged(phase: Phase) -> None:
    platform = FakePlatform()
    st = PromotionStatus(phase=phase, reason="done")
    assert machine.reconcile(_spec(), st, platform, FakeGates(), T0) == st
    assert platform.copies_started == [] and platform.switches == []


def test_reconcile_does_not_mutate_its_input() -> None:
    st = PromotionStatus()
    machine.reconcile(_spec(), st, FakePlatform(), FakeGates(), T0)
    assert st == PromotionStatus()


def test_status_round_trips_through_json() -> None:
    status, _ = _run(FakePlatform(), FakeGates())
    again = PromotionStatus.model_validate_json(status.model_dump_json())
    assert again == status


def test_a_gate_that_already_ran_is_not_run_again() -> None:
    gates = FakeGates()
    _run(FakePlatform(), gates, crash_at=None)
    assert gates.score_calls == 1


def test_admission_refuses_while_another_promotion_runs() -> None:
    assert machine.admission([]) is None
    reason = machine.admission(["promote-v2"])
    assert reason is not None and "promote-v2" in reason


def test_rollback_target_is_the_idle_colour_if_it_still_holds_the_previous_model() -> None:
    active = ActiveModel(colour=Colour.GREEN, target=NEW)
    assert machine.rollback_target(active, OLD, OLD) is Colour.BLUE
    with pytest.raises(PromotionError, match="holds no ready model"):
        machine.rollback_target(active, OLD, None)  # a copy onto it never finished
    with pytest.raises(PromotionError, match="nothing is being served"):
        machine.rollback_target(None, OLD, OLD)


def test_a_rollback_onto_a_refused_candidates_volume_is_refused() -> None:
    """A refused promotion's copy overwrote the idle colour: it no longer holds OLD."""
    refused = ModelTarget(version="v3", uri="s3://b/m/v3", digest="c" * 64)
    active = ActiveModel(colour=Colour.GREEN, target=NEW)
    with pytest.raises(PromotionError) as e:
        machine.rollback_target(active, OLD, refused)
    assert str(e.value) == (
        f"the idle colour blue now holds v3, not {OLD.version} (a later promotion copied it "
        f"there); promote {OLD.version} ({OLD.uri}) again to go back to it"
    )
    with pytest.raises(PromotionError, match="which never served"):
        machine.rollback_target(active, None, refused)  # nothing served before NEW


def test_copy_decision_covers_every_copy_state() -> None:
    cases = {
        CopyState.ABSENT: Phase.COPYING,
        CopyState.RUNNING: Phase.COPYING,
        CopyState.SUCCEEDED: Phase.VERIFYING,
        CopyState.FAILED: Phase.FAILED,
    }
    for state, phase in cases.items():
        assert machine.copy_decision(CopyProgress(state=state), 0, 10)[0] is phase
    assert machine.copy_decision(CopyProgress(state=CopyState.RUNNING), 11, 10)[0] is Phase.FAILED


def test_abort_before_the_switch_fails_and_stops_the_preview() -> None:
    platform = FakePlatform()
    platform.previews.add(Colour.GREEN)
    st = PromotionStatus(phase=Phase.GATING, from_colour=Colour.BLUE, to_colour=Colour.GREEN)
    st = machine.abort(st, platform, T0, "preview answers 500")
    assert st.phase is Phase.FAILED and "gave up: preview answers 500" in st.reason
    assert platform.previews == set()


def test_abort_after_the_switch_rolls_back() -> None:
    platform = FakePlatform(active_colour=Colour.GREEN)
    st = PromotionStatus(
        phase=Phase.OBSERVING,
        phase_times={Phase.OBSERVING: T0},
        from_colour=Colour.BLUE,
        to_colour=Colour.GREEN,
        switched_at=T0,
    )
    st = machine.abort(st, platform, T0, "metrics unreachable")
    assert st.rolling_back and st.phase is Phase.OBSERVING
    for i in range(5):
        st = machine.reconcile(_spec(), st, platform, FakeGates(), T0 + timedelta(seconds=i))
    assert st.phase is Phase.ROLLED_BACK and platform.active_colour is Colour.BLUE
    assert "gave up after the switch: metrics unreachable" in st.reason


def test_abort_leaves_a_finished_promotion_alone() -> None:
    st = PromotionStatus(phase=Phase.PROMOTED)
    assert machine.abort(st, FakePlatform(), T0, "late error") == st


def test_drift_gate_tests_distinct_texts_only() -> None:
    platform = FakePlatform(traffic=["same text"] * 100)
    status, _ = _run(platform, FakeGates(p_value=0.0))
    drift = status.gate("drift")
    assert drift is not None and "skipped: only 1 live texts" in drift.detail


# --- the store's production record ------------------------------------------------------


def _in(phase: Phase, *, recorded: bool | None = None) -> Callable[[PromotionStatus], bool]:
    def check(st: PromotionStatus) -> bool:
        written = st.production_generation is not None
        return st.phase is phase and (recorded is None or written is recorded)

    return check


def _once(when: Callable[[PromotionStatus], bool], do: Callable[[], None]) -> Callable:
    """A ``before`` hook that runs ``do`` the first time the saved status matches ``when``."""
    done: list[bool] = []

    def hook(st: PromotionStatus) -> None:
        if not done and when(st):
            done.append(True)
            do()

    return hook


def test_the_score_gate_judges_against_the_store_record_and_keeps_its_etag() -> None:
    platform = FakePlatform(
        record=OLD_RECORD.model_copy(update={"etag": "etag-at-gating"}),
        previews={Colour.GREEN},
        preview_polls=0,
    )
    st = PromotionStatus(phase=Phase.GATING, from_colour=Colour.BLUE, to_colour=Colour.GREEN)
    st = machine.reconcile(_spec(), st, platform, FakeGates(), T0)
    assert st.gate("score") is not None and st.gate("score").passed  # type: ignore[union-attr]
    assert st.production_etag == "etag-at-gating"
    assert st.production_before == OLD_RECORD.target
    assert st.production_scores == {"macro_f1": 0.60}
    assert "beats production 0.6000" in st.gates[0].detail


def test_a_candidate_worse_than_the_store_record_fails_even_if_better_than_what_is_served() -> None:
    # The release serves v1 (0.60 when it was promoted); another promoter has since
    # recorded a 0.9 model as production: that is the score to beat.
    platform = FakePlatform(record=Production(target=RIVAL, generation=4, etag="e4"))
    status, _ = _run(platform, FakeGates())
    assert status.phase is Phase.FAILED
    assert "does not beat production 0.9000" in status.reason
    assert platform.writes == [] and platform.switches == []


@pytest.mark.parametrize(
    "when",
    [_in(Phase.GATING), _in(Phase.SWITCHING, recorded=False)],
    ids=["after-the-score-gate", "just-before-the-switch"],
)
def test_a_record_changed_since_gating_fails_at_the_switch_and_the_colour_never_moves(
    when: Callable[[PromotionStatus], bool],
) -> None:
    platform = FakePlatform()

    def after_the_score_gate(st: PromotionStatus) -> bool:
        return when(st) and st.gate("score") is not None

    status, phases = _run(
        platform, FakeGates(), before=_once(after_the_score_gate, platform.rival_writes)
    )
    assert phases[-2:] == [Phase.SWITCHING, Phase.FAILED]
    assert "the production record changed since the score gate read it" in status.reason
    assert "it names v9" in status.reason and "another promotion won" in status.reason
    assert platform.switches == [] and platform.active_colour is Colour.BLUE
    assert platform.previews == set()
    assert platform.writes == []  # the rival's record stands
    assert platform.record is not None and platform.record.target == RIVAL
    assert status.switched_at is None and status.production_generation is None


@pytest.mark.parametrize("crash_at_switch", [False, True])
def test_a_lost_record_race_is_failed_even_when_the_conflict_step_is_replayed(
    crash_at_switch: bool,
) -> None:
    platform = FakePlatform()
    saved: list[PromotionStatus] = []
    # Find the step that writes the record, make the rival win just before it, and
    # (optionally) throw that step's result away: the replay must fail the same way.
    _run(FakePlatform(), FakeGates(), before=saved.append)
    step = next(i for i, st in enumerate(saved) if _in(Phase.SWITCHING, recorded=False)(st))
    status, _ = _run(
        platform,
        FakeGates(),
        before=_once(_in(Phase.SWITCHING, recorded=False), platform.rival_writes),
        crash_at=step if crash_at_switch else None,
    )
    assert status.phase is Phase.FAILED and "another promotion won" in status.reason
    assert platform.switches == [] and platform.writes == []
    assert platform.record is not None and platform.record.target == RIVAL


def test_a_crash_after_the_record_write_resumes_and_switches_without_writing_again() -> None:
    platform = FakePlatform()
    spec = _spec()
    st = PromotionStatus()
    now = T0
    while st.phase is not Phase.SWITCHING:
        st = machine.reconcile(spec, st, platform, FakeGates(), now)
        now += timedelta(seconds=1)
    lost = machine.reconcile(spec, st, platform, FakeGates(), now)  # writes, then "crashes"
    assert lost.production_generation == 2 and platform.writes == ["v2"]
    assert platform.switches == []  # the record moved first; the API not yet
    resumed = machine.reconcile(spec, st, platform, FakeGates(), now)  # stale ETag: conflict
    assert resumed.phase is Phase.SWITCHING and resumed.production_generation == 2
    assert "production record: v2 (generation 2)" in resumed.reason
    assert platform.writes == ["v2"] and platform.switches == []
    status, _ = _run_from(resumed, platform, spec, now)
    assert status.phase is Phase.PROMOTED
    assert platform.events == ["record v2", "switch green"]


def test_a_crash_after_the_switch_resumes_without_switching_or_writing_again() -> None:
    platform = FakePlatform()
    spec = _spec()
    st, now = PromotionStatus(), T0
    while st.switched_at is None:
        before_switch = st
        st = machine.reconcile(spec, st, platform, FakeGates(), now)
        now += timedelta(seconds=1)
    assert platform.switches == [Colour.GREEN]
    resumed = machine.reconcile(spec, before_switch, platform, FakeGates(), now)  # status lost
    assert resumed.switched_at is not None and "the API already served green" in resumed.reason
    status, _ = _run_from(resumed, platform, spec, now)
    assert status.phase is Phase.PROMOTED
    assert platform.events == ["record v2", "switch green"]


def test_a_busy_record_is_written_again_not_failed() -> None:
    platform = FakePlatform(busy=2)
    status, _ = _run(platform, FakeGates())
    assert status.phase is Phase.PROMOTED
    assert platform.writes == ["v2"] and platform.switches == [Colour.GREEN]


def test_a_record_that_stays_busy_fails_the_promotion_before_the_switch() -> None:
    platform = FakePlatform(busy=10_000)
    status, _ = _run(platform, FakeGates(), spec=_spec(rollout_timeout_seconds=5))
    assert status.phase is Phase.FAILED and "could not write the production record" in status.reason
    assert platform.switches == [] and platform.record == OLD_RECORD


@pytest.mark.parametrize("saved", [True, False], ids=["status-saved", "status-lost"])
def test_giving_up_after_the_record_write_but_before_the_switch_restores_it_and_fails(
    saved: bool,
) -> None:
    platform = FakePlatform()
    spec = _spec()
    st, now = PromotionStatus(), T0
    while st.phase is not Phase.SWITCHING:
        st = machine.reconcile(spec, st, platform, FakeGates(), now)
        now += timedelta(seconds=1)
    written = machine.reconcile(spec, st, platform, FakeGates(), now)
    assert platform.writes == ["v2"]
    st = machine.abort(written if saved else st, platform, now, "the proxy will not start")
    assert st.rolling_back and st.phase is Phase.SWITCHING
    status, _ = _run_from(st, platform, spec, now)
    assert status.phase is Phase.FAILED
    assert "gave up: the proxy will not start" in status.reason
    assert "the production record names v1 again (generation 3)" in status.reason
    assert platform.switches == [] and platform.active_colour is Colour.BLUE
    assert platform.record is not None and platform.record.target == OLD_RECORD.target
    assert platform.previews == set()


def test_a_rollback_leaves_a_record_another_promoter_changed_since() -> None:
    platform = FakePlatform(observed=ObservedMetrics(requests=100, errors=50))
    status, _ = _run(
        platform, FakeGates(), before=_once(_in(Phase.OBSERVING), platform.rival_writes)
    )
    assert status.phase is Phase.ROLLED_BACK and platform.active_colour is Colour.BLUE
    assert "the production record was left as it is: it names v9" in status.reason
    assert platform.writes == ["v2"]
    assert platform.record is not None and platform.record.target == RIVAL


def test_a_record_changed_during_the_restore_is_read_again() -> None:
    platform = FakePlatform(observed=ObservedMetrics(requests=100, errors=50))
    real_write = platform.write_production
    raced: list[bool] = []

    def write(target: ModelTarget, etag: str | None) -> Production:
        if target.version == "v1" and not raced:  # the restore's first try loses a race
            raced.append(True)
            platform.record = platform.record.model_copy(update={"etag": "touched"})  # type: ignore[union-attr]
            raise ConflictError("changed")
        return real_write(target, etag)

    platform.write_production = write  # type: ignore[method-assign]
    status, _ = _run(platform, FakeGates())
    assert raced and status.phase is Phase.ROLLED_BACK
    assert platform.record is not None and platform.record.target == OLD_RECORD.target


def test_restore_production_decisions() -> None:
    platform = FakePlatform(record=Production(target=NEW, generation=2, etag="etag-2"))
    assert machine.restore_production(platform, NEW, OLD) == (
        "the production record names v1 again (generation 3)"
    )
    assert machine.restore_production(platform, NEW, OLD) == (
        "the production record names v1 (generation 3)"
    )  # idempotent: no second write
    assert platform.writes == ["v1"]
    note = machine.restore_production(platform, RIVAL, NEW)
    assert note is not None and "left as it is: it names v1" in note
    assert machine.restore_production(FakePlatform(record=None), NEW, OLD) == (
        "there is no production record to restore"
    )
    first = FakePlatform(record=Production(target=NEW, generation=1, etag="etag-1"))
    note = machine.restore_production(first, NEW, None)
    assert note is not None and "still names v2: there is no earlier model" in note
    assert first.writes == []


def test_record_conflict_tells_our_own_write_from_a_busy_record_from_a_lost_race() -> None:
    ours = Production(target=NEW, generation=2, etag="etag-2")
    assert machine.record_conflict(ours, NEW, "etag-1") == "recorded"
    assert machine.record_conflict(OLD_RECORD, NEW, "etag-1") == "busy"
    assert machine.record_conflict(None, NEW, None) == "busy"
    assert machine.record_conflict(OLD_RECORD, NEW, "etag-0") == "lost"
    assert machine.record_conflict(None, NEW, "etag-1") == "lost"


def _run_from(
    status: PromotionStatus, platform: FakePlatform, spec: PromotionSpec, now: datetime
) -> tuple[PromotionStatus, list[Phase]]:
    phases = [status.phase]
    for _ in range(200):
        status = machine.reconcile(spec, status, platform, FakeGates(), now)
        if phases[-1] != status.phase:
            phases.append(status.phase)
        if status.done:
            return status, phases
        now += timedelta(seconds=1)
    raise AssertionError(f"not done: {status}")
