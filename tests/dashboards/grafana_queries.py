"""Every query in the generated Grafana dashboards, with Grafana's macros substituted."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rlkeel.dashboards.build_grafana import DASHBOARDS


@dataclass(frozen=True)
class Query:
    dashboard: str
    where: str
    """Panel title, `variable run` or `annotation X`."""
    kind: str
    """`promql` or `sql`."""
    text: str
    table: bool = False


def dashboard_queries() -> Iterator[Query]:
    for build in DASHBOARDS.values():
        d: dict[str, Any] = build()
        for panel in d["panels"]:
            for t in panel.get("targets", []):
                if "expr" in t:
                    yield Query(d["uid"], panel["title"], "promql", t["expr"])
                else:
                    yield Query(d["uid"], panel["title"], "sql", t["rawSql"],
                                table=t["format"] == "table")  # fmt: skip
        for var in d["templating"]["list"]:
            yield Query(d["uid"], f"variable {var['name']}", "sql", var["query"], table=True)
        for ann in d["annotations"]["list"]:
            yield Query(d["uid"], f"annotation {ann['name']}", "sql", ann["target"]["rawSql"],
                        table=True)  # fmt: skip


def substitute_promql(expr: str, *, run: str, rate_interval: str, range_: str) -> str:
    out = (expr.replace("$__rate_interval", rate_interval).replace("$__range", range_)
           .replace("$run", run))  # fmt: skip
    assert "$" not in out, f"a Grafana macro the tests do not substitute: {expr}"
    return out


def substitute_sql(query: str, *, run: str, start: datetime, end: datetime) -> str:
    """Grafana's PostgreSQL macros, as Grafana expands them."""
    def time_filter(m: re.Match[str]) -> str:
        return f"{m.group(1)} BETWEEN '{start.isoformat()}' AND '{end.isoformat()}'"

    out = re.sub(r"\$__timeFilter\(([^)]+)\)", time_filter, query)
    out = out.replace("$run", run.replace("'", "''"))
    assert "$" not in out, f"a Grafana macro the tests do not substitute: {query}"
    return out
