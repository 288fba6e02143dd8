"""Scale-out: several server processes on one PostgreSQL act as one.

Reports of one run may reach any process; detector state is read and written under the run's
row lock with a version check, and each process's state cache is only a shortcut for a stored
version (taken when the version matches, filled only after commit).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from rlkeel.client.schemas import RunCreate, StepReport
from rlkeel.server import analysis
from rlkeel.server.auth import Role, create_api_key
from rlkeel.server.db.engine import make_engine, make_session_factory
from rlkeel.server.db.migrate import upgrade
from rlkeel.server.process import ServerProcess
from rlkeel.server.runs.service import create_run, get_run
from rlkeel.server.settings import Settings
from tests.server.helpers import RUN, rollout
from tests.server.test_detector_restart import _normalise_verdict, _outcome
from tests.server.traces import troubled_run


def _state_json(state: analysis.RunAnalysisState) -> str:
    return json.dumps(state.to_dict(), sort_keys=True, default=str)


def test_a_process_cache_never_serves_a_state_the_database_does_not_hold(app) -> None:  # type: ignore[no-untyped-def]
    """Process A's transaction fails after analysing step 1; process B stores its own step 1
    (same version number); A must then load B's state, not the one it computed and lost."""
    factory = app.state.session_factory
    with factory.begin() as s:
        run_id = create_run(s, RunCreate.model_validate(RUN)).id
    reports = [StepReport.model_validate(r) for r in troubled_run(steps=4, samples=16)]
    other = StepReport.model_validate(troubled_run(steps=4, samples=16, seed=9)[2])
    cache_a, cache_b = analysis.StateCache(), analysis.StateCache()

    def analyse(cache: analysis.StateCache, report: StepReport, *, commit: bool) -> None:
        with factory() as s:
            analysis.analyse(s, get_run(s, run_id, for_update=True), report, cache=cache)
            s.commit() if commit else s.rollback()

    analyse(cache_a, reports[0], commit=True)  # version 1, cached by A
    analyse(cache_a, reports[2], commit=False)  # A computes version 2 and loses it
    analyse(cache_b, other, commit=True)  # B stores its own version 2
    with factory() as s:
        stored, _ = analysis.load_state(s, run_id, None)
        via_a, _ = analysis.load_state(s, run_id, cache_a)
    assert stored.rollouts == 2
    assert _state_json(via_a) == _state_json(stored)


def test_a_failed_transaction_leaves_no_mutated_state_in_the_cache(app) -> None:  # type: ignore[no-untyped-def]
    factory = app.state.session_factory
    with factory.begin() as s:
        run_id = create_run(s, RunCreate.model_validate(RUN)).id
    reports = [StepReport.model_validate(r) for r in troubled_run(steps=4, samples=16)]
    cache = analysis.StateCache()
    with factory() as s:
        analysis.analyse(s, get_run(s, run_id, for_update=True), reports[0], cache=cache)
        s.commit()
    with factory() as s:  # analysed (state mutated in memory), then rolled back
        analysis.analyse(s, get_run(s, run_id, for_update=True), reports[2], cache=cache)
        s.rollback()
    with factory() as s:
        stored, _ = analysis.load_state(s, run_id, None)
        cached, _ = analysis.load_state(s, run_id, cache)
    assert stored.rollouts == 1 and cached.rollouts == 1
    assert _state_json(cached) == _state_json(stored)


@pytest.fixture
def two_servers(fresh_pg_database, tmp_path):  # type: ignore[no-untyped-def]
    settings = Settings(database_url=fresh_pg_database.url)
    upgrade(settings)
    engine = make_engine(settings)
    with make_session_factory(engine).begin() as s:
        token = create_api_key(s, role=Role.admin, name="t")
    engine.dispose()
    a = ServerProcess(fresh_pg_database.url, log_path=tmp_path / "a.log").start()
    try:
        b = ServerProcess(fresh_pg_database.url, log_path=tmp_path / "b.log").start()
        try:
            yield a.url, b.url, token, fresh_pg_database.url
        finally:
            b.stop()
    finally:
        a.stop()


def _post(url: str, token: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(url + path, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert r.status_code == 201, r.text
    return r.json()


def _new_run(url: str, token: str) -> str:
    return str(_post(url, token, "/v1/runs", RUN)["id"])


def test_reports_alternating_between_two_processes_give_what_one_process_gives(two_servers) -> None:  # type: ignore[no-untyped-def]
    a, b, token, _ = two_servers
    reports = troubled_run()

    single = _new_run(a, token)
    one = [_normalise_verdict(_post(a, token, f"/v1/runs/{single}/steps", r)) for r in reports]

    split = _new_run(b, token)
    # Alternate per report, and switch the pattern halfway so each process sees both phases
    # and the other process's state changes between two of its own reports.
    servers = [(a, b)[(k + (k >= len(reports) // 2)) % 2] for k in range(len(reports))]
    two = [_normalise_verdict(_post(url, token, f"/v1/runs/{split}/steps", r))
           for url, r in zip(servers, reports, strict=True)]  # fmt: skip

    assert two == one
    assert _outcome(b, token, split) == _outcome(a, token, single)
    findings, commands = _outcome(a, token, single)
    assert len({f[0] for f in findings}) >= 3 and commands  # the trace really is troubled
    assert any(v["drop"] for v in one)


async def _post_all(urls: list[str], token: str, path: str, body: dict[str, Any]) -> list[httpx.Response]:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
        return list(await asyncio.gather(*(c.post(u + path, json=body) for u in urls)))


def test_identical_reports_at_once_to_both_processes_give_one_row(two_servers) -> None:  # type: ignore[no-untyped-def]
    import psycopg

    a, b, token, db_url = two_servers
    run = _new_run(a, token)
    for step in range(3):
        answers = asyncio.run(_post_all([a, b] * 4, token, f"/v1/runs/{run}/steps",
                                        rollout(step, n=64)))  # fmt: skip
        assert sorted(r.status_code for r in answers) == [200] * 7 + [201]
        assert len({r.text for r in answers}) == 1
    with psycopg.connect(db_url) as conn:
        steps = conn.execute("SELECT count(*) FROM steps WHERE run_id = %s", (run,)).fetchone()
        samples = conn.execute("SELECT count(*) FROM samples WHERE run_id = %s", (run,)).fetchone()
        version = conn.execute("SELECT version FROM detector_state WHERE run_id = %s",
                               (run,)).fetchone()  # fmt: skip
    assert (steps, samples, version) == ((3,), (192,), (3,))
