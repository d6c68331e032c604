"""Benchmark: the default fine-tuned MiniLM against classic baselines on the test split.

Trains ``flipserve train --config default`` and, in the same run on the same
split, TF-IDF + logistic regression and count-vectorizer + multinomial Naive
Bayes; writes bench/results/train.json. Run with ``make bench-train``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import MultinomialNB
from sklearn.pipeline import make_pipeline

from flipserve import data, metrics
from flipserve.modeling import TextClassifier
from flipserve.settings import Settings
from flipserve.train import train

OUT = Path(__file__).parent / "results" / "train.json"


def baseline(pipeline: object, ds: data.Dataset) -> tuple[dict[str, float], float]:
    started = time.monotonic()
    pipeline.fit(ds.texts("train"), ds.labels("train"))  # type: ignore[attr-defined]
    seconds = time.monotonic() - started
    predicted = [str(p) for p in pipeline.predict(ds.texts("test"))]  # type: ignore[attr-defined]
    return metrics.score_classification(predicted, ds.labels("test")), seconds


def main() -> None:
    ds = data.load_dataset()
    settings = Settings(show_progress=sys.stderr.isatty())
    nb, nb_s = baseline(make_pipeline(CountVectorizer(), MultinomialNB()), ds)
    lr, lr_s = baseline(
        make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), min_df=2), LogisticRegression(max_iter=2000)
        ),
        ds,
    )
    print(f"baselines: nb {nb['macro_f1']:.4f}  lr {lr['macro_f1']:.4f}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="flipserve-bench-train-"))
    try:
        started = time.monotonic()
        meta = train(work / "model", settings, "default", dataset=ds)
        train_seconds = time.monotonic() - started
        classifier = TextClassifier.load(work / "model")
        started = time.monotonic()
        predicted = classifier.predict_labels(ds.texts("test"))
        eval_seconds = time.monotonic() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)
    scores = metrics.score_classification(predicted, ds.labels("test"))
    result = {
        "command": "make bench-train (nice python bench/train.py)",
        "cores": os.cpu_count(),
        "config": "default",
        "hyperparameters": meta["hyperparameters"],
        "dataset": {"name": ds.ref.name, "version": ds.ref.version, "test_rows": len(predicted)},
        **scores,
        "train_seconds": round(train_seconds, 1),
        "test_eval_seconds": round(eval_seconds, 1),
        "baseline_nb_macro_f1": nb["macro_f1"],
        "baseline_nb_accuracy": nb["accuracy"],
        "baseline_nb_train_seconds": round(nb_s, 2),
        "baseline_lr_macro_f1": lr["macro_f1"],
        "baseline_lr_accuracy": lr["accuracy"],
        "baseline_lr_train_seconds": round(lr_s, 2),
        "macro_f1_ratio_vs_lr": scores["macro_f1"] / lr["macro_f1"],
        "macro_f1_ratio_vs_nb": scores["macro_f1"] / nb["macro_f1"],
        "beats_baselines": scores["macro_f1"] > max(nb["macro_f1"], lr["macro_f1"]),
        "note": "2 shared CPU cores, other jobs running: train_seconds is wall time under load",
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
