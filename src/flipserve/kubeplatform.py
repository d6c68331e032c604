"""The Kubernetes side of a promotion: what the controller does to one Helm release.

Names follow the chart (``charts/flipserve``), from the release's fullname:
the API Deployment ``<fullname>``, the preview Deployment ``<fullname>-preview``,
the PVCs ``<fullname>-model-blue`` / ``-green`` and the copy Job template in the
ConfigMap ``<fullname>-copy-job-template`` (key ``job.yaml``).

The API Deployment is the release's record: its annotations hold the active
colour, model version, digest and scores, the previous ones (for rollback),
what each colour's volume holds (``<colour>-model-*``, written when a copy
onto it starts, so a rollback never returns to a volume a refused candidate
overwrote), and the lock naming the one Promotion allowed to change it. What is in
production (and the scores a candidate must beat) is not kept here but in
the store's production record, shared with every other promoter; the
controller reaches the store with the chart's store settings and credentials
(``FLIPSERVE_STORE_URI``, ``FLIPSERVE_S3_*``), as the copy Job does. Every operation here is
idempotent, so a controller restarted at any point can repeat the step it was
in: :meth:`KubePlatform.switch` returns early when the claim already matches
(like Argo Rollouts' ``switchServiceSelector``) and emits an Event when it
patches; claim and annotations change in one patch, so the API is never
half-switched.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from string import Template

import yaml  # type: ignore[import-untyped]

from flipserve.errors import KubeError, PromotionError, TemporaryError
from flipserve.kube import JSON_PATCH, Kube, Obj
from flipserve.probe import HttpProbe, ServerMetrics, observed_window
from flipserve.promotion import (
    ActiveModel,
    Colour,
    CopyProgress,
    CopyState,
    ModelTarget,
    Production,
)
from flipserve.promotion.production import StoreProduction
from flipserve.promotion.status import ObservedMetrics, ServerCounters


@dataclass(frozen=True)
class Urls:
    """Where the gates reach the API and the preview (Services, or overrides in tests)."""

    api: str
    preview: str
    pod: str = "http://{ip}:{port}"
    """Where the observe window reaches one API pod: ``{ip}``, ``{port}`` (its ``http``
    container port), ``{name}``, ``{namespace}``."""


ANN = "flipserve.dev/"
ACTIVE_COLOUR = ANN + "active-colour"
MODEL_VERSION = ANN + "model-version"
MODEL_DIGEST = ANN + "model-digest"
MODEL_SCORES = ANN + "model-scores"
LOCK = ANN + "promotion"
COLOUR_LABEL = ANN + "colour"
JOB_TEMPLATE_KEY = "job.yaml"


@dataclass(frozen=True)
class ReleaseState:
    """What the API Deployment says about the release right now."""

    active_colour: Colour
    claim: str
    annotations: dict[str, str]

    @property
    def lock(self) -> str | None:
        return self.annotations.get(LOCK) or None

    def target(self, prefix: str = "") -> ModelTarget | None:
        """The model recorded as active (or, with ``prefix="previous-"``, the one before)."""
        a = self.annotations
        digest = a.get(f"{ANN}{prefix}model-digest")
        if not digest:
            return None
        scores = json.loads(a.get(f"{ANN}{prefix}model-scores") or "{}")
        return ModelTarget(
            name=a.get(f"{ANN}{prefix}model-name") or "flipserve",
            version=a.get(f"{ANN}{prefix}model-version") or "unknown",
            uri=a.get(f"{ANN}{prefix}model-uri") or "unknown",
            digest=digest,
            scores=scores,
        )

    def held(self, colour: Colour) -> ModelTarget | None:
        """The model ``colour``'s volume holds: the last one copied there (or served from it).

        The ``<colour>-model-*`` annotations are written when a copy onto the
        colour starts, so a refused candidate is recorded as soon as it begins to
        overwrite what was there. A release whose colours were never recorded
        (promoted before these annotations existed) falls back on what it
        served: the active model on the active colour, the previous one on the
        other, until its next switch records both.
        """
        recorded = self.target(f"{colour}-")
        if recorded is not None:
            return recorded
        return self.target() if colour is self.active_colour else self.target("previous-")


class KubePlatform:
    """The promotion ``Platform`` for one Promotion of one release (see module docstring)."""

    def __init__(
        self,
        kube: Kube,
        fullname: str,
        promotion: str,
        urls: Urls,
        probe: HttpProbe,
        records: StoreProduction,
    ) -> None:
        self.kube, self.fullname, self.promotion = kube, fullname, promotion
        self.urls, self.probe, self.records = urls, probe, records
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
                raise PromotionError(f"release {self.fullname!r} has no Deployment: {e}") from e
            raise

    def state(self, deployment: Obj | None = None) -> ReleaseState:
        dep = deployment or self.api_deployment()
        ann = dict(dep["metadata"].get("annotations") or {})
        claim = model_claim(dep, self.fullname)
        colour = ann.get(ACTIVE_COLOUR) or claim.rsplit("-", 1)[-1]
        if colour not in ("blue", "green"):
            raise PromotionError(f"Deployment {self.api_name}: unknown active colour {colour!r}")
        return ReleaseState(active_colour=Colour(colour), claim=claim, annotations=ann)

    def active(self) -> ActiveModel | None:
        state = self.state()
        target = state.target()
        # The chart mounts a colour from the start; without a recorded model nothing serves.
        return None if target is None else ActiveModel(colour=state.active_colour, target=target)

    def production(self) -> Production | None:
        return self.records.read()

    def write_production(self, target: ModelTarget, expected_etag: str | None) -> Production:
        return self.records.write(target, expected_etag)

    # --- lock: one promotion at a time per release -------------------------

    def acquire(self, is_live: Callable[[str], bool]) -> str | None:
        """Take the release lock; returns the live holder when another promotion has it.

        A lock left by a promotion that has finished or was deleted is taken over.
        The patch carries the read resourceVersion, so of two promotions racing for a
        free lock exactly one wins (the other gets 409 and sees the winner next time).
        """
        dep = self.api_deployment()
        holder = self.state(dep).lock
        if holder == self.promotion:
            return None
        if holder and is_live(holder):
            return holder
        meta = {"resourceVersion": dep["metadata"]["resourceVersion"]}
        patch = {"metadata": meta | {"annotations": {LOCK: self.promotion}}}
        try:
            self.kube.patch(self.kube.path("deployments", self.api_name), patch)
        except KubeError as e:
            if e.status == 409:
                return holder or "a concurrent promotion"
            raise
        return None

    def release(self) -> None:
        """Drop the lock if this promotion holds it (idempotent)."""
        if self.state().lock == self.promotion:
            patch = {"metadata": {"annotations": {LOCK: None}}}
            self.kube.patch(self.kube.path("deployments", self.api_name), patch)

    # --- copy Job ---------------------------------------------------------

    @property
    def copy_job_name(self) -> str:
        return f"{self.fullname}-copy-{self.promotion}"[:63].rstrip("-")

    def start_copy(self, colour: Colour, target: ModelTarget) -> None:
        """Create the copy Job filling ``colour``'s PVC, unless it exists already."""
        name = self.copy_job_name
        if self.kube.find(self.kube.path("jobs", name)) is not None:
            return
        cm = self.kube.get(self.kube.path("configmaps", f"{self.fullname}-copy-job-template"))
        template = (cm.get("data") or {}).get(JOB_TEMPLATE_KEY)
        if not template:
            raise PromotionError(f"ConfigMap {self.fullname}-copy-job-template has no job.yaml")
        job = render_copy_job(template, name, self.promotion, colour, self.claim(colour), target)
        self._record_held(colour, target)  # first: from here on the volume is being overwritten
        try:
            self.kube.create(self.kube.path("jobs"), job)
        except KubeError as e:
            if e.status != 409:  # 409: created by an earlier run of this step
                raise

    def _record_held(self, colour: Colour, target: ModelTarget) -> None:
        """Annotate the API Deployment with what ``colour``'s volume holds (no rollout)."""
        patch = {"metadata": {"annotations": _target_annotations(f"{colour}-", target)}}
        self.kube.patch(self.kube.path("deployments", self.api_name), patch)

    def copy_progress(self, colour: Colour, target: ModelTarget) -> CopyProgress:
        job = self.kube.find(self.kube.path("jobs", self.copy_job_name))
        if job is None:
            return CopyProgress(state=CopyState.ABSENT)
        return job_progress(job)

    def verify(self, colour: Colour, target: ModelTarget) -> str | None:
        """The preview server on ``colour`` must serve exactly ``target.digest``.

        The copier verifies every file before it writes READY, and the server
        refuses a volume whose manifest does not hash to READY's digest; this
        checks the end result from outside, through the server itself.
        Waiting for the preview is a retry-later (TemporaryError), not a verdict.
        """
        self.start_preview(colour)
        if self.preview_url(colour) is None:
            dep = self.kube.get(self.kube.path("deployments", self.preview_name))
            if progress_deadline_exceeded(dep):
                return f"the preview of {colour} never became ready"
            raise TemporaryError(f"waiting for the preview of {colour} to verify it", delay=2.0)
        served = self.probe.served(self.urls.preview)
        if served.digest != target.digest:
            return f"{colour} serves digest {served.digest}, expected {target.digest}"
        return None

    # --- preview ----------------------------------------------------------

    def start_preview(self, colour: Colour) -> None:
        """Scale the preview Deployment to 1 replica serving ``colour`` (idempotent)."""
        dep = self.kube.get(self.kube.path("deployments", self.preview_name))
        if model_claim(dep, self.fullname) == self.claim(colour) and dep["spec"]["replicas"] == 1:
            return
        patch = _claim_patch(dep, self.fullname, self.claim(colour), colour)
        patch.append({"op": "replace", "path": "/spec/replicas", "value": 1})
        self.kube.patch(self.kube.path("deployments", self.preview_name), patch, JSON_PATCH)

    def preview_url(self, colour: Colour) -> str | None:
        dep = self.kube.get(self.kube.path("deployments", self.preview_name))
        on_colour = model_claim(dep, self.fullname) == self.claim(colour)
        up = dep["spec"].get("replicas", 0) >= 1 and rollout_complete(dep)
        return self.urls.preview if on_colour and up else None

    def stop_preview(self, colour: Colour) -> None:
        dep = self.kube.get(self.kube.path("deployments", self.preview_name))
        if dep["spec"].get("replicas", 1) != 0:
            patch = {"spec": {"replicas": 0}}
            self.kube.patch(self.kube.path("deployments", self.preview_name), patch)

    # --- switch -----------------------------------------------------------

    def switch(self, colour: Colour, target: ModelTarget | None) -> bool:
        """Point the API Deployment at ``colour`` serving ``target``; False if it already does.

        Claim, pod colour label and the active/previous model annotations change
        in one patch, guarded by the read resourceVersion. A Kubernetes Event is
        emitted when the claim really moves (not when only the record is updated,
        as on a first deployment to the colour mounted from the start).
        """
        dep = self.api_deployment()
        state = self.state(dep)
        moves = state.claim != self.claim(colour) or state.active_colour != colour
        recorded = target is None or state.annotations.get(MODEL_DIGEST) == target.digest
        if not moves and recorded:
            return False
        ann = {ACTIVE_COLOUR: colour.value} | _target_annotations("", target)
        ann |= _target_annotations(f"{colour}-", target)
        if state.active_colour != colour:
            # The colour left behind keeps what it served: a rollback returns to it.
            ann |= _target_annotations("previous-", state.target())
            ann |= _target_annotations(f"{state.active_colour}-", state.target())
        patch = _claim_patch(dep, self.fullname, self.claim(colour), colour)
        rv = dep["metadata"]["resourceVersion"]
        # A stale resourceVersion makes the API server answer 409 (retried), not apply.
        patch.insert(0, {"op": "replace", "path": "/metadata/resourceVersion", "value": rv})
        if not dep["metadata"].get("annotations"):
            patch.append({"op": "add", "path": "/metadata/annotations", "value": {}})
        patch += [
            {"op": "add", "path": "/metadata/annotations/" + _escape(k), "value": v}
            for k, v in ann.items()
        ]
        patched = self.kube.patch(self.kube.path("deployments", self.api_name), patch, JSON_PATCH)
        if moves:
            version = target.version if target else "unknown"
            message = f"Promotion {self.promotion}: API switched to {colour} (model {version})"
            self.kube.emit_event(patched, "SwitchedColour", message)
        return True

    def rollout_done(self, colour: Colour) -> bool:
        dep = self.api_deployment()
        return model_claim(dep, self.fullname) == self.claim(colour) and rollout_complete(dep)

    # --- traffic and metrics (through the servers) ------------------------

    def traffic_sample(self, n: int) -> list[str]:
        return self.probe.traffic_sample(self.urls.api, n)

    def observe_start(self, colour: Colour) -> dict[str, ServerCounters]:
        """Each Ready API pod on ``colour``: its counters when the observe window starts."""
        return {key: m.counters for key, m in self._scrape(colour).items()}

    def observe(
        self, colour: Colour, since_seconds: float, baseline: dict[str, ServerCounters]
    ) -> ObservedMetrics:
        """The window since ``baseline``, summed over every Ready API pod on ``colour``.

        Each pod is read directly (not through the Service, which answers with
        whichever pod it picks). A pod that started or restarted since the
        baseline counts from zero; one that is gone or not Ready is left out.
        """
        now = self._scrape(colour)
        if not now:
            raise TemporaryError(f"no Ready API pod on {colour} answered GET /metrics", delay=2.0)
        return observed_window(baseline, now)

    def _scrape(self, colour: Colour) -> dict[str, ServerMetrics]:
        """``GET /metrics`` of every Ready API pod on ``colour``, by :func:`pod_key`."""
        dep = self.api_deployment()
        scraped: dict[str, ServerMetrics] = {}
        for pod in self.kube.items(self.kube.path("pods"), _selector(dep)):
            url = pod_url(self.urls.pod, pod, self.kube.namespace)
            if (
                url is None
                or not _ready(pod)
                or model_claim(pod, self.fullname) != self.claim(colour)
            ):
                continue
            try:
                scraped[pod_key(pod)] = self.probe.server_metrics(url)
            except TemporaryError:
                continue  # not answering (stopping, restarting): counted when it does again
        return scraped

    def pod_claims(self, deployment: str | None = None) -> list[str]:
        """The model claim of every live pod of a Deployment (status and tests)."""
        dep = self.kube.get(self.kube.path("deployments", deployment or self.api_name))
        pods = self.kube.items(self.kube.path("pods"), _selector(dep))
        return [model_claim(p, self.fullname) for p in pods if not _terminating(p)]


def _target_annotations(prefix: str, target: ModelTarget | None) -> dict[str, str]:
    if target is None:
        return {}
    return {
        f"{ANN}{prefix}model-name": target.name,
        f"{ANN}{prefix}model-version": target.version,
        f"{ANN}{prefix}model-uri": target.uri,
        f"{ANN}{prefix}model-digest": target.digest,
        f"{ANN}{prefix}model-scores": json.dumps(target.scores, sort_keys=True),
    }


def _terminating(obj: Obj) -> bool:
    return bool(obj["metadata"].get("deletionTimestamp"))


def _selector(deployment: Obj) -> str:
    labels = deployment["spec"]["selector"].get("matchLabels", {})
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _ready(pod: Obj) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return ready and not _terminating(pod)


def pod_key(pod: Obj) -> str:
    """A server's identity across readings: the pod and how often its containers restarted
    (a restarted server counts from zero again, so it is a new server)."""
    statuses = pod.get("status", {}).get("containerStatuses") or []
    restarts = sum(int(c.get("restartCount") or 0) for c in statuses)
    return f"{pod['metadata']['name']}#{restarts}"


def pod_url(template: str, pod: Obj, namespace: str) -> str | None:
    """``template`` filled in for ``pod``; None before it has an IP or an ``http`` port."""
    ip = pod.get("status", {}).get("podIP")
    ports = [
        port.get("containerPort")
        for container in pod.get("spec", {}).get("containers") or []
        for port in container.get("ports") or []
        if port.get("name") == "http"
    ]
    if not ip or not ports:
        return None
    host = f"[{ip}]" if ":" in ip else ip  # IPv6
    name = pod["metadata"]["name"]
    return template.format(ip=host, port=ports[0], name=name, namespace=namespace)


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
    """JSON patch ops replacing the model claim and the pods' colour label."""
    label = "/spec/template/metadata/labels/" + _escape(COLOUR_LABEL)
    for i, volume in enumerate(_volumes(dep)):
        old = (volume.get("persistentVolumeClaim") or {}).get("claimName", "")
        if old.startswith(f"{fullname}-model-"):
            path = f"/spec/template/spec/volumes/{i}/persistentVolumeClaim/claimName"
            return [
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


def job_progress(job: Obj) -> CopyProgress:
    for cond in job.get("status", {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            return CopyProgress(state=CopyState.SUCCEEDED, fraction=1.0, message="completed")
        if cond.get("type") == "Failed":
            why = cond.get("message") or cond.get("reason") or "failed"
            return CopyProgress(
                state=CopyState.FAILED, message=f"Job {job['metadata']['name']}: {why}"
            )
    return CopyProgress(state=CopyState.RUNNING, message=f"Job {job['metadata']['name']} running")


def progress_deadline_exceeded(dep: Obj) -> bool:
    return any(
        c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
        for c in dep.get("status", {}).get("conditions") or []
    )


def render_copy_job(
    template: str, name: str, promotion: str, colour: str, claim: str, target: ModelTarget
) -> Obj:
    """The chart's Job template (``${...}`` placeholders, see the ConfigMap) filled in."""
    values = {
        "JOB_NAME": name,
        "PROMOTION": promotion,
        "COLOUR": colour,
        "CLAIM_NAME": claim,
        "MODEL_REF": target.uri,
        "MODEL_VERSION": target.version,
        "MODEL_DIGEST": target.digest,
    }
    for key, value in values.items():
        if any(c in value for c in '"\\\n'):  # the template quotes each placeholder once
            raise PromotionError(f"copy Job {key} contains a quote, backslash or newline")
    job = yaml.safe_load(Template(template).safe_substitute(values))
    if not isinstance(job, dict) or job.get("kind") != "Job":
        raise PromotionError("the copy Job template is not a Job manifest")
    return job
