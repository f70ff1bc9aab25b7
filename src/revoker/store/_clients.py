"""Redis clients built from settings, for the async check path and the sync task path.

A ``redis+sentinel://`` REVOKER_REDIS_URL gives clients on redis-py's Sentinel-managed pools
(``master_for``): each new connection asks the sentinels for the master, so both clients follow
a failover. The check client keeps its short timeouts and no retries, towards the sentinels too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.backoff import NoBackoff

from revoker.settings import RevokerSettings, SentinelConfig, is_sentinel_url, parse_sentinel_url

__all__ = [
    "MASTER_RECHECK_SECONDS",
    "SYNC_SOCKET_TIMEOUT",
    "make_async_client",
    "make_sync_client",
    "sync_client_for_url",
    "sync_sentinel_client",
]

#: Socket timeout of the sync (Celery task) client: bulk pipelines carry thousands of commands, so
#: the short per-request timeout would fail them; a hung Redis is still noticed within this bound.
SYNC_SOCKET_TIMEOUT = 30.0

#: How often a Sentinel-managed pool asks the sentinels which server is the master, besides on
#: each new connection (see _BlockingSentinelPool).
MASTER_RECHECK_SECONDS = 1.0


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


def sync_client_for_url(url: str, *, timeout: float) -> Any:
    """A blocking client for any REVOKER_REDIS_URL form (probes, the demo), ``timeout`` on all."""
    if is_sentinel_url(url):
        return sync_sentinel_client(
            parse_sentinel_url(url), timeout=timeout, connect_timeout=timeout, max_connections=2
        )
    return redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)


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


def _on_master(pool: Any, connection: Any) -> bool:
    """Whether ``connection`` talks to the master the pool last heard of (or it heard of none)."""
    master = pool.master_address
    return master is None or (connection.host, connection.port) == tuple(master)


class _BlockingSentinelPool(
    redis.asyncio.sentinel.SentinelConnectionPool, redis.asyncio.BlockingConnectionPool
):
    """A Sentinel-managed pool for the check: it queues a burst for a free connection as the
    plain check pool does, and it notices a switch of master without a failed command.

    redis-py asks the sentinels only when it opens a connection, so after a graceful failover
    (the old master alive, and a master until Sentinel reconfigures it, ~10 s later) open
    connections would keep reading the old one and miss revocations made on the new one. So
    every MASTER_RECHECK_SECONDS a background task (no check waits for it) asks again; on a
    switch the idle connections are dropped, and one in use is reconnected when next taken.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._recheck_at = 0.0
        self._recheck: asyncio.Task[None] | None = None

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        if now >= self._recheck_at and (self._recheck is None or self._recheck.done()):
            self._recheck_at = now + MASTER_RECHECK_SECONDS
            self._recheck = asyncio.get_running_loop().create_task(self._refresh_master())
        connection = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        if not _on_master(self, connection):
            try:
                await connection.disconnect()
                await connection.connect()
            except BaseException:
                await self.release(connection)
                raise
        return connection

    async def _refresh_master(self) -> None:
        # Unreachable sentinels change nothing: the connections fail or not on their own.
        with contextlib.suppress(redis.RedisError, OSError, asyncio.TimeoutError):
            await self.get_master_address()  # type: ignore[no-untyped-call]

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        # A master change disconnects only idle connections; a full close is the pool's end.
        if inuse_connections:
            task, self._recheck = self._recheck, None
            if task is not None and not task.done() and task.get_loop().is_running():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for client in self.sentinel_manager.sentinels:
                await client.aclose()


class _SyncSentinelPool(redis.sentinel.SentinelConnectionPool):
    """A Sentinel-managed pool that rechecks the master every MASTER_RECHECK_SECONDS (see
    _BlockingSentinelPool; here inline: tasks and the CLI are not on a request's clock), and
    whose close also closes its connections to the sentinels."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._recheck_at = 0.0

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        if now >= self._recheck_at:
            self._recheck_at = now + MASTER_RECHECK_SECONDS
            with contextlib.suppress(redis.RedisError, OSError):
                self.get_master_address()  # type: ignore[no-untyped-call]
        connection = super().get_connection(*args, **kwargs)
        if not _on_master(self, connection):
            try:
                connection.disconnect()  # type: ignore[no-untyped-call]
                connection.connect()  # type: ignore[no-untyped-call]
            except BaseException:
                self.release(connection)
                raise
        return connection

    def disconnect(self, inuse_connections: bool = True) -> None:
        super().disconnect(inuse_connections)
        if inuse_connections:
            for client in self.sentinel_manager.sentinels:
                client.close()
