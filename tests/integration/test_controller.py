"""The promotion controller against the real local control plane, with the chart installed.

Each test installs the chart into its own namespace, runs ``flipserve controller``
as a subprocess authenticated only by the chart's ServiceAccount token (RBAC on:
a permission missing from the chart's Role fails the test), creates Promotion
objects and checks what the controller did to the cluster.

What is real: the API server, RBAC, the Deployment/ReplicaSet/Job controllers,
the chart, the controller process, its Lease, Events and every patch. What is
faked: pods (KWOK marks them Running/Ready and Job pods Succeeded, so the copy
Job "succeeds" without copying), so the servers the gates call run on
127.0.0.1. The gate tests use real ``flipserve serve`` processes with real
trained models behind Service stand-ins (``flipserve proxy``); the tests of
the cluster mechanics (crash and restart, locks, rollback, a failing copy Job,
errors while observing) use stub servers (tests/integration/stub_server.py)
that the test tells what they serve (see docs/controller.md for why).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from kubernetes import client
from kubernetes.config.incluster_config import InClusterConfigLoader

from flipserve.kube import Kube, from_configuration
from flipserve.promotion.status import ModelTarget
from tests.controlplane import ControlPlane
from tests.integration.controller_support import (
    BLUE,
    DRIFT_P_VALUE,
    GREEN,
    RELEASE,
    Harness,
    RealModel,
    digest,
    model,
    real_release,
    real_servers,
    release,
    until_pods_on,
)
from tests.integration.promotion_support import heldout, live_emails, live_tweets, published
from tests.integration.stub_server import Load

__all__ = ["heldout", "live_emails", "live_tweets", "published"]  # fixtures

pytestmark = [pytest.mark.integration, pytest.mark.controlplane]


@pytest.fixture
def h(control_plane: ControlPlane, namespace: str, tmp_path: Path) -> Iterator[Harness]:
    with release(control_plane, namespace, tmp_path) as harness:
        yield harness


@pytest.fixture(scope="module")
def real_models(
    tmp_path_factory: pytest.TempPathFactory, published: dict[str, ModelTarget]
) -> Iterator[dict[str, RealModel]]:
    """v1 (weak) and v2 (better), each served by a real server for the whole module."""
    work = tmp_path_factory.mktemp("real-servers")
    with real_servers(work, {v: published[v] for v in ("v1", "v2")}) as models:
        yield models


@pytest.fixture
def rh(
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    heldout: tuple[list[str], list[str]],
    real_models: dict[str, RealModel],
) -> Iterator[Harness]:
    with real_release(control_plane, namespace, tmp_path, heldout) as harness:
        yield harness


# --- the gates, measured by real model servers -------------------------------------
#
# v1 is `flipserve train --config tiny` (weak), v2 a small, clearly better config
# (tests/conftest.py); each is copied from a file:// store by the real copier and served
# by a real `flipserve serve` for the whole module. The preview Service is routed to
# the server of the model the test says the copy put on the idle volume (KWOK runs
# no copy Job); the API Service follows the API Deployment's volume.


def test_promotions_reach_promoted_and_the_api_pods_mount_the_new_volume(
    rh: Harness, real_models: dict[str, RealModel], live_tweets: list[str]
) -> None:
    v1, v2 = real_models["v1"], real_models["v2"]
    first = rh.promoted_real("v1", BLUE, v1)
    assert "fromColour" not in first and first["toColour"] == "blue"  # first deployment
    rh.send(live_tweets * 2)  # live traffic for the drift gate: tweets, like the reference
    second = rh.promoted_real("v2", GREEN, v2)

    assert (second["fromColour"], second["toColour"]) == ("blue", "green")
    # Both scores measured through the real preview server; v1's is the baseline.
    assert second["productionScore"] == pytest.approx(first["score"])
    assert second["score"] > second["productionScore"] + 0.15
    gates = {g["name"]: g for g in second["gates"]}
    assert list(gates) == ["score", "drift", "observe"]
    assert gates["drift"]["passed"] and "no drift" in gates["drift"]["detail"], gates["drift"]
    assert second["driftPValue"] >= DRIFT_P_VALUE
    assert gates["observe"]["passed"], gates["observe"]
    assert set(second["phaseTimestamps"]) == {
        "Pending", "Copying", "Verifying", "Gating", "Switching", "Observing", "Promoted"
    }  # fmt: skip
    ann = rh.annotations()
    assert ann["flipserve.dev/active-colour"] == "green"
    assert ann["flipserve.dev/model-version"] == "v2"
    assert ann["flipserve.dev/model-digest"] == v2.digest
    assert ann["flipserve.dev/previous-model-version"] == "v1"
    assert "flipserve.dev/promotion" not in ann  # the release lock is dropped
    assert rh.claim() == GREEN
    assert until_pods_on(rh, GREEN) == [GREEN, GREEN]
    assert rh.deployment(f"{RELEASE}-preview")["spec"]["replicas"] == 0
    assert rh.jobs() == [f"{RELEASE}-copy-v1", f"{RELEASE}-copy-v2"]
    # The first promotion found blue already mounted: only the second one patched.
    assert len(rh.events("SwitchedColour")) == 1
    r = httpx.post(rh.api.url + "/predict", json={"texts": ["what a day"]}, timeout=60)
    assert r.status_code == 200 and r.headers["X-Model-Version"] == "v2"  # users get v2


def test_a_worse_model_fails_the_score_gate_and_the_active_colour_stays(
    rh: Harness, real_models: dict[str, RealModel]
) -> None:
    v1, v2 = real_models["v1"], real_models["v2"]
    rh.promoted_real("v2", BLUE, v2)  # the better model is in production
    rh.copied(GREEN, v1)
    rh.promote("v1", v1)

    status = rh.wait("v1", timeout=180)

    assert status["phase"] == "Failed"
    assert "score gate failed" in status["reason"] and "does not beat" in status["reason"]
    assert status["score"] < status["productionScore"]
    assert "Switching" not in status["phaseTimestamps"]
    assert rh.annotations()["flipserve.dev/model-version"] == "v2"
    assert rh.claim() == BLUE
    assert rh.deployment(f"{RELEASE}-preview")["spec"]["replicas"] == 0
    assert "flipserve.dev/promotion" not in rh.annotations()


def test_live_traffic_drifting_from_the_candidate_fails_the_drift_gate(
    rh: Harness, real_models: dict[str, RealModel], live_emails: list[str]
) -> None:
    v1, v2 = real_models["v1"], real_models["v2"]
    rh.promoted_real("v1", BLUE, v1)
    rh.send(live_emails * 2)  # what users send now: spam-assassin emails, not tweets
    rh.copied(GREEN, v2)
    rh.promote("v2", v2)

    status = rh.wait("v2", timeout=180)

    assert status["phase"] == "Failed"
    assert "drift gate failed" in status["reason"]
    gates = {g["name"]: g for g in status["gates"]}
    assert gates["score"]["passed"]  # better than v1: the drift gate alone refused it
    assert status["driftPValue"] < DRIFT_P_VALUE
    assert rh.claim() == BLUE
    assert rh.annotations()["flipserve.dev/model-version"] == "v1"


def test_a_volume_holding_another_model_fails_verification_before_any_switch(
    rh: Harness, real_models: dict[str, RealModel]
) -> None:
    v1, v2 = real_models["v1"], real_models["v2"]
    rh.promoted_real("v1", BLUE, v1)
    # The ref names v2's digest; what reached the green volume is v1's artifact, and the
    # preview server (which serves only a volume whose manifest matches its READY
    # marker) reports the digest it really serves.
    rh.copied(GREEN, v1)
    rh.promote("v2", v2)

    status = rh.wait("v2", timeout=180)

    assert status["phase"] == "Failed"
    assert "failed verification" in status["reason"]
    assert "Gating" not in status["phaseTimestamps"]
    assert rh.claim() == BLUE
    assert len(rh.events("SwitchedColour")) == 0


# --- cluster mechanics, with stub servers ---------------------------------------------


def test_errors_on_the_new_colour_roll_the_api_back(h: Harness) -> None:
    """Judged on the window summed over the new colour's pods, not on their cumulative
    counters: 100,000 clean requests before the window do not dilute its 30% errors."""
    h.promoted("v1", model("v1", 0.7))
    candidate = model("v2", 0.9)
    h.preview.model = candidate
    h.api.model = model("v2", 0.9, requests=100_000, errors=0)  # each pod's count so far
    h.api.load = Load(requests=100, errors=30)  # each pod, between two readings
    h.promote("v2", candidate)

    status = h.wait("v2")

    assert status["phase"] == "RolledBack", status
    assert "error rate 30.00%" in status["rollbackReason"], status["rollbackReason"]
    baseline = status["observeBaseline"]  # both new pods, read directly, by name
    assert len(baseline) == 2 and {k.rsplit("#", 1)[0] for k in baseline} == set(h.api.pods)
    ann = h.annotations()
    assert (ann["flipserve.dev/active-colour"], ann["flipserve.dev/model-version"]) == (
        "blue",
        "v1",
    )
    assert len(h.events("SwitchedColour")) == 2  # there and back
    assert until_pods_on(h, BLUE) == [BLUE, BLUE]


def test_errors_before_the_observe_window_do_not_roll_the_api_back(h: Harness) -> None:
    """What the new pods counted before Observing began (say, while they warmed up) is
    not the window: clean traffic in it promotes."""
    h.promoted("v1", model("v1", 0.7))
    candidate = model("v2", 0.9)
    h.preview.model = candidate
    h.api.model = model("v2", 0.9, requests=1000, errors=500)  # before the window
    h.api.load = Load(requests=100, errors=0)
    h.promote("v2", candidate)

    status = h.wait("v2")

    assert status["phase"] == "Promoted", status
    observed = status["observed"]
    assert observed["errors"] == 0 and observed["requests"] >= 200, observed
    assert h.annotations()["flipserve.dev/model-version"] == "v2"


def test_a_copy_job_that_fails_verification_fails_the_promotion_before_any_switch(
    h: Harness,
) -> None:
    h.promoted("v1", model("v1", 0.7))
    # In a cluster the copier exits 1 when a file's sha256 or the manifest digest does
    # not match; here KWOK's chaos label makes the copy Job's pod fail the same way.
    cm_path = h.admin.path("configmaps", f"{RELEASE}-copy-job-template")
    template = h.admin.get(cm_path)["data"]["job.yaml"]
    chaos = '        pod-container-running-failed.stage.kwok.x-k8s.io: "true"\n'
    marker = '        flipserve.dev/colour: "${COLOUR}"\n'
    assert template.count(marker) == 1  # the pod template's labels
    h.admin.patch(cm_path, {"data": {"job.yaml": template.replace(marker, marker + chaos)}})
    candidate = model("v2", 0.9)
    h.preview.model = candidate
    h.promote("v2", candidate)

    status = h.wait("v2")

    assert status["phase"] == "Failed"
    assert "copy failed" in status["reason"]
    assert "Verifying" not in status["phaseTimestamps"]
    assert h.claim() == BLUE
    assert h.annotations()["flipserve.dev/model-version"] == "v1"


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
    assert until_pods_on(h, GREEN) == [GREEN, GREEN]


# --- rollback and concurrency ---------------------------------------------------------


def test_rollback_flips_back_to_the_previous_colour_and_model(h: Harness) -> None:
    h.promoted("v1", model("v1", 0.7))
    h.promoted("v2", model("v2", 0.9))

    done = h.cli("rollback")

    assert done.returncode == 0, done.stdout + done.stderr + h.log_tail()
    assert "RolledBack" in done.stdout
    ann = h.annotations()
    assert (ann["flipserve.dev/active-colour"], ann["flipserve.dev/model-version"]) == (
        "blue",
        "v1",
    )
    assert ann["flipserve.dev/model-digest"] == digest("v1")
    assert until_pods_on(h, BLUE) == [BLUE, BLUE]


def test_a_rollback_after_a_refused_promotion_does_not_serve_the_refused_model(
    h: Harness,
) -> None:
    """The refused candidate's copy overwrote the idle volume: it no longer holds v1."""
    h.promoted("v1", model("v1", 0.7))
    h.promoted("v2", model("v2", 0.9))  # blue → green; blue keeps v1
    worse = model("v3", 0.5)
    h.preview.model = worse
    h.promote("v3", worse)  # the copy Job fills blue with v3, then the score gate refuses it
    refused = h.wait("v3")
    assert refused["phase"] == "Failed" and "score gate failed" in refused["reason"]

    done = h.cli("rollback")

    assert done.returncode == 1, done.stdout + done.stderr + h.log_tail()
    assert "the idle colour blue now holds v3, not v1" in done.stdout, done.stdout
    assert "promote v1" in done.stdout
    ann = h.annotations()
    assert (ann["flipserve.dev/active-colour"], ann["flipserve.dev/model-version"]) == (
        "green",
        "v2",
    )
    assert ann["flipserve.dev/blue-model-version"] == "v3"  # what blue's volume holds
    assert h.claim() == GREEN
    assert len(h.events("SwitchedColour")) == 1  # only v2's switch
    assert "flipserve.dev/promotion" not in ann  # the refused rollback dropped the lock


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
    done = h.cli("status", timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "active   blue  version v1" in out
    assert "v1" in out and "Promoted" in out


# --- credentials and readiness ----------------------------------------------------------


def test_in_cluster_credentials_authenticate_against_the_api_server(h: Harness) -> None:
    """What a pod reads: the ServiceAccount token through the official in-cluster loader."""
    token = h.cp.kubectl(
        "create", "token", f"{RELEASE}-controller", "-n", h.ns, "--duration=1h"
    ).stdout.strip()
    (h.tmp / "sa-token").write_text(token)
    server = urlsplit(h.cp.server)
    env = {
        "KUBERNETES_SERVICE_HOST": str(server.hostname),
        "KUBERNETES_SERVICE_PORT": str(server.port),
    }
    cfg = client.Configuration()
    loader = InClusterConfigLoader(str(h.tmp / "sa-token"), str(h.cp.pki / "ca.crt"), environ=env)
    loader.load_and_set(cfg)  # type: ignore[no-untyped-call]
    path = h.admin.path("leases", f"{RELEASE}-controller")
    deadline = time.monotonic() + 60
    while h.admin.find(path) is None:  # the running controller takes it
        assert time.monotonic() < deadline, h.log_tail()
        time.sleep(0.2)
    kube = Kube(from_configuration(cfg), h.ns)
    try:
        lease = kube.get(path)  # the Role allows exactly this Lease
    finally:
        kube.close()
    assert lease["spec"]["holderIdentity"]


def test_the_controller_is_ready_once_it_holds_the_lease(h: Harness) -> None:
    assert "leader" in h.readiness(200)
    assert httpx.get(h.health_url + "/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize("who", ["bad-token", "no-role"])
def test_a_controller_the_api_server_refuses_says_why_and_never_turns_ready(
    h: Harness, who: str
) -> None:
    """Not a silent standby: the refusal is logged as an error and /readyz stays 503."""
    h.stop_controller()
    if who == "bad-token":
        token, status = "not-a-service-account-token", 401
    else:  # a real token, of a ServiceAccount the chart's Role is not bound to
        token = h.cp.kubectl("create", "token", "default", "-n", h.ns).stdout.strip()
        status = 403
    (h.tmp / "refused-token").write_text(token)
    h.start_controller(FLIPSERVE_KUBE_TOKEN_PATH=str(h.tmp / "refused-token"))

    h.readiness(503, containing=f"HTTP {status}")
    time.sleep(3)  # FLIPSERVE_CONTROLLER_LEASE_S=3: several attempts later, still refused

    assert "not a standby" in h.readiness(503, containing=f"HTTP {status}", timeout=1)
    log = h.log_tail()
    assert f"HTTP {status}" in log and "not a standby" in log, log
    assert "standby: lease" not in log, log
