"""A burst of requests larger than the connection pool waits its turn instead of failing.

Every report of the burst needs the run's row lock, which the test holds for longer than the
pool timeout. Before the thread pool was capped at the pool size, the requests that found no
free connection got 503 after `RLKEEL_DB_CONNECT_TIMEOUT_S` from a healthy server.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import psycopg

from tests.conftest import LiveServer
from tests.server.helpers import RUN, rollout

POOL = 2
BURST = 10
HOLD_S = 2.5


def test_a_burst_beyond_the_pool_waits_for_its_turn(pg_database, settings) -> None:  # type: ignore[no-untyped-def]
    from rlkeel.server.app import create_app
    from rlkeel.server.auth import Role, create_api_key

    app = create_app(settings.model_copy(update={"db_pool_size": POOL, "db_connect_timeout_s": 1,
                                                 "webhook_worker": False}))  # fmt: skip
    with app.state.session_factory.begin() as session:
        token = create_api_key(session, role=Role.trainer, name="burst")
    server = LiveServer(app).start()
    try:
        auth = {"Authorization": f"Bearer {token}"}
        run_id = httpx.post(f"{server.url}/v1/runs", json=RUN, headers=auth).json()["id"]
        locked = threading.Event()

        def hold_the_run() -> None:
            with psycopg.connect(pg_database.url) as conn, conn.transaction():
                conn.execute("SELECT 1 FROM runs WHERE id = %s FOR UPDATE", (run_id,))
                locked.set()
                time.sleep(HOLD_S)

        holder = threading.Thread(target=hold_the_run)
        holder.start()
        locked.wait(10)

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, headers=auth, timeout=60) as http:
                reports = asyncio.gather(*(
                    http.post(f"/v1/runs/{run_id}/steps", json=rollout(s, n=8))
                    for s in range(BURST)
                ))  # fmt: skip
                await asyncio.sleep(0.5)
                # Liveness answers at once while every request thread is busy.
                alive = await http.get("/healthz", timeout=1)
                assert alive.status_code == 200 and holder.is_alive()
                return list(await reports)

        answers = asyncio.run(burst())
        holder.join()
        assert [r.status_code for r in answers] == [201] * BURST, [r.text for r in answers]
    finally:
        server.stop()
        app.state.engine.dispose()
