"""Operations endpoints, open for probes and scrapers: health, metrics, the OpenAPI document."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from revoker import health as health_checks
from revoker.api.errors import NO_STORE
from revoker.api.openapi import openapi_document

if TYPE_CHECKING:
    from starlette.requests import Request

    from revoker.api.context import ApiContext

__all__ = ["health", "metrics", "openapi", "routes"]


async def health(context: ApiContext, _request: Request) -> Response:
    """Redis and broker reachability, durability and the denylist's integrity: 200 when both
    answer, the durability asked for is honoured and no loss is recorded, else 503; the server
    settings that can undo a revocation are reported."""
    report = await health_checks.check_async(context.store, context.settings)
    return JSONResponse(
        {
            "status": "ok" if report.healthy else "unavailable",
            "redis": report.redis,
            "broker": report.broker,
            "integrity": report.integrity,
            "server": report.server,
            "durability": report.durability,
            "mirror": report.mirror,
        },
        status_code=200 if report.healthy else 503,
        headers=NO_STORE,
    )


async def metrics(_request: Request) -> Response:
    """Prometheus metrics of this process (the default registry)."""
    return Response(generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(_request: Request) -> Response:
    """The OpenAPI document of the admin API."""
    return JSONResponse(openapi_document())


def routes(context: ApiContext) -> list[Route]:
    """The operations endpoints of one app."""
    return [
        Route("/health", partial(health, context), methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
