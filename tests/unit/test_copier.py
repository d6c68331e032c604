"""The copier: verified, atomic, idempotent, and never into the active colour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flipserve import artifact, copier
from flipserve.errors import IntegrityError, ModelNotReadyError, PromotionError
from flipserve.settings import Settings
from flipserve.store import Store


def _copy(request: copier.CopyRequest) -> copier.CopyResult:
    return copier.copy(request, fetch=Store.open(Settings(show_progress=False)).fetch)


def _publish(root: Path, text: str) -> tuple[str, str]:
    """A tiny artifact directory (store layout); returns (uri, digest)."""
    (root / "tok").mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"text": text}))
    (root / "tok" / "vocab.txt").write_text(text * 1000)
    return root.as_uri(), artifact.write_manifest(root)


def _request(uri: str, digest: str, volume: Path, **kw: object) -> copier.CopyRequest:
    return copier.CopyRequest(
        uri=uri, version=kw.pop("version", "v1"), digest=digest, volume=volume, colour="green", **kw
    )  # type: ignore[arg-type]


def _files(volume: Path) -> list[str]:
    return sorted(p.relative_to(volume).as_posix() for p in volume.rglob("*") if p.is_file())


def test_copy_fills_the_volume_and_writes_ready_last(tmp_path: Path) -> None:
    uri, digest = _publish(tmp_path / "store" / "v1", "one")
    result = _copy(_request(uri, digest, tmp_path / "green"))
    marker = artifact.read_ready(tmp_path / "green")
    assert (marker.version, marker.digest) == ("v1", digest)
    assert not result.already_there and result.bytes_copied == len("one") * 1000 + 15
    assert _files(tmp_path / "green") == [
        ".copy-status.json",
        "READY",
        "model/config.json",
        "model/manifest.json",
        "model/tok/vocab.txt",
    ]
    assert copier.read_status(tmp_path / "green") is not None
    assert copier.read_status(tmp_path / "green")["state"] == "Succeeded"  # type: ignore[index]


def test_copy_is_idempotent_for_the_same_digest(tmp_path: Path) -> None:
    uri, digest = _publish(tmp_path / "store" / "v1", "one")
    volume = tmp_path / "green"
    _copy(_request(uri, digest, volume))
    before = (volume / "model" / "config.json").stat().st_mtime_ns
    again = _copy(_request(uri, digest, volume))
    assert again.already_there and again.bytes_copied == 0
    assert (volume / "model" / "config.json").stat().st_mtime_ns == before


def test_copy_refuses_the_active_colour(tmp_path: Path) -> None:
    uri, digest = _publish(tmp_path / "store" / "v1", "one")
    with pytest.raises(PromotionError, match="it is the active colour"):
        _copy(_request(uri, digest, tmp_path / "green", active_colour="green"))
    assert not (tmp_path / "green").exists()


def test_a_new_version_replaces_the_old_one_only_after_success(tmp_path: Path) -> None:
    uri1, d1 = _publish(tmp_path / "store" / "v1", "one")
    uri2, d2 = _publish(tmp_path / "store" / "v2", "two")
    volume = tmp_path / "green"
    _copy(_request(uri1, d1, volume))
    _copy(_request(uri2, d2, volume, version="v2"))
    assert artifact.read_ready(volume).version == "v2"
    assert (volume / "model" / "config.json").read_text() == json.dumps({"text": "two"})
    assert not [p for p in volume.iterdir() if p.name.startswith(".old-")]


def test_a_corrupt_file_leaves_the_previous_model_ready_and_nothing_half_written(
    tmp_path: Path,
) -> None:
    uri1, d1 = _publish(tmp_path / "store" / "v1", "one")
    uri2, d2 = _publish(tmp_path / "store" / "v2", "two")
    (tmp_path / "store" / "v2" / "tok" / "vocab.txt").write_text("tampered")
    volume = tmp_path / "green"
    _copy(_request(uri1, d1, volume))
    with pytest.raises(IntegrityError, match=r"vocab\.txt|sha256"):
        _copy(_request(uri2, d2, volume, version="v2"))
    assert artifact.read_ready(volume).version == "v1"
    assert not [p for p in volume.iterdir() if p.name.startswith(".staging-")]
    assert copier.read_status(volume)["state"] == "Failed"  # type: ignore[index]


def test_a_manifest_that_does_not_match_the_ref_digest_is_refused(tmp_path: Path) -> None:
    uri, _ = _publish(tmp_path / "store" / "v1", "one")
    volume = tmp_path / "green"
    with pytest.raises(IntegrityError, match="does not match the ref"):
        _copy(_request(uri, "0" * 64, volume))
    with pytest.raises(ModelNotReadyError):
        artifact.read_ready(volume)
    assert _files(volume) == [".copy-status.json"]


def test_leftovers_of_a_crashed_copy_are_cleaned_and_the_volume_repaired(tmp_path: Path) -> None:
    uri, digest = _publish(tmp_path / "store" / "v1", "one")
    volume = tmp_path / "green"
    (volume / ".staging-abc-1" / "half").mkdir(parents=True)
    (volume / "model").mkdir()
    (volume / "model" / "stale.bin").write_text("from a copy that died before READY")
    _copy(_request(uri, digest, volume))
    assert artifact.read_ready(volume).digest == digest
    assert not (volume / ".staging-abc-1").exists()
    assert not (volume / "model" / "stale.bin").exists()
