"""Fixtures shared by every test kind: the tiny trained model, trained once and cached."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from flipserve import artifact
from flipserve.settings import Settings


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A real artifact from ``flipserve train --config tiny``; treat it as read-only.

    Cached under the flipserve cache dir, keyed by the training code and
    config, so only the first run (or a change to train/data/modeling) pays
    for the training; copy it before changing anything in it.
    """
    from flipserve import train

    settings = Settings(show_progress=False)
    key = train.config_hash(train.CONFIGS["tiny"], 1.0, settings.seed)
    cached = settings.cache_dir / "test-models" / f"tiny-{key}"
    if (cached / artifact.MANIFEST).exists():
        artifact.verify_dir(cached)
        return cached
    scratch = cached.parent / f".tiny-{key}-{uuid.uuid4().hex[:8]}"
    train.train(scratch, settings, "tiny", name="sentiment", version="tiny")
    try:
        scratch.rename(cached)
    except OSError:
        shutil.rmtree(scratch)  # a parallel session cached it first: use theirs
    return cached
