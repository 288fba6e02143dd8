"""The operator CLI against a real server on a loopback port (uvicorn, PostgreSQL)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import httpx
import pytest

from rlkeel.cli.main import main
from rlkeel.cli.operator_commands import UsageError, parse_assignments, parse_duration
from rlkeel.server.commands import service as commands
from rlkeel.server.db.models import FindingRecord
from tests.server.helpers import RUN, update


@pytest.fixture
def served(app, tokens, live_server, monkeypatch):  # type: ignore[no-untyped-def]
    """A real server with one run; the CLI finds it through the environment."""
    monkeypatch.setenv("RLKEEL_SERVER_URL", live_server.url)
    monkeypatch.setenv("RLKEEL_TOKEN", tokens.operator)
    r = httpx.post(f"{live_server.url}/v1/runs", json=RUN,
                   headers={"Authorization": f"Bearer {tokens.trainer}"})  # fmt: skip
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _cli(capsys, *argv: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _json(capsys, *argv: str) -> Any:  # type: ignore[no-untyped-def]
    code, out, err = _cli(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_runs_lists_the_run(served, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = _cli(capsys, "runs")
    assert code == 0
    header, row = out.splitlines()[:2]
    assert header.split()[:3] == ["ID", "NAME", "PROJECT"] and row.startswith(served)
    assert [r["id"] for r in _json(capsys, "runs")] == [served]


def test_command_by_hand_is_listed_and_audited(served, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, err = _cli(capsys, "command", served, "switch_algorithm", "to=gspo",
                          "overrides.clip_high=0.28", "--reason", "unstable KL")  # fmt: skip
    assert code == 0, err
    assert "switch_algorithm" in out and "pending" in out and '"clip_high":0.28' in out
    (cmd,) = _json(capsys, "commands", served)
    assert cmd["params"] == {"to": "gspo", "overrides": {"clip_high": 0.28}}
    assert cmd["origin"] == "operator" and cmd["reason"]["text"] == "unstable KL"
    (entry,) = _json(capsys, "audit")
    assert entry["action"] == "command.issue" and entry["actor"] == "operator:test-operator#3"
    assert entry["before"] is None and entry["after"]["id"] == cmd["id"]


def test_bad_command_params_print_the_field_and_exit_1(served, capsys) -> None:  # type: ignore[no-untyped-def]
    code, _, err = _cli(capsys, "command", served, "scale_lr", "factor=-1")
    assert code == 1 and "422" in err and "params.factor" in err
    code, _, err = _cli(capsys, "command", served, "scale_lr", "factor")
    assert code == 2 and "key=value" in err
    assert _json(capsys, "commands", served) == []


def test_approve_and_reject_held_commands(served, app, capsys) -> None:  # type: ignore[no-untyped-def]
    assert _cli(capsys, "automation", served, "approve")[0] == 0
    with app.state.session_factory.begin() as s:
        held = [commands.issue(s, run_id=served, kind="scale_lr", params={"factor": 0.5},
                               reason={"text": "spikes", "finding_ids": []}, origin="policy",
                               held=True, effective_step=None, actor="policy").id
                for _ in range(2)]  # fmt: skip
    listed = _json(capsys, "commands", served, "--status", "held")
    assert [c["id"] for c in listed] == held
    code, out, _ = _cli(capsys, "approve", str(held[0]), "--note", "fine")
    assert code == 0 and "approved" in out
    code, out, _ = _cli(capsys, "reject", str(held[1]))
    assert code == 0 and "refused" in out
    code, _, err = _cli(capsys, "approve", str(held[1]))
    assert code == 1 and "409" in err and "refused" in err
    actions = [(e["action"], (e["before"] or {}).get("status"), (e["after"] or {}).get("status"))
               for e in _json(capsys, "audit")]  # fmt: skip
    assert actions == [("run.automation", None, None), ("command.approve", "held", "approved"),
                       ("command.reject", "held", "refused")]  # fmt: skip
    code, out, _ = _cli(capsys, "audit")
    assert "automation: auto → approve" in out and "status: held → approved" in out


def test_findings_ack_and_snooze(served, app, capsys, live_server, tokens) -> None:  # type: ignore[no-untyped-def]
    trainer = {"Authorization": f"Bearer {tokens.trainer}"}
    r = httpx.post(f"{live_server.url}/v1/runs/{served}/steps", headers=trainer,
                   json={**update(0), "metrics": {"loss": "NaN"}})  # fmt: skip
    assert r.status_code == 201, r.text
    (finding,) = [f for f in _json(capsys, "findings", served) if f["detector"] == "nonfinite_step"]
    code, out, _ = _cli(capsys, "findings", served)
    assert code == 0 and "nonfinite_step" in out and "open" in out
    code, out, _ = _cli(capsys, "snooze", str(finding["id"]), "2h", "--note", "known")
    assert code == 0 and "snoozed" in out
    (snoozed,) = [f for f in _json(capsys, "findings", served, "--status", "snoozed")]
    assert snoozed["id"] == finding["id"] and snoozed["snoozed_until"]
    with app.state.session_factory.begin() as s:
        other = FindingRecord(run_id=served, step=1, phase="update", detector="kl_spike",
                              severity="high", metric="kl_mean", value=1.0, baseline=0.1,
                              threshold=6.0, message="KL spike", sample_ids=[], status="open")  # fmt: skip
        s.add(other)
        s.flush()
        other_id = other.id
    code, out, _ = _cli(capsys, "ack", str(other_id))
    assert code == 0 and "acknowledged" in out
    entries = _json(capsys, "audit", "--target-type", "finding")
    assert [e["after"]["status"] for e in entries] == ["snoozed", "acknowledged"]
    assert entries[0]["after"]["note"] == "known"


def test_policy_print_set_and_file(served, capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = _cli(capsys, "policy", served)
    assert code == 0 and json.loads(out)["max_drop_frac"] == 0.25
    code, out, err = _cli(capsys, "policy", served, "--set", "max_drop_frac=0.1",
                          "--set", "detectors.kl_spike.threshold=8")  # fmt: skip
    assert code == 0, err
    policy = json.loads(out)
    assert policy["max_drop_frac"] == 0.1 and policy["detectors"]["kl_spike"]["threshold"] == 8
    assert policy["detectors"]["kl_spike"]["rearm"] == 3  # the rest of the detector is kept
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"max_drop_frac": 0.2}))
    code, out, _ = _cli(capsys, "policy", served, "--file", str(path))
    assert code == 0 and json.loads(out)["max_drop_frac"] == 0.2
    code, _, err = _cli(capsys, "policy", served, "--set", "max_drop_frac=7")
    assert code == 1 and "max_drop_frac" in err
    entries = _json(capsys, "audit", "--target-type", "run")
    assert [e["after"]["max_drop_frac"] for e in entries] == [0.1, 0.2]


def test_wrong_role_missing_token_and_unreachable_server(served, capsys, tokens, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    code, _, err = _cli(capsys, "automation", served, "observe", "--token", tokens.viewer)
    assert code == 1 and "403" in err
    monkeypatch.delenv("RLKEEL_TOKEN")
    code, _, err = _cli(capsys, "runs")
    assert code == 2 and "RLKEEL_TOKEN" in err
    code, _, err = _cli(capsys, "runs", "--token", tokens.viewer, "--server",
                        "http://127.0.0.1:9", "--timeout", "0.5")  # fmt: skip
    assert code == 1 and "cannot reach http://127.0.0.1:9" in err


def test_the_installed_entry_point_reads_the_environment(served, live_server, tokens) -> None:  # type: ignore[no-untyped-def]
    env = {"PATH": "/usr/bin:/bin", "RLKEEL_SERVER_URL": live_server.url,
           "RLKEEL_TOKEN": tokens.viewer}  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "rlkeel.cli.main", "runs", "--json"], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert [r["id"] for r in json.loads(out.stdout)] == [served]


def test_parsing_helpers() -> None:
    assert parse_assignments(["to=gspo", "factor=0.5", "overrides.clip_high=0.28",
                              "reason=two words", "flag=true"]) == {
        "to": "gspo", "factor": 0.5, "overrides": {"clip_high": 0.28}, "reason": "two words",
        "flag": True,
    }  # fmt: skip
    assert [parse_duration(d) for d in ("600", "90s", "10m", "2h", "1d")] == [600, 90, 600, 7200,
                                                                              86400]  # fmt: skip
    for bad in ("0", "-5", "10x", "soon"):
        with pytest.raises(UsageError):
            parse_duration(bad)
