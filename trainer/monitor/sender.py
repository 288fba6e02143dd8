"""The background sender: delivers items (update reports, late rollout reports, command acks,
the run's end) to the service strictly in the order they were submitted, without ever making
the training loop wait.

Items go to an in-memory queue while the service answers. When a delivery fails for a
transient reason (connection refused, timeout, 5xx) the failed item and everything queued
behind it move to the disk spool, in order, and every later item goes to the spool too until
the spool is empty again; the sender retries the spool's head with capped exponential backoff.
Every call is idempotent at the service (reports on (run, step, phase), acks, the run status),
so an item whose answer was lost is simply sent again. A permanent refusal (4xx) drops that
one item with a warning: sending it again cannot succeed.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

from rlkeel.trainer.monitor.spool import DROPPED, Spool, log, warn


class TransientError(Exception):
    """The service is away or overloaded: keep the item and retry later."""


class PermanentError(Exception):
    """The service refused the item for good (4xx): drop it."""


Deliver = Callable[[dict[str, Any]], None]


class ReportSender:
    """One daemon thread calling ``deliver(item)`` for each submitted item, in order."""

    def __init__(self, deliver: Deliver, spool: Spool, *, min_backoff_s: float = 0.25,
                 max_backoff_s: float = 5.0, name: str = "rlkeel-sender") -> None:  # fmt: skip
        self._deliver = deliver
        self.spool = spool
        self.min_backoff_s, self.max_backoff_s = min_backoff_s, max_backoff_s
        self._memory: collections.deque[dict[str, Any]] = collections.deque()
        self._inflight = 0
        self._cond = threading.Condition()
        self._closing = False
        self.healthy = True
        """False from a transient failure until the spool is drained again."""
        self.reachable = True
        """False from a transient failure until the next delivery attempt succeeds."""
        self.delivered = 0
        self.refused = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the training side
    def submit(self, item: dict[str, Any]) -> None:
        """Queue ``item`` behind everything submitted before it; never blocks on the network."""
        with self._cond:
            if self.healthy and not len(self.spool):
                self._memory.append(item)
            elif self.spool.append(item) == DROPPED:
                pass  # the spool announced it
            self._cond.notify_all()

    def backlog(self) -> int:
        """Items not yet delivered (queued, spooled or in flight)."""
        with self._cond:
            return len(self._memory) + len(self.spool) + self._inflight

    def wait_idle(self, timeout: float) -> bool:
        """Wait until everything submitted so far is delivered; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._memory) + len(self.spool) + self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float = 0.0) -> bool:
        """Wait up to ``timeout`` for the backlog, then stop the thread. Whatever is still in
        memory goes to the spool, so nothing is silently lost. True when all was delivered."""
        done = self.wait_idle(timeout) if timeout > 0 else self.backlog() == 0
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout=max(1.0, timeout))
        with self._cond:
            while self._memory:
                self.spool.append(self._memory.popleft())
        return done

    # ------------------------------------------------------------------ the thread
    def _next_item(self) -> tuple[int | None, dict[str, Any]] | None:
        """(spool seq or None, item), marked in flight; None when closing."""
        with self._cond:
            while True:
                if self._closing:
                    return None
                head = self.spool.peek()
                if head is not None:
                    self._inflight = 1
                    return head
                if self._memory:
                    self._inflight = 1
                    return None, self._memory.popleft()
                self._cond.wait()

    def _run(self) -> None:
        backoff = self.min_backoff_s
        while True:
            taken = self._next_item()
            if taken is None:
                return
            seq, item = taken
            try:
                self._deliver(item)
            except TransientError as exc:
                self.failures += 1
                with self._cond:
                    if seq is None:  # it came from memory: it and all behind it go to disk
                        self.spool.append(item)
                        while self._memory:
                            self.spool.append(self._memory.popleft())
                    if self.healthy:
                        warn(f"the service is unreachable ({exc}); training goes on with local "
                             f"guards and reports wait in {self.spool.directory}")  # fmt: skip
                    self.healthy = False
                    self.reachable = False
                    self._inflight = 0
                    self._cond.notify_all()
                    deadline = time.monotonic() + backoff
                    while not self._closing and (left := deadline - time.monotonic()) > 0:
                        self._cond.wait(left)
                backoff = min(self.max_backoff_s, backoff * 2)
                continue
            except PermanentError as exc:
                self.refused += 1
                log.warning("the service refused %s: %s (dropped)", _describe(item), exc)
            except Exception as exc:  # noqa: BLE001 - the sender must outlive any bug
                self.refused += 1
                log.exception("could not deliver %s: %s (dropped)", _describe(item), exc)
            else:
                self.delivered += 1
            backoff = self.min_backoff_s
            with self._cond:
                self.reachable = True
                if seq is not None:
                    self.spool.pop(seq)
                self._inflight = 0
                if not self.healthy and not len(self.spool):
                    self.healthy = True
                    log.warning("the service is back; the spooled reports are delivered")
                self._cond.notify_all()


def _describe(item: dict[str, Any]) -> str:
    if item.get("type") == "report":
        return f"the {item.get('phase')} report of step {item.get('step')}"
    if item.get("type") == "ack":
        return f"the ack of command {item.get('command_id')}"
    return str(item.get("type", "an item"))
