"""The chart's embedded object store, run here as its pod runs it: a real SeaweedFS.

The Deployment's ``weed`` flags and the bucket hook Job's script are taken from
the rendered chart and run on loopback (only paths and ports moved), so what
users install is what these tests start: the flags bring up a working S3 store
that keeps the production record across a restart, and the bucket Job waits
for the store, creates the bucket and passes again when it is already there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flipserve.settings import Settings
from flipserve.store import Store
from tests.integration.chart_support import env_of, find, pod_spec, render
from tests.integration.seaweedfs_support import SeaweedFS, free_ports, loopback_args, server_args
from tests.integration.test_store import model_ref

pytestmark = pytest.mark.integration

ACCESS_KEY, SECRET_KEY = "flipserve-admin", "flipserve-admin-secret"


@pytest.fixture(scope="module")
def chart() -> dict[str, dict[str, object]]:
    """The store's container and the bucket Job's, as the default install renders them."""
    objs = render()
    (store,) = pod_spec(find(objs, "Deployment", "flipserve-object-store"))["containers"]
    (job,) = pod_spec(find(objs, "Job", "flipserve-object-store-bucket"))["containers"]
    return {"store": store, "job": job}


def test_the_fixtures_weed_runs_the_charts_flags(chart: dict[str, dict[str, object]]) -> None:
    """The ``seaweedfs`` fixture the store tests use is the chart's store, not a lookalike."""
    store = chart["store"]
    assert store["command"] == ["/usr/bin/weed"]
    args = store["args"]
    assert isinstance(args, list)
    data = Path("/work/data")
    ports = dict(zip(["master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc",
                      "s3", "s3.grpc"], free_ports(8), strict=True))  # fmt: skip
    assert loopback_args(args, data, ports) == server_args(data, ports)


def _record_store(weed: SeaweedFS, bucket: str) -> Store:
    settings = Settings(
        store_uri=f"s3://{bucket}/prod",
        s3_endpoint_url=weed.endpoint_url,
        s3_access_key_id=weed.access_key,
        s3_secret_access_key=weed.secret_key,
        s3_max_attempts=2,
        show_progress=False,
    )
    return Store.open(settings)


def test_the_charts_store_keeps_the_record_and_its_etag_across_a_restart(
    chart: dict[str, dict[str, object]], tmp_path: Path
) -> None:
    args = chart["store"]["args"]
    assert isinstance(args, list)
    weed = SeaweedFS(tmp_path, ACCESS_KEY, SECRET_KEY, chart_args=args).start()
    try:
        weed.create_bucket("flipserve")
        store = _record_store(weed, "flipserve")
        _, etag = store.write_production(model_ref(store.uri + "/a", "1" * 64, "v1"), None)
        weed.stop()  # SIGTERM, as the kubelet stops the pod; same volume afterwards
        weed.start()
        record, etag_after = store.read_production()
        assert record is not None and record.model.version == "v1"
        assert etag_after == etag  # a compare-and-swap read before the restart still applies
        second, _ = store.write_production(model_ref(store.uri + "/b", "2" * 64, "v2"), etag)
        assert second.generation == 2
    finally:
        weed.stop(timeout=5)


def _bucket_job(
    chart: dict[str, dict[str, object]], endpoint: str, wait_s: int
) -> subprocess.Popen[str]:
    """The hook Job's container, run here: its script, its env with this store's address."""
    job = chart["job"]
    command, args = job["command"], job["args"]
    assert command == ["python", "-c"] and isinstance(args, list)
    env = {k: str(v.get("value", "")) for k, v in env_of(job).items() if "value" in v}
    assert set(env) >= {"S3_ENDPOINT", "BUCKET", "WAIT_SECONDS", "AWS_REGION"}
    secrets = {k for k, v in env_of(job).items() if "valueFrom" in v}
    assert secrets == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    env.update(
        S3_ENDPOINT=endpoint,
        WAIT_SECONDS=str(wait_s),
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        PATH=os.environ.get("PATH", ""),
    )
    return subprocess.Popen(
        [sys.executable, "-c", args[0]],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_the_bucket_job_waits_for_the_store_then_creates_the_bucket_idempotently(
    chart: dict[str, dict[str, object]], tmp_path: Path
) -> None:
    weed = SeaweedFS(tmp_path, ACCESS_KEY, SECRET_KEY)
    # Started before the store, as the hook may be when `helm install` does not --wait.
    early = _bucket_job(chart, weed.endpoint_url, wait_s=120)
    time.sleep(3)
    assert early.poll() is None, early.communicate()[0]
    weed.start()
    try:
        out, _ = early.communicate(timeout=120)
        assert early.returncode == 0, out
        assert "store not ready" in out and "bucket flipserve: created" in out
        assert [b["Name"] for b in weed.client().list_buckets()["Buckets"]].count("flipserve") == 1
        again = _bucket_job(chart, weed.endpoint_url, wait_s=30)
        out, _ = again.communicate(timeout=60)
        assert again.returncode == 0, out
        assert out.strip() == "bucket flipserve: already there"
    finally:
        weed.stop(timeout=5)


def test_the_bucket_job_fails_naming_the_cause_when_the_store_never_comes(
    chart: dict[str, dict[str, object]],
) -> None:
    (port,) = free_ports(1)
    job = _bucket_job(chart, f"http://127.0.0.1:{port}", wait_s=3)
    out, _ = job.communicate(timeout=60)
    assert job.returncode != 0  # the Job's pod fails and is retried (backoffLimit)
    assert "bucket flipserve: store not ready, giving up: Could not connect" in out
