"""Certificates, keys and kubeconfigs for the local control plane, made on the fly.

EC P-256 keys (instant to generate), a CA valid for a week, one serving certificate
for the API server and one client certificate per identity; all PEM files in one dir.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from base64 import b64encode
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.controlplane.node import NODE_IP


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    *,
    server_names: Sequence[str] = (),
) -> x509.Certificate:
    """A certificate for ``key``: a self-signed CA without ``issuer``, else a leaf it signs."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is None:
        return builder.sign(key, hashes.SHA256())
    usages = [ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server_names:
        alt: list[x509.GeneralName] = []
        for name in server_names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(issuer[1], hashes.SHA256())


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


# Client identities: the admin is in system:masters; the controller manager and scheduler
# get the users kubeadm gives them, so RBAC's bootstrap roles apply to them as in a cluster.
CLIENTS = {
    "admin": _name("flipserve-admin", "system:masters"),
    "controller-manager": _name("system:kube-controller-manager"),
    "scheduler": _name("system:kube-scheduler"),
    # the API server's client certificate towards kubelets (logs, exec, port-forward)
    "apiserver-kubelet": _name("kube-apiserver-kubelet-client"),
}


def write_pki(pki: Path) -> None:
    """CA, API server serving cert, client certs and the service-account key pair, as PEM."""
    pki.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue(_name("flipserve-local-ca"), ca_key)
    leaves = {
        "apiserver": (
            _name("kube-apiserver"),
            (
                "127.0.0.1",
                "localhost",
                "10.96.0.1",
                NODE_IP,  # where pods reach it when a real node joins
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
        ),
        **{client: (subject, ()) for client, subject in CLIENTS.items()},
    }
    (pki / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (pki / "ca.key").write_bytes(_pem_key(ca_key))
    for stem, (subject, names) in leaves.items():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(subject, key, (ca, ca_key), server_names=names)
        (pki / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (pki / f"{stem}.key").write_bytes(_pem_key(key))
    sa_key = ec.generate_private_key(ec.SECP256R1())
    (pki / "sa.key").write_bytes(_pem_key(sa_key))
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def issue_client(pki: Path, stem: str, common_name: str, organization: str | None = None) -> None:
    """One more client certificate from the CA ``write_pki`` made (``stem``.crt/.key)."""
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue(_name(common_name, organization), key, (ca, ca_key))
    (pki / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (pki / f"{stem}.key").write_bytes(_pem_key(key))


def kubeconfig(server: str, pki: Path, client: str) -> dict[str, Any]:
    """A self-contained kubeconfig (certificates inlined) for one client identity."""

    def data(name: str) -> str:
        return b64encode((pki / name).read_bytes()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "flipserve-local",
                "cluster": {"server": server, "certificate-authority-data": data("ca.crt")},
            }
        ],
        "users": [
            {
                "name": client,
                "user": {
                    "client-certificate-data": data(f"{client}.crt"),
                    "client-key-data": data(f"{client}.key"),
                },
            }
        ],
        "contexts": [
            {"name": "flipserve-local", "context": {"cluster": "flipserve-local", "user": client}}
        ],
        "current-context": "flipserve-local",
    }
