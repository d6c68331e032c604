"""Fixtures for the local platform's integration tests: real models in a real store.

Every server in these tests is the real ``flipserve serve``
(``flipserve.promotion.local.default_server_command``) on a volume the real
copier filled from a ``file://`` store that ``flipserve.store.Store.publish``
wrote. The models are real fine-tunes of MiniLM with clearly different
quality, so the score gate decides on what it measures:

- ``v1``: ``flipserve train --config tiny`` (96 tweets; macro-F1 ~0.27 on HELDOUT),
- ``v2``: the ``SMALL`` config of tests/conftest.py (800 tweets; ~0.59),
- ``v3``: v1's weights again, published as a new version (worse than v2).

The held-out set and the live traffic are tweets from the dataset's test and
validation splits; the out-of-domain traffic is spam-assassin emails.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from flipserve import artifact, data
from flipserve.promotion.local import LocalPlatform
from flipserve.promotion.status import ModelTarget
from flipserve.settings import Settings
from flipserve.store import Store
from tests.integration.server_support import emails, spam_dir

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"

DRIFT_P_VALUE = 1e-3
"""The drift alarm's threshold in these tests (the gate's and the servers' online one).

In-domain tweets are a sample of the distribution the reference came from, so
their p-value is spread over (0, 1] and at 0.05 up to one run in twenty fails by
chance; emails come out at 1e-9 and below. 1e-3 keeps both sides far away."""

SERVER_ENV = {
    "PYTHONPATH": str(SRC),
    "FLIPSERVE_TORCH_THREADS": "1",  # two servers and the test process share 2 cores
    "FLIPSERVE_DRIFT_INTERVAL_S": "1",
    "FLIPSERVE_DRIFT_P_VALUE": str(DRIFT_P_VALUE),
}


def make_variant(source: Path, dest: Path, version: str) -> Path:
    """A copy of the artifact in ``source`` whose metadata says ``version`` (a new digest)."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(artifact.MANIFEST))
    meta = json.loads((dest / artifact.METADATA).read_text())
    (dest / artifact.METADATA).write_text(json.dumps({**meta, "version": version}, indent=1))
    artifact.write_manifest(dest)
    return dest


def publish(store_root: Path, model_dir: Path, version: str) -> ModelTarget:
    """Publish ``model_dir`` to the ``file://`` store at ``store_root`` as ``version``."""
    store = Store.open(Settings(store_uri=store_root.as_uri(), show_progress=False))
    uri, digest = store.publish(model_dir, "flipserve", version)
    return ModelTarget(version=version, uri=uri, digest=digest)


@pytest.fixture(scope="session")
def published(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, small_model_dir: Path
) -> dict[str, ModelTarget]:
    """v1, v2 and v3 (see the module docstring), published once per session."""
    work = tmp_path_factory.mktemp("published")
    sources = {"v1": tiny_model_dir, "v2": small_model_dir, "v3": tiny_model_dir}
    return {
        v: publish(work / "store", make_variant(src, work / "models" / v, v), v)
        for v, src in sources.items()
    }


@pytest.fixture(scope="session")
def heldout() -> tuple[list[str], list[str]]:
    """150 tweets of the test split (a seeded sample: the split is sorted by label)."""
    rows = random.Random(0).sample(data.load_dataset().splits["test"], 150)
    return [e.text for e in rows], [e.label for e in rows]


@pytest.fixture(scope="session")
def live_tweets() -> list[str]:
    """100 validation tweets: in-domain live traffic for the drift gate."""
    rows = random.Random(1).sample(data.load_dataset().splits["validation"], 100)
    return [e.text for e in rows]


@pytest.fixture(scope="session")
def live_emails() -> list[str]:
    """100 spam-assassin emails: out-of-domain live traffic (``make data``)."""
    if not (spam_dir() / "spam-2").is_dir():
        pytest.fail("spam-assassin emails missing: run `make data`", pytrace=False)
    return emails(100)


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[LocalPlatform]:
    """The local platform with the real ``flipserve serve`` (its default server command)."""
    p = LocalPlatform(tmp_path / "local", server_env=SERVER_ENV)
    yield p
    p.stop_all()
