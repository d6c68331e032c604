"""The controller test harness: a chart release, model servers and a controller process.

KWOK runs no pods, so the servers the controller's gates call are on 127.0.0.1:
either stub servers that answer what a test sets (``release``), or real
``flipserve serve`` processes behind Service stand-ins (``real_release``,
``real_servers``). Shared by tests/integration/test_controller*.py and
bench/rollout_kube.py. See test_controller.py's docstring for what is real.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from flipserve.kube import PLURAL, Kube, credentials
from flipserve.promotion.proxy import ADMIN_HEADER
from flipserve.promotion.status import ModelTarget
from flipserve.settings import Settings
from tests.controlplane import ControlPlane
from tests.integration.server_support import ServerProcess, free_port
from tests.integration.stub_server import Model, StubServer, eval_set


class HarnessError(AssertionError):
    """A promotion did not get where the test waited for it to go."""


REPO = Path(__file__).resolve().parents[2]
RELEASE = "flipserve"
BLUE, GREEN = f"{RELEASE}-model-blue", f"{RELEASE}-model-green"
TERMINAL = ("Promoted", "Failed", "RolledBack")


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def model(version: str, quality: float, **kw: Any) -> Model:
    return Model(version=version, digest=digest(version), quality=quality, **kw)


@dataclass
class Harness:
    """One namespace with the chart installed, two servers and a controller process.

    ``api`` and ``preview`` are stub servers (``release``) or Service stand-ins
    in front of real servers (``real_release``; ``volumes`` then says which real
    model each PVC holds).
    """

    cp: ControlPlane
    ns: str
    tmp: Path
    api: Any  # StubServer | Service
    preview: Any
    admin: Kube
    proc: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)
    health_url: str = ""
    """The running controller's /readyz and /healthz (a fresh port for each start)."""
    volumes: dict[str, RealModel] = field(default_factory=dict)

    # controller process -------------------------------------------------------------

    def controller_env(self) -> dict[str, str]:
        token = self.cp.kubectl(
            "create", "token", f"{RELEASE}-controller", "-n", self.ns, "--duration=2h"
        ).stdout.strip()
        (self.tmp / "token").write_text(token)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FLIPSERVE_", "KUBE"))}
        return env | {
            "PYTHONPATH": str(REPO / "src"),
            "FLIPSERVE_KUBE_TOKEN_PATH": str(self.tmp / "token"),
            "FLIPSERVE_KUBE_SERVER": self.cp.server,
            "FLIPSERVE_KUBE_CA_PATH": str(self.cp.pki / "ca.crt"),
            "FLIPSERVE_NAMESPACE": self.ns,
            "FLIPSERVE_RELEASE": RELEASE,
            "FLIPSERVE_CONTROLLER_INTERVAL_S": "0.5",
            "FLIPSERVE_CONTROLLER_LEASE_S": "3",
            "FLIPSERVE_OBSERVE_SECONDS": "2",
            "FLIPSERVE_SCORE_METRIC": "accuracy",  # the stub's quality is its accuracy
            "FLIPSERVE_HELDOUT_PATH": str(self.tmp / "eval.jsonl"),
            "FLIPSERVE_SERVICE_URLS": json.dumps(
                {"api": self.api.url, "preview": self.preview.url}
            ),
            "FLIPSERVE_POD_URL": self.pod_url(),
            "FLIPSERVE_LOG_LEVEL": "INFO",
        }

    def pod_url(self) -> str:
        """Where the observe window reads each API pod (KWOK pods have no network).

        A stub answers for every pod by name; the real server behind a Service
        stand-in is the one server all pods share, so each pod reads the same
        counters (the window's error rate is the server's, its request count
        that many times over).
        """
        if isinstance(self.api, StubServer):
            return self.api.url + "/pods/{name}"
        return str(self.api.url)

    def start_controller(self, **env: str) -> None:
        log = self.tmp / f"controller-{len(self.logs)}.log"
        self.logs.append(log)
        port = free_port()
        self.health_url = f"http://127.0.0.1:{port}"
        health = {"FLIPSERVE_HOST": "127.0.0.1", "FLIPSERVE_CONTROLLER_HEALTH_PORT": str(port)}
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "flipserve", "controller"],
                cwd=self.tmp,
                env=self.controller_env() | health | env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill_controller(self) -> None:
        """SIGKILL: no cleanup, no lease release, as if the node died."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop_controller(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def cli(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        """``flipserve ARGS --kube`` as a user runs it against this namespace and release."""
        base = {k: v for k, v in self.cp.env.items() if not k.startswith("FLIPSERVE_")}
        base |= {"PYTHONPATH": str(REPO / "src"), "FLIPSERVE_KUBECONFIG": str(self.cp.kubeconfig)}
        base |= {"FLIPSERVE_NAMESPACE": self.ns, "FLIPSERVE_RELEASE": RELEASE} | env
        return subprocess.run(
            [sys.executable, "-m", "flipserve", *args, "--kube"],
            env=base, cwd=self.tmp, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def readiness(self, until: int, containing: str = "", timeout: float = 30) -> str:
        """Poll the controller's ``GET /readyz`` until it answers ``until`` with a body
        ``containing`` that text; returns the body."""
        deadline = time.monotonic() + timeout
        seen = "no answer"
        while True:
            try:
                r = httpx.get(self.health_url + "/readyz", timeout=5)
                if r.status_code == until and containing in r.text:
                    return r.text
                seen = f"{r.status_code} {r.text.strip()}"
            except httpx.HTTPError as e:
                seen = repr(e)
            if self.proc is not None and self.proc.poll() is not None:
                raise HarnessError(f"controller exited {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise HarnessError(f"/readyz never answered {until}: {seen}\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.logs[-2:])

    # Promotions ---------------------------------------------------------------------

    def promote(self, name: str, m: Model | RealModel, **spec: Any) -> None:
        uri = m.uri if isinstance(m, RealModel) else f"file:///store/{m.version}"
        ref = {"uri": uri, "version": m.version, "digest": m.digest}
        body = {
            "apiVersion": "flipserve.dev/v1alpha1",
            "kind": "Promotion",
            "metadata": {"name": name},
            "spec": {"release": RELEASE, "modelRef": ref} | spec,
        }
        self.admin.create(self.admin.path(PLURAL), body)

    def status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.admin.get(self.admin.path(PLURAL, name)).get("status") or {}
        return status

    def wait(self, name: str, until: Any = TERMINAL, timeout: float = 90) -> dict[str, Any]:
        """Poll until the status satisfies ``until`` (phases, or a predicate)."""
        check = until if callable(until) else (lambda s: s.get("phase") in until)
        deadline = time.monotonic() + timeout
        status = self.status(name)
        while not check(status):
            if self.proc is not None and self.proc.poll() is not None:
                raise HarnessError(f"controller exited {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise HarnessError(f"{name} stuck: {json.dumps(status)[:1500]}\n{self.log_tail()}")
            time.sleep(0.1)
            status = self.status(name)
        return status

    # the release --------------------------------------------------------------------

    def deployment(self, name: str = RELEASE) -> dict[str, Any]:
        return self.admin.get(self.admin.path("deployments", name))

    def annotations(self) -> dict[str, str]:
        return dict(self.deployment()["metadata"].get("annotations") or {})

    def claim(self, name: str = RELEASE) -> str:
        volumes = self.deployment(name)["spec"]["template"]["spec"]["volumes"]
        return str(
            next(v for v in volumes if v["name"] == "model")["persistentVolumeClaim"]["claimName"]
        )

    def pod_claims(self) -> list[str]:
        pods = self.admin.items(self.admin.path("pods"), "app.kubernetes.io/component=api")
        return sorted(
            v["persistentVolumeClaim"]["claimName"]
            for p in pods
            if not p["metadata"].get("deletionTimestamp") and p["status"].get("phase") == "Running"
            for v in p["spec"]["volumes"]
            if v["name"] == "model"
        )

    def events(self, reason: str) -> list[dict[str, Any]]:
        return [e for e in self.admin.items(self.admin.path("events")) if e.get("reason") == reason]

    def jobs(self) -> list[str]:
        return sorted(j["metadata"]["name"] for j in self.admin.items(self.admin.path("jobs")))

    def promoted(self, name: str, m: Model, api_after: Model | None = None) -> dict[str, Any]:
        """Promote ``m`` (the preview stub serves it) and wait for Promoted."""
        self.preview.model = m
        self.promote(name, m)
        status = self.wait(name)
        assert status["phase"] == "Promoted", (status, self.log_tail())
        self.api.model = api_after or m
        return status

    # with real servers (real_release) ---------------------------------------------------

    def copied(self, claim: str, m: RealModel) -> None:
        """``m`` is what the copy Job put on ``claim`` (KWOK runs none): the preview serves it."""
        self.volumes[claim] = m
        self.preview.route(m.server.url)

    def promoted_real(self, name: str, claim: str, m: RealModel) -> dict[str, Any]:
        """Promote ``m`` (copied to ``claim``, the idle PVC) and wait for Promoted."""
        self.copied(claim, m)
        self.promote(name, m)
        status = self.wait(name, timeout=180)
        assert status["phase"] == "Promoted", (status, self.log_tail())
        return status

    def send(self, texts: Sequence[str], chunk: int = 50) -> None:
        """Live traffic: ``texts`` through the API Service's ``POST /predict``."""
        for i in range(0, len(texts), chunk):
            r = httpx.post(
                self.api.url + "/predict", json={"texts": list(texts[i : i + chunk])}, timeout=120
            )
            r.raise_for_status()


def _install(cp: ControlPlane, namespace: str) -> None:
    cp.helm(
        "install", RELEASE, str(REPO / "charts" / "flipserve"), "-n", namespace,
        "--set", "ingress.enabled=false", "--set", "api.replicaCount=2",
        # A failing copy fails at once instead of after the chart's retries with backoff.
        "--set", "copyJob.backoffLimit=0",
    )  # fmt: skip


@contextmanager
def release(
    cp: ControlPlane, namespace: str, tmp: Path, **controller_env: str
) -> Iterator[Harness]:
    """Install the chart in ``namespace``, start stub servers and a controller."""
    _install(cp, namespace)
    (tmp / "eval.jsonl").write_text(eval_set())
    settings = Settings(kubeconfig=cp.kubeconfig, namespace=namespace)
    admin = Kube(credentials(settings), namespace)
    with StubServer(Model("none", digest("none"))) as api, StubServer(api.model) as preview:
        h = Harness(cp, namespace, tmp, api, preview, admin)
        h.start_controller(**controller_env)
        try:
            yield h
        finally:
            h.stop_controller()
            admin.close()


def until_pods_on(h: Harness, claim: str, timeout: float = 60) -> list[str]:
    """Wait until both API pods run on ``claim``."""
    deadline = time.monotonic() + timeout
    while (claims := h.pod_claims()) != [claim, claim]:
        if time.monotonic() > deadline:
            raise HarnessError(f"API pods still on {claims}, expected 2 on {claim}")
        time.sleep(0.2)
    return claims


# --- real model servers behind Service stand-ins ------------------------------------

API_TOKEN = secrets.token_hex(8)
"""The real servers' bearer token (``GET /traffic/sample``); the controller sends it."""

DRIFT_P_VALUE = 1e-3
"""The drift threshold with real servers (gate and online): in-domain tweets have
p-values spread over (0, 1], so at 0.05 up to one run in twenty fails by chance;
spam-assassin emails come out below 1e-9."""


@dataclass(frozen=True)
class RealModel:
    """A published artifact and the real ``flipserve serve`` on a volume copied from it."""

    target: ModelTarget
    server: ServerProcess

    @property
    def version(self) -> str:
        return self.target.version

    @property
    def digest(self) -> str:
        return self.target.digest

    @property
    def uri(self) -> str:
        return self.target.uri


@contextmanager
def real_servers(work: Path, targets: dict[str, ModelTarget]) -> Iterator[dict[str, RealModel]]:
    """Copy each target onto a volume with the real copier, and serve each with a real server.

    Started once and shared: each promotion's preview and the API are routed to
    them, so no test pays for a server start (10-30 s on 2 cores).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLIPSERVE_")}
    env["PYTHONPATH"] = str(REPO / "src")
    for version, t in targets.items():
        cmd = [sys.executable, "-m", "flipserve", "copy", "--uri", t.uri, "--digest", t.digest]
        cmd += ["--version", version, "--volume", str(work / version), "--colour", "blue"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise HarnessError(f"flipserve copy of {version} failed:\n{done.stderr[-3000:]}")
    models = {
        version: RealModel(
            t,
            ServerProcess(
                work / version,
                work,
                api_token=API_TOKEN,
                torch_threads=1,
                drift_interval_s=1,
                drift_p_value=DRIFT_P_VALUE,
            ),
        )
        for version, t in targets.items()
    }
    try:
        for m in models.values():
            m.server.wait_live()
            _wait_ready(m.server)
        yield models
    finally:
        for m in models.values():
            m.server.stop()


def _wait_ready(server: ServerProcess, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(server.url + "/v2/health/ready", timeout=5).status_code != 200:
        if time.monotonic() > deadline:
            raise HarnessError(f"{server.url} not ready:\n{server.output()}")
        time.sleep(0.2)


class Service:
    """A Service in front of pods KWOK does not run: ``flipserve proxy`` on 127.0.0.1.

    The test (or the API's follower) routes it to a real server, as the
    endpoints controller would route a Service to the pods that mount a volume.
    """

    def __init__(self, workdir: Path, name: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_hex(8)
        self.routed: str | None = None
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLIPSERVE_")}
        env |= {"PYTHONPATH": str(REPO / "src"), "FLIPSERVE_PROXY_TOKEN": self.token}
        self.log = workdir / f"service-{name}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "flipserve", "proxy", "--port", str(self.port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(self.url + "/-/health", timeout=2)
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    log = self.log.read_text()
                    raise HarnessError(f"{name} proxy did not start: {log}") from None
                time.sleep(0.1)

    def route(self, url: str) -> None:
        if url == self.routed:
            return
        r = httpx.put(
            self.url + "/-/backend",
            json={"url": url, "colour": "real"},
            headers={ADMIN_HEADER: self.token},
            timeout=10,
        )
        r.raise_for_status()
        self.routed = url

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _follow_api(h: Harness, stop: threading.Event) -> None:
    """Route the API Service to the model on the volume the API Deployment mounts."""
    settings = Settings(kubeconfig=h.cp.kubeconfig, namespace=h.ns)
    kube = Kube(credentials(settings), h.ns)
    try:
        while not stop.wait(0.1):
            try:
                volumes = kube.get(kube.path("deployments", RELEASE))["spec"]["template"]["spec"]
                claim = next(
                    v["persistentVolumeClaim"]["claimName"]
                    for v in volumes["volumes"]
                    if v["name"] == "model"
                )
                m = h.volumes.get(claim)
                if m is not None:
                    h.api.route(m.server.url)
            except Exception:  # a transient API error: try again on the next tick
                continue
    finally:
        kube.close()


@contextmanager
def real_release(
    cp: ControlPlane,
    namespace: str,
    tmp: Path,
    heldout: tuple[Sequence[str], Sequence[str]],
    **controller_env: str,
) -> Iterator[Harness]:
    """Like ``release``, with Service stand-ins in front of real servers (``real_servers``).

    The score gate's held-out set is ``heldout``; latency is not judged (the
    held-out batch takes seconds on a busy 2-core machine and lands in the
    server's latency histogram).
    """
    _install(cp, namespace)
    texts, labels = heldout
    rows = (json.dumps({"text": t, "label": lab}) for t, lab in zip(texts, labels, strict=True))
    (tmp / "eval.jsonl").write_text("\n".join(rows) + "\n")
    settings = Settings(kubeconfig=cp.kubeconfig, namespace=namespace)
    admin = Kube(credentials(settings), namespace)
    api, preview = Service(tmp, "api"), Service(tmp, "preview")
    h = Harness(cp, namespace, tmp, api, preview, admin)
    stop = threading.Event()
    follower = threading.Thread(target=_follow_api, args=(h, stop), daemon=True)
    follower.start()
    env = {
        "FLIPSERVE_SCORE_METRIC": "macro_f1",
        "FLIPSERVE_API_TOKEN": API_TOKEN,
        "FLIPSERVE_DRIFT_P_VALUE": str(DRIFT_P_VALUE),
        "FLIPSERVE_MAX_P99_LATENCY_MS": "600000",
    }
    h.start_controller(**env | controller_env)
    try:
        yield h
    finally:
        h.stop_controller()
        stop.set()
        follower.join(10)
        api.stop()
        preview.stop()
        admin.close()
