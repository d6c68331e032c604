"""The served model: a ``kserve.Model`` that loads from a READY volume and batches.

It stays unready (readiness probes fail, predictions answer 503) until the
volume's ``READY`` marker exists and ``model/manifest.json`` hashes to its
digest; ``recheck`` runs periodically, so a server started before the copier
finished comes up by itself, and one whose marker disappears goes unready.
KServe's v1 and v2 handlers call ``predict``; flipserve's own routes
(server/app.py) call ``classify``. Both go through the same batcher.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import kserve
import numpy as np
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from flipserve import artifact
from flipserve.drift import DriftResult, make_detector
from flipserve.errors import InvalidInputError, ModelNotReadyError, PayloadTooLargeError
from flipserve.modeling import Batch, TextClassifier
from flipserve.server import telemetry
from flipserve.server.batching import Batcher
from flipserve.server.monitor import DriftMonitor
from flipserve.settings import Settings

log = logging.getLogger(__name__)

REFERENCE = "drift/reference.npy"


# Where ``POST /feedback`` puts labelled examples (the store, wired in by the CLI).
FeedbackSink = Callable[[list[dict[str, str]]], object]


class FlipserveModel(kserve.Model):  # type: ignore[misc]
    """A text classifier served from a blue/green model volume."""

    def __init__(
        self,
        settings: Settings,
        volume: Path,
        feedback_sink: FeedbackSink | None = None,
        loader: Callable[[Path], TextClassifier] = TextClassifier.load,
    ) -> None:
        super().__init__(settings.model_name)
        self.settings = settings
        self.volume = volume
        self.colour = settings.colour
        self.feedback_sink = feedback_sink
        self._loader = loader
        self.classifier: TextClassifier | None = None
        self.marker: artifact.ReadyMarker | None = None
        self.not_ready_reason = "not loaded yet"
        self.traffic: deque[str] = deque(maxlen=max(1, settings.traffic_sample_size))
        self.monitor = DriftMonitor(
            settings.drift_window,
            settings.drift_min_samples,
            settings.drift_interval_s,
            settings.drift_p_value,
        )
        self.batcher = Batcher(
            self._run,
            settings.max_batch_size,
            settings.max_batch_wait_ms / 1000,
            settings.length_grouping,
            on_batch=telemetry.BATCH_SIZE.observe,
        )

    # --- identity -------------------------------------------------------------

    @property
    def version(self) -> str:
        return self.marker.version if self.marker else "none"

    @property
    def digest(self) -> str:
        return self.marker.digest if self.marker else ""

    # --- loading --------------------------------------------------------------

    def load(self) -> bool:
        """Load from the volume if it is READY; otherwise stay unready and say why."""
        try:
            marker = artifact.read_ready(self.volume)
            model_dir = self.volume / artifact.MODEL_SUBDIR
            classifier = self._loader(model_dir)
            self.monitor.detector = self._detector(model_dir)
        except ModelNotReadyError as e:
            self._unready(str(e))
            return False
        self.classifier, self.marker = classifier, marker
        self.ready = True
        telemetry.READY.set(1)
        telemetry.set_model(marker.version, self.colour, marker.digest)
        log.info("serving %s version %s (digest %s)", model_dir, marker.version, marker.digest)
        return True

    def _detector(self, model_dir: Path) -> Any:
        path = model_dir / REFERENCE
        if not path.is_file():
            log.warning("%s missing: online drift detection is off", path)
            return None
        reference = np.load(path)
        return make_detector(self.settings.drift_backend, reference, self.settings.drift_p_value)

    def _unready(self, reason: str) -> None:
        if self.ready or reason != self.not_ready_reason:
            log.warning("model not ready: %s", reason)
        self.ready = False
        self.not_ready_reason = reason
        telemetry.READY.set(0)

    def recheck(self) -> None:
        """Load once the volume turns READY; go unready if its marker goes away or changes."""
        if self.classifier is None:
            self.load()
            return
        try:
            marker = artifact.read_ready(self.volume)
        except ModelNotReadyError as e:
            self._unready(str(e))
            return
        if self.marker and marker.digest != self.marker.digest:
            self._unready(f"{self.volume}: READY now names digest {marker.digest[:12]}; restart")
        elif not self.ready:
            self.ready = True
            telemetry.READY.set(1)

    async def watch_volume(self) -> None:
        while True:
            await asyncio.sleep(self.settings.ready_poll_s)
            await asyncio.to_thread(self.recheck)

    # --- inference ------------------------------------------------------------

    def _run(self, texts: list[str]) -> Batch:
        if self.classifier is None:
            raise ModelNotReadyError(self.not_ready_reason)
        return self.classifier.run(texts)

    def check_texts(self, texts: Sequence[object]) -> list[str]:
        if not texts:
            raise InvalidInputError("no texts given")
        limit = self.settings.max_items_per_request
        if len(texts) > limit:
            raise PayloadTooLargeError(f"{len(texts)} texts in one request; the limit is {limit}")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInputError(f"item {i}: expected a string, got {type(text).__name__}")
            if not text.strip():
                raise InvalidInputError(f"item {i}: empty text")
        return [str(t) for t in texts]

    async def classify(self, texts: Sequence[object]) -> list[dict[str, Any]]:
        """Label + per-label scores + truncated flag per text, batched with other requests."""
        checked = self.check_texts(texts)
        if not self.ready or self.classifier is None:
            raise ModelNotReadyError(self.not_ready_reason)
        batch = await self.batcher.submit(checked)
        self.traffic.extend(checked)
        self.monitor.observe(batch.embeddings)
        labels = self.classifier.labels
        return [
            {
                "label": labels[int(np.argmax(probs))],
                "scores": {lab: round(float(p), 7) for lab, p in zip(labels, probs, strict=True)},
                "truncated": truncated,
            }
            for probs, truncated in zip(batch.probs, batch.truncated, strict=True)
        ]

    async def drift_test(self, texts: Sequence[object]) -> DriftResult:
        """Test ``texts`` against this model's drift reference (the promotion's drift gate).

        The texts are embedded by this model in chunks through the batcher, but
        they are not live traffic: they enter neither the online window nor the
        traffic sample.
        """
        limit = self.settings.drift_test_max_texts
        if len(texts) > limit:
            raise PayloadTooLargeError(f"{len(texts)} texts to test; the limit is {limit}")
        if len(texts) < 2:
            raise InvalidInputError("a drift test needs at least 2 texts")
        if not self.ready or self.classifier is None:
            raise ModelNotReadyError(self.not_ready_reason)
        step = self.settings.max_items_per_request
        parts = []
        for i in range(0, len(texts), step):
            chunk = self.check_texts(texts[i : i + step])
            parts.append((await self.batcher.submit(chunk)).embeddings)
        return await asyncio.to_thread(self.monitor.test_sample, np.concatenate(parts))

    async def predict(
        self, payload: dict[str, Any] | InferRequest, headers: dict[str, str] | None = None
    ) -> dict[str, Any] | InferResponse:
        """KServe's entry point: v1 ``{"instances": [...]}`` or a v2 request with BYTES text."""
        if isinstance(payload, InferRequest):
            return await self._predict_v2(payload)
        return {"predictions": await self.classify(_v1_texts(payload))}

    async def _predict_v2(self, request: InferRequest) -> InferResponse:
        texts = _v2_texts(request)
        predictions = await self.classify(texts)
        labels = self.classifier.labels if self.classifier else []
        n = len(predictions)
        scores = [p["scores"][lab] for p in predictions for lab in labels]
        outputs = [
            InferOutput("label", [n], "BYTES", [p["label"] for p in predictions]),
            InferOutput("scores", [n, len(labels)], "FP32", scores),
            InferOutput("truncated", [n], "BOOL", [p["truncated"] for p in predictions]),
        ]
        return InferResponse(
            response_id=request.id or "",
            model_name=self.name,
            infer_outputs=outputs,
            model_version=self.version,
        )

    def metadata(self) -> dict[str, Any]:
        """Open Inference Protocol model metadata, plus version, colour and digest."""
        labels = self.classifier.labels if self.classifier else []
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": "pytorch_transformers",
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
                {"name": "scores", "datatype": "FP32", "shape": [-1, len(labels)]},
                {"name": "truncated", "datatype": "BOOL", "shape": [-1]},
            ],
            "parameters": {
                "version": self.version,
                "colour": self.colour,
                "digest": self.digest,
                "labels": labels,
                "ready": self.ready,
            },
        }

    def submit_feedback(self, examples: list[dict[str, str]]) -> None:
        labels = self.classifier.labels if self.classifier else []
        self.check_texts([e["text"] for e in examples])
        for i, example in enumerate(examples):
            if labels and example["label"] not in labels:
                raise InvalidInputError(f"item {i}: label {example['label']!r} not in {labels}")
        if self.feedback_sink is None:
            raise ModelNotReadyError("no feedback store configured")
        stamped = [{**e, "model_version": self.version, "colour": self.colour} for e in examples]
        self.feedback_sink(stamped)


def _v1_texts(payload: object) -> list[object]:
    if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
        raise InvalidInputError('expected {"instances": [text, ...]}')
    texts: list[object] = []
    for item in payload["instances"]:
        texts.append(item.get("text") if isinstance(item, dict) else item)
    return texts


def _v2_texts(request: InferRequest) -> list[object]:
    if len(request.inputs) != 1:
        raise InvalidInputError("expected exactly one input tensor (BYTES text)")
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise InvalidInputError(f"input {tensor.name!r}: datatype must be BYTES")
    data = tensor.data if isinstance(tensor.data, list) else []
    return [d.decode("utf-8", "replace") if isinstance(d, bytes) else d for d in data]
