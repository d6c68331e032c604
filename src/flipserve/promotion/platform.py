"""The ``Platform`` protocol: everything the state machine asks of the world.

Two backends implement it: Kubernetes (the controller: copy Job, preview
Deployment, the API Deployment's volume) and local (two directories, server
processes and a tiny reverse proxy, ``promotion/local.py``); both read and
write the store's production record through ``promotion/production.py``.
Every method but ``write_production`` is idempotent, because the machine
re-runs a step after a crash: starting what already runs, stopping what is
stopped, or switching to the colour already served does nothing (and says
so). ``write_production`` is a compare-and-swap: repeated with the same
(now stale) ETag it raises ConflictError, and the machine then reads the
record to see whether the earlier write was its own.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Protocol

from pydantic import BaseModel

from flipserve.promotion.status import Colour, ModelTarget, ObservedMetrics, ServerCounters


class CopyState(StrEnum):
    """Where the copy to the idle colour stands."""

    ABSENT = "Absent"  # never started (or cleaned up): start it
    RUNNING = "Running"  # started and not finished
    SUCCEEDED = "Succeeded"  # the volume holds the target with a READY marker
    FAILED = "Failed"  # gave up (digest mismatch, store error, ...); message says why


class CopyProgress(BaseModel):
    state: CopyState
    fraction: float | None = None
    """Bytes done / total, when known."""
    message: str = ""


class ActiveModel(BaseModel):
    """What the API serves now."""

    colour: Colour
    target: ModelTarget | None = None
    """The model on that colour, when the platform knows it (from READY or annotations)."""


class Production(BaseModel):
    """The store's production record (``production.json``) as the state machine sees it.

    One record per store, shared by every promoter (each release's controller,
    the local CLI): what is in production and the scores a candidate must
    beat. It is changed only by compare-and-swap on ``etag``.
    """

    target: ModelTarget
    """The model in production, with its recorded scores."""
    generation: int
    """Bumped by every write: how many times production changed in this store."""
    etag: str
    """The record's version in the store; a write must name it (compare-and-swap)."""
    updated_by: str = ""
    updated_at: datetime | None = None


class Platform(Protocol):
    """The side effects of a promotion; the state machine decides when to call which."""

    def active(self) -> ActiveModel | None:
        """The colour the API serves, or None when nothing has ever been promoted."""
        ...

    def production(self) -> Production | None:
        """The store's production record with its ETag, or None when there is none yet."""
        ...

    def write_production(self, target: ModelTarget, expected_etag: str | None) -> Production:
        """Make the store's record name ``target`` (with ``target.scores``), by compare-and-swap.

        ``expected_etag`` is the ETag last read (None: there must be no record).
        Raises ConflictError, writing nothing, when the record changed since.
        """
        ...

    def start_copy(self, colour: Colour, target: ModelTarget) -> None:
        """Start filling ``colour``'s volume with ``target``; no-op if running or done."""
        ...

    def copy_progress(self, colour: Colour, target: ModelTarget) -> CopyProgress:
        """How the copy of ``target`` to ``colour`` stands."""
        ...

    def verify(self, colour: Colour, target: ModelTarget) -> str | None:
        """Check ``colour``'s READY marker against ``target.digest``; None if fine, else why."""
        ...

    def start_preview(self, colour: Colour) -> None:
        """Serve ``colour`` on a preview endpoint that users do not reach; no-op if up."""
        ...

    def preview_url(self, colour: Colour) -> str | None:
        """Base URL of the preview server once it is ready, else None."""
        ...

    def stop_preview(self, colour: Colour) -> None:
        """Stop the preview of ``colour``; no-op if it is not running."""
        ...

    def traffic_sample(self, n: int) -> list[str]:
        """Up to ``n`` recent live request texts captured by the active server."""
        ...

    def switch(self, colour: Colour, target: ModelTarget | None) -> bool:
        """Point the API at ``colour``. Returns False (and does nothing) if it already is."""
        ...

    def rollout_done(self, colour: Colour) -> bool:
        """Whether every API replica now serves ``colour`` and is ready."""
        ...

    def observe_start(self, colour: Colour) -> dict[str, ServerCounters]:
        """Start the observe window: each ``colour`` server's cumulative counters now.

        The machine keeps them in the status (a restarted controller measures the
        same window) and hands them back to ``observe``. A platform that windows
        its measurements itself returns an empty dict.
        """
        ...

    def observe(
        self, colour: Colour, since_seconds: float, baseline: dict[str, ServerCounters]
    ) -> ObservedMetrics:
        """The API's behaviour on ``colour`` since ``baseline`` (``since_seconds`` ago)."""
        ...
