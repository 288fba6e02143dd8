"""Keep-alive connections are closed after `keepalive_max_requests` requests, so a fleet's
long-lived connections get re-spread over the server processes; the client does not notice."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import LiveServer
from tests.server.helpers import RUN, rollout


def _local_port(response: httpx.Response) -> None:
    """Note the connection's local port while it is open (the hook runs before the body)."""
    stream = response.extensions["network_stream"]
    response.extensions["local_port"] = stream.get_extra_info("socket").getsockname()[1]


@pytest.mark.parametrize("max_requests", [3, 0])
def test_every_nth_answer_closes_the_connection(settings, max_requests: int) -> None:  # type: ignore[no-untyped-def]
    from rlkeel.server.app import create_app
    from rlkeel.server.auth import Role, create_api_key

    app = create_app(settings.model_copy(update={"keepalive_max_requests": max_requests,
                                                 "webhook_worker": False}))  # fmt: skip
    with app.state.session_factory.begin() as session:
        token = create_api_key(session, role=Role.trainer, name="keepalive")
    server = LiveServer(app).start()
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"},
                          event_hooks={"response": [_local_port]}) as c:  # fmt: skip
            run_id = c.post("/v1/runs", json=RUN).json()["id"]
            answers = [c.get("/healthz")]
            answers += [c.post(f"/v1/runs/{run_id}/steps", json=rollout(s, n=4)) for s in range(6)]
    finally:
        server.stop()
        app.state.engine.dispose()
    assert [r.status_code for r in answers] == [200] + [201] * 6
    closes = [r.headers.get("connection") == "close" for r in answers]
    ports = [r.extensions["local_port"] for r in answers]
    if max_requests == 0:
        assert not any(closes) and len(set(ports)) == 1
    else:
        # Requests per connection: register_run, /healthz and the first report share the first.
        assert closes == [False, True, False, False, True, False, False]
        assert len(set(ports)) == 3
