import json
from pathlib import Path

import pytest

from flipserve import artifact
from flipserve.errors import IntegrityError, ModelNotReadyError


def _make_artifact(root: Path) -> str:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha")
    (root / "sub" / "b.bin").write_bytes(b"\x00\x01" * 100)
    return artifact.write_manifest(root)


def test_manifest_digest_is_reproducible_and_lists_every_file(tmp_path: Path) -> None:
    digest = _make_artifact(tmp_path / "x")
    again = artifact.build_manifest(tmp_path / "x").digest()
    assert digest == again
    paths = [f.path for f in artifact.read_manifest(tmp_path / "x", digest).files]
    assert paths == ["a.txt", "sub/b.bin"]


def test_verify_dir_detects_a_changed_file(tmp_path: Path) -> None:
    digest = _make_artifact(tmp_path)
    artifact.verify_dir(tmp_path, digest)
    (tmp_path / "a.txt").write_text("alphA")
    with pytest.raises(IntegrityError, match=r"a\.txt: sha256"):
        artifact.verify_dir(tmp_path, digest)


def test_wrong_manifest_digest_is_refused(tmp_path: Path) -> None:
    _make_artifact(tmp_path)
    with pytest.raises(IntegrityError, match="does not match expected"):
        artifact.read_manifest(tmp_path, "0" * 64)


def test_volume_without_ready_marker_is_not_ready(tmp_path: Path) -> None:
    digest = _make_artifact(tmp_path / artifact.MODEL_SUBDIR)
    with pytest.raises(ModelNotReadyError, match="no READY marker"):
        artifact.read_ready(tmp_path)
    artifact.write_ready(tmp_path, "v1", digest)
    assert artifact.read_ready(tmp_path).version == "v1"


def test_ready_marker_for_other_content_is_not_ready(tmp_path: Path) -> None:
    _make_artifact(tmp_path / artifact.MODEL_SUBDIR)
    artifact.write_ready(tmp_path, "v1", "f" * 64)
    with pytest.raises(ModelNotReadyError, match="does not match"):
        artifact.read_ready(tmp_path)
    assert json.loads((tmp_path / artifact.READY).read_text())["version"] == "v1"
