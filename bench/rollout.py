"""Blue/green rollout under sustained load, local mode, against a naive stop/start switch.

    python bench/rollout.py [--min-requests 10000]

Trains (or reuses) two small demo models, serves v1 through the local
platform, keeps a closed-loop load generator running, promotes v2 (copy,
gates, switch, observe), rolls back, and keeps the load going until at least
``--min-requests`` requests were sent. Then, in the same run and with the
same models, the baseline: one server answering users directly, stopped and
replaced by a server on the other volume (what a naive deployment does).
Writes bench/results/rollout.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from flipserve import artifact  # noqa: E402
from flipserve.demo import data as demo_data  # noqa: E402
from flipserve.loadgen import LoadGenerator  # noqa: E402
from flipserve.promotion import runner  # noqa: E402
from flipserve.promotion.gates import HttpGates  # noqa: E402
from flipserve.promotion.local import (  # noqa: E402
    LocalPlatform,
    default_server_command,
    embedding_drift,
)
from flipserve.promotion.status import Colour, ModelTarget, Phase, PromotionSpec  # noqa: E402
from flipserve.settings import Settings  # noqa: E402

SERVER_ENV = {"FLIPSERVE_LOG_LEVEL": "WARNING"}


def models(work: Path) -> dict[str, ModelTarget]:
    """Two artifacts with the same (untrained-head) weights and different versions.

    The bench measures the rollout machinery, not model quality, so it does not
    train; the score gate is opened with a negative margin (both score the same).
    """
    from tests.integration.server_support import build_artifact, tweets

    root = work / "store" / "artifacts" / "bench"
    targets = {}
    for version in ("v1", "v2"):
        d = root / version
        try:
            artifact.verify_dir(d)
        except Exception:
            shutil.rmtree(d, ignore_errors=True)
            build_artifact(d, tweets()[:200], version=version)
        digest = artifact.build_manifest(d).digest()
        targets[version] = ModelTarget(name="bench", version=version, uri=d.as_uri(), digest=digest)
    return targets


def seconds(status, a: Phase, b: Phase) -> float:  # type: ignore[no-untyped-def]
    return (status.phase_times[b] - status.phase_times[a]).total_seconds()


def flipserve_rollout(args, work, targets, data, server_command) -> dict:  # type: ignore[no-untyped-def]
    platform = LocalPlatform(work / "local", server_command=server_command, server_env=SERVER_ENV)
    platform.stop_all()  # a previous run's processes and state: start fresh
    shutil.rmtree(platform.root, ignore_errors=True)
    platform = LocalPlatform(work / "local", server_command=server_command, server_env=SERVER_ENV)
    gates = HttpGates(data.heldout_texts, data.heldout_labels, embedding_drift(platform))

    def spec(v: str) -> PromotionSpec:
        return PromotionSpec(
            target=targets[v],
            observe_seconds=args.observe,
            max_p99_latency_ms=1e5,
            score_margin=-1.0,  # same weights: let the gate pass; its cost is still measured
        )

    try:
        first = runner.run_local(spec("v1"), platform, gates)
        assert first.phase is Phase.PROMOTED, first.reason
        load = LoadGenerator(platform.api_url or "", data.heldout_texts, workers=args.workers)
        load.start()
        load_started = time.monotonic()
        time.sleep(3)
        started, before = time.monotonic(), load.stats.requests
        status = runner.run_local(spec("v2"), platform, gates)
        promotion_seconds = time.monotonic() - started
        during = load.stats.requests - before
        assert status.phase is Phase.PROMOTED, status.reason
        time.sleep(2)
        _, rollback_seconds = runner.rollback_local(platform)
        deadline = time.monotonic() + args.max_load_seconds
        while load.stats.requests < args.min_requests and time.monotonic() < deadline:
            time.sleep(1)
        stats = load.stop()
    finally:
        platform.stop_all()
    copy_s = seconds(status, Phase.COPYING, Phase.VERIFYING)
    gate_s = seconds(status, Phase.GATING, Phase.SWITCHING)
    return {
        "outcome": status.phase.value,
        "reason": status.reason,
        "requests": stats.requests,
        "min_requests_met": stats.requests >= args.min_requests,
        "requests_during_promotion": during,
        "load_workers": args.workers,
        "failed": stats.failed,
        "errors": dict(stats.errors),
        "p99_ms": stats.percentile(0.99),
        "requests_per_second": stats.requests / max(time.monotonic() - load_started, 1e-9),
        "promotion_seconds": promotion_seconds,
        "copy_seconds": copy_s,
        "preview_ready_seconds": seconds(status, Phase.VERIFYING, Phase.GATING),
        "gate_seconds": gate_s,
        "switch_seconds": seconds(status, Phase.SWITCHING, Phase.OBSERVING),
        "observe_window_seconds": seconds(status, Phase.OBSERVING, Phase.PROMOTED),
        "overhead_seconds": copy_s + gate_s,
        "rollback_seconds": rollback_seconds,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


def naive_switch(args, work, data, server_command) -> dict:  # type: ignore[no-untyped-def]
    """Baseline: users hit the server directly; stop it, start the new one on the same port."""
    platform = LocalPlatform(work / "local")  # volumes still hold v1 (blue) and v2 (green)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "FLIPSERVE_HOST": "127.0.0.1", "FLIPSERVE_HTTP_PORT": str(port)}

    def start(colour: Colour) -> subprocess.Popen[bytes]:
        cmd = server_command(platform.volume(colour), port, colour)
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    old = start(Colour.BLUE)
    _wait_ready(url)
    load = LoadGenerator(url, data.heldout_texts, workers=args.workers, timeout=5).start()
    time.sleep(3)
    t0 = time.monotonic()
    old.terminate()
    old.wait()
    new = start(Colour.GREEN)
    _wait_ready(url)
    downtime = time.monotonic() - t0
    time.sleep(3)
    stats = load.stop()
    new.terminate()
    new.wait()
    return {
        "requests": stats.requests,
        "failed": stats.failed,
        "errors": dict(stats.errors),
        "downtime_seconds": downtime,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-requests", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument(
        "--max-load-seconds",
        type=float,
        default=900,
        help="stop the load after this long even below --min-requests (reported)",
    )
    parser.add_argument("--observe", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rollout.json")
    args = parser.parse_args()
    settings = Settings()
    work = settings.cache_dir / "bench-rollout"
    server_command = default_server_command
    data = demo_data.load(settings.cache_dir, seed=settings.seed)
    targets = models(work)
    ours = flipserve_rollout(args, work, targets, data, server_command)
    naive = naive_switch(args, work, data, server_command)
    result = {
        "command": "python " + " ".join(["bench/rollout.py", *sys.argv[1:]]),
        "cores": os.cpu_count(),
        "server": "flipserve",
        **ours,
        "baseline_naive_stop_start": naive,
        "failed_ratio_vs_naive": ours["failed"] / naive["failed"] if naive["failed"] else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
