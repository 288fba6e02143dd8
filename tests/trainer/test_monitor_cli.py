"""``rlkeel train --server URL --token TOKEN`` (or the RLKEEL_SERVER_URL / RLKEEL_TOKEN
environment): the run is registered, reported, and marked finished at the end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlkeel.cli.main import main
from rlkeel.client import Client

from .monitoring import TINY, steps_in_service

ARGS = ["train", "--algorithm", "grpo", "--task", "reverse", "--steps", "2", "--group-size", "2",
        "--prompts-per-step", "2", "--max-new-tokens", "4", "--no-warm-start",
        "--model-options", json.dumps(TINY), "--device", "cpu", "--no-progress"]  # fmt: skip


def test_train_with_the_service_from_the_environment(live_server, tokens, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setenv("RLKEEL_SERVER_URL", live_server.url)
    monkeypatch.setenv("RLKEEL_TOKEN", tokens.trainer)
    code = main([*ARGS, "--out", str(tmp_path), "--run-name", "from-cli", "--mode", "approve",
                 "--verdict-timeout", "20", "--spool-max-mb", "8"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr()
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["run_id"]
    assert f"run {summary['run_id']} at {live_server.url}" in out.err
    assert "rollback commands will be rejected" in out.err  # no --checkpoint-every
    with Client(live_server.url, token=tokens.trainer) as client:
        run = client.get_run(summary["run_id"])
        assert (run.name, run.automation.value, run.status.value) == ("from-cli", "approve", "finished")
        assert run.config["spool_max_mb"] == 8 and "token" not in run.config
        assert steps_in_service(client, run.id) == [(0, "rollout"), (0, "update"),
                                                    (1, "rollout"), (1, "update")]  # fmt: skip
    assert not (tmp_path / "spool").exists() or not any((tmp_path / "spool").iterdir())


def test_server_without_a_token_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RLKEEL_TOKEN", raising=False)
    with pytest.raises(SystemExit, match="--token"):
        main([*ARGS, "--out", str(tmp_path), "--server", "http://127.0.0.1:9"])


def test_a_bad_token_fails_at_the_start_not_silently(live_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from rlkeel.client import AuthenticationError

    with pytest.raises(AuthenticationError):
        main([*ARGS, "--out", str(tmp_path), "--server", live_server.url, "--token", "rlk_nope"])
