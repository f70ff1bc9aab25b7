"""Redis clients built from settings, for the async check path and the sync task path.

A ``redis+sentinel://`` REVOKER_REDIS_URL gives clients on redis-py's Sentinel-managed pools
(``master_for``): each new connection asks the sentinels for the master, so both clients follow
a failover. The check client keeps its short timeouts and no retries, towards the sentinels too.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.backoff import NoBackoff

from revoker.settings import RevokerSettings, SentinelConfig

__all__ = [
    "SYNC_SOCKET_TIMEOUT",
    "make_async_client",
    "make_sync_client",
    "sync_sentinel_client",
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
    sentinel = settings.redis_sentinel
    if sentinel is not None:
        # The master's address is asked of the sentinels on each new connection; a connection
        # to a demoted master fails (READONLY, or it is gone) and the next one finds the new one.
        return _async_sentinel(settings, sentinel, no_retry).master_for(
            sentinel.master_name,
            connection_pool_class=_BlockingSentinelPool,
            max_connections=settings.redis_max_connections,
            timeout=settings.redis_timeout,
            socket_timeout=settings.redis_timeout,
            socket_connect_timeout=settings.redis_connect_timeout,
            retry=no_retry,
        )
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
    connect_timeout = max(settings.redis_connect_timeout, 5.0)
    sentinel = settings.redis_sentinel
    if sentinel is not None:
        return sync_sentinel_client(
            sentinel,
            timeout=timeout,
            connect_timeout=connect_timeout,
            max_connections=settings.redis_max_connections,
        )
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


def sync_sentinel_client(
    sentinel: SentinelConfig, *, timeout: float, connect_timeout: float, max_connections: int = 8
) -> Any:
    """A blocking client of the master ``sentinel`` names (also the health probe's).

    A plain ``redis.Redis`` on a Sentinel-managed pool: the bulk fast path (``tasks._exchange``)
    takes its pooled connections as it does a plain pool's.
    """
    sentinel_class: Any = redis.sentinel.Sentinel  # redis-py's Sentinel is unannotated
    manager = sentinel_class(
        sentinel.sentinels,
        sentinel_kwargs={
            "socket_timeout": connect_timeout,
            "socket_connect_timeout": connect_timeout,
            **sentinel.sentinel_kwargs(),
        },
        **_node_kwargs(sentinel),
    )
    return manager.master_for(
        sentinel.master_name,
        connection_pool_class=_SyncSentinelPool,
        socket_timeout=timeout,
        socket_connect_timeout=connect_timeout,
        max_connections=max_connections,
    )


def _node_kwargs(sentinel: SentinelConfig) -> dict[str, Any]:
    """Connection arguments of the Redis servers behind the sentinels."""
    return {"db": sentinel.db, "username": sentinel.username, "password": sentinel.password}


def _async_sentinel(settings: RevokerSettings, sentinel: SentinelConfig, retry: Any) -> Any:
    """The sentinels as the check client asks them: its short timeouts, no retries.

    One unreachable sentinel costs at most a connect timeout before the next one is asked.
    """
    sentinel_class: Any = redis.asyncio.sentinel.Sentinel  # unannotated in redis-py
    return sentinel_class(
        sentinel.sentinels,
        sentinel_kwargs={
            "socket_timeout": settings.redis_timeout,
            "socket_connect_timeout": settings.redis_connect_timeout,
            "retry": retry,
            **sentinel.sentinel_kwargs(),
        },
        **_node_kwargs(sentinel),
    )


class _BlockingSentinelPool(
    redis.asyncio.sentinel.SentinelConnectionPool, redis.asyncio.BlockingConnectionPool
):
    """A Sentinel-managed pool that queues a burst for a free connection, as the plain check
    pool does; closing it closes the connections to the sentinels too."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        # A master change disconnects only idle connections; a full close is the pool's end.
        if inuse_connections:
            for client in self.sentinel_manager.sentinels:
                await client.aclose()


class _SyncSentinelPool(redis.sentinel.SentinelConnectionPool):
    """A Sentinel-managed pool whose close also closes its connections to the sentinels."""

    def disconnect(self, inuse_connections: bool = True) -> None:
        super().disconnect(inuse_connections)
        if inuse_connections:
            for client in self.sentinel_manager.sentinels:
                client.close()
