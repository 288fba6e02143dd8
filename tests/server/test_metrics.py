"""`GET /metrics`: valid exposition (promtool), figures that match the store, run series that
end with their run, one registry per app."""

from __future__ import annotations

import math
import shutil
import subprocess

import httpx
import pytest
from sqlalchemy import func, select, update

from rlkeel.server.app import create_app
from rlkeel.server.db.models import (
    CommandEvent,
    CommandRecord,
    FindingRecord,
    Run,
    SampleRecord,
    Webhook,
    WebhookDelivery,
)
from rlkeel.server.settings import Settings
from tests.server.helpers import RUN, rollout
from tests.server.metrics_scrape import label_values, parse_exposition, total, value
from tests.server.traces import troubled_run


async def _scrape(http: httpx.AsyncClient, **headers: str) -> str:
    r = await http.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return r.text


async def _troubled(http: httpx.AsyncClient, steps: int = 60) -> str:
    """Register a run, send a troubled trace, acknowledge every command it receives."""
    run = (await http.post("/v1/runs", json=RUN)).json()["id"]
    for body in troubled_run(steps=steps, samples=16):
        r = await http.post(f"/v1/runs/{run}/steps", json=body)
        assert r.status_code == 201, r.text
        for command in r.json()["commands"]:
            ack = await http.post(f"/v1/commands/{command['id']}/ack",
                                  json={"status": "applied", "step": body["step"]})  # fmt: skip
            assert ack.status_code == 200, ack.text
    return str(run)


def test_promtool_accepts_a_real_scrape(app, tokens) -> None:  # type: ignore[no-untyped-def]
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is required"

    async def scrape() -> str:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t",
            headers={"Authorization": f"Bearer {tokens.trainer}"},
        ) as http:  # fmt: skip
            await _troubled(http, steps=50)
            await http.get("/v1/nowhere")
            return await _scrape(http)

    import asyncio

    text = asyncio.run(scrape())
    assert "rlkeel_findings_total{" in text and 'rlkeel_run_reward_mean{run="' in text
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    # promtool prints lint problems and exits non-zero on any of them.
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == ""


async def test_counters_match_what_the_store_holds(app, http) -> None:  # type: ignore[no-untyped-def]
    run = await _troubled(http)
    series = parse_exposition(await _scrape(http))
    with app.state.session_factory() as s:
        by_detector = dict(s.execute(
            select(FindingRecord.detector, func.count()).group_by(FindingRecord.detector)).all())
        transitions = s.execute(
            select(CommandRecord.kind, CommandRecord.origin, CommandEvent.to_status, func.count())
            .join(CommandRecord, CommandRecord.id == CommandEvent.command_id)
            .group_by(CommandRecord.kind, CommandRecord.origin, CommandEvent.to_status)).all()
        dropped = s.scalar(select(func.count()).select_from(SampleRecord)
                           .where(SampleRecord.dropped.is_(True)))
        samples = s.scalar(select(func.count()).select_from(SampleRecord))
    assert by_detector and transitions and dropped, "the trace must raise findings and commands"
    for detector, n in by_detector.items():
        assert total(series, "rlkeel_findings_total", detector=detector) == n, detector
    assert total(series, "rlkeel_findings_total") == sum(by_detector.values())
    for kind, origin, status, n in transitions:
        assert value(series, "rlkeel_commands_total", kind=kind, origin=origin, status=status) == n
    for status in ("pending", "delivered", "applied"):
        assert total(series, "rlkeel_commands_total", status=status) > 0, status
    assert value(series, "rlkeel_samples_dropped_total") == dropped
    assert value(series, "rlkeel_samples_total") == samples
    assert value(series, "rlkeel_reports_total", phase="rollout", result="stored") == 60
    assert value(series, "rlkeel_report_duration_seconds_count", phase="update") == 60
    # a repeat is answered from the store and counted as such, not as new samples
    again = await http.post(f"/v1/runs/{run}/steps", json=troubled_run(steps=60, samples=16)[0])
    assert again.status_code == 200
    series = parse_exposition(await _scrape(http))
    assert value(series, "rlkeel_reports_total", phase="rollout", result="repeat") == 1
    assert value(series, "rlkeel_samples_total") == samples


async def test_run_series_show_the_latest_report_and_end_with_the_run(app, http) -> None:  # type: ignore[no-untyped-def]
    run = (await http.post("/v1/runs", json=RUN)).json()["id"]
    idle = (await http.post("/v1/runs", json={**RUN, "name": "idle"})).json()["id"]
    await http.post(f"/v1/runs/{run}/steps",
                    json=rollout(0, n=8, metrics={"reward_mean": 0.25, "kl_mean": "NaN"}))  # fmt: skip
    await http.post(f"/v1/runs/{run}/steps", json={
        "step": 0, "phase": "update", "algorithm": "grpo",
        "metrics": {"grad_norm": 3.5, "clip_frac": 0.125, "kl_mean": 0.02}})  # fmt: skip
    await http.post(f"/v1/runs/{run}/steps", json=rollout(1, n=8, metrics={"reward_mean": 0.75}))
    series = parse_exposition(await _scrape(http))
    assert value(series, "rlkeel_run_reward_mean", run=run) == 0.75
    assert value(series, "rlkeel_run_grad_norm", run=run) == 3.5  # from the update of step 0
    assert value(series, "rlkeel_run_clip_ratio", run=run) == 0.125
    assert value(series, "rlkeel_run_kl_mean", run=run) == 0.02  # newer than step 0's NaN
    assert value(series, "rlkeel_run_dropped_ratio", run=run) == 0.0
    assert value(series, "rlkeel_run_last_step", run=run) == 1
    assert value(series, "rlkeel_run_info", run=run, name=RUN["name"], project="default",
                 algorithm="grpo", automation="auto") == 1  # fmt: skip
    assert value(series, "rlkeel_run_last_report_timestamp_seconds", run=idle) is not None
    assert value(series, "rlkeel_run_last_step", run=idle) is None  # no report yet
    assert value(series, "rlkeel_runs", status="running") == 2

    # Non-finite values are data: the latest NaN is exposed as NaN.
    await http.post(f"/v1/runs/{run}/steps", json={
        "step": 1, "phase": "update", "algorithm": "grpo", "metrics": {"grad_norm": "Infinity"}})  # fmt: skip
    series = parse_exposition(await _scrape(http))
    assert value(series, "rlkeel_run_grad_norm", run=run) == math.inf

    with app.state.session_factory.begin() as s:
        s.execute(update(Run).where(Run.id == run).values(status="finished"))
    series = parse_exposition(await _scrape(http))
    assert not [k for k in series if ("run", run) in k[1]], "a finished run keeps its series"
    assert value(series, "rlkeel_run_info", run=idle, name="idle", project="default",
                 algorithm="grpo", automation="auto") == 1  # fmt: skip
    assert value(series, "rlkeel_runs", status="finished") == 1


async def test_counters_start_at_zero_so_the_first_event_has_an_increase(http) -> None:  # type: ignore[no-untyped-def]
    # Prometheus sees no increase() in a counter series that first appears at 1: the first
    # high-severity finding of a detector would never fire RlkeelHighSeverityFinding.
    series = parse_exposition(await _scrape(http))
    assert value(series, "rlkeel_findings_total", detector="entropy_floor", severity="high") == 0
    assert value(series, "rlkeel_commands_total", kind="rollback", origin="policy",
                 status="held") == 0  # fmt: skip
    assert value(series, "rlkeel_webhook_deliveries_total", result="dead") == 0


async def test_only_committed_findings_are_counted(app, http) -> None:  # type: ignore[no-untyped-def]
    run = (await http.post("/v1/runs", json=RUN)).json()["id"]

    def finding() -> FindingRecord:
        return FindingRecord(run_id=run, step=0, phase="update", detector="kl_spike",
                             severity="high", message="test")  # fmt: skip

    with app.state.session_factory() as s:
        s.add(finding())
        s.flush()
        s.rollback()
    series = parse_exposition(await _scrape(http))
    assert total(series, "rlkeel_findings_total") == 0
    with app.state.session_factory.begin() as s:
        s.add(finding())
    series = parse_exposition(await _scrape(http))
    assert value(series, "rlkeel_findings_total", detector="kl_spike", severity="high") == 1


async def test_held_commands_and_operator_origin(app, http, tokens) -> None:  # type: ignore[no-untyped-def]
    op = {"Authorization": f"Bearer {tokens.operator}"}
    run = (await http.post("/v1/runs", json=RUN)).json()["id"]
    r = await http.post(f"/v1/runs/{run}/commands", headers=op,
                        json={"kind": "scale_lr", "params": {"factor": 0.5}, "reason": "by hand"})  # fmt: skip
    assert r.status_code == 201, r.text
    await http.put(f"/v1/runs/{run}/automation", headers=op, json={"mode": "approve"})
    await _feed_until_held(http, run)
    series = parse_exposition(await _scrape(http))
    assert value(series, "rlkeel_commands_total", kind="scale_lr", origin="operator",
                 status="pending") == 1  # fmt: skip
    held = value(series, "rlkeel_run_commands_held", run=run)
    assert held is not None and held >= 1
    assert total(series, "rlkeel_commands_total", origin="policy", status="held") == held


async def _feed_until_held(http: httpx.AsyncClient, run: str) -> None:
    for body in troubled_run(steps=60, samples=16):
        await http.post(f"/v1/runs/{run}/steps", json=body)
        held = await http.get(f"/v1/runs/{run}/commands", params={"status": "held"})
        if held.json():
            return
    pytest.fail("the troubled trace raised no command to hold")


async def test_outbox_depth_counts_pending_deliveries(app, http) -> None:  # type: ignore[no-untyped-def]
    series = parse_exposition(await _scrape(http))
    assert value(series, "rlkeel_webhook_outbox_pending_deliveries") == 0  # empty table
    with app.state.session_factory.begin() as s:
        hook = Webhook(url="http://127.0.0.1:9/", events=["finding.raised"], secrets=[])
        s.add(hook)
        s.flush()
        for i, status in enumerate(["pending", "pending", "delivered", "dead", "pending"]):
            s.add(WebhookDelivery(webhook_id=hook.id, message_id=f"msg_{i}",
                                  event_type="finding.raised", payload={}, status=status))  # fmt: skip
    series = parse_exposition(await _scrape(http))
    assert value(series, "rlkeel_webhook_outbox_pending_deliveries") == 3


async def test_webhook_deliveries_by_result(app, http) -> None:  # type: ignore[no-untyped-def]
    m = app.state.metrics
    for result in ("delivered", "failed", "failed", "dead"):
        m.observe_webhook_delivery(result)
    with pytest.raises(ValueError, match="not one of"):
        m.observe_webhook_delivery("lost")
    series = parse_exposition(await _scrape(http))
    got = {r: value(series, "rlkeel_webhook_deliveries_total", result=r)
           for r in ("delivered", "failed", "dead")}  # fmt: skip
    assert got == {"delivered": 1, "failed": 2, "dead": 1}


async def test_http_responses_by_route_template(app, http) -> None:  # type: ignore[no-untyped-def]
    run = (await http.post("/v1/runs", json=RUN)).json()["id"]
    await http.get(f"/v1/runs/{run}")
    await http.get("/v1/runs/nope")
    await http.get("/definitely/not/here")
    series = parse_exposition(await _scrape(http))
    got = lambda **ls: value(series, "rlkeel_http_responses_total", **ls)  # noqa: E731
    assert got(route="/v1/runs/{run}", method="GET", code="200") == 1
    assert got(route="/v1/runs/{run}", method="GET", code="404") == 1
    assert got(route="unmatched", method="GET", code="404") == 1
    assert not label_values(series, "rlkeel_http_responses_total", "route") & {f"/v1/runs/{run}"}


async def test_token_when_configured_and_off_switch(pg_database) -> None:  # type: ignore[no-untyped-def]
    guarded = create_app(Settings(database_url=pg_database.url, metrics_token="s3cret"))
    off = create_app(Settings(database_url=pg_database.url, metrics_enabled=False))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guarded),
                                     base_url="http://t") as c:  # fmt: skip
            assert (await c.get("/metrics")).status_code == 401
            r = await c.get("/metrics", headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401 and r.json()["error"] == "Unauthorized"
            r = await c.get("/metrics", headers={"Authorization": "Bearer s3cret"})
            assert r.status_code == 200 and "rlkeel_database_up 1.0" in r.text
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=off),
                                     base_url="http://t") as c:  # fmt: skip
            assert (await c.get("/metrics")).status_code == 404
        assert off.state.metrics is None
    finally:
        guarded.state.engine.dispose()
        off.state.engine.dispose()


async def test_each_app_has_its_own_registry(app, http, pg_database) -> None:  # type: ignore[no-untyped-def]
    other = create_app(Settings(database_url=pg_database.url))
    try:
        assert other.state.metrics.registry is not app.state.metrics.registry
        await http.post("/v1/runs/none/steps", json=rollout(0))  # 404: counted as an error
        assert app.state.metrics.reports.labels(phase="rollout", result="error")._value.get() == 1
        assert other.state.metrics.reports.labels(phase="rollout", result="error")._value.get() == 0
    finally:
        other.state.engine.dispose()


async def test_database_down_still_scrapes_and_counts_the_error() -> None:
    down = create_app(Settings(database_url="postgresql://postgres@127.0.0.1:1/nowhere",
                               db_connect_timeout_s=1))  # fmt: skip
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=down),
                                     base_url="http://t") as c:  # fmt: skip
            series = parse_exposition(await _scrape(c))
            assert value(series, "rlkeel_database_up") == 0
            assert value(series, "rlkeel_run_reward_mean") is None
            r = await c.get("/v1/runs", headers={"Authorization": "Bearer rlk_ab_cd"})
            assert r.status_code == 503, r.text
            series = parse_exposition(await _scrape(c))
            # the first scrape's failure, the request's, and this scrape's (counted after the
            # counter was written out)
            assert value(series, "rlkeel_database_errors_total") == 2
            assert value(series, "rlkeel_http_responses_total", route="/v1/runs", method="GET",
                         code="503") == 1  # fmt: skip
    finally:
        down.state.engine.dispose()
