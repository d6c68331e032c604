"""Fixtures for integration tests: real processes on loopback.

``control_plane`` is one local Kubernetes control plane for the whole session
(tests/controlplane/); ``namespace`` gives each test its own namespace in it.
Binaries are built on first use (hack/controlplane/build.sh); if the control
plane cannot start, every test that needs it fails with the reason, never skips.
``seaweedfs`` is a real SeaweedFS, the S3 server the chart embeds, and
``s3_server`` moto's S3 server, each on 127.0.0.1 with one bucket (see
:func:`seaweedfs` for which tests use which); ``served`` a real model server on
a READY volume (see server_support.py).
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from flipserve.settings import Settings
from tests.controlplane import ControlPlane, ControlPlaneError, build_binaries
from tests.integration.seaweedfs_support import SeaweedFS, SeaweedFSError
from tests.integration.server_support import ServerProcess, build_artifact, make_volume, tweets


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


ACCESS_KEY = "flipserve-test"
SECRET_KEY = "flipserve-test-secret"  # moto accepts any key; SeaweedFS is given this one


@dataclass(frozen=True)
class S3Server:
    """A running S3 server (moto or SeaweedFS): endpoint, credentials and one ready bucket."""

    endpoint_url: str
    bucket: str
    region: str = "us-east-1"
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY

    def client(self) -> object:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"b-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]
        return name

    def settings(self, prefix: str | None = None, **overrides: object) -> Settings:
        """Settings whose store is a fresh prefix of the bucket (isolated per call)."""
        prefix = prefix or f"t-{uuid.uuid4().hex[:12]}"
        values: dict[str, object] = {
            "store_uri": f"s3://{self.bucket}/{prefix}",
            "s3_endpoint_url": self.endpoint_url,
            "s3_region": self.region,
            "s3_access_key_id": self.access_key,
            "s3_secret_access_key": self.secret_key,
            "s3_connect_timeout": 2.0,
            "s3_max_attempts": 2,
            "show_progress": False,
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1 (a free port), with a bucket created."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    s3 = S3Server(endpoint_url=f"http://{host}:{port}", bucket="flipserve-test")
    s3.create_bucket(s3.bucket)
    try:
        yield s3
    finally:
        server.stop()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real SeaweedFS on free loopback ports (the chart's flags), with a bucket created.

    The embedded store's own semantics are what the production record relies on:
    conditional writes (If-Match / If-None-Match) and whether racing writers are
    serialised. So the store and production-record tests run against it as well
    as moto and a directory (``s3_any``). moto stays where SeaweedFS adds nothing:
    tests that only need some S3 API over HTTP (publish/fetch plumbing, the
    controller's and server's store settings, error mapping of an unreachable
    endpoint or of unknown credentials), since it starts in-process in
    milliseconds and needs no Go build. weed is built by hack/realnode/build.sh
    on first use; if it cannot be built or started, the test fails with the
    reason, never skips.
    """
    try:
        weed = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"), ACCESS_KEY, SECRET_KEY).start()
    except SeaweedFSError as e:
        pytest.fail(f"SeaweedFS did not start: {e}", pytrace=False)
    s3 = S3Server(endpoint_url=weed.endpoint_url, bucket="flipserve-test")
    weed.create_bucket(s3.bucket)
    try:
        yield s3
    finally:
        weed.stop(timeout=5)  # its data dies with it: no need for the slow graceful stop


@pytest.fixture(params=["moto", "seaweedfs"])
def s3_any(request: pytest.FixtureRequest) -> S3Server:
    """Each S3 server in turn: moto, then the real SeaweedFS the chart embeds."""
    name = "s3_server" if request.param == "moto" else "seaweedfs"
    server: S3Server = request.getfixturevalue(name)
    return server


@pytest.fixture
def s3_settings(s3_server: S3Server) -> Settings:
    """Settings for a store under a fresh prefix of the test bucket."""
    return s3_server.settings()


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_auth_server() -> Iterator[str]:
    """A moto S3 server (subprocess) that checks credentials: it knows none, so all fail."""
    port = _free_port()
    moto = Path(sys.executable).parent / "moto_server"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    proc = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
