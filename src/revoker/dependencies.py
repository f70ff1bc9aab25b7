"""Per-route checks for apps that prefer dependencies to middleware (FastAPI ``Depends``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection

from revoker import exceptions as exc
from revoker.check import RevocationChecker, bearer_token
from revoker.middleware import www_authenticate
from revoker.settings import get_settings
from revoker.tokens import TokenData

__all__ = ["require_scopes", "require_valid_token"]

_checker: RevocationChecker | None = None


def _default_checker() -> RevocationChecker:
    global _checker
    if _checker is None or _checker.settings is not get_settings():
        _checker = RevocationChecker()
    return _checker


def _unauthorized(description: str, error: str | None = "invalid_token") -> HTTPException:
    return HTTPException(
        401,
        detail=description,
        headers={
            "WWW-Authenticate": www_authenticate(error, description),
            "Cache-Control": "no-store",
        },
    )


async def require_valid_token(conn: HTTPConnection) -> TokenData:
    """The request's verified, unrevoked access token, or a 401 (503 when failing closed).

    If :class:`~revoker.middleware.TokenRevocationMiddleware` already checked the request, its
    result is reused: no second lookup (and its failure policy stands). On a path the
    middleware exempts, or without the middleware, the check runs here, with the process-wide
    settings' failure policy.
    """
    state = conn.scope.get("state") or {}
    checked = state.get("token")
    if isinstance(checked, TokenData):
        return checked
    checker = _default_checker()
    try:
        token = bearer_token(conn.scope["headers"])
        if token is None:
            raise _unauthorized("a bearer token is required", error=None)
        result = await checker.check(token)
    except exc.TokenError as e:
        raise _unauthorized(e.description, e.error_code) from None
    if result.store_error is not None and not checker.admit_unchecked(
        checker.settings.fail_open, result.store_error
    ):
        raise HTTPException(
            503,
            detail="token revocation cannot be checked right now",
            headers={"Retry-After": str(checker.settings.retry_after_seconds)},
        )
    return result.token


def require_scopes(*scopes: str) -> Callable[[HTTPConnection], Awaitable[TokenData]]:
    """A dependency: :func:`require_valid_token`, plus every scope in ``scopes`` (else 403)."""
    needed = frozenset(scopes)

    async def dependency(conn: HTTPConnection) -> TokenData:
        token = await require_valid_token(conn)
        missing = needed.difference(token.scopes)
        if missing:
            raise HTTPException(
                403,
                detail=f"missing scope: {' '.join(sorted(missing))}",
                headers={
                    "WWW-Authenticate": (
                        f'Bearer error="insufficient_scope", scope="{" ".join(sorted(needed))}"'
                    )
                },
            )
        return token

    return dependency
