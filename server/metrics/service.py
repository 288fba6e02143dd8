"""The service's own Prometheus metrics: one registry per app instance (`app.state.metrics`).

Events (reports, findings, command transitions, dropped samples, database errors, webhook
deliveries) are counted in-process as they happen. The state of runs (latest training metrics,
last report time) and the webhook outbox depth are read from the database at scrape time by
`RunStateCollector`, so they survive a restart and a series disappears when its run stops.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from rlkeel.client.schemas import (
    CommandKind,
    CommandOrigin,
    CommandStatus,
    Severity,
    StepReport,
    Verdict,
)
from rlkeel.server.detectors.catalog import DETECTORS

WEBHOOK_RESULTS = ("delivered", "failed", "dead")
"""`failed`: one attempt failed and a retry is scheduled; `dead`: no more retries."""

REPORT_RESULTS = ("stored", "repeat", "error")

# Latency buckets for a step report: a small rollout is a few ms, 4k samples a few hundred.
REPORT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    """Counters and histograms of one app instance, and the registry that exposes them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # `*_created` series double the exposition and nothing here reads them. (The switch is
        # process-wide in prometheus_client; the service is the only user in its process.)
        disable_created_metrics()
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.reports = Counter(
            "rlkeel_reports_total", "Step reports received, by phase and result "
            "(stored, repeat: an idempotent repeat answered from the store, error).",
            ["phase", "result"], registry=r,
        )  # fmt: skip
        self.report_duration = Histogram(
            "rlkeel_report_duration_seconds",
            "Time to answer a step report (parse, analyse, store, verdict), by phase.",
            ["phase"], buckets=REPORT_BUCKETS, registry=r,
        )  # fmt: skip
        self.samples = Counter(
            "rlkeel_samples_total", "Samples received in stored rollout reports.", registry=r
        )
        self.samples_dropped = Counter(
            "rlkeel_samples_dropped_total", "Samples dropped from batches by verdicts.",
            registry=r,
        )  # fmt: skip
        self.steps_skipped = Counter(
            "rlkeel_steps_skipped_total", "Rollout verdicts that skipped the whole step.",
            registry=r,
        )  # fmt: skip
        self.findings = Counter(
            "rlkeel_findings_total", "Detector findings raised, by detector and severity.",
            ["detector", "severity"], registry=r,
        )  # fmt: skip
        self.commands = Counter(
            "rlkeel_commands_total", "Commands entering a status (issued as pending or held, "
            "delivered, applied, ...), by kind, origin and status.",
            ["kind", "origin", "status"], registry=r,
        )  # fmt: skip
        self.database_errors = Counter(
            "rlkeel_database_errors_total",
            "Requests that failed on a database error (unavailable, timeout, lost connection).",
            registry=r,
        )  # fmt: skip
        self.webhook_deliveries = Counter(
            "rlkeel_webhook_deliveries_total", "Webhook delivery attempts, by result "
            "(delivered; failed: a retry is scheduled; dead: no retries left).",
            ["result"], registry=r,
        )  # fmt: skip
        self.http_responses = Counter(
            "rlkeel_http_responses_total",
            "HTTP responses by route template, method and status code.",
            ["route", "method", "code"], registry=r,
        )  # fmt: skip
        # Every known label combination starts at zero. A counter series that first appears
        # at 1 has no increase() in Prometheus: the first high-severity finding of a detector
        # would never fire the alert.
        for spec in DETECTORS:
            for severity in Severity:
                self.findings.labels(detector=spec.name, severity=severity.value)
        for kind in CommandKind:
            for origin in CommandOrigin:
                for status in CommandStatus:
                    self.commands.labels(kind=kind.value, origin=origin.value, status=status.value)
        for result in WEBHOOK_RESULTS:
            self.webhook_deliveries.labels(result=result)
        for phase in ("rollout", "update"):
            self.report_duration.labels(phase=phase)
            for rresult in REPORT_RESULTS:
                self.reports.labels(phase=phase, result=rresult)

    # -- events ---------------------------------------------------------------------------

    def observe_report(
        self, report: StepReport, verdict: Verdict, *, created: bool, seconds: float
    ) -> None:
        """One answered step report (`created`: stored now, not a repeat)."""
        phase = report.phase.value
        self.report_duration.labels(phase=phase).observe(seconds)
        self.reports.labels(phase=phase, result="stored" if created else "repeat").inc()
        if not created:
            return
        if report.samples:
            self.samples.inc(len(report.samples))
        if verdict.drop:
            self.samples_dropped.inc(len(verdict.drop))
        if verdict.skip_step:
            self.steps_skipped.inc()

    def observe_report_error(self, phase: str, seconds: float) -> None:
        """A report that was refused or failed (`unparsed` when its phase is unknown)."""
        self.report_duration.labels(phase=phase).observe(seconds)
        self.reports.labels(phase=phase, result="error").inc()

    def observe_committed(
        self,
        findings: Iterable[tuple[str, str]],
        command_statuses: Iterable[tuple[str, str, str]],
    ) -> None:
        """Findings (detector, severity) and command transitions (kind, origin, status) that a
        transaction committed."""
        for detector, severity in findings:
            self.findings.labels(detector=detector, severity=severity).inc()
        for kind, origin, status in command_statuses:
            self.commands.labels(kind=kind, origin=origin, status=status).inc()

    def observe_database_error(self) -> None:
        self.database_errors.inc()

    def observe_webhook_delivery(self, result: str) -> None:
        """Called by the webhook worker after each attempt (CONTRACTS.md)."""
        if result not in WEBHOOK_RESULTS:
            raise ValueError(f"webhook result {result!r} is not one of {WEBHOOK_RESULTS}")
        self.webhook_deliveries.labels(result=result).inc()

    def observe_http_response(self, route: str, method: str, code: int) -> None:
        self.http_responses.labels(route=route, method=method, code=str(code)).inc()

    # -- exposition -----------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (0.0.4)."""
        return generate_latest(self.registry)
