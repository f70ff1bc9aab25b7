"""Per-route checks for apps that prefer dependencies to middleware (FastAPI ``Depends``).

With FastAPI installed, both dependencies declare an HTTP bearer security scheme (FastAPI's own
``HTTPBearer(auto_error=False)``, named :data:`SECURITY_SCHEME`): ``/openapi.json`` lists it,
every route using them requires it, and Swagger UI offers *Authorize*. The scheme only documents;
the check itself reads the raw ``Authorization`` header as the middleware does.

Refusals are the middleware's RFC 6750 answers (:func:`revoker.middleware.error_response`): a
JSON body ``{"error": ..., "error_description": ...}``, ``WWW-Authenticate`` on 401 and 403,
``Cache-Control: no-store``, ``Retry-After`` on 503. They are raised as :class:`BearerError`, an
``HTTPException`` whose response is that answer; its handler is registered on the app the first
time one is raised (through Starlette's per-request handler table), or up front with
``FastAPI(exception_handlers=EXCEPTION_HANDLERS)``. A refusal of a revoked token, of a request
without one, of a missing scope and a 503 are logged once (logger ``revoker.dependencies``, INFO,
event ``rejected``; ids only, never the token); an invalid token is not (see below).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from revoker import exceptions as exc
from revoker.check import RevocationChecker, bearer_token
from revoker.middleware import error_response
from revoker.settings import get_settings
from revoker.tokens import TokenData

__all__ = [
    "EXCEPTION_HANDLERS",
    "SECURITY_SCHEME",
    "BearerError",
    "bearer_error_handler",
    "require_scopes",
    "require_valid_token",
]

logger = logging.getLogger("revoker.dependencies")

#: The name of the security scheme in the OpenAPI document (``components.securitySchemes``).
SECURITY_SCHEME: Final = "revokerBearer"

_checker: RevocationChecker | None = None


def _security() -> Any:
    """``Security(HTTPBearer(auto_error=False))`` when FastAPI is installed, else None.

    A default value FastAPI reads as a sub-dependency; called directly (Starlette), the
    parameter is simply not passed. ``auto_error=False``: a missing or malformed header is this
    module's to answer, in RFC 6750 form.
    """
    try:
        from fastapi import Security
        from fastapi.security import HTTPBearer
    except ImportError:  # FastAPI is optional: Starlette apps call the dependency themselves
        return None
    return Security(
        HTTPBearer(
            auto_error=False,
            scheme_name=SECURITY_SCHEME,
            bearerFormat="JWT",
            description="An access token revoker verifies and checks for revocation.",
        )
    )


_BEARER: Final = _security()


class BearerError(HTTPException):
    """A refusal whose response is the middleware's RFC 6750 answer (:attr:`response`)."""

    def __init__(self, response: Response, description: str) -> None:
        super().__init__(response.status_code, detail=description, headers=dict(response.headers))
        self.response = response


async def bearer_error_handler(_request: Request, error: Exception) -> Response:
    """The exception handler of :class:`BearerError`: its RFC 6750 response."""
    if isinstance(error, BearerError):
        return error.response
    raise error


#: For ``FastAPI(exception_handlers=...)`` / ``Starlette(exception_handlers=...)``.
EXCEPTION_HANDLERS: Final[Mapping[Any, Callable[..., Any]]] = {BearerError: bearer_error_handler}


def _default_checker() -> RevocationChecker:
    global _checker
    settings = get_settings()
    if _checker is None or _checker.settings is not settings:
        if settings.log_middleware:
            from revoker.logs import configure_logging

            configure_logging(settings)
        _checker = RevocationChecker()
    return _checker


def _refuse(
    conn: HTTPConnection,
    status_code: int,
    error: str | None,
    description: str,
    *,
    token: TokenData | None = None,
    rule: str | None = None,
    retry_after: int | None = None,
    challenge: str | None = None,
    log: bool = True,
) -> BearerError:
    """The BearerError to raise, logged (unless ``log`` is false), with its handler in place
    for this app."""
    response = error_response(status_code, error, description, retry_after=retry_after)
    if challenge is not None:
        response.headers["WWW-Authenticate"] = challenge
    _register_handler(conn)
    if not log:
        return BearerError(response, description)
    logger.info(
        "rejected %d %s",
        status_code,
        error or "no_token",
        extra={
            "event": "rejected",
            "status": status_code,
            "error": error,
            "rule": rule,
            "jti": token.jti if token else None,
            "sub": token.sub if token else None,
            "tenant": token.tenant if token else None,
            "path": conn.scope.get("path"),
        },
    )
    return BearerError(response, description)


def _register_handler(conn: HTTPConnection) -> None:
    """Make sure the app answers a BearerError with its response, not ``{"detail": ...}``.

    Starlette (and so FastAPI) looks handlers up at the time of the exception in the table its
    exception middleware puts in the scope; adding ours there once is what an
    ``exception_handlers=EXCEPTION_HANDLERS`` argument would have done at start-up.
    """
    tables = conn.scope.get("starlette.exception_handlers")
    if isinstance(tables, tuple) and tables and isinstance(tables[0], dict):
        tables[0].setdefault(BearerError, bearer_error_handler)


async def require_valid_token(conn: HTTPConnection, _credentials: Any = _BEARER) -> TokenData:
    """The request's verified, unrevoked access token, or a 401 (503 when failing closed).

    If :class:`~revoker.middleware.TokenRevocationMiddleware` already checked the request, its
    result is reused: no second lookup (and its failure policy stands). On a path the
    middleware exempts, or without the middleware, the check runs here, with the process-wide
    settings' failure policy. ``_credentials`` is FastAPI's security scheme (documentation only).
    """
    state = conn.scope.get("state") or {}
    checked = state.get("token")
    if isinstance(checked, TokenData):
        return checked
    checker = _default_checker()
    try:
        token = bearer_token(conn.scope["headers"])
        if token is None:
            raise _refuse(conn, 401, None, "a bearer token is required")
        result = await checker.check(token)
    except exc.TokenRevoked as e:
        raise _refuse(
            conn, 401, e.error_code, e.description, token=e.token, rule=e.status.rule
        ) from None
    except exc.TokenError as e:
        # Not logged here: revoker.tokens logs a structurally hostile token once, and a bad
        # signature or an expired token is only counted (revoker_checks_total{outcome="invalid"}),
        # so a flood of garbage cannot flood the log.
        raise _refuse(conn, 401, e.error_code, e.description, log=False) from None
    if result.store_error is not None and not checker.admit_unchecked(
        checker.settings.fail_open, result.store_error
    ):
        raise _refuse(
            conn,
            503,
            "temporarily_unavailable",
            "token revocation cannot be checked right now",
            token=result.token,
            retry_after=checker.settings.retry_after_seconds,
        )
    return result.token


def require_scopes(*scopes: str) -> Callable[..., Awaitable[TokenData]]:
    """A dependency: :func:`require_valid_token`, plus every scope in ``scopes`` (else 403)."""
    needed = frozenset(scopes)
    wanted = " ".join(sorted(needed))

    async def dependency(conn: HTTPConnection, _credentials: Any = _BEARER) -> TokenData:
        token = await require_valid_token(conn)
        missing = needed.difference(token.scopes)
        if missing:
            raise _refuse(
                conn,
                403,
                "insufficient_scope",
                f"missing scope: {' '.join(sorted(missing))}",
                token=token,
                challenge=f'Bearer error="insufficient_scope", scope="{wanted}"',
            )
        return token

    return dependency
