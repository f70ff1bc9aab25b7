"""The failure policy against a Redis we kill, pause and restart (our own server, not 6379).

The outage tests run on each backend of the table that has a server to break: an injected
client and a store built from settings (its check on the pipelined connection).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import fakeredis
import httpx
import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from conftest import Backend, CheckPath, make_settings
from revoker.localredis import LocalRedis
from revoker.metrics import BREAKER_OPEN
from revoker.middleware import TokenRevocationMiddleware
from revoker.settings import RevokerSettings
from revoker.store import RedisTokenRevocationStore
from revoker.tokens import TokenData, create_access_token

TIMEOUT = 0.3
RESET = 0.6
FAILURES = 3


@pytest.fixture
def redis_server() -> Iterator[LocalRedis]:
    """A throwaway redis-server on a free loopback port; resumed and stopped afterwards."""
    server = LocalRedis().start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.resume()
    server.stop()


def policy_settings(server: LocalRedis, **overrides: Any) -> RevokerSettings:
    values: dict[str, Any] = {
        "redis_url": server.url,
        "redis_timeout": TIMEOUT,
        "redis_connect_timeout": TIMEOUT,
        "breaker_failures": FAILURES,
        "breaker_reset_seconds": RESET,
    }
    values.update(overrides)
    return make_settings(**values)


@pytest.fixture
async def live_store(
    redis_server: LocalRedis, backend_entry: Backend, check_path: CheckPath
) -> AsyncIterator[RedisTokenRevocationStore]:
    """The async store of the backend under test, with short timeouts, on our server."""
    store = backend_entry.async_store(policy_settings(redis_server))
    check_path.watch(store)
    yield store
    await store.aclose()
    check_path.assert_kept_to(backend_entry)


async def me(request: Request) -> JSONResponse:
    """The token's subject and whether its revocation was checked."""
    token = request.state.token
    return JSONResponse({"sub": token.sub, "checked": request.state.revocation_checked})


def app_with(store: RedisTokenRevocationStore, *routes: BaseRoute, **options: Any) -> Starlette:
    """A tiny app of just ``routes`` behind the middleware."""
    return Starlette(
        routes=list(routes),
        middleware=[Middleware(TokenRevocationMiddleware, store=store, **options)],
    )


def me_app(store: RedisTokenRevocationStore, **options: Any) -> Starlette:
    """The app of most tests here: /me behind the middleware."""
    return app_with(store, Route("/me", me), **options)


def client_for(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")


def bearer(settings: RevokerSettings) -> dict[str, str]:
    token, _ = create_access_token("dave", tenant_id="initech", settings=settings)
    return {"Authorization": f"Bearer {token}"}


def checks(outcome: str) -> float:
    return REGISTRY.get_sample_value("revoker_checks_total", {"outcome": outcome}) or 0.0


async def timed_get(client: httpx.AsyncClient, path: str, headers: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    response = await client.get(path, headers=headers)
    return response, time.perf_counter() - started


async def wait_until_checked(
    client: httpx.AsyncClient, headers: Any, within: float
) -> tuple[Any, float]:
    """Poll until a request is revocation-checked again; return it and how long that took."""
    started = time.monotonic()
    deadline = started + within
    while True:
        response = await client.get("/me", headers=headers)
        if response.status_code == 200 and response.json()["checked"]:
            return response, time.monotonic() - started
        if time.monotonic() > deadline:
            pytest.fail(f"not checked again within {within}s: {response.status_code}")
        await asyncio.sleep(0.02)


@pytest.mark.redis
@pytest.mark.outage
async def test_fail_open_lets_requests_through_and_counts_them(
    redis_server: LocalRedis, live_store: RedisTokenRevocationStore
) -> None:
    """Redis killed mid-run, fail-open: 200 for every request, each counted as error_open."""
    headers = bearer(live_store.settings)
    async with client_for(me_app(live_store, fail_open=True)) as client:
        assert (await client.get("/me", headers=headers)).json()["checked"] is True
        redis_server.kill()
        before = checks("error_open")
        responses = [await client.get("/me", headers=headers) for _ in range(10)]
    assert [r.status_code for r in responses] == [200] * 10
    assert all(r.json() == {"sub": "dave", "checked": False} for r in responses)
    assert checks("error_open") - before == 10


@pytest.mark.redis
@pytest.mark.outage
async def test_fail_closed_answers_503_with_retry_after(
    redis_server: LocalRedis, live_store: RedisTokenRevocationStore
) -> None:
    """Redis killed mid-run, fail-closed: 503, Retry-After and a JSON error, counted."""
    headers = bearer(live_store.settings)
    async with client_for(me_app(live_store, fail_open=False)) as client:
        assert (await client.get("/me", headers=headers)).status_code == 200
        redis_server.kill()
        before = checks("error_closed")
        responses = [await client.get("/me", headers=headers) for _ in range(6)]
    assert {r.status_code for r in responses} == {503}
    response = responses[-1]
    assert response.headers["retry-after"] == str(live_store.settings.retry_after_seconds)
    assert response.json()["error"] == "temporarily_unavailable"
    assert "www-authenticate" not in response.headers
    assert checks("error_closed") - before == 6


@pytest.mark.redis
@pytest.mark.outage
async def test_fail_closed_prefixes_apply_per_path(
    redis_server: LocalRedis, live_store: RedisTokenRevocationStore
) -> None:
    """Fail-open service with a fail-closed /admin: only paths under /admin answer 503."""
    headers = bearer(live_store.settings)
    app = app_with(
        live_store,
        *(Route(path, me) for path in ("/admin/users", "/me", "/administrator")),
        fail_open=True,
        fail_closed_prefixes=["/admin"],
    )
    redis_server.kill()
    async with client_for(app) as client:
        assert (await client.get("/admin/users", headers=headers)).status_code == 503
        assert (await client.get("/me", headers=headers)).status_code == 200
        assert (await client.get("/administrator", headers=headers)).status_code == 200


@pytest.mark.redis
@pytest.mark.outage
async def test_paused_redis_costs_one_timeout_then_nothing(
    redis_server: LocalRedis, live_store: RedisTokenRevocationStore
) -> None:
    """A hung Redis: each request waits at most ~the timeout; once the breaker opens, none wait."""
    headers = bearer(live_store.settings)
    async with client_for(me_app(live_store, fail_open=True)) as client:
        assert (await client.get("/me", headers=headers)).json()["checked"] is True
        redis_server.pause()
        # A burst arriving together waits concurrently, bounded by one timeout, not a queue.
        started = time.perf_counter()
        burst = await asyncio.gather(*(client.get("/me", headers=headers) for _ in range(8)))
        burst_time = time.perf_counter() - started
        assert [r.json()["checked"] for r in burst] == [False] * 8
        assert TIMEOUT * 0.8 <= burst_time < TIMEOUT + 0.25
        assert BREAKER_OPEN._value.get() == 1
        fast = [await timed_get(client, "/me", headers) for _ in range(30)]
    assert all(r.status_code == 200 and not r.json()["checked"] for r, _ in fast)
    times = [t for _, t in fast]
    assert max(times) < TIMEOUT / 5, times
    assert statistics.median(times) < TIMEOUT / 30, times


@pytest.mark.redis
@pytest.mark.outage
async def test_recovers_after_pause_without_intervention(
    redis_server: LocalRedis, live_store: RedisTokenRevocationStore
) -> None:
    """Redis answers again: checks resume by themselves within breaker_reset_seconds."""
    headers = bearer(live_store.settings)
    async with client_for(me_app(live_store)) as client:
        redis_server.pause()
        for _ in range(FAILURES):
            await client.get("/me", headers=headers)
        redis_server.resume()
        _, took = await wait_until_checked(client, headers, within=RESET + 3)
    assert took < RESET + 0.5
    assert BREAKER_OPEN._value.get() == 0


@pytest.mark.redis
@pytest.mark.outage
async def test_recovers_after_restart_and_enforces_again(
    redis_server: LocalRedis, live_store: RedisTokenRevocationStore
) -> None:
    """Redis killed and restarted: automatic recovery, and revocations are enforced again."""
    settings = live_store.settings
    token, jti = create_access_token("dave", settings=settings)
    headers = {"Authorization": f"Bearer {token}"}
    async with client_for(me_app(live_store, fail_open=True)) as client:
        redis_server.kill()
        for _ in range(FAILURES + 2):
            assert (await client.get("/me", headers=headers)).status_code == 200
        redis_server.start()
        _, took = await wait_until_checked(client, headers, within=RESET + 3)
        assert took < RESET + 0.5
        await live_store.revoke_token(jti=jti)
        assert (await client.get("/me", headers=headers)).status_code == 401


@pytest.mark.redis
@pytest.mark.outage
async def test_breaker_transitions_are_logged(
    redis_server: LocalRedis,
    live_store: RedisTokenRevocationStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Opening and closing the breaker each log once, with the transition in structured fields."""
    caplog.set_level(logging.INFO, logger="revoker")
    headers = bearer(live_store.settings)
    async with client_for(me_app(live_store)) as client:
        redis_server.kill()
        for _ in range(FAILURES + 3):
            await client.get("/me", headers=headers)
        redis_server.start()
        await wait_until_checked(client, headers, within=RESET + 3)
    moves = [
        (r.levelname, r.breaker_from, r.breaker_to)
        for r in caplog.records
        if hasattr(r, "breaker_to")
    ]
    assert moves[0] == ("WARNING", "closed", "open")
    assert moves[-1] == ("INFO", "half-open", "closed")
    opened = next(r for r in caplog.records if getattr(r, "breaker_to", None) == "open")
    assert opened.consecutive_failures == FAILURES
    assert "Connect" in opened.error or "Connection" in opened.error


def stub_store(settings: RevokerSettings, error: BaseException) -> RedisTokenRevocationStore:
    """A store whose lookup raises ``error``: a bug, not an outage."""
    store = RedisTokenRevocationStore(fakeredis.aioredis.FakeRedis(), settings=settings)

    async def broken(token: TokenData) -> Any:
        raise error

    store.is_revoked = broken  # type: ignore[method-assign]
    return store


@pytest.mark.parametrize(("fail_open", "status"), [(True, 200), (False, 503)])
async def test_store_bug_goes_through_the_failure_policy(
    caplog: pytest.LogCaptureFixture, fail_open: bool, status: int
) -> None:
    """A RuntimeError in the lookup is treated as Redis unavailable, logged with its traceback."""
    settings = make_settings(breaker_failures=FAILURES)
    store = stub_store(settings, RuntimeError("store bug"))
    caplog.set_level(logging.INFO, logger="revoker")
    app = me_app(store, fail_open=fail_open)
    headers = bearer(settings)
    async with client_for(app) as client:
        responses = [await client.get("/me", headers=headers) for _ in range(FAILURES + 1)]
    assert {r.status_code for r in responses} == {status}
    bugs = [r for r in caplog.records if r.getMessage() == "revocation lookup failed unexpectedly"]
    # Logged while the lookup is attempted; once the breaker opens the lookup is skipped.
    assert len(bugs) == FAILURES
    assert bugs[0].exc_info is not None
    assert "RuntimeError: store bug" in caplog.text
    assert any(getattr(r, "breaker_to", None) == "open" for r in caplog.records)


async def test_verifier_bug_is_refused_and_logged(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error while verifying never admits the token: 401, logged with traceback."""
    settings = make_settings()
    store = RedisTokenRevocationStore(fakeredis.aioredis.FakeRedis(), settings=settings)
    app = me_app(store)
    headers = bearer(settings)
    async with client_for(app) as client:
        await client.get("/me", headers=bearer(settings))  # builds the middleware stack
        layer: Any = app.middleware_stack
        while not isinstance(layer, TokenRevocationMiddleware):
            layer = layer.app

        def broken(token: str, expected_type: str) -> TokenData:
            raise KeyError("verifier bug")

        monkeypatch.setattr(layer.checker.verifier, "_decode", broken)
        response = await client.get("/me", headers=headers)
    assert response.status_code == 401
    assert response.json()["error_description"] == "token could not be verified"
    [record] = [r for r in caplog.records if "verification failed" in r.getMessage()]
    assert record.exc_info is not None
    assert record.levelno == logging.ERROR


async def test_websocket_fail_closed_closes_with_try_again_later() -> None:
    """A websocket on a fail-closed path, Redis down: closed before accept with 1013."""
    from revoker import exceptions as exc

    settings = make_settings()
    store = stub_store(settings, exc.StoreUnavailable("down"))

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.close()

    app = app_with(store, WebSocketRoute("/ws", ws), fail_open=False)
    token, _ = create_access_token("dave", settings=settings)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "path": "/ws",
        "headers": [(b"authorization", f"Bearer {token}".encode())],
        "query_string": b"",
        "state": {},
    }
    await app(scope, receive, send)
    assert [(m["type"], m.get("code")) for m in sent] == [("websocket.close", 1013)]
