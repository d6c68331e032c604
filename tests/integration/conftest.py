"""Fixtures for integration tests: a real S3 API (moto's server) on loopback, and the model
server's fixtures (see server_support.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer
from tests.integration.server_support import ServerProcess, build_artifact, make_volume, tweets

from flipserve.settings import Settings

ACCESS_KEY = "flipserve-test"
SECRET_KEY = "flipserve-test-secret"  # moto accepts any key


@dataclass(frozen=True)
class S3Server:
    """A running moto S3 server: endpoint, credentials and one ready bucket."""

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


@pytest.fixture
def s3_settings(s3_server: S3Server) -> Settings:
    """Settings for a store under a fresh prefix of the test bucket."""
    return s3_server.settings()


# --- model server ----------------------------------------------------------

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
