"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers (on the event loop: never queued behind busy requests)."""
    return {"status": "ok"}


_READY = {"description": "Ready: the database answers", "content": {"application/json": {
    "schema": {"type": "object", "properties": {"status": {"type": "string"},
                                                "database": {"type": "string"}}}}}}
_NOT_READY = {**_READY, "description": "Not ready: the database does not answer"}


@router.get("/readyz", responses={200: _READY, 503: _NOT_READY})
def readyz(request: Request) -> JSONResponse:
    """Readiness: the database answers a query (503 when it does not)."""
    try:
        with request.app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return JSONResponse(
            {"status": "unavailable", "database": type(exc).__name__}, status_code=503
        )
    return JSONResponse({"status": "ok", "database": "ok"})
