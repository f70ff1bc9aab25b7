"""The pipelined connection of the per-request check (revoker.store._pipelined)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import hiredis
import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from conftest import make_settings
from revoker.localredis import LocalRedis
from revoker.rules import NOT_REVOKED
from revoker.store import RedisTokenRevocationStore, SyncRedisTokenRevocationStore
from revoker.store._pipelined import PipelinedConnection, _Protocol, pack_command
from revoker.tokens import create_access_token, get_verifier

TIMEOUT = 0.2


@pytest.fixture
def server() -> Iterator[LocalRedis]:
    """A throwaway redis-server; resumed and stopped afterwards."""
    local = LocalRedis().start()
    yield local
    if local.process is not None and local.process.poll() is None:
        local.resume()
    local.stop()


async def mget_(connection: PipelinedConnection, keys: list[str]) -> Any:
    """``MGET keys`` on the shared connection."""
    return await connection.call("MGET", *keys)


def pipeline(local: LocalRedis, **options: Any) -> PipelinedConnection:
    values: dict[str, Any] = {"timeout": TIMEOUT, "connect_timeout": TIMEOUT}
    values.update(options)
    return PipelinedConnection(host="127.0.0.1", port=local.port, **values)


class FakeTransport:
    """Records writes; stands in for a socket so replies can be fed by hand."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abort(self) -> None:
        self.aborted = True


def test_pack_command_is_resp2() -> None:
    """Commands are RESP2 arrays of bulk strings, byte lengths for non-ASCII."""
    assert pack_command("MGET", "a", "é") == b"*3\r\n$4\r\nMGET\r\n$1\r\na\r\n$2\r\n\xc3\xa9\r\n"


def test_pack_command_reads_alike_on_its_ascii_path_and_its_general_one() -> None:
    """The all-ASCII path (one format, one encode) packs what the per-argument path packs: the
    same bytes as with a bytes argument (which takes the general path), the same array."""
    ascii_args = ("EVALSHA", "a" * 40, "2", "p:jti:{j}", "p:{t:x}:fr:5", "2", "5.f", "3")
    packed = pack_command(*ascii_args)
    assert packed == pack_command(*ascii_args[:-1], b"3")
    reader = hiredis.Reader()
    reader.feed(packed)
    assert reader.gets() == [arg.encode() for arg in ascii_args]
    assert pack_command("GET", "") == b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n"


@pytest.mark.redis
async def test_mget_matches_the_pooled_client(server: LocalRedis) -> None:
    """Present, absent and non-ASCII keys read the same as through redis-py."""
    client = redis.Redis.from_url(server.url)
    client.set("k1", b"v1")
    client.set("ключ", "значение")
    mget = pipeline(server)
    try:
        keys = ["k1", "missing", "ключ"]
        assert await mget_(mget, keys) == client.mget(keys) == [b"v1", None, "значение".encode()]
    finally:
        mget.close()
        client.close()


@pytest.mark.redis
async def test_concurrent_calls_each_get_their_own_reply(server: LocalRedis) -> None:
    """500 calls in flight on one connection: each gets the values of its own keys."""
    client = redis.Redis.from_url(server.url)
    client.mset({f"key{i}": f"value{i}" for i in range(500)})
    mget = pipeline(server, timeout=5.0)
    try:
        replies = await asyncio.gather(*(mget_(mget, [f"key{i}", "nope"]) for i in range(500)))
        assert replies == [[f"value{i}".encode(), None] for i in range(500)]
    finally:
        mget.close()
        client.close()


@pytest.mark.redis
async def test_error_reply_raises_and_connection_stays_usable(server: LocalRedis) -> None:
    """A Redis error reply is a ResponseError for that call only."""
    mget = pipeline(server)
    try:
        with pytest.raises(ResponseError, match="wrong number of arguments"):
            await mget_(mget, [])
        assert await mget_(mget, ["a"]) == [None]
    finally:
        mget.close()


@pytest.mark.redis
async def test_store_check_is_one_command_on_one_connection(server: LocalRedis) -> None:
    """A store built from settings sends exactly one EVALSHA per check, all on one connection."""
    settings = make_settings(redis_url=server.url)
    store = RedisTokenRevocationStore(settings=settings)
    assert store._pipelined is not None
    token, _ = create_access_token("ann", tenant_id="acme", family_id="f1", settings=settings)
    data = get_verifier(settings).decode(token)
    client = redis.Redis.from_url(server.url)
    try:
        assert await store.is_revoked(data) == NOT_REVOKED  # connects
        client.config_resetstat()
        clients_before = client.info("clients")["connected_clients"]
        statuses = await asyncio.gather(*(store.is_revoked(data) for _ in range(200)))
        assert statuses == [NOT_REVOKED] * 200
        stats = client.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] == 200
        assert "cmdstat_eval" not in stats  # the script was loaded when the connection opened
        assert client.info("clients")["connected_clients"] == clients_before
    finally:
        await store.aclose()
        client.close()


@pytest.mark.redis
async def test_check_survives_a_script_flush(server: LocalRedis) -> None:
    """After SCRIPT FLUSH the check reloads its script (EVAL) and still sees revocations."""
    settings = make_settings(redis_url=server.url)
    store = RedisTokenRevocationStore(settings=settings)
    sync_store = SyncRedisTokenRevocationStore(settings=settings)
    token, _ = create_access_token("ann", tenant_id="acme", family_id="f1", settings=settings)
    data = get_verifier(settings).decode(token)
    client = redis.Redis.from_url(server.url)
    try:
        assert await store.is_revoked(data) == NOT_REVOKED  # connects, loads the script
        client.script_flush()
        sync_store.revoke_family("f1", tenant_id="acme", reason="logout")
        client.config_resetstat()
        status = await store.is_revoked(data)
        assert (status.revoked, status.rule, status.reason) == (True, "family", "logout")
        stats = client.info("commandstats")
        assert stats["cmdstat_eval"]["calls"] == 1  # NOSCRIPT, then EVAL: loaded again
        assert (await store.is_revoked(data)).revoked
        assert client.info("commandstats")["cmdstat_evalsha"]["calls"] == 2
    finally:
        await store.aclose()
        sync_store.close()
        client.close()


@pytest.mark.redis
async def test_store_with_password_and_db(server: LocalRedis) -> None:
    """AUTH and SELECT from the URL: revocations written to db 2 are seen by the check."""
    client = redis.Redis.from_url(server.url)
    client.config_set("requirepass", "s3cret")
    client.close()
    url = f"redis://:s3cret@127.0.0.1:{server.port}/2"
    settings = make_settings(redis_url=url)
    store = RedisTokenRevocationStore(settings=settings)
    sync_store = SyncRedisTokenRevocationStore(settings=settings)
    assert store._pipelined is not None
    try:
        token, jti = create_access_token("ann", tenant_id="acme", settings=settings)
        data = get_verifier(settings).decode(token)
        assert not await store.is_revoked(data)
        sync_store.revoke_token(jti, reason="logout")
        status = await store.is_revoked(data)
        assert status.revoked
        assert status.rule == "jti"
        assert redis.Redis.from_url(url).dbsize() > 0
        assert redis.Redis.from_url(url.replace("/2", "/0")).dbsize() == 0
    finally:
        await store.aclose()
        sync_store.close()


@pytest.mark.redis
async def test_wrong_password_is_a_backend_error(server: LocalRedis) -> None:
    """A refused AUTH surfaces as a Redis error, not a hang or a wrong answer."""
    client = redis.Redis.from_url(server.url)
    client.config_set("requirepass", "s3cret")
    client.close()
    mget = pipeline(server, password="wrong")
    with pytest.raises(ResponseError):
        await mget_(mget, ["a"])
    mget.close()


@pytest.mark.redis
async def test_paused_server_times_out_then_recovers(server: LocalRedis) -> None:
    """A hung Redis: calls fail within ~the timeout; after resume, calls answer correctly."""
    redis.Redis.from_url(server.url).set("k", "v")
    mget = pipeline(server)
    try:
        assert await mget_(mget, ["k"]) == [b"v"]
        server.pause()
        started = time.perf_counter()
        results = await asyncio.gather(
            *(mget_(mget, ["k"]) for _ in range(5)), return_exceptions=True
        )
        took = time.perf_counter() - started
        assert all(isinstance(r, TimeoutError | RedisConnectionError) for r in results), results
        assert took < TIMEOUT + 0.15
        server.resume()
        assert await mget_(mget, ["k", "x"]) == [b"v", None]
    finally:
        mget.close()


@pytest.mark.redis
async def test_killed_server_fails_fast_and_reconnects_after_restart(server: LocalRedis) -> None:
    """A dead Redis is an error at once; once restarted, the next call reconnects."""
    mget = pipeline(server)
    try:
        assert await mget_(mget, ["k"]) == [None]
        server.kill()
        started = time.perf_counter()
        for _ in range(3):
            with pytest.raises((RedisConnectionError, OSError)):
                await mget_(mget, ["k"])
        assert time.perf_counter() - started < TIMEOUT
        server.start()
        redis.Redis.from_url(server.url).set("k", "back")
        assert await mget_(mget, ["k"]) == [b"back"]
    finally:
        mget.close()


@pytest.mark.redis
def test_store_works_across_event_loops(server: LocalRedis) -> None:
    """A store reused from a second event loop connects there and closes the first connection."""
    settings = make_settings(redis_url=server.url)
    store = RedisTokenRevocationStore(settings=settings)
    token, _ = create_access_token("ann", settings=settings)
    data = get_verifier(settings).decode(token)
    first_loop, second_loop = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        assert first_loop.run_until_complete(store.is_revoked(data)) == NOT_REVOKED
        assert store._pipelined is not None
        first = store._pipelined._protocol
        assert first is not None
        assert second_loop.run_until_complete(store.is_revoked(data)) == NOT_REVOKED
        assert store._pipelined._protocol is not first
        first_loop.run_until_complete(asyncio.sleep(0.01))  # runs the close sent to it
        assert first.closed
        second_loop.run_until_complete(store.aclose())
    finally:
        first_loop.close()
        second_loop.close()


async def test_a_late_reply_on_a_busy_connection_is_discarded_in_order() -> None:
    """A call that times out while replies still flow leaves the connection and the order intact."""
    loop = asyncio.get_running_loop()
    protocol = _Protocol(loop)
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    first = asyncio.ensure_future(protocol.call(b"first", 1.0))
    slow = asyncio.ensure_future(protocol.call(b"slow", 0.05))
    last = asyncio.ensure_future(protocol.call(b"last", 1.0))
    await asyncio.sleep(0.03)
    protocol.data_received(b"$5\r\nfirst\r\n")  # replies are flowing
    assert await first == b"first"
    with pytest.raises(TimeoutError):
        await slow
    assert not protocol.closed
    assert not transport.aborted
    protocol.data_received(b"$4\r\nslow\r\n$4\r\nlast\r\n")
    assert await last == b"last"
    # The three calls were queued in one loop iteration: one write, in call order.
    assert transport.written == [b"firstslowlast"]


async def test_a_call_queued_behind_a_longer_one_times_out_at_its_own_time() -> None:
    """Each call gives up at its own time, even one queued behind a call with a later deadline
    (a call that waited for a connection): one timer serves them all, moved earlier for it."""
    loop = asyncio.get_running_loop()
    protocol = _Protocol(loop)
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    patient = asyncio.ensure_future(protocol.call(b"patient", 10.0))
    await asyncio.sleep(0)
    started = loop.time()
    with pytest.raises(TimeoutError):
        await protocol.call(b"hasty", 0.05, silence=10.0)  # not silent for that long: kept
    assert 0.04 <= loop.time() - started < 1.0
    assert not patient.done()
    assert not protocol.closed
    protocol.data_received(b"$7\r\npatient\r\n$5\r\nhasty\r\n")
    assert await patient == b"patient"


async def test_a_silent_connection_is_dropped_and_fails_queued_calls() -> None:
    """No reply for a whole timeout: the connection is dropped and calls behind fail at once."""
    loop = asyncio.get_running_loop()
    protocol = _Protocol(loop)
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.last_reply = loop.time() - 1.0
    stuck = asyncio.ensure_future(protocol.call(b"a", 0.05))
    behind = asyncio.ensure_future(protocol.call(b"b", 10.0))
    started = loop.time()
    with pytest.raises(TimeoutError):
        await stuck
    with pytest.raises(RedisConnectionError):
        await behind
    assert loop.time() - started < 1.0
    assert protocol.closed
    assert transport.aborted
    with pytest.raises(RedisConnectionError):
        await protocol.call(b"c", 1.0)


async def test_unexpected_reply_drops_the_connection() -> None:
    """A reply nobody asked for means the stream is out of step: drop it rather than guess."""
    protocol = _Protocol(asyncio.get_running_loop())
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(b"+OK\r\n")
    assert protocol.closed
    assert transport.aborted


def test_only_plain_tcp_clients_are_pipelined() -> None:
    """TLS, unix sockets and injected clients keep using redis-py's client."""
    assert RedisTokenRevocationStore(settings=make_settings())._pipelined is not None
    for url in ("rediss://127.0.0.1:6379/0", "unix:///tmp/redis.sock"):
        assert RedisTokenRevocationStore(settings=make_settings(redis_url=url))._pipelined is None
    injected = redis.asyncio.Redis.from_url("redis://127.0.0.1:6379/0")
    assert RedisTokenRevocationStore(injected, settings=make_settings())._pipelined is None
