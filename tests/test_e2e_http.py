"""End to end: a real uvicorn server on a loopback port, real HTTP and WebSocket clients.

The service is built as users build one: the middleware with no explicit store (the process
settings pick the real Redis), the store closed at shutdown; revocations come from the sync store
(what the CLI and Celery tasks use), i.e. from another connection than the checks.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from revoker.middleware import TokenRevocationMiddleware
from revoker.settings import RevokerSettings
from revoker.store import SyncRedisTokenRevocationStore, get_revocation_store
from revoker.tokens import create_access_token
from uvicorn_thread import serve_in_thread

pytestmark = pytest.mark.redis


def service() -> Starlette:
    """A protected service: /me over HTTP and /ws over WebSocket, /health exempt."""

    async def me(request: Request) -> JSONResponse:
        return JSONResponse({"sub": request.state.token.sub})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"up": request.app.state.started})

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(f"hello {websocket.state.token.sub}")
        await websocket.close()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.started = True
        yield
        await get_revocation_store().aclose()

    return Starlette(
        routes=[Route("/me", me), Route("/health", health), WebSocketRoute("/ws", ws)],
        middleware=[Middleware(TokenRevocationMiddleware, require_token=True)],
        lifespan=lifespan,
    )


@pytest.fixture
def server(settings: RevokerSettings) -> Iterator[str]:
    """uvicorn serving the service in a thread; yields its base URL, stops it afterwards."""
    with serve_in_thread(service(), lifespan="on") as address:
        yield address


@pytest.fixture
def revoker_cli(settings: RevokerSettings) -> Iterator[SyncRedisTokenRevocationStore]:
    """The sync store: how an operator or a Celery task revokes."""
    store = SyncRedisTokenRevocationStore(settings=settings)
    yield store
    store.close()


def test_http_200_then_revoke_then_401(
    server: str, settings: RevokerSettings, revoker_cli: SyncRedisTokenRevocationStore
) -> None:
    """Real HTTP: a token works, is revoked from another client, and the next request is 401."""
    token, jti = create_access_token("erin", tenant_id="umbrella", settings=settings)
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=f"http://{server}") as client:
        assert client.get("/health").json() == {"up": True}
        assert client.get("/me").status_code == 401
        response = client.get("/me", headers=headers)
        assert (response.status_code, response.json()) == (200, {"sub": "erin"})
        revoker_cli.revoke_token(jti=jti, reason="logout")
        response = client.get("/me", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == (
        'Bearer error="invalid_token", error_description="token has been revoked (jti revocation)"'
    )
    assert response.json()["error"] == "invalid_token"


def test_tenant_revocation_over_http(
    server: str, settings: RevokerSettings, revoker_cli: SyncRedisTokenRevocationStore
) -> None:
    """Revoking a tenant turns away every earlier token of it; a token issued after works."""
    tokens = [create_access_token(f"u{i}", tenant_id="t1", settings=settings)[0] for i in range(3)]
    other, _ = create_access_token("x", tenant_id="t2", settings=settings)
    with httpx.Client(base_url=f"http://{server}") as client:

        def status(token: str) -> int:
            return client.get("/me", headers={"Authorization": f"Bearer {token}"}).status_code

        assert [status(t) for t in tokens] == [200, 200, 200]
        revoker_cli.revoke_tenant_tokens("t1")
        fresh, _ = create_access_token("u0", tenant_id="t1", settings=settings)
        assert [status(t) for t in tokens] == [401, 401, 401]
        assert status(other) == 200
        assert status(fresh) == 200


def test_websocket_accepted_then_refused_after_revocation(
    server: str, settings: RevokerSettings, revoker_cli: SyncRedisTokenRevocationStore
) -> None:
    """Real WebSocket: accepted with a valid token; refused with HTTP 401 once it is revoked."""
    token, _ = create_access_token("erin", tenant_id="umbrella", settings=settings)
    headers = {"Authorization": f"Bearer {token}"}
    with connect(f"ws://{server}/ws", additional_headers=headers, open_timeout=5) as ws:
        assert ws.recv(timeout=5) == "hello erin"
    revoker_cli.revoke_user_tokens("erin", tenant_id="umbrella")
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://{server}/ws", additional_headers=headers, open_timeout=5)
    response: Any = refused.value.response
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    assert b"user revocation" in response.body
