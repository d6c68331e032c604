"""Spec/status data: model refs become targets, colours flip, phases know when they end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flipserve.errors import RefError
from flipserve.promotion.status import TERMINAL, Colour, ModelTarget, Phase


def test_model_target_reads_a_model_ref_file(tmp_path: Path) -> None:
    ref = tmp_path / "model.json"
    ref.write_text(
        json.dumps(
            {"uri": "file:///s/v2", "version": "v2", "digest": "c" * 64, "metrics": {"f1": 0.7}}
        )
    )
    target = ModelTarget.from_ref_file(ref)
    assert (target.version, target.digest, target.scores) == ("v2", "c" * 64, {"f1": 0.7})


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("{not json", "cannot read the model ref"),
        (json.dumps({"uri": "file:///x", "digest": "c" * 64}), "version"),
        (json.dumps({"uri": "file:///x", "version": "v", "digest": "xyz"}), "digest"),
    ],
)
def test_a_bad_model_ref_is_one_clear_error_naming_the_file(
    tmp_path: Path, body: str, match: str
) -> None:
    ref = tmp_path / "model.json"
    ref.write_text(body)
    with pytest.raises(RefError, match=match) as info:
        ModelTarget.from_ref_file(ref)
    assert str(ref) in str(info.value)


def test_colours_flip_and_terminal_phases_are_exactly_three() -> None:
    assert Colour.BLUE.other is Colour.GREEN and Colour.GREEN.other is Colour.BLUE
    assert {p for p in Phase if p.terminal} == TERMINAL
    assert {Phase.PROMOTED, Phase.FAILED, Phase.ROLLED_BACK} == TERMINAL
