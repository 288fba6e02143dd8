"""`rlkeel backtest` replays a stored run with the same result as live."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx

from rlkeel.server import backtest
from rlkeel.server.runs.service import get_run
from tests.server.helpers import RUN
from tests.server.traces import troubled_run


async def _live_run(http: httpx.AsyncClient) -> str:
    run = (await http.post("/v1/runs", json=RUN)).json()["id"]
    for report in troubled_run():
        r = await http.post(f"/v1/runs/{run}/steps", json=report)
        assert r.status_code == 201, r.text
    return str(run)


async def test_replay_equals_live(http, app) -> None:  # type: ignore[no-untyped-def]
    run_id = await _live_run(http)
    with app.state.session_factory() as s:
        run = get_run(s, run_id)
        replayed = backtest.replay(s, run, backtest.run_policy(run, None))
        stored = backtest.live(s, run_id)
    assert stored.findings and stored.commands
    assert replayed.findings == stored.findings
    assert replayed.commands == stored.commands


async def test_cli_prints_findings_and_commands_and_takes_a_policy(
    http, settings, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    run_id = await _live_run(http)
    env = {"RLKEEL_DATABASE_URL": settings.database_url, "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "rlkeel.cli.main", "backtest", run_id]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    assert "same as live: yes" in out
    quiet = tmp_path / "quiet.json"
    quiet.write_text(json.dumps({"detectors": {"kl_spike": {"enabled": False}}}))
    js = subprocess.run(cmd + ["--policy", str(quiet), "--json"], env=env, capture_output=True,
                        text=True, check=True).stdout  # fmt: skip
    data = json.loads(js)
    assert data["same_as_live"] is False
    assert not any(f["detector"] == "kl_spike" for f in data["findings"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"max_drop_frac": 7}))
    r = subprocess.run(cmd + ["--policy", str(bad)], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "max_drop_frac" in r.stderr
    r = subprocess.run([*cmd[:-1], "no-such-run"], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "no run" in r.stderr
