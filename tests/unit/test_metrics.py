"""evaluate.Metric subclasses: same numbers as scikit-learn, offline, batched."""

from __future__ import annotations

import random

import pytest
from sklearn.metrics import accuracy_score, f1_score

from flipserve import metrics


def test_classification_scores_match_scikit_learn() -> None:
    rng = random.Random(0)
    labels = ["negative", "neutral", "positive"]
    refs = [rng.choice(labels) for _ in range(300)]
    preds = [r if rng.random() < 0.6 else rng.choice(labels) for r in refs]
    scores = metrics.score_classification(preds, refs)
    assert scores["accuracy"] == pytest.approx(accuracy_score(refs, preds))
    assert scores["macro_f1"] == pytest.approx(f1_score(refs, preds, average="macro"))
    per_class = f1_score(refs, preds, average=None, labels=labels)
    for label, f1 in zip(labels, per_class, strict=True):
        assert scores[f"f1_{label}"] == pytest.approx(f1)


def test_a_label_never_seen_in_references_still_lowers_macro_f1() -> None:
    scores = metrics.score_classification(["a", "b"], ["a", "a"])
    assert scores["macro_f1"] == pytest.approx(f1_score(["a", "a"], ["a", "b"], average="macro"))


def test_metric_accumulates_batches() -> None:
    m = metrics.MacroF1(keep_in_memory=True)
    m.add_batch(predictions=["a", "b"], references=["a", "b"])
    m.add_batch(predictions=["b"], references=["a"])
    assert m.compute()["macro_f1"] == pytest.approx(
        f1_score(["a", "b", "a"], ["a", "b", "b"], average="macro")
    )


def test_bleu_is_100_for_identical_and_lower_otherwise() -> None:
    same = metrics.score_seq2seq(["the cat sat on the mat"], ["the cat sat on the mat"])
    other = metrics.score_seq2seq(["a dog stood on a rug"], ["the cat sat on the mat"])
    assert same["bleu"] == pytest.approx(100.0)
    assert other["bleu"] < 20


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        metrics.score_classification(["a", "b"], ["a"])


@pytest.mark.parametrize(
    ("candidate", "production", "margin", "passed"),
    [
        (0.80, 0.70, 0.05, True),
        (0.74, 0.70, 0.05, False),
        (0.70, 0.70, 0.0, False),
        (0.10, None, 0.0, True),
    ],
)
def test_beats_needs_more_than_the_margin(
    candidate: float, production: float | None, margin: float, passed: bool
) -> None:
    prod = None if production is None else {"macro_f1": production}
    ok, reason = metrics.beats({"macro_f1": candidate}, prod, "macro_f1", margin)
    assert ok is passed and reason
