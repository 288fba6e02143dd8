"""``rlkeel train`` end to end, in-process: no service, metrics as JSON lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlkeel.cli.main import main
from rlkeel.trainer.progress import metrics_line, read_metrics

from .test_loop import TINY


def test_rlkeel_train_writes_metrics_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--algorithm", "gspo", "--task", "reverse", "--steps", "2", "--seed", "1",
                 "--group-size", "2", "--prompts-per-step", "2", "--max-new-tokens", "4",
                 "--lr", "1e-3", "--no-warm-start", "--model-options", json.dumps(TINY),
                 "--checkpoint-every", "1", "--out", str(tmp_path), "--device", "cpu"])  # fmt: skip
    assert code == 0
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1] and rows[0]["algorithm"] == "gspo"
    for key in ("reward_mean", "entropy_mean", "length_mean", "loss", "grad_norm", "tokens_per_s"):
        assert isinstance(rows[-1][key], float), key
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["steps"] == 2
    assert "step" in captured.err  # the tqdm bar

    code = main(["train", "--algorithm", "gspo", "--task", "reverse", "--steps", "3", "--seed", "1",
                 "--group-size", "2", "--prompts-per-step", "2", "--max-new-tokens", "4",
                 "--no-warm-start", "--model-options", json.dumps(TINY), "--resume",
                 "--out", str(tmp_path), "--device", "cpu", "--no-progress"])  # fmt: skip
    assert code == 0
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 1, 2]


def test_nonfinite_metrics_stay_valid_json() -> None:
    line = metrics_line({"loss": float("nan"), "grad_norm": float("inf"), "step": 3})
    assert json.loads(line) == {"grad_norm": "Infinity", "loss": "NaN", "step": 3}
