"""Deliveries reach a real receiver on loopback, signed; failures retry, then go dead."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from rlkeel.server.app import create_app, webhook_worker
from rlkeel.server.auth import Role, create_api_key
from rlkeel.server.commands import service as commands
from rlkeel.server.db.base import utcnow
from rlkeel.server.db.migrate import upgrade
from rlkeel.server.db.models import Run, WebhookDelivery
from rlkeel.server.settings import Settings
from rlkeel.server.webhooks.worker import DeliveryWorker
from tests.server.helpers import RUN, rollout
from tests.server.webhook_helpers import DeliveryCounts, auth, drain, webhook_settings
from tests.server.webhook_receiver import Receiver


@dataclass
class Env:
    app: FastAPI
    client: httpx.AsyncClient
    tokens: dict[str, str]
    worker: DeliveryWorker
    metrics: DeliveryCounts

    async def subscribe(self, receiver: Receiver, **body: Any) -> dict[str, Any]:
        payload = {"url": receiver.url, "events": ["finding.raised", "command.issued",
                   "command.applied", "command.failed", "run.stalled"], "min_severity": "info"}  # fmt: skip
        payload.update(body)
        r = await self.client.post("/v1/webhooks", json=payload, headers=auth(self.tokens["admin"]))
        assert r.status_code == 201, r.text
        receiver.secrets.append(r.json()["secret"])
        return dict(r.json())

    async def run(self) -> str:
        r = await self.client.post("/v1/runs", json=RUN, headers=auth(self.tokens["trainer"]))
        return str(r.json()["id"])

    async def command(self, run: str) -> int:
        r = await self.client.post(f"/v1/runs/{run}/commands", headers=auth(self.tokens["operator"]),
                                   json={"kind": "scale_lr", "params": {"factor": 0.5}})  # fmt: skip
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    def deliveries(self) -> list[WebhookDelivery]:
        with self.app.state.session_factory() as s:
            return list(s.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))


async def _env(settings: Settings) -> AsyncIterator[Env]:
    app = create_app(settings)
    with app.state.session_factory.begin() as session:
        tokens = {r.value: create_api_key(session, role=r, name=r.value) for r in Role}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield Env(app, c, tokens, webhook_worker(app), DeliveryCounts(app.state.metrics))
    app.state.engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
async def env(request, tmp_path) -> AsyncIterator[Env]:  # type: ignore[no-untyped-def]
    if request.param == "postgresql":
        settings = webhook_settings(request.getfixturevalue("settings"))
    else:
        settings = webhook_settings(Settings(database_url=f"sqlite:///{tmp_path / 'w.sqlite'}"))
        upgrade(settings)
    async for e in _env(settings):
        yield e


@pytest.fixture
async def pg_env(settings) -> AsyncIterator[Env]:  # type: ignore[no-untyped-def]
    async for e in _env(webhook_settings(settings)):
        yield e


@pytest.fixture
def receiver() -> Any:
    r = Receiver().start()
    yield r
    r.stop()


async def test_events_arrive_signed_in_the_rlkeel_format(env, receiver) -> None:  # type: ignore[no-untyped-def]
    hook = await env.subscribe(receiver)
    run = await env.run()
    body = rollout(0, n=8)
    body["samples"][3]["reward"] = "NaN"  # sample_nonfinite: a high-severity finding
    r = await env.client.post(f"/v1/runs/{run}/steps", json=body, headers=auth(env.tokens["trainer"]))
    assert r.status_code == 201, r.text
    cmd = await env.command(run)
    await env.client.post(f"/v1/runs/{run}/steps", json=rollout(1, n=4), headers=auth(env.tokens["trainer"]))
    ack = await env.client.post(f"/v1/commands/{cmd}/ack", headers=auth(env.tokens["trainer"]),
                                json={"status": "applied", "step": 1})  # fmt: skip
    assert ack.status_code == 200, ack.text
    n = len(env.deliveries())
    assert n >= 3
    await drain(env.worker, lambda: len(receiver.received) >= n)
    assert receiver.rejected == []
    by_type = {r.body["type"]: r for r in receiver.received}
    assert {"finding.raised", "command.issued", "command.applied"} <= set(by_type)
    finding = by_type["finding.raised"].body
    assert finding["data"]["detector"] == "sample_nonfinite"
    assert finding["data"]["severity"] == "high" and finding["data"]["run"]["id"] == run
    issued = by_type["command.issued"].body["data"]
    assert (issued["command_id"], issued["kind"], issued["origin"]) == (cmd, "scale_lr", "operator")
    assert by_type["command.applied"].body["data"]["applied_step"] == 1
    assert receiver.ids() == {d.message_id: 1 for d in env.deliveries()}
    assert all(d.status == "delivered" and d.attempts == 1 for d in env.deliveries())
    assert env.metrics.results == {"delivered": n}
    log = (await env.client.get(f"/v1/webhooks/{hook['id']}/deliveries",
                                headers=auth(env.tokens["admin"]))).json()  # fmt: skip
    assert [d["status"] for d in log] == ["delivered"] * n
    detail = (await env.client.get(f"/v1/webhooks/{hook['id']}/deliveries/{log[0]['id']}",
                                   headers=auth(env.tokens["admin"]))).json()  # fmt: skip
    assert [a["result"] for a in detail["log"]] == ["delivered"]
    assert detail["log"][0]["status_code"] == 204


async def test_alertmanager_format_and_severity_filter(pg_env, receiver) -> None:  # type: ignore[no-untyped-def]
    env = pg_env
    await env.subscribe(receiver, payload_format="alertmanager", min_severity="high")
    run = await env.run()
    await env.command(run)  # command.issued is 'warning': below the minimum, not sent
    assert env.deliveries() == []
    body = rollout(0, n=8)
    body["samples"][0]["kl"] = "Infinity"
    await env.client.post(f"/v1/runs/{run}/steps", json=body, headers=auth(env.tokens["trainer"]))
    await drain(env.worker, lambda: len(receiver.received) >= 1)
    got = receiver.received[0].body
    assert (got["version"], got["status"], got["truncatedAlerts"]) == ("4", "firing", 0)
    alert = got["alerts"][0]
    assert alert["labels"]["alertname"] == "RlkeelFindingRaised"
    assert alert["labels"]["detector"] == "sample_nonfinite"
    assert (alert["labels"]["severity"], alert["labels"]["run"]) == ("high", run)
    assert alert["status"] == "firing" and alert["endsAt"] == "0001-01-01T00:00:00Z"
    assert got["commonLabels"] == alert["labels"] and got["groupLabels"] == {
        "alertname": "RlkeelFindingRaised"}
    assert alert["annotations"]["summary"] and alert["generatorURL"].endswith(f"/v1/runs/{run}")


async def test_receiver_down_then_back_is_retried_until_delivered(settings) -> None:  # type: ignore[no-untyped-def]
    # back-off of 2.5-5 s: long enough that a loaded machine cannot reach the retry early
    async for env in _env(webhook_settings(settings, webhook_retry_base_s=5.0,
                                           webhook_retry_max_s=5.0)):  # fmt: skip
        await _down_then_back(env)


async def _down_then_back(env: Env) -> None:
    receiver = Receiver()  # not started: connection refused
    await env.subscribe(receiver)
    await env.command(await env.run())
    async with env.worker.http_client() as client:
        assert await env.worker.run_once(client) == ["failed"]
        assert await env.worker.run_once(client) == []  # in back-off: nothing due yet
    (d,) = env.deliveries()
    assert (d.status, d.attempts) == ("pending", 1) and d.next_attempt_at > utcnow()
    assert "ConnectError" in (d.last_error or "")
    receiver.start()
    try:
        await drain(env.worker, lambda: len(receiver.received) >= 1)
    finally:
        receiver.stop()
    (d,) = env.deliveries()
    assert (d.status, d.attempts) == ("delivered", 2)
    assert receiver.ids() == {d.message_id: 1}
    assert env.metrics.results == {"failed": 1, "delivered": 1}


async def test_backoff_grows_then_dead_letter_then_redeliver(settings) -> None:  # type: ignore[no-untyped-def]
    s = webhook_settings(settings, webhook_max_attempts=3, webhook_retry_base_s=0.05)
    async for env in _env(s):
        receiver = Receiver(status=500).start()
        try:
            hook = await env.subscribe(receiver)
            await env.command(await env.run())
            await drain(env.worker, _first_delivery_is(env, "dead"))
            admin = auth(env.tokens["admin"])
            (d,) = env.deliveries()
            assert (d.attempts, d.last_status_code) == (3, 500)
            assert len(receiver.received) == 3 and len(receiver.ids()) == 1  # same webhook-id
            detail = (await env.client.get(f"/v1/webhooks/{hook['id']}/deliveries/{d.id}",
                                           headers=admin)).json()  # fmt: skip
            assert [a["result"] for a in detail["log"]] == ["failed", "failed", "dead"]
            assert env.metrics.results == {"failed": 2, "dead": 1}
            dead = await env.client.get(f"/v1/webhooks/{hook['id']}/deliveries",
                                        params={"status": "dead"}, headers=admin)  # fmt: skip
            assert [x["id"] for x in dead.json()] == [d.id]
            receiver.status = 200
            url = f"/v1/webhooks/{hook['id']}/deliveries/{d.id}/redeliver"
            r = await env.client.post(url, headers=admin)
            assert r.status_code == 200 and r.json()["status"] == "pending", r.text
            assert (await env.client.post(url, headers=admin)).status_code == 409
            await drain(env.worker, _first_delivery_is(env, "delivered"))
            assert len(receiver.received) == 4 and receiver.ids() == {d.message_id: 4}
            assert (await env.client.post(f"/v1/webhooks/{hook['id']}/deliveries/999/redeliver",
                                          headers=admin)).status_code == 404  # fmt: skip
        finally:
            receiver.stop()


def _first_delivery_is(env: Env, status: str) -> Any:
    return lambda: env.deliveries()[0].status == status


def test_retry_schedule_is_exponential_with_bounded_jitter() -> None:
    import random

    from rlkeel.server.webhooks.retry import RetrySchedule

    schedule = RetrySchedule(base_s=5, max_s=600, max_attempts=12)
    assert [schedule.nominal_delay_s(n) for n in range(1, 9)] == [5, 10, 20, 40, 80, 160, 320, 600]
    rng = random.Random(0)
    delays = [schedule.delay_s(3, rng) for _ in range(1000)]
    assert min(delays) >= 10 and max(delays) <= 20 and max(delays) - min(delays) > 5
    assert not schedule.is_exhausted(11) and schedule.is_exhausted(12)


async def test_outbox_rows_commit_and_roll_back_with_the_event(pg_env, receiver) -> None:  # type: ignore[no-untyped-def]
    env = pg_env
    await env.subscribe(receiver)
    run_id = await env.run()
    factory = env.app.state.session_factory
    with factory() as session:
        commands.issue(session, run_id=run_id, kind="stop", params={}, reason={}, origin="operator",
                       held=False, effective_step=None, actor="test")  # fmt: skip
        session.flush()
        assert len(list(session.scalars(select(WebhookDelivery)))) == 1
        session.rollback()
    assert env.deliveries() == []
    with factory.begin() as session:
        commands.issue(session, run_id=run_id, kind="stop", params={}, reason={}, origin="operator",
                       held=False, effective_step=None, actor="test")  # fmt: skip
    assert [d.event_type for d in env.deliveries()] == ["command.issued"]


async def test_a_stalled_run_is_announced_once_per_silence(settings, receiver) -> None:  # type: ignore[no-untyped-def]
    async for env in _env(webhook_settings(settings, run_stall_after_s=60.0)):
        await env.subscribe(receiver, events=["run.stalled"])
        run = await env.run()
        trainer = auth(env.tokens["trainer"])
        await env.client.post(f"/v1/runs/{run}/steps", json=rollout(0, n=4), headers=trainer)
        async with env.worker.http_client() as client:
            assert await env.worker.run_once(client) == []  # reported just now: not stalled
            _age_run(env.app, run, seconds=120)
            await env.worker.run_once(client)
            await env.worker.run_once(client)  # same silence: no second message
            assert len(receiver.wait_for(1)) == 1
            got = receiver.received[0].body
            assert got["type"] == "run.stalled" and got["data"]["run"]["id"] == run
            assert got["data"]["silent_s"] >= 120 and got["data"]["last_step"] == 0
            # it reports again, then falls silent again: a new silence, a new message
            await env.client.post(f"/v1/runs/{run}/steps", json=rollout(1, n=4), headers=trainer)
            _age_run(env.app, run, seconds=90)
            await env.worker.run_once(client)
            await env.worker.run_once(client)
            receiver.wait_for(2)
        assert len(receiver.ids()) == 2 and len(env.deliveries()) == 2


def _age_run(app: FastAPI, run_id: str, *, seconds: float) -> None:
    with app.state.session_factory.begin() as s:
        run = s.get(Run, run_id)
        assert run is not None and run.last_report_at is not None
        run.last_report_at = run.last_report_at - timedelta(seconds=seconds)


async def test_connections_only_go_to_allowed_addresses(pg_env, receiver) -> None:  # type: ignore[no-untyped-def]
    """The check runs again at send time and at connect time (DNS may change in between)."""
    from rlkeel.server.webhooks.sender import guarded_client
    from rlkeel.server.webhooks.urls import UrlPolicy

    local = f"http://localhost:{receiver.port}/hook"
    async with guarded_client(UrlPolicy()) as client:
        with pytest.raises(httpx.ConnectError, match="refused: address .* is loopback"):
            await client.post(local, content=b"{}")
    async with guarded_client(UrlPolicy(allow_loopback=True)) as client:
        assert (await client.post(local, content=b"{}")).status_code == 204
    assert receiver.rejected == ["?"]  # it arrived (unsigned)
    receiver.rejected.clear()
    # subscribed while loopback was allowed; this worker does not allow it
    env = pg_env
    await env.subscribe(receiver)
    await env.command(await env.run())
    strict = webhook_worker(env.app)
    strict.policy = UrlPolicy()
    async with strict.http_client() as client:
        assert await strict.run_once(client) == ["failed"]
    (d,) = env.deliveries()
    assert d.last_error is not None and d.last_error.startswith("refused:")
    assert receiver.received == [] and receiver.rejected == []


async def test_deliveries_and_outbox_depth_show_in_a_metrics_scrape(settings) -> None:  # type: ignore[no-untyped-def]
    """What an operator's Prometheus sees: attempts by result, and the outbox depth."""
    app = create_app(webhook_settings(settings))
    assert app.state.metrics is not None
    with app.state.session_factory.begin() as session:
        tokens = {r.value: create_api_key(session, role=r, name=r.value) for r in Role}
    worker = webhook_worker(app)
    receiver = Receiver()  # down at first
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        env = Env(app, c, tokens, worker, DeliveryCounts(app.state.metrics))
        await env.subscribe(receiver)
        await env.command(await env.run())

        async def scrape() -> dict[str, float]:
            text = (await c.get("/metrics")).text
            return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
                    if line.startswith(("rlkeel_webhook_deliveries_total{",
                                        "rlkeel_webhook_outbox_pending_deliveries"))}  # fmt: skip

        async with worker.http_client() as client:
            assert await worker.run_once(client) == ["failed"]
        got = await scrape()
        assert got['rlkeel_webhook_deliveries_total{result="failed"}'] == 1
        assert got["rlkeel_webhook_outbox_pending_deliveries"] == 1
        receiver.start()
        try:
            await drain(worker, lambda: len(receiver.received) == 1)
        finally:
            receiver.stop()
        got = await scrape()
        assert got['rlkeel_webhook_deliveries_total{result="delivered"}'] == 1
        assert got["rlkeel_webhook_outbox_pending_deliveries"] == 0
    app.state.engine.dispose()


async def test_a_paused_subscription_gets_no_new_deliveries(pg_env, receiver) -> None:  # type: ignore[no-untyped-def]
    env = pg_env
    hook = await env.subscribe(receiver)
    run = await env.run()
    admin = auth(env.tokens["admin"])
    r = await env.client.patch(f"/v1/webhooks/{hook['id']}", headers=admin, json={"active": False})
    assert r.status_code == 200, r.text
    await env.command(run)
    assert env.deliveries() == []
    await env.client.patch(f"/v1/webhooks/{hook['id']}", headers=admin, json={"active": True})
    await env.command(run)
    assert [d.event_type for d in env.deliveries()] == ["command.issued"]


async def test_a_test_message_reaches_the_receiver_whatever_the_filters(env, receiver) -> None:  # type: ignore[no-untyped-def]
    hook = await env.subscribe(receiver, events=["run.stalled"], min_severity="critical",
                               payload_format="alertmanager")  # fmt: skip
    admin = auth(env.tokens["admin"])
    r = await env.client.post(f"/v1/webhooks/{hook['id']}/test", headers=admin)
    assert r.status_code == 201, r.text
    assert (r.json()["event_type"], r.json()["status"]) == ("webhook.test", "pending")
    await drain(env.worker, lambda: len(receiver.received) == 1)
    got = receiver.received[0]
    assert got.message_id == r.json()["message_id"]
    assert got.body["alerts"][0]["labels"]["alertname"] == "RlkeelWebhookTest"
    assert (await env.client.post("/v1/webhooks/999/test", headers=admin)).status_code == 404
    assert (await env.client.post(f"/v1/webhooks/{hook['id']}/test",
                                  headers=auth(env.tokens["operator"]))).status_code == 403  # fmt: skip


async def test_finished_deliveries_past_retention_are_deleted_with_their_log(settings, receiver) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import func, update

    from rlkeel.server.db.models import WebhookAttempt

    async for env in _env(webhook_settings(settings, webhook_retention_days=7.0)):
        env.worker.purge_interval_s = 0.0  # every tick (hourly by default)
        hook = await env.subscribe(receiver)
        run = await env.run()
        for _ in range(4):
            await env.command(run)
        await drain(env.worker, lambda: len(receiver.received) == 4)
        ids = [d.id for d in env.deliveries()]
        with env.app.state.session_factory.begin() as s:
            old = utcnow() - timedelta(days=8)
            s.execute(update(WebhookDelivery).where(WebhookDelivery.id.in_(ids[:3]))
                      .values(created_at=old))  # fmt: skip
            s.execute(update(WebhookDelivery).where(WebhookDelivery.id == ids[1])
                      .values(status="dead"))  # fmt: skip
            s.execute(update(WebhookDelivery).where(WebhookDelivery.id == ids[2])
                      .values(status="pending", next_attempt_at=utcnow() + timedelta(days=1)))  # fmt: skip
        async with env.worker.http_client() as client:
            await env.worker.run_once(client)
        assert [d.id for d in env.deliveries()] == ids[2:]  # old pending one kept, recent kept
        with env.app.state.session_factory() as s:
            logged = set(s.scalars(select(WebhookAttempt.delivery_id)))
            assert logged == {ids[2], ids[3]}
            assert s.scalar(select(func.count()).select_from(WebhookAttempt)) == 2
        assert hook["id"] == env.deliveries()[0].webhook_id


async def test_a_receiver_that_never_answers_is_given_up_on_at_the_timeout(settings) -> None:  # type: ignore[no-untyped-def]
    import socket
    import threading
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True).start()
    try:
        async for env in _env(webhook_settings(settings, webhook_timeout_s=1.0)):
            receiver = Receiver(port=listener.getsockname()[1])  # only for its URL
            await env.subscribe(receiver)
            await env.command(await env.run())
            started = time.monotonic()
            async with env.worker.http_client() as client:
                assert await env.worker.run_once(client) == ["failed"]
            assert time.monotonic() - started < 5
            (d,) = env.deliveries()
            assert d.status == "pending" and d.last_status_code is None
            assert d.last_error and ("within 1 s" in d.last_error or "Timeout" in d.last_error)
    finally:
        for conn in held:
            conn.close()
        listener.close()
