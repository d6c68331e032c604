import json
from pathlib import Path

import pytest

from flipserve.errors import PromotionError
from flipserve.kubeplatform import (
    ReleaseState,
    _claim_patch,
    _target_annotations,
    job_progress,
    model_claim,
    pod_key,
    pod_url,
    render_copy_job,
    rollout_complete,
)
from flipserve.promotion import Colour, CopyState, ModelTarget

TEMPLATE_CM = (
    Path(__file__).parents[2] / "charts/flipserve/templates/configmap-copy-job-template.yaml"
)
TARGET = ModelTarget(name="m", version="v2", uri="s3://b/artifacts/m/v2", digest="a" * 64)


def _deployment(claim: str = "rel-model-blue", **status: int) -> dict:
    return {
        "metadata": {"name": "rel", "generation": 2},
        "spec": {
            "replicas": 2,
            "template": {
                "metadata": {"labels": {"flipserve.dev/colour": "blue"}},
                "spec": {
                    "volumes": [
                        {"name": "tmp", "emptyDir": {}},
                        {"name": "model", "persistentVolumeClaim": {"claimName": claim}},
                    ]
                },
            },
        },
        "status": {"observedGeneration": 2} | status,
    }


def _job_template() -> str:
    """The job.yaml of the chart's ConfigMap, with the Helm expressions stubbed out."""
    text = TEMPLATE_CM.read_text().split("job.yaml: |\n", 1)[1]
    lines = [line[4:] for line in text.splitlines() if "{{" not in line]
    return "\n".join(lines)


def test_model_claim_finds_the_release_model_volume_among_others() -> None:
    assert model_claim(_deployment("rel-model-green"), "rel") == "rel-model-green"
    with pytest.raises(PromotionError, match="no volume"):
        model_claim(_deployment("other-pvc"), "rel")


def test_claim_patch_replaces_the_claim_by_index_and_relabels_the_pods() -> None:
    ops = _claim_patch(_deployment(), "rel", "rel-model-green", "green")
    assert ops == [
        {
            "op": "replace",
            "path": "/spec/template/spec/volumes/1/persistentVolumeClaim/claimName",
            "value": "rel-model-green",
        },
        {
            "op": "add",
            "path": "/spec/template/metadata/labels/flipserve.dev~1colour",
            "value": "green",
        },
    ]


@pytest.mark.parametrize(
    ("status", "done"),
    [
        ({"updatedReplicas": 2, "replicas": 2, "availableReplicas": 2}, True),
        ({"updatedReplicas": 2, "replicas": 3, "availableReplicas": 2}, False),  # old pod left
        ({"updatedReplicas": 1, "replicas": 2, "availableReplicas": 2}, False),
        ({"updatedReplicas": 2, "replicas": 2, "availableReplicas": 1}, False),
    ],
)
def test_rollout_complete_needs_every_replica_updated_and_available(
    status: dict, done: bool
) -> None:
    assert rollout_complete(_deployment(**status)) is done


def test_rollout_is_not_complete_before_the_controller_saw_the_new_generation() -> None:
    dep = _deployment(updatedReplicas=2, replicas=2, availableReplicas=2)
    dep["status"]["observedGeneration"] = 1
    assert not rollout_complete(dep)


def test_job_progress_maps_job_conditions() -> None:
    job = {"metadata": {"name": "j"}, "status": {}}
    assert job_progress(job).state is CopyState.RUNNING
    job["status"]["conditions"] = [{"type": "Complete", "status": "True"}]
    assert job_progress(job).state is CopyState.SUCCEEDED
    job["status"]["conditions"] = [{"type": "Failed", "status": "True", "message": "digest"}]
    progress = job_progress(job)
    assert progress.state is CopyState.FAILED and "digest" in progress.message


def test_render_copy_job_fills_the_charts_placeholders() -> None:
    job = render_copy_job(_job_template(), "rel-copy-p1", "p1", "green", "rel-model-green", TARGET)
    assert job["kind"] == "Job" and job["metadata"]["name"] == "rel-copy-p1"
    assert job["metadata"]["labels"]["flipserve.dev/promotion"] == "p1"
    pod = job["spec"]["template"]["spec"]
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == ["rel-model-green"]
    args = pod["containers"][0]["args"]
    assert TARGET.uri in args and TARGET.digest in args and "green" in args
    assert "${" not in json.dumps(job)


def test_render_copy_job_refuses_values_that_would_break_the_yaml() -> None:
    bad = TARGET.model_copy(update={"uri": 's3://b/"x'})
    with pytest.raises(PromotionError, match="quote"):
        render_copy_job(_job_template(), "j", "p", "blue", "c", bad)


def _release(*records: tuple[str, ModelTarget]) -> ReleaseState:
    annotations: dict[str, str] = {}
    for prefix, target in records:
        annotations |= _target_annotations(prefix, target)
    return ReleaseState(Colour.GREEN, "rel-model-green", annotations)


V1 = TARGET.model_copy(update={"version": "v1", "digest": "1" * 64})
V3 = TARGET.model_copy(update={"version": "v3", "digest": "3" * 64})


def test_a_colour_holds_what_was_last_copied_onto_it() -> None:
    """A refused candidate's copy is recorded on its colour as it starts."""
    state = _release(("", TARGET), ("previous-", V1), ("blue-", V3), ("green-", TARGET))
    assert state.held(Colour.BLUE) == V3
    assert state.held(Colour.GREEN) == TARGET


def test_a_release_recorded_before_per_colour_records_falls_back_on_what_it_served() -> None:
    state = _release(("", TARGET), ("previous-", V1))
    assert state.held(Colour.GREEN) == TARGET
    assert state.held(Colour.BLUE) == V1


def _pod(ip: str | None = "10.244.0.7", restarts: tuple[int, ...] = (0,)) -> dict:
    return {
        "metadata": {"name": "rel-6f7c-abcde"},
        "spec": {
            "containers": [{"name": "server", "ports": [{"name": "http", "containerPort": 8080}]}]
        },
        "status": {"podIP": ip, "containerStatuses": [{"restartCount": n} for n in restarts]},
    }


def test_the_observe_window_reaches_each_pod_at_its_ip_and_http_port() -> None:
    assert pod_url("http://{ip}:{port}", _pod(), "ns") == "http://10.244.0.7:8080"
    assert pod_url("http://{ip}:{port}", _pod("fd00::7"), "ns") == "http://[fd00::7]:8080"
    template = "http://127.0.0.1:9/{namespace}/{name}"
    assert pod_url(template, _pod(), "ns") == "http://127.0.0.1:9/ns/rel-6f7c-abcde"
    assert pod_url("http://{ip}:{port}", _pod(None), "ns") is None  # not scheduled yet


def test_a_restarted_pod_is_a_new_server_to_the_observe_window() -> None:
    assert pod_key(_pod()) == "rel-6f7c-abcde#0"
    assert pod_key(_pod(restarts=(1, 0))) == "rel-6f7c-abcde#1"
