"""The Kubernetes side of a promotion: what the controller does to one Helm release.

Names follow the chart (``charts/flipserve``), from the release's fullname:
the API Deployment ``<fullname>``, the preview Deployment ``<fullname>-preview``,
the PVCs ``<fullname>-model-blue`` / ``-green`` and the copy Job template in the
ConfigMap ``<fullname>-copy-job-template`` (key ``job.yaml``).

The API Deployment is the release's record: its annotations hold the active
colour, model version and digest, the previous ones (for rollback), and the
lock naming the one Promotion allowed to change it. Every operation here is
idempotent, so a controller restarted at any point can repeat the step it was
in: :meth:`KubePlatform.switch` returns early when the claim already matches
(like Argo Rollouts' ``switchServiceSelector``) and emits an Event when it
patches; claim and annotations change in one patch, so the API is never
half-switched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from string import Template
from typing import Literal

import yaml

from flipserve.errors import KubeError, PromotionError
from flipserve.kube import JSON_PATCH, Kube, Obj

Colour = Literal["blue", "green"]
JobState = Literal["running", "succeeded", "failed"]

ANN = "flipserve.dev/"
ACTIVE_COLOUR = ANN + "active-colour"
MODEL_VERSION = ANN + "model-version"
MODEL_DIGEST = ANN + "model-digest"
PREVIOUS_VERSION = ANN + "previous-version"
PREVIOUS_DIGEST = ANN + "previous-digest"
LOCK = ANN + "promotion"
COLOUR_LABEL = ANN + "colour"
STRATEGIC = "application/strategic-merge-patch+json"
JOB_TEMPLATE_KEY = "job.yaml"


def other(colour: str) -> Colour:
    return "green" if colour == "blue" else "blue"


@dataclass(frozen=True)
class ReleaseState:
    """What the API Deployment says about the release right now."""

    active_colour: Colour
    version: str | None
    digest: str | None
    previous_version: str | None
    previous_digest: str | None
    lock: str | None
    claim: str


@dataclass(frozen=True)
class ModelRef:
    """The part of a model ref the cluster needs: where, which version, which digest."""

    uri: str
    version: str
    digest: str
    name: str = "model"

    def to_json(self) -> str:
        return json.dumps(
            {"name": self.name, "uri": self.uri, "version": self.version, "digest": self.digest},
            sort_keys=True,
        )


class KubePlatform:
    """Operations on one release's Deployments, PVCs and Jobs."""

    def __init__(self, kube: Kube, fullname: str) -> None:
        self.kube = kube
        self.fullname = fullname
        self.api_name = fullname
        self.preview_name = f"{fullname}-preview"

    def claim(self, colour: str) -> str:
        return f"{self.fullname}-model-{colour}"

    # --- release record ---------------------------------------------------

    def api_deployment(self) -> Obj:
        try:
            return self.kube.get(self.kube.path("deployments", self.api_name))
        except KubeError as e:
            if e.status == 404:
                raise PromotionError(f"release {self.fullname!r}: no Deployment {e}") from e
            raise

    def state(self, deployment: Obj | None = None) -> ReleaseState:
        dep = deployment or self.api_deployment()
        ann = dep["metadata"].get("annotations") or {}
        claim = model_claim(dep, self.fullname)
        colour = ann.get(ACTIVE_COLOUR) or claim.rsplit("-", 1)[-1]
        if colour not in ("blue", "green"):
            raise PromotionError(f"Deployment {self.api_name}: unknown active colour {colour!r}")
        return ReleaseState(
            active_colour=colour,  # type: ignore[arg-type]
            version=ann.get(MODEL_VERSION) or None,
            digest=ann.get(MODEL_DIGEST) or None,
            previous_version=ann.get(PREVIOUS_VERSION) or None,
            previous_digest=ann.get(PREVIOUS_DIGEST) or None,
            lock=ann.get(LOCK) or None,
            claim=claim,
        )

    def acquire(self, promotion: str) -> str | None:
        """Take the release lock for ``promotion``; returns the other holder when taken.

        The patch carries the read resourceVersion, so of two promotions racing for a
        free lock exactly one wins (the other gets 409 and sees the winner next time).
        """
        dep = self.api_deployment()
        holder = self.state(dep).lock
        if holder == promotion:
            return None
        if holder:
            return holder
        meta = {"resourceVersion": dep["metadata"]["resourceVersion"]}
        meta["annotations"] = {LOCK: promotion}  # type: ignore[assignment]
        try:
            self.kube.patch(self.kube.path("deployments", self.api_name), {"metadata": meta})
        except KubeError as e:
            if e.status == 409:
                return "a concurrent promotion"
            raise
        return None

    def release(self, promotion: str) -> None:
        """Drop the lock if ``promotion`` holds it (idempotent)."""
        if self.state().lock == promotion:
            patch = {"metadata": {"annotations": {LOCK: None}}}
            self.kube.patch(self.kube.path("deployments", self.api_name), patch)

    # --- copy Job ---------------------------------------------------------

    def copy_job_name(self, promotion: str) -> str:
        return f"{self.fullname}-copy-{promotion}"[:63].rstrip("-")

    def start_copy(self, promotion: str, colour: Colour, ref: ModelRef) -> str:
        """Create the copy Job filling ``colour``'s PVC, unless it exists already."""
        name = self.copy_job_name(promotion)
        if self.kube.find(self.kube.path("jobs", name)) is not None:
            return name
        cm = self.kube.get(self.kube.path("configmaps", f"{self.fullname}-copy-job-template"))
        template = (cm.get("data") or {}).get(JOB_TEMPLATE_KEY)
        if not template:
            raise PromotionError(f"ConfigMap {self.fullname}-copy-job-template has no job.yaml")
        job = render_copy_job(template, name, promotion, colour, self.claim(colour), ref)
        try:
            self.kube.create(self.kube.path("jobs"), job)
        except KubeError as e:
            if e.status != 409:  # created by a previous run of this step
                raise
        return name

    def copy_state(self, job_name: str) -> tuple[JobState, str]:
        job = self.kube.find(self.kube.path("jobs", job_name))
        if job is None:
            return "failed", f"copy Job {job_name} disappeared"
        return job_state(job)

    def delete_copy(self, job_name: str) -> None:
        self.kube.delete(self.kube.path("jobs", job_name))

    # --- preview ----------------------------------------------------------

    def start_preview(self, colour: Colour) -> None:
        """Scale the preview Deployment to 1 replica serving ``colour`` (idempotent)."""
        dep = self.kube.get(self.kube.path("deployments", self.preview_name))
        if model_claim(dep, self.fullname) == self.claim(colour) and dep["spec"]["replicas"] == 1:
            return
        patch = _claim_patch(dep, self.fullname, self.claim(colour), colour)
        patch.append({"op": "replace", "path": "/spec/replicas", "value": 1})
        self.kube.patch(self.kube.path("deployments", self.preview_name), patch, JSON_PATCH)

    def preview_ready(self, colour: Colour) -> bool:
        dep = self.kube.get(self.kube.path("deployments", self.preview_name))
        return model_claim(dep, self.fullname) == self.claim(colour) and rollout_complete(dep)

    def stop_preview(self) -> None:
        dep = self.kube.get(self.kube.path("deployments", self.preview_name))
        if dep["spec"].get("replicas", 1) != 0:
            patch = {"spec": {"replicas": 0}}
            self.kube.patch(self.kube.path("deployments", self.preview_name), patch)

    # --- switch -----------------------------------------------------------

    def switch(self, colour: Colour, version: str, digest: str, reason: str) -> bool:
        """Point the API Deployment at ``colour``; False when it already does.

        Claim, active colour/version/digest and the previous ones change in one
        patch (the previous ones only when the colour really changes).
        """
        dep = self.api_deployment()
        state = self.state(dep)
        target = self.claim(colour)
        if state.claim == target and state.active_colour == colour:
            return False
        ann = {ACTIVE_COLOUR: colour, MODEL_VERSION: version, MODEL_DIGEST: digest}
        if state.active_colour != colour:
            ann |= {PREVIOUS_VERSION: state.version or "", PREVIOUS_DIGEST: state.digest or ""}
        patch = _claim_patch(dep, self.fullname, target, colour)
        patch.append({"op": "test", "path": "/metadata/resourceVersion",
                      "value": dep["metadata"]["resourceVersion"]})  # fmt: skip
        patch += [
            {"op": "add", "path": "/metadata/annotations/" + _escape(k), "value": v}
            for k, v in ann.items()
        ]
        if not dep["metadata"].get("annotations"):
            patch.insert(0, {"op": "add", "path": "/metadata/annotations", "value": {}})
        patched = self.kube.patch(self.kube.path("deployments", self.api_name), patch, JSON_PATCH)
        message = f"switched to {colour} ({target}, model {version}): {reason}"
        self.kube.emit_event(patched, "SwitchedColour", message)
        return True

    def api_rollout_complete(self) -> bool:
        return rollout_complete(self.api_deployment())

    def pod_claims(self, deployment: str | None = None) -> list[str]:
        """The model claim of every live pod of a Deployment (tests and status)."""
        dep = self.kube.get(self.kube.path("deployments", deployment or self.api_name))
        labels = dep["spec"]["selector"].get("matchLabels", {})
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        claims = []
        for pod in self.kube.list(self.kube.path("pods"), selector):
            if pod["metadata"].get("deletionTimestamp"):
                continue
            claims.append(model_claim(pod, self.fullname))
        return claims


# --- pure helpers on manifests (unit-tested) ---------------------------------


def model_claim(obj: Obj, fullname: str) -> str:
    """The model PVC a Deployment (or Pod) mounts: the volume claiming ``<fullname>-model-*``."""
    for volume in _volumes(obj):
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName", "")
        if claim.startswith(f"{fullname}-model-"):
            return str(claim)
    name = obj.get("metadata", {}).get("name")
    raise PromotionError(f"{name}: no volume claiming a {fullname}-model-* PVC")


def _volumes(obj: Obj) -> list[Obj]:
    spec = obj.get("spec", {})
    pod_spec = spec.get("template", {}).get("spec", spec)
    volumes: list[Obj] = pod_spec.get("volumes") or []
    return volumes


def _claim_patch(dep: Obj, fullname: str, claim: str, colour: str) -> list[Obj]:
    """JSON patch ops replacing the model claim (tested first) and the pods' colour label."""
    label = "/spec/template/metadata/labels/" + _escape(COLOUR_LABEL)
    for i, volume in enumerate(_volumes(dep)):
        old = (volume.get("persistentVolumeClaim") or {}).get("claimName", "")
        if old.startswith(f"{fullname}-model-"):
            path = f"/spec/template/spec/volumes/{i}/persistentVolumeClaim/claimName"
            return [
                {"op": "test", "path": path, "value": old},
                {"op": "replace", "path": path, "value": claim},
                {"op": "add", "path": label, "value": colour},
            ]
    raise PromotionError(f"{dep['metadata']['name']}: no {fullname}-model-* volume to switch")


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def rollout_complete(dep: Obj) -> bool:
    """``kubectl rollout status`` semantics: every replica updated and available."""
    spec, status = dep.get("spec", {}), dep.get("status", {})
    want = spec.get("replicas", 1)
    if status.get("observedGeneration", 0) < dep["metadata"].get("generation", 0):
        return False
    return bool(
        status.get("updatedReplicas", 0) == want
        and status.get("replicas", 0) == want
        and status.get("availableReplicas", 0) == want
    )


def job_state(job: Obj) -> tuple[JobState, str]:
    for cond in job.get("status", {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            return "succeeded", "copy Job completed"
        if cond.get("type") == "Failed":
            why = cond.get("message") or cond.get("reason") or "failed"
            return "failed", f"copy Job {job['metadata']['name']} failed: {why}"
    return "running", "copy Job running"


def render_copy_job(template: str, name: str, promotion: str, colour: str, claim: str, ref: ModelRef) -> Obj:
    """The chart's Job template (``${...}`` placeholders, see the ConfigMap) filled in."""
    values = {
        "JOB_NAME": name,
        "PROMOTION": promotion,
        "COLOUR": colour,
        "CLAIM_NAME": claim,
        "MODEL_REF": ref.uri,
        "MODEL_VERSION": ref.version,
        "MODEL_DIGEST": ref.digest,
    }
    for key, value in values.items():
        if any(c in value for c in '"\\\n'):  # the template quotes each placeholder once
            raise PromotionError(f"copy Job {key} contains a quote, backslash or newline")
    job = yaml.safe_load(Template(template).safe_substitute(values))
    if not isinstance(job, dict) or job.get("kind") != "Job":
        raise PromotionError("the copy Job template is not a Job manifest")
    return job
