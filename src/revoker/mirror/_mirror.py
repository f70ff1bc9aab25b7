"""One process's mirror: a snapshot, then the feed followed on a connection and task of its own.

The reads are the store's feed plans (:class:`revoker.store.FeedPlans`: the snapshot, and the
feed from an id with trimming detected), run here on a connection of the mirror's own (its
socket timeout is past the blocking read's wait), each pipelined with a read of the integrity
hash. The follower loop (:meth:`Mirror._run`): load a snapshot (:meth:`Mirror._snapshot`), then
read the feed (:meth:`Mirror._follow`) from the last id applied, blocking up to the heartbeat when
nothing is waiting (a revocation wakes it at once). A read that returned everything there was
makes the mirror *fresh as of the moment it was sent*: every revocation whose call had returned
by then is in the mirror. The check asks :meth:`Mirror.status` (fresh within
REVOKER_MIRROR_MAX_LAG, else None: ask Redis) and, when Redis cannot answer,
:meth:`Mirror.stale_status` (within REVOKER_MIRROR_MAX_STALENESS).

A resync (a new snapshot) follows a gap (feed trimmed past the mirror), an ``epoch`` entry
(data loss, recovery, init), a feed behind the mirror, an entry this version cannot read, or a
loss the integrity hash shows (handled first by REVOKER_ON_DATA_LOSS, through the store's one
plan for it). While it loads, checks go to Redis; the previous state still answers within the
staleness bound if Redis fails meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from typing import TYPE_CHECKING, Any, Final

from revoker.integrity import INTEGRITY_FIELDS, IntegrityWatch, Loss, read_observation
from revoker.keys import KeyLayout, tenant_tag
from revoker.metrics import MIRROR_RESYNCS
from revoker.mirror._state import MirrorState, StateBuilder
from revoker.rules import RevocationStatus
from revoker.settings import RevokerSettings
from revoker.store._base import BACKEND_ERRORS, Command, Plan, StoreCore
from revoker.store._feed import FeedPlans, SnapshotBatch, SnapshotFamilies, SnapshotStart
from revoker.tokens import TokenData

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from revoker.store import RedisTokenRevocationStore

__all__ = ["Mirror"]

logger = logging.getLogger("revoker.mirror")

#: Entries read per round trip while catching up.
_BATCH: Final = 1000
#: Seconds between sweeps of expired jtis and watermarks.
_SWEEP_EVERY: Final = 10.0
#: Seconds to wait before retrying after a failed read (doubling up to the cap).
_RETRY_FIRST, _RETRY_CAP = 0.05, 1.0


def _id_key(stream_id: str) -> tuple[int, int]:
    """A stream id as a pair that orders as Redis orders ids."""
    ms, _, seq = stream_id.partition("-")
    return int(ms or 0), int(seq or 0)


def _encoded(part: Any) -> bytes:
    if isinstance(part, bytes):
        return part
    if isinstance(part, str):
        return part.encode()
    if isinstance(part, int):
        return b"%d" % part
    raise TypeError(f"a command's argument is bytes, str or int, not {type(part).__name__}")


def _pack(commands: list[Any]) -> bytes:
    """Commands in the Redis protocol (what redis-py's pack_commands makes, at a tenth of its
    cost: a snapshot sends ~10,000 HSCANs)."""
    out: list[bytes] = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for part in map(_encoded, command):
            out.append(b"$%d\r\n%b\r\n" % (len(part), part))
    return b"".join(out)


@contextlib.asynccontextmanager
async def _held_connection(client: Any) -> AsyncIterator[Any]:
    """One connection of ``client``'s pool, held for raw reads and given back after; on any
    error it is disconnected first (a reply may be left unread on it)."""
    pool = client.connection_pool
    connection = await pool.get_connection()
    try:
        yield connection
    except BaseException:
        with contextlib.suppress(Exception):
            await connection.disconnect()
        raise
    finally:
        await pool.release(connection)


class _Resync(Exception):
    """The mirror must load a snapshot again (the reason is the message)."""


class Mirror:
    """The revocation state of one process (one event loop), kept current from the feed."""

    def __init__(
        self, settings: RevokerSettings, store: RedisTokenRevocationStore | None = None
    ) -> None:
        self.settings = settings
        self.keys = KeyLayout(settings.key_prefix)
        self._store = store
        self._plans = FeedPlans(StoreCore(settings))
        self.max_lag = settings.mirror_max_lag
        self.max_staleness = settings.mirror_max_staleness
        #: The heartbeat: an idle feed is read at least this often (a quarter of the lag bound).
        self.block_ms = max(10, min(1000, int(self.max_lag * 250)))
        self._key = secrets.token_bytes(16)
        #: Until when (time.monotonic()) the state may answer checks: fresh_at + max_lag while
        #: a state is synced and the integrity state is not fail-closed, else -inf. Kept by the
        #: four properties below, so that a check's freshness test is one comparison.
        self.fresh_until = -math.inf
        #: The state while it may answer checks (until fresh_until), else None: what the warm
        #: path reads (a plain attribute: a property costs it a call per request).
        self.fresh_state: MirrorState | None = None
        self._state: MirrorState | None = None
        self._synced = False
        self._fresh_at = -math.inf
        self._integrity_state: str | None = None
        self._watch = IntegrityWatch(require_init=settings.require_init)
        self.error: str | None = None
        self.resyncs: dict[str, int] = {}
        self.snapshot_seconds: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None
        self._ready = asyncio.Event()
        #: Set (and replaced) after each complete read of the feed.
        self._read_done = asyncio.Event()
        self._next_sweep = 0.0
        self._stopping = False

    # --- freshness -----------------------------------------------------------------------------

    def _bound(self) -> None:
        fresh = self._state is not None and self._synced and self._integrity_state != "fail-closed"
        self.fresh_until = self._fresh_at + self.max_lag if fresh else -math.inf
        self.fresh_state = self._state if self.fresh_until > -math.inf else None

    @property
    def state(self) -> MirrorState | None:
        """What the mirror holds (None: no snapshot loaded yet)."""
        return self._state

    @state.setter
    def state(self, value: MirrorState | None) -> None:
        self._state = value
        self._bound()

    @property
    def synced(self) -> bool:
        """The state reflects the feed from its snapshot on (False while a resync is due)."""
        return self._synced

    @synced.setter
    def synced(self, value: bool) -> None:
        self._synced = value
        self._bound()

    @property
    def fresh_at(self) -> float:
        """time.monotonic() when the last complete read was sent (-inf: never)."""
        return self._fresh_at

    @fresh_at.setter
    def fresh_at(self, value: float) -> None:
        self._fresh_at = value
        self._bound()

    @property
    def integrity_state(self) -> str | None:
        """The integrity hash's state as last read (None: not read yet)."""
        return self._integrity_state

    @integrity_state.setter
    def integrity_state(self, value: str | None) -> None:
        self._integrity_state = value
        self._bound()

    # --- what checks ask -----------------------------------------------------------------------

    def status(self, token: TokenData, now: float) -> RevocationStatus | None:
        """The decision for ``token`` if the mirror is fresh (lag within the bound: a synced
        state, integrity not fail-closed; :attr:`fresh_until`), else None."""
        state = self._state
        if now > self.fresh_until or state is None:
            return None
        return state.status(token)

    def stale_status(self, token: TokenData, now: float) -> RevocationStatus | None:
        """While Redis cannot answer: the decision from the last state read, if it is no older
        than the staleness bound, else None (the failure policy applies)."""
        state = self.state
        if (
            state is None
            or now - self.fresh_at > self.max_staleness
            or self.integrity_state == "fail-closed"
        ):
            return None
        return state.status(token)

    def lag(self, now: float | None = None) -> float:
        """Seconds since the last complete read of the feed (inf: none yet)."""
        return (time.monotonic() if now is None else now) - self.fresh_at

    # --- life ----------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start following (on the running loop); idempotent."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"revoker-mirror:{self.settings.key_prefix}"
            )

    async def wait_ready(self) -> None:
        """Wait until a snapshot is loaded (bound it with ``asyncio.timeout``)."""
        self.start()
        await self._ready.wait()

    async def caught_up(self) -> None:
        """Wait until every feed entry appended before this call is applied (every revocation
        that returned before it is then in the mirror); bound it with ``asyncio.timeout``."""
        self.start()
        tail, _ = await self._run_plan(self._connect(), self._plans.plan_feed_tail())
        wanted = _id_key(tail)
        while not (
            self.synced and self.state is not None and _id_key(self.state.last_id) >= wanted
        ):
            await self._read_done.wait()

    async def stop(self) -> None:
        """Stop following and close the connection."""
        task, self._task = self._task, None
        client, self._client = self._client, None
        if task is not None:
            # The flag ends the loop; the read in flight ends within the heartbeat (a cancelled
            # redis-py pipeline read can wait for its reply regardless), then the task is done.
            self._stopping = True
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), self.block_ms / 1000 + 2.0)
            if not task.done():
                task.cancel()
            self._stopping = False
        if client is not None:
            # A connection already gone closes as it can.
            with contextlib.suppress(Exception):
                await client.aclose(close_connection_pool=True)

    def _connect(self) -> Any:
        if self._client is None:
            from revoker.store._clients import make_async_client

            # Its own pool, with a socket timeout past the blocking read's wait.
            timeout = self.block_ms / 1000 + max(5.0, self.settings.redis_timeout)
            # The follower holds one connection: another for caught_up's read of the tail.
            connections = max(2, self.settings.redis_max_connections)
            self._client = make_async_client(
                self.settings.model_copy(
                    update={"redis_timeout": timeout, "redis_max_connections": connections}
                )
            )
        return self._client

    # --- the follower --------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._follow_until_stopped()
        finally:
            # Stopped or cancelled (its loop shut down): nothing keeps the state current, so it
            # answers no check from now on (another loop of the same thread gets its own mirror:
            # check.RevocationChecker.check_now tells loops apart by their thread).
            self.fresh_at = -math.inf

    async def _follow_until_stopped(self) -> None:
        delay = _RETRY_FIRST
        reason = "start" if self.state is None else "restart"
        while not self._stopping:
            try:
                client = self._connect()
                if not self.synced:
                    await self._snapshot(client, reason)
                await self._follow(client)
            except asyncio.CancelledError:
                raise
            except _Resync as e:
                reason = str(e)
                self.synced = False
                continue
            except Exception as e:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # redis-py can turn a cancelled read into a connection error: the loop's
                    # shutdown (asyncio.run, uvicorn) still ends this task.
                    raise asyncio.CancelledError from e
                if self.error is None:
                    delay = _RETRY_FIRST  # the first failure after reads succeeded
                if not isinstance(e, BACKEND_ERRORS):
                    logger.exception("the mirror's feed reader failed unexpectedly")
                self._failed(e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_CAP)

    def _failed(self, error: BaseException) -> None:
        message = f"{type(error).__name__}: {error}"
        if self.error is None:
            logger.warning(
                "the mirror cannot read the feed; checks ask Redis past %.3g s of lag and answer "
                "from the mirror for %.3g s while Redis is unreachable",
                self.max_lag,
                self.max_staleness,
                extra={"error": message},
            )
        self.error = message

    async def _run_plan(
        self,
        client: Any,
        plan: Plan[Any],
        also: list[Command] = (),  # type: ignore[assignment]
    ) -> tuple[Any, list[Any]]:
        """A store plan executed on the mirror's connection, with ``also`` in the same pipeline:
        (the plan's result, the replies of ``also``)."""
        pipe = client.pipeline(transaction=False)
        commands = [*plan.commands, *also]
        for command in commands:
            assert isinstance(command, tuple)  # the feed's plans call no registered script
            pipe.execute_command(*command)
        replies: list[Any] = await pipe.execute()
        count = len(plan.commands)
        return plan.finish(replies[:count]), replies[count:]

    def _integrity_read(self) -> Command:
        return ("HMGET", self.keys.integrity, *INTEGRITY_FIELDS)

    async def _judge(self, raw: Any, seen: tuple[str | None, int]) -> None:
        """The integrity hash as read: a loss is handled by REVOKER_ON_DATA_LOSS, then resync."""
        observed = read_observation(raw)
        loss = self._watch.observe(observed, seen)
        if loss is not None:
            await self._handle_loss(loss)
            raise _Resync("loss")
        self.integrity_state = observed.state

    async def _handle_loss(self, loss: Loss) -> None:
        store = self._store
        if store is None:
            from revoker.store import get_revocation_store

            store = get_revocation_store(self.settings)
        observed, _ = await store.execute(store.core.plan_data_loss(loss))
        self._watch.adopt(observed)
        self.integrity_state = observed.state

    async def _snapshot(self, client: Any, reason: str) -> None:
        """Load the state: the feed's position first, then every key the check reads."""
        started = time.perf_counter()
        sent = time.monotonic()
        seen = self._watch.snapshot()
        builder = StateBuilder(self._key)
        # One connection for the whole snapshot, its replies read raw (hiredis's lists of bytes,
        # no reply callbacks): the plans' finishers read either shape.
        async with _held_connection(client) as connection:
            feed_id = await self._load(connection, builder, seen)
        # Joining the groups is the last step (milliseconds): in a thread regardless, so the
        # event loop keeps serving (checks go to Redis until the mirror is ready).
        state = await asyncio.to_thread(builder.build)
        state.last_id = feed_id
        self.state = state
        self.synced = True
        self.fresh_at = sent
        self.error = None
        self.snapshot_seconds = time.perf_counter() - started
        self.resyncs[reason] = self.resyncs.get(reason, 0) + 1
        MIRROR_RESYNCS.labels(reason).inc()
        self._ready.set()
        self._read_done.set()
        self._read_done = asyncio.Event()
        log = logger.info if reason == "start" else logger.warning
        log(
            "mirror loaded from a snapshot (%s) in %.3f s: %s",
            reason,
            self.snapshot_seconds,
            state.entries(),
            extra={"reason": reason},
        )

    async def _load(
        self, connection: Any, builder: StateBuilder, seen: tuple[str | None, int]
    ) -> str:
        """Run the snapshot's plans on ``connection``; the feed id it starts at.

        Each plan's commands are sent before the families of the previous reply are hashed, so
        Redis prepares the next reply while this process hashes (the two use two cores)."""
        flow = self._plans.plan_snapshot(raw_families=True)
        feed_id = "0-0"
        families: list[SnapshotFamilies] = []
        item = next(flow)
        try:
            while True:
                if isinstance(item, Plan):
                    commands = list(item.commands)
                    # The start: the identity in full beside it (what a loss is judged by).
                    starting = isinstance(commands[0], tuple) and commands[0][0] == "EVAL"
                    if starting:
                        commands.append(self._integrity_read())
                    assert all(isinstance(c, tuple) for c in commands)  # no registered script
                    await connection.send_packed_command(_pack(commands), check_health=False)
                    for part in families:
                        builder.add_family_fields(tenant_tag(part.tenant_id), part.fields)
                    families.clear()
                    replies = [await connection.read_response() for _ in commands]
                    if starting:
                        await self._judge(replies.pop(), seen)
                    item = flow.send(item.finish(replies))
                    continue
                if isinstance(item, SnapshotStart):
                    feed_id = item.feed_id
                elif isinstance(item, SnapshotFamilies):
                    families.append(item)
                elif isinstance(item, SnapshotBatch):
                    self._take(builder, item)
                item = flow.send(None)
        except StopIteration:
            pass
        for part in families:
            builder.add_family_fields(tenant_tag(part.tenant_id), part.fields)
        return feed_id

    @staticmethod
    def _take(builder: StateBuilder, batch: SnapshotBatch) -> None:
        state, kind = builder.state, batch.kind
        tag = tenant_tag(batch.tenant_id)
        if kind == "family":
            builder.add_families(tag, batch.ids)
        elif kind == "jti":
            for one, at, expires in zip(batch.ids, batch.values_us, batch.expires, strict=True):
                state.add_jti(one, at, expires)
        elif kind == "user":
            for one, at, expires in zip(batch.ids, batch.values_us, batch.expires, strict=True):
                state.add_user(tag, one, at, expires)
        elif kind == "tenant":
            for at, expires in zip(batch.values_us, batch.expires, strict=True):
                state.add_tenant(tag, at, expires)
        elif kind == "global":
            for at in batch.values_us:
                state.add_global(at)

    async def _follow(self, client: Any) -> None:
        """Read the feed until a resync is due (raises _Resync) or Redis fails: on one connection
        of the mirror's pool, held while following, replies read raw (as the snapshot's). A
        revocation's entry is applied as soon as its reply is read: no pipeline object, reply
        callbacks or packing in redis-py between the socket and the state (~4x less CPU per read,
        in a process busy serving requests)."""
        async with _held_connection(client) as connection:
            await self._follow_on(connection)

    async def _follow_on(self, connection: Any) -> None:
        state = self.state
        assert state is not None
        integrity = self._integrity_read()
        block: int | None = None  # the first read after a snapshot does not wait
        while not self._stopping:
            sent = time.monotonic()
            seen = self._watch.snapshot()
            plan = self._plans.plan_read_feed(state.last_id, _BATCH, block)
            commands = [*plan.commands, integrity]
            await connection.send_packed_command(_pack(commands), check_health=False)
            replies = [await connection.read_response() for _ in commands]
            read = plan.finish(replies[:-1])
            await self._judge(replies[-1], seen)
            if read.trimmed:
                raise _Resync("trimmed")
            now = time.time()
            for entry_id, entry in read.entries:
                if not state.apply(entry, now):
                    raise _Resync("epoch")
                state.last_id = entry_id
            complete = len(read.entries) < _BATCH
            # Wait for the next entry only after a read that found none: after one that found
            # some, read again at once (a read sent now is fresh as of now).
            block = self.block_ms if not read.entries else None
            if complete:
                self.fresh_at = sent
                self.error = None
                self._read_done.set()
                self._read_done = asyncio.Event()
            if sent >= self._next_sweep:
                self._next_sweep = sent + _SWEEP_EVERY
                state.sweep(now)

    # --- reports -------------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """What ``revoker health`` and ``GET /health`` show of this mirror."""
        state = self.state
        lag = self.lag()
        return {
            "key_prefix": self.settings.key_prefix,
            "ready": state is not None,
            "synced": self.synced,
            "lag_seconds": round(lag, 3) if math.isfinite(lag) else None,
            "max_lag_seconds": self.max_lag,
            "max_staleness_seconds": self.max_staleness,
            "fresh": state is not None and self.synced and lag <= self.max_lag,
            "serving_stale": state is not None and self.max_lag < lag <= self.max_staleness,
            "entries": state.entries() if state is not None else {},
            "bytes": state.nbytes if state is not None else 0,
            "last_id": state.last_id if state is not None else None,
            "resyncs": dict(self.resyncs),
            "snapshot_seconds": (
                round(self.snapshot_seconds, 3) if self.snapshot_seconds is not None else None
            ),
            "integrity_state": self.integrity_state or "ok",
            "error": self.error,
        }
