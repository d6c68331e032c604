"""GitHub workflows: every action pinned to a commit, least privilege, make as the entry point."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / ".github" / "workflows").glob("*.yaml"))


def _load(path: Path) -> dict[Any, Any]:
    data: dict[Any, Any] = yaml.safe_load(path.read_text())
    return data


def _steps(workflow: dict[Any, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def test_the_three_workflows_exist() -> None:
    assert [p.name for p in WORKFLOWS] == ["ci.yaml", "e2e.yaml", "model-refs.yaml"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_full_commit_sha(path: Path) -> None:
    for step in _steps(_load(path)):
        if "uses" in step:
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), step["uses"]
    for line in path.read_text().splitlines():
        if re.match(r"\s*(- )?uses:", line):
            assert re.search(r"@[0-9a-f]{40} # v\d", line), f"no version comment: {line.strip()}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_default_token_is_read_only(path: Path) -> None:
    workflow = _load(path)
    assert workflow["permissions"] == {"contents": "read"}
    for name, job in workflow["jobs"].items():
        extra = {k: v for k, v in job.get("permissions", {}).items() if v == "write"}
        assert set(extra) <= {"pull-requests"}, name


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_checkouts_do_not_keep_the_token(path: Path) -> None:
    for step in _steps(_load(path)):
        if step.get("uses", "").startswith("actions/checkout@"):
            assert step["with"]["persist-credentials"] is False


def test_ci_runs_the_same_make_targets_as_people() -> None:
    runs = [s.get("run", "") for s in _steps(_load(WORKFLOWS[0]))]
    assert any(r.startswith("make test") for r in runs)
    assert "make chart-lint" in runs and "make verify-manifests" in runs


def test_the_kind_workflow_runs_the_same_pytest_flow_as_make_test() -> None:
    """One definition of the end-to-end flow: e2e.yaml runs tests/e2e, not bash of its own."""
    e2e = next(p for p in WORKFLOWS if p.name == "e2e.yaml")
    runs = "\n".join(s.get("run", "") for s in _steps(_load(e2e)))
    assert "make test-e2e" in runs
    assert "make seed" not in runs and "make publish-model" not in runs  # the old bash flow
    makefile = (e2e.parents[2] / "Makefile").read_text()
    assert "tests/e2e" in makefile.split("\ntest-e2e:")[1].split("\n\n")[0]
    assert "tests/e2e" in makefile.split("\ntest:")[1].split("\n\n")[0]
