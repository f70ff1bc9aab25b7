"""One process's mirror: a snapshot, then the feed followed on a connection and task of its own.

The follower loop (:meth:`Mirror._run`): load a snapshot (:meth:`Mirror._snapshot`), then read the
feed (:meth:`Mirror._follow`): one MULTI of ``XINFO STREAM``, the integrity hash and ``XREAD``
from the last id applied, then, when nothing more is waiting, one ``XREAD BLOCK`` that returns as
soon as an entry is appended (or after the heartbeat). A read that returned everything there was
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

from revoker.integrity import IntegrityWatch, Loss, read_observation
from revoker.keys import KeyLayout, decode_feed_entry, decode_mark
from revoker.metrics import MIRROR_RESYNCS
from revoker.mirror import _reads as reads
from revoker.mirror._state import MirrorState, StateBuilder
from revoker.rules import RevocationStatus
from revoker.settings import RevokerSettings
from revoker.store._base import BACKEND_ERRORS
from revoker.tokens import TokenData

if TYPE_CHECKING:
    from revoker.store import RedisTokenRevocationStore

__all__ = ["Mirror"]

logger = logging.getLogger("revoker.mirror")

#: Keys per SCAN call of a snapshot: small enough that the hashing of one batch's families does
#: not hold the event loop for long (a bucket holds ~120 families).
_SCAN_COUNT: Final = 200
#: Seconds between sweeps of expired jtis and watermarks.
_SWEEP_EVERY: Final = 10.0
#: Seconds to wait before retrying after a failed read (doubling up to the cap).
_RETRY_FIRST, _RETRY_CAP = 0.05, 1.0


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
        self.max_lag = settings.mirror_max_lag
        self.max_staleness = settings.mirror_max_staleness
        #: The heartbeat: an idle feed is read at least this often (a quarter of the lag bound).
        self.block_ms = max(10, min(1000, int(self.max_lag * 250)))
        self._key = secrets.token_bytes(16)
        self.state: MirrorState | None = None
        #: The state reflects the feed from its snapshot on (False while a resync is due).
        self.synced = False
        #: time.monotonic() when the last complete read was sent (-inf: never).
        self.fresh_at = -math.inf
        #: The feed's entries-added when the last applied entry was appended.
        self._added = 0
        self.integrity_state: str | None = None
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

    # --- what checks ask -----------------------------------------------------------------------

    def status(self, token: TokenData, now: float) -> RevocationStatus | None:
        """The decision for ``token`` if the mirror is fresh (lag within the bound), else None."""
        state = self.state
        if (
            state is None
            or not self.synced
            or now - self.fresh_at > self.max_lag
            or self.integrity_state == "fail-closed"
        ):
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
        """Wait until a complete read sent after this call has been applied: every revocation
        that returned before the call is then in the mirror (bound it with ``asyncio.timeout``).
        """
        called = time.monotonic()
        self.start()
        while not (self.synced and self.fresh_at >= called):
            await self._read_done.wait()

    async def stop(self) -> None:
        """Stop following and close the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # Stopping: the loop logged its own errors already.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        client, self._client = self._client, None
        if client is not None:
            # A connection already gone closes as it can.
            with contextlib.suppress(Exception):
                await client.aclose(close_connection_pool=True)

    def _connect(self) -> Any:
        if self._client is None:
            from revoker.store._clients import make_async_client

            # Its own pool, with a socket timeout past the blocking read's wait.
            timeout = self.block_ms / 1000 + max(5.0, self.settings.redis_timeout)
            self._client = make_async_client(
                self.settings.model_copy(update={"redis_timeout": timeout})
            )
        return self._client

    # --- the follower --------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = _RETRY_FIRST
        reason = "start"
        while True:
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

    async def _multi(self, client: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
        pipe = client.pipeline(transaction=True)
        for command in commands:
            pipe.execute_command(*command)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        for reply in replies[1:]:
            if isinstance(reply, BaseException):
                raise reply
        return replies

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
        info, ident, cutoff = await self._multi(client, reads.start_commands(self.keys))
        feed = reads.position(info)
        await self._judge(ident, seen)
        builder = StateBuilder(self._key)
        state = builder.state
        if cutoff is not None:
            state.add_global(decode_mark(cutoff)[0])
        cursor: Any = 0
        match = f"{self.keys.prefix}:*"
        while True:
            cursor, found = await client.scan(cursor, match=match, count=_SCAN_COUNT)
            await self._read_keys(client, builder, found)
            if not cursor or cursor == b"0":
                break
        # Grouping a million digests is CPU work of a second or so: in a thread, so the event
        # loop keeps serving (checks go to Redis until the mirror is ready).
        state = await asyncio.to_thread(builder.build)
        state.last_id = feed.last_raw
        self._added = feed.added
        self.state = state
        self.synced = True
        self.fresh_at = sent
        self.error = None
        self.snapshot_seconds = time.perf_counter() - started
        self.resyncs[reason] = self.resyncs.get(reason, 0) + 1
        MIRROR_RESYNCS.labels(reason).inc()
        self._ready.set()
        log = logger.info if reason == "start" else logger.warning
        log(
            "mirror loaded from a snapshot (%s) in %.3f s: %s",
            reason,
            self.snapshot_seconds,
            state.entries(),
            extra={"reason": reason},
        )

    async def _read_keys(self, client: Any, builder: StateBuilder, found: list[bytes]) -> None:
        kinds = [(key, reads.classify(self.keys, key)) for key in found]
        wanted = [(key, kind) for key, kind in kinds if kind is not None]
        if not wanted:
            return
        pipe = client.pipeline(transaction=False)
        for key, (kind, _tag, _name) in wanted:
            if kind == "family":
                pipe.execute_command("HKEYS", key)
            else:
                pipe.execute_command("GET", key)
                pipe.execute_command("EXPIRETIME", key)
        replies = await pipe.execute()
        at = 0
        state = builder.state
        for _key, (kind, tag, name) in wanted:
            if kind == "family":
                builder.add_families(tag, replies[at])
                at += 1
                continue
            value, expires = replies[at], replies[at + 1]
            at += 2
            if value is None:
                continue  # expired between SCAN and GET
            when = decode_mark(value)[0]
            expiry = int(expires) if expires is not None and int(expires) > 0 else 0
            if kind == "jti":
                state.add_jti(name, when, expiry)
            elif kind == "user":
                state.add_user(tag, name, when, expiry)
            else:
                state.add_tenant(tag, when, expiry)

    async def _follow(self, client: Any) -> None:
        """Read the feed until a resync is due (raises _Resync) or Redis fails."""
        state = self.state
        assert state is not None
        while True:
            sent = time.monotonic()
            seen = self._watch.snapshot()
            info, ident, read = await self._multi(
                client, reads.follow_commands(self.keys, state.last_id)
            )
            await self._judge(ident, seen)
            feed = reads.position(info)
            after = reads.parse_id(state.last_id)
            if feed.rolled_back(after, self._added):
                raise _Resync("rolled_back")
            if feed.gap(after, self._added):
                raise _Resync("trimmed")
            entries = read[0][1] if read else []
            now = time.time()
            for entry_id, fields in entries:
                try:
                    entry = decode_feed_entry(fields)
                except ValueError as e:
                    logger.warning("unreadable feed entry %r: %s; resyncing", entry_id, e)
                    raise _Resync("unreadable") from None
                if not state.apply(entry, now):
                    raise _Resync("epoch")
                state.last_id = entry_id
            complete = len(entries) < reads.BATCH
            self._added = feed.added if complete else self._added + len(entries)
            if complete:
                self.fresh_at = sent
                self.error = None
                self._read_done.set()
                self._read_done = asyncio.Event()
            if sent >= self._next_sweep:
                self._next_sweep = sent + _SWEEP_EVERY
                state.sweep(now)
            if complete:
                await client.execute_command(
                    *reads.wake_command(self.keys, state.last_id, self.block_ms)
                )

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
            "last_id": state.last_id.decode() if state is not None else None,
            "resyncs": dict(self.resyncs),
            "snapshot_seconds": (
                round(self.snapshot_seconds, 3) if self.snapshot_seconds is not None else None
            ),
            "integrity_state": self.integrity_state or "ok",
            "error": self.error,
        }
