"""A real Kubernetes control plane on 127.0.0.1, for the integration tests and for people.

There is no Docker engine on our machines, so no kind. This starts etcd, kube-apiserver
(RBAC, ServiceAccount admission), kube-controller-manager, kube-scheduler and KWOK (fake
nodes; it marks scheduled pods Running/Ready and run-once pods Succeeded, see
tests/data/kwok-stages.yaml) from the binaries ``hack/controlplane/build.sh`` builds, each
on a free loopback port, with certificates and service-account keys made on the fly in a
temporary directory. Tests use :class:`ControlPlane` through the ``control_plane`` fixture
(tests/integration/conftest.py); people use the command line::

    python -m tests.controlplane up     # start in the background, print `export ...` lines
    python -m tests.controlplane env    # print them again
    python -m tests.controlplane down   # stop it and remove its files

Volumes: nothing provisions real storage here, and a pod whose PersistentVolumeClaim stays
Pending is never scheduled. So the cluster gets a default StorageClass ``standard`` (the
name kind uses) whose provisioner is :class:`FakeProvisioner`, a thread of the process that
started the cluster: it answers each claim of that class with a hostPath PersistentVolume
pre-bound to it (the external-provisioner protocol, so the real PV binder does the
binding) and deletes released ones. Claims bind within a second; nothing is ever mounted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "hack" / "controlplane" / "build.sh"
KWOK_STAGES = REPO / "tests" / "data" / "kwok-stages.yaml"
PROVISIONER = "flipserve.test/fake-hostpath"
STORAGE_CLASS = "standard"
NODE_COUNT = 3
SERVICE_CIDR = "10.96.0.0/16"
# Controllers a chart and a promotion controller lean on; the rest of the defaults
# (HPA, quotas, CSRs, ...) cost CPU on 2 cores and nothing here needs them. The node
# lifecycle controller lifts the not-ready taint admission puts on every new node.
CONTROLLERS = (
    "deployment-controller,replicaset-controller,statefulset-controller,daemonset-controller,"
    "job-controller,cronjob-controller,ttl-after-finished-controller,disruption-controller,"
    "serviceaccount-controller,serviceaccount-token-controller,"
    "root-ca-certificate-publisher-controller,clusterrole-aggregation-controller,"
    "namespace-controller,garbage-collector-controller,node-lifecycle-controller,endpoints-controller,"
    "endpointslice-controller,persistentvolume-binder-controller,"
    "persistentvolume-protection-controller,persistentvolumeclaim-protection-controller"
)


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or reached; the message says why."""


class CommandFailed(RuntimeError):
    """kubectl or helm exited non-zero; carries the command's output."""

    def __init__(self, result: subprocess.CompletedProcess[str]) -> None:
        self.result = result
        cmd = " ".join(str(a) for a in result.args)
        super().__init__(
            f"`{cmd}` exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )


def build_binaries() -> Path:
    """The directory of the control plane's binaries, built first when missing (slow once)."""
    result = subprocess.run(
        [str(BUILD_SCRIPT)], capture_output=True, text=True, check=False, cwd=REPO
    )
    if result.returncode != 0:
        raise ControlPlaneError(f"{BUILD_SCRIPT} failed:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


# --- PKI -----------------------------------------------------------------------------------


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    *,
    server_names: Sequence[str] = (),
) -> x509.Certificate:
    """A certificate for ``key``: a self-signed CA without ``issuer``, else a leaf it signs."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is None:
        return builder.sign(key, hashes.SHA256())
    usages = [ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server_names:
        alt: list[x509.GeneralName] = []
        for name in server_names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(issuer[1], hashes.SHA256())


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


# Client identities: the admin is in system:masters; the controller manager and scheduler
# get the users kubeadm gives them, so RBAC's bootstrap roles apply to them as in a cluster.
CLIENTS = {
    "admin": _name("flipserve-admin", "system:masters"),
    "controller-manager": _name("system:kube-controller-manager"),
    "scheduler": _name("system:kube-scheduler"),
}


def write_pki(pki: Path) -> None:
    """CA, API server serving cert, client certs and the service-account key pair, as PEM."""
    pki.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue(_name("flipserve-local-ca"), ca_key)
    leaves = {
        "apiserver": (
            _name("kube-apiserver"),
            (
                "127.0.0.1",
                "localhost",
                "10.96.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
        ),
        **{client: (subject, ()) for client, subject in CLIENTS.items()},
    }
    (pki / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (pki / "ca.key").write_bytes(_pem_key(ca_key))
    for stem, (subject, names) in leaves.items():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(subject, key, (ca, ca_key), server_names=names)
        (pki / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (pki / f"{stem}.key").write_bytes(_pem_key(key))
    sa_key = ec.generate_private_key(ec.SECP256R1())
    (pki / "sa.key").write_bytes(_pem_key(sa_key))
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def kubeconfig(server: str, pki: Path, client: str) -> dict[str, Any]:
    """A self-contained kubeconfig (certificates inlined) for one client identity."""

    def data(name: str) -> str:
        return b64encode((pki / name).read_bytes()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "flipserve-local",
                "cluster": {"server": server, "certificate-authority-data": data("ca.crt")},
            }
        ],
        "users": [
            {
                "name": client,
                "user": {
                    "client-certificate-data": data(f"{client}.crt"),
                    "client-key-data": data(f"{client}.key"),
                },
            }
        ],
        "contexts": [
            {"name": "flipserve-local", "context": {"cluster": "flipserve-local", "user": client}}
        ],
        "current-context": "flipserve-local",
    }


# --- a tiny API client (admin), for the starter's own calls ------------------------------


class Api:
    """JSON over HTTPS to the API server as the admin; enough for nodes, PVs and polling."""

    def __init__(self, server: str, pki: Path) -> None:
        self.server = server
        self._ssl = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self._ssl.load_cert_chain(pki / "admin.crt", pki / "admin.key")

    def call(self, method: str, path: str, body: Any = None, timeout: float = 10) -> Any:
        """The decoded JSON reply; raises urllib.error.HTTPError on a non-2xx status."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.server + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, context=self._ssl, timeout=timeout) as reply:
            raw = reply.read()
        return json.loads(raw) if raw[:1] == b"{" else raw.decode()

    def create(self, path: str, body: Any) -> None:
        """POST ``body``; an object that already exists is fine."""
        try:
            self.call("POST", path, body)
        except urllib.error.HTTPError as e:
            if e.code != 409:
                raise


# --- the fake volume provisioner -----------------------------------------------------------


class FakeProvisioner:
    """Answers claims of the ``standard`` StorageClass with pre-bound hostPath volumes."""

    def __init__(self, api: Api, volumes: Path, interval: float = 0.5) -> None:
        self._api = api
        self._volumes = volumes
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-provisioner", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.reconcile()
            except Exception as e:  # the loop must outlive an API hiccup
                if not self._stop.is_set():
                    print(f"fake-provisioner: {e}", file=sys.stderr)

    def reconcile(self) -> None:
        """Provision every waiting claim once, and delete volumes their claims released."""
        for claim in self._api.call("GET", "/api/v1/persistentvolumeclaims")["items"]:
            annotations = claim["metadata"].get("annotations", {})
            if (
                annotations.get("volume.kubernetes.io/storage-provisioner") == PROVISIONER
                and claim.get("status", {}).get("phase") == "Pending"
                and not claim["spec"].get("volumeName")
            ):
                self._api.create("/api/v1/persistentvolumes", self._volume_for(claim))
        for volume in self._api.call("GET", "/api/v1/persistentvolumes")["items"]:
            ours = volume["metadata"].get("annotations", {}).get("pv.kubernetes.io/provisioned-by")
            if ours == PROVISIONER and volume.get("status", {}).get("phase") == "Released":
                with contextlib.suppress(urllib.error.HTTPError):
                    self._api.call(
                        "DELETE", f"/api/v1/persistentvolumes/{volume['metadata']['name']}"
                    )

    def _volume_for(self, claim: dict[str, Any]) -> dict[str, Any]:
        meta, spec = claim["metadata"], claim["spec"]
        name = f"pvc-{meta['uid']}"
        return {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": name,
                "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
            },
            "spec": {
                "capacity": {"storage": spec["resources"]["requests"]["storage"]},
                "accessModes": spec.get("accessModes", ["ReadWriteOnce"]),
                "volumeMode": spec.get("volumeMode", "Filesystem"),
                "storageClassName": STORAGE_CLASS,
                "persistentVolumeReclaimPolicy": "Delete",
                "hostPath": {"path": str(self._volumes / name), "type": "DirectoryOrCreate"},
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": meta["namespace"],
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }


# --- processes -----------------------------------------------------------------------------


def _die_with_parent() -> list[str]:
    """A command prefix that makes the child get SIGKILL when the starting process dies.

    So a crashed or killed pytest (or ``up`` supervisor) leaves no orphan etcd behind.
    ``setpriv`` (util-linux, on every Debian/Ubuntu/Fedora) sets PR_SET_PDEATHSIG and
    execs, which a ``preexec_fn`` could only do unsafely next to the provisioner thread.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Component:
    """One running binary and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 25) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _node(name: str) -> dict[str, Any]:
    """A KWOK node: schedulable (no taints), with room for any test's requests."""
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "1Ti"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        },
        "spec": {},
        "status": {
            "allocatable": resources,
            "capacity": resources,
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux"},
        },
    }


STORAGE_CLASS_OBJECT = {
    "apiVersion": "storage.k8s.io/v1",
    "kind": "StorageClass",
    "metadata": {
        "name": STORAGE_CLASS,
        "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
    },
    "provisioner": PROVISIONER,
    "reclaimPolicy": "Delete",
    "volumeBindingMode": "Immediate",
    "allowVolumeExpansion": True,
}


# --- the control plane ---------------------------------------------------------------------


@dataclass
class ControlPlane:
    """etcd + kube-apiserver + controller manager + scheduler + KWOK on loopback.

    ``start()`` returns once the API is ready, every node is Ready and the ``default``
    ServiceAccount exists (pods can be created); ``stop()`` ends every process and removes
    the temporary directory. Use it as a context manager.
    """

    bin_dir: Path
    nodes: int = NODE_COUNT
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="flipserve-cp-")))
    components: list[Component] = field(default_factory=list)
    server: str = ""
    started_seconds: float = 0.0
    _provisioner: FakeProvisioner | None = None

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses: kubectl/helm on PATH, KUBECONFIG, helm's homes."""
        env = dict(os.environ)
        env.update(
            KUBECONFIG=str(self.kubeconfig),
            PATH=f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}",
            HELM_CACHE_HOME=str(self.root / "helm" / "cache"),
            HELM_CONFIG_HOME=str(self.root / "helm" / "config"),
            HELM_DATA_HOME=str(self.root / "helm" / "data"),
        )
        return env

    # lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 90) -> ControlPlane:
        began = time.monotonic()
        deadline = began + timeout
        try:
            write_pki(self.pki)
            self._start_etcd(deadline)
            self._start_apiserver(deadline)
            api = Api(self.server, self.pki)
            self._start_controllers()
            self._seed(api)
            self._provisioner = FakeProvisioner(api, self.root / "volumes")
            self._provisioner.start()
            self._wait_usable(api, deadline)
        except BaseException:
            self.stop()
            raise
        self.started_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Terminate every process (newest first), then remove the temporary directory."""
        if self._provisioner is not None:
            self._provisioner.stop()
            self._provisioner = None
        for component in reversed(self.components):
            if component.process.poll() is None:
                component.process.terminate()
        for component in reversed(self.components):
            try:
                component.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                component.process.kill()
                component.process.wait()
        self.components.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # commands ----------------------------------------------------------------------------

    def run(
        self,
        tool: str,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``tool`` (a binary of bin_dir) against this cluster; raises CommandFailed."""
        result = subprocess.run(
            [str(self.bin_dir / tool), *args],
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise CommandFailed(result)
        return result

    def kubectl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run("kubectl", *args, **kwargs)

    def helm(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run("helm", *args, **kwargs)

    def apply(self, *objects: dict[str, Any], namespace: str | None = None) -> None:
        """``kubectl apply`` of objects given as dicts."""
        ns = ["-n", namespace] if namespace else []
        docs = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
        self.kubectl("apply", *ns, "-f", "-", input=json.dumps(docs))

    def create_namespace(self, name: str, timeout: float = 30) -> str:
        """Create a namespace and wait for its ``default`` ServiceAccount (pods need it)."""
        self.kubectl("create", "namespace", name)
        deadline = time.monotonic() + timeout
        while self.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode:
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"namespace {name}: no default ServiceAccount in {timeout}s"
                )
            time.sleep(0.2)
        return name

    # steps of start() ---------------------------------------------------------------------

    def _spawn(self, name: str, *args: str) -> Component:
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*_die_with_parent(), str(self.bin_dir / name), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root,
            )
        component = Component(name, process, log)
        self.components.append(component)
        return component

    def _check_alive(self) -> None:
        for component in self.components:
            if component.process.poll() is not None:
                raise ControlPlaneError(
                    f"{component.name} exited with {component.process.returncode}; "
                    f"last lines of {component.log}:\n{component.tail()}"
                )

    def _wait(self, what: str, ready: Any, deadline: float) -> None:
        """Poll ``ready()`` until true, failing fast when a component dies."""
        while True:
            self._check_alive()
            with contextlib.suppress(OSError, ValueError, KeyError):
                if ready():
                    return
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {c.name}\n{c.tail(10)}" for c in self.components)
                raise ControlPlaneError(f"timed out waiting for {what}\n{logs}")
            time.sleep(0.1)

    def _start_etcd(self, deadline: float) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._spawn(
            "etcd",
            f"--data-dir={self.root / 'etcd'}",
            f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=default=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        )

        def healthy() -> bool:
            with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as reply:
                return bool(json.load(reply).get("health") == "true")

        self._wait("etcd /health", healthy, deadline)

    def _start_apiserver(self, deadline: float) -> None:
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        pki = self.pki
        self._spawn(
            "kube-apiserver",
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self.root / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            # the `kubernetes` Service's Endpoints would point at 127.0.0.1, which
            # Endpoints validation rejects; nothing here dials the Service anyway
            "--endpoint-reconciler-type=none",
            "--profiling=false",
        )
        self.kubeconfig.write_text(json.dumps(kubeconfig(self.server, pki, "admin"), indent=2))
        for client in ("controller-manager", "scheduler"):
            config = kubeconfig(self.server, pki, client)
            (self.root / f"{client}.kubeconfig").write_text(json.dumps(config))
        api = Api(self.server, pki)
        self._wait("kube-apiserver /readyz", lambda: api.call("GET", "/readyz") == "ok", deadline)

    def _start_controllers(self) -> None:
        pki = self.pki
        self._spawn(
            "kube-controller-manager",
            f"--kubeconfig={self.root / 'controller-manager.kubeconfig'}",
            "--leader-elect=false",
            "--secure-port=0",
            "--use-service-account-credentials=true",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--controllers={CONTROLLERS}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--concurrent-gc-syncs=5",
        )
        self._spawn(
            "kube-scheduler",
            f"--kubeconfig={self.root / 'scheduler.kubeconfig'}",
            "--leader-elect=false",
            "--secure-port=0",
        )
        self._spawn(
            "kwok",
            f"--kubeconfig={self.kubeconfig}",
            f"--config={KWOK_STAGES}",
            "--manage-all-nodes=true",
            "--cidr=10.244.0.1/16",
        )

    def _seed(self, api: Api) -> None:
        api.create("/apis/storage.k8s.io/v1/storageclasses", STORAGE_CLASS_OBJECT)
        for i in range(self.nodes):
            api.create("/api/v1/nodes", _node(f"kwok-node-{i}"))

    def _wait_usable(self, api: Api, deadline: float) -> None:
        def nodes_ready() -> bool:
            # Ready, and the not-ready taint lifted, so pods can land on them
            nodes = api.call("GET", "/api/v1/nodes")["items"]
            ready = [
                n
                for n in nodes
                for c in n.get("status", {}).get("conditions", [])
                if c["type"] == "Ready" and c["status"] == "True" and not n["spec"].get("taints")
            ]
            return len(ready) == self.nodes

        def default_account() -> bool:
            api.call("GET", "/api/v1/namespaces/default/serviceaccounts/default")
            return True

        self._wait(f"{self.nodes} KWOK nodes Ready and untainted", nodes_ready, deadline)
        self._wait("the default ServiceAccount", _no_http_error(default_account), deadline)


def _no_http_error(check: Any) -> Any:
    def wrapped() -> bool:
        try:
            return bool(check())
        except urllib.error.HTTPError:
            return False

    return wrapped


# --- command line: up / down / env ---------------------------------------------------------


def _default_state_dir() -> Path:
    cache = os.environ.get("FLIPSERVE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "flipserve"
    )
    return Path(cache) / "controlplane" / "local"


def _exports(state: dict[str, Any]) -> str:
    return f'export KUBECONFIG={state["kubeconfig"]}\nexport PATH="{state["bin_dir"]}:$PATH"\n'


def _serve(state_dir: Path) -> int:
    """Run a cluster in this process until SIGTERM/SIGINT; ``up`` starts this detached."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with ControlPlane(build_binaries()) as cluster:
        state = {
            "pid": os.getpid(),
            "kubeconfig": str(cluster.kubeconfig),
            "bin_dir": str(cluster.bin_dir),
            "server": cluster.server,
            "root": str(cluster.root),
            "started_seconds": round(cluster.started_seconds, 2),
        }
        (state_dir / "state.json").write_text(json.dumps(state, indent=2))
        print(f"control plane ready in {cluster.started_seconds:.1f}s at {cluster.server}")
        sys.stdout.flush()
        while not stop.wait(1):
            cluster._check_alive()
    (state_dir / "state.json").unlink(missing_ok=True)
    return 0


def _running(state_dir: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((state_dir / "state.json").read_text())
        os.kill(state["pid"], 0)
    except (OSError, ValueError, KeyError):
        return None
    return state


def _up(state_dir: Path, timeout: float) -> int:
    if state := _running(state_dir):
        print(_exports(state), end="")
        return 0
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "state.json").unlink(missing_ok=True)
    log = state_dir / "cluster.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.controlplane", "serve", "--state-dir", str(state_dir)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the shell (and make) that ran `up`
        )
    (state_dir / "cluster.pid").write_text(f"{process.pid}\n")
    deadline = time.monotonic() + timeout
    while (state := _running(state_dir)) is None:
        if process.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            process.wait()
            print(
                f"control plane failed to start; {log}:\n{log.read_text()[-4000:]}", file=sys.stderr
            )
            return 1
        time.sleep(0.2)
    print(_exports(state), end="")
    return 0


def _down(state_dir: Path) -> int:
    pid_file = state_dir / "cluster.pid"
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        print("no local control plane is running", file=sys.stderr)
        return 0
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        for _ in range(300):
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)  # its children die with it (PR_SET_PDEATHSIG)
    pid_file.unlink(missing_ok=True)
    (state_dir / "state.json").unlink(missing_ok=True)
    print("local control plane stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.controlplane", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "env", "serve"])
    parser.add_argument("--state-dir", type=Path, default=_default_state_dir())
    parser.add_argument("--timeout", type=float, default=600, help="seconds for `up` (a build)")
    args = parser.parse_args(argv)
    if args.command == "up":
        return _up(args.state_dir, args.timeout)
    if args.command == "down":
        return _down(args.state_dir)
    if args.command == "serve":
        return _serve(args.state_dir)
    if state := _running(args.state_dir):
        print(_exports(state), end="")
        return 0
    print("no local control plane is running; `make cluster-local` starts one", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
