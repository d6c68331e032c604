"""The store's production record drives local promotions: real store, real processes.

Each test runs the local platform (real copier, proxy and stand-in server
processes on loopback) with its production record in a real store: SeaweedFS
(the S3 server the chart embeds, whose conditional writes the compare-and-swap
relies on) or moto's S3 server over HTTP, or a ``file://`` directory. The score
gate's baseline comes from that record; the switch writes it by
compare-and-swap before the API moves; rollbacks write it back. Two local roots
sharing one store are two promoters (say, two clusters' controllers) racing for
the same record.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from flipserve.errors import PromotionError
from flipserve.loadgen import LoadGenerator
from flipserve.promotion import runner
from flipserve.promotion.gates import HttpGates
from flipserve.promotion.local import LocalPlatform
from flipserve.promotion.platform import Production
from flipserve.promotion.production import StoreProduction
from flipserve.promotion.status import (
    Colour,
    ModelTarget,
    Phase,
    PromotionSpec,
    PromotionStatus,
)
from flipserve.settings import Settings
from flipserve.store import PRODUCTION, ProductionModel, Store
from tests.integration.standin_support import HELDOUT, RULES, SRC, standin_command
from tests.integration.standin_support import Store as Artifacts

if TYPE_CHECKING:
    from tests.integration.conftest import S3Server

pytestmark = pytest.mark.integration

REPO = SRC.parent


class Crash(BaseException):
    """The process dies here: not an Exception, so the drive loop does not retry it."""


@pytest.fixture(params=["moto", "seaweedfs", "file"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """The production record's store: a fresh prefix in moto or SeaweedFS, or a directory."""
    if request.param == "file":
        return Settings(store_uri=(tmp_path / "prod-store").as_uri(), show_progress=False)
    server: S3Server = request.getfixturevalue(
        "s3_server" if request.param == "moto" else "seaweedfs"
    )
    return server.settings()


@pytest.fixture
def s3_only(s3_settings: Settings) -> Settings:
    return s3_settings


@pytest.fixture
def artifacts(tmp_path: Path) -> Artifacts:
    return Artifacts(tmp_path / "artifacts")


Factory = Callable[..., LocalPlatform]


@pytest.fixture
def make_platform(tmp_path: Path) -> Iterator[Factory]:
    """``make_platform(name, settings[, cls])``: a local root promoting into the store."""
    made: list[LocalPlatform] = []

    def make(
        name: str, settings: Settings, cls: type[LocalPlatform] = LocalPlatform
    ) -> LocalPlatform:
        p = cls(
            tmp_path / name,
            server_command=standin_command,
            server_env={"PYTHONPATH": str(SRC)},
            store=Store.open(settings),
            updated_by=name,
        )
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop_all()


def _gates() -> HttpGates:
    texts, labels = zip(*HELDOUT, strict=True)
    return HttpGates(texts, labels, drift_fn=lambda colour, sample: 0.5)


def _spec(target: ModelTarget, **kw: object) -> PromotionSpec:
    return PromotionSpec.model_validate({"target": target, "observe_seconds": 1.5, **kw})


def _promote(platform: LocalPlatform, target: ModelTarget, **kw: object) -> PromotionStatus:
    return runner.run_local(_spec(target, **kw), platform, _gates())


def _version(platform: LocalPlatform) -> str:
    assert platform.api_url is not None
    r = httpx.post(platform.api_url + "/predict", json={"texts": ["great day"]})
    r.raise_for_status()
    return r.headers["X-Model-Version"]


def _record(settings: Settings) -> tuple[Production, dict[str, Any]]:
    """The record as the platforms see it, and production.json's raw JSON from the store."""
    store = Store.open(settings)
    record = StoreProduction(store, "").read()
    assert record is not None
    raw, _ = store.backend.get(PRODUCTION)
    return record, json.loads(raw)


# --- the baseline and the record ----------------------------------------------------


def test_promotions_are_judged_against_the_store_record_and_write_it(
    settings: Settings, artifacts: Artifacts, make_platform: Factory
) -> None:
    platform = make_platform("release-a", settings)
    v1, v2 = artifacts.publish("v1", RULES["v1"]), artifacts.publish("v2", RULES["v2"])

    first = _promote(platform, v1)
    assert first.phase is Phase.PROMOTED, first.reason
    record, raw = _record(settings)
    assert (record.target.digest, record.generation, record.updated_by) == (
        v1.digest,
        1,
        "release-a",
    )
    assert record.target.scores == first.candidate_scores  # what the gate measured
    assert raw["model"]["version"] == "v1" and raw["updated_by"] == "release-a"

    second = _promote(platform, v2)
    assert second.phase is Phase.PROMOTED, second.reason
    # The baseline was the record v1's promotion wrote, read with its ETag.
    assert second.production_scores == first.candidate_scores
    assert second.production_etag == record.etag
    assert second.production_before is not None and second.production_before.digest == v1.digest
    assert second.production_generation == 2
    record, _ = _record(settings)
    assert (record.target.version, record.target.digest, record.generation) == ("v2", v2.digest, 2)
    assert record.target.scores["macro_f1"] == pytest.approx(1.0)
    assert "production" not in platform.load()  # state.json keeps colours, not production
    assert platform.production_scores()["macro_f1"] == pytest.approx(1.0)
    assert _version(platform) == "v2"


def test_the_baseline_is_the_store_record_not_what_this_root_served(
    s3_only: Settings, artifacts: Artifacts, make_platform: Factory
) -> None:
    platform = make_platform("release-a", s3_only)
    v1, v2 = artifacts.publish("v1", RULES["v1"]), artifacts.publish("v2", RULES["v2"])
    assert _promote(platform, v1).phase is Phase.PROMOTED
    # Another promoter, sharing the store, records a model that scores 1.0.
    store = Store.open(s3_only)
    _, etag = store.read_production()
    best = ProductionModel(
        name="flipserve",
        version="v7",
        uri="s3://elsewhere/v7",
        digest="7" * 64,
        scores={"macro_f1": 1.0},
    )
    store.write_production(best, etag, updated_by="another cluster")

    status = _promote(platform, v2)  # better than the v1 this root serves; not than v7

    assert status.phase is Phase.FAILED
    assert "score gate failed" in status.reason and "production 1.0000" in status.reason
    assert _version(platform) == "v1"
    record, _ = _record(s3_only)
    assert (record.target.version, record.generation) == ("v7", 2)


class BarrierGates(HttpGates):
    """Both racers' score gates run (so both read the record) before either goes on."""

    def __init__(self, barrier: threading.Barrier) -> None:
        texts, labels = zip(*HELDOUT, strict=True)
        super().__init__(texts, labels, drift_fn=lambda colour, sample: 0.5)
        self.barrier = barrier

    def score(self, preview_url: str) -> dict[str, float]:
        scores = super().score(preview_url)
        self.barrier.wait(timeout=120)
        return scores


def test_two_promotions_racing_for_the_record_exactly_one_wins(
    settings: Settings, artifacts: Artifacts, make_platform: Factory
) -> None:
    a, b = make_platform("release-a", settings), make_platform("release-b", settings)
    v1 = artifacts.publish("v1", RULES["v1"])
    assert _promote(a, v1).phase is Phase.PROMOTED
    # A second release serving the production model itself does not beat it; it is
    # brought up with a negative margin (the record's generation goes to 2).
    assert _promote(b, v1, score_margin=-1.0).phase is Phase.PROMOTED
    for p in (a, b):
        assert _version(p) == "v1"
    candidates = {
        "release-a": artifacts.publish("v2a", RULES["v2"]),
        "release-b": artifacts.publish("v2b", {**RULES["v2"], "variant": "b"}),
    }
    barrier = threading.Barrier(2)
    results: dict[str, PromotionStatus] = {}
    errors: list[BaseException] = []

    def race(p: LocalPlatform, name: str) -> None:
        try:
            spec = _spec(candidates[name])
            results[name] = runner.run_local(spec, p, BarrierGates(barrier))
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [
        threading.Thread(target=race, args=(p, n)) for p, n in ((a, "release-a"), (b, "release-b"))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors

    phases = sorted(s.phase.value for s in results.values())
    assert phases == ["Failed", "Promoted"], {n: s.reason for n, s in results.items()}
    winner = next(n for n, s in results.items() if s.phase is Phase.PROMOTED)
    loser = next(n for n in results if n != winner)
    lost = results[loser]
    assert "the production record changed since the score gate read it" in lost.reason
    assert "another promotion won" in lost.reason
    assert f"it names {candidates[winner].version}" in lost.reason
    # Both passed their gates against the same record; only the winner's API moved.
    assert lost.production_etag == results[winner].production_etag
    assert lost.switched_at is None and Phase.SWITCHING in lost.phase_times
    platforms = {"release-a": a, "release-b": b}
    lost_active = platforms[loser].active()
    assert lost_active is not None and lost_active.colour is Colour.BLUE
    assert _version(platforms[loser]) == "v1"
    assert _version(platforms[winner]) == candidates[winner].version
    record, _ = _record(settings)
    assert (record.target.digest, record.generation, record.updated_by) == (
        candidates[winner].digest,
        3,
        winner,
    )


# --- rollbacks write the previous record back ---------------------------------------


def test_rollback_writes_the_previous_record_back_and_status_shows_it(
    s3_server: S3Server, s3_only: Settings, artifacts: Artifacts, make_platform: Factory
) -> None:
    platform = make_platform("release-a", s3_only)
    first = _promote(platform, artifacts.publish("v1", RULES["v1"]))
    assert _promote(platform, artifacts.publish("v2", RULES["v2"])).phase is Phase.PROMOTED

    colour, _ = runner.rollback_local(platform)

    assert colour is Colour.BLUE and _version(platform) == "v1"
    record, _ = _record(s3_only)
    assert (record.target.version, record.generation) == ("v1", 3)
    assert record.target.scores == first.candidate_scores  # v1's record, as it was

    env = {k: v for k, v in os.environ.items() if not k.startswith("FLIPSERVE_")}
    env |= {
        "PYTHONPATH": str(SRC),
        "FLIPSERVE_STORE_URI": s3_only.store_uri,
        "FLIPSERVE_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "FLIPSERVE_S3_ACCESS_KEY_ID": s3_server.access_key,
        "FLIPSERVE_S3_SECRET_ACCESS_KEY": s3_server.secret_key,
        "COLUMNS": "200",
    }
    out = subprocess.run(
        [sys.executable, "-m", "flipserve", "status", "--local-root", str(platform.root)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert f"production record: {s3_only.store_uri}/production.json" in out.stdout
    assert f"version v1  digest {record.target.digest[:12]}  generation 3" in out.stdout
    macro_f1 = first.candidate_scores["macro_f1"]
    assert f"macro_f1 {macro_f1:.4f}" in out.stdout
    assert "by release-a" in out.stdout


def test_rollback_with_the_store_down_still_switches_and_says_the_record_was_not_restored(
    s3_server: S3Server, s3_only: Settings, artifacts: Artifacts, make_platform: Factory
) -> None:
    platform = make_platform("release-a", s3_only)
    _promote(platform, artifacts.publish("v1", RULES["v1"]))
    assert _promote(platform, artifacts.publish("v2", RULES["v2"])).phase is Phase.PROMOTED
    down = s3_only.model_copy(
        update={"s3_endpoint_url": "http://127.0.0.1:9", "s3_connect_timeout": 0.5}
    )
    cut_off = make_platform("release-a", down)  # same root, its store unreachable

    with pytest.raises(PromotionError) as e:
        runner.rollback_local(cut_off)

    assert str(e.value).startswith("rolled back: the API serves blue, but the production")
    assert "cannot reach S3 at http://127.0.0.1:9" in str(e.value)
    assert _version(platform) == "v1"  # users are back on v1 all the same
    record, _ = _record(s3_only)
    assert (record.target.version, record.generation) == ("v2", 2)


def test_an_observe_breach_rolls_back_and_restores_the_record(
    settings: Settings, artifacts: Artifacts, make_platform: Factory
) -> None:
    platform = make_platform("release-a", settings)
    first = _promote(platform, artifacts.publish("v1", RULES["v1"]))
    slow = artifacts.publish("v2", {**RULES["v2"], "delay_s": 0.08})  # better, but slow
    with LoadGenerator(platform.api_url or "", [t for t, _ in HELDOUT], workers=2):
        time.sleep(0.5)
        status = _promote(platform, slow, max_p99_latency_ms=40.0, observe_seconds=3.0)

    assert status.phase is Phase.ROLLED_BACK, status.reason
    assert "p99 latency" in status.rollback_reason
    assert status.production_generation == 2  # it had written the record before the switch
    assert "the production record names v1 again (generation 3)" in status.reason
    record, _ = _record(settings)
    assert (record.target.version, record.generation) == ("v1", 3)
    assert record.target.scores == first.candidate_scores
    assert _version(platform) == "v1"


# --- crashes around the record write and the switch ---------------------------------


class CrashingPlatform(LocalPlatform):
    """Dies once, at ``crash_at``: right after the record write, or before or after the switch."""

    crash_at = ""

    def write_production(self, target: ModelTarget, expected_etag: str | None) -> Production:
        written = super().write_production(target, expected_etag)
        self._crash("after-write")
        return written

    def switch(self, colour: Colour, target: ModelTarget | None) -> bool:
        self._crash("before-switch")
        changed = super().switch(colour, target)
        self._crash("after-switch")
        return changed

    def _crash(self, where: str) -> None:
        if self.crash_at == where:
            type(self).crash_at = "done"
            raise Crash(where)


@pytest.mark.parametrize("where", ["after-write", "before-switch", "after-switch"])
def test_a_promotion_killed_around_the_switch_finishes_with_one_record_write(
    settings: Settings, artifacts: Artifacts, make_platform: Factory, where: str
) -> None:
    platform = make_platform("release-a", settings)
    v1, v2 = artifacts.publish("v1", RULES["v1"]), artifacts.publish("v2", RULES["v2"])
    assert _promote(platform, v1).phase is Phase.PROMOTED

    class Once(CrashingPlatform):
        crash_at = where

    crashing = make_platform("release-a", settings, cls=Once)
    with pytest.raises(Crash):
        _promote(crashing, v2)
    saved = PromotionStatus.model_validate(platform.load()["current"]["status"])
    assert saved.phase is Phase.SWITCHING
    record, _ = _record(settings)
    assert (record.target.version, record.generation) == ("v2", 2)  # the record leads
    if where == "after-switch":
        assert _version(platform) == "v2" and saved.switched_at is None
    else:
        assert _version(platform) == "v1"  # killed before the API moved
        # After the write the status was lost; before the switch it was saved.
        assert saved.production_generation == (None if where == "after-write" else 2)

    resumed = _promote(make_platform("release-a", settings), v2)  # the CLI run again

    assert resumed.phase is Phase.PROMOTED, resumed.reason
    assert _version(platform) == "v2"
    record, _ = _record(settings)
    assert (record.target.version, record.generation) == ("v2", 2)  # not written twice
    history = [h["status"]["phase"] for h in platform.load()["history"]]
    assert history == ["Promoted", "Promoted"]
