"""RFC 7009 revocation and RFC 7662 introspection.

``POST /oauth/revoke`` needs no admin token: holding a token is enough to revoke it.
``POST /oauth/introspect`` needs one. Introspection reports ``token_type`` as ``access_token`` or
``refresh_token`` (the vocabulary of ``token_type_hint``): every token revoker issues is a bearer
token, so "Bearer" would say nothing.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Final

from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from revoker import exceptions as exc
from revoker.api.auth import require_admin
from revoker.api.errors import NO_STORE
from revoker.api.requests import read_form

if TYPE_CHECKING:
    from starlette.requests import Request

    from revoker.api.context import ApiContext
    from revoker.tokens import TokenData, TokenType

__all__ = ["introspect", "revoke", "routes"]

#: RFC 7009 §2.1 / RFC 7662 §2.1 hint values, and the ``token_type`` introspection reports.
_HINTS: Final[dict[str, TokenType]] = {"access_token": "access", "refresh_token": "refresh"}
_TYPE_NAMES: Final[dict[TokenType, str]] = {"access": "access_token", "refresh": "refresh_token"}


def _decode(context: ApiContext, form: dict[str, str]) -> TokenData | None:
    """The verified claims of the form's token; None when it does not verify."""
    try:
        return context.verifier.decode_any(
            form["token"], _HINTS.get(form.get("token_type_hint") or "", "access")
        )
    except exc.TokenError:
        return None


async def revoke(context: ApiContext, request: Request) -> Response:
    """RFC 7009: revoke the presented token; refresh tokens take their family with them."""
    data = _decode(context, await read_form(request))
    # §2.2: invalid, expired and unknown tokens get the same 200 as revoked ones.
    if data is not None:
        reason = "revoked by its holder (RFC 7009)"
        store = context.store
        # Counted by the store (kind, surface "api": revoker.metrics.counted).
        if data.typ == "refresh" and data.family is not None:
            await store.revoke_family(
                data.family, tenant_id=data.tenant, reason=reason, actor=data.sub
            )
        else:
            await store.revoke_token(data.jti, expires_at=data.exp, reason=reason, actor=data.sub)
    return Response(status_code=200, headers=NO_STORE)


async def introspect(context: ApiContext, request: Request) -> Response:
    """RFC 7662: what an active token carries; ``{"active": false}`` and nothing else if not."""
    await require_admin(context, request)
    data = _decode(context, await read_form(request))
    if data is None or not await _active(context, data):
        return JSONResponse({"active": False}, headers=NO_STORE)
    settings = context.settings
    claims: dict[str, Any] = {
        "active": True,
        "sub": data.sub,
        "jti": data.jti,
        "exp": data.exp,
        "iat": data.iat,
        "token_type": _TYPE_NAMES[data.typ],
        "scope": " ".join(data.scopes),
        "client_id": data.client,
        "tenant": data.tenant,
        "family": data.family,
        "iss": settings.issuer,
        "aud": settings.audience,
    }
    return JSONResponse(
        {name: value for name, value in claims.items() if value is not None}, headers=NO_STORE
    )


async def _active(context: ApiContext, data: TokenData) -> bool:
    store = context.store
    if (await store.is_revoked(data)).revoked:
        return False
    if data.typ == "refresh" and data.family is not None:
        # Only the family's current refresh token can still be exchanged: a rotated-away one
        # is a replay waiting to happen, not an active token.
        session = await store.get_session(data.family, tenant_id=data.tenant)
        if session is not None and session.current_jti not in (None, data.jti):
            return False
    return True


def routes(context: ApiContext) -> list[Route]:
    """The OAuth endpoints of one app."""
    return [
        Route("/oauth/revoke", partial(revoke, context), methods=["POST"]),
        Route("/oauth/introspect", partial(introspect, context), methods=["POST"]),
    ]
