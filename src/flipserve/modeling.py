"""Load a trained text classifier artifact and run it: probabilities and embeddings.

One forward pass yields both the class probabilities and a sentence
embedding (mean of the last hidden layer over real tokens), so the server's
online drift detection needs no second model. Everything runs offline from
the artifact directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from flipserve.artifact import METADATA
from flipserve.errors import ModelNotReadyError


@dataclass(frozen=True)
class Batch:
    """Results for a batch of texts, row-aligned with the input."""

    probs: npt.NDArray[np.float32]  # (n, n_labels) float32
    embeddings: npt.NDArray[np.float32]  # (n, hidden) float32
    truncated: list[bool]


class TextClassifier:
    """A sequence classifier with its tokenizer and flipserve metadata."""

    def __init__(self, model: Any, tokenizer: Any, metadata: dict[str, Any]) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.metadata = metadata
        self.labels: list[str] = list(metadata["labels"])
        self.max_length: int = int(metadata.get("max_length", 128))
        self.version: str = str(metadata.get("version", "unknown"))

    @classmethod
    def load(cls, artifact_dir: Path) -> TextClassifier:
        try:
            metadata = json.loads((artifact_dir / METADATA).read_text())
            tokenizer = AutoTokenizer.from_pretrained(  # type: ignore[no-untyped-call]
                artifact_dir, local_files_only=True
            )
            model = AutoModelForSequenceClassification.from_pretrained(
                artifact_dir, local_files_only=True
            )
        except (OSError, ValueError, KeyError) as e:
            raise ModelNotReadyError(f"{artifact_dir}: cannot load model: {e}") from e
        return cls(model, tokenizer, metadata)

    @torch.inference_mode()
    def run(self, texts: list[str]) -> Batch:
        """Tokenize (truncating to max_length), forward once, softmax and mean-pool."""
        enc = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            return_overflowing_tokens=False,
            return_length=False,
        )
        out = self.model(**enc, output_hidden_states=True)
        probs = torch.softmax(out.logits, dim=-1)
        mask = enc["attention_mask"].unsqueeze(-1).to(out.hidden_states[-1].dtype)
        pooled = (out.hidden_states[-1] * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return Batch(
            probs=probs.float().numpy(),
            embeddings=pooled.float().numpy(),
            truncated=self._truncated(enc),
        )

    def _truncated(self, enc: Any) -> list[bool]:
        """Which rows lost tokens to max_length.

        A fast tokenizer keeps what it cut in each encoding's ``overflowing``;
        a slow one does not, so a row that fills max_length counts as cut.
        """
        encodings = getattr(enc, "encodings", None)
        if encodings:
            return [bool(e.overflowing) for e in encodings]
        return [n >= self.max_length for n in enc["attention_mask"].sum(1).tolist()]

    def predict_labels(self, texts: list[str], batch_size: int = 32) -> list[str]:
        labels: list[str] = []
        for i in range(0, len(texts), batch_size):
            probs = self.run(texts[i : i + batch_size]).probs
            labels.extend(self.labels[j] for j in probs.argmax(axis=1))
        return labels

    def embed(self, texts: list[str], batch_size: int = 32) -> npt.NDArray[np.float32]:
        parts = [
            self.run(texts[i : i + batch_size]).embeddings for i in range(0, len(texts), batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
