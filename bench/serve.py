"""Serving throughput and latency: flipserve vs raw forward passes, a naive server and MLServer.

One run, one model directory, one load generator (a closed-loop asyncio +
httpx client sending one tweet per request), concurrency 1, 8, 32 and 64,
the same torch thread count for every contender:

- raw: batched forward passes in-process, no HTTP (the physical limit);
  batch size min(concurrency, max_batch_size), texts in arrival order;
- flipserve: ``python -m flipserve serve`` on the volume;
- naive: bench/naive_server.py (FastAPI, one forward pass per request);
- mlserver: MLServer 1.7.1 + its Hugging Face runtime in its own virtualenv
  ($FLIPSERVE_CACHE/mlserver/venv), adaptive batching on, ``array_inputs``
  (its best stock configuration; see shared PEERS notes).

Writes bench/results/serve.json. ``python bench/serve.py --duration 5``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def summary(latencies: list[float], items: int, seconds: float, errors: int) -> dict[str, Any]:
    return {
        "throughput_rps": round(items / seconds, 2),
        "p50_ms": round(1000 * percentile(latencies, 0.5), 3),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 3),
        "requests": items,
        "errors": errors,
    }


# --- load generator --------------------------------------------------------------


async def _load(
    url: str, body: Callable[[str], Any], texts: list[str], c: int, duration: float, warmup: float
) -> dict[str, Any]:
    latencies: list[float] = []
    errors, counter = [0], [0]
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        start = time.perf_counter()
        measure_from, stop_at = start + warmup, start + warmup + duration

        async def worker() -> None:
            while (now := time.perf_counter()) < stop_at:
                text = texts[counter[0] % len(texts)]
                counter[0] += 1
                try:
                    r = await client.post(url, json=body(text))
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if now >= measure_from:
                    if ok:
                        latencies.append(time.perf_counter() - now)
                    else:
                        errors[0] += 1

        await asyncio.gather(*(worker() for _ in range(c)))
    return summary(latencies, len(latencies), duration, errors[0])


def load(
    url: str, body: Callable[[str], Any], texts: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    return {
        f"c{c}": asyncio.run(_load(url, body, texts, c, args.duration, args.warmup))
        for c in CONCURRENCY
    }


# --- raw in-process limit ------------------------------------------------------------


def raw(model_dir: Path, texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from flipserve.modeling import TextClassifier

    torch.set_num_threads(args.threads)
    classifier = TextClassifier.load(model_dir)
    results = {}
    for c in CONCURRENCY:
        size = min(c, args.max_batch_size)
        latencies, items, i = [], 0, 0
        deadline = time.perf_counter() + args.warmup
        while time.perf_counter() < deadline:  # warm up
            classifier.run(texts[i : i + size])
            i += size
        start = time.perf_counter()
        while time.perf_counter() - start < args.duration:
            batch = [texts[(i + k) % len(texts)] for k in range(size)]
            t0 = time.perf_counter()
            classifier.run(batch)
            latencies.append(time.perf_counter() - t0)
            items, i = items + size, i + size
        results[f"c{c}"] = summary(latencies, items, time.perf_counter() - start, 0)
        results[f"c{c}"]["batch_size"] = size
    return results


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


# --- servers ---------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
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


def run_server(
    cmd: list[str],
    env: dict[str, str],
    ready_url: str,
    bench: Callable[[], dict[str, Any]],
    log: Path,
) -> tuple[dict[str, Any], float]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)
        try:
            wait_http(ready_url, proc)
            results = bench()
            return results, tree_rss_mb(proc.pid)
        finally:
            stop(proc)


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


def bench_mlserver(
    work: Path, model_dir: Path, texts: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    exe = MLSERVER_VENV / "bin" / "mlserver"
    if not exe.exists():
        return {"error": f"{exe} missing: MLServer's virtualenv was not set up"}
    root, port = mlserver_dir(work, model_dir, args)
    url = f"http://127.0.0.1:{port}"

    def body(text: str) -> dict[str, Any]:
        tensor = {"name": "array_inputs", "shape": [1], "datatype": "BYTES", "data": [text]}
        return {"inputs": [tensor]}

    env = {k: v for k, v in _env().items() if k != "PYTHONPATH"}
    try:
        results, rss = run_server(
            [str(exe), "start", str(root)],
            env,
            f"{url}/v2/models/tiny/ready",
            lambda: load(f"{url}/v2/models/tiny/infer", body, texts, args),
            work / "mlserver.log",
        )
    except (RuntimeError, TimeoutError) as e:
        tail = (work / "mlserver.log").read_text(errors="replace")[-1500:]
        return {"error": f"MLServer did not come up: {e}", "log_tail": tail}
    return {**results, "rss_mb": round(rss, 1)}


# --- main --------------------------------------------------------------------------------


def prepare_volume(work: Path, corpus: list[str]) -> Path:
    artifact_dir = work / "artifact"
    build_artifact(artifact_dir, corpus[:200], version="bench-1")
    make_volume(work / "volume", artifact_dir, "bench-1")
    return work / "volume"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--volume", type=Path, help="a READY model volume (default: build a tiny one)"
    )
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--skip-mlserver", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serve.json")
    args = parser.parse_args()

    corpus = tweets()
    texts = corpus[5000:7000]
    work = Path(tempfile.mkdtemp(prefix="flipserve-bench-"))
    volume = args.volume or prepare_volume(work, corpus)
    model_dir = volume / "model"
    threads = str(args.threads)

    print("raw ...", flush=True)
    results: dict[str, Any] = {"raw": raw(model_dir, texts, args)}
    rss_inproc = inprocess_rss_mb(model_dir, args.threads)

    print("flipserve ...", flush=True)
    port = free_port()
    env = _env(
        FLIPSERVE_HOST="127.0.0.1",
        FLIPSERVE_HTTP_PORT=str(port),
        FLIPSERVE_TORCH_THREADS=threads,
        FLIPSERVE_MAX_BATCH_SIZE=str(args.max_batch_size),
    )
    url = f"http://127.0.0.1:{port}"
    flip, flip_rss = run_server(
        [sys.executable, "-m", "flipserve", "serve", "--model-dir", str(volume)],
        env,
        f"{url}/v2/health/ready",
        lambda: load(f"{url}/predict", lambda t: {"text": t}, texts, args),
        work / "flipserve.log",
    )
    results["flipserve"] = {**flip, "rss_mb": round(flip_rss, 1)}

    print("naive ...", flush=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    naive, naive_rss = run_server(
        [
            sys.executable,
            str(REPO / "bench" / "naive_server.py"),
            str(model_dir),
            str(port),
            threads,
        ],
        _env(),
        f"{url}/docs",
        lambda: load(f"{url}/predict", lambda t: {"text": t}, texts, args),
        work / "naive.log",
    )
    results["naive"] = {**naive, "rss_mb": round(naive_rss, 1)}

    if args.skip_mlserver:
        results["mlserver"] = {"error": "skipped (--skip-mlserver)"}
    else:
        print("mlserver ...", flush=True)
        results["mlserver"] = bench_mlserver(work, model_dir, texts, args)

    report = headline(results, rss_inproc, flip_rss)
    report.update(
        {
            "command": "python bench/serve.py " + " ".join(sys.argv[1:]),
            "cores": os.cpu_count(),
            "torch_threads": args.threads,
            "duration_s_per_point": args.duration,
            "note": (
                "CPU shared with other jobs on this machine; short points. raw = in-process "
                "batched forward at batch size min(concurrency, max_batch_size), no HTTP. "
                "One tweet per request."
            ),
            "results": results,
        }
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "results"}, indent=1))


def _rps(results: dict[str, Any], who: str, c: int) -> float | None:
    point = results.get(who, {}).get(f"c{c}")
    return point["throughput_rps"] if point else None


def headline(results: dict[str, Any], rss_inproc: float, flip_rss: float) -> dict[str, Any]:
    flip = _rps(results, "flipserve", 64)

    def ratio(other: str) -> float | None:
        base = _rps(results, other, 64)
        return round(flip / base, 3) if flip and base else None

    raw_c1 = results["raw"]["c1"]["p50_ms"]
    return {
        "ratio_vs_raw_c64": ratio("raw"),
        "ratio_vs_naive_c64": ratio("naive"),
        "ratio_vs_mlserver_c64": ratio("mlserver"),
        "p50_overhead_ms_c1": round(results["flipserve"]["c1"]["p50_ms"] - raw_c1, 3),
        "rss_ratio": round(flip_rss / rss_inproc, 3),
        "rss_inprocess_mb": round(rss_inproc, 1),
        "goals": {
            "ratio_vs_raw_c64": ">= 0.85",
            "ratio_vs_naive_c64": ">= 2",
            "ratio_vs_mlserver_c64": ">= 1.5",
            "p50_overhead_ms_c1": "<= 3",
            "rss_ratio": "<= 1.5",
        },
    }


if __name__ == "__main__":
    main()
