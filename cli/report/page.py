"""The one-page HTML summary: the run, its charts, its findings and commands."""

from __future__ import annotations

import html
from collections import Counter
from pathlib import Path

from rlkeel.cli.report.data import RunHistory, command_step

__all__ = ["write_page"]

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#212529}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;font-size:13px;width:100%} td,th{border-bottom:1px solid #dee2e6;
padding:3px 8px;text-align:left;vertical-align:top} .charts{display:grid;
grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:8px} .charts img{width:100%}
.muted{color:#868e96} .sev-critical,.sev-high{color:#c92a2a;font-weight:600}
.sev-warning{color:#e67700}
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def write_page(history: RunHistory, charts: list[tuple[str, str, Path | None]],
               out: Path) -> Path:  # fmt: skip
    run = history.run
    steps = list(history.metrics)
    first = history.metrics[steps[0]] if steps else {}
    last = history.metrics[steps[-1]] if steps else {}
    by_detector = Counter(f.detector for f in history.findings)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>rlkeel report — {_e(run.name)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_e(run.name)}</h1>",
        f"<p class='muted'>run {_e(run.id)} · project {_e(run.project)} · model "
        f"{_e(run.model.name)} · {_e(run.algorithm.value)} → now "
        f"{_e(run.current_algorithm.value)} · automation {_e(run.automation.value)} · "
        f"status {_e(run.status.value)}</p>",
        "<table><tr><th></th><th>steps</th><th>reward</th><th>KL</th><th>entropy</th>"
        "<th>length</th><th>findings</th><th>commands</th><th>samples dropped</th>"
        "<th>steps skipped</th></tr>",
        f"<tr><td>first / last</td><td>{len(steps)}</td>"
        + "".join(f"<td>{_fmt(first.get(k))} → {_fmt(last.get(k))}</td>"
                  for k in ("reward_mean", "kl_mean", "entropy_mean", "length_mean"))
        + f"<td>{len(history.findings)}</td><td>{len(history.commands)}</td>"
        f"<td>{history.dropped_samples()}</td><td>{history.skipped_steps()}</td></tr></table>",
        "<h2>Charts</h2><p class='muted'>dotted lines: findings (orange warning, red high or "
        "critical); blue lines: commands, at the step whose report caused them (operator "
        "commands: where applied); red dashes: faults injected on purpose (--inject).</p>"
        "<div class='charts'>",
    ]  # fmt: skip
    for _metric, title, path in charts:
        if path is None:
            parts.append(f"<p class='muted'>{_e(title)}: not reported by this run</p>")
        else:
            parts.append(f"<img src='{_e(path.name)}' alt='{_e(title)}'>")
    parts.append("</div><h2>Commands</h2>")
    if history.commands:
        parts.append("<table><tr><th>step</th><th>command</th><th>params</th><th>origin</th>"
                     "<th>status</th><th>why</th><th>trainer said</th></tr>")  # fmt: skip
        for c in history.commands:
            parts.append(
                f"<tr><td>{_e(command_step(c))}</td><td>{_e(c.kind.value)}</td>"
                f"<td>{_e(c.params)}</td><td>{_e(c.origin.value)}</td><td>{_e(c.status.value)}</td>"
                f"<td>{_e((c.reason or {}).get('text', ''))}</td><td>{_e(c.detail or '')}</td></tr>")  # fmt: skip
        parts.append("</table>")
    else:
        parts.append("<p class='muted'>none</p>")
    parts.append("<h2>Findings</h2>")
    if history.findings:
        parts.append("<p>" + ", ".join(f"{_e(d)} × {n}" for d, n in by_detector.most_common())
                     + "</p><table><tr><th>step</th><th>detector</th><th>severity</th>"
                     "<th>value</th><th>baseline</th><th>samples</th><th>message</th></tr>")  # fmt: skip
        for f in history.findings:
            parts.append(
                f"<tr><td>{f.step}</td><td>{_e(f.detector)}</td>"
                f"<td class='sev-{_e(f.severity.value)}'>{_e(f.severity.value)}</td>"
                f"<td>{_fmt(f.value)}</td><td>{_fmt(f.baseline)}</td><td>{len(f.sample_ids)}</td>"
                f"<td>{_e(f.message)}</td></tr>")  # fmt: skip
        parts.append("</table>")
    else:
        parts.append("<p class='muted'>none</p>")
    parts.append("</body></html>\n")
    path = out / "index.html"
    path.write_text("".join(parts), encoding="utf-8")
    return path
