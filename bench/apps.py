"""The four apps of the middleware benchmark (issue 2), as uvicorn factories.

Each is the same small Starlette app behind a different front:

* ``plain``: (a) no middleware;
* ``verify_only``: (b) a pure-ASGI middleware that only verifies the JWT with PyJWT, no cache;
* ``revoker``: (c) ``TokenRevocationMiddleware`` as shipped;
* ``naive``: (d) a ``BaseHTTPMiddleware`` that verifies with PyJWT and sends one read per rule.

Configuration comes from the REVOKER_* environment, as in a real service. ``GET /bench/count``
(exempt from every check) returns how many requests reached the app and how many of those (c) let
through unchecked (Redis failed or timed out: fail-open), so the benchmark divides Redis commands
and CPU time by requests the server actually handled and can tell a check from a skipped one.
"""

from __future__ import annotations

from typing import Any

import jwt
import redis.asyncio
from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from revoker.keys import KeyLayout
from revoker.middleware import DEFAULT_EXEMPT_PATHS, TokenRevocationMiddleware
from revoker.rules import decide
from revoker.settings import RevokerSettings, get_settings

ITEM_PATH = "/item"
COUNT_PATH = "/bench/count"
_served = 0
_unchecked = 0


async def item(request: Request) -> Response:
    global _served, _unchecked
    _served += 1
    if request.scope.get("state", {}).get("revocation_checked") is False:
        _unchecked += 1
    return JSONResponse({"id": 42, "name": "widget"})


async def count(request: Request) -> Response:
    return PlainTextResponse(f"{_served} {_unchecked}")


def base_app() -> Starlette:
    return Starlette(routes=[Route(ITEM_PATH, item), Route(COUNT_PATH, count)])


def _unauthorized(description: str) -> JSONResponse:
    return JSONResponse(
        {"error": "invalid_token", "error_description": description},
        status_code=401,
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


class _PyJWTVerifier:
    """What a hand-written check does: PyJWT with pinned algorithm and required claims."""

    def __init__(self, settings: RevokerSettings) -> None:
        assert settings.jwt_secret is not None
        self.key = settings.jwt_secret.get_secret_value()
        self.algorithms = [settings.jwt_algorithm]
        self.leeway = settings.leeway
        self.options: Any = {"require": ["exp", "iat", "jti", "sub"]}

    def verify(self, token: str) -> dict[str, Any]:
        claims: dict[str, Any] = jwt.decode(
            token, self.key, algorithms=self.algorithms, leeway=self.leeway, options=self.options
        )
        if claims.get("typ") != "access":
            raise jwt.InvalidTokenError("not an access token")
        return claims


def _bearer(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    scheme, _, token = text.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class VerifyOnlyMiddleware:
    """(b) Pure ASGI: verify the bearer JWT with PyJWT on every request; no cache, no Redis."""

    def __init__(self, app: ASGIApp, settings: RevokerSettings) -> None:
        self.app = app
        self.verifier = _PyJWTVerifier(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == COUNT_PATH:
            await self.app(scope, receive, send)
            return
        token = _bearer(dict(scope["headers"]).get(b"authorization"))
        if token is not None:
            try:
                claims = self.verifier.verify(token)
            except jwt.InvalidTokenError as e:
                await _unauthorized(str(e))(scope, receive, send)
                return
            scope.setdefault("state", {})["token"] = claims
        await self.app(scope, receive, send)


class NaiveCheckMiddleware(BaseHTTPMiddleware):
    """(d) The straightforward version: BaseHTTPMiddleware, PyJWT, one read per applicable rule."""

    def __init__(self, app: ASGIApp, settings: RevokerSettings) -> None:
        super().__init__(app)
        self.verifier = _PyJWTVerifier(settings)
        self.keys = KeyLayout(settings.key_prefix)
        self.redis = redis.asyncio.Redis.from_url(settings.redis_url)

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if request.url.path == COUNT_PATH:
            return await call_next(request)
        token = _bearer(request.headers.get("authorization"))
        if token is None:
            return await call_next(request)
        try:
            claims = self.verifier.verify(token)
        except jwt.InvalidTokenError as e:
            return _unauthorized(str(e))
        keys = self.keys.check_keys(
            claims["jti"], claims.get("tenant"), claims["sub"], claims.get("fam")
        )
        values = [
            None
            if key is None
            else await self.redis.hget(key, claims["fam"])
            if n == 1  # the family's revoked mark is a field of its bucket
            else await self.redis.get(key)
            for n, key in enumerate(keys)
        ]
        if decide(claims["iat"], values).revoked:
            return _unauthorized("token has been revoked")
        request.state.token = claims
        return await call_next(request)


def plain() -> ASGIApp:
    """(a) No middleware."""
    return base_app()


def verify_only() -> ASGIApp:
    """(b) Verification only."""
    return VerifyOnlyMiddleware(base_app(), get_settings())


def revoker() -> ASGIApp:
    """(c) TokenRevocationMiddleware as shipped (settings from REVOKER_*)."""
    return TokenRevocationMiddleware(
        base_app(), exempt_paths=(*DEFAULT_EXEMPT_PATHS, COUNT_PATH), require_token=True
    )


def naive() -> ASGIApp:
    """(d) BaseHTTPMiddleware + PyJWT + one read per rule."""
    return NaiveCheckMiddleware(base_app(), get_settings())


#: variant letter -> (factory name in this module, description)
VARIANTS: dict[str, tuple[str, str]] = {
    "a": ("plain", "no middleware"),
    "b": ("verify_only", "pure-ASGI PyJWT verify only, no cache"),
    "c": ("revoker", "TokenRevocationMiddleware as shipped"),
    "d": ("naive", "BaseHTTPMiddleware + PyJWT + one read per rule"),
}
