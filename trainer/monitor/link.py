"""The trainer's link to the service (DESIGN §2, §5): register the run, report each rollout and
wait (briefly) for the verdict, report each update without waiting, hand the commands the
service sends to the loop, acknowledge them, and mark the run's end.

Fail-open: the service may be slow, away or restarting; training never waits for it longer
than ``verdict_timeout_s`` per step, and never stops because of it. Without a verdict the local
guards decide (``guards.py``) and the report joins the sender's queue, which spools to disk
while the service is away and replays in order when it returns (``sender.py``, ``spool.py``).
Reports keep their order: a rollout is sent synchronously only when everything before it has
been delivered.

Only rank 0 has a link; the loop broadcasts what it returns to every rank.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlkeel.client import (
    APIError,
    Client,
    RlkeelError,
    RunCreate,
    ServerError,
    StepReport,
    TransportError,
)
from rlkeel.trainer.loop import LoopReport, PendingCommand, RolloutVerdict
from rlkeel.trainer.monitor.guards import local_verdict
from rlkeel.trainer.monitor.sender import PermanentError, ReportSender, TransientError
from rlkeel.trainer.monitor.spool import Spool, log, warn

if TYPE_CHECKING:
    from rlkeel.trainer.config import TrainConfig
    from rlkeel.trainer.loop import Trainer

SEND_TIMEOUT_S = 30.0
FINISH_TIMEOUT_S = 60.0


def is_transient(exc: Exception) -> bool:
    """Worth retrying: no answer, a 5xx, or 429."""
    if isinstance(exc, (TransportError, ServerError)):
        return True
    return isinstance(exc, APIError) and exc.status_code == 429


class ServiceLink:
    """The hooks ``Trainer`` calls (``on_rollout``, ``on_update``, ``on_command``), talking to
    the service at ``url`` with ``token``. Use ``attach(trainer)`` then ``finish(...)``."""

    def __init__(self, url: str, token: str, *, verdict_timeout_s: float = 2.0,
                 spool_dir: str | Path | None = None, spool_max_mb: float = 256.0,
                 guard_max_length: int | None = None, transport: Any = None,
                 send_timeout_s: float = SEND_TIMEOUT_S) -> None:  # fmt: skip
        self.url = url
        self.verdict_timeout_s = verdict_timeout_s
        self.guard_max_length = guard_max_length
        # Two clients: the verdict one gives up at the step's deadline (what is left of it after
        # waiting for the backlog), the sender's one is patient. No client-level retries: the
        # sender retries with its own backoff.
        self._fast = Client(url, token=token, timeout=verdict_timeout_s, retries=0,
                            transport=transport)  # fmt: skip
        self._slow = Client(url, token=token, timeout=send_timeout_s, retries=0,
                            transport=transport)  # fmt: skip
        base = Path(spool_dir) if spool_dir else Path(tempfile.gettempdir()) / "rlkeel-spool"
        name = f"spool-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{id(self) % 10_000:04d}"
        self.spool = Spool(base / name, int(spool_max_mb * 2**20))
        self.run_id: str | None = None
        self._run_create: RunCreate | None = None
        self._inbox: list[PendingCommand] = []
        self._inbox_lock = threading.Lock()
        self._seen_commands: set[Any] = set()
        self.trainer: Trainer | None = None
        self.local_verdicts = 0
        """Rollouts the local guards decided (no verdict in time)."""
        self._last_local = False
        self.sender = ReportSender(self._deliver, self.spool)

    @classmethod
    def from_config(cls, config: TrainConfig, **kwargs: Any) -> ServiceLink:
        if not config.server_url or not config.token:
            raise ValueError("a service link needs server_url and token (--server, --token, or "
                             "RLKEEL_SERVER_URL / RLKEEL_TOKEN)")  # fmt: skip
        spool_dir = config.spool_dir or (str(Path(config.out_dir) / "spool")
                                         if config.out_dir else None)  # fmt: skip
        return cls(config.server_url, config.token, verdict_timeout_s=config.verdict_timeout_s,
                   spool_dir=spool_dir, spool_max_mb=config.spool_max_mb,
                   guard_max_length=config.guard_max_length, **kwargs)  # fmt: skip

    # ------------------------------------------------------------------ registration
    def register(self, run: RunCreate) -> str | None:
        """Register the run; returns its id, or None when the service is away (the sender then
        registers it before delivering anything). A refusal (bad token, bad fields) raises."""
        self._run_create = run
        try:
            self.run_id = self._slow.register_run(run).id
        except RlkeelError as exc:
            if not is_transient(exc):
                raise
            warn(f"could not register the run at {self.url} ({exc}); training starts with "
                 "local guards and registers it when the service answers")  # fmt: skip
            return None
        return self.run_id

    def attach(self, trainer: Trainer, *, name: str | None = None, project: str = "default",
               mode: str = "auto") -> str | None:  # fmt: skip
        """Register ``trainer``'s run and install the hooks; returns the run id (or None, see
        ``register``)."""
        self.trainer = trainer
        trainer.on_rollout, trainer.on_update = self.on_rollout, self.on_update
        trainer.on_command = self.on_command
        cfg = trainer.config
        params = sum(p.numel() for p in trainer.model.parameters())
        run = RunCreate.model_validate({
            "name": name or f"{trainer.algorithm}-{cfg.task}-{cfg.model}",
            "project": project, "algorithm": trainer.algorithm,
            "model": {"name": cfg.model, "parameter_count": params, "moe": False},
            "config": _jsonable(cfg.to_dict()), "world_size": trainer.world,
            "verifiable_rewards": True, "automation": mode,
        })  # fmt: skip
        return self.register(run)

    @property
    def last_verdict_local(self) -> bool:
        """True when the local guards decided the latest rollout (no verdict in time)."""
        return self._last_local

    # ------------------------------------------------------------------ the hooks
    def on_rollout(self, report: LoopReport) -> RolloutVerdict:
        """The service's verdict within the deadline, else the local guards'. Commands that
        arrived in the meantime ride along (the loop applies them at this step's boundary)."""
        deadline = time.monotonic() + self.verdict_timeout_s
        verdict = None
        # Reports keep their order, so the rollout goes out once everything before it has been
        # delivered. While the service answers, that wait is short (the previous update report)
        # — or, right after an outage, the backlog draining: the step then waits up to the
        # timeout, which lets the replay catch up instead of falling ever further behind.
        # While the service does not answer, the step does not wait at all.
        if (self.run_id is not None and self.sender.reachable
                and self.sender.wait_idle(self.verdict_timeout_s)):  # fmt: skip
            left = deadline - time.monotonic()
            if left > 0.05:
                verdict = self._rollout_now(report, left)
        self._last_local = verdict is None
        if verdict is None:
            self.sender.submit(_report_item(report))
            verdict = local_verdict(report.samples, length_cap=self._length_cap())
            self.local_verdicts += 1
        verdict.commands = list(verdict.commands) + self._take_inbox()
        return verdict

    def _rollout_now(self, report: LoopReport, timeout: float) -> RolloutVerdict | None:
        assert self.run_id is not None
        try:
            answer = self._fast.report_step(self.run_id, report.to_wire(), timeout=timeout)
        except RlkeelError as exc:
            if is_transient(exc):
                log.warning("no verdict for step %d within %.1fs (%s): local guards decide",
                            report.step, timeout, exc)  # fmt: skip
            else:
                log.warning("the service refused the rollout report of step %d: %s",
                            report.step, exc)  # fmt: skip
            return None
        verdict = RolloutVerdict.from_any(answer)
        verdict.commands = self._fresh(verdict.commands)
        return verdict

    def on_update(self, report: LoopReport) -> list[PendingCommand]:
        """Queue the update report (never waits) and return the commands that arrived."""
        metrics = dict(report.metrics)
        metrics["service_verdict_local"] = 1.0 if self._last_local else 0.0
        metrics["service_backlog"] = float(self.sender.backlog())
        self.sender.submit(_report_item(LoopReport(report.step, report.phase, report.algorithm,
                                                   metrics)))  # fmt: skip
        return self._take_inbox()

    def on_command(self, command: PendingCommand, status: str, detail: str) -> None:
        """Acknowledge an applied, rejected or failed command (queued behind the reports)."""
        if command.id is None or self.trainer is None:
            return
        self.sender.submit({"type": "ack", "command_id": command.id, "status": status,
                            "step": self.trainer.step, "detail": detail[:2000]})  # fmt: skip

    # ------------------------------------------------------------------ the end
    def finish(self, status: str = "finished", detail: str | None = None, *,
               timeout: float = FINISH_TIMEOUT_S) -> bool:  # fmt: skip
        """Deliver the backlog (up to ``timeout``), then mark the run ``status`` and close.
        True when everything reached the service; otherwise the spool keeps the rest and the
        run stays ``running`` there."""
        self.sender.submit({"type": "status", "status": status, "detail": detail})
        return self.close(timeout)

    def close(self, timeout: float = 0.0) -> bool:
        """Stop the sender after up to ``timeout`` seconds of delivering; what is left stays in
        the spool (with a warning). True when nothing was left."""
        done = self.sender.close(timeout)
        if not done:
            warn(f"{len(self.spool)} report(s) did not reach the service; they are kept in "
                 f"{self.spool.directory}")  # fmt: skip
        else:
            self.spool.remove_if_empty()
        self._fast.close()
        self._slow.close()
        return done

    # ------------------------------------------------------------------ internals
    def _length_cap(self) -> int:
        if self.guard_max_length is not None:
            return self.guard_max_length
        return self.trainer.max_new_tokens if self.trainer is not None else 2**31

    def _take_inbox(self) -> list[PendingCommand]:
        with self._inbox_lock:
            taken, self._inbox = self._inbox, []
        return taken

    def _fresh(self, commands: list[Any]) -> list[PendingCommand]:
        """Commands not seen before (a verdict may be received twice after a lost answer)."""
        out = []
        with self._inbox_lock:
            for c in commands:
                pc = PendingCommand.from_any(c)
                if pc.id is not None and pc.id in self._seen_commands:
                    continue
                self._seen_commands.add(pc.id)
                out.append(pc)
        return out

    def _deliver(self, item: dict[str, Any]) -> None:
        """The sender's one call per item: raises TransientError or PermanentError."""
        try:
            if self.run_id is None:
                if self._run_create is None:
                    raise TransientError("the run is not registered yet")
                self.run_id = self._slow.register_run(self._run_create).id
                log.warning("registered run %s", self.run_id)
            kind = item["type"]
            if kind == "report":
                answer = self._slow.report_step(self.run_id, _wire_report(item))
                fresh = self._fresh(list(answer.commands))
                if fresh:
                    with self._inbox_lock:
                        self._inbox.extend(fresh)
            elif kind == "ack":
                self._slow.ack_command(int(item["command_id"]), item["status"], int(item["step"]),
                                       item.get("detail"))  # fmt: skip
            elif kind == "status":
                self._slow.set_run_status(self.run_id, item["status"], item.get("detail"))
            else:
                raise PermanentError(f"unknown item type {kind!r}")
        except RlkeelError as exc:
            if is_transient(exc):
                raise TransientError(str(exc)) from exc
            raise PermanentError(str(exc)) from exc


def _report_item(report: LoopReport) -> dict[str, Any]:
    return {"type": "report", "step": report.step, "phase": report.phase,
            "algorithm": report.algorithm, "metrics": dict(report.metrics),
            "samples": list(report.samples)}  # fmt: skip


def _wire_report(item: dict[str, Any]) -> StepReport:
    metrics = dict(item["metrics"])
    if item.get("samples_dropped"):
        metrics["spool_samples_not_kept"] = float(item["samples_dropped"])
    return StepReport.model_validate({"step": item["step"], "phase": item["phase"],
                                      "algorithm": item["algorithm"], "metrics": metrics,
                                      "samples": item["samples"]})  # fmt: skip


def _jsonable(value: Any) -> Any:
    """The config as plain JSON (NaN → None: a JSON column cannot hold it)."""
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
