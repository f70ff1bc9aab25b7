"""The bulk path: batches of commands in one round trip, for the fan-out's hot loop.

On a single Redis the batch is packed by hiredis and written to one pooled connection whose
replies are then read one by one: redis-py's pipeline machinery costs several µs of Python per
command, which at 200k sessions/s is the whole CPU budget. A cluster client (or fakeredis) goes
through an ordinary pipeline. No script and no MULTI around a batch: Redis serves other clients
between the commands of a batch, so the per-request check never waits behind a whole batch. The
only MULTI/EXEC blocks are the fan-out's one per bucket (its marks and the sequence bump, see
``tasks.buckets.revoke_buckets``), each as long as the bucket's one HSET was before.

A bulk job's filtered chunks run a Lua script instead (``scripts/chunk_buckets.lua``, a few
buckets per call, each call short: :func:`bulk_script`), so that the selection, the marks and the
deletions happen in Redis rather than over the wire.

Backend failures raise :class:`~revoker.exceptions.StoreUnavailable`, as every store method does.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import hiredis
import redis

from revoker.exceptions import StoreUnavailable
from revoker.store._base import BACKEND_ERRORS

__all__ = ["BulkScript", "Exchange", "bulk_exchange", "bulk_script"]

#: Sends a batch of commands in one round trip and returns their replies (raw: an HSCAN's
#: page may be a flat list or, through a redis-py pipeline, a dict).
Exchange = Callable[[list[Any]], list[Any]]
#: Calls one Lua script with (keys, args) and returns its reply.
BulkScript = Callable[[Sequence[Any], Sequence[Any]], Any]


def _unavailable(e: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"Redis is unavailable: {type(e).__name__}: {e}")


@contextlib.contextmanager
def bulk_exchange(client: Any) -> Iterator[Exchange]:
    """An :data:`Exchange` on ``client`` (see the module docstring)."""
    if type(client) is not redis.Redis:

        def piped(commands: list[Any]) -> list[Any]:
            try:
                pipe = client.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command)
                return cast(list[Any], pipe.execute())
            except BACKEND_ERRORS as e:
                raise _unavailable(e) from e

        yield piped
        return
    pool = client.connection_pool
    try:
        conn: Any = pool.get_connection()  # redis-py's Connection is unannotated
    except BACKEND_ERRORS as e:
        raise _unavailable(e) from e
    pack = hiredis.pack_command
    reader = hiredis.Reader()

    def raw(commands: list[Any]) -> list[Any]:
        replies: list[Any] = []
        try:
            conn.send_packed_command([b"".join([pack(c) for c in commands])], check_health=False)
            # Replies parsed by our own hiredis reader straight off the pooled connection's
            # socket (ours while we hold it): redis-py's read_response costs ~2 µs per reply.
            sock = conn._sock
            want = len(commands)
            while len(replies) < want:
                reply = reader.gets()
                if reply is False:
                    data = sock.recv(1 << 20)
                    if not data:
                        raise redis.ConnectionError("Redis closed the connection mid-batch")
                    reader.feed(data)
                    continue
                if isinstance(reply, hiredis.ReplyError):
                    raise redis.ResponseError(str(reply))
                replies.append(reply)
        except BACKEND_ERRORS as e:
            raise _unavailable(e) from e
        return replies

    try:
        try:
            conn.connect()  # a fresh pool connection has no socket until its first command
        except BACKEND_ERRORS as e:
            raise _unavailable(e) from e
        yield raw
    except BaseException:
        # Replies may be left unread on the socket: never hand such a connection back.
        conn.disconnect()
        raise
    finally:
        pool.release(conn)


def bulk_script(client: Any, exchange: Exchange, source: str) -> BulkScript:
    """Calls of the Lua script ``source`` (package data, ``store._base.load_script``).

    On the raw path (a plain redis-py client) each call is one EVALSHA through ``exchange`` (so
    it is paced as the exchange is), after one ``SCRIPT LOAD`` on the same connection, sent with
    the first call. Elsewhere (a cluster client, fakeredis) a redis-py Script on ``client``: it
    routes each call by its keys (all in one slot) and loads the script where it is missing.
    """
    if type(client) is not redis.Redis:
        script = client.register_script(source)

        def scripted(keys: Sequence[Any], args: Sequence[Any]) -> Any:
            try:
                return script(keys=list(keys), args=list(args))
            except BACKEND_ERRORS as e:
                raise _unavailable(e) from e

        return scripted
    sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
    loaded = False

    def call(keys: Sequence[Any], args: Sequence[Any]) -> Any:
        nonlocal loaded
        command = ("EVALSHA", sha, len(keys), *keys, *args)
        if loaded:
            return exchange([command])[0]
        replies = exchange([("SCRIPT", "LOAD", source), command])
        loaded = True
        return replies[1]

    return call
