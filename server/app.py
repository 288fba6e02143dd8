"""The FastAPI application factory."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from rlkeel.client.schemas import StepReport
from rlkeel.server.analysis import StateCache
from rlkeel.server.api.bearer_gate import RequireBearer
from rlkeel.server.api.body_limit import BodySizeLimit
from rlkeel.server.api.deps import TokenCache
from rlkeel.server.api.errors import install_error_handlers
from rlkeel.server.api.health import router as health_router
from rlkeel.server.api.keepalive import RecycleConnections
from rlkeel.server.api.nul_guard import RejectNul
from rlkeel.server.api.openapi import install_openapi
from rlkeel.server.audit.endpoints import router as audit_router
from rlkeel.server.commands.endpoints import router as commands_router
from rlkeel.server.db.engine import make_engine, make_session_factory
from rlkeel.server.findings.endpoints import router as findings_router
from rlkeel.server.forest_refits import Refitter
from rlkeel.server.metrics import install_metrics
from rlkeel.server.runs.endpoints import router as runs_router
from rlkeel.server.settings import Environment, Settings
from rlkeel.server.steps.endpoints import router as steps_router
from rlkeel.server.webhooks import outbox
from rlkeel.server.webhooks.endpoints import router as webhooks_router
from rlkeel.server.webhooks.secret_store import SecretBox, load_keys
from rlkeel.server.webhooks.worker import DeliveryWorker

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


def _limit_request_threads(settings: Settings) -> None:
    """Sync routes and the ingest work run in anyio's thread pool (40 threads by default): cap
    it at the connections a process has (see `Settings.request_threads`)."""
    import anyio.to_thread

    limit = settings.request_threads or settings.db_pool_size
    anyio.to_thread.current_default_thread_limiter().total_tokens = limit


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    if settings.environment == Environment.production and settings.production_problems():
        # Settings refuse to load like this; settings changed after loading are caught here.
        raise RuntimeError("refusing to start in production: "
                           + "; ".join(settings.production_problems()))  # fmt: skip
    secret_box = _lazy_secret_box(settings)
    if settings.environment is Environment.production:
        secret_box()  # no RLKEEL_WEBHOOK_SECRETS_KEY: refuse to start, not fail on first use
    _tune_gc()
    logging.getLogger("rlkeel").setLevel(settings.log_level.upper())
    engine = make_engine(settings)
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        _limit_request_threads(settings)
        worker = webhook_worker(app) if settings.webhook_worker else None
        if worker is not None:
            worker.start()
            _wake_on_commit(app.state.session_factory, worker)
        yield
        if worker is not None:
            await worker.stop()
        app.state.refitter.shutdown()
        engine.dispose()

    app = FastAPI(title="rlkeel", version="1.0.0", description=API_DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = make_session_factory(engine)
    app.state.token_cache = TokenCache(ttl_s=settings.token_cache_ttl_s)
    app.state.analysis_cache = StateCache()
    app.state.refitter = Refitter()
    app.state.webhook_secret_box = secret_box
    install_error_handlers(app)
    install_openapi(app, [StepReport])
    for router in (
        health_router,
        runs_router,
        steps_router,
        findings_router,
        commands_router,
        audit_router,
        webhooks_router,
    ):
        app.include_router(router)
    app.add_middleware(RejectNul)
    app.add_middleware(RequireBearer)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RecycleConnections, max_requests=settings.keepalive_max_requests)
    app.state.metrics = None
    if settings.metrics_enabled:
        install_metrics(app)
    return app


def _lazy_secret_box(settings: Settings) -> Callable[[], SecretBox]:
    """The webhook secret box, made on first use: most processes never need the key."""
    box: list[SecretBox] = []

    def get() -> SecretBox:
        if not box:
            box.append(SecretBox(load_keys(settings)))
        return box[0]

    return get


def _wake_on_commit(session_factory: sessionmaker[Session], worker: DeliveryWorker) -> None:
    """A transaction that wrote outbox rows wakes the worker when it commits."""

    def after_commit(session: Session) -> None:
        if outbox.enqueued_in(session):
            worker.wake()

    def after_rollback(session: Session) -> None:
        outbox.enqueued_in(session)

    event.listen(session_factory, "after_commit", after_commit)
    event.listen(session_factory, "after_rollback", after_rollback)


def webhook_worker(app: FastAPI) -> DeliveryWorker:
    """The delivery worker of this app (the lifespan starts one unless RLKEEL_WEBHOOK_WORKER=0)."""
    return DeliveryWorker(
        settings=app.state.settings, session_factory=app.state.session_factory,
        secret_box=app.state.webhook_secret_box,
        metrics_of=lambda: getattr(app.state, "metrics", None),
    )  # fmt: skip
