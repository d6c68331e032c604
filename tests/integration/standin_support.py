"""The stand-in model server's support: keyword "models" and their held-out set.

Only tests/integration/test_production_record.py uses it. Those tests are
about the store's production record (compare-and-swap, crash safety, racing
promoters), not about the server: they run ~50 promotions, which with the
real ``flipserve serve`` (10-30 s to start on 2 cores) would take over 20
minutes. Everything else about local promotions runs on the real server with
real models (promotion_support.py, test_local_promotion.py).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from flipserve import artifact
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
    """A ``file://`` store layout of keyword-rule artifacts."""

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
