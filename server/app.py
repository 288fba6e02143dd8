"""The FastAPI application factory."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
import logging

from fastapi import FastAPI

from rlkeel.client.schemas import StepReport
from rlkeel.server.analysis import StateCache
from rlkeel.server.api.body_limit import BodySizeLimit
from rlkeel.server.api.deps import TokenCache
from rlkeel.server.api.errors import install_error_handlers
from rlkeel.server.api.health import router as health_router
from rlkeel.server.api.openapi import install_openapi
from rlkeel.server.audit.endpoints import router as audit_router
from rlkeel.server.commands.endpoints import router as commands_router
from rlkeel.server.db.engine import make_engine, make_session_factory
from rlkeel.server.findings.endpoints import router as findings_router
from rlkeel.server.forest_refits import Refitter
from rlkeel.server.runs.endpoints import router as runs_router
from rlkeel.server.settings import Settings
from rlkeel.server.steps.endpoints import router as steps_router

API_DESCRIPTION = """\
rlkeel keeps RL fine-tuning of language models upright: trainers report per-sample and
per-step statistics, the service answers with verdicts (samples to drop) and commands
(switch algorithm, scale the learning rate, roll back, stop), operators override.
Authenticate with `Authorization: Bearer <token>` (`rlkeel keys create --role ROLE`).
Errors share one envelope: `{"error", "detail", "fields"}`.
"""


def _tune_gc() -> None:
    """A rollout report allocates ~10 objects per sample; with CPython's default thresholds the
    cyclic collector then runs mid-request many times and shows up as p99 latency. Collect less
    often (the objects are acyclic and freed by refcount anyway) and freeze start-up objects."""
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    _tune_gc()
    logging.getLogger("rlkeel").setLevel(settings.log_level.upper())
    engine = make_engine(settings)
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        app.state.refitter.shutdown()
        engine.dispose()

    app = FastAPI(title="rlkeel", version="1.0.0", description=API_DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = make_session_factory(engine)
    app.state.token_cache = TokenCache(ttl_s=settings.token_cache_ttl_s)
    app.state.analysis_cache = StateCache()
    app.state.refitter = Refitter()
    install_error_handlers(app)
    install_openapi(app, [StepReport])
    for router in (
        health_router,
        runs_router,
        steps_router,
        findings_router,
        commands_router,
        audit_router,
    ):
        app.include_router(router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app
