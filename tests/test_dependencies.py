"""require_valid_token and require_scopes: per-route checks, with and without the middleware.

On each backend of the table; each test builds the one-route app it is about.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import fakeredis
import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from conftest import with_cluster
from revoker import dependencies
from revoker import exceptions as exc
from revoker.check import RevocationChecker
from revoker.dependencies import require_scopes, require_valid_token
from revoker.middleware import TokenRevocationMiddleware
from revoker.settings import RevokerSettings, configure
from revoker.store import RedisTokenRevocationStore
from revoker.tokens import TokenData, create_access_token

USER, TENANT = "carol", "globex"


@pytest.fixture
def checker(store: RedisTokenRevocationStore, monkeypatch: pytest.MonkeyPatch) -> RevocationChecker:
    """The dependency's process-wide checker, on the backend under test."""
    checker = RevocationChecker(store)
    monkeypatch.setattr(dependencies, "_checker", checker)
    return checker


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


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")


def starlette_app(*middleware: Middleware) -> Starlette:
    """A Starlette route that calls the dependency itself (Starlette has no Depends)."""

    async def me(request: Request) -> JSONResponse:
        token = await require_valid_token(request)
        return JSONResponse({"sub": token.sub, "jti": token.jti})

    return Starlette(routes=[Route("/me", me)], middleware=list(middleware))


async def test_valid_token_without_middleware(
    store: RedisTokenRevocationStore, checker: RevocationChecker
) -> None:
    """On a plain Starlette route the dependency verifies and looks up the token itself."""
    token, jti = create_access_token(USER, tenant_id=TENANT, settings=store.settings)
    lookups = count_lookups(store)
    async with client_for(starlette_app()) as client:
        response = await client.get("/me", headers=bearer(token))
    assert response.status_code == 200
    assert response.json() == {"sub": USER, "jti": jti}
    assert lookups() == 1


@with_cluster
async def test_revoked_token_without_middleware(
    store: RedisTokenRevocationStore, checker: RevocationChecker
) -> None:
    """A revoked token gets 401 with the invalid_token challenge from the dependency."""
    token, _ = create_access_token(USER, tenant_id=TENANT, settings=store.settings)
    async with client_for(starlette_app()) as client:
        assert (await client.get("/me", headers=bearer(token))).status_code == 200
        await store.revoke_user_tokens(USER, tenant_id=TENANT)
        response = await client.get("/me", headers=bearer(token))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == (
        'Bearer error="invalid_token", error_description="token has been revoked (user revocation)"'
    )


@pytest.mark.parametrize(
    ("headers", "challenge"),
    [
        ({}, "Bearer"),
        ({"Authorization": "Basic Y2Fyb2w6eA=="}, "Bearer"),
        (bearer("not.a.jwt"), 'Bearer error="invalid_token"'),
    ],
    ids=["none", "basic", "invalid"],
)
async def test_missing_or_invalid_token(
    store: RedisTokenRevocationStore,
    checker: RevocationChecker,
    headers: dict[str, str],
    challenge: str,
) -> None:
    """The dependency requires a token: bare Bearer challenge without one, invalid_token else."""
    async with client_for(starlette_app()) as client:
        response = await client.get("/me", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith(challenge)
    assert response.headers["cache-control"] == "no-store"


async def test_fastapi_depends(
    store: RedisTokenRevocationStore, checker: RevocationChecker
) -> None:
    """Through FastAPI's Depends: 200 with claims, then 401 once the token's tenant is revoked."""
    token, _ = create_access_token(
        USER, tenant_id=TENANT, scopes=["profile"], settings=store.settings
    )
    app = FastAPI()

    @app.get("/me")
    async def me(token: Annotated[TokenData, Depends(require_valid_token)]) -> dict[str, Any]:
        return {"sub": token.sub, "scopes": list(token.scopes)}

    async with client_for(app) as client:
        response = await client.get("/me", headers=bearer(token))
        assert response.json() == {"sub": USER, "scopes": ["profile"]}
        await store.revoke_tenant_tokens(TENANT)
        response = await client.get("/me", headers=bearer(token))
    assert response.status_code == 401
    assert "tenant revocation" in response.headers["www-authenticate"]


async def test_require_scopes(store: RedisTokenRevocationStore, checker: RevocationChecker) -> None:
    """A missing scope is 403 insufficient_scope; having it is 200; no token is still 401."""
    settings = store.settings
    reader, _ = create_access_token(USER, scopes=["reports:read", "x"], settings=settings)
    other, _ = create_access_token(USER, scopes=["profile"], settings=settings)
    app = FastAPI()

    @app.get("/reports")
    async def reports(
        token: Annotated[TokenData, Depends(require_scopes("reports:read"))],
    ) -> dict[str, Any]:
        return {"sub": token.sub}

    async with client_for(app) as client:
        assert (await client.get("/reports", headers=bearer(reader))).status_code == 200
        denied = await client.get("/reports", headers=bearer(other))
        anonymous = await client.get("/reports")
    assert denied.status_code == 403
    assert denied.headers["www-authenticate"] == (
        'Bearer error="insufficient_scope", scope="reports:read"'
    )
    assert anonymous.status_code == 401


async def test_reuses_the_middleware_result(
    store: RedisTokenRevocationStore, checker: RevocationChecker
) -> None:
    """With the middleware in front, the dependency makes no second lookup."""
    token, jti = create_access_token(USER, tenant_id=TENANT, settings=store.settings)
    app = starlette_app(Middleware(TokenRevocationMiddleware, store=store))
    lookups = count_lookups(store)
    async with client_for(app) as client:
        for _ in range(3):
            response = await client.get("/me", headers=bearer(token))
            assert response.json() == {"sub": USER, "jti": jti}
    assert lookups() == 3


async def test_checks_on_paths_the_middleware_exempts(
    store: RedisTokenRevocationStore, checker: RevocationChecker
) -> None:
    """On a path the middleware exempts, the dependency still checks (one lookup, then 401)."""
    token, jti = create_access_token(USER, tenant_id=TENANT, settings=store.settings)
    app = starlette_app(Middleware(TokenRevocationMiddleware, store=store, exempt_paths=["/me"]))
    lookups = count_lookups(store)
    async with client_for(app) as client:
        assert (await client.get("/me", headers=bearer(token))).status_code == 200
        await store.revoke_token(jti=jti)
        assert (await client.get("/me", headers=bearer(token))).status_code == 401
    assert lookups() == 2


@pytest.mark.parametrize(("fail_open", "status"), [(True, 200), (False, 503)])
async def test_failure_policy(
    settings: RevokerSettings,
    monkeypatch: pytest.MonkeyPatch,
    fail_open: bool,
    status: int,
) -> None:
    """Redis unavailable: the dependency follows the configured policy (503 with Retry-After)."""
    policy = configure(settings.model_copy(update={"fail_open": fail_open}))
    store = RedisTokenRevocationStore(fakeredis.aioredis.FakeRedis(), settings=policy)

    async def unavailable(token: TokenData) -> Any:
        raise exc.StoreUnavailable("Redis is unavailable: ConnectionError")

    monkeypatch.setattr(store, "is_revoked", unavailable)
    monkeypatch.setattr(dependencies, "_checker", RevocationChecker(store))
    token, _ = create_access_token(USER, settings=policy)
    async with client_for(starlette_app()) as client:
        response = await client.get("/me", headers=bearer(token))
    assert response.status_code == status
    if status == 503:
        assert response.headers["retry-after"] == str(policy.retry_after_seconds)


async def test_default_checker_follows_configured_settings(
    settings: RevokerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an injected checker the dependency builds one for the process-wide settings."""
    monkeypatch.setattr(dependencies, "_checker", None)
    first = dependencies._default_checker()
    assert first.settings is settings
    assert dependencies._default_checker() is first
    replaced = configure(settings.model_copy(update={"leeway": 5}))
    assert dependencies._default_checker().settings is replaced


# --- FastAPI: the security scheme and RFC 6750 bodies ------------------------------------------


def fastapi_app() -> FastAPI:
    """A small FastAPI service: one route per dependency, and one open route."""
    app = FastAPI(title="svc")

    @app.get("/me")
    async def me(token: Annotated[TokenData, Depends(require_valid_token)]) -> dict[str, Any]:
        return {"sub": token.sub}

    @app.get("/reports")
    async def reports(
        token: Annotated[TokenData, Depends(require_scopes("reports:read"))],
    ) -> dict[str, Any]:
        return {"sub": token.sub}

    @app.get("/open")
    async def open_route() -> dict[str, str]:
        return {"ok": "yes"}

    return app


async def test_openapi_declares_the_bearer_scheme() -> None:
    """/openapi.json lists an HTTP bearer scheme and requires it on the routes that use it."""
    async with client_for(fastapi_app()) as client:
        document = (await client.get("/openapi.json")).json()
        docs = await client.get("/docs")
    scheme = document["components"]["securitySchemes"][dependencies.SECURITY_SCHEME]
    assert scheme["type"] == "http"
    assert scheme["scheme"].lower() == "bearer"
    assert scheme["bearerFormat"] == "JWT"
    paths = document["paths"]
    for path in ("/me", "/reports"):
        assert paths[path]["get"]["security"] == [{dependencies.SECURITY_SCHEME: []}]
    assert "security" not in paths["/open"]["get"]
    # Swagger UI builds its Authorize button from the document's security schemes.
    assert docs.status_code == 200
    assert "swagger-ui" in docs.text


@pytest.mark.parametrize(
    ("headers", "error", "challenge"),
    [
        ({}, "unauthorized", "Bearer"),
        (bearer("not.a.jwt"), "invalid_token", 'Bearer error="invalid_token"'),
    ],
    ids=["none", "invalid"],
)
async def test_fastapi_401_is_the_middlewares_json(
    store: RedisTokenRevocationStore,
    checker: RevocationChecker,
    headers: dict[str, str],
    error: str,
    challenge: str,
) -> None:
    """FastAPI answers the dependency's 401 with the middleware's RFC 6750 body, not detail."""
    app = fastapi_app()
    async with client_for(app) as client:
        response = await client.get("/me", headers=headers)
    reference = TokenRevocationMiddleware(app, store=store, require_token=True)
    async with client_for(reference) as client:
        expected = await client.get("/me", headers=headers)
    assert response.status_code == expected.status_code == 401
    assert response.json() == expected.json()
    assert response.json()["error"] == error
    assert "detail" not in response.json()
    assert response.headers["www-authenticate"].startswith(challenge)
    assert response.headers["www-authenticate"] == expected.headers["www-authenticate"]
    assert response.headers["cache-control"] == "no-store"


async def test_fastapi_revoked_and_insufficient_scope_bodies(
    store: RedisTokenRevocationStore,
    checker: RevocationChecker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A revoked token: 401 invalid_token JSON; a missing scope: 403 insufficient_scope JSON
    with its challenge; each refusal logged once, without the token."""
    token, jti = create_access_token(USER, tenant_id=TENANT, scopes=["x"], settings=store.settings)
    app = fastapi_app()
    with caplog.at_level("INFO", logger="revoker.dependencies"):
        async with client_for(app) as client:
            denied = await client.get("/reports", headers=bearer(token))
            await store.revoke_token(jti=jti)
            revoked = await client.get("/me", headers=bearer(token))
    assert denied.status_code == 403
    assert denied.json() == {
        "error": "insufficient_scope",
        "error_description": "missing scope: reports:read",
    }
    assert (
        denied.headers["www-authenticate"]
        == 'Bearer error="insufficient_scope", scope="reports:read"'
    )
    assert revoked.status_code == 401
    assert revoked.json()["error"] == "invalid_token"
    assert "revoked" in revoked.json()["error_description"]
    lines = [r for r in caplog.records if r.name == "revoker.dependencies"]
    assert [(r.__dict__["status"], r.__dict__["error"]) for r in lines] == [
        (403, "insufficient_scope"),
        (401, "invalid_token"),
    ]
    assert lines[1].__dict__["jti"] == jti
    assert lines[1].__dict__["rule"] is not None
    assert all(token not in r.getMessage() and token not in str(r.__dict__) for r in lines)


async def test_explicit_exception_handlers_and_503(
    settings: RevokerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Registered up front (EXCEPTION_HANDLERS), a fail-closed 503 is the middleware's JSON with
    Retry-After."""
    policy = configure(settings.model_copy(update={"fail_open": False}))
    store = RedisTokenRevocationStore(fakeredis.aioredis.FakeRedis(), settings=policy)

    async def unavailable(token: TokenData) -> Any:
        raise exc.StoreUnavailable("Redis is unavailable: ConnectionError")

    monkeypatch.setattr(store, "is_revoked", unavailable)
    monkeypatch.setattr(dependencies, "_checker", RevocationChecker(store))
    app = FastAPI(exception_handlers=dict(dependencies.EXCEPTION_HANDLERS))

    @app.get("/me")
    async def me(token: Annotated[TokenData, Depends(require_valid_token)]) -> dict[str, Any]:
        return {"sub": token.sub}

    token, _ = create_access_token(USER, settings=policy)
    async with client_for(app) as client:
        response = await client.get("/me", headers=bearer(token))
    assert response.status_code == 503
    assert response.json()["error"] == "temporarily_unavailable"
    assert response.headers["retry-after"] == str(policy.retry_after_seconds)
