"""``flipserve controller``: the operator that drives Promotion objects (built on kopf).

A kopf timer steps every unfinished Promotion in the namespace through
:func:`flipserve.reconciler.step` and writes the new status back through
:class:`~flipserve.kube.Kube` (so those API calls are counted). Finished
promotions (Promoted, Failed, RolledBack) are filtered out and cost nothing.

Exactly one controller is active: before kopf starts, the process takes the
Lease ``<release>-controller`` and keeps renewing it; a standby waits, and a
controller that loses the lease stops (its Deployment restarts it as a
standby). kopf's own peering is off (``standalone``) because it needs extra
cluster-wide CRDs; the Lease needs only a namespaced Role rule. Each Lease
attempt sets the pod's readiness (health.py, ``GET /readyz`` on
``FLIPSERVE_CONTROLLER_HEALTH_PORT``): ready once the API server has answered,
as leader or as standby; a refused token or a missing Role rule is logged as
an error and keeps the pod unready, never mistaken for a standby.

Errors: a :class:`~flipserve.errors.TemporaryError` from a step becomes
``kopf.TemporaryError(delay=…)`` (retry later, status untouched); everything
that means "give up" is already turned into a Failed/RolledBack status by the
step itself, so kopf never sees a permanent error for a promotion.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from typing import Any

import kopf

from flipserve.errors import KubeError, TemporaryError
from flipserve.health import Health, HealthServer
from flipserve.kube import GROUP, MERGE, PLURAL, VERSION, Credentials, Kube
from flipserve.kubeplatform import KubePlatform, Urls
from flipserve.probe import HttpProbe
from flipserve.promotion.production import StoreProduction
from flipserve.promotion.status import TERMINAL
from flipserve.reconciler import PromotionRequest, dump_status, load_status, step
from flipserve.settings import Settings
from flipserve.store import PRODUCTION, Store

log = logging.getLogger("flipserve.controller")
_TERMINAL = frozenset(p.value for p in TERMINAL)
_REPEAT_ERROR_S = 60.0
"""A refusal that persists is logged again this often (readiness shows it all along)."""
_ATTEMPT_S = 120.0
"""The longest one Lease attempt can take (two requests at kube.py's timeouts, and slack)."""


def service_urls(settings: Settings, release: str) -> Urls:
    """In-cluster Service URLs of the API and the preview, unless overridden in settings,
    and how to reach one API pod directly (the observe window)."""
    ns, port = settings.namespace, settings.http_port
    return Urls(
        api=settings.service_urls.get("api", f"http://{release}.{ns}.svc:{port}"),
        preview=settings.service_urls.get("preview", f"http://{release}-preview.{ns}.svc:{port}"),
        pod=settings.pod_url,
    )


class Reconciler:
    """Steps one Promotion and writes its status back; what the kopf timer calls.

    ``store`` holds the production record every promotion reads at Gating and
    writes at the switch (the chart gives the controller the store's settings
    and credentials, as it gives the copy Job).
    """

    def __init__(self, settings: Settings, kube: Kube, probe: HttpProbe, store: Store) -> None:
        self.settings, self.kube, self.probe, self.store = settings, kube, probe, store

    def __call__(self, name: str, spec: dict[str, Any], status: dict[str, Any]) -> None:
        request = PromotionRequest.model_validate(dict(spec))
        release = request.release or self.settings.release
        urls = service_urls(self.settings, release)
        who = f"controller {self.settings.namespace}/{release} promotion {name}"
        records = StoreProduction(self.store, who)
        platform = KubePlatform(self.kube, release, name, urls, self.probe, records)
        before = load_status(status)
        after = step(name, request, before, platform, self.probe, self.settings, self.is_live)
        old = dump_status(before, request, self.settings.score_metric)
        new = dump_status(after, request, self.settings.score_metric)
        if new != old:
            patch = {"status": new | {k: None for k in old if k not in new}}
            self.kube.patch(self.kube.path(PLURAL, name) + "/status", patch, MERGE)
            if after.phase != before.phase:
                calls = sum(self.kube.calls.values())
                log.info(
                    "promotion %s: %s → %s: %s (api_calls=%d)",
                    name, before.phase, after.phase, after.reason, calls,
                )  # fmt: skip

    def is_live(self, promotion: str) -> bool:
        """Whether a Promotion exists and is unfinished (so its release lock is valid)."""
        obj = self.kube.find(self.kube.path(PLURAL, promotion))
        phase = ((obj or {}).get("status") or {}).get("phase")
        return obj is not None and phase not in _TERMINAL


def build_registry(settings: Settings, reconcile: Reconciler, creds: Credentials) -> Any:
    """kopf handlers bound to these settings (no import-time registration)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def _configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.WARNING
        # No cluster-wide scans of CRDs and namespaces: the Role is namespaced on purpose.
        settings.scanning.disabled = True
        settings.watching.server_timeout = 60

    @kopf.on.login(registry=registry)
    def _login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(
            server=creds.server,
            token=creds.token,
            scheme="Bearer" if creds.token else None,
            ca_path=creds.ca_path,
            certificate_path=creds.client_cert_path,
            private_key_path=creds.client_key_path,
            insecure=creds.insecure,
            default_namespace=settings.namespace,
        )

    def unfinished(status: kopf.Status, **_: Any) -> bool:
        return dict(status).get("phase") not in _TERMINAL

    @kopf.timer(
        GROUP, VERSION, PLURAL,
        interval=settings.controller_interval_s, when=unfinished, registry=registry,
    )  # fmt: skip
    def _tick(name: str, spec: kopf.Spec, status: kopf.Status, **_: Any) -> None:
        try:
            reconcile(name, dict(spec), dict(status))
        except TemporaryError as e:
            raise kopf.TemporaryError(str(e), delay=e.delay) from e

    return registry


class LeaderLease:
    """Holds ``<release>-controller`` while the operator runs; sets ``lost`` when it cannot.

    Every attempt is reported to ``health`` (the pod's readiness): a leader or a
    standby that could read the Lease is ready; a failed attempt is not. A
    refused token (401) or a missing Role rule (403) is an error that says so,
    never a silent standby: it would wait forever.
    """

    def __init__(
        self, kube: Kube, name: str, duration_s: float, health: Health | None = None
    ) -> None:
        self.kube, self.name, self.duration_s = kube, name, duration_s
        self.health = health or Health(stale_after_s=math.inf)
        self.identity = f"{socket.gethostname()}-{os.getpid()}"
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._said_at = -math.inf

    def acquire(self) -> None:
        """Block until this process holds the lease (standby until then)."""
        while not self._try():
            self._stop.wait(self.duration_s / 3)
        log.info("leader: holding lease %s as %s", self.name, self.identity)

    def keep(self) -> threading.Thread:
        thread = threading.Thread(target=self._renew, name="lease", daemon=True)
        thread.start()
        return thread

    def _try(self) -> bool:
        try:
            held = self.kube.hold_lease(self.name, self.identity, self.duration_s)
        except KubeError as e:
            self._failed(lease_error(self.name, e), refused=e.status in (401, 403))
            return False
        except Exception as e:  # a blip: the next renewal may succeed before expiry
            self._failed(f"lease {self.name}: {e}", refused=False)
            return False
        detail = "leader" if held else "standby: the lease is held by another controller"
        if self.health.report(True, f"{detail} (lease {self.name})") and not held:
            log.info("standby: lease %s is held by another controller", self.name)
        return held

    def _failed(self, message: str, refused: bool) -> None:
        changed = self.health.report(False, message)
        now = time.monotonic()
        if refused and (changed or now - self._said_at > _REPEAT_ERROR_S):
            log.error("%s", message)  # nothing is reconciled until this is fixed
            self._said_at = now
        elif not refused:
            log.warning("%s", message)

    def _renew(self) -> None:
        failures = 0
        while not self._stop.wait(self.duration_s / 3):
            failures = 0 if self._try() else failures + 1
            if failures >= 2:  # two misses: the lease may expire before the next try
                log.error("lost lease %s; stopping", self.name)
                self.lost.set()
                return

    def release(self) -> None:
        self._stop.set()
        try:
            self.kube.release_lease(self.name, self.identity)
        except Exception as e:  # it expires by itself
            log.warning("could not release lease %s: %s", self.name, e)


def lease_error(name: str, error: KubeError) -> str:
    """One line on a failed Lease request; a refusal names what to fix."""
    if error.status == 401:
        return (
            f"the API server rejected the controller's credentials (HTTP 401) for lease "
            f"{name}: {error}; check its ServiceAccount token (not a standby: nothing is "
            "reconciled until this is fixed)"
        )
    if error.status == 403:
        return (
            f"the controller's ServiceAccount may not use lease {name} (HTTP 403): {error}; "
            "check the chart's Role and RoleBinding (not a standby: nothing is reconciled "
            "until this is fixed)"
        )
    return f"lease {name}: {error}"


def run(settings: Settings) -> int:
    """Run the controller until interrupted or the lease is lost (then exit 1)."""
    kube = Kube.from_settings(settings)
    probe = HttpProbe(settings)
    health = Health(stale_after_s=3 * settings.controller_lease_s + _ATTEMPT_S)
    server = HealthServer(health, settings.host, settings.controller_health_port).start()
    log.info("health: GET /readyz and /healthz on port %d", server.port)
    name = f"{settings.release}-controller"
    lease = LeaderLease(kube, name, settings.controller_lease_s, health)
    lease.acquire()
    lease.keep()
    store = Store.open(settings)
    log.info("production record: %s/%s", store.uri, PRODUCTION)
    registry = build_registry(settings, Reconciler(settings, kube, probe, store), kube.creds)
    try:
        kopf.run(
            registry=registry,
            namespaces=[settings.namespace],
            standalone=True,
            stop_flag=lease.lost,
        )
    finally:
        lease.release()
        server.stop()
        log.info("API calls made by the controller: %s", dict(kube.calls))
    return 1 if lease.lost.is_set() else 0
