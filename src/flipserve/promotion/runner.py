"""Drive one promotion to its end on a platform, one ``reconcile`` step at a time.

The local CLI and the demo use :func:`run_local`; it holds a lock file so a
second ``flipserve promote`` on the same local root is refused with a clear
reason, saves the status after every step (so a killed CLI resumes the same
promotion) and appends it to the history that ``flipserve status`` shows.
"""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from flipserve.errors import FlipserveError, PromotionError
from flipserve.promotion.gates import GateRunner
from flipserve.promotion.local import LocalPlatform
from flipserve.promotion.machine import (
    abort,
    admission,
    reconcile,
    restore_production,
    rollback_target,
)
from flipserve.promotion.platform import Platform
from flipserve.promotion.status import Colour, PromotionSpec, PromotionStatus

OnStep = Callable[[PromotionStatus], None]
log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


def drive(
    spec: PromotionSpec,
    platform: Platform,
    gates: GateRunner,
    *,
    status: PromotionStatus | None = None,
    on_step: OnStep | None = None,
    poll_seconds: float = 0.25,
    retries: int = 5,
) -> PromotionStatus:
    """Reconcile until the promotion is done; ``on_step`` sees (and may persist) each status."""
    status = status or PromotionStatus()
    errors = 0
    while not status.done:
        try:
            new = reconcile(spec, status, platform, gates, utcnow())
            errors = 0
        except Exception as e:  # top of the loop: a step that raised is retried, then given up
            errors += 1
            log.warning("promotion step in %s failed (%d/%d): %r", status.phase, errors, retries, e)
            if errors < retries:
                time.sleep(poll_seconds * 4 * errors)
                continue
            new = abort(status, platform, utcnow(), f"{type(e).__name__}: {e}")
            errors = 0
        if on_step is not None:
            on_step(new)
        if new.phase == status.phase and new.reason == status.reason:
            time.sleep(poll_seconds)
        status = new
    return status


@contextmanager
def promotion_lock(root: Path) -> Iterator[None]:
    """Only one promotion per local root; a second one is refused with the holder's name."""
    path = root / "promotion.lock"
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            f.seek(0)
            holder = f.read().strip() or "another promotion"
            raise PromotionError(admission([holder]) or "busy") from e
        f.seek(0)
        f.truncate()
        f.write(f"{int(time.time())}")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)


def run_local(
    spec: PromotionSpec,
    platform: LocalPlatform,
    gates: GateRunner,
    on_step: OnStep | None = None,
) -> PromotionStatus:
    """Promote ``spec`` on the local platform; resumes an unfinished run of the same target."""
    with promotion_lock(platform.root):
        state = platform.load()
        current = state.get("current")
        status = None
        if current and not PromotionStatus.model_validate(current["status"]).done:
            if current["spec"]["target"]["digest"] != spec.target.digest:
                other = current["spec"]["target"]["version"]
                raise PromotionError(
                    f"an unfinished promotion of {other} is pending on {platform.root}; "
                    f"promote {other} again to finish it first"
                )
            status = PromotionStatus.model_validate(current["status"])
        key = f"{spec.target.version}@{utcnow().isoformat(timespec='seconds')}"
        if current and status is not None:
            key = current["key"]

        def persist(st: PromotionStatus) -> None:
            s = platform.load()
            s["current"] = {
                "key": key,
                "spec": spec.model_dump(mode="json"),
                "status": st.model_dump(mode="json"),
            }
            platform.save(s)
            if st.done:
                platform.append_history(
                    {"spec": spec.model_dump(mode="json"), "status": st.model_dump(mode="json")},
                    key=key,
                )
            if on_step is not None:
                on_step(st)

        return drive(spec, platform, gates, status=status, on_step=persist)


def rollback_local(platform: LocalPlatform) -> tuple[Colour, float]:
    """Switch the API back to the idle colour, if its volume still holds the previous model.

    Then the store's production record, if it still names the model rolled
    back from, is written back to the one now served (compare-and-swap; a
    record another promoter changed since is left alone). The seconds
    returned are the switch's: users are back on the previous model then.
    """
    with promotion_lock(platform.root):
        start = time.monotonic()
        active = platform.active()
        on_idle = platform.held(active.colour.other) if active else None
        colour = rollback_target(active, platform.previous(), on_idle)
        back_to = platform.held(colour)
        platform.switch(colour, back_to)
        while not platform.rollout_done(colour):
            time.sleep(0.05)
        seconds = time.monotonic() - start
        rolled_back = active.target if active else None
        try:
            for _ in range(5):
                note = restore_production(platform, rolled_back, back_to)
                if note is not None:
                    log.info("rollback to %s: %s", colour, note)
                    return colour, seconds
            raise PromotionError("it kept changing while it was being restored")
        except FlipserveError as e:
            raise PromotionError(
                f"rolled back: the API serves {colour}, but the production record was not "
                f"written back: {e}; see `flipserve status`"
            ) from e
