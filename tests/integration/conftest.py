"""Fixtures for the model server's integration tests (see server_support.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.server_support import ServerProcess, build_artifact, make_volume, tweets

TOKEN = "test-token"


@pytest.fixture(scope="session")
def server_tweets() -> list[str]:
    return tweets()


@pytest.fixture(scope="session")
def server_artifact(tmp_path_factory: pytest.TempPathFactory, server_tweets: list[str]) -> Path:
    """A tiny model artifact whose drift reference is 200 tweets."""
    dest = tmp_path_factory.mktemp("artifact") / "tiny"
    build_artifact(dest, server_tweets[:200])
    return dest


@pytest.fixture(scope="session")
def served(
    tmp_path_factory: pytest.TempPathFactory, server_artifact: Path
) -> Iterator[ServerProcess]:
    """A running server on a READY blue volume, with small limits so tests can hit them."""
    work = tmp_path_factory.mktemp("served")
    make_volume(work / "blue", server_artifact, "tiny-1")
    server = ServerProcess(
        work / "blue",
        work,
        colour="blue",
        api_token=TOKEN,
        max_body_bytes=20_000,
        max_items_per_request=16,
        drift_window=128,
        drift_min_samples=64,
        drift_interval_s=0.3,
        store_uri=f"file://{work / 'store'}",
        torch_threads=2,
    )
    try:
        server.wait_live()
        yield server
    finally:
        server.stop()
