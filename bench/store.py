"""Benchmark: flipserve's publish/fetch against raw boto3 transfers of the same objects.

Starts moto's S3 server as a subprocess on 127.0.0.1, writes a ~200 MB
artifact shaped like a model (one large weights file, a few medium and many
small files), then times, in the same run and alternating order:

* publish (parallel upload, manifest last) vs raw ``upload_file`` of every file,
* fetch (parallel download, sha256 of every file, manifest check, rename)
  vs raw ``download_file`` of every object.

Both sides use the same boto3 TransferConfig and the same thread count, so
the ratio is the cost of flipserve's safety (hashing, verifying, atomic
rename). Writes bench/results/store.json. Run with ``make bench-store``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from flipserve import artifact
from flipserve.settings import Settings
from flipserve.store import Store

OUT = Path(__file__).parent / "results" / "store.json"
MB = 1 << 20
SHAPE = [("model.safetensors", 120 * MB)] + [(f"shard-{i}.bin", 15 * MB) for i in range(4)]
SHAPE += [(f"small/file-{i}.json", 1 * MB) for i in range(20)]
ROUNDS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    moto = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto_server did not start")


def make_artifact(root: Path) -> None:
    for name, size in SHAPE:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    artifact.write_manifest(root)


def parallel(fn, items: list[str], workers: int) -> None:  # type: ignore[no-untyped-def]
    with ThreadPoolExecutor(workers) as pool:
        for f in [pool.submit(fn, i) for i in items]:
            f.result()


def main() -> None:
    proc, url = start_moto()
    work = Path(tempfile.mkdtemp(prefix="flipserve-bench-store-"))
    try:
        settings = Settings(
            store_uri="s3://bench/flipserve",
            s3_endpoint_url=url,
            s3_access_key_id="bench",
            s3_secret_access_key="bench",
            show_progress=False,
        )
        store = Store.open(settings)
        backend = store.backend
        client, transfer = backend.client, backend.transfer  # type: ignore[attr-defined]
        client.create_bucket(Bucket="bench")
        src = work / "src"
        make_artifact(src)
        files = [e.path for e in artifact.read_manifest(src).files]
        total = sum(e.size for e in artifact.read_manifest(src).files)
        workers = settings.transfer_concurrency
        times: dict[str, list[float]] = {
            "publish": [],
            "raw_upload": [],
            "fetch": [],
            "raw_download": [],
        }

        def raw_up(prefix: str) -> None:
            parallel(
                lambda p: client.upload_file(
                    str(src / p), "bench", f"{prefix}/{p}", Config=transfer
                ),
                [*files, artifact.MANIFEST],
                workers,
            )

        def raw_down(prefix: str, dest: Path) -> None:
            for p in files:
                (dest / p).parent.mkdir(parents=True, exist_ok=True)
            parallel(
                lambda p: client.download_file(
                    "bench", f"{prefix}/{p}", str(dest / p), Config=transfer
                ),
                [*files, artifact.MANIFEST],
                workers,
            )

        for r in range(ROUNDS):
            order = ["ours", "raw"] if r % 2 == 0 else ["raw", "ours"]
            for who in order:
                started = time.perf_counter()
                if who == "ours":
                    uri, digest = store.publish(src, "bench", f"r{r}")
                    times["publish"].append(time.perf_counter() - started)
                else:
                    raw_up(f"raw/r{r}")
                    times["raw_upload"].append(time.perf_counter() - started)
            for who in order:
                dest = work / f"{who}-{r}"
                started = time.perf_counter()
                if who == "ours":
                    store.fetch(uri, digest, dest)
                    times["fetch"].append(time.perf_counter() - started)
                else:
                    raw_down(f"raw/r{r}", dest)
                    times["raw_download"].append(time.perf_counter() - started)
                shutil.rmtree(dest)
            print(
                f"round {r}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()),
                flush=True,
            )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    best = {k: min(v) for k, v in times.items()}
    result = {
        "command": "make bench-store (nice python bench/store.py)",
        "cores": os.cpu_count(),
        "artifact_bytes": total,
        "artifact_files": len(files) + 1,
        "transfer_concurrency": workers,
        "rounds": ROUNDS,
        "seconds_best": {k: round(v, 3) for k, v in best.items()},
        "seconds_all": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "fetch_mb_per_s": round(total / MB / best["fetch"], 1),
        "raw_download_mb_per_s": round(total / MB / best["raw_download"], 1),
        "publish_mb_per_s": round(total / MB / best["publish"], 1),
        "raw_upload_mb_per_s": round(total / MB / best["raw_upload"], 1),
        "fetch_ratio_vs_raw": round(best["raw_download"] / best["fetch"], 3),
        "publish_ratio_vs_raw": round(best["raw_upload"] / best["publish"], 3),
        "note": "moto_server subprocess on loopback; 2 shared CPU cores with other jobs running",
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
