"""Fail-open, end to end: the service process is killed with SIGKILL in the middle of a run
and started again. The trainer never stops (local guards decide while the service is away),
its reports wait in the spool and are replayed in order, and the database ends with every
step exactly once — no gap, no duplicate."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from rlkeel.client import Client
from tests.conftest import free_port

from .monitoring import LengthTask, attach, make_trainer, steps_in_service


class ServiceProcess:
    """``rlkeel serve`` in its own process group, so a SIGKILL takes all of it."""

    def __init__(self, database_url: str, port: int, log: Path) -> None:
        self.env = {**os.environ, "RLKEEL_DATABASE_URL": database_url}
        self.port, self.log = port, log
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rlkeel.cli.main", "serve", "--port", str(self.port)],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + timeout  # generous: the machine may be loaded
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the service did not start in time")

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture
def service_process(settings, tokens, tmp_path: Path):  # type: ignore[no-untyped-def]
    proc = ServiceProcess(settings.database_url, free_port(), tmp_path / "server.log")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


KILL_AT, RESTART_AT, AFTER = 3, 6, 4


def test_sigkill_mid_run_loses_nothing_and_never_stops_training(  # type: ignore[no-untyped-def]
        service_process: ServiceProcess, tokens, tmp_path: Path, one_torch_thread) -> None:  # fmt: skip
    trainer = make_trainer(tmp_path, task=LengthTask(), steps=100_000, prompts_per_step=4,
                           group_size=4)  # fmt: skip
    link = attach(trainer, service_process.url, tokens.trainer, verdict_timeout_s=10.0)
    restarted = threading.Event()

    def restart() -> None:
        service_process.start()
        restarted.set()

    events: list[tuple[str, int]] = []
    step_times: list[float] = []
    started = time.monotonic()
    back_at: int | None = None
    deadline = time.monotonic() + 600
    while trainer.step < trainer.config.steps and time.monotonic() < deadline:
        if trainer.step == KILL_AT:
            service_process.kill()
            events.append(("killed", trainer.step))
        if trainer.step == RESTART_AT:
            threading.Thread(target=restart, daemon=True).start()
        t0 = time.monotonic()
        trainer.train_step()
        step_times.append(time.monotonic() - t0)
        time.sleep(0.05)  # a real step takes longer than the tiny model's few milliseconds
        if back_at is None and restarted.is_set() and link.sender.healthy:
            back_at = trainer.step
        if back_at is not None and trainer.step >= back_at + AFTER:
            break
    assert back_at is not None, "the service never came back"
    total = trainer.step
    assert link.finish("finished", timeout=120.0) is True
    elapsed = time.monotonic() - started

    # The trainer went on while the service was away: local guards decided those rollouts,
    # and no step waited anywhere near the verdict timeout for a dead service.
    assert link.local_verdicts >= RESTART_AT - KILL_AT
    assert link.sender.failures >= 1
    assert max(step_times[KILL_AT:RESTART_AT]) < 10.0
    assert len(trainer.history) == total
    # Every step exactly once, in the database of record, and the run was closed.
    with Client(service_process.url, token=tokens.trainer) as client:
        stored = steps_in_service(client, link.run_id)
        assert stored == [(s, p) for s in range(total) for p in ("rollout", "update")], stored
        assert client.get_run(link.run_id).status.value == "finished"
        assert len(client.list_samples(link.run_id, KILL_AT + 1)) == 16  # replayed with samples
        local = {s.step: s.metrics["service_verdict_local"]
                 for s in client.iter_steps(link.run_id, phase="update")}  # fmt: skip
        assert [local[s] for s in range(KILL_AT + 2)] == [0.0] * KILL_AT + [1.0, 1.0]
        assert local[total - 1] == 0.0  # verdicts from the service again at the end
    assert not link.spool.directory.exists()
    print(f"{total} steps in {elapsed:.1f}s; {link.local_verdicts} local verdicts; "
          f"back at step {back_at}")
