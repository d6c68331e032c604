"""The artifact store: S3 (SeaweedFS, AWS, moto) or a local directory, one interface.

Layout under the store root (``s3://bucket/prefix`` or ``file:///path``)::

    artifacts/<name>/<version>/<files...>   manifest.json written last
    scores/<name>/<version>.json            every score ever recorded for it
    production.json                         the production record (compare-and-swap)
    feedback/<time>-<id>.jsonl              labelled examples sent to the server

``publish`` uploads an artifact's files in parallel and its manifest last, with
create-only semantics, so a reader sees either no artifact or a whole one.
``fetch`` downloads in parallel into a hidden directory next to the
destination, checks the manifest against the ref's digest and every file
against the manifest, then renames the directory into place; on any failure
the hidden directory is removed. Records that several writers may update
(production, scores) are written by compare-and-swap on the object's ETag:
S3 conditional writes (``If-Match`` / ``If-None-Match``; the chart's SeaweedFS
checks and writes under a per-object lock, so racing writers are serialised),
or a lock file plus an atomic rename on the local backend. This is the only
module importing boto3.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from flipserve import artifact
from flipserve.errors import (
    ConfigError,
    ConflictError,
    IntegrityError,
    NotFoundError,
    StoreError,
)
from flipserve.refs import SHA256, DatasetRef, ModelRef
from flipserve.settings import Settings

PRODUCTION = "production.json"


class MissingRootError(NotFoundError):
    """The store itself (bucket or directory) is missing, not just one object."""


M = TypeVar("M", bound=BaseModel)
Advance = Callable[[int], None]


class Backend(ABC):
    """Bytes under keys, relative to a root URI."""

    uri: str

    @abstractmethod
    def child(self, prefix: str) -> Backend:
        """The same store rooted at ``prefix`` below this root."""

    @abstractmethod
    def get(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and ETag; NotFoundError if absent."""

    @abstractmethod
    def put(self, key: str, data: bytes, *, match: str | None = None, create: bool = False) -> str:
        """Write an object, return its ETag. ``match``: only if the current ETag is this;
        ``create``: only if absent. A lost condition raises ConflictError."""

    @abstractmethod
    def upload(self, key: str, path: Path, advance: Advance) -> None: ...

    @abstractmethod
    def download(self, key: str, path: Path, advance: Advance) -> None: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix``, relative to the root."""

    def exists(self, key: str) -> bool:
        try:
            self.get(key)
        except NotFoundError:
            return False
        return True


def _safe_key(key: str) -> str:
    p = PurePosixPath(key)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise IntegrityError(f"unsafe path in the store: {key!r}")
    return p.as_posix()


# --- file:// -----------------------------------------------------------------


class FileBackend(Backend):
    """A directory on a local (or shared) filesystem."""

    LOCK_WAIT_S = 5.0
    STALE_LOCK_S = 60.0

    def __init__(self, root: Path, uri: str | None = None) -> None:
        self.root = root.resolve()
        # Keep a relative URI (file://./store) relative: refs that name it stay portable.
        self.uri = (uri or self.root.as_uri()).rstrip("/")

    def child(self, prefix: str) -> FileBackend:
        key = _safe_key(prefix)
        return FileBackend(self.root / key, f"{self.uri}/{key}")

    def _path(self, key: str) -> Path:
        return self.root / _safe_key(key)

    def get(self, key: str) -> tuple[bytes, str]:
        try:
            data = self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError) as e:
            raise NotFoundError(f"{self.uri}/{key}: not found") from e
        return data, artifact.sha256_bytes(data)

    def put(self, key: str, data: bytes, *, match: str | None = None, create: bool = False) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if match is None and not create:
            artifact.atomic_write(path, data)
            return artifact.sha256_bytes(data)
        with self._locked(path):
            current = artifact.sha256_bytes(path.read_bytes()) if path.exists() else None
            if create and current is not None:
                raise ConflictError(f"{self.uri}/{key}: already exists")
            if match is not None and current != match:
                raise ConflictError(f"{self.uri}/{key}: changed by another writer")
            artifact.atomic_write(path, data)
        return artifact.sha256_bytes(data)

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        lock = path.with_name(f".{path.name}.lock")
        deadline = time.monotonic() + self.LOCK_WAIT_S
        while True:
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                self._break_stale(lock)
                if time.monotonic() > deadline:
                    raise ConflictError(f"{path}: locked by another writer ({lock})") from None
                time.sleep(0.01)
        try:
            os.close(fd)
            yield
        finally:
            lock.unlink(missing_ok=True)

    def _break_stale(self, lock: Path) -> None:
        # A writer that died holding the lock must not block the record forever.
        with contextlib.suppress(FileNotFoundError):
            if time.time() - lock.stat().st_mtime > self.STALE_LOCK_S:
                lock.unlink()

    def upload(self, key: str, path: Path, advance: Advance) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.up-{uuid.uuid4().hex[:8]}")
        _copy(path, tmp, advance)
        tmp.replace(dest)

    def download(self, key: str, path: Path, advance: Advance) -> None:
        src = self._path(key)
        if not src.is_file():
            raise NotFoundError(f"{self.uri}/{key}: not found")
        _copy(src, path, advance)

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )


def _copy(src: Path, dest: Path, advance: Advance) -> None:
    with src.open("rb") as fin, dest.open("wb") as fout:
        while chunk := fin.read(1 << 22):
            fout.write(chunk)
            advance(len(chunk))


# --- s3:// -------------------------------------------------------------------


class S3Backend(Backend):
    """A bucket and key prefix behind the S3 API (SeaweedFS, AWS, moto)."""

    def __init__(self, client: Any, bucket: str, prefix: str, transfer: Any) -> None:
        self.client, self.bucket, self.prefix = client, bucket, prefix.strip("/")
        self.transfer = transfer
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")

    @classmethod
    def from_uri(cls, uri: str, settings: Settings) -> S3Backend:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not bucket:
            raise ConfigError(f"{uri}: no bucket in the store URI")
        secret = settings.s3_secret_access_key
        key_id = settings.s3_access_key_id
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=key_id.get_secret_value() if key_id else None,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=Config(
                connect_timeout=settings.s3_connect_timeout,
                read_timeout=max(30.0, settings.s3_connect_timeout),
                retries={"max_attempts": settings.s3_max_attempts, "mode": "standard"},
                max_pool_connections=max(10, settings.transfer_concurrency * 4),
                s3={"addressing_style": "path"},
            ),
        )
        mb = 1 << 20
        transfer = TransferConfig(
            multipart_threshold=settings.multipart_threshold_mb * mb,
            multipart_chunksize=16 * mb,
            max_concurrency=4,
            use_threads=True,
        )
        return cls(client, bucket, prefix, transfer)

    def child(self, prefix: str) -> S3Backend:
        return S3Backend(self.client, self.bucket, self._key(prefix), self.transfer)

    def _key(self, key: str) -> str:
        key = _safe_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def get(self, key: str) -> tuple[bytes, str]:
        with self._errors(key):
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return resp["Body"].read(), str(resp["ETag"])

    def put(self, key: str, data: bytes, *, match: str | None = None, create: bool = False) -> str:
        kwargs: dict[str, str] = {}
        if match is not None:
            kwargs["IfMatch"] = match
        if create:
            kwargs["IfNoneMatch"] = "*"
        with self._errors(key):
            resp = self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, **kwargs
            )
            return str(resp["ETag"])

    def upload(self, key: str, path: Path, advance: Advance) -> None:
        with self._errors(key):
            self.client.upload_file(
                str(path), self.bucket, self._key(key), Callback=advance, Config=self.transfer
            )

    def download(self, key: str, path: Path, advance: Advance) -> None:
        with self._errors(key):
            self.client.download_file(
                self.bucket, self._key(key), str(path), Callback=advance, Config=self.transfer
            )

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        strip = f"{self.prefix}/" if self.prefix else ""
        with self._errors(prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix).rstrip("/") + "/"
            )
            for page in pages:
                keys.extend(o["Key"].removeprefix(strip) for o in page.get("Contents", []))
        return sorted(keys)

    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """Turn botocore's many failures into one clear flipserve error each."""
        from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        where = f"{self.uri}/{key}"
        try:
            yield
        except (S3UploadFailedError, S3TransferFailedError) as e:
            # boto3's transfer manager wraps the ClientError it got; unwrap it.
            cause = e.__cause__ or e.__context__
            if isinstance(cause, ClientError):
                raise _client_error(cause, where, self.bucket) from e
            raise StoreError(f"{where}: transfer failed: {e}") from e
        except ClientError as e:
            raise _client_error(e, where, self.bucket) from e
        except NoCredentialsError as e:
            raise StoreError(f"{where}: no S3 credentials (set FLIPSERVE_S3_ACCESS_KEY_ID)") from e
        except BotoCoreError as e:
            endpoint = self.client.meta.endpoint_url
            raise StoreError(f"{where}: cannot reach S3 at {endpoint}: {e}") from e


_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"}


def _client_error(e: Any, where: str, bucket: str) -> StoreError:
    err = e.response.get("Error", {})
    code = str(err.get("Code", ""))
    if code in {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}:
        return ConflictError(f"{where}: changed by another writer ({code})")
    if code == "NoSuchBucket":
        return MissingRootError(f"{where}: bucket '{bucket}' does not exist")
    if code in {"NoSuchKey", "404", "NotFound"}:
        return NotFoundError(f"{where}: not found")
    if code in _CREDENTIAL_CODES:
        return StoreError(f"{where}: S3 rejected the credentials ({code})")
    return StoreError(f"{where}: S3 error {code}: {err.get('Message', '')}".rstrip(": "))


def open_backend(uri: str, settings: Settings) -> Backend:
    if uri.startswith("s3://"):
        return S3Backend.from_uri(uri, settings)
    if uri.startswith("file://"):
        return FileBackend(Path(uri.removeprefix("file://")), uri)
    raise ConfigError(f"{uri}: store URI must start with s3:// or file://")


# --- records -----------------------------------------------------------------


class ScoreRecord(BaseModel):
    scores: dict[str, float]
    recorded_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    note: str = ""


class Scores(BaseModel):
    """Every score recorded for one artifact, oldest first."""

    name: str
    version: str
    digest: str
    records: list[ScoreRecord] = Field(default_factory=list)


class ProductionModel(BaseModel):
    """The model a production record names: a model ref whose dataset may be unknown.

    ``flipserve evaluate`` and a test may record a whole :class:`ModelRef`; a
    promotion knows only what its spec names (name, version, URI, digest) and
    the scores its score gate measured, which are what the next candidate must
    beat.
    """

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    kind: Literal["model"] = "model"
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    uri: str = Field(min_length=1)
    digest: str = Field(pattern=SHA256)
    task: str = "text-classification"
    labels: list[str] = Field(default_factory=list)
    dataset: DatasetRef | None = None
    scores: dict[str, float] = Field(default_factory=dict)


class ProductionRecord(BaseModel):
    """Which artifact is in production, with its scores; one per store."""

    model: ProductionModel
    generation: int = Field(ge=1)
    updated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    updated_by: str = ""


# --- the store ---------------------------------------------------------------


class Store:
    """Artifacts, scores, the production record and feedback under one root."""

    def __init__(self, backend: Backend, settings: Settings) -> None:
        self.backend = backend
        self.settings = settings

    @classmethod
    def open(cls, settings: Settings, uri: str | None = None) -> Store:
        return cls(open_backend(uri or settings.store_uri, settings), settings)

    @property
    def uri(self) -> str:
        return self.backend.uri

    def artifact_uri(self, name: str, version: str) -> str:
        return f"{self.uri}/artifacts/{name}/{version}"

    # -- publish ---------------------------------------------------------------

    def publish(self, src: Path, name: str, version: str) -> tuple[str, str]:
        """Upload the artifact in ``src``; return its URI and digest.

        Publishing the same content again is a no-op; publishing different
        content under an existing version is a ConflictError (versions are
        immutable, refs pin them by digest).
        """
        manifest = _local_manifest(src)
        digest = manifest.digest()
        target = self.backend.child(f"artifacts/{name}/{version}")
        try:
            data, _ = target.get(artifact.MANIFEST)
        except MissingRootError:
            raise
        except NotFoundError:
            pass  # not published yet: the usual case
        else:
            if artifact.sha256_bytes(data) == digest:
                return target.uri, digest
            raise ConflictError(
                f"{target.uri}: version {version} already published with another digest"
            )
        with _progress(self.settings, f"publish {name}:{version}", manifest.total_bytes) as adv:
            self._parallel(lambda e: target.upload(e.path, src / e.path, adv), manifest.files)
        # Last, and only if nobody beat us to it: this makes the artifact visible.
        target.put(artifact.MANIFEST, manifest.to_bytes(), create=True)
        return target.uri, digest

    def publish_model(self, src: Path, scores: dict[str, float]) -> ModelRef:
        """Publish a trained model artifact with its scores; return its ref."""
        meta = _metadata(src)
        name, version = str(meta["name"]), str(meta["version"])
        uri, digest = self.publish(src, name, version)
        ref = ModelRef(
            name=name,
            version=version,
            uri=uri,
            digest=digest,
            task=meta.get("task", "text-classification"),
            labels=list(meta.get("labels", [])),
            dataset=DatasetRef.model_validate(meta["dataset"]),
            scores=scores,
        )
        if scores:
            self.record_scores(ref, scores, note="publish")
        return ref

    # -- fetch -----------------------------------------------------------------

    def fetch(self, uri: str, digest: str, dest: Path) -> artifact.Manifest:
        """Download the artifact at ``uri`` into ``dest``, verified, all or nothing."""
        source = self.backend if uri == self.uri else open_backend(uri, self.settings)
        data, _ = source.get(artifact.MANIFEST)
        if artifact.sha256_bytes(data) != digest:
            raise IntegrityError(
                f"{uri}/{artifact.MANIFEST}: digest {artifact.sha256_bytes(data)[:12]} "
                f"does not match the ref's {digest[:12]}"
            )
        manifest = artifact.parse_manifest(data, f"{uri}/{artifact.MANIFEST}")
        if dest.exists() and any(dest.iterdir()):
            artifact.verify_dir(dest, digest)  # already there and whole: nothing to do
            return manifest
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.fetch-{uuid.uuid4().hex[:8]}"
        try:
            self._download_all(source, manifest, tmp)
            artifact.atomic_write(tmp / artifact.MANIFEST, data)
            if dest.exists():
                dest.rmdir()
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return manifest

    def fetch_ref(self, ref: ModelRef, dest: Path) -> artifact.Manifest:
        return self.fetch(ref.uri, ref.digest, dest)

    def _download_all(self, source: Backend, manifest: artifact.Manifest, tmp: Path) -> None:
        for entry in manifest.files:
            _safe_key(entry.path)
            (tmp / entry.path).parent.mkdir(parents=True, exist_ok=True)

        def one(entry: artifact.FileEntry) -> None:
            source.download(entry.path, tmp / entry.path, adv)
            artifact.verify_file(tmp, entry)

        with _progress(self.settings, "fetch", manifest.total_bytes) as adv:
            self._parallel(one, manifest.files)

    def _parallel(self, fn: Callable[[artifact.FileEntry], None], files: list[Any]) -> None:
        # Biggest first: the long transfers start early and the tail is short.
        order = sorted(files, key=lambda e: -e.size)
        pool = ThreadPoolExecutor(max(1, self.settings.transfer_concurrency))
        try:
            for future in [pool.submit(fn, e) for e in order]:
                future.result()
        finally:
            # On failure, drop what has not started; wait for what has, so no
            # thread writes into a directory the caller is about to remove.
            pool.shutdown(wait=True, cancel_futures=True)

    # -- scores ----------------------------------------------------------------

    def read_scores(self, name: str, version: str) -> Scores:
        data, _ = self.backend.get(f"scores/{name}/{version}.json")
        return _parse(Scores, data, f"{self.uri}/scores/{name}/{version}.json")

    def record_scores(self, ref: ModelRef, scores: dict[str, float], note: str = "") -> Scores:
        """Append a score record next to the artifact; earlier records are kept."""
        key = f"scores/{ref.name}/{ref.version}.json"
        for _ in range(5):
            try:
                data, etag = self.backend.get(key)
                current: Scores | None = _parse(Scores, data, f"{self.uri}/{key}")
            except NotFoundError:
                current, etag = None, ""
            new = current or Scores(name=ref.name, version=ref.version, digest=ref.digest)
            new.records.append(ScoreRecord(scores=scores, note=note))
            body = new.model_dump_json(indent=1).encode()
            try:
                self.backend.put(key, body, match=etag or None, create=current is None)
                return new
            except ConflictError:
                continue  # someone else appended meanwhile: re-read and append again
        raise ConflictError(f"{self.uri}/{key}: too much contention recording scores")

    # -- production record -----------------------------------------------------

    def read_production(self) -> tuple[ProductionRecord | None, str | None]:
        """The production record and its ETag, or (None, None) if there is none yet."""
        try:
            data, etag = self.backend.get(PRODUCTION)
        except NotFoundError:
            return None, None
        return _parse(ProductionRecord, data, f"{self.uri}/{PRODUCTION}"), etag

    def write_production(
        self,
        model: ModelRef | ProductionModel,
        expected_etag: str | None,
        updated_by: str = "",
    ) -> tuple[ProductionRecord, str]:
        """Compare-and-swap the production record.

        ``expected_etag`` is the ETag from ``read_production`` (None: there must
        be no record yet). If another writer changed the record since, this
        raises ConflictError and writes nothing: re-read and decide again.
        """
        previous, etag = self.read_production()
        if etag != expected_etag:
            raise ConflictError(f"{self.uri}/{PRODUCTION}: changed by another writer")
        generation = previous.generation + 1 if previous else 1
        named = ProductionModel.model_validate(model.model_dump(mode="json"))
        record = ProductionRecord(model=named, generation=generation, updated_by=updated_by)
        body = record.model_dump_json(indent=1).encode()
        new_etag = self.backend.put(
            PRODUCTION, body, match=expected_etag, create=expected_etag is None
        )
        return record, new_etag

    # -- feedback --------------------------------------------------------------

    def append_feedback(self, records: list[dict[str, Any]]) -> str:
        """Store labelled examples as a new object under ``feedback/``; return its key."""
        if not records:
            raise ConfigError("no feedback records to store")
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        key = f"{self.settings.feedback_prefix}/{stamp}-{uuid.uuid4().hex[:12]}.jsonl"
        body = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()
        self.backend.put(key, body, create=True)
        return key

    def read_feedback(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for key in self.backend.list(self.settings.feedback_prefix):
            data, _ = self.backend.get(key)
            out.extend(json.loads(line) for line in data.decode().splitlines() if line)
        return out


def _local_manifest(src: Path) -> artifact.Manifest:
    """The manifest of ``src``: checked against the files if present, else built."""
    if not src.is_dir():
        raise NotFoundError(f"{src}: artifact directory not found")
    if (src / artifact.MANIFEST).exists():
        manifest = artifact.verify_dir(src)
        listed = {e.path for e in manifest.files}
        extra = [p for p in artifact.iter_files(src) if p.relative_to(src).as_posix() not in listed]
        if extra:
            raise IntegrityError(f"{extra[0]}: not listed in {src / artifact.MANIFEST}")
        return manifest
    artifact.write_manifest(src)
    return artifact.read_manifest(src)


def _metadata(src: Path) -> dict[str, Any]:
    path = src / artifact.METADATA
    try:
        meta: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise IntegrityError(f"{path}: missing or not JSON") from e
    for field in ("name", "version", "dataset"):
        if field not in meta:
            raise IntegrityError(f"{path}: field '{field}' missing")
    return meta


def _parse(cls: type[M], data: bytes, where: str) -> M:
    try:
        return cls.model_validate_json(data)
    except ValidationError as e:
        raise IntegrityError(f"{where}: malformed: {e.errors()[0]['msg']}") from e


@contextlib.contextmanager
def _progress(settings: Settings, what: str, total: int) -> Iterator[Advance]:
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not settings.show_progress,
        transient=False,
    )
    with progress:
        task = progress.add_task(what, total=total)
        yield lambda n: progress.advance(task, n)
