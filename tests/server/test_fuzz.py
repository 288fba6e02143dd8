"""Property-based fuzz of the whole OpenAPI with schemathesis: no 5xx, every answer in schema.

For every operation, `RLKEEL_FUZZ_EXAMPLES` cases (default 200) are generated, half valid and
half invalid (negative mode, where the operation has inputs), and sent to the real app on PostgreSQL with an admin token.
Path parameters are sometimes the ids of a real run, finding and command, so the cases reach
the code behind the 404. Each answer must not be a server error, must use a declared status
code and content type, and must match the declared schema.
"""

from __future__ import annotations

import os
import time
import traceback
from collections import Counter
from typing import Any

import hypothesis
import hypothesis.errors
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import select

from rlkeel.server.auth import Role, create_api_key
from rlkeel.server.commands import service as commands
from rlkeel.server.db.models import FindingRecord, WebhookDelivery
from rlkeel.server.webhooks import service as webhooks
from rlkeel.server.webhooks.urls import UrlPolicy
from tests.server.helpers import RUN, rollout

pytestmark = pytest.mark.timeout(900)

EXAMPLES = int(os.environ.get("RLKEEL_FUZZ_EXAMPLES", "200"))
# Reproducible by default; RLKEEL_FUZZ_RANDOM=1 explores new cases on every run.
DERANDOMIZE = os.environ.get("RLKEEL_FUZZ_RANDOM", "") != "1"
# Only operations whose label contains this (debugging), e.g. "POST /v1/runs".
ONLY = os.environ.get("RLKEEL_FUZZ_ONLY", "")
# Not `negative_data_rejection`: it blames the Authorization header this test adds and unknown
# query parameters (ignored, as HTTP APIs do); tests/server/test_hostile_input.py checks that
# invalid bodies are rejected, field by field.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]  # fmt: skip


def _seed(app: Any, http_admin: Any) -> dict[str, Any]:
    """A real run with a step, a finding, a held command, and a webhook subscription with a
    delivery in its outbox, so generated ids can hit something."""
    r = http_admin.post("/v1/runs", json=RUN)
    run = r.json()["id"]
    http_admin.post(f"/v1/runs/{run}/steps", json=rollout(0, n=4))
    with app.state.session_factory.begin() as s:
        f = FindingRecord(run_id=run, step=0, phase="update", detector="kl_spike",
                          severity="high", metric="kl_mean", value=1.0, baseline=0.01,
                          threshold=4.0, message="KL spike", sample_ids=[],
                          status="open")  # fmt: skip
        s.add(f)
        c = commands.issue(s, run_id=run, kind="scale_lr", params={"factor": 0.5},
                           reason={"text": "seed", "finding_ids": []}, origin="policy",
                           held=True, effective_step=None, actor="policy")  # fmt: skip
        # Never delivered (no worker in this app); port 9 on loopback in case one ever runs.
        hook, _ = webhooks.create(s, app.state.webhook_secret_box(),
                                  url="http://127.0.0.1:9/hook", events=["command.issued"],
                                  min_severity="info", payload_format="rlkeel",
                                  policy=UrlPolicy(allow_loopback=True))  # fmt: skip
        s.flush()
        ids = {"run": run, "finding": f.id, "command": c.id, "webhook": hook.id}
    r = http_admin.post(f"/v1/runs/{run}/commands", json={"kind": "skip_step"})
    assert r.status_code == 201, r.text
    with app.state.session_factory() as s:
        ids["delivery"] = s.scalars(select(WebhookDelivery.id)).one()
    return ids


def _real_path_ids(path: str, names: set[str], ids: dict[str, Any]) -> dict[str, Any]:
    real: dict[str, Any] = {}
    if "run" in names:
        real["run"] = ids["run"]
    if "delivery_id" in names:
        real["delivery_id"] = ids["delivery"]
    if "id" in names:
        kind = ("webhook" if path.startswith("/v1/webhooks/") else
                "finding" if path.startswith("/v1/findings/") else "command")  # fmt: skip
        real["id"] = ids[kind]
    return real


def _strategy(operation: Any, mode: GenerationMode, ids: dict[str, Any]) -> Any:
    names = {p.name for p in operation.path_parameters}
    real = _real_path_ids(operation.path, names, ids)
    strategies = [operation.as_strategy(generation_mode=mode)]
    if real:
        strategies.append(operation.as_strategy(generation_mode=mode, path_parameters=real))
    return st.one_of(strategies)


@pytest.fixture
def fuzz_app(settings):  # type: ignore[no-untyped-def]
    """The app without its webhook delivery worker: the worker's back-off jitter draws from the
    `random` module on another thread, which Hypothesis takes for a strategy using `random`
    (HypothesisDeprecationWarning, an error here). Seeded deliveries just wait in the outbox."""
    from rlkeel.server.app import create_app

    application = create_app(settings.model_copy(update={"webhook_worker": False}))
    yield application
    application.state.engine.dispose()


def test_fuzz_every_operation(fuzz_app) -> None:  # type: ignore[no-untyped-def]
    from starlette.testclient import TestClient

    app = fuzz_app
    with app.state.session_factory.begin() as session:
        admin = create_api_key(session, role=Role.admin, name="fuzz")
    headers = {"Authorization": f"Bearer {admin}"}
    with TestClient(app, headers=headers) as client:
        ids = _seed(app, client)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]
    operations = [op for op in operations if ONLY in op.label]
    failures: list[str] = []
    seen: Counter[tuple[str, int]] = Counter()
    took: Counter[str] = Counter()
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hypothesis.settings(max_examples=max(1, EXAMPLES // 2), deadline=None,
                                 database=None, derandomize=DERANDOMIZE, print_blob=False,
                                 suppress_health_check=list(HealthCheck))  # fmt: skip
            @given(case=_strategy(operation, mode, ids))
            def fuzz(case: Any) -> None:
                response = case.call_and_validate(headers=headers, checks=CHECKS)
                seen[(case.operation.label, response.status_code)] += 1

            started = time.monotonic()
            try:
                fuzz()
            except hypothesis.errors.Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # nothing to make invalid (no inputs)
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - collect them all
                trace = "".join(traceback.format_exception(exc))[-4000:]
                failures.append(f"{operation.label} [{mode.value}]: {trace}")
            took[operation.label] += time.monotonic() - started
    print("\n".join(f"{label}: {status} x{n}" for (label, status), n in sorted(seen.items())))
    print("\n".join(f"{label}: {s:.1f} s" for label, s in took.most_common()))
    assert not failures, "\n\n".join(failures)
