"""The local platform with the real ``flipserve serve``: promote, refuse, switch under load."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from flipserve import artifact
from flipserve.loadgen import LoadGenerator
from flipserve.promotion import runner
from flipserve.promotion.gates import HttpGates
from flipserve.promotion.local import LocalPlatform, embedding_drift
from flipserve.promotion.status import Colour, ModelTarget, Phase, PromotionSpec
from tests.integration.promotion_support import SRC
from tests.integration.server_support import build_artifact, tweets

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelTarget]:
    """Two tiny artifacts (same weights, different versions) in a file:// store layout."""
    root = tmp_path_factory.mktemp("store") / "artifacts" / "tiny"
    texts = tweets()
    build_artifact(root / "t1", texts[:200], version="t1")
    shutil.copytree(root / "t1", root / "t2")
    meta = (root / "t2" / artifact.METADATA).read_text().replace('"t1"', '"t2"')
    (root / "t2" / artifact.METADATA).write_text(meta)
    targets = {}
    for v in ("t1", "t2"):
        digest = artifact.write_manifest(root / v)
        targets[v] = ModelTarget(name="tiny", version=v, uri=(root / v).as_uri(), digest=digest)
    return targets


@pytest.fixture
def real(tmp_path: Path) -> Iterator[LocalPlatform]:
    env = {
        "PYTHONPATH": str(SRC),
        "FLIPSERVE_TORCH_THREADS": "1",
        "FLIPSERVE_DRIFT_INTERVAL_S": "1",
    }
    p = LocalPlatform(tmp_path / "local", server_env=env)
    yield p
    p.stop_all()


def _promote(platform: LocalPlatform, target: ModelTarget, margin: float = 0.0):  # type: ignore[no-untyped-def]
    texts = tweets()[300:360]
    labels = ["neutral"] * len(texts)  # any fixed labels: both models score the same
    gates = HttpGates(texts, labels, embedding_drift(platform))
    spec = PromotionSpec(target=target, observe_seconds=2, score_margin=margin)
    return runner.run_local(spec, platform, gates)


def test_real_server_promotes_refuses_an_equal_model_and_switches_under_load(
    real: LocalPlatform, artifacts: dict[str, ModelTarget]
) -> None:
    first = _promote(real, artifacts["t1"])
    assert first.phase is Phase.PROMOTED, first.reason
    api = real.api_url
    assert api is not None
    r = httpx.post(api + "/predict", json={"texts": ["what a lovely day"]})
    assert r.status_code == 200 and r.headers["X-Model-Version"] == "t1"

    same = _promote(real, artifacts["t2"])  # not better than production: refused
    assert same.phase is Phase.FAILED and "does not beat" in same.reason
    assert real.active() is not None and real.active().colour is Colour.BLUE  # type: ignore[union-attr]

    with LoadGenerator(api, tweets()[:400], workers=4) as load:
        forced = _promote(real, artifacts["t2"], margin=-1.0)  # allowed through on purpose
    assert forced.phase is Phase.PROMOTED, forced.reason
    assert load.stats.requests > 20
    assert load.stats.failed == 0, load.stats.errors
    assert "t2" in [v for _, v in load.stats.versions]
