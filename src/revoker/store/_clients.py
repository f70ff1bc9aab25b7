"""Redis clients built from settings, for the async check path and the sync task path."""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
from redis.backoff import NoBackoff

from revoker.settings import RevokerSettings

__all__ = [
    "SYNC_SOCKET_TIMEOUT",
    "make_async_client",
    "make_sync_client",
]

#: Socket timeout of the sync (Celery task) client: bulk pipelines carry thousands of commands, so
#: the short per-request timeout would fail them; a hung Redis is still noticed within this bound.
SYNC_SOCKET_TIMEOUT = 30.0


def make_async_client(settings: RevokerSettings) -> Any:
    """The client of the per-request check: short timeouts, no retries.

    A retry would add another timeout to a request that is already waiting; the circuit breaker,
    not the client, decides when to try Redis again.
    """
    no_retry = redis.asyncio.retry.Retry(NoBackoff(), 0)
    if settings.redis_cluster:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_timeout,
            socket_connect_timeout=settings.redis_connect_timeout,
            max_connections=settings.redis_max_connections,
            retry=no_retry,
        )
    # A blocking pool queues a burst of requests for a free connection (bounded by the timeout)
    # instead of failing them with "Too many connections".
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_timeout,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_connect_timeout,
        retry=no_retry,
    )
    return redis.asyncio.Redis(connection_pool=pool)


def make_sync_client(settings: RevokerSettings) -> Any:
    """The client of Celery tasks, the CLI and other sync callers."""
    timeout = max(settings.redis_timeout, SYNC_SOCKET_TIMEOUT)
    if settings.redis_cluster:
        return redis.RedisCluster.from_url(
            settings.redis_url,
            socket_timeout=timeout,
            socket_connect_timeout=max(settings.redis_connect_timeout, 5.0),
        )
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=timeout,
        socket_connect_timeout=max(settings.redis_connect_timeout, 5.0),
        max_connections=settings.redis_max_connections,
    )
