"""Helpers the chart tests share: find helm, render the chart, pick objects out.

helm comes from the control plane's build (``hack/controlplane/build.sh``,
cached; CI builds it in ``make tools``). That helm is built from its Go
module without Kubernetes version ldflags, so it assumes Kubernetes 1.20 when
no cluster is asked; ``KUBE_VERSION`` is passed to lint and template instead.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.controlplane import build_binaries

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "flipserve"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
KUBE_VERSION = "v1.34.0"

Obj = dict[str, Any]


@functools.cache
def helm_bin() -> Path:
    """The helm binary built by hack/controlplane/build.sh (a no-op when cached)."""
    return build_binaries() / "helm"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm_bin()), *args], capture_output=True, text=True, check=check, timeout=120
    )


def render(
    *values_files: Path,
    sets: dict[str, str] | None = None,
    release: str = "flipserve",
    namespace: str = "demo",
    show_only: str | None = None,
) -> list[Obj]:
    """``helm template`` the chart and return the parsed objects (tests included)."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    args += ["--kube-version", KUBE_VERSION, "--include-crds"]
    for f in values_files:
        args += ["-f", str(f)]
    for key, value in (sets or {}).items():
        args += ["--set", f"{key}={value}"]
    if show_only:
        args += ["--show-only", show_only]
    out = helm(*args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(objs: list[Obj], kind: str, name: str) -> Obj:
    for obj in objs:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    names = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objs)
    raise AssertionError(f"no {kind}/{name} among {names}")


def pod_spec(obj: Obj) -> Obj:
    spec: Obj = obj["spec"]["template"]["spec"]
    return spec


def env_of(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


def claim_of(obj: Obj) -> str:
    """The claim of the volume named "model" (API and preview) or "target" (copy Job)."""
    spec = obj["spec"]["template"]["spec"] if "template" in obj.get("spec", {}) else obj["spec"]
    for volume in spec["volumes"]:
        if volume["name"] in ("model", "target"):
            return str(volume["persistentVolumeClaim"]["claimName"])
    raise AssertionError(f"{obj['metadata']['name']}: no model volume")
