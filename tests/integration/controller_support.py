"""The controller test harness: a chart release, stub servers and a controller process.

Shared by tests/integration/test_controller.py and bench/rollout_kube.py. See the
test module's docstring for what is real and what is faked.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flipserve.kube import PLURAL, Kube, credentials
from flipserve.settings import Settings
from tests.controlplane import ControlPlane
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
    """One namespace with the chart installed, two stub servers and a controller process."""

    cp: ControlPlane
    ns: str
    tmp: Path
    api: StubServer
    preview: StubServer
    admin: Kube
    proc: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

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
            "FLIPSERVE_LOG_LEVEL": "INFO",
        }

    def start_controller(self, **env: str) -> None:
        log = self.tmp / f"controller-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "flipserve", "controller"],
                cwd=self.tmp,
                env=self.controller_env() | env,
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

    def log_tail(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.logs[-2:])

    # Promotions ---------------------------------------------------------------------

    def promote(self, name: str, m: Model, **spec: Any) -> None:
        ref = {"uri": f"file:///store/{m.version}", "version": m.version, "digest": m.digest}
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


@contextmanager
def release(
    cp: ControlPlane, namespace: str, tmp: Path, **controller_env: str
) -> Iterator[Harness]:
    """Install the chart in ``namespace``, start stub servers and a controller."""
    cp.helm(
        "install", RELEASE, str(REPO / "charts" / "flipserve"), "-n", namespace,
        "--set", "ingress.enabled=false", "--set", "api.replicaCount=2",
        # A failing copy fails at once instead of after the chart's retries with backoff.
        "--set", "copyJob.backoffLimit=0",
    )  # fmt: skip
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
