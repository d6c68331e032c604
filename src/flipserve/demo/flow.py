"""``flipserve demo``: the whole blue/green flow on one machine, no cluster.

Trains a v1 on part of the tweets and a v2 on more of them (plus a
deliberately worse v3), publishes all three to a local ``file://`` store,
serves v1 on blue, promotes v2 to green while a load generator runs, shows
the failed-request count (it must be 0), sends out-of-domain text (the
spam-assassin emails) to show the drift alarm, tries to promote v3 and shows
the refusal, and writes a report (markdown + PNG plots) to ``--out``.
It drives the same state machine, copier, gates and server as the cluster.
``config`` sizes the models (recipe.CONFIGS): ``tiny`` is the same flow with
faster fine-tunes and a shorter observe window.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from flipserve.demo import data as demo_data
from flipserve.demo import recipe as demo_model
from flipserve.demo import report as demo_report
from flipserve.errors import FlipserveError, PromotionError
from flipserve.loadgen import LoadGenerator, LoadStats
from flipserve.promotion import runner
from flipserve.promotion.follow import Follower
from flipserve.promotion.gates import HttpGates
from flipserve.promotion.local import (
    LocalPlatform,
    ServerCommand,
    default_server_command,
    embedding_drift,
)
from flipserve.promotion.status import ModelTarget, Phase, PromotionSpec, PromotionStatus
from flipserve.settings import Settings
from flipserve.store import PRODUCTION, Store

console = Console(highlight=False)


@dataclass
class DriftProbe:
    """Polls the API's ``GET /drift`` in the background: the p-value timeline for the report."""

    url: str
    start: float = field(default_factory=time.monotonic)
    points: list[tuple[float, float | None, bool, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self, every: float = 1.0) -> DriftProbe:
        threading.Thread(target=self._loop, args=(every,), daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def latest(self) -> tuple[float, float | None, bool, str] | None:
        return self.points[-1] if self.points else None

    def _loop(self, every: float) -> None:
        with httpx.Client(timeout=5.0) as client:
            while not self._stop.wait(every):
                try:
                    r = client.get(self.url + "/drift")
                    body: dict[str, Any] = r.json()
                except (httpx.HTTPError, ValueError):
                    continue
                p = body.get("p_value")
                self.points.append(
                    (
                        time.monotonic() - self.start,
                        float(p) if isinstance(p, int | float) else None,
                        bool(body.get("drift")),
                        r.headers.get("X-Model-Version", ""),
                    )
                )


@dataclass
class DemoResult:
    promotions: dict[str, PromotionStatus] = field(default_factory=dict)
    load: LoadStats | None = None
    drift_detected_after_s: float | None = None
    drift: list[tuple[float, float | None, bool, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    events: list[tuple[float, str]] = field(default_factory=list)


def run(
    out: Path,
    workdir: Path | None,
    settings: Settings,
    server_command: ServerCommand = default_server_command,
    config: str = "default",
) -> int:
    """Run the demo; exit 0 only if every step showed what it should."""
    start = time.monotonic()
    cfg = demo_model.CONFIGS[config]
    out = out.resolve()
    work = (workdir or out / "work").resolve()
    out.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]flipserve demo: blue/green with score and drift gates, no cluster")
    data = demo_data.load(
        settings.cache_dir,
        seed=settings.seed,
        n_train=cfg.n_train,
        n_heldout=cfg.n_heldout,
        n_reference=cfg.n_reference,
    )
    console.print(
        f"config {config}: {cfg.description}\n"
        f"data: {len(data.train)} training tweets, {len(data.heldout)} held out, "
        f"{len(data.emails)} spam-assassin emails (out-of-domain)"
    )
    targets = _train_and_publish(data, work, settings, cfg)
    # The production record lives in the store the models were published to.
    store = Store.open(settings, (work / "store").as_uri())
    platform = LocalPlatform(
        work / "local",
        server_command=server_command,
        server_env={"FLIPSERVE_DRIFT_INTERVAL_S": "2", "FLIPSERVE_LOG_LEVEL": "WARNING"},
        store=store,
        updated_by="flipserve demo",
    )
    platform.stop_all()  # a previous demo's processes, then its state: every run starts fresh
    shutil.rmtree(platform.root, ignore_errors=True)
    (work / "store" / PRODUCTION).unlink(missing_ok=True)  # nothing in production yet
    platform = LocalPlatform(
        platform.root,
        server_command=server_command,
        server_env=platform.server_env,
        store=store,
        updated_by="flipserve demo",
    )
    result = DemoResult()
    try:
        _flow(platform, targets, data, settings, result, cfg)
    finally:
        platform.stop_all()
    result.timings["total"] = time.monotonic() - start
    summary = {
        "config": config,
        "drift_threshold": settings.drift_p_value,  # the gate's and the servers' (same settings)
        **result_summary(result, targets),
    }
    demo_report.write(out, summary)
    ok = _verdict(result)
    console.print(f"report: {out / 'report.md'}  ({result.timings['total']:.0f}s in all)")
    return 0 if ok else 1


def _train_and_publish(
    data: demo_data.DemoData, work: Path, settings: Settings, config: demo_model.DemoConfig
) -> dict[str, ModelTarget]:
    recipes = demo_model.recipes(data, config)
    targets: dict[str, ModelTarget] = {}
    for version, recipe in recipes.items():
        t0 = time.monotonic()
        with console.status(f"training {version}: {recipe.description}"):
            model_dir = demo_model.train(recipe, work / "models" / version, version, settings.seed)
        target = demo_model.publish(model_dir, work / "store", version)
        targets[version] = target
        console.print(
            f"trained {version} ({recipe.description}) in {time.monotonic() - t0:.0f}s; "
            f"published {target.uri} [dim]{target.digest[:12]}[/]"
        )
    return targets


def _promote(
    platform: LocalPlatform,
    target: ModelTarget,
    data: demo_data.DemoData,
    settings: Settings,
    config: demo_model.DemoConfig,
) -> PromotionStatus:
    spec = PromotionSpec(
        target=target,
        score_metric=settings.score_metric,
        score_margin=settings.score_margin,
        drift_p_value=settings.drift_p_value,
        observe_seconds=min(settings.observe_seconds, config.max_observe_seconds),
        max_error_rate=settings.max_error_rate,
        max_p99_latency_ms=max(settings.max_p99_latency_ms, 5000.0),
    )
    drift = embedding_drift(platform, settings.drift_backend, settings.drift_p_value)
    gates = HttpGates(data.heldout_texts, data.heldout_labels, drift)
    console.rule(f"promote {target.version}")
    follower = Follower(spec, console)
    status = runner.run_local(spec, platform, gates, on_step=follower)
    follower.verdict(status)
    return status


def _flow(
    platform: LocalPlatform,
    targets: dict[str, ModelTarget],
    data: demo_data.DemoData,
    settings: Settings,
    result: DemoResult,
    config: demo_model.DemoConfig,
) -> None:
    first = _promote(platform, targets["v1"], data, settings, config)
    result.promotions["v1"] = first
    if first.phase is not Phase.PROMOTED or platform.api_url is None:
        raise PromotionError(f"v1 did not reach Promoted: {first.reason}")
    api = platform.api_url
    console.print(f"API: {api}/predict (blue, v1)")
    probe = DriftProbe(api).run()
    load = LoadGenerator(api, data.heldout_texts, workers=4, seed=settings.seed).start()
    time.sleep(3.0)  # live traffic for the drift gate's sample
    result.events.append((time.monotonic() - probe.start, "promote v2"))
    try:
        result.promotions["v2"] = _promote(platform, targets["v2"], data, settings, config)
    finally:
        result.load = load.stop()
    result.events.append((time.monotonic() - probe.start, "v2 promoted"))
    _show_load(result.load)
    result.drift_detected_after_s = _out_of_domain(api, data, probe, result)
    result.promotions["v3"] = _promote(platform, targets["v3"], data, settings, config)
    probe.stop()
    result.drift = probe.points


def _show_load(stats: LoadStats) -> None:
    style = "bold green" if stats.failed == 0 else "bold red"
    p99 = stats.percentile(0.99)
    console.print(
        f"[{style}]load during the switch: {stats.requests} requests, {stats.failed} failed[/] "
        f"(p99 {p99 or 0:.0f} ms; versions seen: "
        f"{' → '.join(v for _, v in _collapse(stats.versions))})"
    )


def _collapse(versions: list[tuple[float, str]]) -> list[tuple[float, str]]:
    """Drop the interleaving of in-flight answers around a switch: first time each appears."""
    seen: list[tuple[float, str]] = []
    for t, v in versions:
        if v not in [s[1] for s in seen]:
            seen.append((t, v))
    return seen


def _out_of_domain(
    api: str, data: demo_data.DemoData, probe: DriftProbe, result: DemoResult
) -> float | None:
    """Send emails until the server's drift test flags them twice in a row (or 120 s)."""
    console.rule("out-of-domain traffic: spam-assassin emails")
    before = probe.latest()
    if before is not None:
        console.print(f"drift on tweets so far: p={before[1]}, drift={before[2]}")
    start = time.monotonic()
    result.events.append((start - probe.start, "emails start"))
    load = LoadGenerator(api, data.emails, workers=2).start()
    try:
        while time.monotonic() - start < 120:
            time.sleep(1.0)
            recent = [p for p in probe.points if p[0] > start - probe.start + 5]
            if len(recent) >= 2 and recent[-1][2] and recent[-2][2]:
                elapsed = time.monotonic() - start
                p = recent[-1][1] or 0.0
                console.print(f"[bold red]drift alarm[/] after {elapsed:.0f}s of emails: p={p:.3g}")
                return elapsed
    finally:
        load.stop()
        result.events.append((time.monotonic() - probe.start, "emails stop"))
    console.print("[bold red]no drift alarm within 120s[/]")
    return None


def result_summary(result: DemoResult, targets: dict[str, ModelTarget]) -> dict[str, Any]:
    summary: dict[str, Any] = {"models": {}, "timings": result.timings}
    for version, status in result.promotions.items():
        summary["models"][version] = {
            "digest": targets[version].digest,
            "phase": status.phase.value,
            "reason": status.reason,
            "scores": status.candidate_scores,
            "drift_p_value": status.drift_p_value,
            "from": status.from_colour,
            "to": status.to_colour,
        }
    if result.load is not None:
        summary["load"] = {
            "requests": result.load.requests,
            "failed": result.load.failed,
            "errors": dict(result.load.errors),
            "p99_ms": result.load.percentile(0.99),
            "versions": _collapse(result.load.versions),
        }
    summary["drift_detected_after_s"] = result.drift_detected_after_s
    summary["events"] = result.events
    summary["drift"] = result.drift
    return json.loads(json.dumps(summary, default=str))  # type: ignore[no-any-return]


def _verdict(result: DemoResult) -> bool:
    checks: dict[str, Callable[[], bool]] = {
        "v1 promoted on blue": lambda: result.promotions["v1"].phase is Phase.PROMOTED,
        "v2 promoted under load": lambda: result.promotions["v2"].phase is Phase.PROMOTED,
        "zero failed requests": lambda: result.load is not None and result.load.failed == 0,
        "drift alarm on emails": lambda: result.drift_detected_after_s is not None,
        "worse v3 refused": lambda: result.promotions["v3"].phase is Phase.FAILED,
    }
    console.rule("verdict")
    ok = True
    for name, check in checks.items():
        try:
            passed = check()
        except (KeyError, FlipserveError):
            passed = False
        ok &= passed
        console.print(f"  {'[green]✔' if passed else '[red]✘'}[/] {name}")
    return ok
