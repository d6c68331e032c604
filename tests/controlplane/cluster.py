"""The control plane's processes: start them on free loopback ports, wait, stop them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.controlplane.api import Api
from tests.controlplane.node import NODE_IP, RealNode, terminate
from tests.controlplane.pki import kubeconfig, write_pki
from tests.controlplane.provisioner import STORAGE_CLASS_OBJECT, FakeProvisioner

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "hack" / "controlplane" / "build.sh"
KWOK_STAGES = REPO / "tests" / "data" / "kwok-stages.yaml"
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


class PortTaken(ControlPlaneError):
    """A component found its free port taken by someone else before it could bind it."""


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


def _remove_stale_roots() -> None:
    """Remove temporary directories left by starters that were killed (SIGKILL skips stop())."""
    for root in Path(tempfile.gettempdir()).glob("flipserve-cp-*"):
        try:
            os.kill(int((root / "owner.pid").read_text()), 0)
        except ProcessLookupError:
            shutil.rmtree(root, ignore_errors=True)
        except (OSError, ValueError):
            continue  # just created (no owner yet), or not ours to judge


@dataclass
class ControlPlane:
    """etcd + kube-apiserver + controller manager + scheduler + KWOK on loopback.

    ``start()`` returns once the API is ready, every node is Ready and the ``default``
    ServiceAccount exists (pods can be created); ``stop()`` ends every process and removes
    the temporary directory. Use it as a context manager.

    With ``real_node=True`` a real kubelet node joins as well (:mod:`tests.controlplane.node`):
    the API server then listens on the node's address instead of loopback (pods must reach
    it), authorises kubelets with the Node authorizer, and volumes are directories on that
    node as kind's local-path-provisioner makes them, which the kubelet really mounts.
    ``nodes`` KWOK nodes may still join; KWOK then manages only those.
    """

    bin_dir: Path
    nodes: int = NODE_COUNT
    real_node: bool = False
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="flipserve-cp-")))
    components: list[Component] = field(default_factory=list)
    server: str = ""
    etcd_url: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds from start() to each step (pki ... nodes_ready, usable)."""
    started_seconds: float = 0.0
    node: RealNode | None = None
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

    def start(self, timeout: float = 90, attempts: int = 3) -> ControlPlane:
        """Start everything; a port taken between picking and binding it means a retry."""
        for attempt in range(1, attempts + 1):
            try:
                return self._start_once(timeout)
            except PortTaken:
                if attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> ControlPlane:
        began = time.monotonic()
        deadline = began + timeout

        def mark(step: str) -> None:
            self.timings[step] = round(time.monotonic() - began, 3)

        _remove_stale_roots()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "owner.pid").write_text(f"{os.getpid()}\n")
        try:
            if self.real_node:
                RealNode.check_host()
                self.node = RealNode(self)
                self.node.prepare_network()
            write_pki(self.pki)
            mark("pki")
            self._start_etcd(deadline)
            mark("etcd_healthy")
            self._start_apiserver(deadline)
            mark("apiserver_ready")
            api = Api(self.server, self.pki)
            self._start_controllers()
            self._seed(api)
            self._provisioner = FakeProvisioner(
                api, self.root / "volumes", node=self.node.name if self.node else None
            )
            self._provisioner.start()
            self._wait_nodes(api, deadline)
            mark("nodes_ready")
            if self.node is not None:
                # image builds are slow the first time; they have their own limits
                self.node.start(time.monotonic() + max(timeout, 3600))
                mark("real_node_ready")
            self._wait_default_account(api, deadline)
            mark("usable")
        except BaseException:
            self.stop()
            raise
        self.started_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Terminate every process (newest first), then remove the temporary directory."""
        if self.node is not None:
            # nothing may recreate or reschedule pods while the node drains
            for component in self.components:
                if component.name in ("kube-controller-manager", "kube-scheduler"):
                    terminate(component)
            self.node.drain()
            self.node.stop()
            self.node = None
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

    def kubeconfig_for(self, namespace: str, service_account: str, duration: str = "2h") -> Path:
        """A kubeconfig that authenticates as a ServiceAccount (a bound token), for RBAC tests.

        The ServiceAccount must exist; its token comes from the TokenRequest API.
        """
        token = self.kubectl(
            "create", "token", service_account, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()
        user = f"system:serviceaccount:{namespace}:{service_account}"
        config = kubeconfig(self.server, self.pki, "admin")
        config["users"] = [{"name": user, "user": {"token": token}}]
        config["contexts"][0]["context"] = {
            "cluster": "flipserve-local",
            "user": user,
            "namespace": namespace,
        }
        path = self.root / "kubeconfigs" / f"{namespace}.{service_account}.kubeconfig"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(config, indent=2))
        return path

    # steps of start() ---------------------------------------------------------------------

    def _spawn(self, name: str, *args: str) -> Component:
        return self.spawn(name, self.bin_dir / name, *args)

    def spawn(self, name: str, binary: Path, *args: str) -> Component:
        """Start ``binary`` (dies with this process), logging to logs/<name>.log."""
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*_die_with_parent(), str(binary), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root,
            )
        component = Component(name, process, log)
        self.components.append(component)
        return component

    def check_alive(self) -> None:
        """Raise, with the last lines of its log, if any component has exited."""
        for component in self.components:
            if component.process.poll() is not None:
                tail = component.tail()
                error = PortTaken if "address already in use" in tail else ControlPlaneError
                raise error(
                    f"{component.name} exited with {component.process.returncode}; "
                    f"last lines of {component.log}:\n{tail}"
                )

    def wait_for(self, what: str, ready: Any, deadline: float) -> None:
        """Poll ``ready()`` until true, failing fast when a component dies."""
        self._wait(what, ready, deadline)

    def _wait(self, what: str, ready: Any, deadline: float) -> None:
        """Poll ``ready()`` until true, failing fast when a component dies."""
        while True:
            self.check_alive()
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
        # with a real node, pods reach the API server at the node's address (through the
        # `kubernetes` Service, whose endpoint is then that address)
        address = NODE_IP if self.real_node else "127.0.0.1"
        self.server = f"https://{address}:{port}"
        pki = self.pki
        if self.real_node:
            node_flags = [
                "--authorization-mode=Node,RBAC",
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet.key'}",
            ]
        else:
            node_flags = [
                "--authorization-mode=RBAC",
                # the `kubernetes` Service's Endpoints would point at 127.0.0.1, which
                # Endpoints validation rejects; nothing here dials the Service anyway
                "--endpoint-reconciler-type=none",
            ]
        self._spawn(
            "kube-apiserver",
            f"--etcd-servers={self.etcd_url}",
            f"--bind-address={address}",
            f"--advertise-address={address}",
            f"--secure-port={port}",
            f"--cert-dir={self.root / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            *node_flags,
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
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
        )
        self._spawn(
            "kube-scheduler",
            f"--kubeconfig={self.root / 'scheduler.kubeconfig'}",
            "--leader-elect=false",
            "--secure-port=0",
        )
        if not self.nodes:
            return
        self._spawn(
            "kwok",
            f"--kubeconfig={self.kubeconfig}",
            f"--config={KWOK_STAGES}",
            # only its own nodes: left to manage all, it would also take over a real
            # node and report that node's pods Running with fake addresses
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--cidr=10.244.0.1/16",  # KWOK's default /24 runs out of pod IPs at 254
            # Heartbeat through node Leases: without them KWOK renews node status about
            # every 55 s, past the node lifecycle controller's 50 s grace, so nodes flap
            # NotReady and their pods lose Ready for good.
            "--node-lease-duration-seconds=40",
        )

    def _seed(self, api: Api) -> None:
        api.create("/apis/storage.k8s.io/v1/storageclasses", STORAGE_CLASS_OBJECT)
        for i in range(self.nodes):
            api.create("/api/v1/nodes", _node(f"kwok-node-{i}"))

    def _wait_nodes(self, api: Api, deadline: float) -> None:
        def ready() -> bool:
            # Ready, and the not-ready taint lifted, so pods can land on them
            nodes = api.call("GET", "/api/v1/nodes")["items"]
            ready = [
                n
                for n in nodes
                for c in n.get("status", {}).get("conditions", [])
                if c["type"] == "Ready" and c["status"] == "True" and not n["spec"].get("taints")
            ]
            return len(ready) == self.nodes

        self._wait(f"{self.nodes} KWOK nodes Ready and untainted", ready, deadline)

    def _wait_default_account(self, api: Api, deadline: float) -> None:
        def exists() -> bool:
            try:
                api.call("GET", "/api/v1/namespaces/default/serviceaccounts/default")
            except urllib.error.HTTPError:
                return False
            return True

        self._wait("the default ServiceAccount", exists, deadline)
