"""The end-to-end flow's substrate: a real cluster with real pods, and the chart installed.

One flow, two substrates:

- **real-node** (``make test`` here): the local control plane with a real kubelet node
  (tests/controlplane/node.py). Images are built on this machine and loaded into the
  node's containerd; the host reaches Services through kube-proxy's rules.
- **kind** (``.github/workflows/e2e.yaml``): whatever cluster ``FLIPSERVE_E2E_KUBECONFIG``
  names, with kubectl and helm on PATH, the images already loaded, and
  ``FLIPSERVE_E2E_API_URL`` the API's entry point from the host (kind's mapped port).

Either way the chart is installed from charts/flipserve with only image names and sizes
overridden (:func:`chart_values`), and the flow talks to the cluster as a user does:
kubectl, helm, ``flipserve publish`` through a port-forward to the chart's object store,
``flipserve promote/rollback/status --kube``, HTTP to the API.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from flipserve import artifact, data

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "flipserve"
RELEASE = "flipserve"
NAMESPACE = "flipserve-e2e"
IMAGE = os.environ.get("FLIPSERVE_E2E_IMAGE", "flipserve:dev")
# the object store image built here; "" keeps the chart's default (kind pulls it)
STORE_IMAGE = os.environ.get("FLIPSERVE_E2E_STORE_IMAGE", "flipserve.local/seaweedfs:dev")
EVAL_ROWS = 200


class E2EError(AssertionError):
    """The cluster did not get where the flow waited for it to go; the message says where."""


@dataclass
class Cluster:
    """kubectl and helm against one kubeconfig; ``substrate`` is "real-node" or "kind"."""

    kubeconfig: Path
    env: dict[str, str]
    substrate: str
    api_url: str | None = None  # the API's entry point from the host, when not a ClusterIP
    work: Path = Path()

    def run(
        self,
        tool: str,
        *args: str,
        check: bool = True,
        timeout: float = 300,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [tool, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
            check=False, input=input,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise E2EError(
                f"`{tool} {' '.join(args)}` exited {result.returncode}\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def kubectl(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run("kubectl", "-n", NAMESPACE, *args, **kw)

    def helm(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run("helm", "-n", NAMESPACE, *args, **kw)

    def get(self, *args: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.kubectl("get", *args, "-o", "json").stdout)
        return out

    def cli_env(self, env: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of the flipserve CLI run here against this cluster and release."""
        base = {k: v for k, v in self.env.items() if not k.startswith("FLIPSERVE_")}
        return (
            base
            | {
                "PYTHONPATH": str(REPO / "src"),
                "FLIPSERVE_KUBECONFIG": str(self.kubeconfig),
                "FLIPSERVE_NAMESPACE": NAMESPACE,
                "FLIPSERVE_RELEASE": RELEASE,
                "HF_HUB_OFFLINE": "1",
            }
            | (env or {})
        )

    def flipserve(
        self, *args: str, timeout: float = 900, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The flipserve CLI as a user runs it here, to its end."""
        return subprocess.run(
            [sys.executable, "-m", "flipserve", *args], env=self.cli_env(env), cwd=self.work,
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def flipserve_background(self, *args: str) -> subprocess.Popen[str]:
        """The flipserve CLI started, not waited for (its output on ``stdout``)."""
        return subprocess.Popen(
            [sys.executable, "-m", "flipserve", *args], env=self.cli_env(), cwd=self.work,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip


def _local_cluster(work: Path) -> Iterator[Cluster]:
    from tests.controlplane import ControlPlane, ControlPlaneError, build_binaries
    from tests.controlplane.node import NodeError

    try:
        cp = ControlPlane(build_binaries(), nodes=0, real_node=True).start(timeout=180)
    except (ControlPlaneError, NodeError) as e:
        pytest.fail(f"the local control plane with a real node did not start: {e}", pytrace=False)
    try:
        yield Cluster(cp.kubeconfig, cp.env, "real-node", work=work)
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from cluster_for(tmp_path_factory.mktemp("e2e"))


def chart_values() -> list[str]:
    """``--set`` flags: only image names and sizes differ from the chart's defaults."""
    repo, _, tag = IMAGE.rpartition(":")
    small = {
        # two cores run everything: requests small enough for a rolling switch
        # (2 API pods + 1 surge + preview + copy Job + controller + store)
        "api.resources.requests.cpu": "100m",
        "api.resources.requests.memory": "256Mi",
        "preview.resources.requests.cpu": "100m",
        "preview.resources.requests.memory": "256Mi",
        "controller.resources.requests.cpu": "50m",
        "copyJob.resources.requests.cpu": "50m",
        "objectStore.resources.requests.cpu": "50m",
        "volumes.size": "512Mi",
        "objectStore.persistence.size": "1Gi",
    }
    values = {"image.repository": repo, "image.tag": tag, **small}
    if STORE_IMAGE:
        store_repo, _, store_tag = STORE_IMAGE.rpartition(":")
        values |= {"objectStore.image.repository": store_repo, "objectStore.image.tag": store_tag}
    return [arg for k, v in values.items() for arg in ("--set", f"{k}={v}")]


def eval_set(path: Path, rows: int = EVAL_ROWS) -> Path:
    """The score gate's held-out set, as `make deploy` makes it (a seeded test sample)."""
    test = data.load_dataset().splits["test"]
    sample = random.Random(0).sample(test, min(rows, len(test)))
    path.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in sample))
    return path


@dataclass
class Release:
    """The chart installed in :data:`NAMESPACE`, and how the flow reaches it."""

    cluster: Cluster
    refs: Path
    published: dict[str, Path] = field(default_factory=dict)

    def annotations(self) -> dict[str, str]:
        return dict(self.cluster.get("deployment", RELEASE)["metadata"].get("annotations") or {})

    def active(self) -> tuple[str, str]:
        """(colour, version) the API Deployment records."""
        a = self.annotations()
        return a.get("flipserve.dev/active-colour", ""), a.get("flipserve.dev/model-version", "")

    def api_url(self) -> str:
        if self.cluster.api_url:
            return self.cluster.api_url
        svc = self.cluster.get("service", RELEASE)
        return f"http://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}"

    def pods(self, component: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.cluster.get(
            "pods", "-l", f"app.kubernetes.io/component={component}"
        )["items"]
        return items

    def promotions(self) -> list[dict[str, Any]]:
        items = self.cluster.get("promotions")["items"]
        return sorted(items, key=lambda p: p["metadata"]["creationTimestamp"])

    def secret(self, name: str, key: str) -> str:
        raw = self.cluster.get("secret", name)["data"][key]
        return base64.b64decode(raw).decode()

    @contextlib.contextmanager
    def port_forward(self, target: str, port: int) -> Iterator[int]:
        """``kubectl port-forward TARGET LOCAL:port`` on a free loopback port."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            local = s.getsockname()[1]
        process = subprocess.Popen(
            ["kubectl", "-n", NAMESPACE, "port-forward", target, f"{local}:{port}"],
            env=self.cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", local), 1),
                ):
                    break
                if process.poll() is not None or time.monotonic() > deadline:
                    out = process.stdout.read().decode() if process.stdout else ""
                    raise E2EError(f"port-forward {target} did not come up: {out}")
                time.sleep(0.2)
            yield local
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(10)

    def publish(self, model_dir: Path, version: str) -> Path:
        """``flipserve publish`` of a re-versioned copy of ``model_dir`` into the chart's store."""
        dest = self.cluster.work / "models" / version
        if not dest.exists():
            shutil.copytree(model_dir, dest, ignore=shutil.ignore_patterns(artifact.MANIFEST))
            meta = json.loads((dest / artifact.METADATA).read_text())
            (dest / artifact.METADATA).write_text(json.dumps({**meta, "version": version}))
            artifact.write_manifest(dest)
        ref = self.refs / f"{version}.json"
        with self.port_forward(f"svc/{RELEASE}-object-store", 8333) as port:
            result = self.cluster.flipserve(
                "publish", str(dest), "--ref", str(ref), env=self.store_env(port)
            )
        if result.returncode != 0:
            raise E2EError(f"publish {version} failed:\n{result.stdout}\n{result.stderr}")
        self.published[version] = ref
        return ref

    def store_env(self, port: int) -> dict[str, str]:
        store = f"{RELEASE}-store"
        return {
            "FLIPSERVE_STORE_URI": "s3://flipserve",
            "FLIPSERVE_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "FLIPSERVE_S3_ACCESS_KEY_ID": self.secret(store, "accessKeyId"),
            "FLIPSERVE_S3_SECRET_ACCESS_KEY": self.secret(store, "secretAccessKey"),
            "FLIPSERVE_SHOW_PROGRESS": "false",
        }

    def diagnostics(self) -> str:
        parts = []
        for args in (
            ("get", "all,pvc,promotions,jobs,events", "-o", "wide"),
            ("logs", f"deploy/{RELEASE}-controller", "--tail=80"),
            ("logs", "-l", "app.kubernetes.io/component=copy", "--tail=30", "--prefix"),
        ):
            result = self.cluster.kubectl(*args, check=False)
            parts.append(
                f"$ kubectl {' '.join(args)}\n{result.stdout[-6000:]}{result.stderr[-2000:]}"
            )
        return "\n".join(parts)


def install(cluster: Cluster) -> Release:
    """The chart installed (and its eval-set ConfigMap made) as `make deploy` does."""
    cluster.run("kubectl", "create", "namespace", NAMESPACE)
    path = eval_set(cluster.work / "eval.jsonl")
    cluster.kubectl("create", "configmap", f"{RELEASE}-eval-set", f"--from-file=eval.jsonl={path}")
    # no --wait: the API pods turn Ready only once a model is on their volume (the seed)
    cluster.helm(
        "install", RELEASE, str(CHART), "--timeout", "10m",
        "--set", f"controller.evalSet.configMap={RELEASE}-eval-set", *chart_values(),
        timeout=700,
    )  # fmt: skip
    for deployment in (f"{RELEASE}-object-store", f"{RELEASE}-controller"):
        cluster.kubectl("rollout", "status", f"deploy/{deployment}", "--timeout=600s", timeout=620)
    refs = cluster.work / "refs"
    refs.mkdir(exist_ok=True)
    return Release(cluster, refs)


def uninstall(cluster: Cluster) -> None:
    cluster.helm("uninstall", RELEASE, "--wait", "--timeout", "2m", check=False, timeout=200)
    cluster.run("kubectl", "delete", "namespace", NAMESPACE, "--wait=false", check=False)


def cluster_for(work: Path) -> Iterator[Cluster]:
    """The cluster ``FLIPSERVE_E2E_KUBECONFIG`` names, else a local one with a real node."""
    external = os.environ.get("FLIPSERVE_E2E_KUBECONFIG")
    if external:
        env = dict(os.environ) | {"KUBECONFIG": external}
        yield Cluster(Path(external), env, "kind", os.environ.get("FLIPSERVE_E2E_API_URL"), work)
        return
    yield from _local_cluster(work)


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[Release]:
    """The chart installed for one test module; uninstalled after it."""
    yield install(cluster)
    if not os.environ.get("FLIPSERVE_E2E_KEEP"):  # kept for a person debugging the flow
        uninstall(cluster)
