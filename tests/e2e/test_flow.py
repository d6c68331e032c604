"""The whole cluster path on real pods, in the order a user meets it.

Seed v1 (the copy Job fills a PVC in a real pod, the API pods mount it read-only and turn
Ready only then), predict through the API Service, promote a better v2 under sustained
load (0 failed), roll back under load to v1, see the score gate refuse v3 (no better than
v1) with the active colour serving on, and a rollback then refused (the idle volume holds
the refused v3, never served), see the drift gate refuse a candidate while the live
traffic has drifted, delete the controller pod mid-promotion twice, and run the chart's
helm test pod. The tests share one release
(module scope) and run in file order; each states the state it leaves.

Models: v1 and v3 are ``flipserve train --config tiny`` (weak), v2 and v4 the ``SMALL``
config of tests/conftest.py (better); each is a re-versioned copy, so digests differ.
Traffic goes only to this machine: the Services' cluster IPs (kube-proxy) on the real
node, or the kind entry point in CI. Every load loop is bounded in count and time.
"""

from __future__ import annotations

import json
import random
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flipserve import data
from flipserve.loadgen import LoadGenerator, LoadStats
from tests.e2e.conftest import RELEASE, E2EError, Release
from tests.integration.server_support import emails, spam_dir

pytestmark = pytest.mark.e2e

MIN_REQUESTS = 3000
LOAD_SECONDS_MAX = 900


def _texts(split: str, n: int, seed: int) -> list[str]:
    rows = random.Random(seed).sample(data.load_dataset().splits[split], n)
    return [e.text for e in rows]


def _predict(release: Release, texts: list[str]) -> dict[str, Any]:
    body = json.dumps({"texts": texts}).encode()
    request = urllib.request.Request(
        release.api_url() + "/predict", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        answer: dict[str, Any] = json.load(reply)
    return answer


def _wait(what: str, check: Callable[[], bool], timeout: float, release: Release) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise E2EError(f"timed out waiting for {what}\n{release.diagnostics()}")
        time.sleep(1)


def _promote(release: Release, ref: Path, *extra: str) -> tuple[int, str, dict[str, Any]]:
    """``flipserve promote --kube REF``: (exit code, its output, the Promotion's status)."""
    result = release.cluster.flipserve("promote", "--kube", str(ref), *extra)
    status = release.promotions()[-1].get("status") or {}
    return result.returncode, result.stdout + result.stderr, status


def _under_load(release: Release, action: Callable[[], Any]) -> tuple[Any, LoadStats]:
    """Run ``action`` while 4 workers send tweets to the API, until both it is done and
    at least MIN_REQUESTS were sent (bounded by LOAD_SECONDS_MAX)."""
    load = LoadGenerator(release.api_url(), _texts("validation", 400, 3), workers=4)
    with load:
        outcome = action()
        deadline = time.monotonic() + LOAD_SECONDS_MAX
        while load.stats.requests < MIN_REQUESTS and time.monotonic() < deadline:
            time.sleep(0.5)
    return outcome, load.stats


def _api_claims(release: Release) -> set[str]:
    """The PVC each Running API pod mounts at /mnt/models."""
    claims = set()
    for pod in release.pods("api"):
        if pod["metadata"].get("deletionTimestamp") or pod["status"].get("phase") != "Running":
            continue
        for volume in pod["spec"]["volumes"]:
            if volume.get("persistentVolumeClaim") and volume["name"] == "model":
                claims.add(volume["persistentVolumeClaim"]["claimName"])
    return claims


def _exec(release: Release, pod: str, *command: str) -> Any:
    return release.cluster.kubectl("exec", pod, "-c", "server", "--", *command, check=False)


@pytest.fixture(scope="module")
def models(tiny_model_dir: Path, small_model_dir: Path) -> dict[str, Path]:
    return {"v1": tiny_model_dir, "v2": small_model_dir, "v3": tiny_model_dir,
            "v4": small_model_dir}  # fmt: skip


def test_seed_copy_job_fills_the_volume_and_api_turns_ready(
    release: Release, models: dict[str, Path]
) -> None:
    # before the seed: no model on either volume, so no API pod is Ready
    assert all(
        not any(c["type"] == "Ready" and c["status"] == "True"
                for c in p["status"].get("conditions", []))
        for p in release.pods("api")
    )  # fmt: skip
    ref = release.publish(models["v1"], "v1")
    code, out, status = _promote(release, ref)
    assert code == 0 and status["phase"] == "Promoted", f"{out}\n{release.diagnostics()}"

    # the copy Job ran in a real pod and exited 0
    copy_pods = release.pods("copy")
    assert copy_pods, "no copy Job pod"
    terminated = copy_pods[-1]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0 and terminated["reason"] == "Completed"
    colour, version = release.active()
    assert version == "v1"
    # every API pod is Ready, mounts that colour's PVC read-only, and READY names v1
    _wait("2 Ready API pods", lambda: len(_ready(release.pods("api"))) == 2, 300, release)
    assert _api_claims(release) == {f"{RELEASE}-model-{colour}"}
    for pod in _ready(release.pods("api")):
        name = pod["metadata"]["name"]
        marker = _exec(release, name, "cat", "/mnt/models/READY")
        assert marker.returncode == 0 and json.loads(marker.stdout)["version"] == "v1"
        mount = next(m for m in pod["spec"]["containers"][0]["volumeMounts"]
                     if m["mountPath"] == "/mnt/models")  # fmt: skip
        assert mount.get("readOnly") is True
        write = _exec(release, name, "touch", "/mnt/models/x")
        assert write.returncode != 0 and "Read-only file system" in write.stderr


def _ready(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        p for p in pods
        if not p["metadata"].get("deletionTimestamp")
        and any(c["type"] == "Ready" and c["status"] == "True"
                for c in p["status"].get("conditions", []))
    ]  # fmt: skip


def test_predict_through_the_api_service(release: Release) -> None:
    answer = _predict(release, ["what a wonderful day", "this is awful"])
    assert answer["version"] == "v1"
    assert answer["colour"] == release.active()[0]
    assert [p["label"] in {"negative", "neutral", "positive"} for p in answer["predictions"]] == [
        True,
        True,
    ]


def test_promote_a_better_model_under_load(release: Release, models: dict[str, Path]) -> None:
    before = release.active()
    ref = release.publish(models["v2"], "v2")
    (code, out, status), stats = _under_load(release, lambda: _promote(release, ref))
    assert code == 0 and status["phase"] == "Promoted", f"{out}\n{release.diagnostics()}"
    assert stats.requests >= MIN_REQUESTS, stats
    assert stats.failed == 0, stats.errors
    colour, version = release.active()
    assert (colour, version) != before and version == "v2"
    _wait("API pods on the new colour only",
          lambda: _api_claims(release) == {f"{RELEASE}-model-{colour}"}, 180, release)  # fmt: skip
    answer = _predict(release, ["great"])
    assert (answer["version"], answer["colour"]) == ("v2", colour)
    assert "v2" in {v for _, v in stats.versions}


def test_rollback_under_load_returns_to_the_model_that_served_before(release: Release) -> None:
    # the idle colour's volume still holds v1: no copy, just the switch back
    result, stats = _under_load(release, lambda: release.cluster.flipserve("rollback", "--kube"))
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{release.diagnostics()}"
    assert stats.failed == 0, stats.errors
    colour, version = release.active()
    assert version == "v1"
    _wait("API pods on the rolled-back colour",
          lambda: _api_claims(release) == {f"{RELEASE}-model-{colour}"}, 180, release)  # fmt: skip
    answer = _predict(release, ["ok then"])
    assert (answer["version"], answer["colour"]) == ("v1", colour)


def test_score_gate_refuses_a_worse_model_and_the_active_colour_serves_on(
    release: Release, models: dict[str, Path]
) -> None:
    before = release.active()
    ref = release.publish(models["v3"], "v3")
    code, out, status = _promote(release, ref, "--skip-drift-gate")
    assert code != 0 and status["phase"] == "Failed", out
    assert "score" in json.dumps(status).lower()
    assert release.active() == before
    assert _predict(release, ["fine"])["version"] == "v1"


def test_rollback_after_a_refused_promotion_never_serves_the_refused_model(
    release: Release,
) -> None:
    # the refused v3 was copied onto the idle colour, which held v2 before
    before = release.active()
    result = release.cluster.flipserve("rollback", "--kube")
    assert result.returncode != 0
    assert "holds v3" in result.stdout + result.stderr, result.stdout + result.stderr
    assert release.active() == before
    assert _predict(release, ["fine"])["version"] == "v1"


def test_drift_gate_refuses_a_candidate_while_live_traffic_has_drifted(
    release: Release, models: dict[str, Path]
) -> None:
    if not (spam_dir() / "spam-2").is_dir():
        pytest.fail("spam-assassin emails missing: run `make data`", pytrace=False)
    before = release.active()
    # the live traffic the drift gate samples: emails, not tweets
    for chunk in range(0, 300, 30):
        _predict(release, emails(300)[chunk : chunk + 30])
    ref = release.publish(models["v4"], "v4")
    code, out, status = _promote(release, ref)
    assert code != 0 and status["phase"] == "Failed", out
    assert "drift" in json.dumps(status).lower()
    assert release.active() == before


def test_controller_pod_deleted_during_copying_and_switching(
    release: Release, models: dict[str, Path]
) -> None:
    """The new controller pod takes the Lease and finishes; the API serves throughout."""
    ref = release.published["v4"]
    # in-domain traffic again, so the drift gate has tweets to judge
    for _ in range(10):
        _predict(release, _texts("validation", 30, random.randrange(1000)))

    def promote_killing_the_controller() -> tuple[int, str, dict[str, Any]]:
        killed: list[str] = []
        earlier = len(release.promotions())
        follower = release.cluster.flipserve_background("promote", "--kube", str(ref))
        deadline = time.monotonic() + 900
        while follower.poll() is None and time.monotonic() < deadline:
            ours = release.promotions()[earlier:]
            phase = (ours[0].get("status") or {}).get("phase", "") if ours else ""
            if phase in ("Copying", "Switching") and phase not in killed:
                pods = [p["metadata"]["name"] for p in release.pods("controller")]
                release.cluster.kubectl("delete", "pod", *pods, "--wait=false")
                killed.append(phase)
            time.sleep(0.5)
        out = follower.communicate(timeout=60)[0]
        assert killed == ["Copying", "Switching"], f"deleted the controller in {killed}\n{out}"
        return follower.returncode, out, release.promotions()[-1].get("status") or {}

    (_, out, status), stats = _under_load(release, promote_killing_the_controller)
    assert status["phase"] in ("Promoted", "RolledBack"), f"{out}\n{release.diagnostics()}"
    assert stats.failed == 0, stats.errors


def test_helm_test_pod_passes(release: Release) -> None:
    result = release.cluster.helm("test", RELEASE, "--logs", "--timeout", "5m", timeout=360)
    assert "Phase:          Succeeded" in result.stdout or "Succeeded" in result.stdout
    assert '"predictions"' in result.stdout


def test_read_only_root_and_no_secret_in_any_log(release: Release) -> None:
    pod = _ready(release.pods("api"))[0]["metadata"]["name"]
    write = _exec(release, pod, "touch", "/flipserve-was-here")
    assert write.returncode != 0 and "Read-only file system" in write.stderr
    secrets = {
        release.secret(f"{RELEASE}-store", "secretAccessKey"),
        release.secret(f"{RELEASE}-api-token", "token"),
    }
    names = json.loads(release.cluster.kubectl("get", "pods", "-o", "json").stdout)["items"]
    for item in names:
        name = item["metadata"]["name"]
        for container in item["spec"]["containers"]:
            log = release.cluster.kubectl(
                "logs", name, "-c", container["name"], "--all-containers=false", check=False
            ).stdout
            for secret in secrets:
                assert secret not in log, (
                    f"a secret appears in the log of {name}/{container['name']}"
                )
