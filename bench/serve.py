"""Serving throughput and latency: flipserve vs raw forward passes, a naive server and MLServer.

One run, one model directory, one load generator (a closed-loop asyncio +
aiohttp client sending one tweet per request), concurrency 1, 8, 32 and 64,
the same torch thread count for every contender, all on this machine's cores:

- raw: batched forward passes in-process, no HTTP (the physical limit), in two
  policies: texts in arrival order at batch size min(concurrency,
  max_batch_size), and grouped as flipserve's batcher does (up to four
  batches' worth sorted by length, then cut into batches); the ratio is taken
  against the faster of the two;
- flipserve: ``python -m flipserve serve`` on the volume;
- naive: bench/naive_server.py (FastAPI, one forward pass per request);
- mlserver: MLServer 1.7.1 + its Hugging Face runtime in its own virtualenv
  ($FLIPSERVE_CACHE/mlserver/venv), adaptive batching on, ``array_inputs``
  (its best stock configuration; see shared PEERS notes);
- echo: bench/echo_server.py, no model: the load generator's own ceiling.

These shared machines drift by tens of percent from one minute to the next,
so all servers are started once and the contenders are measured in
interleaved rounds (the order rotates every round); each figure is the median
over rounds. The c=1 overhead is measured in interleaved pairs (one raw
batch-1 forward in-process, then one request to flipserve, repeated), so both
halves of each pair see the same machine.

Writes bench/results/serve.json. ``python bench/serve.py --rounds 3 --duration 5``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from tests.integration.server_support import (  # noqa: E402
    build_artifact,
    free_port,
    make_volume,
    tweets,
)

CONCURRENCY = (1, 8, 32, 64)
CACHE = Path(os.environ.get("FLIPSERVE_CACHE", Path.home() / ".cache" / "flipserve"))
MLSERVER_VENV = CACHE / "mlserver" / "venv"
# Every contender (raw in this process included) runs under the policy
# flipserve's server sets by default, so the comparison is about serving, not
# about OpenMP: with spinning threads, whoever shares the cores with a busy
# neighbour collapses (batch-1 forwards fell 8x on a loaded machine).
OMP_WAIT_POLICY = os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
GROUPS_PER_COLLECT = 4  # flipserve.server.batching._GROUPS_PER_COLLECT
WARM_REQUESTS = 5


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def summary(latencies: list[float], items: int, seconds: float, errors: int) -> dict[str, Any]:
    p50 = round(1000 * percentile(latencies, 0.5), 3) if latencies else None
    p99 = round(1000 * percentile(latencies, 0.99), 3) if latencies else None
    return {
        "throughput_rps": round(items / seconds, 2),
        "p50_ms": p50,
        "p99_ms": p99,
        "requests": items,
        "errors": errors,
    }


# --- load generator --------------------------------------------------------------
#
# aiohttp, not httpx: against bench/echo_server.py at c=64 httpx's AsyncClient
# tops out near 90 requests/s on this machine (its connection pool), which is
# the raw model's own throughput, so it measured itself. aiohttp does
# thousands (the echo row of the results).


async def _load(
    url: str, body: Callable[[str], Any], texts: list[str], c: int, duration: float, warmup: float
) -> dict[str, Any]:
    latencies: list[float] = []
    errors, counter = [0], [0]
    connector = aiohttp.TCPConnector(limit=c)
    timeout = aiohttp.ClientTimeout(total=60)
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        measure_from, stop_at = start + warmup, start + warmup + duration

        async def worker() -> None:
            while (now := time.perf_counter()) < stop_at:
                text = texts[counter[0] % len(texts)]
                counter[0] += 1
                try:
                    async with session.post(url, data=json.dumps(body(text)), headers=headers) as r:
                        await r.read()
                        ok = r.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                if now >= measure_from:
                    if ok:
                        latencies.append(time.perf_counter() - now)
                    else:
                        errors[0] += 1

        await asyncio.gather(*(worker() for _ in range(c)))
    return summary(latencies, len(latencies), duration, errors[0])


# --- raw in-process limit ------------------------------------------------------------


class Raw:
    """The model in this process: batched forward passes without HTTP."""

    def __init__(self, model_dir: Path, threads: int, max_batch_size: int) -> None:
        import torch

        from flipserve.modeling import TextClassifier

        torch.set_num_threads(threads)
        self.classifier = TextClassifier.load(model_dir)
        self.max_batch_size = max_batch_size
        self.offset = 0

    def point(
        self, texts: list[str], c: int, grouped: bool, duration: float, warmup: float
    ) -> dict[str, Any]:
        """Throughput at concurrency ``c``: batches of min(c, max batch), maybe length-grouped."""
        size = min(c, self.max_batch_size)
        group = min(c, size * GROUPS_PER_COLLECT) if grouped else size
        latencies: list[float] = []
        items = 0
        start = time.perf_counter()
        measure_from, stop_at = start + warmup, start + warmup + duration
        while (now := time.perf_counter()) < stop_at:
            batch = [texts[(self.offset + k) % len(texts)] for k in range(group)]
            self.offset += group
            if grouped:
                batch.sort(key=len)
            for i in range(0, group, size):
                t0 = time.perf_counter()
                self.classifier.run(batch[i : i + size])
                if now >= measure_from:
                    latencies.append(time.perf_counter() - t0)
            if now >= measure_from:
                items += group
        point = summary(latencies, items, time.perf_counter() - measure_from, 0)
        return {**point, "batch_size": size, "group": group}


def inprocess_rss_mb(model_dir: Path, threads: int) -> float:
    """RSS of a bare process that loaded the model and ran one batch."""
    code = (
        "import sys,psutil,torch; torch.set_num_threads(int(sys.argv[2]));"
        "from pathlib import Path; from flipserve.modeling import TextClassifier;"
        "c=TextClassifier.load(Path(sys.argv[1])); c.run(['warm up text']*16);"
        "print(psutil.Process().memory_info().rss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(model_dir), str(threads)],
        capture_output=True,
        text=True,
        check=True,
        env=_env(),
    )
    return int(out.stdout.strip().splitlines()[-1]) / 2**20


async def overhead_pairs(
    raw: Raw, url: str, texts: list[str], pairs: int
) -> tuple[list[float], list[float]]:
    """Alternate one raw batch-1 forward and one c=1 request to ``url``; both lists in seconds."""
    raw_s: list[float] = []
    http_s: list[float] = []
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for i in range(pairs + WARM_REQUESTS):
            text = texts[i % len(texts)]
            t0 = time.perf_counter()
            raw.classifier.run([text])
            t1 = time.perf_counter()
            async with session.post(url, data=json.dumps({"text": text}), headers=headers) as r:
                await r.read()
                r.raise_for_status()
            t2 = time.perf_counter()
            if i >= WARM_REQUESTS:
                raw_s.append(t1 - t0)
                http_s.append(t2 - t1)
    return raw_s, http_s


# --- servers ---------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_WAIT_POLICY": OMP_WAIT_POLICY,
        "PYTHONPATH": str(REPO / "src"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **extra,
    }


def tree_rss_mb(pid: int) -> float:
    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)]
    return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@dataclass
class Server:
    """A contender behind HTTP: how to start it, where it answers, how to ask it."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    ready_url: str
    url: str
    body: Callable[[str], Any]
    proc: subprocess.Popen[bytes] | None = None

    def start(self, work: Path) -> None:
        log = work / f"{self.name}.log"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=work
            )
        wait_http(self.ready_url, self.proc)
        # A first request may build lazily (MLServer's pipeline): not in any round.
        for i in range(WARM_REQUESTS):
            httpx.post(self.url, json=self.body(f"warm up {i}"), timeout=300).raise_for_status()

    def rss_mb(self) -> float:
        return tree_rss_mb(self.proc.pid) if self.proc else 0.0

    def stop(self) -> None:
        if self.proc:
            stop(self.proc)


def mlserver_dir(work: Path, model_dir: Path, args: argparse.Namespace) -> tuple[Path, int]:
    root = work / "mlserver"
    (root / "tiny").mkdir(parents=True)
    port = free_port()
    settings = {
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "host": "127.0.0.1",
    }
    (root / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": "tiny",
        "implementation": "mlserver_huggingface.HuggingFaceRuntime",
        "max_batch_size": args.max_batch_size,
        "max_batch_time": 0.005,
        "parameters": {
            "extra": {
                "task": "text-classification",
                "pretrained_model": str(model_dir),
                "pretrained_tokenizer": str(model_dir),
                "framework": "pt",
                "intra_op_threads": args.threads,
            }
        },
    }
    (root / "tiny" / "model-settings.json").write_text(json.dumps(model_settings))
    return root, port


TF_STUB = '''"""Stand-in for TensorFlow (bench/serve.py): MLServer's HF runtime imports it
unconditionally; only the PyTorch path runs, and the real one aborts the worker
("LLVM ERROR: inconsistency in registered CommandLine options") next to torch."""


class _NoOp:
    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class config:
    threading = _NoOp()
'''


def tensorflow_stub(work: Path) -> Path:
    package = work / "tfstub" / "tensorflow"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(TF_STUB)
    return package.parent


def mlserver(work: Path, model_dir: Path, args: argparse.Namespace) -> Server | str:
    """MLServer with its HF runtime, or why it cannot run here."""
    exe = MLSERVER_VENV / "bin" / "mlserver"
    if not exe.exists():
        return f"{exe} missing: MLServer's virtualenv was not set up (see shared PEERS notes)"
    root, port = mlserver_dir(work, model_dir, args)
    url = f"http://127.0.0.1:{port}"

    def body(text: str) -> dict[str, Any]:
        tensor = {"name": "array_inputs", "shape": [1], "datatype": "BYTES", "data": [text]}
        return {"inputs": [tensor]}

    env = _env(PYTHONPATH=str(tensorflow_stub(work)), USE_TF="0", USE_TORCH="1")
    return Server(
        "mlserver",
        [str(exe), "start", str(root)],
        env,
        f"{url}/v2/models/tiny/ready",
        f"{url}/v2/models/tiny/infer",
        body,
    )


MLSERVER_NOTE = (
    "MLServer 1.7.1 + mlserver-huggingface 1.7.1, transformers 4.41.2, adaptive batching "
    "(max_batch_size, max_batch_time 5 ms), array_inputs; TensorFlow replaced by a no-op "
    "stub (its import aborts the worker next to this torch); the runtime logs 'setting "
    "batch size to 1' (BERT pad id 0 read as missing), so grouped requests still run one "
    "forward pass each."
)


def servers(
    work: Path, volume: Path, args: argparse.Namespace
) -> tuple[list[Server], dict[str, str]]:
    threads = str(args.threads)
    text_body: Callable[[str], Any] = lambda t: {"text": t}  # noqa: E731
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    flip_env = _env(
        FLIPSERVE_HOST="127.0.0.1",
        FLIPSERVE_HTTP_PORT=str(port),
        FLIPSERVE_TORCH_THREADS=threads,
        FLIPSERVE_MAX_BATCH_SIZE=str(args.max_batch_size),
        FLIPSERVE_LOG_LEVEL="WARNING",
    )
    flip_cmd = [sys.executable, "-m", "flipserve", "serve", "--model-dir", str(volume)]
    out = [
        Server(
            "flipserve", flip_cmd, flip_env, f"{url}/v2/health/ready", f"{url}/predict", text_body
        )
    ]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    naive_cmd = [
        sys.executable,
        str(REPO / "bench" / "naive_server.py"),
        str(volume / "model"),
        str(port),
        threads,
    ]
    out.append(Server("naive", naive_cmd, _env(), f"{url}/docs", f"{url}/predict", text_body))
    skipped: dict[str, str] = {}
    if args.skip_mlserver:
        skipped["mlserver"] = "skipped (--skip-mlserver)"
    else:
        ml = mlserver(work, volume / "model", args)
        if isinstance(ml, str):
            skipped["mlserver"] = ml
        else:
            out.append(ml)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    echo_cmd = [sys.executable, str(REPO / "bench" / "echo_server.py"), str(port)]
    out.append(Server("echo", echo_cmd, _env(), f"{url}/docs", f"{url}/predict", text_body))
    return out, skipped


# --- main --------------------------------------------------------------------------------


def prepare_volume(work: Path, corpus: list[str]) -> Path:
    artifact_dir = work / "artifact"
    build_artifact(artifact_dir, corpus[:200], version="bench-1")
    make_volume(work / "volume", artifact_dir, "bench-1")
    return work / "volume"


def median_point(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each figure over rounds, plus the per-round throughputs."""
    out: dict[str, Any] = {}
    for key in ("throughput_rps", "p50_ms", "p99_ms"):
        values = [p[key] for p in points if p.get(key) is not None]
        out[key] = round(statistics.median(values), 3) if values else None
    out["requests"] = sum(p["requests"] for p in points)
    out["errors"] = sum(p["errors"] for p in points)
    out["rounds_rps"] = [p["throughput_rps"] for p in points]
    for key in ("batch_size", "group"):
        if key in points[0]:
            out[key] = points[0][key]
    return out


def measure(
    args: argparse.Namespace, raw: Raw, running: list[Server], texts: list[str]
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    names = ["raw", "raw_grouped", *(s.name for s in running)]
    by_name = {s.name: s for s in running}
    points: dict[str, dict[str, list[dict[str, Any]]]] = {n: {} for n in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for c in CONCURRENCY:
            for name in order:
                print(f"round {r + 1}/{args.rounds} c={c} {name}", flush=True)
                if name.startswith("raw"):
                    grouped = name == "raw_grouped"
                    point = raw.point(texts, c, grouped, args.duration, args.warmup)
                else:
                    s = by_name[name]
                    point = asyncio.run(_load(s.url, s.body, texts, c, args.duration, args.warmup))
                points[name].setdefault(f"c{c}", []).append(point)
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--volume", type=Path, help="a READY model volume (default: build a tiny one)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median taken)")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--pairs", type=int, default=300, help="c=1 overhead pairs")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--skip-mlserver", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serve.json")
    args = parser.parse_args()

    corpus = tweets()
    texts = corpus[5000:7000]
    work = Path(tempfile.mkdtemp(prefix="flipserve-bench-"))
    volume = args.volume or prepare_volume(work, corpus)
    load_before = os.getloadavg()
    rss_inproc = inprocess_rss_mb(volume / "model", args.threads)
    raw = Raw(volume / "model", args.threads, args.max_batch_size)

    contenders, skipped = servers(work, volume, args)
    running: list[Server] = []
    try:
        for server in contenders:
            print(f"starting {server.name} ...", flush=True)
            try:
                server.start(work)
            except (RuntimeError, TimeoutError, httpx.HTTPError) as e:
                tail = (work / f"{server.name}.log").read_text(errors="replace")[-1500:]
                skipped[server.name] = f"did not come up: {e}; log tail: {tail}"
                server.stop()
                continue
            running.append(server)
        if "flipserve" not in {s.name for s in running}:
            raise SystemExit(f"flipserve did not start: {skipped.get('flipserve')}")
        points = measure(args, raw, running, texts)
        print("c=1 overhead pairs ...", flush=True)
        flip = next(s for s in running if s.name == "flipserve")
        raw_s, http_s = asyncio.run(overhead_pairs(raw, flip.url, texts, args.pairs))
        rss = {s.name: round(s.rss_mb(), 1) for s in running}
    finally:
        for server in running:
            server.stop()

    results: dict[str, Any] = {
        name: {c: median_point(p) for c, p in by_c.items()} for name, by_c in points.items()
    }
    for name, value in rss.items():
        results[name]["rss_mb"] = value
    for name, why in skipped.items():
        results[name] = {"error": why}
    if "mlserver" in rss:
        results["mlserver"]["note"] = MLSERVER_NOTE
    pairs = {
        "pairs": len(raw_s),
        "raw_batch1_p50_ms": round(1000 * statistics.median(raw_s), 3),
        "flipserve_c1_p50_ms": round(1000 * statistics.median(http_s), 3),
        "median_of_pair_differences_ms": round(
            1000 * statistics.median(h - r for h, r in zip(http_s, raw_s, strict=True)), 3
        ),
    }
    report = headline(results, pairs, rss_inproc, rss["flipserve"])
    report.update(
        {
            "command": "python bench/serve.py " + " ".join(sys.argv[1:]),
            "cores": os.cpu_count(),
            "loadavg_1m_start_end": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
            "torch_threads": args.threads,
            "omp_wait_policy": OMP_WAIT_POLICY,
            "max_batch_size": args.max_batch_size,
            "rounds": args.rounds,
            "duration_s_per_point": args.duration,
            "note": (
                "Every figure is the median over interleaved rounds (rounds_rps lists each "
                "round). raw = in-process batched forward, no HTTP; ratio_vs_raw uses the "
                "faster of arrival-order and length-grouped batching. One tweet per request. "
                "echo = a model-less FastAPI server: the load generator's ceiling. "
                "p50_overhead_ms_c1 = p50 of flipserve requests at c=1 minus p50 of raw "
                "batch-1 forwards, measured in alternating pairs."
            ),
            "c1_overhead_pairs": pairs,
            "results": results,
        }
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "results"}, indent=1))


def _rps(results: dict[str, Any], who: str, c: int) -> float | None:
    point = results.get(who, {}).get(f"c{c}")
    return point["throughput_rps"] if point else None


GOALS = {
    "ratio_vs_raw_c64": (">=", 0.85),
    "ratio_vs_naive_c64": (">=", 2.0),
    "ratio_vs_mlserver_c64": (">=", 1.5),
    "p50_overhead_ms_c1": ("<=", 3.0),
    "rss_ratio": ("<=", 1.5),
}


def headline(
    results: dict[str, Any], pairs: dict[str, Any], rss_inproc: float, flip_rss: float
) -> dict[str, Any]:
    flip = _rps(results, "flipserve", 64)

    def ratio(base: float | None) -> float | None:
        return round(flip / base, 3) if flip and base else None

    raws = [r for r in (_rps(results, "raw", 64), _rps(results, "raw_grouped", 64)) if r]
    figures: dict[str, Any] = {
        "ratio_vs_raw_c64": ratio(max(raws) if raws else None),
        "ratio_vs_naive_c64": ratio(_rps(results, "naive", 64)),
        "ratio_vs_mlserver_c64": ratio(_rps(results, "mlserver", 64)),
        "p50_overhead_ms_c1": round(pairs["flipserve_c1_p50_ms"] - pairs["raw_batch1_p50_ms"], 3),
        "rss_ratio": round(flip_rss / rss_inproc, 3),
    }
    met = {}
    for key, (op, goal) in GOALS.items():
        value = figures[key]
        met[key] = None if value is None else (value >= goal if op == ">=" else value <= goal)
    return {
        **figures,
        "rss_inprocess_mb": round(rss_inproc, 1),
        "load_generator_ceiling_rps_c64": _rps(results, "echo", 64),
        "goals": {key: f"{op} {goal}" for key, (op, goal) in GOALS.items()},
        "goals_met": met,
    }


if __name__ == "__main__":
    main()
