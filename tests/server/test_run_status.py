"""How a run ends: the trainer marks it finished, stopped or failed; it then takes no reports.
Registration may choose the automation mode the run starts in."""

from __future__ import annotations

import httpx

from tests.server.helpers import RUN, rollout, update


async def _run(http: httpx.AsyncClient, **fields: object) -> str:
    r = await http.post("/v1/runs", json={**RUN, **fields})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def test_trainer_marks_its_run_finished_and_it_takes_no_more_reports(http, tokens) -> None:  # type: ignore[no-untyped-def]
    run = await _run(http)
    assert (await http.post(f"/v1/runs/{run}/steps", json=update(0))).status_code == 201
    r = await http.put(f"/v1/runs/{run}/status", json={"status": "finished", "detail": "50 steps"})
    assert r.status_code == 200 and r.json()["status"] == "finished", r.text
    assert (await http.put(f"/v1/runs/{run}/status", json={"status": "finished"})).status_code == 200
    conflict = await http.put(f"/v1/runs/{run}/status", json={"status": "failed"})
    assert conflict.status_code == 409 and conflict.json()["fields"] == ["status"]
    # A stored report still answers its verdict (replays stay idempotent); a new one is refused.
    assert (await http.post(f"/v1/runs/{run}/steps", json=update(0))).status_code == 200
    assert (await http.post(f"/v1/runs/{run}/steps", json=update(1))).status_code == 409
    listed = (await http.get("/v1/runs", params={"status": "finished"})).json()
    assert [r["id"] for r in listed] == [run]
    audit = (await http.get("/v1/audit", headers={"Authorization": f"Bearer {tokens.operator}"})).json()
    assert [(a["action"], a["before"], a["after"]["status"]) for a in audit] == [
        ("run.status", {"status": "running"}, "finished")]  # one entry: the repeat changed nothing


async def test_run_status_is_validated_and_needs_the_trainer_role(http, tokens) -> None:  # type: ignore[no-untyped-def]
    run = await _run(http)
    bad = await http.put(f"/v1/runs/{run}/status", json={"status": "running"})
    assert bad.status_code == 422 and "status" in bad.json()["fields"]
    viewer = {"Authorization": f"Bearer {tokens.viewer}"}
    assert (await http.put(f"/v1/runs/{run}/status", headers=viewer,
                           json={"status": "stopped"})).status_code == 403  # fmt: skip
    assert (await http.put("/v1/runs/nope/status", json={"status": "stopped"})).status_code == 404


async def test_registration_chooses_the_automation_mode(http) -> None:  # type: ignore[no-untyped-def]
    observed = await _run(http, automation="observe")
    assert (await http.get(f"/v1/runs/{observed}")).json()["automation"] == "observe"
    assert (await http.get(f"/v1/runs/{await _run(http)}")).json()["automation"] == "auto"
    bad = await http.post("/v1/runs", json={**RUN, "automation": "yolo"})
    assert bad.status_code == 422 and "automation" in bad.json()["fields"]
    # observe mode: the report is stored, nothing is dropped or commanded
    verdict = (await http.post(f"/v1/runs/{observed}/steps", json=rollout(0, n=4))).json()
    assert verdict["drop"] == [] and verdict["commands"] == []
