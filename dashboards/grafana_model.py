"""Small constructors for Grafana's dashboard JSON model (schema 39): panels, targets, variables.

Datasources are referenced by uid only; `PROMETHEUS` and `POSTGRES` are provisioned with those
uids by `build_grafana`.
"""

from __future__ import annotations

from typing import Any

PROMETHEUS = {"type": "prometheus", "uid": "rlkeel-prometheus"}
POSTGRES = {"type": "grafana-postgresql-datasource", "uid": "rlkeel-postgres"}

Json = dict[str, Any]


def promql(expr: str, legend: str = "__auto", *, instant: bool = False) -> Json:
    return {"datasource": PROMETHEUS, "expr": expr, "legendFormat": legend,
            "range": not instant, "instant": instant, "editorMode": "code"}  # fmt: skip


def sql(query: str, *, table: bool = False) -> Json:
    """A raw SQL target; `$__timeFilter(col)` and `$run` are the only macros used (the live test
    substitutes exactly those)."""
    return {"datasource": POSTGRES, "rawSql": " ".join(query.split()), "rawQuery": True,
            "editorMode": "code", "format": "table" if table else "time_series"}  # fmt: skip


def _panel(kind: str, title: str, targets: list[Json], description: str, **extra: Any) -> Json:
    refs = "ABCDEFGHIJ"
    datasource = targets[0]["datasource"]
    assert all(t["datasource"] == datasource for t in targets), title
    panel: Json = {
        "type": kind, "title": title, "description": description, "datasource": datasource,
        "targets": [{**t, "refId": refs[i]} for i, t in enumerate(targets)],
    }  # fmt: skip
    panel.update(extra)
    return panel


def timeseries(title: str, targets: list[Json], description: str, *, unit: str = "short",
               bars: bool = False, stack: bool = False) -> Json:  # fmt: skip
    custom: Json = {"drawStyle": "bars" if bars else "line", "lineWidth": 1, "fillOpacity": 10,
                    "pointSize": 4, "showPoints": "auto", "spanNulls": True,
                    "stacking": {"mode": "normal" if stack else "none", "group": "A"}}  # fmt: skip
    return _panel("timeseries", title, targets, description,
                  fieldConfig={"defaults": {"unit": unit, "custom": custom}, "overrides": []},
                  options={"legend": {"displayMode": "list", "placement": "bottom",
                                      "showLegend": True},
                           "tooltip": {"mode": "multi", "sort": "none"}})  # fmt: skip


def stat(title: str, target: Json, description: str, *, unit: str = "short",
         thresholds: list[tuple[float | None, str]] | None = None) -> Json:  # fmt: skip
    steps = [{"value": v, "color": c} for v, c in (thresholds or [(None, "green")])]
    defaults: Json = {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}}
    if unit == "short":
        defaults["decimals"] = 3
    return _panel("stat", title, [target], description,
                  fieldConfig={"defaults": defaults, "overrides": []},
                  options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                             "values": False},
                           "colorMode": "value", "graphMode": "area", "textMode": "auto"})  # fmt: skip


def table(title: str, target: Json, description: str) -> Json:
    return _panel("table", title, [target], description,
                  fieldConfig={"defaults": {}, "overrides": []},
                  options={"showHeader": True, "cellHeight": "sm"})  # fmt: skip


def layout(rows: list[tuple[int, list[Json]]]) -> list[Json]:
    """Place panels row by row: (height, panels); widths split 24 columns evenly (the first
    panels take the remainder)."""
    placed: list[Json] = []
    y = 0
    next_id = 1
    for height, panels in rows:
        base, extra = divmod(24, len(panels))
        x = 0
        for i, panel in enumerate(panels):
            w = base + (1 if i < extra else 0)
            placed.append({"id": next_id, "gridPos": {"h": height, "w": w, "x": x, "y": y},
                           **panel})  # fmt: skip
            next_id += 1
            x += w
        y += height
    return placed


RUN_VARIABLE_SQL = ("SELECT id AS __value, name || ' · ' || substr(id, 1, 8) AS __text "
                    "FROM runs ORDER BY created_at DESC")  # fmt: skip


def run_variable() -> Json:
    """The run picker: newest run first, by name with a short id."""
    return {"type": "query", "name": "run", "label": "Run", "datasource": POSTGRES,
            "query": RUN_VARIABLE_SQL, "definition": RUN_VARIABLE_SQL, "refresh": 2,
            "includeAll": False, "multi": False, "sort": 0, "hide": 0,
            "current": {}, "options": []}  # fmt: skip


def sql_annotation(name: str, query: str, color: str) -> Json:
    """An annotation from SQL (columns: time, text, tags)."""
    return {"name": name, "datasource": POSTGRES, "enable": True, "iconColor": color,
            "rawQuery": " ".join(query.split()),
            "target": {**sql(query, table=True), "refId": "Anno"}}  # fmt: skip


def dashboard(uid: str, title: str, description: str, panels: list[Json], *,
              variables: list[Json] | None = None, annotations: list[Json] | None = None,
              time_from: str = "now-6h") -> Json:  # fmt: skip
    return {
        "uid": uid, "title": title, "description": description, "tags": ["rlkeel"],
        "schemaVersion": 39, "version": 1, "editable": False, "graphTooltip": 1,
        "refresh": "30s", "timezone": "browser",
        "time": {"from": time_from, "to": "now"},
        "templating": {"list": variables or []},
        "annotations": {"list": annotations or []},
        "links": [{"type": "dashboards", "tags": ["rlkeel"], "asDropdown": True,
                   "title": "rlkeel", "includeVars": True, "keepTime": True}],
        "panels": panels,
    }  # fmt: skip
