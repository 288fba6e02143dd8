"""The outbox is durable: a restart during back-off loses nothing and sends nothing twice;
two server processes on one database never send one message twice; rotation signs twice."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from rlkeel.client.schemas import Severity
from rlkeel.server.app import create_app, webhook_worker
from rlkeel.server.auth import Role, create_api_key
from rlkeel.server.db.base import utcnow
from rlkeel.server.db.migrate import upgrade
from rlkeel.server.db.models import Run, Webhook, WebhookDelivery
from rlkeel.server.settings import Settings
from rlkeel.server.webhooks import outbox
from rlkeel.server.webhooks.events import Event, EventType
from rlkeel.server.webhooks.secret_store import SecretBox, sealed
from rlkeel.server.webhooks.signing import new_secret
from tests.conftest import LiveServer
from tests.server.helpers import RUN
from tests.server.webhook_helpers import TEST_KEY, auth, drain, webhook_settings
from tests.server.webhook_receiver import Receiver

EVENTS = ["command.issued", "command.applied", "command.failed"]


def _deliveries(app: Any) -> list[WebhookDelivery]:
    with app.state.session_factory() as s:
        return list(s.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))


def _wait(predicate: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_server_restarted_during_backoff_delivers_each_event_once(settings) -> None:  # type: ignore[no-untyped-def]
    s = webhook_settings(settings, webhook_worker=True, webhook_retry_base_s=6.0,
                         webhook_retry_max_s=6.0)  # fmt: skip
    receiver = Receiver()  # down for now
    first = create_app(s)
    with first.state.session_factory.begin() as session:
        tokens = {r.value: create_api_key(session, role=r, name=r.value) for r in Role}
    server = LiveServer(first).start()
    with httpx.Client(base_url=server.url) as client:
        r = client.post("/v1/webhooks", headers=auth(tokens["admin"]),
                        json={"url": receiver.url, "events": EVENTS, "min_severity": "info"})  # fmt: skip
        receiver.secrets.append(r.json()["secret"])
        run = client.post("/v1/runs", json=RUN, headers=auth(tokens["trainer"])).json()["id"]
        for factor in (0.5, 0.25, 0.125):
            r = client.post(f"/v1/runs/{run}/commands", headers=auth(tokens["operator"]),
                            json={"kind": "scale_lr", "params": {"factor": factor}})  # fmt: skip
            assert r.status_code == 201, r.text
    _wait(lambda: all(d.attempts == 1 and d.last_error for d in _deliveries(first))
          and len(_deliveries(first)) == 3)  # fmt: skip
    server.stop()  # in back-off: the next try is 3-6 s away
    assert all(d.status == "pending" for d in _deliveries(first))
    first.state.engine.dispose()

    receiver.start()
    second = create_app(s)
    server = LiveServer(second).start()
    try:
        receiver.wait_for(3, timeout_s=20)
        time.sleep(1.0)  # anything sent twice would have arrived by now
    finally:
        server.stop()
        receiver.stop()
    assert receiver.rejected == []
    assert receiver.ids() == {d.message_id: 1 for d in _deliveries(second)}
    assert all(d.status == "delivered" and d.attempts >= 2 for d in _deliveries(second))
    second.state.engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
async def test_two_workers_on_one_database_never_send_twice(request, tmp_path, backend) -> None:  # type: ignore[no-untyped-def]
    if backend == "postgresql":
        s = webhook_settings(request.getfixturevalue("settings"))
    else:  # no row locks: the conditional claim alone keeps it to one send
        s = webhook_settings(Settings(database_url=f"sqlite:///{tmp_path / 'two.sqlite'}"))
        upgrade(s)
    receiver = Receiver().start()
    apps = [create_app(s), create_app(s)]  # two engines: two server processes' worth
    try:
        secret = new_secret()
        receiver.secrets.append(secret)
        with apps[0].state.session_factory.begin() as session:
            session.add(Webhook(url=receiver.url, events=EVENTS, min_severity="info",
                                payload_format="rlkeel",
                                secrets=[sealed(SecretBox([TEST_KEY]), secret)]))  # fmt: skip
            session.add(Run(id="r1", name="r", project="p", algorithm="grpo",
                            current_algorithm="grpo", model_name="m"))  # fmt: skip
            session.flush()
            now = utcnow()
            events = [Event(type=EventType.command_issued, severity=Severity.warning,
                            occurred_at=now, run={"id": "r1"}, data={"i": i}, summary=f"event {i}")
                      for i in range(60)]  # fmt: skip
            outbox.enqueue(session, events)
        workers = [webhook_worker(a) for a in apps]

        async def work(worker: Any) -> None:
            await drain(worker, lambda: len(receiver.received) >= 60)

        await asyncio.gather(*(work(w) for w in workers))
        await asyncio.sleep(0.3)
        assert len(receiver.received) == 60 and set(receiver.ids().values()) == {1}
        assert {d.status for d in _deliveries(apps[0])} == {"delivered"}
    finally:
        receiver.stop()
        for a in apps:
            a.state.engine.dispose()


async def test_rotation_signs_with_both_secrets_until_the_old_one_ends(settings) -> None:  # type: ignore[no-untyped-def]
    app = create_app(webhook_settings(settings))
    receiver = Receiver().start()
    with app.state.session_factory.begin() as session:
        tokens = {r.value: create_api_key(session, role=r, name=r.value) for r in Role}
    worker = webhook_worker(app)
    admin, op = auth(tokens["admin"]), auth(tokens["operator"])
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            hook = (await c.post("/v1/webhooks", headers=admin, json={
                "url": receiver.url, "events": EVENTS, "min_severity": "info"})).json()  # fmt: skip
            old = hook["secret"]
            run = (await c.post("/v1/runs", json=RUN, headers=auth(tokens["trainer"]))).json()["id"]

            async def one_message() -> Any:
                n = len(receiver.received)
                await c.post(f"/v1/runs/{run}/commands", headers=op, json={"kind": "stop"})
                await drain(worker, lambda: len(receiver.received) > n)
                return receiver.received[-1]

            r = await c.post(f"/v1/webhooks/{hook['id']}/rotate-secret", headers=admin,
                             json={"previous_valid_for_s": 3600})  # fmt: skip
            new = r.json()["secret"]
            receiver.secrets[:] = [old, new]
            during = await one_message()
            assert during.verified_by == [0, 1]  # each secret alone verifies it
            assert len(during.headers["webhook-signature"].split(" ")) == 2
            _end_previous_secret(app, hook["id"])  # as if its hour had passed
            after = await one_message()
            assert after.verified_by == [1] and " " not in after.headers["webhook-signature"]
            assert receiver.rejected == []
    finally:
        receiver.stop()
        app.state.engine.dispose()


def test_a_commit_that_writes_deliveries_wakes_the_worker(settings) -> None:  # type: ignore[no-untyped-def]
    """No waiting for the next poll: the request's commit wakes the lifespan's worker."""
    s = webhook_settings(settings, webhook_worker=True, webhook_poll_interval_s=60.0,
                         run_stall_check_interval_s=3600.0)  # fmt: skip
    app = create_app(s)
    with app.state.session_factory.begin() as session:
        tokens = {r.value: create_api_key(session, role=r, name=r.value) for r in Role}
    receiver = Receiver().start()
    server = LiveServer(app).start()
    try:
        with httpx.Client(base_url=server.url) as client:
            r = client.post("/v1/webhooks", headers=auth(tokens["admin"]),
                            json={"url": receiver.url, "events": EVENTS, "min_severity": "info"})  # fmt: skip
            receiver.secrets.append(r.json()["secret"])
            run = client.post("/v1/runs", json=RUN, headers=auth(tokens["trainer"])).json()["id"]
            time.sleep(0.5)  # the worker's first (empty) tick is over: it now sleeps 60 s
            started = time.monotonic()
            client.post(f"/v1/runs/{run}/commands", headers=auth(tokens["operator"]),
                        json={"kind": "stop"})  # fmt: skip
            receiver.wait_for(1, timeout_s=10)
            assert time.monotonic() - started < 10
    finally:
        server.stop()
        receiver.stop()
        app.state.engine.dispose()


def test_a_claim_that_races_another_claim_takes_each_row_once(settings) -> None:  # type: ignore[no-untyped-def]
    """Process B has read the due rows; before it marks them, process A claims too. A must
    skip B's rows, not wait for them nor take them. (On SQLite the race cannot happen:
    transactions begin IMMEDIATE, one writer at a time.)"""
    from sqlalchemy import event

    s = webhook_settings(settings)
    a, b = create_app(s), create_app(s)
    try:
        with a.state.session_factory.begin() as session:
            session.add(Webhook(url="http://127.0.0.1:9/h", events=EVENTS, min_severity="info",
                                payload_format="rlkeel", secrets=[]))  # fmt: skip
            session.add(Run(id="r1", name="r", project="p", algorithm="grpo",
                            current_algorithm="grpo", model_name="m"))  # fmt: skip
            session.flush()
            outbox.enqueue(session, [Event(type=EventType.command_issued, severity=Severity.info,
                                           occurred_at=utcnow(), run={"id": "r1"}, data={"i": i},
                                           summary="x") for i in range(5)])  # fmt: skip
        claimed_by_a: list[outbox.Claim] = []

        def a_claims_meanwhile(conn, cursor, statement, *args: Any) -> None:  # type: ignore[no-untyped-def]
            if statement.lstrip().upper().startswith("SELECT") and not claimed_by_a:
                with a.state.session_factory.begin() as other:
                    claimed_by_a.extend(outbox.claim_due(other, now=utcnow(), limit=16,
                                                         lease_s=60))  # fmt: skip
                claimed_by_a.append(None)  # type: ignore[arg-type]  # once only

        event.listen(b.state.engine, "after_cursor_execute", a_claims_meanwhile)
        with b.state.session_factory.begin() as session:
            claimed_by_b = outbox.claim_due(session, now=utcnow(), limit=16, lease_s=60)
        assert claimed_by_a == [None]  # every due row was B's, locked: A took none, did not wait
        assert sorted(c.delivery_id for c in claimed_by_b) == [1, 2, 3, 4, 5]
        assert {d.attempts for d in _deliveries(a)} == {1}
    finally:
        a.state.engine.dispose()
        b.state.engine.dispose()


def _end_previous_secret(app: Any, webhook_id: int) -> None:
    past = (utcnow() - timedelta(seconds=1)).isoformat()
    with app.state.session_factory.begin() as s:
        hook = s.get(Webhook, webhook_id)
        assert hook is not None and len(hook.secrets) == 2 and hook.secrets[1]["expires_at"]
        hook.secrets = [hook.secrets[0], {**hook.secrets[1], "expires_at": past}]
