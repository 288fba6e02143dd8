"""`GET /metrics`: the Prometheus exposition of this app instance."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from rlkeel.server.api.errors import Unauthorized

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_PLAIN_0_0_4: {}},
                     "description": "Prometheus text exposition format 0.0.4"}},
)  # fmt: skip
def metrics(request: Request) -> Response:
    """Prometheus metrics; a bearer token is required when RLKEEL_METRICS_TOKEN is set."""
    expected = request.app.state.settings.metrics_token
    if expected:
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), expected.encode()
        ):
            raise Unauthorized("GET /metrics needs `Authorization: Bearer <RLKEEL_METRICS_TOKEN>`")
    body = request.app.state.metrics.exposition()
    return Response(body, media_type=CONTENT_TYPE_PLAIN_0_0_4)
