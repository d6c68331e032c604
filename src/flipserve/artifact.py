"""What an artifact and a model volume look like on disk: manifest, digest, READY marker.

An **artifact** is a directory of files plus ``manifest.json``, which lists
every other file's relative path, size and sha256. The artifact's **digest**
is the sha256 of the manifest's bytes; refs carry it, so one hash pins every
file.

A **model volume** (the blue or green PVC, or a local directory standing in
for one) holds the artifact under ``model/`` and a ``READY`` marker at its
root, written last by the copier with an atomic rename. A volume without
``READY``, or whose ``model/manifest.json`` does not hash to the marker's
digest, must never be served.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from flipserve.errors import IntegrityError, ModelNotReadyError

MANIFEST = "manifest.json"
READY = "READY"
MODEL_SUBDIR = "model"
METADATA = "flipserve.json"
_CHUNK = 1 << 20


class FileEntry(BaseModel):
    path: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Manifest(BaseModel):
    files: list[FileEntry]

    def to_bytes(self) -> bytes:
        """Canonical bytes: sorted paths, stable key order, so the digest is reproducible."""
        files = sorted(self.files, key=lambda f: f.path)
        body = {"files": [f.model_dump() for f in files]}
        return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()

    def digest(self) -> str:
        return sha256_bytes(self.to_bytes())

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


class ReadyMarker(BaseModel):
    version: str
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    written_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def iter_files(root: Path) -> Iterator[Path]:
    """Every regular file under ``root`` except the manifest, in a stable order."""
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.relative_to(root).as_posix() != MANIFEST:
            yield path


def build_manifest(root: Path) -> Manifest:
    entries = [
        FileEntry(path=p.relative_to(root).as_posix(), size=p.stat().st_size, sha256=sha256_file(p))
        for p in iter_files(root)
    ]
    return Manifest(files=entries)


def write_manifest(root: Path) -> str:
    """Write ``root/manifest.json`` for the files in ``root``; return the artifact digest."""
    manifest = build_manifest(root)
    atomic_write(root / MANIFEST, manifest.to_bytes())
    return manifest.digest()


def parse_manifest(data: bytes, where: str) -> Manifest:
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as e:
        raise IntegrityError(f"{where}: not a valid manifest: {e.errors()[0]['msg']}") from e


def read_manifest(root: Path, expected_digest: str | None = None) -> Manifest:
    """Read ``root/manifest.json``; with ``expected_digest``, check its hash first."""
    path = root / MANIFEST
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise IntegrityError(f"{path}: manifest missing") from e
    if expected_digest is not None and sha256_bytes(data) != expected_digest:
        actual = sha256_bytes(data)
        raise IntegrityError(
            f"{path}: digest {actual[:12]} does not match expected {expected_digest[:12]}"
        )
    return parse_manifest(data, str(path))


def verify_file(root: Path, entry: FileEntry) -> None:
    path = root / entry.path
    if not path.is_file():
        raise IntegrityError(f"{path}: listed in the manifest but missing")
    if path.stat().st_size != entry.size:
        raise IntegrityError(f"{path}: size {path.stat().st_size} != manifest {entry.size}")
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise IntegrityError(f"{path}: sha256 {actual[:12]} != manifest {entry.sha256[:12]}")


def verify_dir(root: Path, expected_digest: str | None = None) -> Manifest:
    """Check every file of the artifact in ``root`` against its manifest."""
    manifest = read_manifest(root, expected_digest)
    for entry in manifest.files:
        verify_file(root, entry)
    return manifest


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def write_ready(volume: Path, version: str, digest: str) -> ReadyMarker:
    marker = ReadyMarker(version=version, digest=digest)
    atomic_write(volume / READY, marker.model_dump_json(indent=1).encode())
    return marker


def read_ready(volume: Path) -> ReadyMarker:
    """The volume's READY marker, checked against ``model/manifest.json``.

    Raises ModelNotReadyError when the marker is missing or malformed, or
    when the manifest on the volume does not hash to the marker's digest.
    """
    path = volume / READY
    try:
        marker = ReadyMarker.model_validate_json(path.read_bytes())
    except FileNotFoundError as e:
        raise ModelNotReadyError(
            f"{path}: no READY marker; the volume is not (fully) copied"
        ) from e
    except ValidationError as e:
        raise ModelNotReadyError(f"{path}: malformed READY marker") from e
    try:
        read_manifest(volume / MODEL_SUBDIR, marker.digest)
    except IntegrityError as e:
        raise ModelNotReadyError(f"{volume}: {e}") from e
    return marker
