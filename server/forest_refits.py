"""IsolationForest refits off the request path, yet deterministic.

When a rollout report makes a refit due, the request only *snapshots* the reservoir (rows and
seed) into the run's state and hands the fit to a background worker process. The new model takes
over `ACTIVATION_DELAY` rollout reports later: by then the worker has usually finished (a fit
is ~0.3 s, reports of a real run ~1 s apart) and the model is taken from the cache; if not,
that request waits for the worker, or fits it itself if the worker failed, and logs it. Which model scores which report thus
depends only on the reports, never on timing: a restarted server and `rlkeel backtest` make
exactly the same decisions as the live run.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import pickle
import queue
import subprocess
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from rlkeel.server.detectors import RunDetectorState, forest_refit_due
from rlkeel.server.detectors import forest as forest_mod
from rlkeel.server.policy import PolicyConfig

log = logging.getLogger("rlkeel.server.forest")

ACTIVATION_DELAY = 8
"""Rollout reports between the snapshot of a refit and the moment its model takes over."""


@dataclass
class PendingFit:
    rows: list[list[float]]
    seed: int
    n_estimators: int
    activate_at: int
    """The rollout-report count at which the model takes over."""

    @functools.cached_property
    def key(self) -> str:
        """Digest of (rows, seed, n_estimators): the model cache's key (rows never change)."""
        return forest_mod._digest(self.rows, self.seed, self.n_estimators)

    def to_dict(self, *, rows: bool = True) -> dict[str, Any]:
        """`rows=False` leaves out the rows (stored apart)."""
        d: dict[str, Any] = {"seed": self.seed, "n_estimators": self.n_estimators,
                             "activate_at": self.activate_at}  # fmt: skip
        if rows:
            d["rows"] = self.rows
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PendingFit:
        return cls(rows=[[float(v) for v in r] for r in d["rows"]], seed=int(d["seed"]),
                   n_estimators=int(d["n_estimators"]), activate_at=int(d["activate_at"]))  # fmt: skip


def fit_into_cache(job: PendingFit) -> None:
    """Fit and cache by digest (idempotent); in this process."""
    key = job.key
    if key not in forest_mod._CACHE:
        forest_mod._fit(job.rows, job.seed, job.n_estimators, key)


_IN_FLIGHT: dict[str, Future[forest_mod.CompiledForest]] = {}
"""Fits submitted to the worker process and not yet cached, by digest."""


def activate_if_due(
    detectors: RunDetectorState, pending: PendingFit | None, rollouts: int
) -> PendingFit | None:
    """Before scoring a rollout report: switch to the pending model when its time has come."""
    if pending is None or rollouts < pending.activate_at:
        return pending
    key = pending.key
    model = forest_mod._CACHE.get(key)
    running = _IN_FLIGHT.get(key) if model is None else None
    if running is not None:  # submitted, not finished: it is the quickest way to the model
        try:
            model = running.result(timeout=_WAIT_FOR_WORKER_S)
            forest_mod.cache_model(key, model)
        except Exception:  # noqa: BLE001 - fit it here instead
            log.warning("forest refit worker did not deliver in time", exc_info=True)
    if model is None:
        log.warning("forest refit was not ready at activation; fitting on the request path")
        model = forest_mod._fit(pending.rows, pending.seed, pending.n_estimators, key)
    f = detectors.forest
    f.model, f.key = model, key
    f.fit_rows, f.fit_seed, f.fit_n_estimators = pending.rows, pending.seed, pending.n_estimators
    f.fit_count += 1
    return None


def snapshot_if_due(
    detectors: RunDetectorState, pending: PendingFit | None, rollouts: int, cfg: PolicyConfig
) -> PendingFit | None:
    """After a rollout report: snapshot the reservoir for a refit when one is due."""
    if pending is not None or not forest_refit_due(detectors, cfg):
        return pending
    f = detectors.forest
    n_estimators = int(cfg.detector("sample_isolation_forest").params["n_estimators"])
    f.reports_since_fit = 0
    return PendingFit(rows=[list(r) for r in f.rows], seed=(detectors.seed + f.fit_count) % (2**31),
                      n_estimators=n_estimators, activate_at=rollouts + ACTIVATION_DELAY)  # fmt: skip


_WAIT_FOR_WORKER_S = 10.0


class Refitter:
    """Hands fits to the worker process: one per server process, niced, shared by every app
    in the process (tests make many), closed at exit.

    A fit is ~0.3–0.5 s of CPU, half of it Python: in a thread it would hold the GIL against
    the requests. The worker (`python -m rlkeel.server.forest_refits`, started with the first
    rollout report) receives (rows, seed, n_estimators) and answers a `CompiledForest`, which
    goes into this process's model cache by digest. If the worker dies, pending fits fail
    (activation then fits on the request path) and the next fit starts a new worker.
    """

    def __init__(self) -> None:
        self._closed = False

    def warm(self) -> None:
        """Start the worker process now (it takes ~2 s to import), not at the first fit."""
        if not self._closed:
            try:
                _shared_worker()
            except Exception:  # noqa: BLE001 - fits then happen at activation
                log.exception("could not start the forest refit worker")

    def submit(self, job: PendingFit) -> None:
        key = job.key
        if self._closed or key in forest_mod._CACHE or key in _IN_FLIGHT:
            return
        try:
            future = _shared_worker().submit(job)
        except Exception:  # noqa: BLE001 - activation fits it on the request path
            log.exception("could not hand a forest refit to the worker process")
            return
        _IN_FLIGHT[key] = future
        future.add_done_callback(lambda f: _landed(key, f))

    def wait_idle(self) -> None:
        """Block until every submitted fit has finished (tests, benchmarks)."""
        for future in list(_IN_FLIGHT.values()):
            with contextlib.suppress(Exception):
                future.result()

    def shutdown(self) -> None:
        """No more fits from this app; the shared worker stops at exit (`_close_shared`)."""
        self._closed = True


_SHARED: list[_Worker] = []
_SHARED_LOCK = threading.Lock()


def _shared_worker() -> _Worker:
    with _SHARED_LOCK:
        if not _SHARED or not _SHARED[0].alive:
            if _SHARED:
                _SHARED.pop().close()
            _SHARED.append(_Worker())
        return _SHARED[0]


@atexit.register
def _close_shared() -> None:
    with _SHARED_LOCK:
        while _SHARED:
            _SHARED.pop().close()


class _Worker:
    """One child process, the thread that writes it jobs and the thread that reads its answers.

    The two pipes are served by separate threads and no lock is held across pipe I/O: the
    child reads a job, fits, then writes its answer, so a job (~65 kB) written while the child
    is busy blocks until it is done. Written from the submitting request's thread under the
    lock that the reader also needs, it deadlocked the three (the child blocked on a full
    answer pipe, the reader on the lock, the request on a full job pipe) and hung every later
    fit and the process's exit.
    """

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "rlkeel.server.forest_refits"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        self._pending: dict[int, Future[forest_mod.CompiledForest]] = {}
        self._next_id = 0
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.alive = True
        self._reader = threading.Thread(target=self._read, name="rlkeel-forest-reader", daemon=True)
        self._reader.start()
        threading.Thread(target=self._write, name="rlkeel-forest-writer", daemon=True).start()

    def submit(self, job: PendingFit) -> Future[forest_mod.CompiledForest]:
        """Queue a fit; never blocks on the child."""
        future: Future[forest_mod.CompiledForest] = Future()
        with self._lock:
            if not self.alive:
                raise RuntimeError("the forest worker process has exited")
            job_id, self._next_id = self._next_id, self._next_id + 1
            self._pending[job_id] = future
        self._jobs.put(pickle.dumps((job_id, job.rows, job.seed, job.n_estimators)))
        return future

    def _write(self) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            while (payload := self._jobs.get()) is not None:
                stdin.write(payload)
                stdin.flush()
        except (OSError, ValueError):  # the child is gone; the reader fails what is pending
            pass
        with contextlib.suppress(OSError, ValueError):
            stdin.close()  # the worker exits at end of input

    def _read(self) -> None:
        assert self._proc.stdout is not None
        try:
            while True:
                job_id, ok, value = pickle.load(self._proc.stdout)  # noqa: S301 - our child
                with self._lock:
                    future = self._pending.pop(job_id)
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(RuntimeError(f"forest fit failed in the worker: {value}"))
        except (EOFError, OSError, pickle.UnpicklingError):
            pass
        with self._lock:
            self.alive = False
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.set_exception(RuntimeError("the forest worker process exited"))

    def close(self) -> None:
        self._jobs.put(None)  # the writer closes the child's input after the queued jobs
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(timeout=5)  # it reads to the end of the child's output
        if self._proc.stdout is not None and not self._reader.is_alive():
            self._proc.stdout.close()


def _landed(key: str, future: Future[forest_mod.CompiledForest]) -> None:
    try:
        if future.exception() is None:
            forest_mod.cache_model(key, future.result())
        else:
            log.error("background forest refit failed: %s", future.exception())
    finally:
        _IN_FLIGHT.pop(key, None)


def _worker_main() -> None:
    """The worker process: fit jobs from stdin, compiled forests to stdout, until EOF."""
    with contextlib.suppress(OSError):
        os.nice(10)  # fits yield the CPU to requests
    # Answers go to a private copy of stdout; anything else printed goes to stderr.
    source, sink = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    while True:
        try:
            job_id, rows, seed, n_estimators = pickle.load(source)  # noqa: S301 - our parent
        except EOFError:
            return
        try:
            answer = (job_id, True, forest_mod.fit_forest(rows, seed, n_estimators))
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            answer = (job_id, False, repr(exc))
        pickle.dump(answer, sink)
        sink.flush()


if __name__ == "__main__":
    _worker_main()
