"""Fixtures for the local platform's integration tests: a file store and a local root."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flipserve import artifact
from flipserve.promotion.local import LocalPlatform
from flipserve.promotion.status import Colour, ModelTarget

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"

# A held-out set where the label is in the text: good rules find it, bad ones do not.
HELDOUT = [
    (f"{word} tweet number {i}", lab)
    for i in range(30)
    for word, lab in (("great", "positive"), ("awful", "negative"), ("table", "neutral"))
]

RULES = {
    "v1": {"keywords": {"great": "positive"}, "default": "neutral"},  # macro-F1 ~0.56
    "v2": {"keywords": {"great": "positive", "awful": "negative"}, "default": "neutral"},  # 1.0
    "v3": {"keywords": {}, "default": "negative"},  # worse than v1
}


@dataclass
class Store:
    root: Path

    def publish(self, version: str, rule: dict[str, object]) -> ModelTarget:
        d = self.root / "artifacts" / "flipserve" / version
        d.mkdir(parents=True)
        (d / "rule.json").write_text(json.dumps(rule))
        (d / "flipserve.json").write_text(json.dumps({"version": version}))
        digest = artifact.write_manifest(d)
        return ModelTarget(version=version, uri=d.as_uri(), digest=digest)


def standin_command(volume: Path, port: int, colour: Colour) -> list[str]:
    return [sys.executable, str(HERE / "standin_server.py"), str(volume), str(port), colour.value]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[LocalPlatform]:
    p = LocalPlatform(
        tmp_path / "local",
        server_command=standin_command,
        server_env={"PYTHONPATH": str(SRC)},
    )
    yield p
    p.stop_all()
