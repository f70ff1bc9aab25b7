"""Whether Redis and the Celery broker answer, and what could undo a revocation: the one health
check behind ``revoker health``, ``GET /health`` and the stores' ``health_check()``.

A probe result is ``{"healthy", "status", "latency_ms", "error"}`` and is never an exception: a
failure to connect is what a health check reports, not what it raises. The CLI and the API only
present a :class:`HealthReport` differently.

Besides reachability a report tells the truth about the data (:func:`integrity_report`): the
denylist's epoch and sequence, a loss recorded (or seen by this process and not yet handled), and
the server settings that can undo a revocation (:func:`server_report`): ``maxmemory-policy``
(anything but ``noeviction`` can evict a revocation: unsafe), persistence (``appendonly``,
``appendfsync``, ``save``; none at all is unsafe) where ``CONFIG GET`` is allowed, and the
replicas connected. A recorded loss makes the report unhealthy (exit 3, 503) until
``revoker recover``; an unsafe setting is reported in ``unsafe``, not failed.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from revoker.keys import decode_time, read_seq
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
    "integrity_report",
    "mirror_report",
    "probe_result",
    "server_report",
]

#: The states of the integrity hash that record a loss still awaiting `revoker recover`.
_LOST_STATES: Final = frozenset({"cutoff", "fail-closed", "accepted"})
#: CONFIG GET parameters reported, by the name the report gives them.
_CONFIG: Final = {
    "maxmemory_policy": "maxmemory-policy",
    "appendonly": "appendonly",
    "appendfsync": "appendfsync",
    "save": "save",
}

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
    """What Redis and the broker answered, whether Redis honours REVOKER_DURABILITY, and what
    the data and the server say."""

    redis: dict[str, Any]
    broker: dict[str, Any]
    #: ``{"mode", "honoured", "detail", ...}`` (see :func:`revoker.durability.assess`).
    durability: dict[str, Any] | None = None
    integrity: dict[str, Any] = field(default_factory=lambda: {"healthy": True})
    server: dict[str, Any] = field(default_factory=dict)
    #: The check mode and this process's mirrors (:func:`mirror_report`); reported, not failed.
    mirror: dict[str, Any] = field(default_factory=dict)

    @property
    def reachable(self) -> bool:
        """Both answered, and the durability asked for is honoured."""
        honoured = self.durability is None or bool(self.durability["honoured"])
        return bool(self.redis["healthy"]) and bool(self.broker["healthy"]) and honoured

    @property
    def healthy(self) -> bool:
        """:attr:`reachable`, and no loss of the denylist is recorded or seen."""
        return self.reachable and bool(self.integrity["healthy"])


def integrity_report(
    stored: dict[str, Any] | None,
    *,
    seen_epoch: str | None,
    seen_seq: int,
    require_init: bool,
    error: BaseException | None = None,
) -> dict[str, Any]:
    """The denylist's identity as stored (``store.integrity()``) judged against what this process
    has seen (see :mod:`revoker.integrity`): ``healthy`` False on a recorded or unhandled loss."""
    if stored is None:
        return {"healthy": False, "state": "unknown", "error": f"{type(error).__name__}: {error}"}
    epoch = stored.get("epoch")
    read = read_seq(stored.get("seq"))
    seq = read or 0
    state = stored.get("state") or "ok"
    problem: str | None = None
    if read is None:
        problem = (
            f"the revocation sequence is corrupt ({str(stored.get('seq'))[:40]!r}): it reads 0, a "
            "rollback to every process that saw more; run `revoker recover --cutoff` to start a "
            "new epoch"
        )
    elif state in _LOST_STATES:
        problem = (
            f"the denylist was lost (epoch {stored.get('lost') or '-'}); handled by "
            f"REVOKER_ON_DATA_LOSS ({state}); run `revoker recover --accept` once what can be "
            "restored is"
        )
    elif epoch is None and (seen_epoch is not None or require_init):
        problem = "the denylist has no epoch: Redis was wiped (no check has handled it yet)"
    elif seen_epoch is not None and epoch != seen_epoch and state != "recovered":
        problem = f"the denylist's epoch changed from {seen_epoch} to {epoch} (not yet handled)"
    elif seen_epoch is not None and epoch == seen_epoch and seq < seen_seq:
        problem = f"the revocation sequence went back from {seen_seq} to {seq}: a rollback"
    elif epoch is None:
        state = "new"  # no revocation yet, or a wipe nothing here can tell (REVOKER_REQUIRE_INIT)
    return {
        "healthy": problem is None,
        "state": state,
        "epoch": epoch,
        "seq": seq,
        "problem": problem,
        "lost_epoch": stored.get("lost"),
        "lost_at": _seconds(stored.get("lost_at")),
        "recovered_at": _seconds(stored.get("recovered_at")),
        "global_cutoff": stored.get("global_cutoff"),
        "error": None,
    }


def mirror_report(settings: RevokerSettings) -> dict[str, Any]:
    """The check mode (REVOKER_CHECK_MODE) and the state of this process's mirrors (ready, lag,
    entries, bytes, resyncs: :meth:`revoker.mirror.Mirror.report`). A service's ``/health`` shows
    its own; a process that checks nothing (the CLI) has none."""
    mirrors: list[dict[str, Any]] = []
    if "revoker.mirror" in sys.modules:  # a process that never started one has none to show
        mirrors = sys.modules["revoker.mirror"].mirror_report()
    return {
        "mode": settings.check_mode,
        "max_lag_seconds": settings.mirror_max_lag,
        "max_staleness_seconds": settings.mirror_max_staleness,
        "mirrors": mirrors,
    }


def _seconds(us: str | None) -> float | None:
    at_us = decode_time(us)
    return at_us / 1e6 if at_us is not None else None


def server_report(config: dict[str, str | None], replicas: int | None) -> dict[str, Any]:
    """The server settings that can undo a revocation, with what is unsafe about them. ``config``
    holds the CONFIG GET answers by report name (None where CONFIG GET was refused)."""
    unsafe: list[str] = []
    policy = config.get("maxmemory_policy")
    if policy is not None and policy != "noeviction":
        unsafe.append(f"maxmemory-policy {policy} can evict revocations (use noeviction)")
    if config.get("appendonly") == "no" and config.get("save") == "":
        unsafe.append('no persistence (appendonly no, save ""): a restart loses every revocation')
    return {**config, "connected_replicas": replicas, "unsafe": unsafe, "safe": not unsafe}


def _integrity(store: Any, stored: dict[str, Any] | None, error: BaseException | None) -> Any:
    watch = store.core.watch
    return integrity_report(
        stored,
        seen_epoch=watch.epoch,
        seen_seq=watch.seq,
        require_init=store.settings.require_init,
        error=error,
    )


def _config_plans(store: Any) -> list[tuple[str, Any]]:
    from revoker.store._base import Plan

    def value(name: str) -> Any:
        def finish(replies: list[Any]) -> str | None:
            found = replies[0] or {}
            got = found.get(name, found.get(name.encode()))
            return got.decode() if isinstance(got, bytes) else got

        return finish

    plans = [
        (report, Plan([("CONFIG", "GET", name)], value(name))) for report, name in _CONFIG.items()
    ]

    def replicas(replies: list[Any]) -> int | None:
        info = replies[0]
        if isinstance(info, bytes):
            info = info.decode()
        if isinstance(info, str):
            for line in info.splitlines():
                if line.startswith("connected_slaves:"):
                    return int(line.partition(":")[2])
            return None
        count = info.get("connected_slaves") if isinstance(info, dict) else None
        return int(count) if count is not None else None

    plans.append(("replicas", Plan([("INFO", "replication")], replicas)))
    return plans


def check(store: SyncRedisTokenRevocationStore, settings: RevokerSettings) -> HealthReport:
    """Probe Redis through ``store``, then the broker of ``settings``; read the data's identity
    and the server's settings."""
    from revoker.exceptions import StoreUnavailable

    redis_health = store.health_check()
    broker = broker_health(settings, redis_health)
    durability = store.durability_check()
    mirror = mirror_report(settings)
    if not redis_health["healthy"]:
        return HealthReport(redis_health, broker, durability, mirror=mirror)
    try:
        integrity = _integrity(store, store.integrity(), None)
    except StoreUnavailable as e:
        integrity = _integrity(store, None, e)
    answers: dict[str, Any] = {}
    for name, plan in _config_plans(store):
        try:
            answers[name] = store.execute(plan)
        except StoreUnavailable:
            answers[name] = None  # CONFIG or INFO refused (a managed Redis): unknown
    replicas = answers.pop("replicas")
    server = server_report(answers, replicas)
    return HealthReport(redis_health, broker, durability, integrity, server, mirror)


async def check_async(store: RedisTokenRevocationStore, settings: RevokerSettings) -> HealthReport:
    """:func:`check` for the event loop: the broker is probed in a worker thread."""
    import anyio.to_thread  # Starlette's dependency; the stores import this module without it

    from revoker.exceptions import StoreUnavailable

    redis_health = await store.health_check()
    broker = await anyio.to_thread.run_sync(broker_health, settings, redis_health)
    durability = await store.durability_check()
    mirror = mirror_report(settings)
    if not redis_health["healthy"]:
        return HealthReport(redis_health, broker, durability, mirror=mirror)
    try:
        integrity = _integrity(store, await store.integrity(), None)
    except StoreUnavailable as e:
        integrity = _integrity(store, None, e)
    answers: dict[str, Any] = {}
    for name, plan in _config_plans(store):
        try:
            answers[name] = await store.execute(plan)
        except StoreUnavailable:
            answers[name] = None
    replicas = answers.pop("replicas")
    server = server_report(answers, replicas)
    return HealthReport(redis_health, broker, durability, integrity, server, mirror)
