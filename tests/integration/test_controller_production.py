"""The controller against the store's production record: moto S3 over HTTP, a real API server.

Same harness as test_controller.py (the chart installed in the local control
plane, the controller process authenticated by the chart's ServiceAccount,
stub model servers), but the controller's store is a moto S3 server, as the
chart's store settings would point it at SeaweedFS: the score gate's baseline is
the record in S3, the switch writes it there by compare-and-swap, and a
record changed by another promoter while a promotion was in flight (here:
while its controller was down) fails that promotion without moving the API.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from flipserve.promotion.production import StoreProduction
from flipserve.settings import Settings
from flipserve.store import ProductionModel, Store
from tests.controlplane import ControlPlane
from tests.integration.controller_support import (
    BLUE,
    GREEN,
    RELEASE,
    Harness,
    digest,
    model,
    release,
)
from tests.integration.stub_server import Model

if TYPE_CHECKING:
    from tests.integration.conftest import S3Server

pytestmark = [pytest.mark.integration, pytest.mark.controlplane]


def _store_env(s3: S3Server, settings: Settings) -> dict[str, str]:
    return {
        "FLIPSERVE_STORE_URI": settings.store_uri,
        "FLIPSERVE_S3_ENDPOINT_URL": s3.endpoint_url,
        "FLIPSERVE_S3_REGION": s3.region,
        "FLIPSERVE_S3_ACCESS_KEY_ID": s3.access_key,
        "FLIPSERVE_S3_SECRET_ACCESS_KEY": s3.secret_key,
    }


@pytest.fixture
def store_env(s3_server: S3Server, s3_settings: Settings) -> dict[str, str]:
    return _store_env(s3_server, s3_settings)


@pytest.fixture
def h(
    control_plane: ControlPlane, namespace: str, tmp_path: Path, store_env: dict[str, str]
) -> Iterator[Harness]:
    with release(control_plane, namespace, tmp_path, **store_env) as harness:
        yield harness


def _records(s3_settings: Settings) -> StoreProduction:
    return StoreProduction(Store.open(s3_settings), "test")


def test_the_controller_judges_against_and_writes_the_store_record(
    h: Harness, s3_settings: Settings, store_env: dict[str, str]
) -> None:
    records = _records(s3_settings)
    first = h.promoted("v1", model("v1", 0.7))
    v1_record = records.read()
    assert v1_record is not None and v1_record.target.digest == digest("v1")
    assert v1_record.generation == 1
    assert v1_record.target.scores["accuracy"] == pytest.approx(0.7)
    assert v1_record.updated_by == f"controller {h.ns}/{RELEASE} promotion v1"
    assert first["productionGeneration"] == 1

    second = h.promoted("v2", model("v2", 0.9))

    assert second["productionScore"] == pytest.approx(0.7)  # read from the store
    assert second["productionEtag"] == v1_record.etag
    assert second["productionGeneration"] == 2
    record = records.read()
    assert record is not None and (record.target.digest, record.generation) == (digest("v2"), 2)
    assert record.target.scores["accuracy"] == pytest.approx(0.9)
    assert h.annotations()["flipserve.dev/model-version"] == "v2"

    # Another promoter sharing the store records a better model: it is the one to beat,
    # not the v2 this release serves.
    Store.open(s3_settings).write_production(
        ProductionModel(
            name="flipserve",
            version="v7",
            uri="s3://elsewhere/v7",
            digest=digest("v7"),
            scores={"accuracy": 0.95},
        ),
        record.etag,
        updated_by="another cluster",
    )
    candidate = model("v3", 0.93)
    h.preview.model = candidate
    h.promote("v3", candidate)
    third = h.wait("v3")
    assert third["phase"] == "Failed"
    assert "does not beat production 0.9500" in third["reason"]
    assert h.claim() == GREEN

    out = h.cli("status", timeout=60, **store_env)
    assert out.returncode == 0, out.stderr
    assert f"production record: {s3_settings.store_uri}/production.json" in out.stdout
    assert f"version v7  digest {digest('v7')[:12]}  generation 3" in out.stdout
    assert "by another cluster" in out.stdout


class HeldDrift:
    """A candidate whose drift answer waits until the test lets it go (the stub reads it)."""

    def __init__(self, model: Model, go: threading.Event) -> None:
        self._model, self._go = model, go

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    @property
    def drift_p_value(self) -> float:
        self._go.wait(20)
        return self._model.drift_p_value


def test_a_record_changed_while_the_controller_was_down_fails_the_switch(
    h: Harness, s3_settings: Settings, store_env: dict[str, str]
) -> None:
    records = _records(s3_settings)
    h.promoted("v1", model("v1", 0.7))
    v1_record = records.read()
    assert v1_record is not None
    go = threading.Event()
    h.preview.model = HeldDrift(model("v2", 0.9), go)  # type: ignore[assignment]
    h.promote("v2", model("v2", 0.9))

    def score_gate_done(s: dict[str, Any]) -> bool:
        return s.get("phase") == "Gating" and any(g["name"] == "score" for g in s.get("gates", []))

    gating = h.wait("v2", score_gate_done)
    assert gating["productionEtag"] == v1_record.etag
    h.kill_controller()  # held in the drift gate: the switch has not started
    # Meanwhile another promoter (sharing the store) promotes its own model.
    rival = Store.open(s3_settings).write_production(
        ProductionModel(name="flipserve", version="v8", uri="s3://else/v8", digest=digest("v8")),
        v1_record.etag,
        updated_by="another cluster",
    )[0]
    go.set()
    h.start_controller(**store_env)  # resumes v2 with the ETag kept in its status
    status = h.wait("v2")

    assert status["phase"] == "Failed", status
    assert "the production record changed since the score gate read it" in status["reason"]
    assert "it names v8" in status["reason"] and "another promotion won" in status["reason"]
    assert "switchedAt" not in status
    assert h.claim() == BLUE
    assert h.annotations()["flipserve.dev/model-version"] == "v1"
    assert "flipserve.dev/promotion" not in h.annotations()  # the release lock is dropped
    assert len(h.events("SwitchedColour")) == 0
    assert h.deployment(f"{RELEASE}-preview")["spec"]["replicas"] == 0
    record = records.read()
    assert record is not None and record.target.version == "v8"
    assert record.generation == rival.generation == 2


def test_rollback_requests_write_the_previous_record_back(
    h: Harness, s3_settings: Settings, store_env: dict[str, str]
) -> None:
    records = _records(s3_settings)
    h.promoted("v1", model("v1", 0.7))
    h.promoted("v2", model("v2", 0.9))

    done = h.cli("rollback")

    assert done.returncode == 0, done.stdout + done.stderr + h.log_tail()
    assert "the production record names v1 again (generation 3)" in done.stdout
    assert h.annotations()["flipserve.dev/model-version"] == "v1"
    record = records.read()
    assert record is not None and (record.target.digest, record.generation) == (digest("v1"), 3)
    assert record.target.scores["accuracy"] == pytest.approx(0.7)  # v1's, as recorded
