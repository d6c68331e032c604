"""Fixtures for integration tests: a real S3 API (moto's server) on loopback."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import pytest
from moto.server import ThreadedMotoServer

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
