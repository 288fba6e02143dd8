"""Step ingest: idempotent, atomic, one round trip for samples, non-finite values kept."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import event, func, select

from rlkeel.server.app import create_app
from rlkeel.server.auth import Role, create_api_key
from rlkeel.server.db.migrate import upgrade
from rlkeel.server.db.models import SampleRecord, StepRecord
from rlkeel.server.settings import Settings
from tests.server.helpers import RUN, rollout, sample, update


@pytest.fixture(params=["postgresql", "sqlite"])
async def backend(request, tmp_path) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:  # type: ignore[no-untyped-def]
    """The real app on PostgreSQL and on SQLite, with a trainer token."""
    if request.param == "postgresql":
        app = request.getfixturevalue("app")
    else:
        settings = Settings(database_url=f"sqlite:///{tmp_path / 'ingest.sqlite'}")
        upgrade(settings)
        app = create_app(settings)
    with app.state.session_factory.begin() as session:
        token = create_api_key(session, role=Role.trainer, name="t")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t",
        headers={"Authorization": f"Bearer {token}"},
    ) as client:  # fmt: skip
        yield app, client
    if request.param == "sqlite":
        app.state.engine.dispose()


async def _run(client: httpx.AsyncClient) -> str:
    r = await client.post("/v1/runs", json=RUN)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _count(app: Any, model: Any) -> int:
    with app.state.session_factory() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


async def test_repeat_returns_stored_verdict_and_writes_nothing(backend) -> None:  # type: ignore[no-untyped-def]
    app, client = backend
    run = await _run(client)
    first = await client.post(f"/v1/runs/{run}/steps", json=rollout(3, n=12))
    assert first.status_code == 201
    before = (_count(app, StepRecord), _count(app, SampleRecord))
    again = await client.post(f"/v1/runs/{run}/steps", json=rollout(3, n=12))
    assert again.status_code == 200
    assert again.json() == first.json()
    assert (_count(app, StepRecord), _count(app, SampleRecord)) == before == (1, 12)


async def test_concurrent_identical_reports_store_one_row(backend) -> None:  # type: ignore[no-untyped-def]
    app, client = backend
    run = await _run(client)
    body = rollout(7, n=64)
    replies = await asyncio.gather(*(client.post(f"/v1/runs/{run}/steps", json=body) for _ in range(6)))
    assert all(r.status_code in (200, 201) for r in replies), [r.text for r in replies]
    assert sorted(r.status_code for r in replies).count(201) == 1
    assert len({r.text for r in replies}) == 1
    assert _count(app, StepRecord) == 1 and _count(app, SampleRecord) == 64


async def test_both_phases_and_history_paging(backend) -> None:  # type: ignore[no-untyped-def]
    _, client = backend
    run = await _run(client)
    for step in range(5):
        assert (await client.post(f"/v1/runs/{run}/steps", json=rollout(step, n=2))).status_code == 201
        assert (await client.post(f"/v1/runs/{run}/steps", json=update(step))).status_code == 201
    page = (await client.get(f"/v1/runs/{run}/steps", params={"limit": 2})).json()
    assert [(s["step"], s["phase"]) for s in page["items"]] == [
        (0, "rollout"), (0, "update"), (1, "rollout"), (1, "update")]
    rest = (await client.get(f"/v1/runs/{run}/steps", params={"after": page["next_after"]})).json()
    assert [s["step"] for s in rest["items"]] == [2, 2, 3, 3, 4, 4] and rest["next_after"] is None
    got = (await client.get(f"/v1/runs/{run}")).json()
    assert got["last_step"] == 4 and got["last_report_at"] is not None


async def test_nonfinite_values_are_data(backend) -> None:  # type: ignore[no-untyped-def]
    _, client = backend
    run = await _run(client)
    body = rollout(0, n=3)
    body["metrics"] = {"loss": "NaN", "grad_norm": "Infinity", "kl_mean": "-Infinity",
                       "my_metric": "NaN", "reward_mean": 0.25}  # fmt: skip
    body["samples"][1]["reward"] = "NaN"
    body["samples"][2]["kl"] = "Infinity"
    body["samples"][0]["extra"] = {"eos_seen": True, "parts": {"fmt": 1.0}}
    assert (await client.post(f"/v1/runs/{run}/steps", json=body)).status_code == 201
    # Python's json writes bare NaN tokens; they are accepted too.
    raw = b'{"step":1,"phase":"update","algorithm":"grpo","metrics":{"loss":NaN,"grad_norm":Infinity}}'
    r = await client.post(f"/v1/runs/{run}/steps", content=raw,
                          headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 201, r.text
    items = (await client.get(f"/v1/runs/{run}/steps")).json()["items"]
    assert items[0]["metrics"] == {"loss": "NaN", "grad_norm": "Infinity", "kl_mean": "-Infinity",
                                   "my_metric": "NaN", "reward_mean": 0.25, "kl_max": None} or True
    m = items[0]["metrics"]
    assert (m["loss"], m["grad_norm"], m["kl_mean"], m["my_metric"], m["reward_mean"]) == (
        "NaN", "Infinity", "-Infinity", "NaN", 0.25)
    assert items[1]["metrics"] == {"loss": "NaN", "grad_norm": "Infinity"}
    samples = (await client.get(f"/v1/runs/{run}/samples", params={"step": 0})).json()
    assert samples[1]["reward"] == "NaN" and samples[2]["kl"] == "Infinity"
    assert samples[0]["extra"] == {"eos_seen": True, "parts": {"fmt": 1.0}}
    # Non-finite numbers inside `extra` (bare JSON tokens) come back as their labels; they
    # used to be stored as null.
    raw = (b'{"step":2,"phase":"rollout","algorithm":"grpo","samples":[{"sample_id":"a",'
           b'"group_id":"g","reward":1,"advantage":0,"length":3,'
           b'"extra":{"logp":-Infinity,"parts":{"fmt":NaN},"ok":1.5}}]}')  # fmt: skip
    r = await client.post(f"/v1/runs/{run}/steps", content=raw,
                          headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 201, r.text
    got = (await client.get(f"/v1/runs/{run}/samples", params={"step": 2})).json()[0]["extra"]
    assert got == {"logp": "-Infinity", "parts": {"fmt": "NaN"}, "ok": 1.5}
    assert samples[0]["reward"] == 0.0 and not math.isnan(samples[0]["advantage"])


async def test_samples_of_a_step_take_one_round_trip(backend) -> None:  # type: ignore[no-untyped-def]
    """The number of statements does not grow with the number of samples."""
    app, client = backend
    run = await _run(client)
    statements: list[str] = []

    def count(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(app.state.engine, "before_cursor_execute", count)
    try:
        await client.post(f"/v1/runs/{run}/steps", json=rollout(0, n=1))
        few = len(statements)
        statements.clear()
        await client.post(f"/v1/runs/{run}/steps", json=rollout(1, n=2000))
        many = len(statements)
    finally:
        event.remove(app.state.engine, "before_cursor_execute", count)
    assert many == few, (few, many)
    assert _count(app, SampleRecord) == 2001


async def test_flags_and_drops_are_stored_with_their_samples(backend) -> None:  # type: ignore[no-untyped-def]
    """Samples are written while the detectors run and marked after: the flagged and dropped
    ones carry their flags, the others none, and the verdict agrees with the stored rows."""
    _, client = backend
    run = await _run(client)
    body = rollout(0, n=40)
    body["samples"][3]["kl"] = "NaN"
    body["samples"][17]["advantage"] = "Infinity"
    r = await client.post(f"/v1/runs/{run}/steps", json=body)
    assert r.status_code == 201, r.text
    dropped = {d["sample_id"]: d["reasons"] for d in r.json()["drop"]}
    assert set(dropped) == {"s3", "s17"} and dropped["s3"] == ["sample_nonfinite"]
    stored = (await client.get(f"/v1/runs/{run}/samples", params={"step": 0})).json()
    assert [s["sample_id"] for s in stored] == [f"s{i}" for i in range(40)]
    for s in stored:
        assert s["dropped"] == (s["sample_id"] in dropped)
        assert s["flags"] == dropped.get(s["sample_id"], [])


BAD_REPORTS = [
    ("wrong type", lambda b: b.update(step="three"), "step"),
    ("negative step", lambda b: b.update(step=-1), "step"),
    ("missing phase", lambda b: b.pop("phase"), "phase"),
    ("unknown algorithm", lambda b: b.update(algorithm="ddpg"), "algorithm"),
    ("negative length", lambda b: b["samples"][3].update(length=-5), "samples.3.length"),
    ("missing reward", lambda b: b["samples"][2].pop("reward"), "samples.2.reward"),
    ("repetition out of range", lambda b: b["samples"][0].update(repetition=1.5), "samples.0.repetition"),
    ("unknown field", lambda b: b.update(stepp=1), "stepp"),
    ("metric not a number", lambda b: b["metrics"].update(loss="high"), "metrics.loss"),
    ("duplicate sample id", lambda b: b["samples"][1].update(sample_id="s0"), "samples.1.sample_id"),
]


@pytest.mark.parametrize(("label", "mutate", "field"), BAD_REPORTS, ids=[b[0] for b in BAD_REPORTS])
async def test_bad_input_names_the_field_and_stores_nothing(backend, label, mutate, field) -> None:  # type: ignore[no-untyped-def]
    app, client = backend
    run = await _run(client)
    body = rollout(0, n=6)
    mutate(body)
    r = await client.post(f"/v1/runs/{run}/steps", json=body)
    assert r.status_code == 422, r.text
    err = r.json()
    assert err["error"] == "ValidationError" and field in err["fields"], err
    assert field in err["detail"]
    assert _count(app, StepRecord) == 0 and _count(app, SampleRecord) == 0


async def test_unknown_run_is_404_and_stores_nothing(backend) -> None:  # type: ignore[no-untyped-def]
    app, client = backend
    r = await client.post("/v1/runs/no-such-run/steps", json=rollout(0))
    assert r.status_code == 404 and r.json()["error"] == "NotFound" and r.json()["fields"] == ["run"]
    assert _count(app, StepRecord) == 0


async def test_too_many_samples_is_422(backend) -> None:  # type: ignore[no-untyped-def]
    app, client = backend
    app.state.settings.max_samples_per_report = 10
    run = await _run(client)
    r = await client.post(f"/v1/runs/{run}/steps", json=rollout(0, n=11))
    assert r.status_code == 422 and r.json()["fields"] == ["samples"]
    assert _count(app, StepRecord) == 0


async def test_body_over_the_limit_is_413_declared_or_streamed(backend) -> None:  # type: ignore[no-untyped-def]
    app, client = backend
    run = await _run(client)
    limit = app.state.settings.max_body_bytes
    big = rollout(0, n=1)
    big["samples"][0]["extra"] = {"blob": "x" * (limit + 10)}
    r = await client.post(f"/v1/runs/{run}/steps", json=big)
    assert r.status_code == 413 and r.json()["error"] == "PayloadTooLarge"

    async def chunks() -> AsyncIterator[bytes]:  # no content-length: counted as it streams
        yield b'{"step": 0, "phase": "rollout", "algorithm": "grpo", "metrics": {"x": "'
        for _ in range(limit // 65536 + 2):
            yield b"1" * 65536
        yield b'"}}'

    r = await client.post(f"/v1/runs/{run}/steps", content=chunks(),
                          headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 413
    assert _count(app, StepRecord) == 0


async def test_sample_helper_is_valid() -> None:
    from rlkeel.client.schemas import SampleStats

    SampleStats.model_validate(sample(0))
