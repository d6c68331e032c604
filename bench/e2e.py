"""The cluster path on real pods: a promotion and a rollback under load, against the naive way.

    python -m bench.e2e            # the local real node (root); or FLIPSERVE_E2E_KUBECONFIG=...

flipserve side: the chart installed as tests/e2e installs it, v1 seeded, then
``flipserve promote --kube`` of v2 while 4 workers send tweets to the API Service,
then ``flipserve rollback --kube`` under the same load. The promotion's seconds are
split by the Promotion's own phase timestamps: copy (Copying → Verifying), pods ready
(Verifying → Gating: the preview pod starts and verifies its volume), gates (Gating →
Switching), switch (Switching → Observing), observe (Observing → Promoted).

Baseline, in the same run on the same cluster: what people usually do to update a
model in a cluster — a Deployment (2 replicas, the same image and readiness probe)
whose init container downloads its model from the same store at start, updated to v2
with ``kubectl set env`` (a rolling update, as ``helm upgrade`` would make), under the
same load. ``downtime_seconds`` is the time from its first failed request to its last.

Writes bench/results/e2e.json with the command and the machine's core count.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.conftest import SMALL, _cached_model
from tests.e2e.conftest import IMAGE, NAMESPACE, RELEASE, Cluster, Release, cluster_for, install

from flipserve import data
from flipserve.loadgen import LoadGenerator, LoadStats

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "e2e.json"
PHASES = [
    ("copy", "Copying", "Verifying"),
    ("pods_ready", "Verifying", "Gating"),
    ("gates", "Gating", "Switching"),
    ("switch", "Switching", "Observing"),
    ("observe", "Observing", "Promoted"),
]


def _texts() -> list[str]:
    rows = random.Random(3).sample(data.load_dataset().splits["validation"], 400)
    return [e.text for e in rows]


def _load(url: str, action: Any) -> tuple[Any, LoadStats, float]:
    load = LoadGenerator(url, _texts(), workers=4)
    with load:
        start = time.monotonic()
        outcome = action()
        seconds = time.monotonic() - start
        time.sleep(5)  # the tail of the switch: old pods draining
    return outcome, load.stats, seconds


def _stamp(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _split(status: dict[str, Any]) -> dict[str, float]:
    stamps = status.get("phaseTimestamps") or {}
    return {
        name: round(_stamp(stamps[b]) - _stamp(stamps[a]), 2)
        for name, a, b in PHASES
        if a in stamps and b in stamps
    }


def _naive_deployment(release: Release, ref: dict[str, Any]) -> dict[str, Any]:
    store_env = [
        {"name": "FLIPSERVE_STORE_URI", "value": "s3://flipserve"},
        {"name": "FLIPSERVE_S3_ENDPOINT_URL", "value": f"http://{RELEASE}-object-store:8333"},
        *(
            {"name": env, "valueFrom": {"secretKeyRef": {"name": f"{RELEASE}-store", "key": key}}}
            for env, key in (
                ("FLIPSERVE_S3_ACCESS_KEY_ID", "accessKeyId"),
                ("FLIPSERVE_S3_SECRET_ACCESS_KEY", "secretAccessKey"),
            )
        ),
    ]
    model = [
        {"name": "MODEL_URI", "value": ref["uri"]},
        {"name": "MODEL_DIGEST", "value": ref["digest"]},
        {"name": "MODEL_VERSION", "value": ref["version"]},
    ]
    mounts = [{"name": "model", "mountPath": "/mnt/models"}, {"name": "tmp", "mountPath": "/tmp"}]
    labels = {"app": "naive"}
    copy = "flipserve copy --uri $MODEL_URI --digest $MODEL_DIGEST --version $MODEL_VERSION"
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "naive"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "securityContext": {"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001},
                    "initContainers": [
                        {
                            "name": "download",
                            "image": IMAGE,
                            "command": ["sh", "-c", f"{copy} --volume /mnt/models --colour blue"],
                            "env": store_env + model,
                            "volumeMounts": mounts,
                        }
                    ],
                    "containers": [
                        {
                            "name": "server",
                            "image": IMAGE,
                            "args": ["serve"],
                            "env": [{"name": "FLIPSERVE_MODEL_NAME", "value": "flipserve"}],
                            "ports": [{"containerPort": 8080}],
                            "readinessProbe": {
                                "httpGet": {"path": "/v2/health/ready", "port": 8080},
                                "periodSeconds": 2,
                            },
                            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
                            "volumeMounts": mounts,
                        }
                    ],
                    "volumes": [{"name": "model", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def _naive(release: Release, refs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    cluster = release.cluster
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "naive"},
        "spec": {"selector": {"app": "naive"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    body = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [_naive_deployment(release, refs["v1"]), service],
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
    cluster.kubectl("rollout", "status", "deploy/naive", "--timeout=600s", timeout=620)
    svc = cluster.get("service", "naive")
    url = cluster.api_url or f"http://{svc['spec']['clusterIP']}"
    v2 = refs["v2"]

    def update() -> None:
        cluster.kubectl(
            "set", "env", "deploy/naive", "-c", "download", f"MODEL_URI={v2['uri']}",
            f"MODEL_DIGEST={v2['digest']}", f"MODEL_VERSION={v2['version']}",
        )  # fmt: skip
        cluster.kubectl("rollout", "status", "deploy/naive", "--timeout=600s", timeout=620)

    _, stats, seconds = _load(url, update)
    cluster.kubectl("delete", "deploy/naive", "svc/naive", check=False)
    return {
        "requests": stats.requests,
        "failed": stats.failed,
        "errors": dict(stats.errors),
        "downtime_seconds": round(stats.failing_seconds(), 2),
        "update_seconds": round(seconds, 1),
    }


def run(cluster: Cluster) -> dict[str, Any]:
    release = install(cluster)
    tiny, small = _cached_model("tiny", "tiny"), _cached_model(SMALL, "small")
    refs = {"v1": release.publish(tiny, "v1"), "v2": release.publish(small, "v2")}
    seed = cluster.flipserve("promote", "--kube", str(refs["v1"]))
    if seed.returncode != 0:
        raise SystemExit(f"seed failed:\n{seed.stdout}{seed.stderr}\n{release.diagnostics()}")
    url = release.api_url()
    result, stats, seconds = _load(
        url, lambda: cluster.flipserve("promote", "--kube", str(refs["v2"]))
    )
    status = release.promotions()[-1]["status"]
    if result.returncode != 0:
        raise SystemExit(
            f"promotion failed:\n{result.stdout}{result.stderr}\n{release.diagnostics()}"
        )
    back, back_stats, back_seconds = _load(url, lambda: cluster.flipserve("rollback", "--kube"))
    if back.returncode != 0:
        raise SystemExit(f"rollback failed:\n{back.stdout}{back.stderr}")
    loaded = {v: json.loads(p.read_text()) for v, p in refs.items()}
    naive = _naive(release, loaded)
    return {
        "substrate": cluster.substrate,
        "requests": stats.requests,
        "failed": stats.failed,
        "errors": dict(stats.errors),
        "promotion_seconds": round(seconds, 1),
        "promotion_phases_seconds": _split(status),
        "rollback_seconds": round(back_seconds, 1),
        "rollback_requests": back_stats.requests,
        "rollback_failed": back_stats.failed,
        "rollback_errors": dict(back_stats.errors),
        "naive": naive,
        "failed_ratio_vs_naive": (
            None if not naive["failed"] else round(stats.failed / naive["failed"], 4)
        ),
    }


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"flipserve-bench-e2e-{os.getpid()}"
    work.mkdir(parents=True)
    clusters = cluster_for(work)
    cluster = next(clusters)
    try:
        figures = run(cluster)
    finally:
        if cluster.substrate != "real-node":
            cluster.run("kubectl", "delete", "namespace", NAMESPACE, "--wait=false", check=False)
        clusters.close()  # stops the local cluster
    report = {
        "command": " ".join(["python -m bench.e2e", *sys.argv[1:]]),
        "cores": os.cpu_count(),
        "load": "4 closed-loop workers, one tweet per request, to the API Service",
        **figures,
    }
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
