"""The artifact store against real S3 servers (SeaweedFS, the chart's; moto) and a directory."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from flipserve import artifact
from flipserve.errors import ConflictError, IntegrityError, NotFoundError, StoreError
from flipserve.refs import DatasetRef, ModelRef, SplitInfo
from flipserve.settings import Settings
from flipserve.store import Store

if TYPE_CHECKING:
    from tests.integration.conftest import S3Server

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


@pytest.fixture(params=["moto", "seaweedfs", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "file":
        settings = Settings(store_uri=(tmp_path / "store").as_uri(), show_progress=False)
    else:
        server: S3Server = request.getfixturevalue(
            "s3_server" if request.param == "moto" else "seaweedfs"
        )
        settings = server.settings()
    return Store.open(settings)


def test_publish_then_fetch_gives_identical_verified_files(store: Store, tmp_path: Path) -> None:
    src = make_artifact(tmp_path / "src", big=3 << 20)
    uri, digest = store.publish(src, "m", "v1")
    dest = tmp_path / "out" / "model"
    store.fetch(uri, digest, dest)
    assert artifact.verify_dir(dest, digest).total_bytes > 3 << 20
    assert (dest / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]


def test_multipart_upload_round_trips(s3_any: S3Server, tmp_path: Path) -> None:
    settings = s3_any.settings(multipart_threshold_mb=5)
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


RACERS = 8


def _race(n: int, write: Callable[[int], None]) -> dict[int, str]:
    """Run ``write(i)`` in ``n`` threads released together; each one's outcome."""
    start = threading.Barrier(n)
    outcomes: dict[int, str] = {}

    def racer(i: int) -> None:
        start.wait()
        try:
            write(i)
            outcomes[i] = "won"
        except ConflictError as e:
            outcomes[i] = f"conflict: {e}"

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(outcomes) == n, outcomes  # no racer died of anything but a conflict
    return outcomes


def test_racing_promoters_from_one_etag_exactly_one_wins(store: Store) -> None:
    """Promoters that all read the same record write it at once: one wins, none is lost."""
    store.write_production(model_ref(store.uri + "/a", "1" * 64, "v0"), None)
    for generation in range(2, 7):
        _, etag = store.read_production()

        def promote(i: int, etag: str | None = etag) -> None:
            ref = model_ref(store.uri + "/a", "1" * 64, f"r{i}")
            store.write_production(ref, etag, updated_by=f"r{i}")

        outcomes = _race(RACERS, promote)
        (winner,) = [i for i, o in outcomes.items() if o == "won"]
        record, _ = store.read_production()
        assert record is not None
        assert (record.generation, record.updated_by, record.model.version) == (
            generation,
            f"r{winner}",
            f"r{winner}",
        )


@pytest.mark.parametrize("condition", ["if-match", "if-none-match"])
def test_racing_conditional_writes_let_exactly_one_through(store: Store, condition: str) -> None:
    """The server itself serialises them: no client-side read before the write.

    write_production reads the record first and refuses a stale ETag itself, so
    losers of a close race may never reach the server; here every racer's
    condition is judged by the store (S3 If-Match / If-None-Match, or the file
    backend's lock).
    """
    for round_ in range(10):
        key = f"race/{condition}-{round_}.json"
        base = store.backend.put(key, b"base") if condition == "if-match" else None

        def write(i: int, key: str = key, base: str | None = base) -> None:
            store.backend.put(key, f"writer {i}".encode(), match=base, create=base is None)

        outcomes = _race(RACERS, write)
        winners = [i for i, o in outcomes.items() if o == "won"]
        assert len(winners) == 1, f"round {round_}: {outcomes}"
        assert store.backend.get(key)[0] == f"writer {winners[0]}".encode()


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


def test_missing_bucket_is_one_clear_error(s3_any: S3Server, tmp_path: Path) -> None:
    settings = s3_any.settings()
    store = Store.open(settings, "s3://no-such-bucket/x")
    with pytest.raises(NotFoundError, match="bucket 'no-such-bucket' does not exist"):
        store.publish(make_artifact(tmp_path / "src"), "m", "v1")


def test_unreachable_endpoint_is_one_clear_error(s3_server: S3Server, tmp_path: Path) -> None:
    settings = s3_server.settings(
        s3_endpoint_url="http://127.0.0.1:9", s3_connect_timeout=0.5, s3_max_attempts=1
    )
    with pytest.raises(StoreError, match=r"cannot reach S3 at http://127\.0\.0\.1:9"):
        Store.open(settings).read_production()


def test_wrong_credentials_are_one_clear_error(s3_auth_server: str, tmp_path: Path) -> None:
    settings = Settings(
        store_uri="s3://any-bucket/x",
        s3_endpoint_url=s3_auth_server,
        s3_access_key_id="wrong",
        s3_secret_access_key="wrong",
        show_progress=False,
    )
    with pytest.raises(StoreError, match=r"S3 rejected the credentials \(InvalidAccessKeyId\)"):
        Store.open(settings).publish(make_artifact(tmp_path / "src"), "m", "v1")
