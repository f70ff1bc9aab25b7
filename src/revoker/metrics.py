"""Prometheus metrics: the per-request check, revocations by kind and surface, bulk jobs.

Two sources, so that the numbers add up without double counting:

* **Process counters** (counters and histograms on prometheus-client's default registry): the
  checks, every revocation this process wrote (:func:`count_revocation`, called at every write
  site with the surface that asked for it), and what a worker did for jobs (sessions revoked,
  chunks parked, job durations). A service's existing ``/metrics`` exposes them, the admin API
  serves them, and a Celery worker serves them on ``REVOKER_WORKER_METRICS_PORT``
  (:func:`start_worker_metrics_server`). Summed over every process scraped, they are the totals.
* **Shared state read from Redis at scrape time** (:class:`JobStateCollector`, served by the
  admin API's ``/metrics`` only): jobs by status and the outbox backlog. They are the same
  numbers whichever process reads them, so exactly one scrape target carries them.

Prefork workers use prometheus-client's multiprocess mode: with ``PROMETHEUS_MULTIPROC_DIR``
set (before the worker starts: the client reads it at import), each pool child writes its values
to files there, and the worker's main process serves their sum. Chosen over an endpoint per child
because pool children come and go (``max_tasks_per_child``, a killed child) and have no stable
port, while the main process lives as long as the worker; the sum of a worker's children is what
an operator asks for. Without the variable (solo or threads pool, tests) the endpoint serves the
process's own registry.

A short-lived process (the ``revoker`` CLI) counts its revocations too, but exits before any
scrape: point it at the same ``PROMETHEUS_MULTIPROC_DIR`` as a long-lived process on that host to
keep them, or read them from the audit trail (``revoker audit --json``), which records every
revocation whatever wrote it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar, cast, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from starlette.types import ASGIApp, Receive, Scope, Send

    from revoker.settings import RevokerSettings
    from revoker.store import RedisTokenRevocationStore, SyncRedisTokenRevocationStore
    from revoker.store._jobs import Flow

__all__ = [
    "BREAKER_OPEN",
    "CHECKS",
    "CHECK_LATENCY",
    "DENYLIST_LOST",
    "EVENTS",
    "JOB_CHUNKS_PARKED",
    "JOB_DURATION",
    "JOB_SESSIONS_REVOKED",
    "MIRROR_BYTES",
    "MIRROR_ENTRIES",
    "MIRROR_FALLBACKS",
    "MIRROR_LAG",
    "MIRROR_RESYNCS",
    "MIRROR_STALENESS",
    "REVOCATIONS",
    "REVOCATION_KINDS",
    "SURFACES",
    "JobState",
    "JobStateCollector",
    "RevocationKind",
    "Surface",
    "SurfaceMiddleware",
    "TalliedCounter",
    "count_revocation",
    "counted",
    "current_surface",
    "job_state_flow",
    "read_job_state",
    "read_job_state_async",
    "revocation_surface",
    "set_process_surface",
    "start_worker_metrics_server",
    "worker_process_exited",
]

log = logging.getLogger("revoker.revocations")

#: What asked for a revocation: the CLI, the admin API, Python code calling revoker directly, a
#: bulk job's fan-out, refresh-token rotation detecting reuse, or a data-loss recovery.
Surface = Literal["cli", "api", "python", "job", "rotation", "recovery"]
SURFACES: Final[tuple[Surface, ...]] = get_args(Surface)
#: What was revoked: one token (jti), one session (family), a user's or a tenant's tokens
#: (watermark), or everything issued before a moment (the global cut-off of a recovery).
RevocationKind = Literal["token", "family", "user", "tenant", "global"]
REVOCATION_KINDS: Final[tuple[RevocationKind, ...]] = get_args(RevocationKind)

#: Whether metric values live in this process's memory (prometheus-client's MutexValue), not
#: in the files of multiprocess mode (PROMETHEUS_MULTIPROC_DIR, read by another process).
_IN_MEMORY: Final = values.ValueClass is getattr(values, "MutexValue", None)


class _Tally:
    """One child's increments, counted by an ``itertools.count`` (atomic, no lock)."""

    __slots__ = ("added", "child", "count", "reads")

    def __init__(self, child: Counter) -> None:
        self.child = child
        self.count = itertools.count()
        #: Values the flush took from ``count`` (each next() of it), and increments added.
        self.reads = 0
        self.added = 0


class TalliedCounter(Counter):
    """A Counter whose per-request increments cost a C call, not a locked ``inc()``.

    :meth:`counting` gives a callable that counts one for some labels: it advances an
    ``itertools.count`` (atomic under the GIL, lossless across threads), and the counts are
    added to the children whenever the metric is collected (a scrape, ``get_sample_value``):
    what any reader sees is exact. In multiprocess mode (values in files another process
    reads) the callable is the child's own ``inc``. ``labels(...).inc()`` works as on any
    Counter, and adds up with the tallies.
    """

    def counting(self, *labelvalues: str) -> Callable[[], object]:
        """A callable counting one for ``labelvalues`` (one tally per label values)."""
        child = self.labels(*labelvalues)
        if not _IN_MEMORY:
            return child.inc
        with _TALLY_LOCK:
            tallies: dict[tuple[str, ...], _Tally] = self.__dict__.setdefault("_tallies", {})
            tally = tallies.get(labelvalues)
            if tally is None:
                tally = tallies[labelvalues] = _Tally(child)
        return tally.count.__next__

    def flush(self) -> None:
        """Add the tallied increments to the children."""
        with _TALLY_LOCK:
            for tally in self.__dict__.get("_tallies", {}).values():
                # next() returns the increments so far plus this flush's earlier reads.
                counted = next(tally.count) - tally.reads
                tally.reads += 1
                if counted > tally.added:
                    tally.child.inc(counted - tally.added)
                    tally.added = counted

    def collect(self) -> Iterable[Metric]:
        self.flush()
        return super().collect()


_TALLY_LOCK: Final = threading.Lock()

#: Checked requests by outcome: ok, revoked, invalid, missing, error_open (let through while
#: Redis failed), error_closed (503 while Redis failed).
CHECKS: Final = TalliedCounter(
    "revoker_checks_total", "Tokens checked by the middleware, by outcome.", ["outcome"]
)
#: Seconds spent in the revocation lookup (Redis round trip and decision), not in verification.
CHECK_LATENCY: Final = Histogram(
    "revoker_check_seconds",
    "Latency of the revocation lookup.",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
BREAKER_OPEN: Final = Gauge(
    "revoker_breaker_open",
    "1 while the Redis circuit breaker is open (checks skip Redis).",
    multiprocess_mode="max",
)
#: Revocations written by this process, by kind and by surface (:func:`count_revocation`). A
#: job's sessions count as ``family``/``job``, one per session; the watermark its enqueue wrote
#: as ``tenant`` or ``user`` on the surface that enqueued it.
REVOCATIONS: Final = Counter(
    "revoker_revocations_total", "Revocations written, by kind and surface.", ["kind", "surface"]
)
#: Losses or rollbacks of the denylist this process detected, by kind (wiped, rolled_back,
#: epoch_changed) and by the REVOKER_ON_DATA_LOSS policy in force.
DENYLIST_LOST: Final = Counter(
    "revoker_denylist_lost", "Denylist losses or rollbacks detected.", ["kind", "policy"]
)
#: Shared Signals events and logout tokens (revoker.events) by outcome: routed (queued for a
#: stream), delivered (a push accepted, a poll acknowledged), retried (a push failed, backing
#: off), dead_lettered. Counted by the process that did it (the worker; the API for polls).
EVENTS: Final = Counter("revoker_events_total", "Security events, by outcome.", ["outcome"])
#: Seconds from a job's creation (its enqueue) to its finish, by job kind and final status;
#: observed once per job by the worker that finished it.
JOB_DURATION: Final = Histogram(
    "revoker_job_duration_seconds",
    "Seconds from enqueue to finish of bulk jobs, by kind and final status.",
    ["kind", "status"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
#: Sessions revoked by job chunks (each counted once, when its chunk counts itself done).
JOB_SESSIONS_REVOKED: Final = Counter(
    "revoker_job_sessions_revoked_total",
    "Sessions revoked by bulk job chunks, by job kind.",
    ["kind"],
)
#: Chunks parked after REVOKER_MAX_REDELIVERIES deliveries (each fails its job).
JOB_CHUNKS_PARKED: Final = Counter(
    "revoker_job_chunks_parked_total", "Job chunks parked after too many deliveries."
)

_surface: ContextVar[Surface] = ContextVar("revoker_surface", default="python")


def current_surface() -> Surface:
    """The surface revocations made now are counted under (``python`` unless set)."""
    return _surface.get()


def set_process_surface(surface: Surface) -> None:
    """Count this context's revocations under ``surface`` from now on (a worker process's tasks
    as ``job``); :func:`revocation_surface` for a block."""
    if surface not in SURFACES:
        raise ValueError(f"unknown surface {surface!r}: one of {', '.join(SURFACES)}")
    _surface.set(surface)


@contextlib.contextmanager
def revocation_surface(surface: Surface) -> Iterator[None]:
    """Count the revocations written inside the block under ``surface`` (the CLI, the API and
    the worker set it; a context variable, so concurrent requests and tasks keep their own)."""
    if surface not in SURFACES:
        raise ValueError(f"unknown surface {surface!r}: one of {', '.join(SURFACES)}")
    token = _surface.set(surface)
    try:
        yield
    finally:
        _surface.reset(token)


def count_revocation(
    kind: RevocationKind,
    surface: Surface,
    n: int = 1,
    *,
    target: str | None = None,
    tenant: str | None = None,
    actor: str | None = None,
    reason: str | None = None,
) -> None:
    """Count ``n`` revocations of ``kind`` written for ``surface``, and log the one line per
    revocation (logger ``revoker.revocations``, INFO; ids only, never a token)."""
    if n <= 0:
        return
    REVOCATIONS.labels(kind, surface).inc(n)
    if log.isEnabledFor(logging.INFO):
        log.info(
            "revocation kind=%s surface=%s count=%d target=%s",
            kind,
            surface,
            n,
            target if target is not None else "-",
            extra={
                "event": "revocation",
                "kind": kind,
                "surface": surface,
                "count": n,
                "target": target,
                "tenant": tenant,
                "actor": actor,
                "reason": reason,
            },
        )


F = TypeVar("F", bound=Callable[..., Any])


def counted(kind: RevocationKind, surface: Surface | None = None) -> Callable[[F], F]:
    """Decorate a store's revoking method (sync or async): after it returns, count the write
    with :func:`count_revocation` (its first argument is the target; ``tenant_id``, ``actor``,
    ``reason`` are read from its keyword arguments). A method that answers ``False`` (nothing
    new was written: the jti or family was already revoked) is not counted; a recovery without
    ``cutoff=True`` writes no cut-off and is not counted either. ``surface``: fixed, else the
    caller's (:func:`current_surface`)."""

    def record(args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
        if result is False or (kind == "global" and not kwargs.get("cutoff", True)):
            return
        count_revocation(
            kind,
            surface or current_surface(),
            target=str(args[1]) if len(args) > 1 else None,
            tenant=kwargs.get("tenant_id") or (str(args[1]) if kind == "tenant" else None),
            actor=kwargs.get("actor"),
            reason=kwargs.get("reason"),
        )

    def decorate(method: F) -> F:
        if inspect.iscoroutinefunction(method):

            @functools.wraps(method)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                result = await method(*args, **kwargs)
                record(args, kwargs, result)
                return result

            return cast(F, async_wrapper)

        @functools.wraps(method)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            record(args, kwargs, result)
            return result

        return cast(F, wrapper)

    return decorate


# --- job state, read from Redis at scrape time ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobState:
    """Jobs by status and the outbox backlog, as Redis holds them now."""

    by_status: dict[str, int] = field(default_factory=dict)
    outbox_pending: int = 0
    #: Seconds since the oldest job still in the outbox was created (0 when the outbox is empty).
    outbox_oldest_age: float = 0.0

    def families(self) -> list[Metric]:
        from revoker.job_record import JOB_STATUSES

        jobs = GaugeMetricFamily(
            "revoker_jobs", "Bulk jobs kept in Redis, by status.", labels=["status"]
        )
        for status in JOB_STATUSES:
            jobs.add_metric([status], self.by_status.get(status, 0))
        pending = GaugeMetricFamily(
            "revoker_outbox_pending", "Jobs accepted but not yet started by a worker (outbox)."
        )
        pending.add_metric([], self.outbox_pending)
        oldest = GaugeMetricFamily(
            "revoker_outbox_oldest_age_seconds",
            "Age of the oldest job in the outbox (0 when empty).",
        )
        oldest.add_metric([], self.outbox_oldest_age)
        return [jobs, pending, oldest]


#: Jobs whose status is read per scrape, newest first: bounds a scrape's cost (REVOKER_JOB_RETENTION
#: usually keeps far fewer). Beyond it the oldest are not counted.
MAX_JOBS_SCRAPED: Final = 10_000


def job_state_flow(
    store: SyncRedisTokenRevocationStore | RedisTokenRevocationStore, now: float
) -> Flow[JobState]:
    """Two round trips: the newest jobs' ids with the outbox's size and oldest entry, then
    those jobs' statuses (``JobPlans.plan_job_states``)."""
    from revoker.store._base import Plan

    keys = store.keys
    first: list[Any] = yield Plan(
        [
            ("ZREVRANGE", keys.jobs, 0, MAX_JOBS_SCRAPED - 1),
            ("ZCARD", keys.jobs_pending),
            ("ZRANGE", keys.jobs_pending, 0, 0, "WITHSCORES"),
        ],
        lambda replies: replies,
    )
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in first[0] or []]
    states: list[tuple[str | None, int]] = (yield store.jobs.plan_job_states(ids)) if ids else []
    counts: dict[str, int] = {}
    for status, _total in states:
        if status is not None:
            counts[status] = counts.get(status, 0) + 1
    oldest = first[2]
    # The outbox is scored by creation time in ms (keys: P:jobs:pending).
    age = max(0.0, now - float(oldest[0][1]) / 1000) if oldest else 0.0
    return JobState(counts, int(first[1] or 0), age)


def read_job_state(store: SyncRedisTokenRevocationStore) -> JobState:
    return store.run(job_state_flow(store, time.time()))


async def read_job_state_async(store: RedisTokenRevocationStore) -> JobState:
    return await store.run(job_state_flow(store, time.time()))


class JobStateCollector(Collector):
    """A collector of :class:`JobState` read through a sync store at each scrape."""

    def __init__(self, store: SyncRedisTokenRevocationStore) -> None:
        self.store = store

    def collect(self) -> Iterable[Metric]:
        try:
            state = read_job_state(self.store)
        except Exception as e:  # noqa: BLE001 - a scrape must not fail because Redis did
            log.warning("job metrics unavailable: %s", e)
            return []
        return state.families()

    def describe(self) -> Iterable[Metric]:
        return []  # no description at registration: that would read Redis


# --- the worker's endpoint -----------------------------------------------------------------------


def _multiprocess_dir() -> Path | None:
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(value) if value else None


def start_worker_metrics_server(settings: RevokerSettings, *, wipe: bool = True) -> int | None:
    """Serve this worker's metrics on ``REVOKER_WORKER_METRICS_PORT`` (from the worker's main
    process); the port, or None when the setting is unset.

    In multiprocess mode the sum of every pool child's files is served, and the directory's
    files of a previous run are deleted first (``wipe``: the prometheus-client rule; the
    directory must be this worker's own).
    """
    port = settings.worker_metrics_port
    if port is None:
        return None
    from prometheus_client import REGISTRY, start_http_server

    registry: CollectorRegistry = REGISTRY
    directory = _multiprocess_dir()
    if directory is not None:
        from prometheus_client import multiprocess

        directory.mkdir(parents=True, exist_ok=True)
        if wipe:
            mine = f"_{os.getpid()}.db"
            for stale in directory.glob("*.db"):
                if not stale.name.endswith(mine):  # this process's own files are open
                    stale.unlink(missing_ok=True)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    server, _thread = start_http_server(
        port, addr=settings.worker_metrics_address, registry=registry
    )
    bound = int(server.server_port)
    logging.getLogger("revoker.worker").info(
        "worker metrics on http://%s:%d/metrics (%s)",
        settings.worker_metrics_address,
        bound,
        "multiprocess" if directory is not None else "this process",
    )
    return bound


def worker_process_exited(pid: int) -> None:
    """A pool child exited: its live gauges leave the sum (its counters stay counted)."""
    if _multiprocess_dir() is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class SurfaceMiddleware:
    """Pure ASGI: count the revocations a request writes under ``surface`` (the admin API)."""

    def __init__(self, app: ASGIApp, surface: Surface) -> None:
        self.app = app
        self.surface = surface

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with revocation_surface(self.surface):
            await self.app(scope, receive, send)


# --- the mirror (revoker.mirror; REVOKER_CHECK_MODE=mirror) ----------------------------------
# The gauges are read from the process's mirrors when scraped (revoker.mirror registers the
# functions): nothing is updated per request.
#: Seconds since the mirror's last complete read of the change feed (the largest of the
#: process's mirrors; 0 when there is none).
MIRROR_LAG: Final = Gauge(
    "revoker_mirror_lag_seconds", "Seconds since the mirror's last complete read of the feed."
)
#: While the mirror cannot read the feed (Redis unreachable): its lag; 0 while it reads.
MIRROR_STALENESS: Final = Gauge(
    "revoker_mirror_staleness_seconds",
    "Age of the mirror's state while it cannot read the feed (0 while it can).",
)
MIRROR_ENTRIES: Final = Gauge(
    "revoker_mirror_entries", "Revocation entries the mirror holds, by kind.", ["kind"]
)
MIRROR_BYTES: Final = Gauge("revoker_mirror_bytes", "Bytes of revocation state the mirror holds.")
#: Snapshots loaded, by reason: start, trimmed (the feed was trimmed past the mirror), epoch (an
#: epoch entry: data loss, recovery or init), loss (this mirror detected one), rolled_back (the
#: feed is behind the mirror), unreadable (an entry this version cannot read).
MIRROR_RESYNCS: Final = Counter(
    "revoker_mirror_resyncs", "Snapshots the mirror loaded, by reason.", ["reason"]
)
#: Checks in mirror mode not answered from a fresh mirror: `redis` (asked Redis: the mirror was
#: loading or past REVOKER_MIRROR_MAX_LAG), `stale` (Redis failed; answered from the mirror within
#: REVOKER_MIRROR_MAX_STALENESS).
MIRROR_FALLBACKS: Final = Counter(
    "revoker_mirror_fallbacks", "Mirror-mode checks not answered by a fresh mirror.", ["to"]
)
