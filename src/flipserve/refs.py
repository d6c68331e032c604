"""Model and dataset refs: typed, validated pointers to artifacts in the store.

A **dataset ref** (``model_refs/dataset.json``) says which corpus, which
version of the cleaning and splitting, and how many rows each split holds. A
**model ref** (``model_refs/model.json``) names an artifact's URI, version and
digest (the sha256 of its ``manifest.json``), its task and labels, the dataset
ref it was trained on and the scores recorded for it. Both have a JSON Schema
(``flipserve refs schema``); a bad ref is reported as one line naming the
file and the field at fault.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flipserve.errors import RefError

SHA256 = r"^[0-9a-f]{64}$"
_ARTIFACT_SCHEMES = ("s3://", "file://")


class _Ref(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class SplitInfo(_Ref):
    """One split of a dataset: its share of the rows and how many it got."""

    fraction: float = Field(gt=0, le=1)
    rows: int = Field(ge=0)


class DatasetRef(_Ref):
    """Which rows of which corpus, cleaned and split how."""

    kind: Literal["dataset"] = "dataset"
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    source: str = Field(min_length=1, description="where the raw rows come from")
    source_sha256: str = Field(pattern=SHA256, description="sha256 of the raw source file")
    labels: list[str] = Field(min_length=2)
    salt: str = Field(description="salt of the hash that assigns a text to a split")
    splits: dict[str, SplitInfo]

    @field_validator("splits")
    @classmethod
    def _splits_cover_everything(cls, v: dict[str, SplitInfo]) -> dict[str, SplitInfo]:
        if {"train", "validation", "test"} - v.keys():
            raise ValueError("needs train, validation and test splits")
        if abs(sum(s.fraction for s in v.values()) - 1.0) > 1e-6:
            raise ValueError("split fractions must add up to 1")
        return v


class ModelRef(_Ref):
    """A trained model artifact in the store, pinned by its manifest digest."""

    kind: Literal["model"] = "model"
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    uri: str = Field(description="artifact location: s3://bucket/prefix or file:///path")
    digest: str = Field(pattern=SHA256, description="sha256 of the artifact's manifest.json")
    task: Literal["text-classification", "text2text-generation"] = "text-classification"
    labels: list[str] = Field(default_factory=list)
    dataset: DatasetRef
    scores: dict[str, float] = Field(default_factory=dict)

    @field_validator("uri")
    @classmethod
    def _uri_scheme(cls, v: str) -> str:
        if not v.startswith(_ARTIFACT_SCHEMES) or len(v.split("://", 1)[1].strip("/")) == 0:
            raise ValueError("must be s3://bucket/prefix or file:///path")
        return v.rstrip("/")


R = TypeVar("R", bound=_Ref)


def schema() -> dict[str, Any]:
    """JSON Schema of both ref kinds, as one document."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "flipserve refs",
        "oneOf": [{"$ref": "#/$defs/ModelRef"}, {"$ref": "#/$defs/DatasetRef"}],
        "$defs": {
            "ModelRef": ModelRef.model_json_schema(ref_template="#/$defs/{model}"),
            "DatasetRef": DatasetRef.model_json_schema(ref_template="#/$defs/{model}"),
            "SplitInfo": SplitInfo.model_json_schema(),
        },
    }


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "(root)"
    return f"field '{field}': {err['msg']}"


def parse(cls: type[R], data: bytes | str, where: str) -> R:
    try:
        return cls.model_validate_json(data)
    except ValidationError as e:
        raise RefError(f"{where}: {_first_error(e)}") from e


def load(path: Path, cls: type[R]) -> R:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RefError(f"{path}: cannot read: {e.strerror}") from e
    return parse(cls, data, str(path))


def load_any(path: Path) -> ModelRef | DatasetRef:
    """Load a ref of either kind, told apart by its ``kind`` field."""
    try:
        kind = json.loads(path.read_bytes()).get("kind")
    except OSError as e:
        raise RefError(f"{path}: cannot read: {e.strerror}") from e
    except (ValueError, AttributeError) as e:
        raise RefError(f"{path}: not a JSON object") from e
    if kind == "model":
        return load(path, ModelRef)
    if kind == "dataset":
        return load(path, DatasetRef)
    raise RefError(f"{path}: field 'kind': must be 'model' or 'dataset', got {kind!r}")


def save(path: Path, ref: _Ref) -> None:
    """Write ``ref`` as stable, reviewable JSON (atomic replace)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(ref.model_dump_json(indent=2) + "\n")
    tmp.replace(path)
