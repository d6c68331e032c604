"""Blue/green promotion: a pure state machine and its gates, driven through a ``Platform``.

``reconcile`` (machine.py) advances a :class:`PromotionStatus` one idempotent
step at a time; a platform backend (the Kubernetes controller, or
``local.py``) performs the side effects; ``gates.py`` judges the candidate.
"""

from flipserve.promotion.gates import GateRunner
from flipserve.promotion.machine import (
    admission,
    reconcile,
    restore_production,
    rollback_target,
)
from flipserve.promotion.platform import (
    ActiveModel,
    CopyProgress,
    CopyState,
    Platform,
    Production,
)
from flipserve.promotion.status import (
    Colour,
    GateResult,
    ModelTarget,
    ObservedMetrics,
    Phase,
    PromotionSpec,
    PromotionStatus,
    ServerCounters,
)

__all__ = [
    "ActiveModel",
    "Colour",
    "CopyProgress",
    "CopyState",
    "GateResult",
    "GateRunner",
    "ModelTarget",
    "ObservedMetrics",
    "Phase",
    "Platform",
    "Production",
    "PromotionSpec",
    "PromotionStatus",
    "ServerCounters",
    "admission",
    "reconcile",
    "restore_production",
    "rollback_target",
]
