"""The artifact store against a real S3 API (moto server) and a local directory."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from flipserve import artifact
from flipserve.errors import ConflictError, IntegrityError, NotFoundError, StoreError
from flipserve.refs import DatasetRef, ModelRef, SplitInfo
from flipserve.settings import Settings
from flipserve.store import Store

pytestmark = pytest.mark.integration


def make_artifact(root: Path, big: int = 0) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"a": 1}\n')
    (root / "drift").mkdir()
    (root / "drift" / "reference.npy").write_bytes(bytes(range(256)) * 40)
    if big:
        (root / "model.safetensors").write_bytes(b"\x01" * big)
    artifact.write_manifest(root)
    return root


def model_ref(uri: str, digest: str, version: str = "v1", f1: float = 0.5) -> ModelRef:
    dataset = DatasetRef(
        name="d",
        version="1",
        source="test",
        source_sha256="0" * 64,
        labels=["a", "b"],
        salt="s",
        splits={
            "train": SplitInfo(fraction=0.8, rows=8),
            "validation": SplitInfo(fraction=0.1, rows=1),
            "test": SplitInfo(fraction=0.1, rows=1),
        },
    )
    return ModelRef(
        name="m", version=version, uri=uri, digest=digest, dataset=dataset, scores={"macro_f1": f1}
    )


@pytest.fixture(params=["s3", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "s3":
        settings: Settings = request.getfixturevalue("s3_settings")
    else:
        settings = Settings(store_uri=(tmp_path / "store").as_uri(), show_progress=False)
    return Store.open(settings)


def test_publish_then_fetch_gives_identical_verified_files(store: Store, tmp_path: Path) -> None:
    src = make_artifact(tmp_path / "src", big=3 << 20)
    uri, digest = store.publish(src, "m", "v1")
    dest = tmp_path / "out" / "model"
    store.fetch(uri, digest, dest)
    assert artifact.verify_dir(dest, digest).total_bytes > 3 << 20
    assert (dest / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]


def test_multipart_upload_round_trips(s3_server: object, tmp_path: Path) -> None:
    settings = s3_server.settings(multipart_threshold_mb=5)  # type: ignore[attr-defined]
    store = Store.open(settings)
    src = make_artifact(tmp_path / "src", big=(16 << 20) + 123)
    uri, digest = store.publish(src, "m", "v1")
    store.fetch(uri, digest, tmp_path / "dest")
    assert artifact.sha256_file(tmp_path / "dest" / "model.safetensors") == artifact.sha256_file(
        src / "model.safetensors"
    )


def test_manifest_is_written_last_so_a_failed_publish_is_invisible(
    store: Store, tmp_path: Path
) -> None:
    src = make_artifact(tmp_path / "src")
    (src / "config.json").unlink()  # listed in the manifest, gone on disk
    with pytest.raises(IntegrityError, match=r"config\.json"):
        store.publish(src, "m", "v1")
    assert not store.backend.exists("artifacts/m/v1/manifest.json")


def test_republishing_other_content_under_a_version_is_refused(
    store: Store, tmp_path: Path
) -> None:
    store.publish(make_artifact(tmp_path / "a"), "m", "v1")
    other = make_artifact(tmp_path / "b")
    (other / "config.json").write_text('{"a": 2}\n')
    artifact.write_manifest(other)
    with pytest.raises(ConflictError, match="another digest"):
        store.publish(other, "m", "v1")


def test_flipped_byte_in_the_store_fails_fetch_and_leaves_nothing(
    store: Store, tmp_path: Path
) -> None:
    uri, digest = store.publish(make_artifact(tmp_path / "src"), "m", "v1")
    key = "artifacts/m/v1/drift/reference.npy"
    data, _ = store.backend.get(key)
    store.backend.put(key, bytes([data[0] ^ 1]) + data[1:])
    dest_parent = tmp_path / "vol"
    dest_parent.mkdir()
    with pytest.raises(IntegrityError, match=r"reference\.npy: sha256"):
        store.fetch(uri, digest, dest_parent / "model")
    assert list(dest_parent.iterdir()) == []


def test_fetch_with_a_wrong_digest_fails_before_downloading(store: Store, tmp_path: Path) -> None:
    uri, _ = store.publish(make_artifact(tmp_path / "src"), "m", "v1")
    with pytest.raises(IntegrityError, match="does not match the ref"):
        store.fetch(uri, "f" * 64, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_fetching_a_missing_artifact_is_a_not_found_error(store: Store, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        store.fetch(f"{store.uri}/artifacts/m/nope", "0" * 64, tmp_path / "dest")


def test_production_record_compare_and_swap(store: Store) -> None:
    assert store.read_production() == (None, None)
    first, etag = store.write_production(model_ref(store.uri + "/a", "1" * 64), None)
    assert first.generation == 1
    with pytest.raises(ConflictError):
        store.write_production(model_ref(store.uri + "/b", "2" * 64), None)
    second, _ = store.write_production(model_ref(store.uri + "/b", "2" * 64, "v2"), etag)
    assert second.generation == 2
    with pytest.raises(ConflictError):
        store.write_production(model_ref(store.uri + "/c", "3" * 64, "v3"), etag)
    record, _ = store.read_production()
    assert record is not None and record.model.version == "v2"


def test_concurrent_production_writers_never_lose_an_update(store: Store) -> None:
    """Writers each try to bump the record 10 times; every success must be kept."""
    wins: list[str] = []
    conflicts: list[int] = []
    start = threading.Barrier(2)
    store.write_production(model_ref(store.uri + "/a", "1" * 64, "v0"), None)

    def writer(name: str) -> None:
        start.wait()
        for i in range(10):
            while True:
                _, etag = store.read_production()
                try:
                    store.write_production(
                        model_ref(store.uri + "/a", "1" * 64, f"{name}{i}"), etag, updated_by=name
                    )
                    wins.append(f"{name}{i}")
                    break
                except ConflictError:
                    conflicts.append(1)

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    record, _ = store.read_production()
    assert record is not None
    # Every successful write bumped the generation exactly once: none was overwritten.
    assert record.generation == 1 + len(wins) == 21
    assert record.model.version == wins[-1]


def test_scores_are_appended_never_replaced(store: Store) -> None:
    ref = model_ref(store.uri + "/a", "1" * 64)
    store.record_scores(ref, {"macro_f1": 0.5}, note="publish")
    store.record_scores(ref, {"macro_f1": 0.6}, note="evaluate")
    scores = store.read_scores("m", "v1")
    assert [r.scores["macro_f1"] for r in scores.records] == [0.5, 0.6]


def test_feedback_is_appended_as_new_objects(store: Store) -> None:
    k1 = store.append_feedback([{"text": "good", "label": "positive"}])
    k2 = store.append_feedback([{"text": "bad", "label": "negative"}])
    assert k1 != k2
    assert sorted(r["text"] for r in store.read_feedback()) == ["bad", "good"]


def test_missing_bucket_is_one_clear_error(s3_server: object, tmp_path: Path) -> None:
    settings = s3_server.settings()  # type: ignore[attr-defined]
    store = Store.open(settings, "s3://no-such-bucket/x")
    with pytest.raises(NotFoundError, match="bucket 'no-such-bucket' does not exist"):
        store.publish(make_artifact(tmp_path / "src"), "m", "v1")


def test_unreachable_endpoint_is_one_clear_error(s3_server: object, tmp_path: Path) -> None:
    settings = s3_server.settings(  # type: ignore[attr-defined]
        s3_endpoint_url="http://127.0.0.1:9", s3_connect_timeout=0.5, s3_max_attempts=1
    )
    with pytest.raises(StoreError, match=r"cannot reach S3 at http://127\.0\.0\.1:9"):
        Store.open(settings).read_production()
