"""What people see: a promotion followed live, and the ``flipserve status`` table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from flipserve.promotion.local import LocalPlatform
from flipserve.promotion.production import production_lines
from flipserve.promotion.status import Phase, PromotionSpec, PromotionStatus

_STYLE = {Phase.PROMOTED: "bold green", Phase.FAILED: "bold red", Phase.ROLLED_BACK: "bold yellow"}


class Follower:
    """Prints each new phase, copy progress and gate result of a running promotion."""

    def __init__(self, spec: PromotionSpec, console: Console | None = None) -> None:
        self.spec = spec
        self.console = console or Console(highlight=False)
        self._last = ("", "")
        self._gates = 0

    def __call__(self, status: PromotionStatus) -> None:
        new_gates = status.gates[self._gates :]
        for gate in new_gates:
            mark = "[green]pass[/]" if gate.passed else "[red]FAIL[/]"
            self.console.print(f"    gate {gate.name:<8} {mark}  {gate.detail}")
        self._gates = len(status.gates)
        now = (status.phase.value, status.reason)
        same_phase = now[0] == self._last[0]
        if new_gates and same_phase:  # the reason only repeats the gate just printed
            self._last = now
        elif now != self._last:
            self._last = now
            style = _STYLE.get(status.phase, "cyan")
            self.console.print(f"  [{style}]{status.phase.value:<10}[/] {status.reason}")

    def verdict(self, status: PromotionStatus) -> None:
        style = _STYLE.get(status.phase, "bold")
        took = ""
        start, end = status.entered(Phase.PENDING), status.entered(status.phase)
        if start and end:
            took = f" in {(end - start).total_seconds():.1f}s"
        self.console.print(
            f"[{style}]{self.spec.target.version}: {status.phase.value}{took}[/] — {status.reason}"
        )


def print_status(platform: LocalPlatform, console: Console | None = None) -> None:
    console = console or Console(highlight=False)
    state = platform.load()
    active = platform.active()
    production, problem = platform.records.read_or_why()
    table = Table(title=f"flipserve (local: {platform.root})")
    for col in ("colour", "serving", "version", "digest", "production"):
        table.add_column(col)
    for colour in ("blue", "green"):
        target: dict[str, Any] = state["targets"].get(colour) or {}
        serving = "● active" if active and active.colour.value == colour else ""
        if serving and not platform.api_url:
            serving += " (stopped)"
        in_production = production is not None and target.get("digest") == production.target.digest
        table.add_row(
            colour,
            serving,
            target.get("version", "-"),
            target.get("digest", "-")[:12],
            "yes" if in_production else "",
        )
    console.print(table)
    for line in production_lines(platform.records.uri, production, problem):
        console.print(line, soft_wrap=True, markup=False)
    if platform.api_url:
        console.print(f"API: {platform.api_url}/predict")
    elif active is not None:
        console.print("the local API is stopped; `flipserve rollback` or a promotion restarts it")
    history = Table(title="last promotions")
    for col in ("version", "phase", "from→to", "score", "drift p", "reason"):
        history.add_column(col)
    for entry in reversed(state["history"][-10:]):
        spec = PromotionSpec.model_validate(entry["spec"])
        st = PromotionStatus.model_validate(entry["status"])
        metric = st.candidate_scores.get(spec.score_metric)
        history.add_row(
            spec.target.version,
            f"[{_STYLE.get(st.phase, '')}]{st.phase.value}[/]",
            f"{st.from_colour or '-'}→{st.to_colour or '-'}",
            "-" if metric is None else f"{metric:.3f}",
            "-" if st.drift_p_value is None else f"{st.drift_p_value:.3g}",
            st.reason,
        )
    console.print(history)
