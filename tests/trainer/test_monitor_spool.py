"""The report spool (bounded, on disk, in order) and the sender that drains it."""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import Any

import pytest

from rlkeel.trainer.monitor import PermanentError, ReportSender, Spool, TransientError


def report(step: int, samples: int = 0, **extra: Any) -> dict[str, Any]:
    return {"type": "report", "step": step, "phase": "update", "metrics": {"loss": 0.5, **extra},
            "samples": [{"sample_id": f"s{i}", "pad": "x" * 100} for i in range(samples)]}  # fmt: skip


def test_spool_is_fifo_survives_a_new_process_and_keeps_nan(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "q", max_bytes=1 << 20)
    for step in range(3):
        spool.append(report(step, loss_nan=math.nan))
    again = Spool(tmp_path / "q", max_bytes=1 << 20)  # e.g. the trainer restarted
    assert len(again) == 3 and again.bytes == spool.bytes
    seq, head = again.peek()  # type: ignore[misc]
    assert head["step"] == 0 and math.isnan(head["metrics"]["loss_nan"])
    again.pop(seq)
    again.append(report(3))
    steps = []
    while (item := again.peek()) is not None:
        steps.append(item[1]["step"])
        again.pop(item[0])
    assert steps == [1, 2, 3] and again.bytes == 0
    again.remove_if_empty()
    assert not (tmp_path / "q").exists()


def test_spool_bound_slims_then_drops_with_a_clear_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rlkeel.trainer.monitor")
    one = len(str(report(0, samples=20)))  # about the size of one item with samples
    spool = Spool(tmp_path / "q", max_bytes=5 * one)
    outcomes = [spool.append(report(s, samples=20)) for s in range(100)]
    assert outcomes[:3] == ["spooled"] * 3
    assert "slimmed" in outcomes and outcomes[-1] == "dropped"
    assert spool.bytes <= spool.max_bytes
    slim = [item for _, item in _drain(spool) if item.get("samples_dropped")]
    assert slim and all(item["samples"] == [] and item["samples_dropped"] == 20 for item in slim)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("without their per-sample statistics" in m for m in messages) == 1  # once
    assert sum("DROPPED" in m and "--spool-max-mb" in m for m in messages) == 1


def _drain(spool: Spool) -> list[tuple[int, dict[str, Any]]]:
    out = []
    while (item := spool.peek()) is not None:
        out.append(item)
        spool.pop(item[0])
    return out


class FlakyService:
    """Takes items, or fails (transiently) while ``down`` is set; refuses step 13 for good."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.taken: list[int] = []
        self.attempts = 0

    def __call__(self, item: dict[str, Any]) -> None:
        self.attempts += 1
        if self.down.is_set():
            raise TransientError("connection refused")
        if item["step"] == 13:
            raise PermanentError("422 bad report")
        self.taken.append(item["step"])


def test_sender_keeps_order_across_an_outage_and_drops_only_refused_items(tmp_path: Path) -> None:
    service = FlakyService()
    sender = ReportSender(service, Spool(tmp_path / "q", 1 << 20), min_backoff_s=0.01,
                          max_backoff_s=0.05)  # fmt: skip
    for step in range(5):
        sender.submit(report(step))
    assert sender.wait_idle(30)
    service.down.set()
    for step in range(5, 20):
        sender.submit(report(step))
    deadline = threading.Event()
    deadline.wait(0.3)
    assert not sender.healthy and not sender.reachable and len(sender.spool) >= 1
    service.down.clear()
    assert sender.wait_idle(30)
    assert service.taken == [s for s in range(20) if s != 13]
    assert sender.healthy and sender.refused == 1 and sender.failures >= 1
    assert sender.close(5) is True


def test_close_keeps_what_was_not_delivered_on_disk(tmp_path: Path) -> None:
    service = FlakyService()
    service.down.set()
    sender = ReportSender(service, Spool(tmp_path / "q", 1 << 20), min_backoff_s=0.01,
                          max_backoff_s=0.05)  # fmt: skip
    for step in range(4):
        sender.submit(report(step))
    assert sender.close(0.2) is False
    assert [item["step"] for _, item in _drain(Spool(tmp_path / "q", 1 << 20))] == [0, 1, 2, 3]
