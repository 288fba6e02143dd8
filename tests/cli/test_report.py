"""``rlkeel report``: charts and the HTML page of a stored run, through the API or the database."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rlkeel.cli.main import main
from rlkeel.cli.report.charts import CHARTS, _injected_faults
from rlkeel.cli.report.data import command_step, from_database
from rlkeel.client import Client, CommandCreate, SampleStats, StepReport

PNG = b"\x89PNG\r\n\x1a\n"


def sample(step: int, i: int) -> SampleStats:
    return SampleStats(sample_id=f"s{step}-{i}", group_id=f"s{step}-g{i // 4}",
                       reward=float(i % 2), advantage=0.5 if i % 2 else -0.5, length=6 + i % 3,
                       truncated=False, kl=0.01, entropy=1.0, repetition=0.0)  # fmt: skip


def store_a_run(url: str, trainer_token: str, operator_token: str) -> str:
    """25 healthy steps, then a non-finite grad norm (the policy answers with a rollback),
    and an operator's scale_lr."""
    with Client(url, token=trainer_token) as rk:
        run = rk.register_run(name="report-me", algorithm="grpo",
                              model={"name": "builtin-tiny", "parameter_count": 1000},
                              config={"inject": ["lr_blowup@10:30"]})  # fmt: skip
        for step in range(30):
            metrics = {"reward_mean": 0.2 + 0.01 * step, "kl_mean": 0.01 + 0.001 * step,
                       "entropy_mean": 1.0, "length_mean": 6.0}  # fmt: skip
            rk.report_step(run.id, StepReport(step=step, phase="rollout", algorithm="grpo",
                                              metrics=metrics,
                                              samples=[sample(step, i) for i in range(8)]))  # fmt: skip
            grad = math.nan if step == 25 else 1.0 + 0.05 * (step % 3)
            rk.report_step(run.id, StepReport(step=step, phase="update", algorithm="grpo",
                                              metrics={"loss": 0.1, "grad_norm": grad,
                                                       "clip_frac": 0.001}))  # fmt: skip
    with Client(url, token=operator_token) as op:
        op.issue_command(run.id, CommandCreate(kind="scale_lr", params={"factor": 0.5},
                                               reason="by hand"))  # fmt: skip
    return run.id


def test_report_through_the_api_and_from_the_database(live_server, tokens, settings,
                                                       tmp_path: Path, monkeypatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    run_id = store_a_run(live_server.url, tokens.trainer, tokens.operator)
    out = tmp_path / "api"
    assert main(["report", run_id, "--out", str(out), "--server", live_server.url,
                 "--token", tokens.operator]) == 0  # fmt: skip
    assert capsys.readouterr().out.strip() == str(out / "index.html")
    for metric, _, _ in CHARTS:
        assert (out / f"{metric}.png").read_bytes().startswith(PNG), metric
    page = (out / "index.html").read_text()
    assert "report-me" in page and "nonfinite_step" in page
    assert "<td>rollback</td>" in page and "<td>scale_lr</td>" in page and "by hand" in page
    for metric, _, _ in CHARTS:
        assert f"src='{metric}.png'" in page

    # the same history from the database, without the service
    history = from_database(run_id, settings)
    assert list(history.metrics) == list(range(30))
    assert history.metrics[3]["reward_mean"] == pytest.approx(0.23)
    assert history.metrics[3]["grad_norm"] == 1.0  # the update's metrics join the rollout's
    assert math.isnan(history.metrics[25]["grad_norm"])
    kinds = [c.kind.value for c in history.commands]
    assert "rollback" in kinds and "scale_lr" in kinds
    rollback = next(c for c in history.commands if c.kind.value == "rollback")
    assert command_step(rollback) == 25 and rollback.params["to_step"] < 25
    assert [f.detector for f in history.findings].count("nonfinite_step") == 1
    assert _injected_faults(history) == [(10, "lr_blowup")]  # marked on the charts

    monkeypatch.setenv("RLKEEL_DATABASE_URL", settings.database_url)
    monkeypatch.delenv("RLKEEL_SERVER_URL", raising=False)
    db_out = tmp_path / "db"
    assert main(["report", run_id, "--out", str(db_out)]) == 0
    assert sorted(p.name for p in db_out.iterdir()) == sorted(
        ["index.html", *(f"{m}.png" for m, _, _ in CHARTS)])
    capsys.readouterr()


def test_report_says_plainly_when_the_run_is_unknown(live_server, tokens, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    code = main(["report", "no-such-run", "--out", str(tmp_path), "--server", live_server.url,
                 "--token", tokens.operator])  # fmt: skip
    assert code == 2
    assert "no-such-run" in capsys.readouterr().err
    assert not (tmp_path / "index.html").exists()
