"""How fast the local control plane starts, and what building it costs.

Starts the control plane (tests/controlplane) several times with cached binaries and
records, per start, the seconds to each step. ``warm_start_seconds`` is the median time
from "start" to "every KWOK node Ready and schedulable" (goal: <= 20 s). The baseline,
measured side by side in the same starts, is what envtest runs: etcd + kube-apiserver
until /readyz; the ratio says what the controllers, scheduler and KWOK add on top.
``cold_build_seconds`` is what hack/controlplane/build.sh recorded when it built the
binaries now in the cache (it writes ``build-seconds`` next to ``bin/``).

    python -m bench.controlplane [--runs 3]   # writes bench/results/controlplane.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from tests.controlplane import ControlPlane, build_binaries

RESULTS = Path(__file__).resolve().parent / "results" / "controlplane.json"
GOAL_SECONDS = 20.0


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _cold_build_seconds(bin_dir: Path) -> float | None:
    recorded = bin_dir.parent / "build-seconds"
    return float(recorded.read_text()) if recorded.exists() else None


def measure(runs: int) -> dict[str, object]:
    bin_dir = build_binaries()
    load_before = os.getloadavg()[0]
    starts = []
    for _ in range(runs):
        cluster = ControlPlane(bin_dir).start()
        starts.append(dict(cluster.timings))
        cluster.stop()
    warm = statistics.median(s["nodes_ready"] for s in starts)
    baseline = statistics.median(s["apiserver_ready"] for s in starts)
    return {
        "command": "python -m bench.controlplane " + " ".join(sys.argv[1:]),
        "cores": os.cpu_count(),
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "runs": runs,
        "warm_start_seconds": warm,
        "warm_start_goal_seconds": GOAL_SECONDS,
        "usable_seconds": statistics.median(s["usable"] for s in starts),
        "baseline": "envtest-style etcd + kube-apiserver to /readyz, same starts",
        "baseline_seconds": baseline,
        "ratio_to_baseline": round(warm / baseline, 2),
        "cold_build_seconds": _cold_build_seconds(bin_dir),
        "binaries_bytes": _size(bin_dir),
        "per_run_step_seconds": starts,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    result = measure(parser.parse_args().runs)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if float(result["warm_start_seconds"]) <= GOAL_SECONDS else 1  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
