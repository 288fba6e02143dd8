"""The Prometheus config and alert rules under dashboards/prometheus are valid (promtool), the
alerts fire when they should (promtool's rule unit tests), and name only metrics we export."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from rlkeel.server.metrics import ServiceMetrics
from rlkeel.server.metrics.run_state import RunState, state_families

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "dashboards" / "prometheus"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is required"
    return subprocess.run([promtool, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def exported_metric_names() -> set[str]:
    """Every sample name the service can expose (histogram and counter suffixes included)."""
    names: set[str] = set()
    families = list(ServiceMetrics().registry.collect()) + list(state_families(RunState({}, [], 0)))
    for family in families:
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
    return names


def test_config_is_valid() -> None:
    r = _promtool("check", "config", "prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_rules_are_valid() -> None:
    r = _promtool("check", "rules", "rules/rlkeel.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_alerts_fire_when_they_should() -> None:
    r = _promtool("test", "rules", "tests/rlkeel_rules_test.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_config_loads_the_rules_and_scrapes_the_server() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert config["rule_files"] == ["rules/rlkeel.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "rlkeel" and job["metrics_path"] == "/metrics"


@pytest.mark.parametrize("alert", ["RlkeelRunSilent", "RlkeelHighSeverityFinding",
                                   "RlkeelWebhookDeliveriesFailing"])  # fmt: skip
def test_the_required_alerts_exist_and_are_unit_tested(alert: str) -> None:
    rules = yaml.safe_load((PROMETHEUS_DIR / "rules" / "rlkeel.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert alert in names
    tests = yaml.safe_load((PROMETHEUS_DIR / "tests" / "rlkeel_rules_test.yml").read_text())
    fired = {c["alertname"] for t in tests["tests"] for c in t["alert_rule_test"] if c["exp_alerts"]}
    assert alert in fired


def test_rules_name_only_exported_metrics() -> None:
    rules = yaml.safe_load((PROMETHEUS_DIR / "rules" / "rlkeel.yml").read_text())
    exprs = " ".join(r["expr"] for g in rules["groups"] for r in g["rules"])
    used = set(re.findall(r"\brlkeel_[a-z_]+\b", exprs))
    assert used and used <= exported_metric_names(), used - exported_metric_names()


def test_readme_lists_every_metric() -> None:
    readme = (PROMETHEUS_DIR.parents[1] / "README.md").read_text()
    families = list(ServiceMetrics().registry.collect()) + list(state_families(RunState({}, [], 0)))
    missing = []
    for family in families:
        name = family.name + ("_total" if family.type == "counter" else "")
        if f"`{name}`" not in readme:
            missing.append(name)
    assert missing == [], f"metrics missing from the README: {missing}"
