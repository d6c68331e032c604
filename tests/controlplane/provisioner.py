"""A stand-in volume provisioner, so PersistentVolumeClaims bind on a cluster without storage."""

from __future__ import annotations

import contextlib
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.controlplane.api import Api

PROVISIONER = "flipserve.test/fake-hostpath"
STORAGE_CLASS = "standard"

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
    "allowVolumeExpansion": False,  # no resizer answers; refuse instead of hanging
}


class FakeProvisioner:
    """Answers claims of the ``standard`` StorageClass with pre-bound volumes.

    hostPath volumes. Without ``node`` (KWOK nodes only) nothing ever mounts them. With
    ``node``, a real kubelet's, they are what kind's local-path-provisioner makes: a
    directory on that node, world-writable (mode 0777, made here), the PV pinned to the
    node; the kubelet bind-mounts it into the pods for real. (``local`` PVs would have
    the kubelet apply fsGroup, but only on the first mount: the API pods mount a colour's
    volume read-only before the copy Job writes to it, so the ownership never changes and
    the copy fails, which kind and Minikube users never see.)
    """

    def __init__(
        self, api: Api, volumes: Path, interval: float = 0.5, node: str | None = None
    ) -> None:
        self._api = api
        self._volumes = volumes
        self._node = node
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

    def _source(self, name: str) -> dict[str, Any]:
        path = self._volumes / name
        if self._node is None:
            return {"hostPath": {"path": str(path), "type": "DirectoryOrCreate"}}
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)
        term = {"key": "kubernetes.io/hostname", "operator": "In", "values": [self._node]}
        return {
            "hostPath": {"path": str(path), "type": "Directory"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [term]}]}},
        }

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
                **self._source(name),
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": meta["namespace"],
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
