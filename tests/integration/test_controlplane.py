"""The local control plane is a real Kubernetes: controllers, scheduler, RBAC, helm.

Each test drives a behaviour the chart and the promotion controller depend on, and
would fail against a mock API or a cluster missing a controller.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.controlplane import CommandFailed, ControlPlane, ControlPlaneError, free_port
from tests.controlplane import cluster as cluster_module

pytestmark = [pytest.mark.integration, pytest.mark.controlplane]

TINY_CHART = Path(__file__).resolve().parents[1] / "data" / "charts" / "tiny"
PAUSE = "registry.k8s.io/pause:3.10"


def claim(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}},
    }


def deployment(name: str, claim_name: str, replicas: int = 2) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "strategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": PAUSE,
                            "volumeMounts": [{"name": "model", "mountPath": "/mnt/models"}],
                        }
                    ],
                    "volumes": [
                        {"name": "model", "persistentVolumeClaim": {"claimName": claim_name}}
                    ],
                },
            },
        },
    }


def job(name: str, *, fail: bool = False) -> dict[str, Any]:
    labels = {"pod-container-running-failed.stage.kwok.x-k8s.io": "true"} if fail else {}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": PAUSE}],
                },
            },
        },
    }


def get(cp: ControlPlane, namespace: str, *what: str) -> Any:
    return json.loads(cp.kubectl("get", *what, "-n", namespace, "-o", "json").stdout)


def test_deployment_with_two_replicas_becomes_available(
    control_plane: ControlPlane, namespace: str
) -> None:
    control_plane.apply(claim("model-blue"), deployment("api", "model-blue"), namespace=namespace)

    control_plane.kubectl(
        "wait", "deployment/api", "--for=condition=Available", "-n", namespace, "--timeout=60s"
    )

    status = get(control_plane, namespace, "deployment", "api")["status"]
    assert status["readyReplicas"] == 2
    pods = get(control_plane, namespace, "pods", "-l", "app=api")["items"]
    assert [p["status"]["phase"] for p in pods] == ["Running", "Running"]
    assert all(p["spec"]["nodeName"].startswith("kwok-node-") for p in pods)


def test_changing_claim_name_rolls_out_a_new_replicaset(
    control_plane: ControlPlane, namespace: str
) -> None:
    cp = control_plane
    cp.apply(claim("model-blue"), claim("model-green"), namespace=namespace)
    cp.apply(deployment("api", "model-blue"), namespace=namespace)
    cp.kubectl("rollout", "status", "deployment/api", "-n", namespace, "--timeout=60s")

    patch = [
        {
            "op": "replace",
            "path": "/spec/template/spec/volumes/0/persistentVolumeClaim/claimName",
            "value": "model-green",
        }
    ]
    cp.kubectl("patch", "deployment/api", "-n", namespace, "--type=json", "-p", json.dumps(patch))
    cp.kubectl("rollout", "status", "deployment/api", "-n", namespace, "--timeout=60s")

    sets = get(cp, namespace, "replicasets", "-l", "app=api")["items"]
    by_claim = {
        rs["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]: rs
        for rs in sets
    }
    assert set(by_claim) == {"model-blue", "model-green"}
    assert by_claim["model-green"]["status"].get("readyReplicas") == 2
    assert by_claim["model-blue"]["spec"]["replicas"] == 0
    pods = get(cp, namespace, "pods", "-l", "app=api")["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    claims = {p["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] for p in live}
    assert claims == {"model-green"}


def test_claim_of_the_default_class_binds_and_its_volume_goes_with_it(
    control_plane: ControlPlane, namespace: str
) -> None:
    cp = control_plane
    cp.apply(claim("scratch"), namespace=namespace)
    cp.kubectl(
        "wait",
        "pvc/scratch",
        "--for=jsonpath={.status.phase}=Bound",
        "-n",
        namespace,
        "--timeout=30s",
    )
    pvc = get(cp, namespace, "pvc", "scratch")
    assert pvc["spec"]["storageClassName"] == "standard"
    volume = pvc["spec"]["volumeName"]

    cp.kubectl("delete", "pvc/scratch", "-n", namespace, "--timeout=30s")
    cp.kubectl("wait", f"pv/{volume}", "--for=delete", "--timeout=30s")


def test_job_completes(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.apply(job("once"), namespace=namespace)

    control_plane.kubectl(
        "wait", "job/once", "--for=condition=Complete", "-n", namespace, "--timeout=60s"
    )

    assert get(control_plane, namespace, "job", "once")["status"]["succeeded"] == 1


def test_job_whose_pod_is_labelled_to_fail_fails(
    control_plane: ControlPlane, namespace: str
) -> None:
    control_plane.apply(job("doomed", fail=True), namespace=namespace)

    control_plane.kubectl(
        "wait", "job/doomed", "--for=condition=Failed", "-n", namespace, "--timeout=60s"
    )

    assert get(control_plane, namespace, "job", "doomed")["status"]["failed"] == 1


def test_service_account_is_forbidden_until_a_role_binding_grants_it(
    control_plane: ControlPlane, namespace: str
) -> None:
    cp = control_plane
    cp.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    token = cp.kubectl("create", "token", "reader", "-n", namespace).stdout.strip()
    tls = ssl.create_default_context(cafile=str(cp.pki / "ca.crt"))
    url = f"{cp.server}/api/v1/namespaces/{namespace}/pods"
    headers = {"Authorization": f"Bearer {token}"}

    with httpx.Client(verify=tls, headers=headers, timeout=10) as http:
        denied = http.get(url)
        assert denied.status_code == 403
        assert f"system:serviceaccount:{namespace}:reader" in denied.json()["message"]

        cp.kubectl(
            "create", "role", "pod-reader", "--verb=list", "--resource=pods", "-n", namespace
        )
        cp.kubectl(
            "create",
            "rolebinding",
            "reader",
            "--role=pod-reader",
            f"--serviceaccount={namespace}:reader",
            "-n",
            namespace,
        )
        deadline = time.monotonic() + 10
        while (allowed := http.get(url)).status_code == 403 and time.monotonic() < deadline:
            time.sleep(0.2)  # RBAC reads bindings from an informer cache
        assert allowed.status_code == 200
        assert allowed.json()["kind"] == "PodList"


def test_helm_install_and_helm_test_hook_succeed(
    control_plane: ControlPlane, namespace: str
) -> None:
    cp = control_plane
    cp.helm("install", "tiny", str(TINY_CHART), "-n", namespace, "--wait", "--timeout=90s")

    result = cp.helm("test", "tiny", "-n", namespace, "--timeout=60s")

    assert "Phase:          Succeeded" in result.stdout
    assert get(cp, namespace, "deployment", "tiny-web")["status"]["readyReplicas"] == 2
    assert get(cp, namespace, "pvc", "tiny-data")["status"]["phase"] == "Bound"


def test_helm_test_fails_when_the_hook_pod_fails(
    control_plane: ControlPlane, namespace: str
) -> None:
    cp = control_plane
    cp.helm("install", "tiny", str(TINY_CHART), "-n", namespace, "--set", "failTest=true")

    with pytest.raises(CommandFailed) as failed:
        cp.helm("test", "tiny", "-n", namespace, "--timeout=60s")

    assert "tiny-test" in failed.value.result.stderr
    pod = get(cp, namespace, "pod", "tiny-test")
    assert pod["status"]["phase"] == "Failed"


def test_kubectl_and_helm_from_env_reach_the_cluster(control_plane: ControlPlane) -> None:
    env = control_plane.env
    version = subprocess.run(
        ["kubectl", "version", "-o", "json"], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(version.stdout)["serverVersion"]["gitVersion"].startswith("v1.")
    helm = subprocess.run(["helm", "list", "-A"], env=env, capture_output=True, text=True)
    assert helm.returncode == 0, helm.stderr


def test_stop_ends_every_process_and_removes_the_directory(control_plane: ControlPlane) -> None:
    cluster = ControlPlane(control_plane.bin_dir, nodes=1).start()
    processes = [c.process for c in cluster.components]
    assert [c.name for c in cluster.components] == [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
    ]

    cluster.stop()

    assert all(p.returncode is not None for p in processes)  # exited and reaped
    assert not cluster.root.exists()


def test_start_fails_with_the_reason_and_leaves_nothing_behind(tmp_path: Path) -> None:
    broken = tmp_path / "bin"
    broken.mkdir()
    etcd = broken / "etcd"
    etcd.write_text("#!/bin/sh\necho 'etcd: cannot open data dir' >&2\nexit 3\n")
    etcd.chmod(etcd.stat().st_mode | stat.S_IEXEC)
    cluster = ControlPlane(broken, root=tmp_path / "root")

    with pytest.raises(ControlPlaneError, match=r"etcd exited with 3[\s\S]*cannot open data dir"):
        cluster.start(timeout=20)

    assert not cluster.root.exists()
    assert cluster.components == []


def test_start_retries_when_a_picked_port_is_taken_before_binding(
    control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    picks = iter([taken])
    monkeypatch.setattr(cluster_module, "free_port", lambda: next(picks, free_port()))

    with squatter, ControlPlane(control_plane.bin_dir, nodes=1) as cluster:
        assert f":{taken}" not in cluster.etcd_url
        assert cluster.kubectl("get", "nodes").returncode == 0


def test_kubeconfig_for_a_service_account_is_held_to_its_rbac(
    control_plane: ControlPlane, namespace: str
) -> None:
    cp = control_plane
    cp.kubectl("create", "serviceaccount", "controller", "-n", namespace)
    as_controller = str(cp.kubeconfig_for(namespace, "controller"))

    denied = cp.kubectl("--kubeconfig", as_controller, "get", "deployments", check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr

    cp.kubectl(
        "create",
        "rolebinding",
        "controller-edit",
        "--clusterrole=edit",
        f"--serviceaccount={namespace}:controller",
        "-n",
        namespace,
    )
    deadline = time.monotonic() + 10
    while (
        allowed := cp.kubectl("--kubeconfig", as_controller, "get", "deployments", check=False)
    ).returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert allowed.returncode == 0, allowed.stderr
    other = cp.kubectl("--kubeconfig", as_controller, "get", "pods", "-n", "default", check=False)
    assert "forbidden" in other.stderr  # the binding is namespaced


def test_every_node_heartbeats_through_a_lease(control_plane: ControlPlane) -> None:
    # Without leases KWOK's status heartbeat is slower than the node lifecycle
    # controller's grace period: nodes would flap NotReady mid-session.
    leases = json.loads(
        control_plane.kubectl("get", "leases", "-n", "kube-node-lease", "-o", "json").stdout
    )["items"]
    nodes = json.loads(control_plane.kubectl("get", "nodes", "-o", "json").stdout)["items"]

    assert {lease["metadata"]["name"] for lease in leases} == {
        node["metadata"]["name"] for node in nodes
    }
    now = dt.datetime.now(dt.UTC)
    for lease in leases:
        renewed = dt.datetime.fromisoformat(lease["spec"]["renewTime"].replace("Z", "+00:00"))
        assert (now - renewed).total_seconds() < lease["spec"]["leaseDurationSeconds"]
