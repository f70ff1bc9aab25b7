"""Operations endpoints, open for probes and scrapers: health, metrics, the OpenAPI document."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.registry import Collector
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from revoker import health as health_checks
from revoker.api.errors import NO_STORE
from revoker.api.openapi import openapi_document
from revoker.metrics import read_job_state_async

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from starlette.requests import Request

    from revoker.api.context import ApiContext

__all__ = ["health", "metrics", "openapi", "routes"]

logger = logging.getLogger("revoker.api")


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


async def metrics(context: ApiContext, _request: Request) -> Response:
    """Prometheus metrics: this process's (the default registry), and the jobs and outbox as
    Redis holds them (the same for every process: served here only, see revoker.metrics)."""
    body = generate_latest()
    try:
        state = await read_job_state_async(context.store)
    except Exception as e:  # noqa: BLE001 - the process's own metrics are still worth serving
        logger.warning("job metrics unavailable: %s", e)
    else:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(state.families()))
        body += generate_latest(registry)
    return Response(body, headers={"Content-Type": CONTENT_TYPE_LATEST})


class _Families(Collector):
    """Metric families computed before the scrape is rendered (read with the async store)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


async def openapi(_request: Request) -> Response:
    """The OpenAPI document of the admin API."""
    return JSONResponse(openapi_document())


def routes(context: ApiContext) -> list[Route]:
    """The operations endpoints of one app."""
    return [
        Route("/health", partial(health, context), methods=["GET"]),
        Route("/metrics", partial(metrics, context), methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
