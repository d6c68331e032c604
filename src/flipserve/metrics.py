"""Evaluation metrics as ``evaluate.Metric`` subclasses written here.

The hub's metric scripts cannot be downloaded offline, so accuracy, macro-F1,
per-class F1 and BLEU are implemented in this module on top of the
``evaluate`` machinery (batching with ``add_batch``, typed inputs). Labels are
compared as strings, so a prediction of an unknown label simply counts as
wrong. ``score_classification`` is what ``flipserve evaluate`` and the
promotion score gate report.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import datasets
import evaluate

_STRING_PAIRS = datasets.Features(
    {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
)


def _info(description: str, features: datasets.Features = _STRING_PAIRS) -> evaluate.MetricInfo:
    return evaluate.MetricInfo(
        description=description,
        citation="",
        inputs_description="predictions and references: lists of labels (strings)",
        features=features,
    )


def _f1_per_label(predictions: list[str], references: list[str]) -> dict[str, float]:
    """F1 for every label seen in references or predictions (as scikit-learn does)."""
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for p, r in zip(predictions, references, strict=True):
        if p == r:
            tp[r] += 1
        else:
            fp[p] += 1
            fn[r] += 1
    labels = sorted(set(references) | set(predictions))
    # F1 = 2tp / (2tp + fp + fn); a label never predicted nor present scores 0.
    return {
        label: (2 * tp[label] / d if (d := 2 * tp[label] + fp[label] + fn[label]) else 0.0)
        for label in labels
    }


class Accuracy(evaluate.Metric):  # type: ignore[misc]
    """Share of predictions equal to their reference."""

    def _info(self) -> evaluate.MetricInfo:
        return _info("accuracy: fraction of exact label matches")

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        if not references:
            return {"accuracy": 0.0}
        hits = sum(p == r for p, r in zip(predictions, references, strict=True))
        return {"accuracy": hits / len(references)}


class MacroF1(evaluate.Metric):  # type: ignore[misc]
    """Unweighted mean of the per-label F1 over the labels in the references."""

    def _info(self) -> evaluate.MetricInfo:
        return _info("macro-F1: mean of per-label F1, every label weighted equally")

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        per_label = _f1_per_label(predictions, references)
        return {"macro_f1": sum(per_label.values()) / len(per_label) if per_label else 0.0}


class PerClassF1(evaluate.Metric):  # type: ignore[misc]
    """F1 of each label, keyed ``f1_<label>``."""

    def _info(self) -> evaluate.MetricInfo:
        return _info("per-class F1")

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        return {f"f1_{k}": v for k, v in _f1_per_label(predictions, references).items()}


class Bleu(evaluate.Metric):  # type: ignore[misc]
    """Corpus BLEU (sacrebleu, 0-100) of generated texts against one reference each."""

    def _info(self) -> evaluate.MetricInfo:
        return _info("corpus BLEU via sacrebleu, one reference per prediction")

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        import sacrebleu

        return {"bleu": float(sacrebleu.corpus_bleu(predictions, [references]).score)}


def _run(metric: Any, predictions: list[str], references: list[str]) -> dict[str, float]:
    result: dict[str, float] = metric.compute(predictions=predictions, references=references)
    return result


def score_classification(predictions: list[str], references: list[str]) -> dict[str, float]:
    """accuracy, macro_f1 and f1_<label> for a classifier's predictions."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    scores: dict[str, float] = {}
    for metric in (Accuracy(keep_in_memory=True), MacroF1(keep_in_memory=True)):
        scores.update(_run(metric, predictions, references))
    scores.update(_run(PerClassF1(keep_in_memory=True), predictions, references))
    return scores


def score_seq2seq(predictions: list[str], references: list[str]) -> dict[str, float]:
    return _run(Bleu(keep_in_memory=True), predictions, references)


def beats(
    candidate: dict[str, float], production: dict[str, float] | None, metric: str, margin: float
) -> tuple[bool, str]:
    """Whether the candidate's ``metric`` beats production's by more than ``margin``."""
    if metric not in candidate:
        return False, f"candidate has no '{metric}' score"
    if production is None:
        return True, "no production model yet"
    if metric not in production:
        return True, f"production has no '{metric}' score"
    c, p = candidate[metric], production[metric]
    verdict = "beats" if c > p + margin else "does not beat"
    return c > p + margin, f"candidate {metric} {c:.4f} {verdict} production {p:.4f} + {margin}"
