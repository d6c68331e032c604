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

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.controlplane import ControlPlane
from tests.integration.controller_support import (
    BLUE,
    GREEN,
    RELEASE,
    REPO,
    Harness,
    digest,
    model,
    release,
    until_pods_on,
)
from tests.integration.server_support import LABELS, ServerProcess, make_volume
from tests.integration.stub_server import Model

pytestmark = [pytest.mark.integration, pytest.mark.controlplane]


@pytest.fixture
def h(control_plane: ControlPlane, namespace: str, tmp_path: Path) -> Iterator[Harness]:
    with release(control_plane, namespace, tmp_path) as harness:
        yield harness


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
    assert until_pods_on(h, GREEN) == [GREEN, GREEN]
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


def test_errors_on_the_new_colour_roll_the_api_back(h: Harness) -> None:
    h.promoted("v1", model("v1", 0.7))
    candidate = model("v2", 0.9)
    h.preview.model = candidate
    h.api.model = model("v1", 0.7, errors=30, requests=100)  # what the API reports after the flip
    h.promote("v2", candidate)

    status = h.wait("v2")

    assert status["phase"] == "RolledBack"
    assert "error rate" in status["rollbackReason"]
    ann = h.annotations()
    assert (ann["flipserve.dev/active-colour"], ann["flipserve.dev/model-version"]) == (
        "blue",
        "v1",
    )
    assert len(h.events("SwitchedColour")) == 2  # there and back
    assert until_pods_on(h, BLUE) == [BLUE, BLUE]


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
    assert until_pods_on(h, BLUE) == [BLUE, BLUE]


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


# --- the same controller, gated by real model servers ---------------------------------


@pytest.mark.slow
def test_verification_score_and_observe_use_a_real_model_server(
    h: Harness, server_artifact: Path, server_tweets: list[str]
) -> None:
    """The preview and API URLs point at a real ``flipserve serve`` on a local volume.

    The model is the tiny untrained artifact of the server tests, so its score is
    whatever it is: the margin is set to let any measured score through, and the test
    checks that the score was measured through the server, the digest verified against
    what the server loaded, and the API's metrics observed. The drift gate is skipped:
    an untrained model's verdict on this traffic would be arbitrary; the server's
    ``POST /drift`` has its own tests (test_server.py).
    """
    h.promoted("v1", model("v1", 0.7))
    volume = h.tmp / "green"
    real_digest = make_volume(volume, server_artifact, "tiny-1")
    heldout = h.tmp / "heldout-real.jsonl"
    rows = [{"text": t, "label": LABELS[i % 3]} for i, t in enumerate(server_tweets[:30])]
    heldout.write_text("".join(json.dumps(r) + "\n" for r in rows))
    server = ServerProcess(volume, h.tmp, colour="green", model_name="flipserve")
    try:
        server.wait_live()
        h.stop_controller()
        urls = json.dumps({"api": server.url, "preview": server.url})
        # The held-out batch on a busy 2-core machine takes seconds: latency is not judged here.
        h.start_controller(
            FLIPSERVE_SERVICE_URLS=urls,
            FLIPSERVE_HELDOUT_PATH=str(heldout),
            FLIPSERVE_MAX_P99_LATENCY_MS="600000",
        )
        ref = {"uri": "file:///store/tiny-1", "version": "tiny-1", "digest": real_digest}
        h.admin.create(
            h.admin.path("promotions"),
            {
                "apiVersion": "flipserve.dev/v1alpha1",
                "kind": "Promotion",
                "metadata": {"name": "tiny"},
                "spec": {"release": RELEASE, "modelRef": ref, "scoreMargin": -1.0,
                         "skipDriftGate": True},
            },
        )  # fmt: skip
        status = h.wait("tiny", timeout=240)
    finally:
        server.stop()

    assert status["phase"] == "Promoted", (status.get("rollbackReason"), status["reason"])
    assert isinstance(status["score"], float)  # measured through POST /predict
    gates = {g["name"]: g for g in status["gates"]}
    assert gates["observe"]["passed"]
    assert h.annotations()["flipserve.dev/model-digest"] == real_digest
    assert h.claim() == GREEN
