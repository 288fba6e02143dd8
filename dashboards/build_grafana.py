"""Generate the Grafana dashboards and provisioning files under dashboards/grafana/.

    python -m rlkeel.dashboards.build_grafana           # write them
    python -m rlkeel.dashboards.build_grafana --check   # exit 1 when the committed files differ

The JSON is generated (not hand-edited) so uids, datasource references and queries stay
consistent; a test checks that the committed files are what this module writes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rlkeel.client.schemas import CANONICAL_STEP_METRICS
from rlkeel.dashboards.grafana_model import (
    POSTGRES,
    PROMETHEUS,
    Json,
    dashboard,
    layout,
    promql,
    run_variable,
    sql,
    sql_annotation,
    stat,
    table,
    timeseries,
)

GRAFANA_DIR = Path(__file__).resolve().parent / "grafana"
RATE = "$__rate_interval"


def _per_step(title: str, columns: list[str], description: str, unit: str = "short") -> Json:
    """A step metric of the picked run, one point per step (the update report carries the
    rollout's metrics too)."""
    unknown = set(columns) - set(CANONICAL_STEP_METRICS)
    assert not unknown, f"not step columns: {unknown}"
    query = (f"SELECT created_at AS time, {', '.join(columns)} FROM steps "  # noqa: S608
             "WHERE run_id = '$run' AND phase = 'update' AND $__timeFilter(created_at) "
             "ORDER BY created_at")  # fmt: skip
    return timeseries(title, [sql(query)], description, unit=unit)


def run_overview() -> Json:
    live = [
        stat("Reward", promql('rlkeel_run_reward_mean{run="$run"}', instant=True),
             "Mean reward of the latest report (Prometheus)."),
        stat("KL", promql('rlkeel_run_kl_mean{run="$run"}', instant=True),
             "Mean per-token KL to the reference, latest report."),
        stat("Entropy", promql('rlkeel_run_entropy_mean{run="$run"}', instant=True),
             "Mean per-token entropy, latest report.",
             thresholds=[(None, "red"), (0.06, "green")]),
        stat("Grad norm", promql('rlkeel_run_grad_norm{run="$run"}', instant=True),
             "Gradient norm of the latest update."),
        stat("Dropped", promql('rlkeel_run_dropped_ratio{run="$run"}', instant=True),
             "Share of the latest rollout dropped by the verdict.", unit="percentunit"),
        stat("Last step", promql('rlkeel_run_last_step{run="$run"}', instant=True),
             "Latest step the run reported."),
        stat("Since last report",
             promql('time() - rlkeel_run_last_report_timestamp_seconds{run="$run"}',
                    instant=True),
             "Seconds since the run's last report (alert RlkeelRunSilent past 10 minutes).",
             unit="s", thresholds=[(None, "green"), (120, "orange"), (600, "red")]),
    ]  # fmt: skip
    curves = [
        _per_step("Reward", ["reward_mean", "reward_min", "reward_max"],
                  "Mean, min and max reward per step."),
        _per_step("KL to the reference", ["kl_mean", "kl_max"], "Per-token KL, mean and max."),
        _per_step("Entropy", ["entropy_mean"], "Mean per-token entropy (collapse: toward 0)."),
        _per_step("Response length", ["length_mean", "length_max"], "Response length in tokens."),
        _per_step("Truncation", ["truncation_rate"], "Share of responses cut at the length limit.",
                  unit="percentunit"),
        _per_step("Clip fraction", ["clip_frac", "clip_frac_low", "clip_frac_high"],
                  "Share of tokens whose importance ratio was clipped.", unit="percentunit"),
        _per_step("Grad norm", ["grad_norm"], "Gradient norm per update."),
        _per_step("Positive and dropped share", ["positive_frac", "dropped_frac"],
                  "Share of samples with a positive reward; share dropped from the batch.",
                  unit="percentunit"),
    ]  # fmt: skip
    findings = table("Findings", sql("""
        SELECT created_at AS time, step, detector, severity, status, message FROM findings
        WHERE run_id = '$run' AND $__timeFilter(created_at) ORDER BY created_at DESC LIMIT 500
        """, table=True), "Detector findings of the run, newest first.")  # fmt: skip
    commands = table("Commands", sql("""
        SELECT created_at AS time, id, kind, origin, status, effective_step, applied_step,
               reason->>'text' AS reason
        FROM commands WHERE run_id = '$run' AND $__timeFilter(created_at)
        ORDER BY created_at DESC LIMIT 500
        """, table=True), "Commands to the run and where each one stands.")  # fmt: skip
    annotations = [
        sql_annotation("Findings", """
            SELECT created_at AS time, detector || ' (' || severity || ', step ' || step
                   || '): ' || message AS text, detector || ',' || severity AS tags
            FROM findings WHERE run_id = '$run' AND $__timeFilter(created_at)
            ORDER BY created_at""", "orange"),
        sql_annotation("Commands", """
            SELECT created_at AS time, kind || ' by ' || origin || ', now ' || status AS text,
                   kind || ',' || origin AS tags
            FROM commands WHERE run_id = '$run' AND $__timeFilter(created_at)
            ORDER BY created_at""", "purple"),
    ]  # fmt: skip
    panels = layout([(4, live), (8, curves[0:2]), (8, curves[2:4]), (8, curves[4:6]),
                     (8, curves[6:8]), (9, [findings, commands])])  # fmt: skip
    return dashboard("rlkeel-run-overview", "rlkeel · Run overview",
                     "One run: live values from Prometheus, per-step curves, findings and "
                     "commands from PostgreSQL (also as annotations).", panels,
                     variables=[run_variable()], annotations=annotations)  # fmt: skip


def interventions() -> Json:
    stats = [
        stat("Held for approval", promql("sum(rlkeel_run_commands_held)", instant=True),
             "Commands of running runs waiting for an operator (approve/reject).",
             thresholds=[(None, "green"), (1, "orange")]),
        stat("Commands issued", promql(
            'sum(increase(rlkeel_commands_total{status=~"pending|held"}[$__range]))',
            instant=True), "Commands issued in the time range, by policy and operators."),
        stat("Samples dropped", promql("sum(increase(rlkeel_samples_dropped_total[$__range]))",
                                       instant=True), "Samples dropped by verdicts."),
        stat("Steps skipped", promql("sum(increase(rlkeel_steps_skipped_total[$__range]))",
                                     instant=True), "Rollouts whose whole step was skipped."),
    ]  # fmt: skip
    rates = [
        timeseries("Command transitions", [promql(
            f"sum by (status) (increase(rlkeel_commands_total[{RATE}]))", "{{status}}")],
            "Commands entering each status (issued, delivered, applied, held, ...).",
            bars=True, stack=True),
        timeseries("Dropped samples", [
            promql(f"sum(rate(rlkeel_samples_dropped_total[{RATE}]))", "dropped"),
            promql(f"sum(rate(rlkeel_samples_total[{RATE}]))", "received")],
            "Samples per second, all runs.", unit="reqps"),
        timeseries("Dropped per step (run)", [sql("""
            SELECT created_at AS time, jsonb_array_length(verdict->'drop') AS dropped,
                   sample_count AS samples
            FROM steps WHERE run_id = '$run' AND phase = 'rollout' AND $__timeFilter(created_at)
            ORDER BY created_at""")], "Samples the verdict dropped at each step of the run.",
            bars=True),
    ]  # fmt: skip
    held = table("Held commands awaiting approval", sql("""
        SELECT c.created_at AS time, c.id, r.name AS run, c.kind, c.params::text AS params,
               c.reason->>'text' AS reason
        FROM commands c JOIN runs r ON r.id = c.run_id
        WHERE c.status = 'held' ORDER BY c.created_at""", table=True),
        "All runs: approve with `rlkeel approve ID`, refuse with `rlkeel reject ID`.")  # fmt: skip
    timeline = table("Command timeline (run)", sql("""
        SELECT e.at AS time, c.id AS command, c.kind, c.origin, e.from_status, e.to_status,
               e.actor, e.detail
        FROM command_events e JOIN commands c ON c.id = e.command_id
        WHERE c.run_id = '$run' AND $__timeFilter(e.at) ORDER BY e.at DESC, e.id DESC LIMIT 500
        """, table=True), "Every status change of the run's commands, newest first.")  # fmt: skip
    dropped = table("Dropped samples (run)", sql("""
        SELECT step, sample_id, group_id, length, truncated, reward, flags::text AS flags
        FROM samples WHERE run_id = '$run' AND dropped ORDER BY step DESC, id DESC LIMIT 200
        """, table=True), "The run's latest dropped samples and the detectors that flagged "
        "them.")  # fmt: skip
    audit = table("Operator actions", sql("""
        SELECT at AS time, actor, role, action, target_type, target_id FROM audit_log
        WHERE $__timeFilter(at) ORDER BY at DESC LIMIT 200""", table=True),
        "Overrides and settings changes, all runs (GET /v1/audit has before/after).")  # fmt: skip
    panels = layout([(4, stats), (8, rates), (8, [held, timeline]), (8, [dropped, audit])])
    return dashboard("rlkeel-interventions", "rlkeel · Interventions",
                     "What the service and operators did: commands, approvals, dropped samples.",
                     panels, variables=[run_variable()])  # fmt: skip


def service_health() -> Json:
    stats = [
        stat("Server", promql('up{job="rlkeel"}', instant=True), "1: Prometheus scrapes it.",
             thresholds=[(None, "red"), (1, "green")]),
        stat("Database", promql("rlkeel_database_up", instant=True),
             "1: the server's database answered the last scrape.",
             thresholds=[(None, "red"), (1, "green")]),
        stat("Running runs", promql('sum(rlkeel_runs{status="running"})', instant=True),
             "Runs whose status is running."),
        stat("Webhook outbox", promql("sum(rlkeel_webhook_outbox_pending_deliveries)",
                                      instant=True),
             "Deliveries waiting for a first try or in back-off.",
             thresholds=[(None, "green"), (100, "orange")]),
    ]  # fmt: skip
    latency = [
        timeseries("Report latency", [
            promql(f"histogram_quantile(0.5, sum by (le, phase) "
                   f"(rate(rlkeel_report_duration_seconds_bucket[{RATE}])))", "p50 {{phase}}"),
            promql(f"histogram_quantile(0.99, sum by (le, phase) "
                   f"(rate(rlkeel_report_duration_seconds_bucket[{RATE}])))", "p99 {{phase}}")],
            "Time to answer a step report, by phase.", unit="s"),
        timeseries("Throughput", [
            promql(f'sum by (phase) (rate(rlkeel_reports_total{{result="stored"}}[{RATE}]))',
                   "{{phase}} reports"),
            promql(f"sum(rate(rlkeel_samples_total[{RATE}]))", "samples")],
            "Stored reports and samples per second.", unit="reqps"),
    ]  # fmt: skip
    errors = [
        timeseries("Error ratio", [promql(
            f'(sum(rate(rlkeel_http_responses_total{{code=~"5.."}}[{RATE}])) or vector(0)) '
            f"/ sum(rate(rlkeel_http_responses_total[{RATE}]))", "5xx share")],
            "Share of responses that were server errors.", unit="percentunit"),
        timeseries("Errors", [
            promql(f'sum by (phase) (rate(rlkeel_reports_total{{result="error"}}[{RATE}]))',
                   "failed {{phase}} reports"),
            promql(f"sum(rate(rlkeel_database_errors_total[{RATE}]))", "database errors")],
            "Failed reports (refused or failed) and database errors per second.", unit="reqps"),
        timeseries("Responses by code", [promql(
            f"sum by (code) (rate(rlkeel_http_responses_total[{RATE}]))", "{{code}}")],
            "HTTP responses per second by status code.", unit="reqps"),
    ]  # fmt: skip
    webhooks = [
        timeseries("Webhook deliveries", [promql(
            f"sum by (result) (rate(rlkeel_webhook_deliveries_total[{RATE}]))", "{{result}}")],
            "Delivery attempts per second: delivered, failed (will retry), dead (gave up).",
            unit="reqps"),
        timeseries("Webhook outbox", [promql("sum(rlkeel_webhook_outbox_pending_deliveries)",
                                             "pending")],
                   "Deliveries waiting for their first attempt or in back-off."),
        timeseries("Findings by severity", [promql(
            f"sum by (severity) (increase(rlkeel_findings_total[{RATE}]))", "{{severity}}")],
            "Detector findings raised, all runs.", bars=True, stack=True),
    ]  # fmt: skip
    panels = layout([(4, stats), (8, latency), (8, errors), (8, webhooks)])
    return dashboard("rlkeel-service-health", "rlkeel · Service health",
                     "The service itself: report latency, throughput, errors, webhooks.",
                     panels, time_from="now-1h")  # fmt: skip


DASHBOARDS = {"run-overview.json": run_overview, "interventions.json": interventions,
              "service-health.json": service_health}  # fmt: skip

DATASOURCES_YAML = f"""\
# Generated by `python -m rlkeel.dashboards.build_grafana`; do not edit by hand.
# Grafana fills in the dollar-sign variables from its environment (docker-compose.yml sets them).
apiVersion: 1
datasources:
  - name: Prometheus
    uid: {PROMETHEUS["uid"]}
    type: {PROMETHEUS["type"]}
    access: proxy
    url: http://prometheus:9090
    isDefault: true
    editable: false
  - name: rlkeel PostgreSQL
    uid: {POSTGRES["uid"]}
    type: {POSTGRES["type"]}
    access: proxy
    url: postgres:5432
    user: $RLKEEL_READER_USER
    editable: false
    jsonData:
      database: $POSTGRES_DB
      sslmode: disable
      postgresVersion: 1500
      timescaledb: false
    secureJsonData:
      password: $RLKEEL_READER_PASSWORD
"""

DASHBOARDS_YAML = """\
# Generated by `python -m rlkeel.dashboards.build_grafana`; do not edit by hand.
apiVersion: 1
providers:
  - name: rlkeel
    folder: rlkeel
    type: file
    disableDeletion: true
    allowUiUpdates: false
    updateIntervalSeconds: 30
    options:
      path: /var/lib/grafana/dashboards/rlkeel
"""


def render() -> dict[Path, str]:
    """Every generated file (relative to dashboards/grafana) and its content."""
    files = {
        Path("provisioning/datasources/rlkeel.yml"): DATASOURCES_YAML,
        Path("provisioning/dashboards/rlkeel.yml"): DASHBOARDS_YAML,
    }
    for name, build in DASHBOARDS.items():
        files[Path("dashboards") / name] = json.dumps(build(), indent=2, sort_keys=True) + "\n"
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when the files on disk differ from what would be written")
    parser.add_argument("--out", type=Path, default=GRAFANA_DIR, help="target folder")
    args = parser.parse_args(argv)  # fmt: skip
    stale = []
    for rel, content in render().items():
        path = args.out / rel
        current = path.read_text() if path.exists() else None
        if current == content:
            continue
        stale.append(str(rel))
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    if args.check and stale:
        print(f"out of date (run python -m rlkeel.dashboards.build_grafana): {stale}",
              file=sys.stderr)  # fmt: skip
        return 1
    for name in stale:
        print(f"wrote {args.out / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
