"""Detector and policy state survive a server restart: same verdicts, findings and commands."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from rlkeel.server.auth import Role, create_api_key
from rlkeel.server.db.engine import make_engine, make_session_factory
from rlkeel.server.db.migrate import upgrade
from rlkeel.server.process import ServerProcess
from rlkeel.server.settings import Settings
from tests.server.helpers import RUN
from tests.server.traces import troubled_run


def _normalise_verdict(v: dict[str, Any]) -> dict[str, Any]:
    v = dict(v)
    v["commands"] = [(c["kind"], json.dumps(c["params"], sort_keys=True)) for c in v["commands"]]
    return v


def _replay(url: str, token: str, reports: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        run = c.post("/v1/runs", json=RUN).json()["id"]
        return run, [_normalise_verdict(c.post(f"/v1/runs/{run}/steps", json=r).json()) for r in reports]


def _continue(url: str, token: str, run: str, reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        return [_normalise_verdict(c.post(f"/v1/runs/{run}/steps", json=r).json()) for r in reports]


def _outcome(url: str, token: str, run: str) -> tuple[list[Any], list[Any]]:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as c:
        findings = [(f["detector"], f["step"], f["severity"], f["sample_ids"])
                    for f in c.get(f"/v1/runs/{run}/findings", params={"limit": 1000}).json()]  # fmt: skip
        commands = [(x["kind"], x["params"], x["reason"]["text"])
                    for x in c.get(f"/v1/runs/{run}/commands").json()]  # fmt: skip
    return findings, commands


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_restart_midway_gives_the_same_results(fresh_pg_database, tmp_path, how) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(database_url=fresh_pg_database.url)
    upgrade(settings)
    engine = make_engine(settings)
    with make_session_factory(engine).begin() as s:
        token = create_api_key(s, role=Role.admin, name="t")
    engine.dispose()
    reports = troubled_run()
    half = len(reports) // 2 + 3  # mid-trouble, between a rollout and its update

    with ServerProcess(fresh_pg_database.url, log_path=tmp_path / "a.log") as server:
        straight_run, straight = _replay(server.url, token, reports)
        straight_outcome = _outcome(server.url, token, straight_run)

    first = ServerProcess(fresh_pg_database.url, log_path=tmp_path / "b.log").start()
    run, before = _replay(first.url, token, reports[:half])
    first.kill() if how == "SIGKILL" else first.stop()
    with ServerProcess(fresh_pg_database.url, log_path=tmp_path / "c.log") as second:
        after = _continue(second.url, token, run, reports[half:])
        restarted_outcome = _outcome(second.url, token, run)

    assert before + after == straight
    assert restarted_outcome == straight_outcome
    findings, commands = straight_outcome
    assert len({f[0] for f in findings}) >= 3, findings  # the trace really is troubled
    assert commands, "the policy issued no command on a troubled run"
    assert any(v["drop"] for v in straight), "no sample was ever dropped"
