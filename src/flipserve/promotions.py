"""The client side of Promotion objects: ``flipserve promote|rollback|status --kube``.

Creating a Promotion is all a user does; the controller does the rest. These
helpers create one, follow it live (phase, reason, scores) until it finishes
and say how it ended; and print the release's state with its last promotions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flipserve.errors import PromotionError, RefError
from flipserve.kube import GROUP, KIND, PLURAL, VERSION, Kube, Obj
from flipserve.kubeplatform import ACTIVE_COLOUR, LOCK, MODEL_DIGEST, MODEL_VERSION
from flipserve.promotion.production import StoreProduction, production_lines
from flipserve.store import Store

Printer = Callable[[str], None]
_TERMINAL = ("Promoted", "Failed", "RolledBack")


def model_ref_from_file(path: Path) -> dict[str, str]:
    """``spec.modelRef`` from a model ref JSON (``uri``, ``digest``, ``version``, ``name``)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RefError(f"{path}: {e}") from e
    ref = {k: str(raw[k]) for k in ("uri", "digest", "version", "name") if raw.get(k)}
    if "digest" not in ref and raw.get("sha256"):
        ref["digest"] = str(raw["sha256"])
    if "uri" not in ref or "digest" not in ref:
        raise RefError(f"{path}: a model ref needs 'uri' and 'digest'")
    return ref


def create(kube: Kube, release: str, spec: dict[str, Any]) -> str:
    """Create a Promotion named ``<release>-<n>``; returns its name."""
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"generateName": f"{release}-"},
        "spec": {"release": release} | spec,
    }
    created = kube.create(kube.path(PLURAL), body)
    return str(created["metadata"]["name"])


def follow(
    kube: Kube, name: str, say: Printer, timeout_s: float = 3600.0, poll_s: float = 1.0
) -> Obj:
    """Print each change of phase or reason until the Promotion finishes; returns its status."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        status: Obj = kube.get(kube.path(PLURAL, name)).get("status") or {}
        line = f"{status.get('phase', 'Pending'):<10}  {status.get('reason', '')}"
        if line != last:
            say(line)
            last = line
        if status.get("phase") in _TERMINAL:
            return status
        if time.monotonic() > deadline:
            raise PromotionError(f"promotion {name} did not finish within {timeout_s:.0f}s")
        time.sleep(poll_s)


def status_table(kube: Kube, release: str, store: Store | None = None, last: int = 5) -> str:
    """The release's active colour/version/digest, the store's production record (when
    ``store`` is given) and the release's last promotions, as a table."""
    dep = kube.get(kube.path("deployments", release))
    ann = dep["metadata"].get("annotations") or {}
    lines = [
        f"release  {release}",
        f"active   {ann.get(ACTIVE_COLOUR, '?')}  version {ann.get(MODEL_VERSION) or '-'}"
        f"  digest {(ann.get(MODEL_DIGEST) or '-')[:12]}",
    ]
    if ann.get(LOCK):
        lines.append(f"running  {ann[LOCK]}")
    if store is not None:
        records = StoreProduction(store, "")
        lines += ["", *production_lines(records.uri, *records.read_or_why())]
    items = [p for p in kube.items(kube.path(PLURAL)) if (_release(p) or release) == release]
    items.sort(key=lambda p: p["metadata"]["creationTimestamp"], reverse=True)
    header = f"{'NAME':<22}{'PHASE':<12}{'FROM':<7}{'TO':<7}{'VERSION':<10}"
    lines += ["", header + f"{'SCORE':<8}{'PROD':<8}{'DRIFT-P':<9}REASON"]
    for p in items[:last]:
        s = p.get("status") or {}
        lines.append(
            f"{p['metadata']['name']:<22}{s.get('phase', 'Pending'):<12}"
            f"{s.get('fromColour') or '-':<7}{s.get('toColour') or '-':<7}"
            f"{s.get('modelVersion') or '-':<10}{_num(s.get('score')):<8}"
            f"{_num(s.get('productionScore')):<8}{_num(s.get('driftPValue')):<9}"
            f"{s.get('reason', '')}"
        )
    return "\n".join(lines)


def _release(promotion: Obj) -> str | None:
    release = (promotion.get("spec") or {}).get("release")
    return str(release) if release else None


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"
