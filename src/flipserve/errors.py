"""Domain exceptions. HTTP status codes are mapped from these in one place (server/app.py).

Raise the most specific one, chained with ``raise ... from e``. The CLI prints
``str(error)`` as one line and exits non-zero, so messages name the file,
field, object or URI at fault.
"""

from __future__ import annotations


class FlipserveError(Exception):
    """Base of every error flipserve raises on purpose."""

    exit_code = 1


class ConfigError(FlipserveError):
    """Bad settings, values or command-line input."""

    exit_code = 2


class RefError(FlipserveError):
    """A model or dataset ref is missing, malformed or inconsistent."""

    exit_code = 2


class DataError(FlipserveError):
    """A dataset is empty, unlabelled or otherwise unusable."""


class StoreError(FlipserveError):
    """The artifact store cannot be reached or refused the operation."""


class NotFoundError(StoreError):
    """An artifact, object or record does not exist."""


class IntegrityError(StoreError):
    """Content does not match its recorded sha256 (manifest or file)."""


class ConflictError(StoreError):
    """A concurrent writer changed a record first (compare-and-swap lost)."""


class ModelNotReadyError(FlipserveError):
    """The model volume is not ready (no READY marker, digest mismatch) or not loaded."""


class InvalidInputError(FlipserveError):
    """A request's body is malformed or out of bounds."""


class PayloadTooLargeError(InvalidInputError):
    """A request's body is over the configured size limit."""


class UnauthorizedError(FlipserveError):
    """A request lacks the bearer token it needs."""


class GateFailedError(FlipserveError):
    """A promotion gate (score, drift, observe) did not pass."""


class PromotionError(FlipserveError):
    """A promotion cannot proceed (another one running, active colour targeted, ...)."""


class KubeError(FlipserveError):
    """The Kubernetes API refused a request or could not be reached; ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class TemporaryError(FlipserveError):
    """Retry later: the cluster or store is not there yet."""

    def __init__(self, message: str, delay: float = 5.0) -> None:
        super().__init__(message)
        self.delay = delay
