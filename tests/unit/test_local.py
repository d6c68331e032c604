"""The local platform's record of what each colour's directory holds (no processes started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flipserve import artifact
from flipserve.errors import PromotionError
from flipserve.promotion import runner
from flipserve.promotion.local import LocalPlatform
from flipserve.promotion.status import Colour, ModelTarget


def _fill(platform: LocalPlatform, colour: Colour, version: str) -> ModelTarget:
    """What ``flipserve copy`` leaves on a volume: ``model/`` with its manifest, then READY."""
    model = platform.volume(colour) / artifact.MODEL_SUBDIR
    model.mkdir(parents=True)
    (model / "weights.bin").write_text(f"weights of {version}")
    digest = artifact.write_manifest(model)
    artifact.write_ready(platform.volume(colour), version, digest)
    return ModelTarget(version=version, uri=f"file:///store/{version}", digest=digest)


def _after_a_refused_promotion(tmp_path: Path) -> tuple[LocalPlatform, dict[str, ModelTarget]]:
    """v1 served on blue, v2 promoted to green, then v3 copied onto blue and refused."""
    platform = LocalPlatform(tmp_path / "root")
    v2 = _fill(platform, Colour.GREEN, "v2")
    v3 = _fill(platform, Colour.BLUE, "v3")
    v1 = v3.model_copy(update={"version": "v1", "uri": "file:///store/v1", "digest": "1" * 64})
    state = platform.load()
    state["active"] = "green"
    state["targets"] = {"green": v2.model_dump(mode="json"), "blue": v3.model_dump(mode="json")}
    state["standby"] = {"colour": "blue", "target": v1.model_dump(mode="json")}
    platform.save(state)
    return platform, {"v1": v1, "v2": v2, "v3": v3}


def test_the_idle_colour_holds_what_its_ready_marker_names(tmp_path: Path) -> None:
    platform, models = _after_a_refused_promotion(tmp_path)
    assert platform.held(Colour.BLUE) == models["v3"]
    assert platform.previous() == models["v1"]


def test_a_rollback_after_a_refused_promotion_is_refused_and_says_why(tmp_path: Path) -> None:
    platform, _ = _after_a_refused_promotion(tmp_path)
    with pytest.raises(PromotionError, match="the idle colour blue now holds v3, not v1"):
        runner.rollback_local(platform)
    assert platform.load()["active"] == "green"


def test_an_unfinished_copy_holds_nothing(tmp_path: Path) -> None:
    platform, _ = _after_a_refused_promotion(tmp_path)
    (platform.volume(Colour.BLUE) / artifact.READY).unlink()
    assert platform.held(Colour.BLUE) is None
    with pytest.raises(PromotionError, match="holds no ready model"):
        runner.rollback_local(platform)
