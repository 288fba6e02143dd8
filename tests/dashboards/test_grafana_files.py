"""The committed Grafana files are what the builder generates; uids are unique, every datasource
a dashboard names is provisioned, every query parses and names exported metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from rlkeel.dashboards.build_grafana import DASHBOARDS, GRAFANA_DIR, main, render
from tests.dashboards.grafana_queries import dashboard_queries, substitute_promql
from tests.dashboards.test_prometheus import exported_metric_names


def _dashboards() -> list[dict[str, Any]]:
    return [json.loads((GRAFANA_DIR / "dashboards" / name).read_text()) for name in DASHBOARDS]


def _datasource_refs(node: Any) -> Iterator[dict[str, str]]:
    if isinstance(node, dict):
        if isinstance(node.get("datasource"), dict):
            yield node["datasource"]
        for value in node.values():
            yield from _datasource_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _datasource_refs(value)


def test_committed_files_are_generated() -> None:
    for rel, content in render().items():
        path = GRAFANA_DIR / rel
        assert path.exists() and path.read_text() == content, (
            f"{rel} is stale: run python -m rlkeel.dashboards.build_grafana")
    on_disk = {p.name for p in (GRAFANA_DIR / "dashboards").glob("*.json")}
    assert on_disk == set(DASHBOARDS), "a dashboard file the builder does not write"
    assert main(["--check"]) == 0


def test_check_flag_notices_a_stale_file(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path)]) == 0
    assert main(["--check", "--out", str(tmp_path)]) == 0
    victim = tmp_path / "dashboards" / "interventions.json"
    victim.write_text(victim.read_text().replace("Held", "Hold"))
    assert main(["--check", "--out", str(tmp_path)]) == 1


def test_uids_and_panel_ids_are_unique_and_stable() -> None:
    dashboards = _dashboards()
    uids = [d["uid"] for d in dashboards]
    assert sorted(uids) == ["rlkeel-interventions", "rlkeel-run-overview",
                            "rlkeel-service-health"]  # fmt: skip
    assert len({d["title"] for d in dashboards}) == len(dashboards)
    for d in dashboards:
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), d["uid"]
        for p in d["panels"]:
            g = p["gridPos"]
            assert g["x"] + g["w"] <= 24, (d["uid"], p["title"])


def test_every_datasource_named_is_provisioned_by_uid() -> None:
    provisioned = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "rlkeel.yml").read_text())
    by_uid = {ds["uid"]: ds["type"] for ds in provisioned["datasources"]}
    assert len(by_uid) == len(provisioned["datasources"])
    refs = [ref for d in _dashboards() for ref in _datasource_refs(d)]
    assert refs
    for ref in refs:
        assert set(ref) == {"type", "uid"}, f"reference by uid only: {ref}"
        assert by_uid.get(ref["uid"]) == ref["type"], f"not provisioned: {ref}"
    # the secret comes from the environment, never from the file
    pg = next(ds for ds in provisioned["datasources"] if "postgres" in ds["type"])
    assert pg["secureJsonData"]["password"].startswith("$")


def test_dashboard_provider_points_at_the_dashboards() -> None:
    providers = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "rlkeel.yml").read_text())["providers"]
    assert [p["options"]["path"] for p in providers] == ["/var/lib/grafana/dashboards/rlkeel"]


def test_the_panels_the_issue_asks_for() -> None:
    by_uid = {d["uid"]: d for d in _dashboards()}
    titles = {uid: {p["title"] for p in d["panels"]} for uid, d in by_uid.items()}
    overview = by_uid["rlkeel-run-overview"]
    assert {"Reward", "KL to the reference", "Entropy", "Response length", "Truncation",
            "Clip fraction", "Grad norm"} <= titles["rlkeel-run-overview"]  # fmt: skip
    assert [v["name"] for v in overview["templating"]["list"]] == ["run"]
    assert {a["name"] for a in overview["annotations"]["list"]} == {"Findings", "Commands"}
    assert {"Command timeline (run)", "Dropped samples (run)", "Dropped samples",
            "Held commands awaiting approval"} <= titles["rlkeel-interventions"]  # fmt: skip
    assert {"Report latency", "Throughput", "Errors", "Error ratio",
            "Webhook deliveries"} <= titles["rlkeel-service-health"]  # fmt: skip


def test_every_promql_expression_parses_and_names_exported_metrics(tmp_path: Path) -> None:
    queries = [q for q in dashboard_queries() if q.kind == "promql"]
    exprs = [substitute_promql(q.text, run="r", rate_interval="1m", range_="1h") for q in queries]
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"rlkeel_dashboard_expr_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump(rules))
    promtool = shutil.which("promtool")
    assert promtool
    r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    used = {m for e in exprs for m in re.findall(r"\brlkeel_[a-z_]+\b", e)}
    assert used <= exported_metric_names(), used - exported_metric_names()
