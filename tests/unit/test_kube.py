from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.config.incluster_config import InClusterConfigLoader

from flipserve.kube import Credentials, Kube, from_configuration, lease_is_free

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _spec(holder: str | None, renewed: datetime, duration: int = 15) -> dict:
    return {
        "holderIdentity": holder,
        "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "leaseDurationSeconds": duration,
    }


def test_a_lease_held_and_renewed_by_another_is_not_free() -> None:
    assert not lease_is_free(_spec("other", NOW - timedelta(seconds=5)), "me", NOW)


def test_a_lease_is_free_to_its_holder_when_unheld_or_once_expired() -> None:
    assert lease_is_free(_spec("me", NOW), "me", NOW)
    assert lease_is_free(_spec(None, NOW), "me", NOW)
    assert lease_is_free(_spec("other", NOW - timedelta(seconds=16)), "me", NOW)


def _in_cluster(tmp_path: Path, token: str) -> Credentials:
    """Credentials as the official client's in-cluster loader reads a pod's ServiceAccount."""
    (tmp_path / "token").write_text(token)
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    cfg = client.Configuration()
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    loader = InClusterConfigLoader(str(tmp_path / "token"), str(tmp_path / "ca.crt"), environ=env)
    loader.load_and_set(cfg)  # type: ignore[no-untyped-call]
    return from_configuration(cfg)


def test_the_in_cluster_token_is_sent_with_one_bearer_scheme(tmp_path: Path) -> None:
    """The in-cluster loader stores ``bearer <jwt>`` (lower case); kubeconfig ``Bearer <jwt>``."""
    creds = _in_cluster(tmp_path, "eyJhbGciOiJSUzI1NiJ9.payload.sig")
    assert creds.token == "eyJhbGciOiJSUzI1NiJ9.payload.sig"
    assert creds.server == "https://10.96.0.1:443"
    kube = Kube(creds, "default")
    try:
        header = kube._api.configuration.auth_settings()["BearerToken"]["value"]
    finally:
        kube.close()
    assert header == "Bearer eyJhbGciOiJSUzI1NiJ9.payload.sig"


@pytest.mark.parametrize("value", ["Bearer abc", "bearer abc", "BEARER  abc ", "abc"])
def test_any_case_of_the_bearer_scheme_is_stripped(value: str) -> None:
    cfg = client.Configuration()
    cfg.host = "https://127.0.0.1:6443"
    cfg.api_key = {"authorization": value}
    assert from_configuration(cfg).token == "abc"
