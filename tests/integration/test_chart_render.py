"""The Helm chart rendered by the real helm CLI: lint, conventions, wiring, schema.

No cluster here (test_chart.py installs into the local control plane); these
pin what every install gets: names, labels, colours, env, RBAC and the schema's
error messages.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from flipserve.settings import Settings
from tests.integration.chart_support import (
    CHART,
    CI_VALUES,
    KUBE_VERSION,
    Obj,
    claim_of,
    env_of,
    find,
    helm,
    helm_bin,
    pod_spec,
    render,
)

pytestmark = pytest.mark.integration

MONITORING = CHART / "ci" / "monitoring-values.yaml"


@pytest.fixture(scope="module")
def default() -> list[Obj]:
    return render(MONITORING)


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_helm_lint_is_clean_for_every_ci_values_file(values: Path) -> None:
    out = helm("lint", "--strict", str(CHART), "-f", str(values), "--kube-version", KUBE_VERSION)
    assert "0 chart(s) failed" in out.stdout
    assert "[WARNING]" not in out.stdout and "[ERROR]" not in out.stdout


def test_every_template_file_is_dashed_and_renders_one_resource() -> None:
    templates = [
        p
        for p in (CHART / "templates").rglob("*.yaml")
        if not p.name.startswith("_")  # helpers
    ]
    assert len(templates) >= 20
    for path in templates:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*\.yaml", path.name), path.name
    out = helm(
        "template", "x", str(CHART), "--kube-version", KUBE_VERSION, "-f", str(MONITORING)
    ).stdout
    sources: dict[str, int] = {}
    for doc in out.split("\n---\n"):
        match = re.search(r"^# Source: flipserve/(\S+)$", doc, re.MULTILINE)
        if match and yaml.safe_load(doc):
            sources[match.group(1)] = sources.get(match.group(1), 0) + 1
    assert sources, "nothing rendered"
    assert {k: v for k, v in sources.items() if v != 1} == {}


def test_every_object_carries_standard_labels_and_the_release_prefix(default: list[Obj]) -> None:
    for obj in default:
        if obj["kind"] == "CustomResourceDefinition":
            continue
        name, labels = obj["metadata"]["name"], obj["metadata"]["labels"]
        assert name.startswith("flipserve"), name
        assert labels["app.kubernetes.io/name"] == "flipserve", name
        assert labels["app.kubernetes.io/instance"] == "flipserve", name
        assert labels["app.kubernetes.io/managed-by"] == "Helm", name
        assert labels["helm.sh/chart"] == "flipserve-0.1.0", name


def test_release_name_prefixes_every_resource_and_selectors_stay_stable() -> None:
    objs = render(release="shop", namespace="ml")
    api = find(objs, "Deployment", "shop-flipserve")
    assert api["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "flipserve",
        "app.kubernetes.io/instance": "shop",
        "app.kubernetes.io/component": "api",
    }
    for name in ("shop-flipserve-model-blue", "shop-flipserve-model-green"):
        find(objs, "PersistentVolumeClaim", name)
    find(objs, "ConfigMap", "shop-flipserve-copy-job-template")
    find(objs, "Deployment", "shop-flipserve-preview")


def test_api_mounts_the_initial_colour_read_only_and_never_drops_capacity(
    default: list[Obj],
) -> None:
    api = find(default, "Deployment", "flipserve")
    assert api["metadata"]["annotations"]["flipserve.dev/active-colour"] == "blue"
    assert claim_of(api) == "flipserve-model-blue"
    assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert api["spec"]["template"]["metadata"]["labels"]["flipserve.dev/colour"] == "blue"
    spec = pod_spec(api)
    (server,) = spec["containers"]
    mount = next(m for m in server["volumeMounts"] if m["name"] == "model")
    assert mount == {"name": "model", "mountPath": "/mnt/models", "readOnly": True}
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] > 5
    assert server["args"] == ["serve"]
    env = env_of(server)
    assert env["FLIPSERVE_MODEL_DIR"]["value"] == "/mnt/models"
    assert env["FLIPSERVE_COLOUR"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['flipserve.dev/colour']"
    )


def test_preview_serves_the_idle_colour_and_is_scaled_to_zero(default: list[Obj]) -> None:
    preview = find(default, "Deployment", "flipserve-preview")
    assert preview["spec"]["replicas"] == 0
    assert claim_of(preview) == "flipserve-model-green"
    service = find(default, "Service", "flipserve-preview")
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "preview"


def test_initial_colour_green_swaps_the_api_and_preview_volumes() -> None:
    objs = render(sets={"model.initialColour": "green"})
    assert claim_of(find(objs, "Deployment", "flipserve")) == "flipserve-model-green"
    assert claim_of(find(objs, "Deployment", "flipserve-preview")) == "flipserve-model-blue"


def test_model_volumes_take_size_class_and_access_modes_from_values() -> None:
    objs = render(CHART / "ci" / "external-s3-values.yaml")
    for colour in ("blue", "green"):
        pvc = find(objs, "PersistentVolumeClaim", f"flipserve-model-{colour}")
        assert pvc["spec"]["resources"]["requests"]["storage"] == "2Gi"
        assert pvc["spec"]["storageClassName"] == "standard"
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
        assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_copy_job_template_is_a_job_aimed_by_the_controller(default: list[Obj]) -> None:
    cm = find(default, "ConfigMap", "flipserve-copy-job-template")
    job = yaml.safe_load(cm["data"]["job.yaml"])
    assert job["kind"] == "Job" and job["apiVersion"] == "batch/v1"
    assert "helm.sh/chart" not in job["metadata"]["labels"]
    assert job["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "flipserve-controller"
    spec = pod_spec(job)
    claims = [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [{"name": "target", "persistentVolumeClaim": {"claimName": "${CLAIM_NAME}"}}]
    assert job["metadata"]["name"] == "${JOB_NAME}"
    (copy,) = spec["containers"]
    assert copy["args"] == [
        "copy", "--uri", "${MODEL_REF}", "--digest", "${MODEL_DIGEST}",
        "--version", "${MODEL_VERSION}", "--volume", "/mnt/target", "--colour", "${COLOUR}",
    ]  # fmt: skip
    mount = next(m for m in copy["volumeMounts"] if m["name"] == "target")
    assert mount["mountPath"] == "/mnt/target" and not mount.get("readOnly")
    assert spec["restartPolicy"] == "Never"
    assert env_of(copy)["FLIPSERVE_S3_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "flipserve-store",
        "key": "accessKeyId",
    }


@pytest.mark.parametrize("values", ["default", "existing-secrets-values.yaml"])
def test_the_controller_reaches_the_store_the_copy_job_reads(
    default: list[Obj], values: str
) -> None:
    """The controller reads and writes the production record in the copy Job's store."""
    objs = default if values == "default" else render(CHART / "ci" / values)
    cm = find(objs, "ConfigMap", "flipserve-copy-job-template")
    copy = env_of(pod_spec(yaml.safe_load(cm["data"]["job.yaml"]))["containers"][0])
    controller = find(objs, "Deployment", "flipserve-controller")
    env = env_of(pod_spec(controller)["containers"][0])
    for key in (
        "FLIPSERVE_STORE_URI", "FLIPSERVE_S3_ENDPOINT_URL", "FLIPSERVE_S3_REGION",
        "FLIPSERVE_S3_ACCESS_KEY_ID", "FLIPSERVE_S3_SECRET_ACCESS_KEY",
    ):  # fmt: skip
        assert key in env and env[key] == copy[key], key


def test_copy_job_template_has_no_dollar_but_the_placeholders(default: list[Obj]) -> None:
    text = find(default, "ConfigMap", "flipserve-copy-job-template")["data"]["job.yaml"]
    placeholders = set(re.findall(r"\$\{([A-Z_]+)\}", text))
    assert placeholders == {
        "JOB_NAME", "PROMOTION", "COLOUR", "CLAIM_NAME", "MODEL_REF", "MODEL_VERSION",
        "MODEL_DIGEST",
    }  # fmt: skip
    assert text.count("$") == len(re.findall(r"\$\{[A-Z_]+\}", text))


def test_controller_calls_the_services_on_their_service_port(
    default: list[Obj], monkeypatch: pytest.MonkeyPatch
) -> None:
    controller = find(default, "Deployment", "flipserve-controller")
    env = env_of(pod_spec(controller)["containers"][0])
    assert json.loads(env["FLIPSERVE_SERVICE_URLS"]["value"]) == {
        "api": "http://flipserve.demo.svc:80",
        "preview": "http://flipserve-preview.demo.svc:80",
    }
    monkeypatch.setenv("FLIPSERVE_SERVICE_URLS", env["FLIPSERVE_SERVICE_URLS"]["value"])
    parsed = Settings(_env_file=None).service_urls  # type: ignore[call-arg]
    assert parsed["preview"] == "http://flipserve-preview.demo.svc:80"


def test_the_controller_sends_the_held_out_set_in_chunks_the_servers_accept() -> None:
    objs = render(MONITORING, sets={"server.maxItemsPerRequest": "16"})
    controller = env_of(pod_spec(find(objs, "Deployment", "flipserve-controller"))["containers"][0])
    api = env_of(pod_spec(find(objs, "Deployment", "flipserve"))["containers"][0])
    limit = controller["FLIPSERVE_MAX_ITEMS_PER_REQUEST"]["value"]
    assert limit == api["FLIPSERVE_MAX_ITEMS_PER_REQUEST"]["value"] == "16"


def test_the_held_out_set_is_mounted_into_the_controller_only_when_given(
    default: list[Obj],
) -> None:
    spec = pod_spec(find(default, "Deployment", "flipserve-controller"))
    (controller,) = spec["containers"]
    path = env_of(controller)["FLIPSERVE_HELDOUT_PATH"]["value"]
    assert path == "/etc/flipserve/eval-set/eval.jsonl"
    mount = next(m for m in controller["volumeMounts"] if m["name"] == "eval-set")
    assert path.startswith(mount["mountPath"] + "/") and mount["readOnly"] is True
    volume = next(v for v in spec["volumes"] if v["name"] == "eval-set")
    assert volume["configMap"] == {"name": "flipserve-eval-set"}

    plain = pod_spec(find(render(), "Deployment", "flipserve-controller"))
    assert "FLIPSERVE_HELDOUT_PATH" not in env_of(plain["containers"][0])
    assert "eval-set" not in [v["name"] for v in plain["volumes"]]


def test_the_controller_is_ready_only_once_the_api_server_answers_it() -> None:
    """Its probes call the port the controller serves /readyz and /healthz on."""
    objs = render(MONITORING, sets={"controller.healthPort": "9091"})
    (controller,) = pod_spec(find(objs, "Deployment", "flipserve-controller"))["containers"]
    assert env_of(controller)["FLIPSERVE_CONTROLLER_HEALTH_PORT"]["value"] == "9091"
    assert controller["ports"] == [{"name": "health", "containerPort": 9091, "protocol": "TCP"}]
    assert controller["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert controller["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_every_flipserve_env_var_is_a_settings_field(default: list[Obj]) -> None:
    fields = {f"FLIPSERVE_{name.upper()}" for name in Settings.model_fields}
    containers: list[Obj] = []
    for obj in default:
        if obj["kind"] == "Deployment":
            containers += pod_spec(obj)["containers"]
        if obj["kind"] == "ConfigMap":
            containers += pod_spec(yaml.safe_load(obj["data"]["job.yaml"]))["containers"]
    flipserve = [c for c in containers if c["image"].startswith("flipserve:")]
    assert len(flipserve) == 4  # api, preview, controller, copy
    names = {name for c in flipserve for name in env_of(c) if name.startswith("FLIPSERVE_")}
    assert names - fields == set()
    assert {"FLIPSERVE_STORE_URI", "FLIPSERVE_API_TOKEN", "FLIPSERVE_RELEASE"} <= names


def test_every_container_runs_non_root_with_a_read_only_root(default: list[Obj]) -> None:
    workloads = [o for o in default if o["kind"] in ("Deployment", "Job")]
    workloads.append(
        yaml.safe_load(
            find(default, "ConfigMap", "flipserve-copy-job-template")["data"]["job.yaml"]
        )
    )
    for obj in workloads:
        spec = pod_spec(obj)
        assert spec["securityContext"]["runAsNonRoot"] is True, obj["metadata"]["name"]
        for c in spec["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]
            assert "memory" in c["resources"]["limits"], c["name"]


def test_controller_role_is_namespaced_and_grants_only_the_promotion_steps(
    default: list[Obj],
) -> None:
    kinds = {o["kind"] for o in default}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
    role = find(default, "Role", "flipserve-controller")
    granted = {
        (group, resource, verb, ",".join(rule.get("resourceNames", [])))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert not any("*" in (g, r, v) for g, r, v, _ in granted)
    assert not any(r == "secrets" for _, r, _, _ in granted)
    writes = {(g, r, v, n) for g, r, v, n in granted if v not in ("get", "list", "watch")}
    assert writes == {
        ("flipserve.dev", "promotions", "update", ""),
        ("flipserve.dev", "promotions", "patch", ""),
        ("flipserve.dev", "promotions/status", "update", ""),
        ("flipserve.dev", "promotions/status", "patch", ""),
        ("batch", "jobs", "create", ""),
        ("batch", "jobs", "delete", ""),
        ("apps", "deployments", "patch", "flipserve,flipserve-preview"),
        ("apps", "deployments/scale", "patch", "flipserve,flipserve-preview"),
        ("apps", "deployments/scale", "update", "flipserve,flipserve-preview"),
        ("coordination.k8s.io", "leases", "create", ""),
        ("coordination.k8s.io", "leases", "update", "flipserve-controller"),
        ("", "events", "create", ""),
        ("", "events", "patch", ""),
        ("events.k8s.io", "events", "create", ""),
        ("events.k8s.io", "events", "patch", ""),
    }
    binding = find(default, "RoleBinding", "flipserve-controller")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "flipserve-controller", "namespace": "demo"}
    ]
    controller = find(default, "Deployment", "flipserve-controller")
    assert pod_spec(controller)["serviceAccountName"] == "flipserve-controller"
    assert controller["spec"]["replicas"] == 1


def test_promotion_crd_prints_phase_colours_version_score_and_drift(default: list[Obj]) -> None:
    crd = find(default, "CustomResourceDefinition", "promotions.flipserve.dev")
    assert crd["spec"]["scope"] == "Namespaced"
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["From"] == ".status.fromColour" and columns["To"] == ".status.toColour"
    assert columns["Version"] == ".spec.modelRef.version"
    assert columns["Score"] == ".status.score"
    assert columns["Drift-P"] == ".status.driftPValue"
    assert columns["Age"] == ".metadata.creationTimestamp"
    phases = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["phase"]
    assert phases["enum"] == [
        "Pending", "Copying", "Verifying", "Gating", "Switching", "Observing",
        "Promoted", "Failed", "RolledBack",
    ]  # fmt: skip


def test_object_store_mode_points_the_store_at_the_in_cluster_seaweedfs(default: list[Obj]) -> None:
    api = find(default, "Deployment", "flipserve")
    env = env_of(pod_spec(api)["containers"][0])
    assert (
        env["FLIPSERVE_S3_ENDPOINT_URL"]["value"] == "http://flipserve-object-store.demo.svc:8333"
    )
    service = find(default, "Service", "flipserve-object-store")
    assert service["spec"]["ports"] == [
        {"name": "s3", "port": 8333, "targetPort": "s3", "protocol": "TCP"}
    ]
    store = find(default, "Deployment", "flipserve-object-store")
    assert store["metadata"]["labels"]["app.kubernetes.io/component"] == "object-store"
    assert service["spec"]["selector"] == store["spec"]["selector"]["matchLabels"]
    assert claim_of_store(store) == "flipserve-object-store"
    find(default, "PersistentVolumeClaim", "flipserve-object-store")
    store_env = env_of(pod_spec(store)["containers"][0])
    for var, key in (
        ("AWS_ACCESS_KEY_ID", "accessKeyId"),
        ("AWS_SECRET_ACCESS_KEY", "secretAccessKey"),
    ):
        assert store_env[var]["valueFrom"]["secretKeyRef"] == {
            "name": "flipserve-store",
            "key": key,
        }
    bucket = find(default, "Job", "flipserve-object-store-bucket")
    assert "post-install" in bucket["metadata"]["annotations"]["helm.sh/hook"]
    assert env_of(pod_spec(bucket)["containers"][0])["BUCKET"]["value"] == "flipserve"


def claim_of_store(store: Obj) -> str:
    (data,) = [v for v in pod_spec(store)["volumes"] if v["name"] == "data"]
    return str(data["persistentVolumeClaim"]["claimName"])


def test_the_object_store_runs_weed_without_a_shell_as_non_root_on_a_read_only_root(
    default: list[Obj],
) -> None:
    """The image may be FROM scratch with /usr/bin/weed alone (as the one built here is)."""
    spec = pod_spec(find(default, "Deployment", "flipserve-object-store"))
    (weed,) = spec["containers"]
    assert weed["image"] == "chrislusf/seaweedfs:4.53"
    assert weed["command"] == ["/usr/bin/weed"]
    assert weed["args"][:2] == ["-logtostderr", "server"] and "-s3" in weed["args"]
    # Only the S3 gateway listens beyond the pod; master, volume and filer stay on loopback.
    assert {"-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3.ip.bind=0.0.0.0"} <= set(weed["args"])
    assert "-master.telemetry=false" in weed["args"]
    assert weed["ports"] == [{"name": "s3", "containerPort": 8333, "protocol": "TCP"}]
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ):
        assert weed[probe]["httpGet"] == {"path": path, "port": "s3"}, probe
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001
    assert weed["securityContext"]["readOnlyRootFilesystem"] is True
    assert weed["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m["name"] for m in weed["volumeMounts"]}
    assert mounts == {"/data": "data", "/tmp": "tmp"}  # its only writable paths
    assert "-dir=/data" in weed["args"]
    assert spec["automountServiceAccountToken"] is False


def test_the_bucket_job_runs_python_in_the_flipserve_image(default: list[Obj]) -> None:
    """No client image to pull or keep patched: the store's image is only its server."""
    job = find(default, "Job", "flipserve-object-store-bucket")
    spec = pod_spec(job)
    (create,) = spec["containers"]
    assert (
        create["image"]
        == pod_spec(find(default, "Deployment", "flipserve"))["containers"][0]["image"]
    )
    assert create["command"] == ["python", "-c"]
    compile(create["args"][0], "create-bucket", "exec")
    env = env_of(create)
    assert env["S3_ENDPOINT"]["value"] == "http://flipserve-object-store.demo.svc:8333"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "flipserve-store"
    assert create["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["restartPolicy"] == "OnFailure" and job["spec"]["backoffLimit"] >= 1


def test_fixed_object_store_keys_become_the_store_secret() -> None:
    """ci/monitoring-values.yaml fixes them; every flipserve container and weed read that Secret."""
    (secret,) = render(MONITORING, show_only="templates/secret-store.yaml")
    assert secret["data"] == {
        "accessKeyId": base64.b64encode(b"flipserve-ci").decode(),
        "secretAccessKey": base64.b64encode(b"flipserve-ci-password").decode(),
    }


def test_external_s3_mode_has_no_object_store_and_uses_the_given_endpoint() -> None:
    objs = render(CHART / "ci" / "external-s3-values.yaml")
    assert not [o for o in objs if "object-store" in o["metadata"]["name"]]
    env = env_of(pod_spec(find(objs, "Deployment", "flipserve"))["containers"][0])
    assert env["FLIPSERVE_S3_ENDPOINT_URL"]["value"] == "https://s3.example.com"
    ingress = find(objs, "Ingress", "flipserve")
    assert ingress["spec"]["rules"][0]["host"] == "flipserve.example.com"


def test_the_old_minio_values_are_refused_by_name() -> None:
    """An upgrade with a pre-SeaweedFS values file fails loudly instead of ignoring it."""
    args = ["template", "x", str(CHART), "--kube-version", KUBE_VERSION]
    out = helm(*args, "--set", "minio.enabled=false", check=False)
    assert out.returncode != 0
    assert "additional properties 'minio' not allowed" in out.stderr


def test_existing_secrets_are_referenced_and_not_created() -> None:
    objs = render(CHART / "ci" / "existing-secrets-values.yaml")
    assert [o for o in objs if o["kind"] == "Secret"] == []
    env = env_of(pod_spec(find(objs, "Deployment", "flipserve"))["containers"][0])
    assert env["FLIPSERVE_API_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "flipserve-token"
    assert env["FLIPSERVE_S3_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == (
        "flipserve-store-creds"
    )


def test_monitoring_objects_exist_only_when_enabled(default: list[Obj]) -> None:
    rule = find(default, "PrometheusRule", "flipserve")
    alerts = {r["alert"]: r["expr"] for r in rule["spec"]["groups"][0]["rules"]}
    assert set(alerts) == {"FlipserveInputDrift", "FlipserveHighErrorRate"}
    # The server's metric names (server/telemetry.py).
    assert "flipserve_drift_p_value{" in alerts["FlipserveInputDrift"]
    assert (
        'flipserve_requests_total{namespace="demo", service="flipserve", status=~"5.."}'
        in (alerts["FlipserveHighErrorRate"])
    )
    find(default, "ServiceMonitor", "flipserve")
    plain = render()
    assert not {o["kind"] for o in plain} & {"PrometheusRule", "ServiceMonitor"}


def test_helm_test_pod_checks_readiness_and_makes_one_prediction(default: list[Obj]) -> None:
    pod = find(default, "Pod", "flipserve-test-predict")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["args"][0]
    assert "/v2/health/ready" in script and "/predict" in script
    compile(script, "test-predict", "exec")  # the pod's Python is at least valid


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"volumes.size": "-1Gi"}, "/volumes/size"),
        ({"api.bogus": "1"}, "additional properties 'bogus' not allowed"),
        ({"model.initialColour": "red"}, "/model/initialColour"),
        ({"api.replicaCount": "-1"}, "/api/replicaCount"),
        ({"drift.pValue": "2"}, "/drift/pValue"),
        ({"controller.healthPort": "0"}, "/controller/healthPort"),
    ],
    ids=[
        "negative-size",
        "unknown-key",
        "bad-colour",
        "negative-replicas",
        "p-value-above-1",
        "health-port-0",
    ],
)
def test_schema_rejects_bad_values_naming_the_key(sets: dict[str, str], message: str) -> None:
    args = ["template", "x", str(CHART), "--kube-version", KUBE_VERSION]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    out = helm(*args, check=False)
    assert out.returncode != 0
    assert "values don't meet the specifications of the schema" in out.stderr
    assert message in out.stderr


def test_external_s3_without_keys_leaves_credentials_to_the_default_chain() -> None:
    objs = render(sets={"objectStore.enabled": "false"})
    assert [o for o in objs if o["kind"] == "Secret"] == [
        find(objs, "Secret", "flipserve-api-token")
    ]
    for name in ("flipserve", "flipserve-controller"):
        env = env_of(pod_spec(find(objs, "Deployment", name))["containers"][0])
        assert (
            "FLIPSERVE_S3_ACCESS_KEY_ID" not in env and "FLIPSERVE_S3_SECRET_ACCESS_KEY" not in env
        )


def test_external_s3_with_half_a_key_pair_says_which_value_is_missing() -> None:
    args = ["template", "x", str(CHART), "--kube-version", KUBE_VERSION]
    args += ["--set", "objectStore.enabled=false", "--set", "store.accessKeyId=AKIA"]
    out = helm(*args, check=False)
    assert out.returncode != 0
    assert "store.secretAccessKey is required when store.accessKeyId is set" in out.stderr


def test_manifests_are_rendered_from_the_current_chart(tmp_path: Path) -> None:
    script = CHART.parents[1] / "hack" / "render-manifests.sh"
    env = {**os.environ, "HELM": str(helm_bin())}
    subprocess.run([str(script), str(tmp_path)], check=True, env=env, capture_output=True)
    for name in ("crds.yaml", "flipserve.yaml"):
        committed = (CHART.parents[1] / "manifests" / name).read_text()
        assert committed == (tmp_path / name).read_text(), f"run `make manifests` ({name})"
    assert "kind: Secret" not in (tmp_path / "flipserve.yaml").read_text()
