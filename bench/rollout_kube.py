"""A promotion against the local control plane: wall time and the controller's API calls.

Starts the local control plane (tests/controlplane), installs the chart, runs
``flipserve controller`` with the chart's ServiceAccount, promotes a first model
(v1, to the colour mounted from the start) and then a better one (v2, the real
blue → green flip), and records for v2: wall seconds from creating the Promotion
to Promoted, seconds per phase, and how many Kubernetes API requests the
controller's own client made (counted in flipserve/kube.py; kopf's watch stream
and its finalizer patches are not in that count). The model servers the gates
call are the stub servers of the integration tests (KWOK pods serve nothing), so
this measures the controller and the cluster, not inference.

The comparison, run side by side in the same invocation: the same promotion with
the controller's default tick (``FLIPSERVE_CONTROLLER_INTERVAL_S=2``) against the
tick the tests use (0.5 s); the ratios say what the faster tick costs in API
calls and saves in wall time. ``observe_seconds`` is 2 in both.

    python -m bench.rollout_kube   # adds the "controlplane" key to bench/results/rollout.json
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

from tests.controlplane import ControlPlane, build_binaries
from tests.integration.controller_support import Harness, model, release

from flipserve.promotion import Phase

RESULTS = Path(__file__).resolve().parent / "results" / "rollout.json"
_CALLS = re.compile(r"promotion (\S+): \S+ → (\S+): .*\(api_calls=(\d+)\)")


def _calls_at(h: Harness, name: str, phase: str) -> int:
    """The controller's API call count when it logged ``name`` entering ``phase``."""
    deadline = time.monotonic() + 10  # the line follows the status patch the bench saw
    while time.monotonic() < deadline:
        for line in h.logs[-1].read_text(errors="replace").splitlines():
            m = _CALLS.search(line)
            if m and m.group(1) == name and m.group(2) == phase:
                return int(m.group(3))
        time.sleep(0.2)
    raise RuntimeError(f"no transition of {name} to {phase} in the controller log")


def _one_run(cp: ControlPlane, interval: str) -> dict[str, Any]:
    ns = cp.create_namespace(f"bench-rollout-{interval.replace('.', '-')}-{os.getpid()}")
    with (
        tempfile.TemporaryDirectory() as tmp,
        release(cp, ns, Path(tmp), FLIPSERVE_CONTROLLER_INTERVAL_S=interval) as h,
    ):
        h.promoted("v1", model("v1", 0.7))
        before = _calls_at(h, "v1", "Promoted")
        began = time.monotonic()
        status = h.promoted("v2", model("v2", 0.9))
        seconds = time.monotonic() - began
        calls = _calls_at(h, "v2", "Promoted") - before
    cp.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    entered = status["phaseTimestamps"]
    order = [p.value for p in Phase if p.value in entered]  # the machine's order
    phases = {p: round(_ts(entered[n]) - _ts(entered[p]), 2) for p, n in pairwise(order)}
    return {
        "interval_s": float(interval),
        "promotion_seconds": round(seconds, 2),
        "phase_seconds": phases,
        "api_calls": calls,
    }


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def main() -> int:
    with ControlPlane(build_binaries()) as cp:
        fast = _one_run(cp, "0.5")
        default = _one_run(cp, "2")
    result = {
        "command": "python -m bench.rollout_kube",
        "cores": os.cpu_count(),
        "what": "v1 → v2 blue/green promotion on the local control plane (KWOK pods, stub "
        "model servers), chart RBAC, observe window 2 s",
        "tick_0_5s": fast,
        "baseline_default_tick_2s": default,
        "ratio_api_calls_0_5s_vs_2s": round(fast["api_calls"] / default["api_calls"], 2),
        "ratio_seconds_0_5s_vs_2s": round(
            fast["promotion_seconds"] / default["promotion_seconds"], 2
        ),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    existing = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    existing["controlplane"] = result
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(existing, indent=2) + "\n")
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
