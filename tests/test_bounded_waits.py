"""Bounded waits: a check never waits longer than REVOKER_REDIS_TIMEOUT, reconnects included.

The Redis here is our own (a redis-server we SIGSTOP, or a TCP server that accepts and never
answers), with the default timeouts: 0.1 s per check and 0.5 s to connect. A reconnect to a hung
server (TCP accepts, SCRIPT LOAD never answers) takes the whole connect timeout; it runs in the
background, and the checks meanwhile answer by the failure policy within their own timeout.

Each bound asserted is an upper bound on one call: TIMEOUT plus MARGIN, the scheduling slack of
a loaded machine. Without the fix a check that triggered a reconnect took CONNECT_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from conftest import make_settings
from revoker import exceptions as exc
from revoker.localredis import LocalRedis
from revoker.middleware import TokenRevocationMiddleware
from revoker.settings import RevokerSettings
from revoker.store import RedisTokenRevocationStore, SyncRedisTokenRevocationStore
from revoker.store._pipelined import PipelinedConnection, _Protocol
from revoker.tokens import TokenData, create_access_token, get_verifier

#: REVOKER_REDIS_TIMEOUT and REVOKER_REDIS_CONNECT_TIMEOUT: the defaults.
TIMEOUT = 0.1
CONNECT_TIMEOUT = 0.5
#: Slack over TIMEOUT for one call: event-loop scheduling on a busy machine (2 shared cores).
MARGIN = 0.05
BOUND = TIMEOUT + MARGIN
#: Checks made while Redis is hung: 12 x 0.1 s spans two reconnect attempts of 0.5 s at least.
HUNG_CHECKS = 12
#: Reconnect attempts the store-level tests wait for (each check meanwhile bounded), and the
#: most checks they make to see them.
RECONNECTS = 2
MAX_HUNG_CHECKS = 40


@pytest.fixture
def server() -> Iterator[LocalRedis]:
    """A throwaway redis-server on a free port; resumed (if paused) and stopped afterwards."""
    local = LocalRedis().start()
    try:
        yield local
    finally:
        if local.process is not None and local.process.poll() is None:
            local.resume()
        local.stop()


def bounded_settings(url: str, **overrides: Any) -> RevokerSettings:
    values: dict[str, Any] = {
        "redis_url": url,
        "redis_timeout": TIMEOUT,
        "redis_connect_timeout": CONNECT_TIMEOUT,
    }
    values.update(overrides)
    return make_settings(**values)


def count_connects(connection: PipelinedConnection | None) -> Callable[[], int]:
    """Count the connections ``connection`` opens (reconnects included) from now on."""
    assert connection is not None
    opened = 0
    original = connection._open

    async def counting(loop: asyncio.AbstractEventLoop) -> _Protocol:
        nonlocal opened
        opened += 1
        return await original(loop)

    connection._open = counting  # type: ignore[method-assign]
    return lambda: opened


async def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    """``await call()``'s result (or the exception it raised) and the seconds it took."""
    started = time.perf_counter()
    try:
        result = await call()
    except Exception as e:
        result = e
    return result, time.perf_counter() - started


async def checks_while_hung(
    store: RedisTokenRevocationStore, data: TokenData, connects: Callable[[], int]
) -> list[str]:
    """Checks until the store has tried RECONNECTS reconnects (HUNG_CHECKS at least): each is a
    StoreUnavailable within BOUND. Returns what each check took and raised, for messages."""
    seen: list[str] = []
    while len(seen) < HUNG_CHECKS or connects() < RECONNECTS:
        assert len(seen) < MAX_HUNG_CHECKS, f"only {connects()} reconnects: {seen}"
        result, took = await timed(lambda: store.is_revoked(data))
        seen.append(f"{took:.3f}s {connects()} {result!r}")
        assert isinstance(result, exc.StoreUnavailable), seen
        assert took < BOUND, seen
    return seen


def verified(settings: RevokerSettings) -> tuple[TokenData, str]:
    token, jti = create_access_token("ann", tenant_id="acme", settings=settings)
    return get_verifier(settings).decode(token), jti


async def wait_until_checked(store: RedisTokenRevocationStore, data: TokenData) -> Any:
    """The first answer Redis gives after a resume; every attempt meanwhile is bounded too."""
    waits = []
    give_up = time.perf_counter() + 2 * CONNECT_TIMEOUT + 1
    while time.perf_counter() < give_up:
        result, took = await timed(lambda: store.is_revoked(data))
        waits.append(took)
        assert took < BOUND, waits
        if not isinstance(result, Exception):
            return result
        await asyncio.sleep(0.01)
    pytest.fail(f"Redis did not answer again after the resume: {waits}")


@pytest.mark.redis
async def test_each_check_on_a_hung_redis_returns_within_the_timeout(server: LocalRedis) -> None:
    """SIGSTOPped Redis: each check fails within the timeout, reconnects included; after
    SIGCONT checks go through Redis again (they see a revocation made meanwhile)."""
    settings = bounded_settings(server.url)
    store = RedisTokenRevocationStore(settings=settings)
    sync_store = SyncRedisTokenRevocationStore(settings=settings)
    data, jti = verified(settings)
    try:
        assert not (await store.is_revoked(data)).revoked  # connected, script loaded
        connects = count_connects(store._pipelined)
        server.pause()
        await checks_while_hung(store, data, connects)
        server.resume()
        sync_store.revoke_token(jti, reason="stolen")
        status = await wait_until_checked(store, data)
        assert (status.revoked, status.rule, status.reason) == (True, "jti", "stolen")
    finally:
        await store.aclose()
        sync_store.close()


async def test_cold_start_against_a_server_that_never_answers() -> None:
    """A TCP server that accepts and never answers: from the very first check (no connection
    yet), each check fails within the timeout while connects are retried in the background."""
    accepted: list[asyncio.StreamWriter] = []

    async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass  # read everything, answer nothing
        writer.close()

    listener = await asyncio.start_server(black_hole, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    store = RedisTokenRevocationStore(settings=bounded_settings(f"redis://127.0.0.1:{port}/0"))
    data, _ = verified(store.settings)
    connects = count_connects(store._pipelined)
    try:
        seen = await checks_while_hung(store, data, connects)
        # One connection per attempt, no more (the last one may not be accepted yet).
        assert connects() - 1 <= len(accepted) <= connects(), seen
    finally:
        await store.aclose()
        listener.close()
        for writer in accepted:
            writer.close()
        await listener.wait_closed()


async def whoami(request: Request) -> JSONResponse:
    return JSONResponse(
        {"sub": request.state.token.sub, "checked": request.state.revocation_checked}
    )


@pytest.fixture
async def service(server: LocalRedis) -> AsyncIterator[tuple[httpx.AsyncClient, RevokerSettings]]:
    """A service behind the middleware: fail-open, except /admin (fail-closed). The breaker is
    out of the way (it would stop sending checks to Redis), so every request meets the hang."""
    settings = bounded_settings(server.url, breaker_failures=10_000)
    store = RedisTokenRevocationStore(settings=settings)
    app = TokenRevocationMiddleware(
        Starlette(routes=[Route("/me", whoami), Route("/admin/me", whoami)]),
        store=store,
        fail_open=True,
        fail_closed_prefixes=["/admin"],
        require_token=True,
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc.test") as client:
        yield client, settings
    await store.aclose()


@pytest.mark.redis
async def test_failure_policy_answers_within_the_timeout_while_redis_hangs(
    server: LocalRedis, service: tuple[httpx.AsyncClient, RevokerSettings]
) -> None:
    """While Redis hangs, fail-open paths answer 200 unchecked and fail-closed ones 503, each
    within the timeout; after the resume requests are checked again and a revoked token is 401."""
    client, settings = service
    token, jti = create_access_token("ann", settings=settings)
    bearer = {"Authorization": f"Bearer {token}"}
    first = await client.get("/me", headers=bearer)
    assert first.json() == {"sub": "ann", "checked": True}
    server.pause()
    waits = []
    for i in range(HUNG_CHECKS):
        path = "/admin/me" if i % 2 else "/me"
        response, took = await timed(lambda path=path: client.get(path, headers=bearer))
        waits.append(took)
        if path == "/me":
            assert (response.status_code, response.json()) == (
                200,
                {"sub": "ann", "checked": False},
            )
        else:
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == str(settings.retry_after_seconds)
    assert max(waits) < BOUND, waits
    server.resume()
    sync_store = SyncRedisTokenRevocationStore(settings=settings)
    try:
        sync_store.revoke_token(jti, reason="stolen")
    finally:
        sync_store.close()
    give_up = time.perf_counter() + 2 * CONNECT_TIMEOUT + 1
    while time.perf_counter() < give_up:
        response, took = await timed(lambda: client.get("/me", headers=bearer))
        assert took < BOUND
        if response.status_code == 401:
            break
        assert response.json() == {"sub": "ann", "checked": False}  # not reconnected yet
        await asyncio.sleep(0.01)
    assert response.status_code == 401
    assert "revoked" in response.json()["error_description"]


class FakeTransport:
    """Records writes; stands in for a socket so replies can be fed by hand."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abort(self) -> None:
        pass


async def test_noscript_eval_shares_the_calls_timeout() -> None:
    """EVALSHA meeting NOSCRIPT is sent again as EVAL within what is left of the same timeout."""
    script = "return 1"
    sha = hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()
    connection = PipelinedConnection(
        host="127.0.0.1",
        port=1,
        timeout=TIMEOUT,
        connect_timeout=CONNECT_TIMEOUT,
        on_connect=[("SCRIPT", "LOAD", script)],
    )
    loop = asyncio.get_running_loop()
    protocol = _Protocol(loop)
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    connection._protocol = protocol
    call = asyncio.ensure_future(connection.call("EVALSHA", sha, "0"))
    started = time.perf_counter()
    await asyncio.sleep(TIMEOUT * 0.6)
    protocol.data_received(b"-NOSCRIPT No matching script.\r\n")
    with pytest.raises(TimeoutError):
        await call  # the EVAL is never answered
    took = time.perf_counter() - started
    assert took < BOUND, took
    assert b"EVAL\r\n$8\r\nreturn 1" in b"".join(transport.written)
    with contextlib.suppress(RedisConnectionError):
        protocol.drop(RedisConnectionError("test over"))


@contextlib.asynccontextmanager
async def black_holes(count: int) -> AsyncIterator[list[int]]:
    """``count`` TCP servers that accept and never answer: their ports."""
    accepted: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        writer.close()

    listeners = [await asyncio.start_server(swallow, "127.0.0.1", 0) for _ in range(count)]
    try:
        yield [listener.sockets[0].getsockname()[1] for listener in listeners]
    finally:
        for listener in listeners:
            listener.close()
        for writer in accepted:
            writer.close()
        for listener in listeners:
            await listener.wait_closed()


async def bounded_checks(store: RedisTokenRevocationStore, data: TokenData) -> list[str]:
    """Five checks, each a StoreUnavailable within BOUND (what each took, for messages)."""
    seen: list[str] = []
    for _ in range(5):
        result, took = await timed(lambda: store.is_revoked(data))
        seen.append(f"{took:.3f}s {result!r}")
        assert isinstance(result, exc.StoreUnavailable), seen
        assert took < BOUND, seen
    return seen


async def test_a_check_through_unresponsive_sentinels_returns_within_the_timeout() -> None:
    """Three sentinels that accept and never answer (the Sentinel client has no pipelined
    connection): each check is a StoreUnavailable within the timeout, not the sum of redis-py's
    per-socket timeouts (0.307 s measured against 0.1 s before the bound)."""
    async with black_holes(3) as ports:
        hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
        store = RedisTokenRevocationStore(
            settings=bounded_settings(f"redis+sentinel://{hosts}/mymaster")
        )
        assert store._pipelined is None
        data, _ = verified(store.settings)
        try:
            seen = await bounded_checks(store, data)
            assert "REVOKER_REDIS_TIMEOUT" in seen[-1] or "Timeout" in seen[-1], seen
        finally:
            await store.aclose()


@pytest.mark.redis
async def test_a_check_on_an_injected_client_to_a_hung_redis_returns_within_the_timeout(
    server: LocalRedis,
) -> None:
    """An injected redis.asyncio client with a generous socket timeout (2 s) on a SIGSTOPped
    Redis: the check is still bounded by REVOKER_REDIS_TIMEOUT, and after SIGCONT it answers."""
    import redis.asyncio

    client = redis.asyncio.Redis(port=server.port, socket_timeout=2.0)
    store = RedisTokenRevocationStore(client, settings=bounded_settings(server.url))
    data, _ = verified(store.settings)
    try:
        assert not (await store.is_revoked(data)).revoked
        server.pause()
        await bounded_checks(store, data)
        server.resume()
        give_up = time.perf_counter() + 5
        while isinstance(result := (await timed(lambda: store.is_revoked(data)))[0], Exception):
            assert time.perf_counter() < give_up, result
            await asyncio.sleep(0.05)
        assert not result.revoked
    finally:
        await store.aclose()
        await client.aclose()
