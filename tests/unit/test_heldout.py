"""`flipserve promote`'s default held-out set: a sample of the whole test split."""

from __future__ import annotations

from collections import Counter

from flipserve import cli


def test_the_default_held_out_set_is_a_seeded_sample_with_every_label() -> None:
    texts, labels = cli._heldout(None, 500)

    assert len(texts) == len(labels) == len(set(texts)) == 500
    counts = Counter(labels)
    # The split is grouped by label (its first 500 rows are all negative); a sample
    # keeps its proportions (about 44 % negative, 39 % neutral, 17 % positive).
    assert set(counts) == {"negative", "neutral", "positive"}
    assert min(counts.values()) >= 50, counts
    assert cli._heldout(None, 500) == (texts, labels)  # the same set every time
