"""Whether Redis and the Celery broker answer: the one health check behind ``revoker health``,
``GET /health`` and the stores' ``health_check()``.

A probe result is ``{"healthy", "status", "latency_ms", "error"}`` and is never an exception: a
failure to connect is what a health check reports, not what it raises. The CLI and the API only
present a :class:`HealthReport` differently.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from revoker.settings import is_sentinel_url

if TYPE_CHECKING:
    from revoker.settings import RevokerSettings
    from revoker.store import RedisTokenRevocationStore, SyncRedisTokenRevocationStore

__all__ = [
    "REDIS_SCHEMES",
    "HealthReport",
    "broker_health",
    "check",
    "check_async",
    "probe_result",
]

#: Broker URLs that name a Redis server: probed with a PING, without kombu.
REDIS_SCHEMES: Final = ("redis://", "rediss://", "unix://")


def probe_result(started: float, error: BaseException | None) -> dict[str, Any]:
    """The result of a probe begun at ``started`` (``time.perf_counter()``) that ended in
    ``error`` (None: it answered)."""
    latency_ms = round((time.perf_counter() - started) * 1000, 3)
    if error is None:
        return {"healthy": True, "status": "healthy", "latency_ms": latency_ms, "error": None}
    return {
        "healthy": False,
        "status": "unhealthy",
        "latency_ms": latency_ms,
        "error": f"{type(error).__name__}: {error}",
    }


def broker_health(
    settings: RevokerSettings, redis_health: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Connect to the broker (PING a Redis one); never raises. Blocking.

    When the broker is the Redis just probed (``redis_health``), that answer is the broker's: a
    second connection to the same server would say nothing new.
    """
    url = settings.broker_url or settings.redis_url
    if redis_health is not None and url == settings.redis_url:
        return dict(redis_health)
    started = time.perf_counter()
    try:
        _connect(url, settings.redis_connect_timeout)
    except Exception as e:  # noqa: BLE001 - any failure to connect means "unhealthy", reported
        return probe_result(started, e)
    return probe_result(started, None)


def _connect(url: str, timeout: float) -> None:
    if url.startswith(REDIS_SCHEMES) or is_sentinel_url(url):
        from revoker.store._clients import sync_client_for_url

        client = sync_client_for_url(url, timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
        return
    from revoker._extras import requires_extra

    with requires_extra("worker", "probing an AMQP broker"):
        from kombu.connection import Connection

    connection_class: Any = Connection  # kombu's constructor is unannotated
    with connection_class(url, connect_timeout=timeout) as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)


@dataclass(frozen=True)
class HealthReport:
    """What Redis and the broker answered, and whether Redis honours REVOKER_DURABILITY."""

    redis: dict[str, Any]
    broker: dict[str, Any]
    #: ``{"mode", "honoured", "detail", ...}`` (see :func:`revoker.durability.assess`).
    durability: dict[str, Any] | None = None

    @property
    def healthy(self) -> bool:
        """Both answered, and the durability asked for is honoured."""
        honoured = self.durability is None or bool(self.durability["honoured"])
        return bool(self.redis["healthy"]) and bool(self.broker["healthy"]) and honoured


def check(store: SyncRedisTokenRevocationStore, settings: RevokerSettings) -> HealthReport:
    """Probe Redis through ``store``, then the broker of ``settings``."""
    redis_health = store.health_check()
    broker = broker_health(settings, redis_health)
    return HealthReport(redis_health, broker, store.durability_check())


async def check_async(store: RedisTokenRevocationStore, settings: RevokerSettings) -> HealthReport:
    """:func:`check` for the event loop: the broker is probed in a worker thread."""
    import anyio.to_thread  # Starlette's dependency; the stores import this module without it

    redis_health = await store.health_check()
    broker = await anyio.to_thread.run_sync(broker_health, settings, redis_health)
    return HealthReport(redis_health, broker, await store.durability_check())
