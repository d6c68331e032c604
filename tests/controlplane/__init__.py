"""A real Kubernetes control plane on 127.0.0.1, for the integration tests and for people.

kind cannot run on our machines (no node image can be pulled). This starts etcd, kube-apiserver
(RBAC, ServiceAccount admission), kube-controller-manager, kube-scheduler and KWOK (fake
nodes; it marks scheduled pods Running/Ready and run-once pods Succeeded, see
tests/data/kwok-stages.yaml) from the binaries ``hack/controlplane/build.sh`` builds, each
on a free loopback port, with certificates and service-account keys made on the fly in a
temporary directory. Tests use :class:`ControlPlane` through the ``control_plane`` fixture
(tests/integration/conftest.py); people use the command line::

    python -m tests.controlplane up     # start in the background, print `export ...` lines
    python -m tests.controlplane up --real-node   # with a real kubelet node (root; node.py)
    python -m tests.controlplane env    # print them again
    python -m tests.controlplane down   # stop it and remove its files

Volumes: nothing provisions real storage here, and a pod whose PersistentVolumeClaim stays
Pending is never scheduled. So the cluster gets a default StorageClass ``standard`` (the
name kind uses) whose provisioner is :class:`FakeProvisioner`, a thread of the process that
started the cluster: it answers each claim of that class with a hostPath PersistentVolume
pre-bound to it (the external-provisioner protocol, so the real PV binder does the
binding) and deletes released ones. Claims bind within a second; on KWOK nodes nothing is
ever mounted, on the real node (:mod:`tests.controlplane.node`) the kubelet mounts them.
"""

from tests.controlplane.cluster import (
    CommandFailed,
    ControlPlane,
    ControlPlaneError,
    build_binaries,
    free_port,
)
from tests.controlplane.provisioner import PROVISIONER, STORAGE_CLASS, FakeProvisioner

__all__ = [
    "PROVISIONER",
    "STORAGE_CLASS",
    "CommandFailed",
    "ControlPlane",
    "ControlPlaneError",
    "FakeProvisioner",
    "build_binaries",
    "free_port",
]
