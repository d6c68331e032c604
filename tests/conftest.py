"""Fixtures shared by every test kind: real trained models, trained once and cached."""

from __future__ import annotations

import dataclasses
import shutil
import uuid
from pathlib import Path

import pytest

from flipserve import artifact
from flipserve.settings import Settings
from flipserve.train import CONFIGS, TrainConfig

SMALL = dataclasses.replace(CONFIGS["tiny"], max_train_examples=800, drift_reference_size=64)
"""A real fine-tune on 800 tweets with the lower four encoder layers frozen: about
half a minute on 2 cores, and clearly better than ``tiny`` (macro-F1 ~0.59 against
~0.27 on 150 test tweets), so the score gate's verdicts between the two are robust."""


def _cached_model(config: str | TrainConfig, label: str) -> Path:
    """Train ``config`` once per training code version into the flipserve cache dir."""
    from flipserve import train

    settings = Settings(show_progress=False)
    cfg = train.CONFIGS[config] if isinstance(config, str) else config
    key = train.config_hash(cfg, 1.0, settings.seed)
    cached = settings.cache_dir / "test-models" / f"{label}-{key}"
    if (cached / artifact.MANIFEST).exists():
        artifact.verify_dir(cached)
        return cached
    scratch = cached.parent / f".{label}-{key}-{uuid.uuid4().hex[:8]}"
    train.train(scratch, settings, cfg, name="sentiment", version=label)
    try:
        scratch.rename(cached)
    except OSError:
        shutil.rmtree(scratch)  # a parallel session cached it first: use theirs
    return cached


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A real artifact from ``flipserve train --config tiny``; treat it as read-only.

    Cached under the flipserve cache dir, keyed by the training code and
    config, so only the first run (or a change to train/data/modeling) pays
    for the training; copy it before changing anything in it. It is a weak
    model (96 training tweets): the worse side of score-gate tests.
    """
    return _cached_model("tiny", "tiny")


@pytest.fixture(scope="session")
def small_model_dir() -> Path:
    """A real artifact trained with :data:`SMALL`, cached like ``tiny_model_dir``; read-only."""
    return _cached_model(SMALL, "small")
