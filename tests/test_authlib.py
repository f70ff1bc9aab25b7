"""The admin API driven by Authlib, the OAuth library gateways and resource servers use.

Authlib's OAuth 2 client (``OAuth2Session``: its ``OAuth2Client`` over requests; the httpx flavour
is deprecated in favour of httpx2) revokes (RFC 7009) and introspects (RFC 7662) with both client
authentication methods, and its ``IntrospectTokenValidator`` inside a ``ResourceProtector`` guards
a resource server. Both servers are uvicorn on loopback ports (in threads of this process); the
clients speak real HTTP to them."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2 import OAuth2Error, ResourceProtector
from authlib.oauth2.rfc7662 import IntrospectTokenValidator
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from revoker.api import create_app
from revoker.clients import INTROSPECT_SCOPE, REVOKE_SCOPE, ClientRegistry
from revoker.localredis import free_port
from revoker.settings import RevokerSettings
from revoker.store import SyncRedisTokenRevocationStore, get_revocation_store
from revoker.tokens import create_access_token

pytestmark = pytest.mark.redis

METHODS = ("client_secret_basic", "client_secret_post")


def closing_the_store(app: Starlette) -> Starlette:
    """``app`` closing the process-wide store of its loop at shutdown, as a deployment would."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await get_revocation_store().aclose()

    app.router.lifespan_context = lifespan
    return app


def serve(app: Any) -> Iterator[str]:
    """uvicorn serving ``app`` in a thread; yields its base URL, stops it afterwards."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    assert not thread.is_alive()


@pytest.fixture
def revoker_url(settings: RevokerSettings) -> Iterator[str]:
    """The admin API, served by uvicorn."""
    yield from serve(closing_the_store(create_app(settings=settings)))


@pytest.fixture
def registry(settings: RevokerSettings) -> Iterator[ClientRegistry]:
    """The client registry (what `revoker clients add` writes)."""
    store = SyncRedisTokenRevocationStore(settings=settings)
    yield ClientRegistry(store.client, store.keys)
    store.close()


def metadata(revoker_url: str) -> AuthorizationServerMetadata:
    """The RFC 8414 metadata, as Authlib reads it."""
    response = httpx.get(f"{revoker_url}/.well-known/oauth-authorization-server")
    response.raise_for_status()
    return AuthorizationServerMetadata(response.json())


@pytest.mark.parametrize("method", METHODS)
def test_authlib_client_introspects_and_revokes(
    method: str, revoker_url: str, registry: ClientRegistry, settings: RevokerSettings
) -> None:
    """OAuth2Session.introspect_token and .revoke_token with ``method``, at the endpoints the
    metadata names: active, then revoked, then inactive; a wrong secret is invalid_client."""
    meta = metadata(revoker_url)
    assert method in meta["introspection_endpoint_auth_methods_supported"]
    assert method in meta["revocation_endpoint_auth_methods_supported"]
    record, secret = registry.add("gateway", [INTROSPECT_SCOPE, REVOKE_SCOPE])
    token, jti = create_access_token("u1", scopes=["read"], settings=settings)
    with OAuth2Session(
        record.client_id,
        secret,
        token_endpoint_auth_method=method,
        revocation_endpoint_auth_method=method,
    ) as oauth:
        live = oauth.introspect_token(meta["introspection_endpoint"], token=token)
        assert live.status_code == 200, live.text
        assert live.headers["cache-control"] == "no-store"
        assert live.json()["active"] is True
        assert live.json()["jti"] == jti
        assert live.json()["token_type"] == "Bearer"
        revoked = oauth.revoke_token(
            meta["revocation_endpoint"], token=token, token_type_hint="access_token"
        )
        assert revoked.status_code == 200, revoked.text
        gone = oauth.introspect_token(meta["introspection_endpoint"], token=token)
        assert gone.json() == {"active": False}
    with OAuth2Session(record.client_id, "wrong", token_endpoint_auth_method=method) as impostor:
        refused = impostor.introspect_token(meta["introspection_endpoint"], token=token)
    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_client"
    assert refused.headers["www-authenticate"].startswith("Basic")


def test_metadata_passes_authlibs_rfc_8414_checks(revoker_url: str) -> None:
    """Authlib's RFC 8414 validators accept every member revoker publishes (revoker has no
    token or authorization endpoint, so those two checks are not run)."""
    meta = metadata(revoker_url)
    for check in (
        "validate_issuer",
        "validate_revocation_endpoint",
        "validate_revocation_endpoint_auth_methods_supported",
        "validate_introspection_endpoint",
        "validate_introspection_endpoint_auth_methods_supported",
        "validate_scopes_supported",
        "validate_jwks_uri",
        "validate_service_documentation",
    ):
        getattr(meta, check)()


class RevokerIntrospection(IntrospectTokenValidator):
    """Authlib's documented validator: introspect each token with client credentials."""

    def __init__(self, url: str, client_id: str, secret: str) -> None:
        super().__init__(realm="api")
        self.url = url
        self.client_id = client_id
        self.secret = secret

    def introspect_token(self, token_string: str) -> dict[str, Any]:
        with OAuth2Session(self.client_id, self.secret) as oauth:
            response = oauth.introspect_token(self.url, token=token_string)
        response.raise_for_status()
        return response.json()


def resource_server(protector: ResourceProtector) -> Starlette:
    """A Starlette service whose /me route is guarded by Authlib's ResourceProtector."""

    async def me(request: Request) -> JSONResponse:
        try:
            token = await run_in_threadpool(protector.validate_request, ["read"], request)
        except OAuth2Error as error:
            status, body, headers = error()
            return JSONResponse(body, status_code=status, headers=dict(headers))
        return JSONResponse({"sub": token["sub"], "username": token["username"]})

    return Starlette(routes=[Route("/me", me)])


def test_resource_protector_accepts_a_live_token_and_refuses_it_after_revocation(
    revoker_url: str, registry: ClientRegistry, settings: RevokerSettings
) -> None:
    """IntrospectTokenValidator in a ResourceProtector: 200 for a live token, 401 invalid_token
    once its holder revoked it (RFC 7009, no credentials), 403 for a token without the scope."""
    record, secret = registry.add("resource server", [INTROSPECT_SCOPE])
    protector = ResourceProtector()
    protector.register_token_validator(
        RevokerIntrospection(
            metadata(revoker_url)["introspection_endpoint"], record.client_id, secret
        )
    )
    token, _ = create_access_token("alice", scopes=["read"], settings=settings)
    unscoped, _ = create_access_token("bob", scopes=["write"], settings=settings)
    for api_url in serve(resource_server(protector)):
        bearer = {"Authorization": f"Bearer {token}"}
        ok = httpx.get(f"{api_url}/me", headers=bearer)
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"sub": "alice", "username": "alice"}
        assert httpx.post(f"{revoker_url}/oauth/revoke", data={"token": token}).status_code == 200
        refused = httpx.get(f"{api_url}/me", headers=bearer)
        assert refused.status_code == 401
        assert refused.json()["error"] == "invalid_token"
        forbidden = httpx.get(f"{api_url}/me", headers={"Authorization": f"Bearer {unscoped}"})
        assert forbidden.status_code == 403
        assert forbidden.json()["error"] == "insufficient_scope"
