"""Model and dataset refs: validation, one-line errors, schema, committed refs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flipserve import refs
from flipserve.cli import main
from flipserve.errors import RefError

ROOT = Path(__file__).parents[2]
DATASET = {
    "kind": "dataset",
    "name": "d",
    "version": "1",
    "source": "test",
    "source_sha256": "0" * 64,
    "labels": ["a", "b"],
    "salt": "s",
    "splits": {
        "train": {"fraction": 0.8, "rows": 8},
        "validation": {"fraction": 0.1, "rows": 1},
        "test": {"fraction": 0.1, "rows": 1},
    },
}
MODEL = {
    "kind": "model",
    "name": "sentiment",
    "version": "v1",
    "uri": "s3://bucket/artifacts/sentiment/v1",
    "digest": "a" * 64,
    "labels": ["a", "b"],
    "dataset": DATASET,
    "scores": {"macro_f1": 0.7},
}


def test_a_valid_model_ref_parses() -> None:
    ref = refs.parse(refs.ModelRef, json.dumps(MODEL), "m.json")
    assert ref.dataset.splits["train"].rows == 8


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"digest": "abc"}, "digest"),
        ({"uri": "http://x/y"}, "uri"),
        ({"uri": "s3://"}, "uri"),
        ({"version": ""}, "version"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_a_bad_model_ref_names_the_file_and_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(RefError, match=rf"^m\.json: field '{field}'") as e:
        refs.parse(refs.ModelRef, json.dumps({**MODEL, **change}), "m.json")
    assert "\n" not in str(e.value)


def test_dataset_splits_must_add_up() -> None:
    bad = {**DATASET, "splits": {**DATASET["splits"], "test": {"fraction": 0.5, "rows": 1}}}
    with pytest.raises(RefError, match="field 'splits'"):
        refs.parse(refs.DatasetRef, json.dumps(bad), "d.json")


def test_schema_describes_both_kinds() -> None:
    schema = refs.schema()
    assert {"ModelRef", "DatasetRef"} <= schema["$defs"].keys()
    assert "digest" in schema["$defs"]["ModelRef"]["properties"]


@pytest.mark.parametrize("name", ["model.json", "dataset.json"])
def test_committed_refs_are_valid(name: str) -> None:
    refs.load_any(ROOT / "model_refs" / name)


def test_cli_validate_prints_one_error_line_and_exits_nonzero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "model.json"
    bad.write_text(json.dumps({**MODEL, "digest": "nope"}))
    assert main(["refs", "validate", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert str(bad) in err[0] and "digest" in err[0]


def test_cli_validate_accepts_good_refs(tmp_path: Path) -> None:
    good = tmp_path / "model.json"
    good.write_text(json.dumps(MODEL))
    assert main(["refs", "validate", str(good)]) == 0
