"""One shared, pipelined connection for the per-request check (single Redis only).

redis-py's asyncio client spends about 60-80 µs of CPU per command (pool checkout under a
condition and a timeout, the retry wrapper, event and observability hooks): as much as verifying
the JWT that the check's verify cache saves. The check sends one command (its script), and Redis
answers the commands of one connection in order, so all concurrent checks of an event loop can
share one connection: each call queues its command and a future (the commands of one loop
iteration go out in one write); the protocol parses replies with hiredis and resolves the futures
in order. That costs about 15-20 µs per check.

Failure behaviour matches the pooled client's: connecting is bounded by the connect timeout,
each call by the socket timeout. A lost connection, or one that stayed silent for a whole timeout,
is dropped (failing the calls still queued on it, which could not be answered in time either) and
the next call opens a new one. Every error is a ``RedisError``, ``OSError`` or ``TimeoutError``
(the store's ``BACKEND_ERRORS``). Used only where it can be exact: plain TCP, RESP2, and at
most password authentication.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import hiredis
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

__all__ = ["PipelinedConnection", "pack_command"]


def pack_command(*args: str | bytes) -> bytes:
    """One RESP2 command: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Protocol(asyncio.Protocol):
    """A connection whose replies resolve queued futures in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.reader = hiredis.Reader()
        self.waiters: deque[asyncio.Future[Any]] = deque()
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
            waiter = self.waiters.popleft()
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
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    def flush(self) -> None:
        if self.outgoing and not self.closed and self.transport is not None:
            self.transport.write(b"".join(self.outgoing))
        self.outgoing.clear()

    async def call(self, packed: bytes, limit: float) -> Any:
        if self.closed or self.transport is None:
            raise RedisConnectionError("connection to Redis is closed")
        waiter = self.loop.create_future()
        self.waiters.append(waiter)
        if not self.outgoing:
            self.loop.call_soon(self.flush)
        self.outgoing.append(packed)
        try:
            async with asyncio.timeout(limit):
                return await waiter
        except TimeoutError:
            # A silent connection (hung server, lost peer) is dropped, failing the calls queued
            # behind this one at once. One that is still answering is only slow: keep it, so one
            # slow reply under load does not fail every call in flight (and open the breaker).
            # The late reply still arrives in order and is discarded.
            if self.loop.time() - self.last_reply >= limit:
                self.drop(RedisConnectionError("Redis did not answer in time"))
            raise


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
        self.username, self.password = username, password
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None

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
        """Any one command on the shared connection; its reply as hiredis parses it."""
        protocol = self._protocol
        if protocol is None or protocol.closed or protocol.loop is not asyncio.get_running_loop():
            protocol = await self._connected()
        return await protocol.call(pack_command(*args), self.timeout)

    async def _connected(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        task = self._connecting
        if task is None or task.get_loop() is not loop:
            task = self._connecting = loop.create_task(self._open(loop))
            task.add_done_callback(self._connect_done)
        # Shielded: one caller giving up must not cancel the connect the others wait for.
        return await asyncio.shield(task)

    def _connect_done(self, task: asyncio.Task[_Protocol]) -> None:
        if self._connecting is task:
            self._connecting = None
        if not task.cancelled() and task.exception() is None:
            self._protocol = task.result()

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
        """Close the connection, on its own loop when that is another (and still open) one."""
        protocol, self._protocol = self._protocol, None
        if protocol is None:
            return
        closed = RedisConnectionError("store closed")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if protocol.loop is running:
            protocol.drop(closed)
        elif not protocol.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # it closed in between
                protocol.loop.call_soon_threadsafe(protocol.drop, closed)
