"""The README's main command end to end: ``flipserve demo`` as a subprocess, nothing faked.

It trains v1, v2 and a deliberately worse v3 (``--config tiny``: the same flow
with faster fine-tunes), publishes them to a ``file://`` store, serves v1 on
blue through the local proxy, promotes v2 to green under load, sends
spam-assassin emails until the servers' drift alarm goes off, has the score
gate refuse v3, and writes the report. Several minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.server_support import REPO, spam_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DRIFT_P_VALUE = "0.001"
"""The drift threshold (gate and servers' online test) for this run: in-domain
tweets are a sample of the reference's distribution, so at the default 0.05 a
chance alarm could roll v2 back in up to one run in twenty; the emails reach
p < 1e-4 within seconds either way."""


@pytest.mark.timeout(1800)
def test_the_demo_promotes_under_load_raises_the_drift_alarm_and_refuses_the_worse_model(
    tmp_path: Path,
) -> None:
    if not (spam_dir() / "spam-2").is_dir():
        pytest.fail("spam-assassin emails missing: run `make data`", pytrace=False)
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLIPSERVE_")}
    env |= {
        "PYTHONPATH": str(REPO / "src"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "FLIPSERVE_DRIFT_P_VALUE": DRIFT_P_VALUE,
    }
    if "FLIPSERVE_CACHE" in os.environ:  # where `make data` put the emails
        env["FLIPSERVE_CACHE"] = os.environ["FLIPSERVE_CACHE"]
    done = subprocess.run(
        [sys.executable, "-m", "flipserve", "demo", "--config", "tiny", "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1700, check=False,
    )  # fmt: skip
    log = done.stdout[-6000:] + done.stderr[-3000:]

    assert done.returncode == 0, log
    assert "✘" not in done.stdout and done.stdout.count("✔") == 5, log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"] == "tiny"
    v1, v2, v3 = (summary["models"][v] for v in ("v1", "v2", "v3"))
    assert (v1["phase"], v1["from"], v1["to"]) == ("Promoted", None, "blue")
    assert (v2["phase"], v2["from"], v2["to"]) == ("Promoted", "blue", "green")
    assert v2["scores"]["macro_f1"] > v1["scores"]["macro_f1"]
    assert v2["drift_p_value"] >= float(DRIFT_P_VALUE)  # the drift gate ran on live tweets
    assert v3["phase"] == "Failed" and "score gate failed" in v3["reason"]
    assert v3["scores"]["macro_f1"] < v2["scores"]["macro_f1"]

    load = summary["load"]  # the load generator's count while v2 was promoted
    assert load["requests"] > 0 and load["failed"] == 0, load
    assert [v for _, v in load["versions"]] == ["v1", "v2"]

    assert summary["drift_detected_after_s"] is not None
    alarms = [p for p in summary["drift"] if p[2]]  # (seconds, p-value, drift, version)
    assert alarms and all(p[1] < float(DRIFT_P_VALUE) for p in alarms)
    assert {p[3] for p in alarms} == {"v2"}  # raised by the emails, on the serving v2

    report = (out / "report.md").read_text()
    assert "| v2 | Promoted (blue→green)" in report
    assert f"requests during the v2 promotion: **{load['requests']}**, failed: **0**" in report
    assert "raised the drift alarm after" in report
    for png in ("scores.png", "drift.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
