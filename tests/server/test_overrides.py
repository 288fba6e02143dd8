"""Operator overrides: commands by hand, approval, modes, policy, finding acks — all audited."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from rlkeel.server.commands import service as commands
from rlkeel.server.db.models import FindingRecord
from tests.server.helpers import RUN, rollout, update


def _as(client: httpx.AsyncClient, token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _run(http: httpx.AsyncClient) -> str:
    return str((await http.post("/v1/runs", json=RUN)).json()["id"])


async def test_operator_command_goes_out_in_next_verdict_and_ack_updates_run(http, tokens) -> None:  # type: ignore[no-untyped-def]
    run = await _run(http)
    op = _as(http, tokens.operator)
    r = await http.post(f"/v1/runs/{run}/commands", headers=op,
                        json={"kind": "switch_algorithm", "params": {"to": "gspo"}, "reason": "unstable"})  # fmt: skip
    assert r.status_code == 201, r.text
    cmd = r.json()
    assert (cmd["status"], cmd["origin"], cmd["params"]) == ("pending", "operator", {"to": "gspo", "overrides": {}})
    verdict = (await http.post(f"/v1/runs/{run}/steps", json=rollout(0, n=4))).json()
    assert [c["id"] for c in verdict["commands"]] == [cmd["id"]]
    assert verdict["commands"][0]["status"] == "delivered"
    # delivered once: the next step's verdict does not carry it again
    assert (await http.post(f"/v1/runs/{run}/steps", json=update(0))).json()["commands"] == []
    ack = await http.post(f"/v1/commands/{cmd['id']}/ack", json={"status": "applied", "step": 1, "detail": "now gspo"})
    assert ack.status_code == 200 and ack.json()["status"] == "applied" and ack.json()["applied_step"] == 1
    again = await http.post(f"/v1/commands/{cmd['id']}/ack", json={"status": "applied", "step": 1})
    assert again.status_code == 200  # a repeated identical ack is a no-op
    conflict = await http.post(f"/v1/commands/{cmd['id']}/ack", json={"status": "failed", "step": 2})
    assert conflict.status_code == 409
    assert (await http.get(f"/v1/runs/{run}")).json()["current_algorithm"] == "gspo"
    audit = (await http.get("/v1/audit", headers=op)).json()
    assert [a["action"] for a in audit] == ["command.issue"]
    assert audit[0]["actor"].startswith("operator:") and audit[0]["after"]["kind"] == "switch_algorithm"


async def test_bad_command_params_name_the_field(http, tokens) -> None:  # type: ignore[no-untyped-def]
    run = await _run(http)
    op = _as(http, tokens.operator)
    for body, field in [
        ({"kind": "scale_lr", "params": {"factor": -1}}, "params.factor"),
        ({"kind": "switch_algorithm", "params": {"to": "sac"}}, "params.to"),
        ({"kind": "rollback", "params": {}}, "params.to_step"),
        ({"kind": "stop", "params": {"why": "x"}}, "params.why"),
        ({"kind": "teleport", "params": {}}, "kind"),
    ]:
        r = await http.post(f"/v1/runs/{run}/commands", headers=op, json=body)
        assert r.status_code == 422 and field in r.json()["fields"], (body, r.text)
    assert (await http.get(f"/v1/runs/{run}/commands")).json() == []


async def test_held_commands_wait_for_approval(http, tokens, app) -> None:  # type: ignore[no-untyped-def]
    run = await _run(http)
    op = _as(http, tokens.operator)
    r = await http.put(f"/v1/runs/{run}/automation", headers=op, json={"mode": "approve"})
    assert r.status_code == 200 and r.json()["automation"] == "approve"
    with app.state.session_factory.begin() as s:
        held = [commands.issue(s, run_id=run, kind="scale_lr", params={"factor": 0.5},
                               reason={"text": "spikes", "finding_ids": []}, origin="policy",
                               held=True, effective_step=None, actor="policy").id
                for _ in range(2)]  # fmt: skip
    v = (await http.post(f"/v1/runs/{run}/steps", json=rollout(0, n=2))).json()
    assert v["commands"] == []  # held: nothing goes out
    assert (await http.post(f"/v1/commands/{held[0]}/approve", headers=op, json={"note": "ok"})).json()["status"] == "approved"
    assert (await http.post(f"/v1/commands/{held[1]}/reject", headers=op)).json()["status"] == "refused"
    assert (await http.post(f"/v1/commands/{held[1]}/approve", headers=op)).status_code == 409
    v = (await http.post(f"/v1/runs/{run}/steps", json=rollout(1, n=2))).json()
    assert [c["id"] for c in v["commands"]] == [held[0]]
    statuses = {c["id"]: c["status"] for c in (await http.get(f"/v1/runs/{run}/commands")).json()}
    assert statuses == {held[0]: "delivered", held[1]: "refused"}
    actions = [a["action"] for a in (await http.get("/v1/audit", headers=op)).json()]
    assert actions == ["run.automation", "command.approve", "command.reject"]


async def test_policy_read_replace_validate(http, tokens) -> None:  # type: ignore[no-untyped-def]
    run = await _run(http)
    op = _as(http, tokens.operator)
    policy = (await http.get(f"/v1/runs/{run}/policy")).json()
    assert policy["max_drop_frac"] == 0.25 and "detectors" in policy
    r = await http.put(f"/v1/runs/{run}/policy", headers=op, json={"max_drop_frac": 0.1})
    assert r.status_code == 200 and r.json()["max_drop_frac"] == 0.1
    assert (await http.get(f"/v1/runs/{run}/policy")).json()["max_drop_frac"] == 0.1
    for body, field in [({"max_drop_frac": 2}, "max_drop_frac"), ({"detectors": {"nope": {}}}, "detectors"),
                        ({"bogus": 1}, "bogus")]:  # fmt: skip
        bad = await http.put(f"/v1/runs/{run}/policy", headers=op, json=body)
        assert bad.status_code == 422 and field in bad.json()["fields"], bad.text
    assert (await http.get(f"/v1/runs/{run}/policy")).json()["max_drop_frac"] == 0.1
    audit = (await http.get("/v1/audit", headers=op, params={"target_type": "run"})).json()
    assert len(audit) == 1 and audit[0]["before"]["max_drop_frac"] == 0.25
    assert audit[0]["after"]["max_drop_frac"] == 0.1


async def test_finding_ack_and_snooze(http, tokens, app) -> None:  # type: ignore[no-untyped-def]
    run = await _run(http)
    op = _as(http, tokens.operator)
    with app.state.session_factory.begin() as s:
        f = FindingRecord(run_id=run, step=3, phase="update", detector="kl_spike", severity="high",
                          metric="kl_mean", value=float("inf"), baseline=0.01, threshold=4.0,
                          nonfinite={"value": "Infinity"}, message="KL spike", sample_ids=[],
                          status="open")  # fmt: skip
        s.add(f)
        s.flush()
        fid = f.id
    found = (await http.get(f"/v1/runs/{run}/findings")).json()
    assert found[0]["value"] == "Infinity" and found[0]["status"] == "open"
    r = await http.post(f"/v1/findings/{fid}/ack", headers=op, json={"snooze_seconds": 600, "note": "known"})
    assert r.status_code == 200 and r.json()["status"] == "snoozed" and r.json()["snoozed_until"]
    assert (await http.post("/v1/findings/999999/ack", headers=op)).status_code == 404
    audit = (await http.get("/v1/audit", headers=op, params={"target_type": "finding"})).json()
    assert audit[0]["before"]["status"] == "open" and audit[0]["after"]["note"] == "known"


async def test_snooze_silences_the_detector_in_the_pipeline_until_it_expires(http, tokens, app) -> None:  # type: ignore[no-untyped-def]
    """A snoozed detector raises no findings (and so causes no commands) for that run; once the
    snooze expires it fires again. Other runs are not affected."""
    from sqlalchemy import update as sql_update

    run, other = await _run(http), await _run(http)
    op = _as(http, tokens.operator)

    async def nonfinite_findings(run_id: str) -> list[dict]:  # type: ignore[type-arg]
        found = (await http.get(f"/v1/runs/{run_id}/findings")).json()
        return [f for f in found if f["detector"] == "nonfinite_step"]

    step = 0

    async def bad_then_good(run_id: str) -> None:
        nonlocal step
        for loss in ("NaN", 0.1):  # NaN fires; a finite loss re-arms the detector
            r = await http.post(f"/v1/runs/{run_id}/steps", json=update(step, loss=loss))  # type: ignore[arg-type]
            assert r.status_code == 201, r.text
            step += 1

    await bad_then_good(run)
    first = await nonfinite_findings(run)
    assert len(first) == 1
    r = await http.post(f"/v1/findings/{first[0]['id']}/ack", headers=op, json={"snooze_seconds": 600})
    assert r.status_code == 200 and r.json()["status"] == "snoozed"
    commands_before = len((await http.get(f"/v1/runs/{run}/commands")).json())

    await bad_then_good(run)
    assert len(await nonfinite_findings(run)) == 1  # silenced
    assert len((await http.get(f"/v1/runs/{run}/commands")).json()) == commands_before
    await bad_then_good(other)
    assert len(await nonfinite_findings(other)) == 1  # the snooze is per run

    with app.state.session_factory.begin() as s:  # the window passes
        s.execute(sql_update(FindingRecord).where(FindingRecord.id == first[0]["id"])
                  .values(snoozed_until=datetime.now(UTC) - timedelta(seconds=1)))  # fmt: skip
    await bad_then_good(run)
    assert len(await nonfinite_findings(run)) == 2
