"""Admin authentication: a bearer token issued by revoker, unrevoked, with the admin scope.

The token is checked like the middleware checks any token (verified, then looked up in Redis).
Admin requests fail closed: when Redis cannot say whether the token is revoked, the answer is
503, never a grant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from revoker import exceptions as exc
from revoker.api.errors import ApiError
from revoker.check import bearer_token
from revoker.middleware import error_response

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    from revoker.api.context import ApiContext
    from revoker.tokens import TokenData

__all__ = ["ADMIN_SCOPE", "require_admin"]

#: The scope an admin token must carry.
ADMIN_SCOPE: Final = "revoker:admin"


class _Unauthorized(ApiError):
    """A 401 carrying the RFC 6750 challenge the middleware sends."""

    def __init__(self, error_code: str | None, description: str) -> None:
        super().__init__(401, error_code or "unauthorized", description)
        self.error_code = error_code

    def response(self) -> JSONResponse:
        return error_response(401, self.error_code, self.description)


async def require_admin(context: ApiContext, request: Request) -> TokenData:
    """The request's admin token, or an ApiError (401, 403) or StoreUnavailable (503)."""
    try:
        raw = bearer_token(request.scope["headers"])
        if raw is None:
            # RFC 6750 §3.1: a request without credentials gets a challenge, no error code.
            raise _Unauthorized(None, f"a bearer token with the {ADMIN_SCOPE} scope is required")
        result = await context.checker.check(raw)
    except exc.TokenError as e:
        raise _Unauthorized(e.error_code, e.description) from None
    if result.store_error is not None:
        # Admin actions fail closed: an unchecked token may be a revoked one.
        raise result.store_error
    if ADMIN_SCOPE not in result.token.scopes:
        raise ApiError(
            403,
            "insufficient_scope",
            f"the token lacks the {ADMIN_SCOPE} scope",
            headers={
                "WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{ADMIN_SCOPE}"'
            },
        )
    return result.token
