"""A bounded first-in-first-out spool of JSON items on disk, for reports the service has not
taken yet. One file per item, named by a sequence number, written atomically (tmp + rename):
a crash leaves whole items or none. JSON keeps NaN/±inf as its bare tokens.

The bound (``max_bytes``) is shared so that a long outage loses the least: per-sample data may
fill ``sample_share`` of it; past that, rollout reports are kept without their samples (their
step metrics are small), and only past the whole bound are items dropped. Each threshold is
announced once, loudly, on the ``rlkeel.trainer.monitor`` logger and on stderr.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("rlkeel.trainer.monitor")

SPOOLED, SLIMMED, DROPPED = "spooled", "slimmed", "dropped"


def warn(message: str) -> None:
    """A warning the user must see even without logging configured."""
    log.warning(message)
    if not log.hasHandlers() or not log.isEnabledFor(logging.WARNING):
        print(f"rlkeel: warning: {message}", file=sys.stderr, flush=True)


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


class Spool:
    """FIFO of JSON-able dicts under ``directory`` (thread-safe)."""

    def __init__(self, directory: str | Path, max_bytes: int, *, sample_share: float = 0.9) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self.sample_budget = int(max_bytes * sample_share)
        self._lock = threading.Lock()
        self._sizes: dict[int, int] = {}
        for path in self.directory.glob("*.json"):  # items left by an earlier process
            if path.stem.isdigit():
                self._sizes[int(path.stem)] = path.stat().st_size
        self._next = max(self._sizes, default=-1) + 1
        self.bytes = sum(self._sizes.values())
        self.slimmed = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._sizes)

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:012d}.json"

    def append(self, item: dict[str, Any]) -> str:
        """Add ``item`` at the tail; returns ``spooled``, ``slimmed`` (kept without samples) or
        ``dropped`` (the bound is hit)."""
        data = json.dumps(item, separators=(",", ":")).encode()
        outcome = SPOOLED
        with self._lock:
            if item.get("samples") and self.bytes + len(data) > self.sample_budget:
                item = {**item, "samples": [], "samples_dropped": len(item["samples"])}
                data = json.dumps(item, separators=(",", ":")).encode()
                outcome = SLIMMED
                self.slimmed += 1
                if self.slimmed == 1:
                    warn(f"report spool {self.directory} holds {_size(self.bytes)} of its "
                         f"{_size(self.max_bytes)} bound: rollout reports are spooled without "
                         "their per-sample statistics from now on")  # fmt: skip
            if self.bytes + len(data) > self.max_bytes:
                self.dropped += 1
                if self.dropped == 1:
                    warn(f"report spool {self.directory} is full ({_size(self.max_bytes)}): "
                         "reports are being DROPPED until the service takes the backlog "
                         "(raise --spool-max-mb to keep more)")  # fmt: skip
                return DROPPED
            seq = self._next
            self._next += 1
            path = self._path(seq)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            self._sizes[seq] = len(data)
            self.bytes += len(data)
        return outcome

    def peek(self) -> tuple[int, dict[str, Any]] | None:
        """The oldest item and its sequence number, or None when empty."""
        with self._lock:
            if not self._sizes:
                return None
            seq = min(self._sizes)
        return seq, json.loads(self._path(seq).read_bytes())

    def pop(self, seq: int) -> None:
        """Remove item ``seq`` (after the service took it)."""
        with self._lock:
            size = self._sizes.pop(seq, None)
            if size is None:
                return
            self.bytes -= size
            self._path(seq).unlink(missing_ok=True)

    def remove_if_empty(self) -> None:
        with self._lock:
            if not self._sizes:
                for leftover in self.directory.glob(".*.tmp"):
                    leftover.unlink(missing_ok=True)
                try:
                    self.directory.rmdir()
                except OSError:
                    pass
