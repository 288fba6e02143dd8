"""Webhook subscriptions: admin only, secrets shown once and stored encrypted, SSRF refused."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from rlkeel.server.app import create_app
from rlkeel.server.auth import Role, create_api_key
from rlkeel.server.db.models import AuditEntry, Webhook
from rlkeel.server.settings import Environment, Settings
from rlkeel.server.webhooks.secret_store import SecretBox, SecretKeyMissing, load_keys
from tests.server.webhook_helpers import TEST_KEY, auth, webhook_settings


async def _client(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    app = create_app(settings)
    with app.state.session_factory.begin() as session:
        tokens = {r.value: create_api_key(session, role=r, name=r.value) for r in Role}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        c.app = app  # type: ignore[attr-defined]
        yield c, tokens
    app.state.engine.dispose()


@pytest.fixture
async def api(settings):  # type: ignore[no-untyped-def]
    async for pair in _client(webhook_settings(settings)):
        yield pair


@pytest.fixture
async def strict_api(settings):  # type: ignore[no-untyped-def]
    """Default URL policy: no loopback, no link-local."""
    async for pair in _client(webhook_settings(settings, webhook_allow_loopback=False)):
        yield pair


HOOK = {"url": "http://127.0.0.1:9/hook", "events": ["finding.raised", "command.failed"]}


async def test_only_admins_subscribe_and_the_secret_is_shown_once(api) -> None:  # type: ignore[no-untyped-def]
    client, tokens = api
    for role in ("viewer", "trainer", "operator"):
        r = await client.post("/v1/webhooks", json=HOOK, headers=auth(tokens[role]))
        assert r.status_code == 403, (role, r.text)
    r = await client.post("/v1/webhooks", json=HOOK, headers=auth(tokens["admin"]))
    assert r.status_code == 201, r.text
    created = r.json()
    secret = created["secret"]
    assert secret.startswith("whsec_") and len(secret) > 40
    assert (created["min_severity"], created["payload_format"], created["secrets_valid"]) == (
        "warning", "rlkeel", 1)
    # never again: not in the list, not in the item, not in the audit log
    answers = [await client.get("/v1/webhooks", headers=auth(tokens["admin"])),
               await client.get(f"/v1/webhooks/{created['id']}", headers=auth(tokens["admin"])),
               await client.get("/v1/audit", headers=auth(tokens["admin"]))]  # fmt: skip
    for answer in answers:
        assert answer.status_code == 200 and secret not in answer.text
        assert secret.removeprefix("whsec_") not in answer.text and '"secret"' not in answer.text
    # stored encrypted under the configured key
    with client.app.state.session_factory() as session:  # type: ignore[attr-defined]
        hook = session.scalars(select(Webhook)).one()
        stored = json.dumps(hook.secrets)
        assert secret.removeprefix("whsec_") not in stored
        assert SecretBox([TEST_KEY]).decrypt(hook.secrets[0]["ciphertext"]) == secret
        assert session.scalar(select(func.count()).select_from(AuditEntry)) == 1


async def test_delete_unsubscribes(api) -> None:  # type: ignore[no-untyped-def]
    client, tokens = api
    admin = auth(tokens["admin"])
    hook = (await client.post("/v1/webhooks", json=HOOK, headers=admin)).json()
    assert (await client.delete(f"/v1/webhooks/{hook['id']}", headers=admin)).status_code == 204
    assert (await client.get(f"/v1/webhooks/{hook['id']}", headers=admin)).status_code == 404
    assert (await client.get("/v1/webhooks", headers=admin)).json() == []


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.170.2/v2/credentials",
    "http://[fe80::1]/hook",
    "http://[::ffff:169.254.169.254]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[2002:a9fe:a9fe::1]/",
    "http://[::127.0.0.1]/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://METADATA.google.internal./x",
    "http://[fd00:ec2::254]/",
    "http://100.100.100.200/latest/meta-data/",
    "http://127.0.0.1:8000/v1/runs",
    "http://localhost/hook",
    "http://[::1]/hook",
    "http://0.0.0.0:8000/",
    "ftp://example.com/x",
    "http://user:pw@example.com/x",
    "http:///nohost",
    "http://example.com:99999/",
    "http://no-such-host.invalid/hook",
    "http://[::1",
    "http://" + "a" * 70 + ".example.com/",
])  # fmt: skip
async def test_ssrf_targets_are_refused(strict_api, url) -> None:  # type: ignore[no-untyped-def]
    client, tokens = strict_api
    r = await client.post("/v1/webhooks", json={**HOOK, "url": url}, headers=auth(tokens["admin"]))
    assert r.status_code == 422, (url, r.text)
    assert r.json()["fields"] == ["url"]
    assert (await client.get("/v1/webhooks", headers=auth(tokens["admin"]))).json() == []


async def test_link_local_and_loopback_only_by_setting(settings) -> None:  # type: ignore[no-untyped-def]
    allowing = webhook_settings(settings, webhook_allow_link_local=True, webhook_allow_loopback=True)
    async for client, tokens in _client(allowing):
        for url in ("http://169.254.169.254/hook", "http://[fe80::1]/hook", "http://127.0.0.1/h"):
            r = await client.post("/v1/webhooks", json={**HOOK, "url": url},
                                  headers=auth(tokens["admin"]))  # fmt: skip
            assert r.status_code == 201, (url, r.text)


async def test_bad_subscription_names_the_field(api) -> None:  # type: ignore[no-untyped-def]
    client, tokens = api
    admin = auth(tokens["admin"])
    for body, field in [
        ({**HOOK, "events": ["finding.exploded"]}, "events.0"),
        ({**HOOK, "events": []}, "events"),
        ({**HOOK, "min_severity": "apocalyptic"}, "min_severity"),
        ({**HOOK, "payload_format": "xml"}, "payload_format"),
        ({**HOOK, "secret": "whsec_mine"}, "secret"),
    ]:
        r = await client.post("/v1/webhooks", json=body, headers=admin)
        assert r.status_code == 422 and field in r.json()["fields"], (body, r.text)
    assert (await client.get("/v1/webhooks", headers=admin)).json() == []


async def test_rotation_keeps_two_secrets_then_one(api) -> None:  # type: ignore[no-untyped-def]
    client, tokens = api
    admin = auth(tokens["admin"])
    hook = (await client.post("/v1/webhooks", json=HOOK, headers=admin)).json()
    r = await client.post(f"/v1/webhooks/{hook['id']}/rotate-secret", headers=admin)
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != hook["secret"]
    assert rotated["previous_valid_until"] is not None
    assert (await client.get(f"/v1/webhooks/{hook['id']}", headers=admin)).json()["secrets_valid"] == 2
    # rotating again keeps only the newest two; ending the overlap leaves one
    r = await client.post(f"/v1/webhooks/{hook['id']}/rotate-secret", headers=admin,
                          json={"previous_valid_for_s": 0})  # fmt: skip
    assert r.status_code == 200 and r.json()["previous_valid_until"] is None
    assert (await client.get(f"/v1/webhooks/{hook['id']}", headers=admin)).json()["secrets_valid"] == 1
    assert (await client.post("/v1/webhooks/999/rotate-secret", headers=admin)).status_code == 404


def test_dev_key_is_generated_once_and_production_requires_one(tmp_path) -> None:
    path = tmp_path / "data" / "webhook-secrets.key"
    dev = Settings(database_url="sqlite:///x.sqlite")
    first = load_keys(dev, dev_key_path=path)
    assert load_keys(dev, dev_key_path=path) == first and path.exists()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    box = SecretBox(first)
    assert box.decrypt(box.encrypt("whsec_x")) == "whsec_x"
    # Settings refuse to load in production without the key (production_problems); a copy
    # sidesteps that to test load_keys itself.
    prod = dev.model_copy(update={"environment": Environment.production,
                                  "database_url": "postgresql://u:a-long-secret@db/x"})  # fmt: skip
    with pytest.raises(SecretKeyMissing, match="RLKEEL_WEBHOOK_SECRETS_KEY"):
        load_keys(prod, dev_key_path=tmp_path / "never")
    assert not (tmp_path / "never").exists()
    given = prod.model_copy(update={"webhook_secrets_key": SecretStr(f"{TEST_KEY}, {first[0]}")})
    assert load_keys(given) == [TEST_KEY, first[0]]
    with pytest.raises(ValueError, match="not a Fernet key"):
        SecretBox(["not-a-key"])


def test_production_refuses_to_start_without_a_secrets_key(pg_database, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # production wants a database password; trust auth on the test server ignores this one
    monkeypatch.setenv("PGPASSWORD", "unused-under-trust-auth")
    with pytest.raises(ValueError, match="RLKEEL_WEBHOOK_SECRETS_KEY"):  # settings refuse to load
        Settings(environment=Environment.production, database_url=pg_database.url)
    prod = Settings(database_url=pg_database.url).model_copy(
        update={"environment": Environment.production})  # fmt: skip
    with pytest.raises((SecretKeyMissing, RuntimeError), match="RLKEEL_WEBHOOK_SECRETS_KEY"):
        create_app(prod)  # ... and the app refuses settings changed after loading
    app = create_app(prod.model_copy(update={"webhook_secrets_key": SecretStr(TEST_KEY)}))
    app.state.engine.dispose()


async def test_update_pauses_and_changes_a_subscription(strict_api) -> None:  # type: ignore[no-untyped-def]
    client, tokens = strict_api
    admin = auth(tokens["admin"])
    hook = (await client.post("/v1/webhooks", headers=admin, json={
        **HOOK, "url": "http://203.0.113.7/hook"})).json()  # fmt: skip
    url = f"/v1/webhooks/{hook['id']}"
    r = await client.patch(url, headers=admin, json={"active": False, "min_severity": "critical",
                                                     "events": ["run.stalled", "run.stalled"],
                                                     "payload_format": "alertmanager"})  # fmt: skip
    assert r.status_code == 200, r.text
    got = r.json()
    assert (got["active"], got["min_severity"], got["events"], got["payload_format"]) == (
        False, "critical", ["run.stalled"], "alertmanager")
    assert got["url"] == "http://203.0.113.7/hook" and "secret" not in got
    for body, field in [({"url": "http://169.254.169.254/"}, "url"), ({"events": []}, "events"),
                        ({"active": "maybe"}, "active"), ({"secret": "x"}, "secret")]:  # fmt: skip
        r = await client.patch(url, headers=admin, json=body)
        assert r.status_code == 422 and r.json()["fields"] == [field], (body, r.text)
    assert (await client.get(url, headers=admin)).json() == got  # nothing half-written
    assert (await client.patch(url, headers=auth(tokens["operator"]), json={})).status_code == 403
    assert (await client.patch("/v1/webhooks/999", headers=admin, json={})).status_code == 404
    audit = (await client.get("/v1/audit", headers=admin)).json()
    assert [a["action"] for a in audit] == ["webhook.create", "webhook.update"]
    assert audit[1]["before"]["active"] is True and audit[1]["after"]["active"] is False
