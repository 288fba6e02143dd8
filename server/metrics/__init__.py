"""Prometheus metrics of the service: `install_metrics(app)` puts a `ServiceMetrics` with its
own registry on `app.state.metrics` and serves it at `GET /metrics`."""

from __future__ import annotations

from fastapi import FastAPI

from rlkeel.server.metrics.endpoint import router
from rlkeel.server.metrics.http_responses import CountResponses
from rlkeel.server.metrics.run_state import RUN_GAUGES, RunStateCollector
from rlkeel.server.metrics.service import ServiceMetrics
from rlkeel.server.metrics.session_events import install_session_events

__all__ = ["RUN_GAUGES", "ServiceMetrics", "install_metrics"]


def install_metrics(app: FastAPI) -> ServiceMetrics:
    """Call after the routers are included (the response counter wraps the whole app)."""
    metrics = ServiceMetrics()
    metrics.registry.register(
        RunStateCollector(app.state.session_factory, metrics.observe_database_error)
    )
    install_session_events(app.state.session_factory, metrics)
    app.state.metrics = metrics
    app.state.on_db_error = metrics.observe_database_error
    app.include_router(router)
    app.add_middleware(CountResponses, metrics=metrics)
    return metrics
