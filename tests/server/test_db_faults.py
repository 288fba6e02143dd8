"""PostgreSQL stopped and restarted in the middle of a run, for real (`pg_ctlcluster`).

A private cluster (never the shared one), `rlkeel serve` in its own process, a trainer sending
reports through the client SDK. While the database is down the server answers 503 at once (no
hang), `/readyz` says so and `/healthz` still answers; when the database is back the same
server process recovers by itself, the trainer's retries deliver every report, and the
database holds each report exactly once with all its samples.

Two trainers: the client's retry loop (idempotent `report_step`, backoff with jitter), and
the real trainer with its service link, which decides locally and spools to disk while the
service cannot answer, then replays in order.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import psycopg
import pytest

from rlkeel.client import Client, StepReport, Verdict
from tests.server.helpers import RUN, rollout, update
from tests.server.pg_cluster import OwnCluster, available

STEPS = 40
SAMPLES = 64
QUICK_S = 2.0
"""A 503 while the database is down must come back within this."""


@pytest.fixture(scope="module")
def cluster() -> Iterator[OwnCluster]:
    why = available()
    if why is not None:
        pytest.fail(f"the database fault test needs a private cluster: {why}", pytrace=False)
    own = OwnCluster.create()
    try:
        yield own
    finally:
        own.drop()


@pytest.fixture
def server(cluster: OwnCluster) -> Iterator[tuple[str, str, str]]:
    """(server url, trainer token, database url) on a fresh database of the private cluster."""
    from rlkeel.server.auth import Role, create_api_key
    from rlkeel.server.db.engine import make_engine, make_session_factory
    from rlkeel.server.db.migrate import upgrade
    from rlkeel.server.process import ServerProcess
    from rlkeel.server.settings import Settings

    name = f"rlkload_fault_{time.monotonic_ns() % 10**9}"
    with psycopg.connect(cluster.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = cluster.url(name)
    settings = Settings(database_url=url)
    upgrade(settings)
    engine = make_engine(settings)
    with make_session_factory(engine).begin() as session:
        token = create_api_key(session, role=Role.trainer, name="fault-trainer")
    engine.dispose()
    # Keys are looked up on every request (no cache), so the auth path meets the outage too.
    proc = ServerProcess(url, extra_env={"RLKEEL_DB_CONNECT_TIMEOUT_S": "1",
                                         "RLKEEL_TOKEN_CACHE_TTL_S": "0"}).start()  # fmt: skip
    try:
        yield proc.url, token, url
    finally:
        proc.stop()


@dataclass
class TrainerThread:
    """Reports STEPS steps (rollout, then update) as fast as the service answers."""

    url: str
    token: str
    run_id: str
    verdicts: dict[tuple[int, str], Verdict] = field(default_factory=dict)
    answers: Counter[int] = field(default_factory=Counter)
    error: BaseException | None = None
    progress: int = -1

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        return thread

    def _count(self, response: httpx.Response) -> None:
        self.answers[response.status_code] += 1

    def _run(self) -> None:
        try:
            with Client(self.url, token=self.token, timeout=5, retries=40, backoff=0.05) as rk:
                rk._http.event_hooks["response"].append(self._count)
                for step in range(STEPS):
                    for body in (rollout(step, n=SAMPLES), update(step)):
                        report = StepReport.model_validate(body)
                        self.verdicts[(step, body["phase"])] = rk.report_step(self.run_id, report)
                    self.progress = step
                    time.sleep(0.02)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc


def _register(url: str, token: str, name: str) -> str:
    r = httpx.post(f"{url}/v1/runs", json=dict(RUN, name=name),
                   headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _timed(method: str, url: str, **kwargs: object) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    response = httpx.request(method, url, timeout=30, **kwargs)  # type: ignore[arg-type]
    return response, time.monotonic() - t0


def _wait_until(predicate, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_database_stop_and_restart_mid_run(cluster: OwnCluster, server) -> None:  # type: ignore[no-untyped-def]
    url, token, db_url = server
    auth = {"Authorization": f"Bearer {token}"}
    run_id = _register(url, token, "through-the-outage")
    probe_run = _register(url, token, "probe")
    trainer = TrainerThread(url, token, run_id)
    thread = trainer.start()
    _wait_until(lambda: trainer.progress >= 5 or trainer.error is not None, 60)

    cluster.stop()
    down_at = time.monotonic()
    try:
        # Reports are refused at once with the 503 envelope; nothing is half-written.
        r, took = _timed("POST", f"{url}/v1/runs/{probe_run}/steps", json=rollout(0, n=SAMPLES),
                         headers=auth)  # fmt: skip
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "ServiceUnavailable" and r.json()["detail"]
        assert took < QUICK_S
        took_503 = took
        r, took = _timed("GET", f"{url}/v1/runs/{run_id}/steps", headers=auth)
        assert r.status_code == 503 and took < QUICK_S
        # Readiness says so; liveness does not (restarting the server would not help).
        r, took = _timed("GET", f"{url}/readyz")
        assert (r.status_code, r.json()["status"]) == (503, "unavailable") and took < QUICK_S
        assert httpx.get(f"{url}/healthz").status_code == 200
        progress_when_down = trainer.progress
        time.sleep(max(0.0, 3.0 - (time.monotonic() - down_at)))  # the trainer keeps trying
        assert trainer.progress <= progress_when_down + 1  # nothing got through
    finally:
        cluster.start()
    up_at = time.monotonic()

    # The same server process recovers by itself.
    _wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, 30)
    ready_after = time.monotonic() - up_at
    thread.join(timeout=120)
    assert not thread.is_alive(), "the trainer did not finish"
    assert trainer.error is None, repr(trainer.error)
    assert trainer.answers[503] > 0, "the trainer never met the outage: the test proved nothing"
    assert set(trainer.answers) <= {200, 201, 503}, trainer.answers  # no 500, no other error
    assert len(trainer.verdicts) == 2 * STEPS

    # Exactly once: one step row per (step, phase), all samples of each rollout once; the
    # refused probe report left nothing.
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT step, phase, count(*) FROM steps WHERE run_id = %s"
                            " GROUP BY step, phase", (run_id,)).fetchall()  # fmt: skip
        samples = conn.execute("SELECT step, count(*), count(DISTINCT sample_id) FROM samples"
                               " WHERE run_id = %s GROUP BY step", (run_id,)).fetchall()  # fmt: skip
        probe = conn.execute("SELECT count(*) FROM steps WHERE run_id = %s",
                             (probe_run,)).fetchone()  # fmt: skip
    assert sorted(rows) == sorted((s, p, 1) for s in range(STEPS) for p in ("rollout", "update"))
    assert sorted(samples) == [(s, SAMPLES, SAMPLES) for s in range(STEPS)]
    assert probe == (0,)

    # Each stored verdict is the one the trainer got (a retried report got the stored answer).
    with httpx.Client(base_url=url, headers=auth) as http:
        stored = {}
        after = None
        while True:
            page = http.get(f"/v1/runs/{run_id}/steps",
                            params={"limit": 1000} | ({"after": after} if after is not None else {})).json()  # fmt: skip
            stored.update({(s["step"], s["phase"]): s["verdict"] for s in page["items"]})
            after = page["next_after"]
            if after is None:
                break
    assert {k: Verdict.model_validate(v) for k, v in stored.items()} == trainer.verdicts
    print(
        f"\noutage {up_at - down_at:.1f} s; 503 answered in {took_503 * 1e3:.0f} ms; ready "
        f"{ready_after:.2f} s after the database was back; trainer answers {dict(trainer.answers)}"
    )


def test_a_database_that_never_answers_gets_503_within_the_connect_timeout() -> None:
    """A host that takes the connection and then says nothing (a hung or partitioned
    database): requests end with the 503 envelope once the connect timeout has passed."""
    import asyncio
    import socket

    from rlkeel.server.app import create_app
    from rlkeel.server.settings import Settings

    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(64)  # the kernel completes handshakes; nothing ever answers
        port = black_hole.getsockname()[1]
        settings = Settings(database_url=f"postgresql://postgres@127.0.0.1:{port}/none",
                            db_connect_timeout_s=1, token_cache_ttl_s=0)  # fmt: skip
        app = create_app(settings)

        async def call() -> list[tuple[int, str, float]]:
            out = []
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://rlkeel.test",
                                         headers={"Authorization": "Bearer rlk_x_y"}) as http:  # fmt: skip
                for method, path, body in (("GET", "/readyz", None),
                                           ("POST", "/v1/runs/r/steps", rollout(0)),
                                           ("GET", "/v1/runs", None)):  # fmt: skip
                    t0 = time.monotonic()
                    r = await http.request(method, path, json=body)
                    out.append((r.status_code, r.text, time.monotonic() - t0))
            return out

        try:
            answers = asyncio.run(asyncio.wait_for(call(), timeout=60))
        finally:
            app.state.engine.dispose()
    # libpq (and psycopg after it) counts a connect timeout under 2 s as 2 s.
    bound = max(2, settings.db_connect_timeout_s) + 1.0
    for status, text, took in answers:
        assert status == 503, text
        assert took < bound, f"{took:.1f} s"
    assert '"ServiceUnavailable"' in answers[1][1]


STOP_AT, START_AT, AFTER = 3, 8, 4


def test_the_trainers_spool_replays_a_database_outage(cluster: OwnCluster, server,  # type: ignore[no-untyped-def]
                                                      tmp_path) -> None:  # fmt: skip
    """The real trainer and its service link (trainer/monitor): while PostgreSQL is down the
    server answers 503 at once, the trainer goes on with local verdicts and spools its
    reports; when the database is back the spool replays in order and the database holds
    every step exactly once, samples included."""
    import torch

    from tests.trainer.monitoring import LengthTask, attach, make_trainer, steps_in_service

    url, token, db_url = server
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = make_trainer(tmp_path, task=LengthTask(), steps=100_000, prompts_per_step=4,
                               group_size=4)  # fmt: skip
        link = attach(trainer, url, token, verdict_timeout_s=10.0)
        restarted = threading.Event()

        def restart() -> None:
            cluster.start()
            restarted.set()

        step_times: list[float] = []
        back_at: int | None = None
        deadline = time.monotonic() + 600
        try:
            while time.monotonic() < deadline:
                if trainer.step == STOP_AT:
                    cluster.stop()
                if trainer.step == START_AT:
                    threading.Thread(target=restart, daemon=True).start()
                t0 = time.monotonic()
                trainer.train_step()
                step_times.append(time.monotonic() - t0)
                time.sleep(0.05)
                if back_at is None and restarted.is_set() and link.sender.healthy:
                    back_at = trainer.step
                if back_at is not None and trainer.step >= back_at + AFTER:
                    break
        finally:
            if not restarted.is_set():
                cluster.start_if_down()
        assert back_at is not None, "the trainer never got through again"
        total = trainer.step
        assert link.finish("finished", timeout=120.0) is True
    finally:
        torch.set_num_threads(threads)

    # Training never waited on the outage: 503s come at once, local guards decided.
    assert link.local_verdicts >= START_AT - STOP_AT
    assert link.sender.failures >= 1
    assert max(step_times[STOP_AT:START_AT]) < 5.0
    with Client(url, token=token) as client:
        stored = steps_in_service(client, link.run_id)
        assert stored == [(s, p) for s in range(total) for p in ("rollout", "update")], stored
        assert client.get_run(link.run_id).status.value == "finished"
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT step, phase, count(*) FROM steps WHERE run_id = %s"
                            " GROUP BY step, phase HAVING count(*) > 1", (link.run_id,)).fetchall()  # fmt: skip
        samples = conn.execute("SELECT step, count(*), count(DISTINCT sample_id) FROM samples"
                               " WHERE run_id = %s GROUP BY step ORDER BY step",
                               (link.run_id,)).fetchall()  # fmt: skip
        arrival = conn.execute("SELECT step, phase FROM steps WHERE run_id = %s ORDER BY id",
                               (link.run_id,)).fetchall()  # fmt: skip
    assert rows == []
    assert samples == [(s, 16, 16) for s in range(total)]  # the replayed steps with samples
    # Stored in the order the trainer made them, the replayed ones included.
    assert arrival == [(s, p) for s in range(total) for p in ("rollout", "update")]
    assert not link.spool.directory.exists()
    print(f"\n{total} steps; database down over steps {STOP_AT}-{START_AT}; "
          f"{link.local_verdicts} local verdicts; back at step {back_at}; "
          f"slowest step while down {max(step_times[STOP_AT:START_AT]):.2f} s")
