"""A real node for the local control plane: containerd, kubelet, kube-proxy and CoreDNS.

Pods scheduled here run for real: runc containers from Debian's containerd, addresses from
the CNI bridge plugin, Services through kube-proxy's iptables rules, names through CoreDNS
(host processes, like a node's own daemons). Nothing is pulled: every image is built here
and loaded into containerd by ``hack/realnode/images.sh``.

Addresses, all on interfaces this module creates and removes:

- ``fsnode0`` (a bridge with no ports) holds the node's address, :data:`NODE_IP`: the API
  server and CoreDNS listen there, and the kubelet reports it as the node's InternalIP.
- ``fscni0``, the CNI bridge, is the pods' gateway on :data:`POD_CIDR`.

Everything :meth:`RealNode.start` starts, :meth:`RealNode.stop` stops by process id, and
it removes what they left: containers and their shims, pod network namespaces, mounts
under its directories, the two bridges and every iptables chain that was not there before
(the kubelet's ``KUBE-FIREWALL`` and friends, the CNI plugins' ``CNI-*``). See
docs/controlplane.md and ../shared/REALNODE-NOTES.md for the settings and why.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.controlplane.cluster import Component, ControlPlane

NODE_NAME = "flipserve-node"
NODE_IP = "10.90.0.1"
NODE_BRIDGE = "fsnode0"
CNI_BRIDGE = "fscni0"
POD_CIDR = "10.89.0.0/24"
CLUSTER_DOMAIN = "cluster.local"
SANDBOX_IMAGE = "flipserve.local/pause:3.10"
REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "hack" / "realnode" / "build.sh"
IMAGES_SCRIPT = REPO / "hack" / "realnode" / "images.sh"
DEPS_SCRIPT = REPO / "hack" / "realnode" / "deps.sh"
TABLES = ("filter", "nat", "mangle")


class NodeError(RuntimeError):
    """The real node could not be set up or started; the message says why."""


def cache_dir() -> Path:
    cache = os.environ.get("FLIPSERVE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "flipserve"
    )
    return Path(cache) / "realnode"


def _run(*args: str, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)
    if check and result.returncode != 0:
        raise NodeError(f"`{' '.join(args)}` exited {result.returncode}: {result.stderr.strip()}")
    return result


def _script(path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run one of hack/realnode's scripts; its last stdout line, or NodeError with stderr."""
    result = subprocess.run(
        [str(path), *args], capture_output=True, text=True, check=False, cwd=REPO, env=env
    )
    if result.returncode != 0:
        raise NodeError(f"{path.name} failed:\n{result.stderr[-4000:]}")
    lines = result.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def _chains() -> dict[str, set[str]]:
    """The user-defined iptables chains of each table right now."""
    chains: dict[str, set[str]] = {}
    for table in TABLES:
        out = _run("iptables", "-t", table, "-S", check=False).stdout
        chains[table] = {line.split()[1] for line in out.splitlines() if line.startswith("-N ")}
    return chains


def _mounts_under(*roots: Path) -> list[str]:
    """Mount points below any of ``roots``, deepest first (so they unmount in order)."""
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].encode().decode("unicode_escape")
        if any(point == str(r) or point.startswith(f"{r}/") for r in roots):
            points.append(point)
    return sorted(points, key=len, reverse=True)


@dataclass
class RealNode:
    """One kubelet node on this machine, joined to a :class:`ControlPlane`."""

    cluster: ControlPlane
    name: str = NODE_NAME
    components: list[Component] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    _chains_before: dict[str, set[str]] = field(default_factory=dict)
    _netns_before: set[str] = field(default_factory=set)
    bin_dir: Path = Path()

    @property
    def root(self) -> Path:
        return self.cluster.root / "node"

    @property
    def containerd_root(self) -> Path:
        """containerd's content and snapshots: kept in the cache, so images stay loaded."""
        return cache_dir() / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    # set-up before the API server starts --------------------------------------------------

    @staticmethod
    def check_host() -> None:
        """Install (as root) or name what the node needs; NodeError when it is missing."""
        _script(DEPS_SCRIPT)

    def prepare_network(self) -> None:
        """The node's address must exist before the API server binds it."""
        clean_stale()
        if _run("ip", "link", "show", NODE_BRIDGE, check=False).returncode == 0:
            raise NodeError(
                f"a real node is already running on this machine ({NODE_BRIDGE} exists and "
                "its starter is alive): one at a time; `make cluster-local-down` stops "
                "the one `make cluster-local` started"
            )
        self._chains_before = _chains()
        self._netns_before = (
            set(os.listdir("/var/run/netns")) if Path("/var/run/netns").is_dir() else set()
        )
        _run("ip", "link", "add", NODE_BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{NODE_IP}/32", "dev", NODE_BRIDGE)
        _run("ip", "link", "set", NODE_BRIDGE, "up")
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
        with contextlib.suppress(OSError):  # absent without br_netfilter; CNI then copes
            Path("/proc/sys/net/bridge/bridge-nf-call-iptables").write_text("1\n")

    # start ----------------------------------------------------------------------------------

    def start(self, deadline: float) -> None:
        began = time.monotonic()

        def mark(step: str) -> None:
            self.timings[step] = round(time.monotonic() - began, 3)

        self.bin_dir = Path(_script(BUILD_SCRIPT))
        mark("node_binaries")
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_pki()
        self._start_containerd(deadline)
        mark("containerd_ready")
        _script(IMAGES_SCRIPT, str(self.containerd_socket), str(self.bin_dir))
        mark("images_loaded")
        self._start_kubelet()
        self._start_kube_proxy()
        self._start_coredns()
        self._wait_ready(deadline)
        mark("node_ready")

    def _write_pki(self) -> None:
        from tests.controlplane.pki import issue_client, kubeconfig

        pki = self.cluster.pki
        issue_client(pki, "kubelet", f"system:node:{self.name}", "system:nodes")
        issue_client(pki, "kube-proxy", "system:kube-proxy")
        for client in ("kubelet", "kube-proxy"):
            config = kubeconfig(self.cluster.server, pki, client)
            (self.root / f"{client}.kubeconfig").write_text(json.dumps(config))

    def _spawn(self, name: str, binary: Path, *args: str) -> Component:
        component = self.cluster.spawn(name, binary, *args)
        self.components.append(component)
        return component

    def _start_containerd(self, deadline: float) -> None:
        state = self.root / "containerd"
        cni_conf = self.root / "cni"
        state.mkdir(parents=True, exist_ok=True)
        cni_conf.mkdir(parents=True, exist_ok=True)
        self.containerd_root.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-flipserve.conflist").write_text(json.dumps(_cni_config(), indent=2))
        config = self.root / "containerd.toml"
        config.write_text(_containerd_config(self.containerd_root, state, cni_conf))
        containerd = shutil.which("containerd")
        if containerd is None:
            raise NodeError("containerd is not installed (hack/realnode/deps.sh installs it)")
        self._spawn("containerd", Path(containerd), f"--config={config}")
        self.cluster.wait_for(
            "containerd's socket",
            lambda: (
                _run(
                    "ctr", "--address", str(self.containerd_socket), "version", check=False
                ).returncode
                == 0
            ),
            deadline,
        )

    def _start_kubelet(self) -> None:
        config = self.root / "kubelet.yaml"
        config.write_text(json.dumps(self._kubelet_config(), indent=2))
        self._spawn(
            "kubelet",
            self.cluster.bin_dir / "kubelet",
            f"--config={config}",
            f"--kubeconfig={self.root / 'kubelet.kubeconfig'}",
            f"--root-dir={self.root / 'kubelet'}",
            f"--hostname-override={self.name}",
            f"--node-ip={NODE_IP}",
            f"--cert-dir={self.root / 'kubelet-pki'}",
            "--v=1",
        )

    def _kubelet_config(self) -> dict[str, Any]:
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "imageServiceEndpoint": f"unix://{self.containerd_socket}",
            # cgroup v1 host, no systemd: see REALNODE-NOTES.md
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "failSwapOn": False,
            "address": NODE_IP,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 0,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.cluster.pki / "ca.crt")},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "clusterDomain": CLUSTER_DOMAIN,
            "clusterDNS": [NODE_IP],
            "resolvConf": str(self._resolv_conf()),
            "registerNode": True,
            "podCIDR": POD_CIDR,
            "maxPods": 60,
            "serializeImagePulls": False,
            # Nothing is pulled here: keep every loaded image, and do not evict on a
            # busy shared disk.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
            },
            "nodeStatusReportFrequency": "10s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "shutdownGracePeriod": "0s",
            "localStorageCapacityIsolation": True,
        }

    def _resolv_conf(self) -> Path:
        """The upstream resolv.conf pods without cluster DNS would get: none (offline)."""
        path = self.root / "resolv.conf"
        path.write_text("# no upstream DNS: pods resolve cluster names only\n")
        return path

    def _start_kube_proxy(self) -> None:
        from tests.controlplane.cluster import free_port

        config = self.root / "kube-proxy.yaml"
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "clientConnection": {"kubeconfig": str(self.root / "kube-proxy.kubeconfig")},
                    "mode": "iptables",
                    "clusterCIDR": POD_CIDR,
                    "hostnameOverride": self.name,
                    "bindAddress": NODE_IP,
                    "healthzBindAddress": f"127.0.0.1:{free_port()}",
                    "metricsBindAddress": f"127.0.0.1:{free_port()}",
                    # no sysctl writes for conntrack: the host's limits are fine and may
                    # not be ours to change
                    "conntrack": {"maxPerCore": 0, "min": 0},
                    "iptables": {"masqueradeAll": False, "syncPeriod": "10s"},
                }
            )
        )
        self._spawn("kube-proxy", self.cluster.bin_dir / "kube-proxy", f"--config={config}")

    def _start_coredns(self) -> None:
        corefile = self.root / "Corefile"
        admin = self.cluster.kubeconfig
        corefile.write_text(
            f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 {{
    bind {NODE_IP}
    errors
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa {{
        kubeconfig {admin} flipserve-local
        pods insecure
        ttl 5
    }}
    cache 5
    loadbalance
}}
"""
        )
        self._spawn("coredns", self.bin_dir / "coredns", "-conf", str(corefile))

    def _wait_ready(self, deadline: float) -> None:
        from tests.controlplane.api import Api

        api = Api(self.cluster.server, self.cluster.pki)

        def ready() -> bool:
            try:
                node = api.call("GET", f"/api/v1/nodes/{self.name}")
            except urllib.error.HTTPError:
                return False
            conditions = node.get("status", {}).get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) and (
                not node["spec"].get("taints")
            )

        self.cluster.wait_for(f"node {self.name} Ready", ready, deadline)

    # stop -----------------------------------------------------------------------------------

    def drain(self, timeout: float = 60) -> None:
        """Delete every pod on the node and wait until containerd runs none (graceful)."""
        from tests.controlplane.api import Api

        api = Api(self.cluster.server, self.cluster.pki)
        with contextlib.suppress(OSError, urllib.error.URLError):
            pods = api.call("GET", f"/api/v1/pods?fieldSelector=spec.nodeName={self.name}")
            for pod in pods["items"]:
                meta = pod["metadata"]
                with contextlib.suppress(urllib.error.HTTPError):
                    api.call(
                        "DELETE",
                        f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                        {"gracePeriodSeconds": 2},
                    )
        deadline = time.monotonic() + timeout
        while self._tasks() and time.monotonic() < deadline:
            time.sleep(0.5)

    def _ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _run(
            "ctr",
            "--address",
            str(self.containerd_socket),
            "-n",
            "k8s.io",
            *args,
            check=False,
            timeout=30,
        )

    def _tasks(self) -> list[str]:
        if not self.containerd_socket.exists():
            return []
        out = self._ctr("tasks", "ls", "-q").stdout
        return [line for line in out.splitlines() if line.strip()]

    def stop(self) -> None:
        """Stop the node's processes and remove everything they left on the host."""
        kubelet = [c for c in self.components if c.name != "containerd"]
        for component in reversed(kubelet):
            terminate(component)
        for task in self._tasks():  # what the kubelet did not stop in time
            self._ctr("tasks", "kill", "-s", "SIGKILL", task)
            self._ctr("tasks", "delete", "-f", task)
        if self.containerd_socket.exists():
            for container in self._ctr("containers", "ls", "-q").stdout.split():
                self._ctr("containers", "delete", container)
        self._kill_shims()
        for component in self.components:
            if component.name == "containerd":
                terminate(component)
        self.components.clear()
        self._remove_host_state()

    def _kill_shims(self) -> None:
        """containerd's shims outlive it; each one's pid is in its task directory."""
        tasks = self.root / "containerd" / "io.containerd.runtime.v2.task"
        for pid_file in tasks.glob("*/*/shim.pid"):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)

    def _remove_host_state(self) -> None:
        _remove_pod_cgroups()
        netns = Path("/var/run/netns")
        for mount in _mounts_under(self.root, self.containerd_root):
            _run("umount", "-l", mount, check=False)
        if netns.is_dir():
            for name in set(os.listdir(netns)) - self._netns_before:
                if name.startswith("cni-"):
                    _run("umount", str(netns / name), check=False)
                    with contextlib.suppress(OSError):
                        (netns / name).unlink()
        _delete_links()
        _run(str(self.cluster.bin_dir / "kube-proxy"), "--cleanup", check=False)
        self._remove_new_chains()

    def _remove_new_chains(self) -> None:
        if not self._chains_before:
            return
        for table, chains in _chains().items():
            _remove_chains(table, chains - self._chains_before.get(table, set()))


def clean_stale() -> None:
    """Remove what a real node whose starter was killed (SIGKILL skips stop()) left behind.

    Its processes died with the starter (PR_SET_PDEATHSIG) except containerd's shims and
    their containers; its bridges, netns, mounts and iptables chains stay. Their being
    there (``fsnode0`` exists while no live starter owns it) is the sign; only then is
    anything removed, and only what this module creates: processes whose command line
    names a dead starter's directory, mounts under it, ``cni-*`` netns, the two bridges,
    and the ``KUBE-*`` and ``CNI-*`` chains the kubelet, kube-proxy and the CNI plugins make.
    """
    if _run("ip", "link", "show", NODE_BRIDGE, check=False).returncode != 0:
        return
    roots = [r for r in Path(tempfile.gettempdir()).glob("flipserve-cp-*") if not _owner_alive(r)]
    markers = [f"{r}/node" for r in roots]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            if any(m in cmdline for m in markers):
                os.kill(int(proc.name), signal.SIGKILL)
    _remove_pod_cgroups()
    for mount in _mounts_under(*(Path(m) for m in markers), cache_dir() / "containerd"):
        _run("umount", "-l", mount, check=False)
    netns = Path("/var/run/netns")
    for ns in netns.glob("cni-*") if netns.is_dir() else []:
        _run("umount", str(ns), check=False)
        with contextlib.suppress(OSError):
            ns.unlink()
    _delete_links()
    for table, chains in _chains().items():
        ours = {c for c in chains if c.startswith(("KUBE-", "CNI-"))}
        _remove_chains(table, ours)
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


def _delete_links() -> None:
    """The pods' veths still on the CNI bridge (their netns may outlive it), then both bridges."""
    ports = _run("ip", "-o", "link", "show", "master", CNI_BRIDGE, check=False).stdout
    for line in ports.splitlines():
        _run("ip", "link", "delete", line.split(": ")[1].split("@")[0], check=False)
    for link in (CNI_BRIDGE, NODE_BRIDGE):
        _run("ip", "link", "delete", link, check=False)


def _owner_alive(root: Path) -> bool:
    try:
        os.kill(int((root / "owner.pid").read_text()), 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError):
        return True  # just created, or not ours to judge
    return True


def _remove_chains(table: str, chains: set[str]) -> None:
    """Delete ``chains`` of ``table``: first the jumps into them, then their rules, then them."""
    if not chains:
        return
    for rule in _run("iptables", "-t", table, "-S", check=False).stdout.splitlines():
        parts = shlex.split(rule)
        if parts[:1] == ["-A"] and parts[1] not in chains and any(c in parts for c in chains):
            _run("iptables", "-t", table, "-D", *parts[1:], check=False)
    for chain in chains:
        _run("iptables", "-t", table, "-F", chain, check=False)
    for chain in chains:
        _run("iptables", "-t", table, "-X", chain, check=False)


def terminate(component: Component, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if component.process.poll() is None:
        component.process.terminate()
    try:
        component.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        component.process.kill()
        component.process.wait()


def _remove_pod_cgroups() -> None:
    """The kubelet's ``kubepods`` cgroups, deepest first, once their processes are killed.

    Containers outlive a killed shim (they are reparented to init); whatever is still in
    a pod's cgroup is one of this node's containers.
    """
    for _ in range(20):
        pids = {
            int(pid)
            for procs in Path("/sys/fs/cgroup").glob("*/kubepods/**/cgroup.procs")
            for pid in procs.read_text().split()
        }
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.25)
    for top in Path("/sys/fs/cgroup").glob("*/kubepods"):
        for path in sorted(top.glob("**/"), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                path.rmdir()


def _cni_config() -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "flipserve",
        "plugins": [
            {
                "type": "bridge",
                "bridge": CNI_BRIDGE,
                "isGateway": True,
                "ipMasq": False,  # pods talk to this machine only
                "hairpinMode": True,  # a pod can reach itself through its Service
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def _containerd_config(root: Path, state: Path, cni_conf: Path) -> str:
    return f"""version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{state / "containerd.sock"}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  # lowering oom_score_adj is refused here; without this every sandbox fails to start
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
"""
