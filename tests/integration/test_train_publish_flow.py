"""End to end through the CLI, as separate processes: evaluate -> publish -> fetch -> gate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from flipserve import artifact, refs
from flipserve.store import Store

if TYPE_CHECKING:
    from tests.integration.conftest import S3Server

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def flipserve(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flipserve", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def cli_env(s3: S3Server, prefix: str, cache: Path) -> dict[str, str]:
    settings = s3.settings(prefix)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLIPSERVE_")}
    env.update(
        FLIPSERVE_STORE_URI=settings.store_uri,
        FLIPSERVE_S3_ENDPOINT_URL=s3.endpoint_url,
        FLIPSERVE_S3_ACCESS_KEY_ID=s3.access_key,
        FLIPSERVE_S3_SECRET_ACCESS_KEY=s3.secret_key,
        FLIPSERVE_SHOW_PROGRESS="false",
        FLIPSERVE_CACHE_DIR=str(cache),
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(Path(__file__).parents[2] / "src"),
    )
    return env


def test_tiny_model_evaluate_publish_fetch_and_gate(
    tiny_model_dir: Path, s3_server: S3Server, tmp_path: Path
) -> None:
    env = cli_env(s3_server, "e2e", tmp_path / "cache")
    report, ref_path = tmp_path / "report.json", tmp_path / "model.json"

    first = flipserve(
        ["evaluate", "--candidate", str(tiny_model_dir), "--limit", "48", "--report", str(report)],
        env,
    )
    assert first.returncode == 0, first.stderr  # no production yet: anything passes
    scores = json.loads(report.read_text())["candidate"]["scores"]
    assert 0.0 <= scores["macro_f1"] <= 1.0

    pub = flipserve(
        ["publish", str(tiny_model_dir), "--scores", str(report), "--ref", str(ref_path)], env
    )
    assert pub.returncode == 0, pub.stderr
    ref = refs.load(ref_path, refs.ModelRef)
    assert ref.uri.startswith(f"s3://{s3_server.bucket}/e2e/artifacts/sentiment/")
    assert ref.digest == artifact.read_manifest(tiny_model_dir).digest()
    assert ref.scores == scores

    dest = tmp_path / "fetched"
    got = flipserve(["fetch", str(ref_path), str(dest)], env)
    assert got.returncode == 0, got.stderr
    artifact.verify_dir(dest, ref.digest)

    # Production now scores perfectly: the same candidate must fail the gate.
    store = Store.open(s3_server.settings("e2e"))
    store.write_production(ref.model_copy(update={"scores": {"macro_f1": 1.0}}), None)
    gated = flipserve(["evaluate", "--candidate", str(ref_path), "--limit", "48"], env)
    assert gated.returncode == 1
    assert "does not beat production" in gated.stdout
    recorded = store.read_scores(ref.name, ref.version)
    assert [r.note for r in recorded.records] == ["publish", "evaluate"]


def test_fetch_of_a_ref_with_a_wrong_digest_is_one_error_line(
    s3_server: S3Server, tmp_path: Path
) -> None:
    env = cli_env(s3_server, "bad-ref", tmp_path / "cache")
    src = tmp_path / "a"
    src.mkdir()
    (src / "x.txt").write_text("x")
    uri, _ = Store.open(s3_server.settings("bad-ref")).publish(src, "m", "v1")
    data = json.loads((Path(__file__).parents[2] / "model_refs" / "model.json").read_text())
    data.update(uri=uri, digest="0" * 64)
    (tmp_path / "ref.json").write_text(json.dumps(data))
    out = flipserve(["fetch", str(tmp_path / "ref.json"), str(tmp_path / "dest")], env)
    assert out.returncode != 0
    assert out.stderr.strip().count("\n") == 0 and "does not match the ref" in out.stderr
    assert not (tmp_path / "dest").exists()
