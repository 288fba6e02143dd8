"""``rlkeel demo``: one command, a service on SQLite, a run that blows up and is caught."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from rlkeel.cli.main import main
from rlkeel.cli.report.data import from_database
from rlkeel.server.settings import Settings

pytestmark = pytest.mark.slow


def test_demo_detects_the_blow_up_intervenes_and_recovers(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    started = time.perf_counter()
    assert main(["demo", "--dir", str(tmp_path)]) == 0
    seconds = time.perf_counter() - started
    out = capsys.readouterr().out
    assert seconds < 180, seconds

    # live progress: one line per step with reward, KL, length, entropy; interventions inline
    assert "step  reward       KL  length  entropy" in out
    assert "⚑ service: rollback" in out and "↳ trainer: rollback applied" in out
    # the summary: tables of findings and commands, and the report
    assert "  findings\n" in out and "  commands\n" in out
    report = tmp_path / "report" / "index.html"
    assert f"report: {report}" in out and report.exists()

    # what the service stored: the blow-up (lr ×30 from step 30) was rolled back to a step
    # before it, with the learning rate cut, and the run ended healthy
    run_id = out.split("  run ", 1)[1].split(":", 1)[0]
    history = from_database(run_id, Settings(database_url=f"sqlite:///{tmp_path / 'rlkeel.sqlite'}"))
    applied = [(c.kind.value, c.params) for c in history.commands if c.status.value == "applied"]
    rollbacks = [params for kind, params in applied if kind == "rollback"]
    assert len(rollbacks) == 1 and rollbacks[0]["to_step"] <= 30
    assert ("scale_lr", {"factor": 0.1}) in applied
    assert history.run.status.value == "finished"
    rewards = [m["reward_mean"] for m in history.metrics.values()]
    healthy = sum(rewards[20:30]) / 10
    assert len(rewards) == 60
    assert sum(rewards[-10:]) / 10 > 0.75 * healthy  # recovered, not collapsed


def test_observe_mode_shows_the_collapse_it_would_have_prevented(tmp_path: Path) -> None:
    from rlkeel.cli.demo import run_demo

    out = io.StringIO()
    summary = run_demo(tmp_path, inject=["lr_blowup@30"], steps=45, mode="observe", out=out)
    assert summary["commands"] == []  # findings only
    assert "⚑ service" not in out.getvalue()
    assert summary["reward_last5"] < 0.5  # nobody stepped in: the reward fell
