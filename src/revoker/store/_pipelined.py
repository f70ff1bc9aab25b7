"""One shared, pipelined connection for the per-request check (single Redis only).

redis-py's asyncio client spends about 60-80 µs of CPU per command (pool checkout under a
condition and a timeout, the retry wrapper, event and observability hooks): as much as verifying
the JWT that the check's verify cache saves. The check sends one command (its script), and Redis
answers the commands of one connection in order, so all concurrent checks of an event loop can
share one connection: each call queues its command and a future (the commands of one loop
iteration go out in one write); the protocol parses replies with hiredis and resolves the futures
in order. That costs about 15-20 µs per check.

Each call is bounded by the timeout in all, waiting for a connection included. A lost
connection, or one that stayed silent for a whole timeout, is dropped (failing the calls still
queued on it, which could not be answered in time either) and the next call opens a new one in
the background: connecting, AUTH, SELECT and SCRIPT LOAD are bounded by the connect timeout,
and a call waits for them only as long as its own timeout allows. So a hung Redis costs each call
at most its timeout (the caller's failure policy answers), never a connect timeout on top. Every
error is a ``RedisError``, ``OSError`` or ``TimeoutError`` (the store's ``BACKEND_ERRORS``). Used
only where it can be exact: plain TCP, RESP2, and at most password authentication.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

import hiredis
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

__all__ = ["PACKED_COMMANDS", "PipelinedConnection", "pack_command"]

#: Packed commands a connection remembers (the check's, ~500 B each).
PACKED_COMMANDS = 1024


def pack_command(*args: str | bytes) -> bytes:
    """One RESP2 command: an array of bulk strings."""
    try:
        ascii_only = "".join(args).isascii()  # type: ignore[arg-type]  # TypeError: bytes
    except TypeError:
        ascii_only = False
    if ascii_only:
        # The check's command (ASCII keys and ids): one format and one encode, not one per
        # argument (a character is a byte here, so len() is the bulk length).
        text = "".join([f"${len(arg)}\r\n{arg}\r\n" for arg in args])  # type: ignore[str-bytes-safe]
        return f"*{len(args)}\r\n{text}".encode()
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


class _Protocol(asyncio.Protocol):
    """A connection whose replies resolve queued futures in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.reader = hiredis.Reader()
        #: The calls in reply order: each call's future, the loop.time() it gives up at, and the
        #: silence after which its timeout drops the connection. A timed-out call stays here
        #: until its reply comes (it is discarded then): the order is the protocol's.
        self.waiters: deque[tuple[asyncio.Future[Any], float, float]] = deque()
        #: One timer for every call's timeout (an asyncio.timeout per call cost ~12 µs, a
        #: loop.call_at ~4.5 µs: a quarter of a check), and when it is due (inf: none pending).
        self._watchdog: asyncio.TimerHandle | None = None
        self._watchdog_at = math.inf
        self.transport: asyncio.Transport | None = None
        self.closed = False
        #: Commands of this loop iteration not yet written: one write (one syscall) for them all.
        self.outgoing: list[bytes] = []
        #: loop.time() of the last reply: tells a silent connection from a busy one.
        self.last_reply = loop.time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport does not subclass asyncio.Transport, but has its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as e:
                self.drop(RedisConnectionError(f"Redis protocol error: {e}"))
                return
            if reply is False:
                return
            self.last_reply = self.loop.time()
            if not self.waiters:
                self.drop(RedisConnectionError("Redis sent a reply nobody asked for"))
                return
            waiter = self.waiters.popleft()[0]
            if waiter.done():  # its caller timed out or was cancelled: the reply is still its own
                continue
            if isinstance(reply, hiredis.ReplyError):
                waiter.set_exception(ResponseError(str(reply)))
            else:
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.drop(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def drop(self, error: Exception) -> None:
        """Close the connection and fail every call still waiting on it."""
        self.closed = True
        self.outgoing.clear()
        if self.transport is not None:
            self.transport.abort()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog, self._watchdog_at = None, math.inf
        while self.waiters:
            waiter = self.waiters.popleft()[0]
            if not waiter.done():
                waiter.set_exception(error)

    def flush(self) -> None:
        if self.outgoing and not self.closed and self.transport is not None:
            self.transport.write(b"".join(self.outgoing))
        self.outgoing.clear()

    async def call(self, packed: bytes, limit: float, silence: float | None = None) -> Any:
        """The reply to ``packed``, waiting at most ``limit`` seconds for it.

        On a timeout the connection is dropped if no reply at all came for ``silence`` seconds
        (default ``limit``): it is hung, not slow.
        """
        if self.closed or self.transport is None:
            raise RedisConnectionError("connection to Redis is closed")
        if limit <= 0:  # no time left: do not send what nobody will wait for
            raise TimeoutError("Redis did not answer in time")
        loop = self.loop
        waiter = loop.create_future()
        gives_up = loop.time() + limit
        self.waiters.append((waiter, gives_up, limit if silence is None else silence))
        if gives_up < self._watchdog_at:
            self._watch(gives_up)
        if not self.outgoing:
            loop.call_soon(self.flush)
        self.outgoing.append(packed)
        return await waiter

    def _watch(self, at: float) -> None:
        """Have the watchdog run at ``at`` (it only ever moves earlier; once run, it finds the
        next time itself)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._watchdog = self.loop.call_at(at, self._expire)
        self._watchdog_at = at

    def _expire(self) -> None:
        """Time out every call past its time; then wait for the earliest one left.

        A silent connection (hung server, lost peer) is dropped, failing the calls queued behind
        at once. One that is still answering is only slow: keep it, so one slow reply under load
        does not fail every call in flight (and open the breaker); the late reply still arrives
        in order and is discarded.
        """
        self._watchdog, self._watchdog_at = None, math.inf
        now = self.loop.time()
        silent = False
        earliest = math.inf
        for waiter, gives_up, silence in self.waiters:
            if waiter.done():
                continue
            if gives_up <= now:
                waiter.set_exception(TimeoutError("Redis did not answer in time"))
                silent = silent or now - self.last_reply >= silence
            elif gives_up < earliest:
                earliest = gives_up
        if silent:
            self.drop(RedisConnectionError("Redis did not answer in time"))
        elif earliest < math.inf:
            self._watch(earliest)


class PipelinedConnection:
    """Commands over one pipelined connection per event loop, reconnecting on demand."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout: float,
        connect_timeout: float,
        on_connect: Sequence[Sequence[str]] = (),
    ) -> None:
        self.host, self.port, self.db = host, port, db
        #: Commands sent on each new connection after AUTH and SELECT (e.g. SCRIPT LOAD).
        self.on_connect = [tuple(command) for command in on_connect]
        #: The scripts those commands load, by SHA1: an EVALSHA of one that meets NOSCRIPT (a
        #: SCRIPT FLUSH) is sent again as EVAL, within the same call's timeout.
        self._scripts = {
            hashlib.sha1(_bytes(command[2]), usedforsecurity=False).hexdigest(): command[2]
            for command in self.on_connect
            if len(command) == 3 and (command[0], command[1]) == ("SCRIPT", "LOAD")
        }
        self.username, self.password = username, password
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None
        #: Commands packed already, by their arguments: a token recurring sends the same check
        #: command (its keys and ARGV); emptied when PACKED_COMMANDS are held.
        self._packed: dict[tuple[str | bytes, ...], bytes] = {}

    @classmethod
    def for_client(
        cls,
        client: Any,
        *,
        timeout: float,
        connect_timeout: float,
        on_connect: Sequence[Sequence[str]] = (),
    ) -> PipelinedConnection | None:
        """A pipeline to the server ``client`` (a redis.asyncio.Redis) talks to, or None.

        None when the connection needs what this class does not do (TLS, unix socket, RESP3,
        a credential provider): the caller keeps using the client.
        """
        pool = getattr(client, "connection_pool", None)
        if pool is None or pool.connection_class is not redis.asyncio.Connection:
            return None
        kwargs = pool.connection_kwargs
        if kwargs.get("credential_provider") is not None or kwargs.get("protocol") not in (
            None,
            2,
            "2",
        ):
            return None
        return cls(
            host=str(kwargs.get("host", "localhost")),
            port=int(kwargs.get("port", 6379)),
            db=int(kwargs.get("db") or 0),
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            timeout=timeout,
            connect_timeout=connect_timeout,
            on_connect=on_connect,
        )

    async def call(self, *args: str | bytes) -> Any:
        """Any one command on the shared connection; its reply as hiredis parses it.

        Waits at most the timeout in all: for a connection (opened in the background when there
        is none), for the reply, and for a NOSCRIPT's EVAL.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        protocol = self._protocol
        if protocol is None or protocol.closed or protocol.loop is not loop:
            protocol = await self._connected(loop, deadline)
        packed = self._packed.get(args)
        if packed is None:
            packed = pack_command(*args)
            if len(self._packed) >= PACKED_COMMANDS:
                self._packed.clear()
            self._packed[args] = packed
        try:
            return await protocol.call(packed, deadline - loop.time(), self.timeout)
        except ResponseError as e:
            script = self._script_of(args) if str(e).startswith("NOSCRIPT") else None
            if script is None:
                raise
            # Redis lost its scripts (SCRIPT FLUSH): EVAL runs and caches the script again.
            evaluate = pack_command("EVAL", script, *args[2:])
            return await protocol.call(evaluate, deadline - loop.time(), self.timeout)

    def _script_of(self, args: Sequence[str | bytes]) -> str | bytes | None:
        """The script an EVALSHA in ``args`` names, if one of ours."""
        if len(args) < 2 or _bytes(args[0]).upper() != b"EVALSHA":
            return None
        return self._scripts.get(_bytes(args[1]).decode("ascii", "replace").lower())

    async def _connected(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Protocol:
        task = self._connecting
        if task is None or task.get_loop() is not loop:
            task = self._connecting = loop.create_task(self._open(loop))
            task.add_done_callback(self._connect_done)
        # Shielded: a caller out of time leaves the connect running in the background (bounded
        # by the connect timeout) for the calls after it; it waits no longer than its own budget.
        budget = asyncio.timeout_at(deadline)
        try:
            async with budget:
                return await asyncio.shield(task)
        except TimeoutError:
            if not budget.expired():
                raise  # the connect itself timed out
            raise TimeoutError(
                "no connection to Redis yet (connecting in the background)"
            ) from None

    def _connect_done(self, task: asyncio.Task[_Protocol]) -> None:
        adopted = self._connecting is task
        if adopted:
            self._connecting = None
        if task.cancelled() or task.exception() is not None:
            return
        if adopted:
            self._protocol = task.result()
        else:  # closed, or replaced by a connect on another loop, meanwhile
            task.result().drop(RedisConnectionError("connection no longer wanted"))

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Protocol:
        old, self._protocol = self._protocol, None
        if old is not None:
            replaced = RedisConnectionError("connection replaced")
            if old.loop is loop:
                old.drop(replaced)
            elif not old.loop.is_closed():
                # The store moved to another loop; the old connection is closed on its own.
                old.loop.call_soon_threadsafe(old.drop, replaced)
        async with asyncio.timeout(self.connect_timeout):
            _, protocol = await loop.create_connection(
                lambda: _Protocol(loop), self.host, self.port
            )
            try:
                if self.password is not None:
                    auth = (self.username, self.password) if self.username else (self.password,)
                    await protocol.call(pack_command("AUTH", *auth), self.connect_timeout)
                if self.db:
                    await protocol.call(pack_command("SELECT", str(self.db)), self.connect_timeout)
                for command in self.on_connect:
                    await protocol.call(pack_command(*command), self.connect_timeout)
            except BaseException:
                protocol.drop(RedisConnectionError("connection setup failed"))
                raise
        return protocol

    def close(self) -> None:
        """Close the connection and stop a connect in progress, each on its own loop."""
        task, self._connecting = self._connecting, None
        if task is not None and not task.done():
            _call_on(task.get_loop(), task.cancel)
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            _call_on(protocol.loop, protocol.drop, RedisConnectionError("store closed"))


def _call_on(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: Any) -> None:
    """``callback(*args)`` on ``loop``: now if it is the running loop, else soon, thread-safely
    (and not at all if it is closed)."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is running:
        callback(*args)
    elif not loop.is_closed():
        with contextlib.suppress(RuntimeError):  # it closed in between
            loop.call_soon_threadsafe(callback, *args)
