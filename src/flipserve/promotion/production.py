"""The store's production record, as both promotion platforms read and write it.

``production.json`` in the store (store.py) is the source of truth for what
is in production and which scores a candidate must beat. It is shared by
every promoter that uses the store (each release's controller, the local
CLI, the demo), so it is only ever changed by compare-and-swap on its ETag:
:meth:`StoreProduction.write` raises ConflictError, writing nothing, when
someone else changed it since it was read.

The platforms keep their own record of which colour is active (the local
``state.json``, the API Deployment's annotations); that says what a release
serves, this says what production is.
"""

from __future__ import annotations

from flipserve.errors import FlipserveError
from flipserve.promotion.platform import Production
from flipserve.promotion.status import ModelTarget
from flipserve.store import ProductionModel, ProductionRecord, Store


class StoreProduction:
    """``Platform.production`` / ``write_production`` over a :class:`Store`."""

    def __init__(self, store: Store, updated_by: str) -> None:
        self.store = store
        self.updated_by = updated_by

    @property
    def uri(self) -> str:
        return f"{self.store.uri}/production.json"

    def read(self) -> Production | None:
        record, etag = self.store.read_production()
        if record is None or etag is None:
            return None
        return as_production(record, etag)

    def read_or_why(self) -> tuple[Production | None, str]:
        """The record, or None and why it could not be read (for status displays)."""
        try:
            return self.read(), ""
        except FlipserveError as e:  # the store is down: a status shows the rest anyway
            return None, str(e)

    def write(self, target: ModelTarget, expected_etag: str | None) -> Production:
        model = ProductionModel(
            name=target.name,
            version=target.version,
            uri=target.uri,
            digest=target.digest,
            scores=dict(target.scores),
        )
        record, etag = self.store.write_production(model, expected_etag, self.updated_by)
        return as_production(record, etag)


def as_production(record: ProductionRecord, etag: str) -> Production:
    m = record.model
    target = ModelTarget(
        name=m.name, version=m.version, uri=m.uri, digest=m.digest, scores=dict(m.scores)
    )
    return Production(
        target=target,
        generation=record.generation,
        etag=etag,
        updated_by=record.updated_by,
        updated_at=record.updated_at,
    )


def production_lines(where: str, production: Production | None, problem: str = "") -> list[str]:
    """The store's production record: what is in production and the scores to beat."""
    lines = [f"production record: {where}"]
    if production is None:
        lines.append(f"  unavailable: {problem}" if problem else "  none yet")
        return lines
    t = production.target
    at = production.updated_at.isoformat(timespec="seconds") if production.updated_at else "-"
    lines += [
        f"  version {t.version}  digest {t.digest[:12]}  generation {production.generation}",
        f"  scores  {_scores(t.scores) or '-'}",
        f"  updated {at} by {production.updated_by or '-'}",
    ]
    return lines


def _scores(scores: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in sorted(scores.items()))
