"""The ``Platform`` protocol: everything the state machine asks of the world.

Two backends implement it: Kubernetes (the controller: copy Job, preview
Deployment, the API Deployment's volume) and local (two directories, server
processes and a tiny reverse proxy, ``promotion/local.py``). Every method is
idempotent, because the machine re-runs a step after a crash: starting what
already runs, stopping what is stopped, or switching to the colour already
served does nothing (and says so).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

from pydantic import BaseModel

from flipserve.promotion.status import Colour, ModelTarget, ObservedMetrics


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


class Platform(Protocol):
    """The side effects of a promotion; the state machine decides when to call which."""

    def active(self) -> ActiveModel | None:
        """The colour the API serves, or None when nothing has ever been promoted."""
        ...

    def production_scores(self) -> dict[str, float]:
        """The production record's scores (empty when there is no record yet)."""
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

    def observe(self, colour: Colour, since_seconds: float) -> ObservedMetrics:
        """The API's behaviour on ``colour`` over the last ``since_seconds``."""
        ...

    def record_production(self, target: ModelTarget, scores: dict[str, float]) -> None:
        """Record ``target`` (with the scores the gate measured) as production; idempotent."""
        ...
