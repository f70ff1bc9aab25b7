"""Browsers' WebSockets: the bearer token as the subprotocol after `revoker.bearer`.

A real uvicorn server on a loopback port, the `websockets` client (what a browser does on the
wire: `new WebSocket(url, ["revoker.bearer", token])`), revocations from the sync store.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from revoker import exceptions as exc
from revoker.middleware import (
    WEBSOCKET_BEARER_SUBPROTOCOL,
    TokenRevocationMiddleware,
    subprotocol_token,
)
from revoker.settings import RevokerSettings, configure
from revoker.store import SyncRedisTokenRevocationStore, get_revocation_store
from revoker.tokens import create_access_token
from uvicorn_thread import serve_in_thread

pytestmark = pytest.mark.redis

BEARER = Subprotocol(WEBSOCKET_BEARER_SUBPROTOCOL)


def service() -> Starlette:
    """/ws tells the client what the app saw: subject, subprotocols, the protocol header."""

    async def ws(websocket: WebSocket) -> None:
        chosen = "chat" if "chat" in websocket.scope["subprotocols"] else None
        await websocket.accept(subprotocol=chosen)
        headers = dict(websocket.scope["headers"])
        seen = {
            "sub": websocket.state.token.sub,
            "subprotocols": websocket.scope["subprotocols"],
            "header": headers.get(b"sec-websocket-protocol", b"").decode(),
        }
        await websocket.send_text(json.dumps(seen))
        await websocket.close()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await get_revocation_store().aclose()

    return Starlette(
        routes=[WebSocketRoute("/ws", ws)],
        middleware=[Middleware(TokenRevocationMiddleware, require_token=True)],
        lifespan=lifespan,
    )


def serve(settings: RevokerSettings) -> Iterator[str]:
    """uvicorn serving the service in a thread with ``settings``; yields host:port."""
    configure(settings)
    with serve_in_thread(service(), log_level="info") as address:
        yield address


@pytest.fixture
def server(settings: RevokerSettings) -> Iterator[str]:
    """The service with subprotocol credentials switched on."""
    yield from serve(settings.model_copy(update={"websocket_subprotocol_auth": True}))


@pytest.fixture
def revoker_cli(settings: RevokerSettings) -> Iterator[SyncRedisTokenRevocationStore]:
    """The sync store: how an operator or a Celery task revokes."""
    store = SyncRedisTokenRevocationStore(settings=settings)
    yield store
    store.close()


def refused(url: str, **kwargs: Any) -> Any:
    """The HTTP response that refused the handshake."""
    with pytest.raises(InvalidStatus) as e:
        connect(url, open_timeout=5, **kwargs)
    return e.value.response


def test_accepted_with_a_live_token_then_refused_after_revocation(
    server: str,
    settings: RevokerSettings,
    revoker_cli: SyncRedisTokenRevocationStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Accepted (echoing revoker.bearer, the token hidden from the app), refused once revoked."""
    caplog.set_level(logging.DEBUG, logger="revoker")
    token, jti = create_access_token("erin", tenant_id="umbrella", settings=settings)
    offer = [BEARER, Subprotocol(token)]
    with connect(f"ws://{server}/ws", subprotocols=offer, open_timeout=5) as ws:
        assert ws.subprotocol == WEBSOCKET_BEARER_SUBPROTOCOL
        seen = json.loads(ws.recv(timeout=5))
    assert seen == {
        "sub": "erin",
        "subprotocols": [WEBSOCKET_BEARER_SUBPROTOCOL],
        "header": WEBSOCKET_BEARER_SUBPROTOCOL,
    }
    revoker_cli.revoke_token(jti=jti, reason="logout")
    response = refused(f"ws://{server}/ws", subprotocols=offer)
    assert response.status_code == 401
    assert b"jti revocation" in response.body
    # Neither revoker's logs (at DEBUG) nor uvicorn's (at INFO) carry the credential. The
    # client's own DEBUG log of the request it sent is the client's business.
    server_side = [r for r in caplog.records if not r.name.startswith("websockets.client")]
    assert any(r.name.startswith("revoker") for r in server_side)
    assert not [r for r in server_side if token in r.getMessage() or token in str(r.__dict__)]
    assert token not in str(response.headers)


def test_refused_without_a_token(server: str) -> None:
    """No Authorization header, no subprotocol token: 401 with the bare Bearer challenge."""
    response = refused(f"ws://{server}/ws")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    response = refused(f"ws://{server}/ws", subprotocols=[BEARER])  # the marker, no token
    assert response.status_code == 401
    assert b"no token after it" in response.body


def test_app_may_choose_another_offered_subprotocol(server: str, settings: RevokerSettings) -> None:
    """The app's own choice among what the client offered is answered, not overridden."""
    token, _ = create_access_token("erin", settings=settings)
    offer = [BEARER, Subprotocol(token), Subprotocol("chat")]
    with connect(f"ws://{server}/ws", subprotocols=offer, open_timeout=5) as ws:
        assert ws.subprotocol == "chat"
        seen = json.loads(ws.recv(timeout=5))
    assert seen["subprotocols"] == [WEBSOCKET_BEARER_SUBPROTOCOL, "chat"]
    assert token not in seen["header"]


def test_both_credentials_at_once_are_refused(server: str, settings: RevokerSettings) -> None:
    """RFC 6750 §2: one method per request; a header and a subprotocol token is a 401."""
    token, _ = create_access_token("erin", settings=settings)
    response = refused(
        f"ws://{server}/ws",
        subprotocols=[BEARER, Subprotocol(token)],
        additional_headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 401
    assert b"both the Authorization header and the subprotocols" in response.body


def test_subprotocol_is_ignored_unless_opted_in(settings: RevokerSettings) -> None:
    """With the setting off, a subprotocol token is not a credential: 401, token required."""
    token, _ = create_access_token("erin", settings=settings)
    for url in serve(settings):
        response = refused(f"ws://{url}/ws", subprotocols=[BEARER, Subprotocol(token)])
        assert response.status_code == 401
        assert b"a bearer token is required" in response.body


@pytest.mark.parametrize(
    ("offered", "error"),
    [
        ([WEBSOCKET_BEARER_SUBPROTOCOL], exc.MalformedToken),
        ([WEBSOCKET_BEARER_SUBPROTOCOL, "a.b.c", WEBSOCKET_BEARER_SUBPROTOCOL], exc.MalformedToken),
        ([WEBSOCKET_BEARER_SUBPROTOCOL, "a,b"], exc.MalformedToken),
        ([WEBSOCKET_BEARER_SUBPROTOCOL, "jé"], exc.MalformedToken),
        ([WEBSOCKET_BEARER_SUBPROTOCOL, "a" * 9000], exc.TokenTooLarge),
    ],
)
def test_subprotocol_token_refuses_what_is_no_credential(
    offered: list[str], error: type[exc.TokenError]
) -> None:
    """The marker twice or alone, a token no JWT could be, an oversized one: clear errors."""
    with pytest.raises(error):
        subprotocol_token(offered)


def test_subprotocol_token_takes_the_token_out() -> None:
    """The token after the marker is returned; the other subprotocols stay, in order."""
    assert subprotocol_token(["chat", WEBSOCKET_BEARER_SUBPROTOCOL, "x.y.z", "v2"]) == (
        "x.y.z",
        ["chat", WEBSOCKET_BEARER_SUBPROTOCOL, "v2"],
    )
    assert subprotocol_token(["chat"]) is None
