"""`python -m tests.controlplane up|down|env`: a local control plane for people."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.controlplane.cluster import REPO, ControlPlane, build_binaries


def _default_state_dir() -> Path:
    """Where ``up`` keeps its pid, state and log: per checkout, as the Makefile does."""
    cache = os.environ.get("FLIPSERVE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "flipserve"
    )
    checkout = hashlib.sha256(str(REPO).encode()).hexdigest()[:12]
    return Path(cache) / "controlplane" / "local" / checkout


def _exports(state: dict[str, Any]) -> str:
    lines = f'export KUBECONFIG={state["kubeconfig"]}\nexport PATH="{state["bin_dir"]}:$PATH"\n'
    if state.get("real_node"):  # the Makefile's cluster targets then act on the real node
        lines += "export FLIPSERVE_CLUSTER=local\n"
    return lines


def _serve(state_dir: Path, real_node: bool) -> int:
    """Run a cluster in this process until SIGTERM/SIGINT; ``up`` starts this detached."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    cluster = ControlPlane(build_binaries(), nodes=0 if real_node else 3, real_node=real_node)
    with cluster:
        state = {
            "pid": os.getpid(),
            "kubeconfig": str(cluster.kubeconfig),
            "bin_dir": str(cluster.bin_dir),
            "server": cluster.server,
            "root": str(cluster.root),
            "started_seconds": round(cluster.started_seconds, 2),
            "real_node": real_node,
            "containerd_socket": str(cluster.node.containerd_socket) if cluster.node else "",
        }
        partial = state_dir / "state.json.tmp"
        partial.write_text(json.dumps(state, indent=2))
        partial.rename(state_dir / "state.json")  # `up` never reads half a file
        print(f"control plane ready in {cluster.started_seconds:.1f}s at {cluster.server}")
        sys.stdout.flush()
        try:
            while not stop.wait(1):
                cluster.check_alive()
        finally:
            (state_dir / "state.json").unlink(missing_ok=True)
    return 0


def _running(state_dir: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((state_dir / "state.json").read_text())
        os.kill(state["pid"], 0)
    except (OSError, ValueError, KeyError):
        return None
    return state


def _up(state_dir: Path, timeout: float, real_node: bool) -> int:
    if state := _running(state_dir):
        print(_exports(state), end="")
        return 0
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "state.json").unlink(missing_ok=True)
    log = state_dir / "cluster.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.controlplane", "serve", "--state-dir", str(state_dir)]
            + (["--real-node"] if real_node else []),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the shell (and make) that ran `up`
        )
    (state_dir / "cluster.pid").write_text(f"{process.pid}\n")
    deadline = time.monotonic() + timeout
    while (state := _running(state_dir)) is None:
        if process.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            process.wait()
            print(
                f"control plane failed to start; {log}:\n{log.read_text()[-4000:]}", file=sys.stderr
            )
            return 1
        time.sleep(0.2)
    print(_exports(state), end="")
    return 0


def _down(state_dir: Path) -> int:
    pid_file = state_dir / "cluster.pid"
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        print("no local control plane is running", file=sys.stderr)
        return 0
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        for _ in range(1500):  # a real node drains its pods first
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)  # its children die with it (PR_SET_PDEATHSIG)
    pid_file.unlink(missing_ok=True)
    (state_dir / "state.json").unlink(missing_ok=True)
    print("local control plane stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.controlplane", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "env", "serve"])
    parser.add_argument("--state-dir", type=Path, default=_default_state_dir())
    parser.add_argument("--timeout", type=float, default=3600, help="seconds for `up` (builds)")
    parser.add_argument(
        "--real-node",
        action="store_true",
        help="a real kubelet node (containerd, kube-proxy, CoreDNS; root) instead of KWOK's",
    )
    parser.add_argument("--field", help="with `env`: print this field of the state only")
    args = parser.parse_args(argv)
    if args.command == "up":
        return _up(args.state_dir, args.timeout, args.real_node)
    if args.command == "down":
        return _down(args.state_dir)
    if args.command == "serve":
        return _serve(args.state_dir, args.real_node)
    if state := _running(args.state_dir):
        print(state[args.field] if args.field else _exports(state), end="\n" if args.field else "")
        return 0
    print("no local control plane is running; `make cluster-local` starts one", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
