"""TokenRevocationMiddleware through a real Starlette app, on each backend of the table.

Each test builds a tiny app of just the routes it is about (``me_app``, ``ws_app`` or
``app_with`` and its own endpoints).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import fakeredis
import httpx
import jwt
import pytest
import redis
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import Lifespan
from starlette.websockets import WebSocket

from conftest import TEST_SECRET, make_settings, with_cluster
from revoker import exceptions as exc
from revoker.localredis import LocalRedis
from revoker.middleware import TokenRevocationMiddleware
from revoker.settings import RevokerSettings
from revoker.store import RedisTokenRevocationStore
from revoker.tokens import TokenData, create_access_token, create_refresh_token

USER, TENANT = "alice", "acme"


async def me(request: Request) -> JSONResponse:
    """Echo the verified claims the middleware left in request.state (or none)."""
    token = getattr(request.state, "token", None)
    if token is None:
        return JSONResponse({"sub": None})
    return JSONResponse(
        {
            "sub": token.sub,
            "jti": token.jti,
            "tenant": token.tenant,
            "is_token_data": isinstance(token, TokenData),
            "checked": request.state.revocation_checked,
        }
    )


async def echo(websocket: WebSocket) -> None:
    """Accept, send the token's subject, close."""
    await websocket.accept()
    await websocket.send_text(websocket.state.token.sub)
    await websocket.close()


def app_with(
    store: RedisTokenRevocationStore,
    *routes: BaseRoute,
    lifespan: Lifespan[Starlette] | None = None,
    **options: Any,
) -> Starlette:
    """A tiny app of just ``routes``, behind the middleware as a service installs it."""
    return Starlette(
        routes=list(routes),
        middleware=[Middleware(TokenRevocationMiddleware, store=store, **options)],
        lifespan=lifespan,
    )


def me_app(store: RedisTokenRevocationStore, **options: Any) -> Starlette:
    """The app of most tests here: /me echoes the verified claims."""
    return app_with(store, Route("/me", me), **options)


def ws_app(store: RedisTokenRevocationStore, **options: Any) -> Starlette:
    """An app of one websocket route, /ws, which sends the token's subject."""
    return app_with(store, WebSocketRoute("/ws", echo), **options)


def client_for(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def access(settings: RevokerSettings, **claims: Any) -> tuple[str, str]:
    claims.setdefault("tenant_id", TENANT)
    return create_access_token(claims.pop("user", USER), settings=settings, **claims)


def middleware_of(app: Starlette) -> TokenRevocationMiddleware:
    """The middleware instance of ``app``'s stack (built now if no request has built it yet)."""
    if app.middleware_stack is None:
        app.middleware_stack = app.build_middleware_stack()
    layer: Any = app.middleware_stack
    while not isinstance(layer, TokenRevocationMiddleware):
        layer = layer.app
    return layer


async def test_valid_token_reaches_the_app_with_its_claims(
    store: RedisTokenRevocationStore,
) -> None:
    """A valid, unrevoked token gets 200 and the app sees its TokenData in request.state."""
    token, jti = access(store.settings)
    async with client_for(me_app(store)) as client:
        response = await client.get("/me", headers=bearer(token))
    assert response.status_code == 200
    assert response.json() == {
        "sub": USER,
        "jti": jti,
        "tenant": TENANT,
        "is_token_data": True,
        "checked": True,
    }


async def _revoke(rule: str, store: RedisTokenRevocationStore, jti: str, family: str) -> None:
    if rule == "jti":
        await store.revoke_token(jti=jti, reason="logout")
    elif rule == "family":
        await store.revoke_family(family, tenant_id=TENANT)
    elif rule == "user":
        await store.revoke_user_tokens(USER, tenant_id=TENANT)
    else:
        await store.revoke_tenant_tokens(TENANT)


@with_cluster
@pytest.mark.parametrize("rule", ["jti", "family", "user", "tenant"])
async def test_revoked_token_gets_401_with_challenge(
    store: RedisTokenRevocationStore, rule: str
) -> None:
    """Revoked by each rule: 401, the RFC 6750 challenge naming the rule, and the JSON body."""
    _, _, family = create_refresh_token(USER, tenant_id=TENANT, settings=store.settings)
    token, jti = access(store.settings, family_id=family)
    async with client_for(me_app(store)) as client:
        assert (await client.get("/me", headers=bearer(token))).status_code == 200
        await _revoke(rule, store, jti, family)
        response = await client.get("/me", headers=bearer(token))
    description = f"token has been revoked ({rule} revocation)"
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == (
        f'Bearer error="invalid_token", error_description="{description}"'
    )
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == {"error": "invalid_token", "error_description": description}


@with_cluster
async def test_other_tokens_survive_a_narrow_revocation(store: RedisTokenRevocationStore) -> None:
    """Revoking one jti or one user's tokens leaves other tokens and other users alone."""
    token, jti = access(store.settings)
    sibling, _ = access(store.settings)
    bob, _ = access(store.settings, user="bob")
    await store.revoke_token(jti=jti)
    async with client_for(me_app(store)) as client:
        assert (await client.get("/me", headers=bearer(token))).status_code == 401
        assert (await client.get("/me", headers=bearer(sibling))).status_code == 200
        await store.revoke_user_tokens(USER, tenant_id=TENANT)
        assert (await client.get("/me", headers=bearer(sibling))).status_code == 401
        assert (await client.get("/me", headers=bearer(bob))).status_code == 200


def _invalid_tokens(settings: RevokerSettings) -> dict[str, str]:
    good, _ = access(settings)
    head, payload, signature = good.split(".")
    refresh, _, _ = create_refresh_token(USER, settings=settings)
    now = time.time()
    expired = jwt.encode(
        {"sub": USER, "jti": "j-expired", "typ": "access", "iat": now - 7200, "exp": now - 3600},
        TEST_SECRET,
        algorithm="HS256",
    )
    return {
        "garbage": "not-a-jwt",
        "two_segments": f"{head}.{payload}",
        "bad_signature": f"{head}.{payload}.{signature[::-1]}",
        "no_signature": f"{head}.{payload}.",
        "refresh_as_access": refresh,
        "expired": expired,
    }


@pytest.mark.parametrize(
    "kind",
    ["garbage", "two_segments", "bad_signature", "no_signature", "refresh_as_access", "expired"],
)
async def test_invalid_token_gets_401(store: RedisTokenRevocationStore, kind: str) -> None:
    """A token that does not verify is refused with invalid_token before any lookup."""
    token = _invalid_tokens(store.settings)[kind]
    lookups = count_lookups(store)
    async with client_for(me_app(store)) as client:
        response = await client.get("/me", headers=bearer(token))
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert response.json()["error"] == "invalid_token"
    assert lookups() == 0


def _exp_of(token: str) -> int:
    return int(jwt.decode(token, options={"verify_signature": False})["exp"])


async def test_no_token_passes_unless_required(store: RedisTokenRevocationStore) -> None:
    """Without credentials the app decides; with require_token=True it is a bare Bearer 401."""
    async with client_for(me_app(store)) as client:
        response = await client.get("/me")
    assert response.status_code == 200
    assert response.json() == {"sub": None}
    async with client_for(me_app(store, require_token=True)) as client:
        response = await client.get("/me")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {
        "error": "unauthorized",
        "error_description": "a bearer token is required",
    }


@pytest.mark.parametrize("value", ["Basic YWxpY2U6cHc=", "Digest username=x", "Token abc"])
async def test_other_schemes_count_as_no_token(
    store: RedisTokenRevocationStore, value: str
) -> None:
    """A non-Bearer Authorization passes as anonymous, and is refused when a token is required."""
    headers = {"Authorization": value}
    async with client_for(me_app(store)) as client:
        response = await client.get("/me", headers=headers)
    assert (response.status_code, response.json()) == (200, {"sub": None})
    async with client_for(me_app(store, require_token=True)) as client:
        assert (await client.get("/me", headers=headers)).status_code == 401


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_scheme_is_case_insensitive(store: RedisTokenRevocationStore, scheme: str) -> None:
    """RFC 7235: the auth scheme is case-insensitive."""
    token, _ = access(store.settings)
    async with client_for(me_app(store)) as client:
        response = await client.get("/me", headers={"Authorization": f"{scheme} {token}"})
    assert response.json()["sub"] == USER


async def test_exact_exempt_paths(store: RedisTokenRevocationStore) -> None:
    """An exact exempt path skips the check; a path below it does not."""
    app = app_with(
        store,
        Route("/health", me),
        Route("/health/deep", me),
        Route("/me", me),
        exempt_paths=["/health"],
    )
    headers = bearer("not-a-jwt")
    async with client_for(app) as client:
        assert (await client.get("/health", headers=headers)).status_code == 200
        assert (await client.get("/health/deep", headers=headers)).status_code == 401
        assert (await client.get("/me", headers=headers)).status_code == 401


async def test_prefix_exempt_paths_match_whole_segments(store: RedisTokenRevocationStore) -> None:
    """A prefix covers itself and what lies below it, never a longer sibling like /publicity."""
    app = app_with(
        store,
        *(Route(path, me) for path in ("/public", "/public/page", "/publicity", "/health")),
        exempt_paths=(),
        exempt_prefixes=["/public"],
    )
    headers = bearer("not-a-jwt")
    async with client_for(app) as client:
        assert (await client.get("/public", headers=headers)).status_code == 200
        assert (await client.get("/public/page", headers=headers)).status_code == 200
        assert (await client.get("/publicity", headers=headers)).status_code == 401
        assert (await client.get("/health", headers=headers)).status_code == 401


def test_prefix_must_be_a_path() -> None:
    """A prefix without a leading slash would never match: it is refused at construction."""
    with pytest.raises(ValueError, match="must start with '/'"):
        TokenRevocationMiddleware(_noop_app, settings=make_settings(), exempt_prefixes=["public"])


async def _noop_app(scope: Any, receive: Any, send: Any) -> None:
    return None


async def test_lifespan_passes_through_untouched(store: RedisTokenRevocationStore) -> None:
    """Startup and shutdown events reach the app: the middleware ignores the lifespan scope."""
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    app = app_with(store, lifespan=lifespan, require_token=True)
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    assert events == ["startup", "shutdown"]
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]


async def test_streaming_response_is_unaffected(store: RedisTokenRevocationStore) -> None:
    """A streamed body arrives whole, chunk by chunk, through the middleware."""
    token, _ = access(store.settings)

    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(5):
                yield f"chunk{i};".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    async with (
        client_for(app_with(store, Route("/stream", stream))) as client,
        client.stream("GET", "/stream", headers=bearer(token)) as response,
    ):
        body = b"".join([chunk async for chunk in response.aiter_bytes()])
    assert response.status_code == 200
    assert body == b"chunk0;chunk1;chunk2;chunk3;chunk4;"


async def test_background_tasks_run(store: RedisTokenRevocationStore) -> None:
    """A background task attached to the response still runs after a checked request."""
    events: list[str] = []
    token, _ = access(store.settings)

    async def background(request: Request) -> Response:
        return Response("queued", background=BackgroundTask(events.append, "task ran"))

    async with client_for(app_with(store, Route("/background", background))) as client:
        response = await client.get("/background", headers=bearer(token))
    assert response.text == "queued"
    assert events == ["task ran"]


async def test_app_exceptions_are_not_swallowed(store: RedisTokenRevocationStore) -> None:
    """A TokenError raised by the app itself propagates: the middleware answers only its own."""
    token, _ = access(store.settings)

    async def app_raises(request: Request) -> Response:
        raise exc.MalformedToken("raised by the app, not by the middleware")

    async with client_for(app_with(store, Route("/app-raises", app_raises))) as client:
        with pytest.raises(exc.MalformedToken, match="raised by the app"):
            await client.get("/app-raises", headers=bearer(token))
        with pytest.raises(exc.MalformedToken, match="raised by the app"):
            await client.get("/app-raises")


class WsDriver:
    """Drive one websocket connection through the ASGI app with crafted messages."""

    def __init__(self, app: Starlette, headers: list[tuple[bytes, bytes]], **scope: Any) -> None:
        self.app = app
        self.scope = {
            "type": "websocket",
            "asgi": {"version": "3.0"},
            "scheme": "ws",
            "path": "/ws",
            "raw_path": b"/ws",
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 80),
            "subprotocols": [],
            "state": {},
            **scope,
        }
        self.inbox: list[dict[str, Any]] = [{"type": "websocket.connect"}]
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        if self.inbox:
            return self.inbox.pop(0)
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        if message["type"] == "websocket.send":
            self.inbox.append({"type": "websocket.disconnect", "code": 1000})

    async def run(self) -> list[dict[str, Any]]:
        await self.app(self.scope, self.receive, self.send)
        return self.sent


def ws_auth(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


async def test_websocket_accepted_with_valid_token(store: RedisTokenRevocationStore) -> None:
    """A websocket with a valid token is accepted and its handler sees the claims."""
    token, _ = access(store.settings)
    sent = await WsDriver(ws_app(store), ws_auth(token)).run()
    assert sent[0]["type"] == "websocket.accept"
    assert {"type": "websocket.send", "text": USER} in sent


async def test_websocket_with_revoked_token_closed_before_accept(
    store: RedisTokenRevocationStore,
) -> None:
    """A revoked token's websocket is closed with 1008 before any accept."""
    token, jti = access(store.settings)
    await store.revoke_token(jti=jti)
    sent = await WsDriver(ws_app(store), ws_auth(token)).run()
    assert [m["type"] for m in sent] == ["websocket.close"]
    assert sent[0]["code"] == 1008
    assert "revoked" in sent[0]["reason"]


async def test_websocket_denial_response_when_server_supports_it(
    store: RedisTokenRevocationStore,
) -> None:
    """With the denial-response extension the client gets the HTTP 401 and its challenge."""
    token, jti = access(store.settings)
    await store.revoke_token(jti=jti)
    driver = WsDriver(ws_app(store), ws_auth(token), extensions={"websocket.http.response": {}})
    sent = await driver.run()
    assert sent[0]["type"] == "websocket.http.response.start"
    assert sent[0]["status"] == 401
    headers = dict(sent[0]["headers"])
    assert headers[b"www-authenticate"].startswith(b'Bearer error="invalid_token"')
    assert not any(m["type"] == "websocket.accept" for m in sent)


async def test_websocket_without_token_refused_when_required(
    store: RedisTokenRevocationStore,
) -> None:
    """require_token applies to websockets too."""
    sent = await WsDriver(ws_app(store, require_token=True), []).run()
    assert [(m["type"], m.get("code")) for m in sent] == [("websocket.close", 1008)]


def count_lookups(store: RedisTokenRevocationStore) -> Callable[[], int]:
    """Count the store's revocation lookups from now on."""
    calls = 0
    original = store.is_revoked

    async def counting(token: TokenData) -> Any:
        nonlocal calls
        calls += 1
        return await original(token)

    store.is_revoked = counting  # type: ignore[method-assign]
    return lambda: calls


def count_verifications(app_mw: TokenRevocationMiddleware) -> Callable[[], int]:
    """Count the real signature verifications (cache misses) of the middleware's verifier."""
    verifier = app_mw.checker.verifier
    calls = 0
    original = verifier._decode

    def counting(token: str, expected_type: Any) -> TokenData:
        nonlocal calls
        calls += 1
        return original(token, expected_type)

    verifier._decode = counting  # type: ignore[method-assign]
    return lambda: calls


async def test_verified_token_cache_skips_reverification(
    store: RedisTokenRevocationStore,
) -> None:
    """A token presented again is served from the cache: verified once, looked up every time."""
    token, _ = access(store.settings)
    app = me_app(store)
    lookups = count_lookups(store)
    async with client_for(app) as client:
        verifications = count_verifications(middleware_of(app))
        for _ in range(5):
            assert (await client.get("/me", headers=bearer(token))).status_code == 200
    assert verifications() == 1
    assert lookups() == 5


async def test_revocation_is_never_cached(store: RedisTokenRevocationStore) -> None:
    """After a cached 200, revoking the token makes the very next request 401."""
    token, jti = access(store.settings)
    async with client_for(me_app(store)) as client:
        for _ in range(3):
            assert (await client.get("/me", headers=bearer(token))).status_code == 200
        await store.revoke_token(jti=jti)
        assert (await client.get("/me", headers=bearer(token))).status_code == 401


async def test_cache_entries_expire_at_exp(settings: RevokerSettings) -> None:
    """Once exp has passed a cached token is verified again (leeway keeps it valid here)."""
    store = RedisTokenRevocationStore(fakeredis.aioredis.FakeRedis(), settings=settings)
    token, _ = access(store.settings, expires_delta=1)
    app = me_app(store)
    async with client_for(app) as client:
        verifications = count_verifications(middleware_of(app))
        assert (await client.get("/me", headers=bearer(token))).status_code == 200
        assert (await client.get("/me", headers=bearer(token))).status_code == 200
        assert verifications() == 1
        exp = _exp_of(token)
        # exp is at most 2 s away (a 1 s lifetime rounded up to a whole second).
        await asyncio.sleep(min(max(0.0, exp + 0.01 - time.time()), 3.0))
        assert (await client.get("/me", headers=bearer(token))).status_code == 200
    assert verifications() == 2


async def test_cache_is_bounded(settings: RevokerSettings) -> None:
    """With room for 3 entries, the least recently used of 5 tokens is verified again."""
    small = settings.model_copy(update={"verify_cache_size": 3})
    store = RedisTokenRevocationStore(fakeredis.aioredis.FakeRedis(), settings=small)
    tokens = [access(small)[0] for _ in range(5)]
    app = me_app(store)
    async with client_for(app) as client:
        verifications = count_verifications(middleware_of(app))
        for token in tokens:
            assert (await client.get("/me", headers=bearer(token))).status_code == 200
        assert verifications() == 5
        assert (await client.get("/me", headers=bearer(tokens[-1]))).status_code == 200
        assert verifications() == 5
        assert (await client.get("/me", headers=bearer(tokens[0]))).status_code == 200
        assert verifications() == 6
    assert len(middleware_of(app).checker.verifier._cache or ()) == 3


async def test_revoked_rejection_is_logged_with_fields(
    store: RedisTokenRevocationStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Each revoked rejection logs the rule, the token's jti/sub/tenant and the path."""
    token, jti = access(store.settings)
    await store.revoke_token(jti=jti, reason="stolen laptop")
    caplog.set_level(logging.INFO, logger="revoker")
    async with client_for(me_app(store)) as client:
        assert (await client.get("/me", headers=bearer(token))).status_code == 401
    [record] = [r for r in caplog.records if r.getMessage() == "revoked token rejected"]
    assert record.name == "revoker.middleware"
    fields = {k: getattr(record, k) for k in ("rule", "reason", "jti", "sub", "tenant", "path")}
    assert fields == {
        "rule": "jti",
        "reason": "stolen laptop",
        "jti": jti,
        "sub": USER,
        "tenant": TENANT,
        "path": "/me",
    }
    assert token not in caplog.text


@pytest.mark.redis
async def test_one_redis_command_per_checked_request() -> None:
    """Counted on a private server: each checked request costs exactly one script call (EVALSHA,
    its reads inside), nothing else."""
    with LocalRedis() as server:
        settings = make_settings(redis_url=server.url)
        store = RedisTokenRevocationStore(settings=settings)
        token, _ = access(settings, family_id="fam-1")
        admin = redis.Redis.from_url(server.url)
        try:
            async with client_for(me_app(store)) as client:
                assert (await client.get("/me", headers=bearer(token))).status_code == 200
                admin.config_resetstat()
                for _ in range(20):
                    assert (await client.get("/me", headers=bearer(token))).status_code == 200
            stats = admin.info("commandstats")
        finally:
            admin.close()
            await store.aclose()
    calls = {
        name.removeprefix("cmdstat_"): value["calls"]
        for name, value in stats.items()
        if name not in ("cmdstat_info", "cmdstat_config|resetstat")
    }
    # Inside the script: GET of the jti and the user, tenant and global watermarks, HGET of the
    # family, HMGET of the integrity hash (epoch and sequence).
    assert calls == {"evalsha": 20, "get": 80, "hget": 20, "hmget": 20}


# --- a configuration error -------------------------------------------------------------------


def _misconfigured_app() -> Starlette:
    """A tiny app whose middleware reads REVOKER_* (no settings given), like a real service."""
    return Starlette(routes=[Route("/me", me)], middleware=[Middleware(TokenRevocationMiddleware)])


async def test_a_configuration_error_fails_the_lifespan_startup(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bad REVOKER_* variable: the lifespan startup answers lifespan.startup.failed naming it
    (uvicorn then exits instead of swallowing it); a request without lifespan gets a 500 with
    one log line, never the app unchecked nor a traceback."""
    from revoker.settings import reset_settings

    monkeypatch.setenv("REVOKER_DURABILITY", "replicas:none")
    reset_settings()
    app = _misconfigured_app()
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"], sent
    assert "REVOKER_DURABILITY" in sent[0]["message"], sent

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with caplog.at_level(logging.ERROR, logger="revoker.middleware"):
            response = await client.get("/me", headers={"Authorization": "Bearer x.y.z"})
    assert response.status_code == 500
    assert response.json()["error"] == "server_error"
    refused = [r for r in caplog.records if "misconfigured" in r.getMessage()]
    assert len(refused) == 1, caplog.text
    assert refused[0].exc_info is None
    assert "REVOKER_DURABILITY" in refused[0].getMessage()


def test_uvicorn_exits_on_a_configuration_error(tmp_path: Any) -> None:
    """A real uvicorn (lifespan "auto", its default) serving a misconfigured app exits non-zero
    at startup with the error in its log, instead of serving 500s."""
    import os
    import subprocess
    import sys

    (tmp_path / "misconfigured.py").write_text(
        "from starlette.applications import Starlette\n"
        "from starlette.middleware import Middleware\n"
        "from revoker.middleware import TokenRevocationMiddleware\n"
        "app = Starlette(middleware=[Middleware(TokenRevocationMiddleware)])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVOKER_")}
    env["REVOKER_DURABILITY"] = "replicas:none"
    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "misconfigured:app", "--port", "0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0, result.stderr
    assert "REVOKER_DURABILITY" in result.stderr, result.stderr
    assert "Application startup failed" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
