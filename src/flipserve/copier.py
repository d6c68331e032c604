"""The copy job: put one verified model artifact from the store onto a colour's volume.

Layout (docs/architecture.md): ``<volume>/model/...`` plus ``<volume>/READY``.
The copy never leaves a volume that looks ready but is not:

1. refuse if the volume is the active colour (users are reading it);
2. if ``READY`` already names the wanted digest, finish at once (idempotent);
3. download into ``<volume>/.staging-*`` (same filesystem, so the final
   rename is atomic), checking the manifest against the ref's digest and
   every file's sha256;
4. drop the old ``READY``, swap the staging directory in as ``model/``,
   write the new ``READY`` last by atomic rename, then delete the old model.

A crash anywhere leaves either the old ready volume or a volume without
``READY`` that the next run repairs. Its state goes to
``<volume>/.copy-status.json`` so a local runner can follow it; downloads go
through ``store.Store.fetch`` (parallel, verified, progress bars).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flipserve import artifact
from flipserve.errors import (
    FlipserveError,
    ModelNotReadyError,
    PromotionError,
)

STATUS_FILE = ".copy-status.json"
_STAGING = ".staging-"
_OLD = ".old-"

Fetch = Callable[[str, str, Path], artifact.Manifest]
"""``store.Store.fetch``: (artifact URI, digest, destination) -> manifest, verified."""


@dataclass(frozen=True)
class CopyRequest:
    uri: str
    """The artifact in the store: ``s3://bucket/prefix/artifacts/...`` or ``file:///...``."""
    version: str
    digest: str
    volume: Path
    colour: str
    active_colour: str | None = None


@dataclass(frozen=True)
class CopyResult:
    version: str
    digest: str
    bytes_copied: int
    seconds: float
    already_there: bool


def copy(request: CopyRequest, fetch: Fetch) -> CopyResult:
    """Fill ``request.volume`` with the artifact, verified; see the module docstring."""
    start = time.monotonic()
    if request.active_colour is not None and request.colour == request.active_colour:
        raise PromotionError(
            f"refusing to copy into {request.colour}: it is the active colour (users read it)"
        )
    volume = request.volume
    volume.mkdir(parents=True, exist_ok=True)
    if _holds(volume, request.digest):
        _write_status(volume, request, "Succeeded", 1.0, "already there")
        return CopyResult(request.version, request.digest, 0, 0.0, already_there=True)
    _remove_leftovers(volume)
    staging = volume / f"{_STAGING}{request.digest[:12]}-{os.getpid()}"
    _write_status(volume, request, "Running", 0.0, "")
    try:
        copied = _fetch_into(request, staging, fetch)
        _swap_in(volume, staging, request)
    except FlipserveError as e:
        shutil.rmtree(staging, ignore_errors=True)
        _write_status(volume, request, "Failed", None, str(e))
        raise
    _write_status(volume, request, "Succeeded", 1.0, f"{copied} bytes")
    return CopyResult(
        request.version, request.digest, copied, time.monotonic() - start, already_there=False
    )


def read_status(volume: Path) -> dict[str, object] | None:
    """The last status the copier wrote on ``volume`` (None if it never ran there)."""
    try:
        data: dict[str, object] = json.loads((volume / STATUS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data


def _holds(volume: Path, digest: str) -> bool:
    try:
        return artifact.read_ready(volume).digest == digest
    except ModelNotReadyError:
        return False


def _remove_leftovers(volume: Path) -> None:
    """Staging or old directories of a copy that crashed; never the served ``model/``."""
    for path in volume.iterdir():
        if path.name.startswith((_STAGING, _OLD)):
            shutil.rmtree(path, ignore_errors=True)


def _fetch_into(request: CopyRequest, staging: Path, fetch: Fetch) -> int:
    """Download and verify into ``staging`` (store.fetch checks the digest and every sha256)."""
    manifest = fetch(request.uri, request.digest, staging)
    artifact.verify_dir(staging, request.digest)  # the swap must never install anything unchecked
    return manifest.total_bytes


def _swap_in(volume: Path, staging: Path, request: CopyRequest) -> None:
    """Replace ``model/`` with the verified staging dir; READY is written last."""
    (volume / artifact.READY).unlink(missing_ok=True)
    model = volume / artifact.MODEL_SUBDIR
    old = volume / f"{_OLD}{os.getpid()}"
    if model.exists():
        model.rename(old)
    staging.rename(model)
    artifact.write_ready(volume, request.version, request.digest)
    artifact.read_ready(volume)  # the marker must check out before we delete the old model
    shutil.rmtree(old, ignore_errors=True)


def _write_status(
    volume: Path, request: CopyRequest, state: str, fraction: float | None, message: str
) -> None:
    body = {
        "state": state,
        "fraction": fraction,
        "digest": request.digest,
        "version": request.version,
        "message": message,
        "pid": os.getpid(),
    }
    artifact.atomic_write(volume / STATUS_FILE, json.dumps(body).encode())
