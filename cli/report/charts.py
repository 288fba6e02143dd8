"""One PNG per metric over steps, with markers where findings were raised and commands acted."""

from __future__ import annotations

import math
from pathlib import Path

from rlkeel.cli.report.data import RunHistory, command_step

__all__ = ["CHARTS", "draw_charts"]

CHARTS: tuple[tuple[str, str, bool], ...] = (
    # metric, title, log scale
    ("reward_mean", "reward (mean)", False),
    ("kl_mean", "KL to the reference (mean k3)", True),
    ("entropy_mean", "entropy (mean per token)", False),
    ("length_mean", "response length (mean tokens)", False),
    ("clip_frac", "clip fraction", False),
    ("grad_norm", "grad norm (before clipping)", True),
)
_SEVERITY_COLOURS = {"info": "#9e9e9e", "warning": "#f0a30a", "high": "#e8590c",
                     "critical": "#c92a2a"}  # fmt: skip
_COMMAND_COLOUR = "#1c7ed6"


def draw_charts(history: RunHistory, out: Path) -> list[tuple[str, str, Path | None]]:
    """Write ``<metric>.png`` for each chart into ``out``; returns (metric, title, path or None
    when the run never reported that metric)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    finding_marks = [(f.step, f.severity.value) for f in history.findings]
    by_step: dict[int, list[str]] = {}
    for c in history.commands:
        if (s := command_step(c)) is not None and c.kind.value not in by_step.setdefault(s, []):
            by_step[s].append(c.kind.value)
    command_marks = [(s, " + ".join(kinds)) for s, kinds in sorted(by_step.items())]
    faults = _injected_faults(history)
    drawn: list[tuple[str, str, Path | None]] = []
    for metric, title, log in CHARTS:
        xs, ys = history.series(metric)
        if not xs:
            drawn.append((metric, title, None))
            continue
        fig, ax = plt.subplots(figsize=(7.5, 2.8), dpi=100)
        finite = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(y)]
        ax.plot([x for x, _ in finite], [y for _, y in finite], color="#343a40", lw=1.4)
        bad = [x for x, y in zip(xs, ys, strict=True) if not math.isfinite(y)]
        for x in bad:  # non-finite values are data: mark where they were
            ax.axvline(x, color=_SEVERITY_COLOURS["critical"], lw=2, alpha=0.6)
        positive = [y for _, y in finite if y > 0]
        if log and positive and len(positive) == len(finite) and max(positive) > 20 * min(positive):
            ax.set_yscale("log")  # only when the values span decades
        for x, severity in finding_marks:
            ax.axvline(x, color=_SEVERITY_COLOURS.get(severity, "#9e9e9e"), lw=0.8, alpha=0.5,
                       ls=":")  # fmt: skip
        top = ax.get_ylim()[1]
        for x, fault in faults:
            ax.axvline(x, color="#c92a2a", lw=1.2, ls="--", alpha=0.8)
            ax.annotate(f"injected {fault}", (x, top), xytext=(-9, -10),
                        textcoords="offset points", fontsize=7, color="#c92a2a", rotation=90,
                        va="top")  # fmt: skip
        for x, kind in command_marks:
            ax.axvline(x, color=_COMMAND_COLOUR, lw=1.2, alpha=0.8)
            ax.annotate(kind, (x, top), xytext=(2, -10), textcoords="offset points",
                        fontsize=7, color=_COMMAND_COLOUR, rotation=90, va="top")  # fmt: skip
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.25)
        fig.tight_layout()
        path = out / f"{metric}.png"
        fig.savefig(path)
        plt.close(fig)
        drawn.append((metric, title, path))
    return drawn


def _injected_faults(history: RunHistory) -> list[tuple[int, str]]:
    """Faults the trainer injected on purpose (``--inject``, recorded in the run's config)."""
    out = []
    for spec in (history.run.config or {}).get("inject") or []:
        kind, _, rest = str(spec).partition("@")
        step = rest.partition(":")[0]
        if step.isdigit():
            out.append((int(step), kind))
    return out
