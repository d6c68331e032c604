"""Corpus cleaning and deterministic, stable splits."""

from __future__ import annotations

import pytest

from flipserve import data
from flipserve.errors import DataError


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        (b"I don\xd5\xa2_\x8a\xce_\x86\xa2t want it", "I don't want it"),
        (b"It\xe4\xf3\xbbs a sad day", "It's a sad day"),
        (b"MT \xd5\xa2_\x8a\xce\x81\xd0@Ossy: cars\xd5\xa2_\x8a\xce\xeb\x9d", 'MT "@Ossy: cars"'),
        (b"cars_\xd1_.no thank you", "cars .no thank you"),
        (b"crazed &amp; drunk   drivers", "crazed & drunk drivers"),
        (b"emoji at the end \xd5\x8d\x81\xf4_\x86\xa2_\xd1", "emoji at the end"),
    ],
)
def test_mojibake_is_repaired_or_dropped(raw: bytes, clean: str) -> None:
    assert data.clean_bytes(raw) == clean


def test_rows_are_cleaned_deduplicated_and_unknown_labels_dropped() -> None:
    csv = (
        b"sentiment,confidence,text\r\n"
        b"positive,1,great car\r\n"
        b"positive,1,great   car\r\n"
        b"angry,1,what\r\n"
        b"negative,,bad car\r\n"
    )
    rows = data.parse_rows(csv, "x.csv")
    assert rows == [data.Example("great car", "positive"), data.Example("bad car", "negative")]


@pytest.mark.parametrize(
    "csv",
    [
        b"sentiment,confidence,text\r\n",
        b"sentiment,text\r\n,no label\r\nmeh,x\r\n",
        b"a,b\r\n1,2\r\n",
    ],
)
def test_empty_or_unlabelled_data_is_a_clear_error(csv: bytes) -> None:
    with pytest.raises(DataError, match=r"^x\.csv: "):
        data.parse_rows(csv, "x.csv")


def test_split_depends_only_on_the_text() -> None:
    texts = [f"tweet number {i}" for i in range(2000)]
    first = {t: data.split_of(t) for t in texts}
    assert {t: data.split_of(t) for t in reversed(texts)} == first
    shares = {s: sum(v == s for v in first.values()) / len(texts) for s in data.SPLITS}
    for name, fraction in data.SPLITS.items():
        assert abs(shares[name] - fraction) < 0.04


def test_subsample_is_stable_and_grows_as_a_superset() -> None:
    rows = [data.Example(f"t{i}", "neutral") for i in range(1000)]
    half, all_ = data.subsample(rows, 0.5), data.subsample(rows, 1.0)
    assert data.subsample(rows, 0.5) == half
    assert set(half) <= set(all_) and len(all_) == 1000
    assert 400 < len(half) < 600


def test_a_split_left_empty_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="empty"):
        data.split([data.Example("only one", "neutral")])
