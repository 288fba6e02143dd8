"""The delivery guarantees of README "Guarantees", under concurrency on a real server.

Reports of one run that arrive at the same time are analysed one at a time (the run row is
locked), so no detector state update is lost; a pending command goes out in exactly one
verdict even when many reports race for it; the same report sent many times at once is
stored once and every sender gets the same verdict.
"""

from __future__ import annotations

import asyncio

import httpx

from rlkeel.server import analysis
from tests.server.helpers import RUN, rollout, update

STEPS = 12


async def _post_all(url: str, token: str, path: str, bodies: list[dict]) -> list[httpx.Response]:  # type: ignore[type-arg]
    async with httpx.AsyncClient(base_url=url, timeout=60,
                                 headers={"Authorization": f"Bearer {token}"}) as http:  # fmt: skip
        return list(await asyncio.gather(*(http.post(path, json=b) for b in bodies)))


def test_racing_reports_of_one_run_are_analysed_one_at_a_time(live_server, tokens, app) -> None:  # type: ignore[no-untyped-def]
    auth = {"Authorization": f"Bearer {tokens.operator}"}
    run_id = httpx.post(f"{live_server.url}/v1/runs", json=RUN,
                        headers={"Authorization": f"Bearer {tokens.trainer}"}).json()["id"]  # fmt: skip
    command = httpx.post(f"{live_server.url}/v1/runs/{run_id}/commands", headers=auth,
                         json={"kind": "scale_lr", "params": {"factor": 0.5}}).json()  # fmt: skip

    bodies = [b for s in range(STEPS) for b in (rollout(s, n=32), update(s))]
    answers = asyncio.run(_post_all(live_server.url, tokens.trainer,
                                    f"/v1/runs/{run_id}/steps", bodies))  # fmt: skip
    assert [r.status_code for r in answers] == [201] * len(bodies)

    # The command went out exactly once, in one of the racing verdicts.
    carrying = [r.json() for r in answers if r.json()["commands"]]
    assert len(carrying) == 1 and [c["id"] for c in carrying[0]["commands"]] == [command["id"]]
    # No lost update: every rollout was counted on top of the state the previous one left.
    with app.state.session_factory() as session:
        state, _ = analysis.load_state(session, run_id, cache=None)
    assert state.rollouts == STEPS


def test_the_same_report_sent_at_once_is_stored_once(live_server, tokens, app) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import func, select

    from rlkeel.server.db.models import SampleRecord, StepRecord

    run_id = httpx.post(f"{live_server.url}/v1/runs", json=RUN,
                        headers={"Authorization": f"Bearer {tokens.trainer}"}).json()["id"]  # fmt: skip
    answers = asyncio.run(_post_all(live_server.url, tokens.trainer, f"/v1/runs/{run_id}/steps",
                                    [rollout(0, n=32)] * 8))  # fmt: skip
    assert sorted(r.status_code for r in answers) == [200] * 7 + [201]
    assert len({r.text for r in answers}) == 1  # every sender got the same verdict
    with app.state.session_factory() as session:
        steps = session.scalar(select(func.count()).where(StepRecord.run_id == run_id))
        samples = session.scalar(select(func.count()).where(SampleRecord.run_id == run_id))
    assert (steps, samples) == (1, 32)
