"""The Helm chart against a real API server (the local control plane, KWOK pods).

Installs every ci/*-values.yaml mode with ``--wait`` and runs ``helm test``;
upgrades after a controller-style colour flip and checks the flip survives;
rolls back; follows the API pods' volume; and proves with ``kubectl auth
can-i`` and a real Job creation that the controller's ServiceAccount may do
exactly the promotion steps and nothing else.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from flipserve.kubeplatform import render_copy_job
from flipserve.promotion import ModelTarget
from tests.controlplane import CommandFailed, ControlPlane
from tests.integration.chart_support import CHART, CI_VALUES, Obj

pytestmark = [pytest.mark.integration, pytest.mark.controlplane]

RELEASE = "flipserve"  # fullname == release name, as `make deploy` installs it
SA = "flipserve-controller"
MONITORING_CRDS = (
    ("servicemonitors", "ServiceMonitor"),
    ("prometheusrules", "PrometheusRule"),
)


def install(cp: ControlPlane, ns: str, *args: str) -> str:
    out = cp.helm(
        "install", RELEASE, str(CHART), "-n", ns, "--wait", "--timeout", "120s", *args,
        timeout=180,
    )  # fmt: skip
    return out.stdout


def get(cp: ControlPlane, ns: str, kind: str, name: str) -> Obj:
    obj: Obj = json.loads(cp.kubectl("get", kind, name, "-n", ns, "-o", "json").stdout)
    return obj


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.5)


def claim(obj: Obj) -> str:
    spec = obj["spec"]["template"]["spec"] if "template" in obj["spec"] else obj["spec"]
    (pvc,) = [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
    return str(pvc["persistentVolumeClaim"]["claimName"])


def api_pod_claims(cp: ControlPlane, ns: str) -> list[str]:
    selector = "app.kubernetes.io/instance=flipserve,app.kubernetes.io/component=api"
    pods = json.loads(cp.kubectl("get", "pods", "-n", ns, "-l", selector, "-o", "json").stdout)
    return sorted(claim(p) for p in pods["items"] if not p["metadata"].get("deletionTimestamp"))


def flip_like_the_controller(cp: ControlPlane, ns: str, colour: str, version: str) -> None:
    """The switch step's patch (kubeplatform.switch): claim and annotations, in one request."""
    dep = get(cp, ns, "deployment", RELEASE)
    volumes = dep["spec"]["template"]["spec"]["volumes"]
    index = next(i for i, v in enumerate(volumes) if v["name"] == "model")
    claim_path = f"/spec/template/spec/volumes/{index}/persistentVolumeClaim/claimName"
    annotations = {
        "flipserve.dev~1active-colour": colour,
        "flipserve.dev~1model-version": version,
        "flipserve.dev~1model-digest": "ab" * 32,
    }
    patch = [{"op": "replace", "path": claim_path, "value": f"{RELEASE}-model-{colour}"}]
    patch += [
        {"op": "add", "path": f"/metadata/annotations/{key}", "value": value}
        for key, value in annotations.items()
    ]
    label = "/spec/template/metadata/labels/flipserve.dev~1colour"
    patch.append({"op": "add", "path": label, "value": colour})
    cp.kubectl("patch", "deployment", RELEASE, "-n", ns, "--type=json", "-p", json.dumps(patch))


def ensure_monitoring_crds(cp: ControlPlane) -> None:
    """Minimal Prometheus Operator CRDs, so ServiceMonitor/PrometheusRule have a home."""
    for plural, kind in MONITORING_CRDS:
        crd = {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.monitoring.coreos.com"},
            "spec": {
                "group": "monitoring.coreos.com",
                "scope": "Namespaced",
                "names": {"plural": plural, "kind": kind, "singular": kind.lower()},
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            }
                        },
                    }
                ],
            },
        }
        cp.apply(crd)
    for plural, _ in MONITORING_CRDS:
        cp.kubectl(
            "wait", "--for=condition=Established", f"crd/{plural}.monitoring.coreos.com",
            "--timeout=30s",
        )  # fmt: skip


def prepare(cp: ControlPlane, ns: str, values: Path) -> None:
    if values.name == "monitoring-values.yaml":
        ensure_monitoring_crds(cp)
        held_out = '{"text": "great", "label": "positive"}\n'
        cp.kubectl(
            "create", "configmap", "flipserve-eval-set", "-n", ns,
            f"--from-literal=eval.jsonl={held_out}",
        )  # fmt: skip
    if values.name == "existing-secrets-values.yaml":
        cp.kubectl(
            "create", "secret", "generic", "flipserve-store-creds", "-n", ns,
            "--from-literal=accessKeyId=store-user",
            "--from-literal=secretAccessKey=store-pass-123",
        )  # fmt: skip
        cp.kubectl(
            "create", "secret", "generic", "flipserve-token", "-n", ns,
            "--from-literal=token=t0ken",
        )  # fmt: skip


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name.removesuffix("-values.yaml"))
def test_install_accepts_every_resource_and_helm_test_passes(
    control_plane: ControlPlane, namespace: str, values: Path
) -> None:
    cp, ns = control_plane, namespace
    prepare(cp, ns, values)
    notes = install(cp, ns, "-f", str(values))

    rendered = yaml.safe_load_all(cp.helm("get", "manifest", RELEASE, "-n", ns).stdout)
    objs = [o for o in rendered if o]
    assert len(objs) >= 10
    for obj in objs:  # every object the chart rendered is live in the API server
        get(cp, ns, obj["kind"].lower(), obj["metadata"]["name"])
    fullname = get_fullname(objs)
    api = get(cp, ns, "deployment", fullname)
    colour = api["metadata"]["annotations"]["flipserve.dev/active-colour"]
    assert claim(api) == f"{fullname}-model-{colour}"
    assert f"Active colour: {colour}" in notes
    assert "/predict" in notes and '{"text": ' in notes
    for c in ("blue", "green"):
        pvc = get(cp, ns, "pvc", f"{fullname}-model-{c}")
        assert pvc["status"]["phase"] == "Bound"
    crd = get(cp, ns, "crd", "promotions.flipserve.dev")
    assert crd["spec"]["versions"][0]["name"] == "v1alpha1"

    tested = cp.helm("test", RELEASE, "-n", ns, "--timeout", "60s", timeout=90)
    assert "Phase:          Succeeded" in tested.stdout


def get_fullname(objs: list[Obj]) -> str:
    (api,) = [
        o
        for o in objs
        if o["kind"] == "Deployment"
        and o["metadata"]["labels"].get("app.kubernetes.io/component") == "api"
    ]
    return str(api["metadata"]["name"])


def test_upgrade_keeps_the_controllers_colour_and_rollback_restores_a_revision(
    control_plane: ControlPlane, namespace: str
) -> None:
    cp, ns = control_plane, namespace
    install(cp, ns)
    token = get(cp, ns, "secret", "flipserve-api-token")["data"]["token"]
    store = get(cp, ns, "secret", "flipserve-store")["data"]
    wait_for("2 API pods on blue", lambda: api_pod_claims(cp, ns) == ["flipserve-model-blue"] * 2)

    flip_like_the_controller(cp, ns, "green", "v2")
    cp.kubectl("scale", "deployment", "flipserve-preview", "-n", ns, "--replicas=1")
    cp.kubectl("rollout", "status", "deployment/flipserve", "-n", ns, "--timeout=60s")
    wait_for("API pods on green", lambda: api_pod_claims(cp, ns) == ["flipserve-model-green"] * 2)

    cp.helm("upgrade", RELEASE, str(CHART), "-n", ns, "--reuse-values", "--wait", "--timeout=120s")
    api = get(cp, ns, "deployment", RELEASE)
    assert claim(api) == "flipserve-model-green"
    assert api["metadata"]["annotations"]["flipserve.dev/active-colour"] == "green"
    assert api["metadata"]["annotations"]["flipserve.dev/model-version"] == "v2"
    preview = get(cp, ns, "deployment", "flipserve-preview")
    assert claim(preview) == "flipserve-model-blue"
    assert preview["spec"]["replicas"] == 1, "an upgrade must not stop a gating preview"
    assert get(cp, ns, "secret", "flipserve-api-token")["data"]["token"] == token
    assert get(cp, ns, "secret", "flipserve-store")["data"] == store

    cp.helm(
        "upgrade", RELEASE, str(CHART), "-n", ns, "--reuse-values", "--set", "api.replicaCount=3",
        "--wait", "--timeout=120s",
    )  # fmt: skip
    wait_for("3 API pods on green", lambda: api_pod_claims(cp, ns) == ["flipserve-model-green"] * 3)

    cp.helm("rollback", RELEASE, "2", "-n", ns, "--wait", "--timeout=120s")
    api = get(cp, ns, "deployment", RELEASE)
    assert api["spec"]["replicas"] == 2
    assert claim(api) == "flipserve-model-green"
    history = json.loads(cp.helm("history", RELEASE, "-n", ns, "-o", "json").stdout)
    assert [h["revision"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["status"] == "deployed"
    wait_for("2 API pods on green", lambda: api_pod_claims(cp, ns) == ["flipserve-model-green"] * 2)


# (verb, resource) the promotion steps need, in the release namespace.
ALLOWED = [
    ("get", "promotions.flipserve.dev"),
    ("watch", "promotions.flipserve.dev"),
    ("patch", "promotions.flipserve.dev"),
    ("update", "promotions.flipserve.dev/status"),
    ("patch", "promotions.flipserve.dev/status"),
    ("create", "jobs.batch"),
    ("get", "jobs.batch"),
    ("delete", "jobs.batch"),
    ("get", "deployments.apps/flipserve"),
    ("patch", "deployments.apps/flipserve"),
    ("patch", "deployments.apps/flipserve-preview"),
    ("update", "deployments.apps/flipserve-preview", "--subresource=scale"),
    ("list", "pods"),
    ("get", "persistentvolumeclaims/flipserve-model-green"),
    ("get", "configmaps/flipserve-copy-job-template"),
    ("create", "events"),
    ("create", "events.events.k8s.io"),
    ("create", "leases.coordination.k8s.io"),
    ("update", "leases.coordination.k8s.io/flipserve-controller"),
]
# Everything else it might be tempted to touch: other objects, writes it never
# makes, secrets, and anything cluster-wide.
DENIED = [
    ("get", "secrets"),
    ("list", "secrets"),
    ("create", "pods"),
    ("delete", "pods"),
    ("create", "deployments.apps"),
    ("delete", "deployments.apps/flipserve"),
    ("patch", "deployments.apps/flipserve-object-store"),
    ("patch", "deployments.apps/flipserve-controller"),
    ("update", "deployments.apps/flipserve-controller", "--subresource=scale"),
    ("patch", "jobs.batch"),
    ("create", "promotions.flipserve.dev"),
    ("delete", "promotions.flipserve.dev"),
    ("get", "configmaps/kube-root-ca.crt"),
    ("update", "configmaps/flipserve-copy-job-template"),
    ("create", "persistentvolumeclaims"),
    ("delete", "persistentvolumeclaims/flipserve-model-blue"),
    ("create", "roles.rbac.authorization.k8s.io"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("create", "serviceaccounts/token"),
    ("update", "leases.coordination.k8s.io/someone-elses-lease"),
]
CLUSTER_DENIED = [
    ("list", "nodes"),
    ("list", "namespaces"),
    ("get", "persistentvolumes"),
    ("list", "customresourcedefinitions.apiextensions.k8s.io"),
    ("create", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
]


def test_controller_may_do_exactly_the_promotion_steps_and_nothing_cluster_wide(
    control_plane: ControlPlane, namespace: str
) -> None:
    cp, ns = control_plane, namespace
    install(cp, ns)
    other = cp.create_namespace(f"{ns[:50]}-other")
    as_sa = f"--as=system:serviceaccount:{ns}:{SA}"

    def allowed(verb: str, resource: str, *extra: str, where: list[str]) -> bool:
        out = cp.kubectl("auth", "can-i", verb, resource, *extra, *where, as_sa, check=False)
        answer = out.stdout.strip()
        assert answer in ("yes", "no"), out.stderr
        return answer == "yes"

    home = ["-n", ns]
    refused = [c for c in ALLOWED if not allowed(*c, where=home)]
    assert refused == [], "the promotion steps need these"
    granted = [c for c in DENIED if allowed(*c, where=home)]
    assert granted == [], "least privilege: the controller never needs these"
    elsewhere = [c for c in ALLOWED if allowed(*c, where=["-n", other])]
    assert elsewhere == [], "no rights outside the release namespace"
    cluster = [c for c in CLUSTER_DENIED if allowed(*c, where=["--all-namespaces"])]
    assert cluster == [], "nothing cluster-wide"
    cp.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_controller_account_can_run_the_copy_job_template_on_the_idle_volume(
    control_plane: ControlPlane, namespace: str
) -> None:
    cp, ns = control_plane, namespace
    install(cp, ns, "--set", "api.replicaCount=1")
    as_sa = f"--as=system:serviceaccount:{ns}:{SA}"
    cm = json.loads(
        cp.kubectl(
            "get", "configmap", "flipserve-copy-job-template", "-n", ns, "-o", "json", as_sa
        ).stdout
    )  # the controller may read its template...
    ref = ModelTarget(uri="s3://flipserve/artifacts/m/v2", version="v2", digest="ab" * 32, name="m")
    job = render_copy_job(
        cm["data"]["job.yaml"], "flipserve-copy-p1", "p1", "green", "flipserve-model-green", ref
    )
    cp.kubectl("create", "-n", ns, "-f", "-", as_sa, input=json.dumps(job))  # ...and run it

    def complete() -> bool:
        status = get(cp, ns, "job", "flipserve-copy-p1").get("status", {})
        return any(c["type"] == "Complete" for c in status.get("conditions", []))

    wait_for("the copy Job to complete", complete)
    pods = json.loads(
        cp.kubectl("get", "pods", "-n", ns, "-l", "job-name=flipserve-copy-p1", "-o", "json").stdout
    )["items"]
    assert [claim(p) for p in pods] == ["flipserve-model-green"]
    (container,) = pods[0]["spec"]["containers"]
    assert container["args"] == [
        "copy", "--uri", ref.uri, "--digest", ref.digest, "--version", "v2",
        "--volume", "/mnt/target", "--colour", "green",
    ]  # fmt: skip
    assert pods[0]["metadata"]["labels"]["flipserve.dev/promotion"] == "p1"
    cp.kubectl("delete", "job", "flipserve-copy-p1", "-n", ns, as_sa)


def test_schema_refuses_bad_values_at_install_and_installs_nothing(
    control_plane: ControlPlane, namespace: str
) -> None:
    cp, ns = control_plane, namespace
    with pytest.raises(CommandFailed) as failed:
        install(cp, ns, "--set", "volumes.size=-1Gi", "--set", "api.typo=1")
    message = failed.value.result.stderr
    assert "at '/volumes/size'" in message
    assert "additional properties 'typo' not allowed" in message
    releases = json.loads(cp.helm("list", "-n", ns, "-a", "-o", "json").stdout)
    assert releases == []
