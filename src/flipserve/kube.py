"""The one module that talks to the Kubernetes API (controller.py's kopf aside).

:class:`Kube` is a thin JSON client over the official client's transport: it
takes REST paths and dicts, returns dicts, maps HTTP failures to
:class:`~flipserve.errors.KubeError`, and **counts every API call** it makes
(the rollout benchmark reports that number). Typed models are avoided on
purpose: the generated ones change between client releases, the JSON does not.

Credentials come from, in order: a ServiceAccount token file plus server URL
and CA (``FLIPSERVE_KUBE_TOKEN_PATH``/``_SERVER``/``_CA_PATH``; the integration
tests run the controller this way, with the chart's ServiceAccount), a
kubeconfig (``FLIPSERVE_KUBECONFIG``), the in-cluster ServiceAccount, or the
default kubeconfig.

It also holds the two cluster mechanisms the controller needs besides
resources: Kubernetes Events, and a Lease for leader election.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from kubernetes import client, config

from flipserve.errors import KubeError
from flipserve.settings import Settings

GROUP = "flipserve.dev"
VERSION = "v1alpha1"
PLURAL = "promotions"
KIND = "Promotion"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
_TIMEOUT = (5.0, 30.0)
_IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")

Obj = dict[str, Any]


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to authenticate (also handed to kopf)."""

    server: str
    token: str | None = None
    ca_path: str | None = None
    client_cert_path: str | None = None
    client_key_path: str | None = None
    insecure: bool = False


class _CountingApiClient(client.ApiClient):
    """ApiClient that counts requests by verb; thread-safe, kopf runs handlers in threads."""

    def __init__(self, configuration: client.Configuration) -> None:
        super().__init__(configuration)
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def call_api(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.calls[method.upper()] += 1
        return super().call_api(method, url, *args, **kwargs)


def credentials(settings: Settings) -> Credentials:
    """Resolve the configured way of reaching the API server (see module docstring)."""
    if settings.kube_token_path is not None:
        if not settings.kube_server:
            raise KubeError("FLIPSERVE_KUBE_TOKEN_PATH needs FLIPSERVE_KUBE_SERVER")
        token = settings.kube_token_path.read_text().strip()
        ca = str(settings.kube_ca_path) if settings.kube_ca_path else None
        return Credentials(server=settings.kube_server, token=token, ca_path=ca)
    cfg = client.Configuration()
    if settings.kubeconfig is None and _IN_CLUSTER_TOKEN.exists():
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    else:
        path = str(settings.kubeconfig) if settings.kubeconfig else None
        try:
            config.load_kube_config(config_file=path, client_configuration=cfg)  # type: ignore[no-untyped-call]
        except (config.ConfigException, OSError) as e:
            raise KubeError(f"cannot load kubeconfig {path or '~/.kube/config'}: {e}") from e
    return from_configuration(cfg)


def from_configuration(cfg: client.Configuration) -> Credentials:
    """The credentials a configuration loaded by the official client holds."""
    bearer: str | None = cfg.api_key.get("BearerToken") or cfg.api_key.get("authorization")
    return Credentials(
        server=cfg.host,
        token=bare_token(bearer),
        ca_path=cfg.ssl_ca_cert,
        client_cert_path=cfg.cert_file,
        client_key_path=cfg.key_file,
        insecure=not cfg.verify_ssl,
    )


def bare_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization`` value, without its scheme.

    The scheme is case-insensitive (RFC 9110): kubeconfig's loader stores
    ``Bearer <jwt>``, the in-cluster loader ``bearer <jwt>``; :class:`Kube` and
    kopf add their own ``Bearer`` prefix.
    """
    if not authorization or not authorization.strip():
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else authorization.strip()


class Kube:
    """A counting JSON client for one namespace's resources."""

    def __init__(self, creds: Credentials, namespace: str) -> None:
        cfg = client.Configuration()
        cfg.host = creds.server
        cfg.ssl_ca_cert = creds.ca_path
        cfg.cert_file = creds.client_cert_path
        cfg.key_file = creds.client_key_path
        cfg.verify_ssl = not creds.insecure
        if creds.token:
            cfg.api_key = {"BearerToken": creds.token}
            cfg.api_key_prefix = {"BearerToken": "Bearer"}
        self.creds = creds
        self.namespace = namespace
        self._api = _CountingApiClient(cfg)

    @classmethod
    def from_settings(cls, settings: Settings) -> Kube:
        return cls(credentials(settings), settings.namespace)

    @property
    def calls(self) -> Counter[str]:
        """API requests made so far, by HTTP verb."""
        return self._api.calls

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]

    # --- REST ---------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Obj | list[Obj] | None = None,
        *,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        if query:
            path = f"{path}?{urlencode(query)}"
        headers = {"Accept": "application/json", "Content-Type": content_type}
        req = self._api.param_serialize(
            method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        try:
            resp = self._api.call_api(*req, _request_timeout=_TIMEOUT)
            data = resp.read()
        except client.ApiException as e:
            raise KubeError(f"{method} {path}: {e.reason}", status=e.status or 0) from e
        except OSError as e:  # urllib3 errors are OSErrors: refused, reset, TLS
            raise KubeError(f"{method} {path}: {e}", status=0) from e
        if not 200 <= resp.status <= 299:
            raise KubeError(f"{method} {path}: {_reason(data, resp.status)}", status=resp.status)
        parsed: Obj = json.loads(data) if data else {}
        return parsed

    def get(self, path: str) -> Obj:
        return self.request("GET", path)

    def find(self, path: str) -> Obj | None:
        """GET, or None when the object does not exist."""
        try:
            return self.get(path)
        except KubeError as e:
            if e.status == 404:
                return None
            raise

    def items(self, path: str, label_selector: str | None = None) -> list[Obj]:
        query = {"labelSelector": label_selector} if label_selector else None
        items: list[Obj] = self.request("GET", path, query=query).get("items", [])
        return items

    def create(self, path: str, body: Obj) -> Obj:
        return self.request("POST", path, body)

    def patch(self, path: str, body: Obj | list[Obj], content_type: str = MERGE) -> Obj:
        return self.request("PATCH", path, body, content_type=content_type)

    def delete(self, path: str) -> None:
        try:
            self.request("DELETE", path, {"propagationPolicy": "Background"})
        except KubeError as e:
            if e.status != 404:
                raise

    # --- paths --------------------------------------------------------------

    def path(self, kind: str, name: str | None = None) -> str:
        """REST path of a namespaced resource: ``deployments``, ``jobs``, ``promotions``, ..."""
        prefix = {
            "deployments": "/apis/apps/v1",
            "replicasets": "/apis/apps/v1",
            "jobs": "/apis/batch/v1",
            "leases": "/apis/coordination.k8s.io/v1",
            PLURAL: f"/apis/{GROUP}/{VERSION}",
        }.get(kind, "/api/v1")
        base = f"{prefix}/namespaces/{quote(self.namespace)}/{kind}"
        return f"{base}/{quote(name)}" if name else base

    # --- events -------------------------------------------------------------

    def emit_event(
        self, involved: Obj, reason: str, message: str, *, warning: bool = False
    ) -> None:
        """Record a core/v1 Event on ``involved`` (as ``kubectl describe`` shows them)."""
        meta = involved["metadata"]
        now = _rfc3339(datetime.now(UTC))
        event = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": self.namespace},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta["name"],
                "namespace": self.namespace,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": "flipserve-controller"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self.create(self.path("events"), event)

    # --- leader election ----------------------------------------------------

    def hold_lease(self, name: str, identity: str, duration_s: float) -> bool:
        """Acquire or renew the Lease ``name``; False while another live holder has it.

        Writes carry the read ``resourceVersion``, so two candidates racing for an
        expired lease cannot both win: the loser gets 409 and reports False.
        """
        now = datetime.now(UTC)
        lease = self.find(self.path("leases", name))
        if lease is None:
            body = {"metadata": {"name": name}, "spec": _lease_spec(identity, duration_s, now)}
            return self._lease_write("POST", self.path("leases"), body)
        spec = lease.get("spec", {})
        if not lease_is_free(spec, identity, now):
            return False
        new_spec = _lease_spec(identity, duration_s, now)
        if spec.get("holderIdentity") == identity:
            new_spec["acquireTime"] = spec.get("acquireTime", new_spec["acquireTime"])
        lease["spec"] = new_spec
        return self._lease_write("PUT", self.path("leases", name), lease)

    def release_lease(self, name: str, identity: str) -> None:
        lease = self.find(self.path("leases", name))
        if lease and lease.get("spec", {}).get("holderIdentity") == identity:
            lease["spec"]["holderIdentity"] = None
            self._lease_write("PUT", self.path("leases", name), lease)

    def _lease_write(self, method: str, path: str, body: Obj) -> bool:
        try:
            self.request(method, path, body)
        except KubeError as e:
            if e.status == 409:
                return False
            raise
        return True


def lease_is_free(spec: Obj, identity: str, now: datetime) -> bool:
    """Whether ``identity`` may take the lease: it holds it, nobody does, or it expired."""
    holder = spec.get("holderIdentity")
    if not holder or holder == identity:
        return True
    renewed = spec.get("renewTime")
    if not renewed:
        return True
    expires = parse_time(renewed) + timedelta(seconds=spec.get("leaseDurationSeconds") or 15)
    return now >= expires


def _lease_spec(identity: str, duration_s: float, now: datetime) -> Obj:
    stamp = _micro(now)
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": max(1, round(duration_s)),
        "acquireTime": stamp,
        "renewTime": stamp,
    }


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro(t: datetime) -> str:
    """MicroTime, as Leases want it."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _reason(data: bytes | None, status: int) -> str:
    try:
        message = json.loads(data or b"{}").get("message")
    except ValueError:
        message = None
    return f"HTTP {status}: {message or (data or b'').decode(errors='replace')[:200]}"
