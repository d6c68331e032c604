"""The demo's report: ``report.md``, ``summary.json`` and two PNG plots in the output folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write(out: Path, summary: dict[str, Any]) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plots = _plots(out, summary)
    (out / "report.md").write_text(_markdown(summary, plots))


def _plots(out: Path, summary: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    models = summary.get("models", {})
    if models:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        versions = list(models)
        for i, metric in enumerate(("macro_f1", "accuracy")):
            values = [models[v]["scores"].get(metric, 0.0) for v in versions]
            xs = [j + i * 0.38 for j in range(len(versions))]
            ax.bar(xs, values, width=0.36, label=metric)
        ax.set_xticks([j + 0.19 for j in range(len(versions))], versions)
        ax.set_ylim(0, 1)
        ax.set_ylabel("held-out score (through the preview server)")
        ax.legend()
        ax.set_title("scores per model")
        fig.tight_layout()
        fig.savefig(out / "scores.png", dpi=110)
        plt.close(fig)
        names.append("scores.png")
    points = [p for p in summary.get("drift", []) if p[1] is not None]
    threshold = float(summary.get("drift_threshold", 0.05))
    if points:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        floor = 1e-12  # p-values of 0 still have to show on a log axis
        ys = [max(p[1], floor) for p in points]
        ax.plot([p[0] for p in points], ys, marker=".", label="p-value")
        alarms = [(p[0], y) for p, y in zip(points, ys, strict=True) if p[2]]
        if alarms:
            xs, alarm_ys = [a[0] for a in alarms], [a[1] for a in alarms]
            ax.scatter(xs, alarm_ys, color="red", label="drift", zorder=3)
        ax.axhline(threshold, color="grey", linestyle="--", label="threshold")
        for t, label in summary.get("events", []):
            ax.axvline(t, color="black", alpha=0.3)
            ax.annotate(label, (t, 1.0), rotation=90, fontsize=7, va="top")
        ax.set_yscale("log")
        ax.set_xlabel("seconds")
        ax.set_ylabel("drift p-value (GET /drift)")
        ax.legend()
        ax.set_title("online drift p-value over time")
        fig.tight_layout()
        fig.savefig(out / "drift.png", dpi=110)
        plt.close(fig)
        names.append("drift.png")
    return names


def _markdown(summary: dict[str, Any], plots: list[str]) -> str:
    lines = ["# flipserve demo report", ""]
    if "config" in summary:
        lines += [f"Config: `{summary['config']}` (`flipserve demo --config`).", ""]
    lines.append("| model | outcome | macro-F1 | accuracy | reason |")
    lines.append("|---|---|---|---|---|")
    for version, m in summary.get("models", {}).items():
        f1, acc = m["scores"].get("macro_f1"), m["scores"].get("accuracy")
        lines.append(
            f"| {version} | {m['phase']} ({m['from'] or '-'}→{m['to'] or '-'}) | "
            f"{_fmt(f1)} | {_fmt(acc)} | {m['reason']} |"
        )
    load = summary.get("load")
    if load:
        lines += [
            "",
            "## Switch under load",
            "",
            f"- requests during the v2 promotion: **{load['requests']}**, "
            f"failed: **{load['failed']}**",
            f"- p99 latency: {_fmt(load['p99_ms'], '.0f')} ms",
            f"- versions answering, in order: {' → '.join(v for _, v in load['versions'])}",
        ]
    after = summary.get("drift_detected_after_s")
    lines += [
        "",
        "## Drift",
        "",
        f"- out-of-domain emails raised the drift alarm after **{_fmt(after, '.0f')} s**"
        if after is not None
        else "- no drift alarm was raised (see drift.png)",
    ]
    lines += ["", *[f"![{p}]({p})" for p in plots], ""]
    timings = summary.get("timings", {})
    if "total" in timings:
        lines.append(f"Demo wall time: {timings['total']:.0f} s.")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)
