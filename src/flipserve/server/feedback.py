"""A feedback sink for a ``file://`` store root: one JSON-lines file per request.

The server only sees a callable (model.FeedbackSink); the CLI passes the
store's ``append_feedback`` when the store offers one, and this sink when it
serves from a local directory store, so the server never imports boto3.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

from flipserve.artifact import atomic_write


class DirectoryFeedbackSink:
    """Writes ``<root>/<prefix>/<utc-timestamp>-<id>.jsonl`` per call."""

    def __init__(self, root: Path, prefix: str = "feedback") -> None:
        self.dir = root / prefix

    def __call__(self, examples: list[dict[str, str]]) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        path = self.dir / f"{stamp}-{uuid.uuid4().hex[:8]}.jsonl"
        lines = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples)
        atomic_write(path, lines.encode())
        return path
