"""Fixtures for integration tests: real processes on loopback.

``control_plane`` is one local Kubernetes control plane for the whole session
(tests/controlplane.py); ``namespace`` gives each test its own namespace in it.
Binaries are built on first use (hack/controlplane/build.sh); if the control
plane cannot start, every test that needs it fails with the reason, never skips.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

import pytest

from tests.controlplane import ControlPlane, ControlPlaneError, build_binaries


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """The running control plane (``.kubeconfig .env .server .kubectl() .helm()``)."""
    try:
        cluster = ControlPlane(build_binaries()).start()
    except ControlPlaneError as e:
        reason = str(e)
    else:
        yield cluster
        cluster.stop()
        return
    pytest.fail(f"the local control plane did not start: {reason}", pytrace=False)


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test, deleted (without waiting) afterwards."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = control_plane.create_namespace(f"{stem}-{secrets.token_hex(3)}")
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)
