"""The README table (detector, signal, default threshold, action), generated from code."""

from __future__ import annotations

from rlkeel.server.detectors.catalog import DETECTORS
from rlkeel.server.policy.config import DEFAULT_POLICY, PolicyConfig

__all__ = ["policy_table_markdown", "policy_table_rows"]


def _fmt(x: float) -> str:
    return f"{x:g}"


def policy_table_rows(cfg: PolicyConfig = DEFAULT_POLICY) -> list[tuple[str, str, str, str]]:
    """(detector, signal, threshold, action) per detector, with `cfg`'s thresholds."""
    rows = []
    for spec in DETECTORS:
        s = cfg.detector(spec.name)
        op = ">" if spec.direction == "above" else "<"
        extra = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(s.params.items()))
        thr = f"{op} {_fmt(s.threshold)} (re-arm {_fmt(s.rearm)}; warm-up {s.warmup}, " \
              f"cool-down {s.cooldown}{'; ' + extra if extra else ''})"
        if not s.enabled:
            thr = "disabled"
        rows.append((spec.name, f"{spec.metric}: {spec.signal}", thr, spec.action))
    return rows


def policy_table_markdown(cfg: PolicyConfig = DEFAULT_POLICY) -> str:
    lines = ["| detector | signal | default threshold | action |", "|---|---|---|---|"]
    for row in policy_table_rows(cfg):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines) + "\n"
