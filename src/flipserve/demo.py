"""``flipserve demo``: the whole blue/green flow on one machine (placeholder until train lands)."""

from __future__ import annotations

from pathlib import Path

from flipserve.errors import FlipserveError
from flipserve.settings import Settings


def run(out: Path, workdir: Path | None, settings: Settings) -> int:
    raise FlipserveError("flipserve demo needs flipserve.train and the server (not merged yet)")
