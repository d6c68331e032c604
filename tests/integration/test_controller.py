"""The promotion controller against the real local control plane, with the chart installed.

Each test installs the chart into its own namespace, runs ``flipserve controller``
as a subprocess authenticated only by the chart's ServiceAccount token (RBAC on:
a permission missing from the chart's Role fails the test), creates Promotion
objects and checks what the controller did to the cluster.

What is real: the API server, RBAC, the Deployment/ReplicaSet/Job controllers,
the chart, the controller process, its Lease, Events and every patch. What is
faked: pods (KWOK marks them Running/Ready and Job pods Succeeded, so the copy
Job "succeeds" without copying), and the model servers the gates call, which
are stub servers on 127.0.0.1 (tests/integration/stub_server.py) that the test
tells what they serve.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from flipserve.kube import PLURAL, Kube, credentials
from flipserve.settings import Settings
from tests.controlplane import ControlPlane
from tests.integration.stub_server import Model, StubServer, eval_set

pytestmark = [pytest.mark.integration, pytest.mark.controlplane]

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

    def start_controller(self) -> None:
        log = self.tmp / f"controller-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "flipserve", "controller"],
                cwd=self.tmp,
                env=self.controller_env(),
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
                pytest.fail(f"controller exited {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{name} stuck: {json.dumps(status)[:1500]}\n{self.log_tail()}")
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


@pytest.fixture
def h(control_plane: ControlPlane, namespace: str, tmp_path: Path) -> Iterator[Harness]:
    control_plane.helm(
        "install", RELEASE, str(REPO / "charts" / "flipserve"), "-n", namespace,
        "--set", "ingress.enabled=false",
        "--set", "api.replicaCount=2",
    )  # fmt: skip
    (tmp_path / "eval.jsonl").write_text(eval_set())
    settings = Settings(kubeconfig=control_plane.kubeconfig, namespace=namespace)
    admin = Kube(credentials(settings), namespace)
    with StubServer(Model("none", digest("none"))) as api, StubServer(api.model) as preview:
        h = Harness(control_plane, namespace, tmp_path, api, preview, admin)
        h.start_controller()
        try:
            yield h
        finally:
            h.stop_controller()
            admin.close()


def _until_pods_on(h: Harness, claim: str, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while (claims := h.pod_claims()) != [claim, claim]:
        if time.monotonic() > deadline:
            pytest.fail(f"API pods still on {claims}, expected 2 on {claim}")
        time.sleep(0.2)
    return claims


# --- the happy path -------------------------------------------------------------------


def test_promotions_reach_promoted_and_the_api_pods_mount_the_new_volume(h: Harness) -> None:
    first = h.promoted("v1", model("v1", 0.7))
    assert "fromColour" not in first and first["toColour"] == "blue"  # first deployment
    second = h.promoted("v2", model("v2", 0.9))

    assert (second["fromColour"], second["toColour"]) == ("blue", "green")
    assert second["score"] == pytest.approx(0.9)
    assert second["productionScore"] == pytest.approx(0.7)
    assert [g["name"] for g in second["gates"]] == ["score", "drift", "observe"]
    assert set(second["phaseTimestamps"]) == {
        "Pending", "Copying", "Verifying", "Gating", "Switching", "Observing", "Promoted"
    }  # fmt: skip
    ann = h.annotations()
    assert ann["flipserve.dev/active-colour"] == "green"
    assert ann["flipserve.dev/model-version"] == "v2"
    assert ann["flipserve.dev/model-digest"] == digest("v2")
    assert ann["flipserve.dev/previous-model-version"] == "v1"
    assert "flipserve.dev/promotion" not in ann  # the release lock is dropped
    assert h.claim() == GREEN
    assert _until_pods_on(h, GREEN) == [GREEN, GREEN]
    assert h.deployment(f"{RELEASE}-preview")["spec"]["replicas"] == 0
    assert h.jobs() == [f"{RELEASE}-copy-v1", f"{RELEASE}-copy-v2"]
    # The first promotion found blue already mounted: only the second one patched.
    assert len(h.events("SwitchedColour")) == 1


# --- refusals: the active colour never moves ------------------------------------------


def test_a_worse_model_fails_the_score_gate_and_the_active_colour_stays(h: Harness) -> None:
    h.promoted("v1", model("v1", 0.8))
    worse = model("v2", 0.6)
    h.preview.model = worse
    h.promote("v2", worse)

    status = h.wait("v2")

    assert status["phase"] == "Failed"
    assert "score gate failed" in status["reason"]
    assert "Switching" not in status["phaseTimestamps"]
    assert h.annotations()["flipserve.dev/model-version"] == "v1"
    assert h.claim() == BLUE
    assert h.deployment(f"{RELEASE}-preview")["spec"]["replicas"] == 0
    assert "flipserve.dev/promotion" not in h.annotations()


def test_live_traffic_drifting_from_the_candidate_fails_the_drift_gate(h: Harness) -> None:
    h.promoted("v1", model("v1", 0.7))
    drifting = model("v2", 0.9, drift_p_value=0.001)
    h.preview.model = drifting
    h.promote("v2", drifting)

    status = h.wait("v2")

    assert status["phase"] == "Failed"
    assert "drift gate failed" in status["reason"]
    assert status["driftPValue"] == pytest.approx(0.001)
    assert h.claim() == BLUE
    assert h.annotations()["flipserve.dev/model-version"] == "v1"


def test_a_corrupt_artifact_fails_verification_before_any_switch(h: Harness) -> None:
    h.promoted("v1", model("v1", 0.7))
    # The ref promises digest("v2"); what reached the volume hashes differently, and
    # the preview server (which serves only a volume whose manifest matches its
    # READY marker) reports the digest it really serves.
    h.preview.model = Model(version="v2", digest=digest("v2-corrupt"), quality=0.99)
    h.promote("v2", model("v2", 0.99))

    status = h.wait("v2")

    assert status["phase"] == "Failed"
    assert "failed verification" in status["reason"]
    assert "Gating" not in status["phaseTimestamps"]
    assert h.claim() == BLUE
    assert len(h.events("SwitchedColour")) == 0


# --- crashes: a restarted controller finishes the promotion ---------------------------


@pytest.mark.parametrize("phase", ["Copying", "Gating", "Switching"])
def test_a_controller_killed_mid_promotion_finishes_it_after_restart(
    h: Harness, phase: str
) -> None:
    h.promoted("v1", model("v1", 0.7))
    candidate = model("v2", 0.9)
    h.preview.model = candidate
    h.promote("v2", candidate)

    def in_phase(s: dict[str, Any]) -> bool:
        if phase == "Switching":  # the API patched, the rollout not yet confirmed
            return s.get("phase") == "Switching" and "switchedAt" in s
        return s.get("phase") == phase

    h.wait("v2", in_phase)
    h.kill_controller()
    h.start_controller()  # waits for the dead one's Lease to expire, then resumes
    status = h.wait("v2")

    assert status["phase"] == "Promoted", status
    assert h.claim() == GREEN
    assert h.annotations()["flipserve.dev/model-version"] == "v2"
    assert h.jobs() == [f"{RELEASE}-copy-v1", f"{RELEASE}-copy-v2"]
    assert len(h.events("SwitchedColour")) == 1
    assert _until_pods_on(h, GREEN) == [GREEN, GREEN]


# --- rollback and concurrency ---------------------------------------------------------


def test_rollback_flips_back_to_the_previous_colour_and_model(h: Harness) -> None:
    h.promoted("v1", model("v1", 0.7))
    h.promoted("v2", model("v2", 0.9))

    env = {k: v for k, v in h.cp.env.items() if not k.startswith("FLIPSERVE_")}
    env |= {"PYTHONPATH": str(REPO / "src"), "FLIPSERVE_KUBECONFIG": str(h.cp.kubeconfig)}
    env |= {"FLIPSERVE_NAMESPACE": h.ns, "FLIPSERVE_RELEASE": RELEASE}
    done = subprocess.run(
        [sys.executable, "-m", "flipserve", "rollback", "--kube"],
        env=env, cwd=h.tmp, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr + h.log_tail()
    assert "RolledBack" in done.stdout
    ann = h.annotations()
    assert (ann["flipserve.dev/active-colour"], ann["flipserve.dev/model-version"]) == (
        "blue",
        "v1",
    )
    assert ann["flipserve.dev/model-digest"] == digest("v1")
    assert _until_pods_on(h, BLUE) == [BLUE, BLUE]


def test_a_second_promotion_waits_for_the_running_one(h: Harness) -> None:
    h.promoted("v1", model("v1", 0.7))
    first, second = model("v2", 0.8), model("v3", 0.9)
    h.preview.model = first
    h.promote("v2", first)
    h.wait("v2", lambda s: s.get("phase") == "Copying")
    h.promote("v3", second)

    waiting = h.wait("v3", lambda s: "waiting" in s.get("reason", ""))
    assert "v2" in waiting["reason"]
    assert h.wait("v2")["phase"] == "Promoted"
    h.preview.model = second

    assert h.wait("v3")["phase"] == "Promoted"
    assert h.annotations()["flipserve.dev/model-version"] == "v3"
    assert h.status("v3")["fromColour"] == "green"


def test_the_status_cli_lists_the_release_and_its_promotions(h: Harness) -> None:
    h.promoted("v1", model("v1", 0.7))
    env = {k: v for k, v in h.cp.env.items() if not k.startswith("FLIPSERVE_")}
    env |= {"PYTHONPATH": str(REPO / "src"), "FLIPSERVE_KUBECONFIG": str(h.cp.kubeconfig)}
    env |= {"FLIPSERVE_NAMESPACE": h.ns, "FLIPSERVE_RELEASE": RELEASE}
    out = subprocess.run(
        [sys.executable, "-m", "flipserve", "status", "--kube"],
        env=env, cwd=h.tmp, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "active   blue  version v1" in out
    assert "v1" in out and "Promoted" in out
