"""RFC 7009 revocation and RFC 7662 introspection.

``POST /oauth/revoke``: holding a token is enough to revoke it (no credentials needed). A request
that does present client credentials is judged as that client's (RFC 7009 §2.1): they must be
valid (else ``invalid_client``), and the token must have been issued to that client (its
``client_id`` claim) unless the client holds ``revoker:revoke``; otherwise ``unauthorized_client``
and nothing is revoked. A bearer ``Authorization`` header is not client authentication here and is
ignored, as before: a logout that sends its (perhaps expired) access token along still works.

``POST /oauth/introspect`` needs ``revoker:introspect`` (a bearer token or a client). The answer
follows RFC 7662 §2.2: integer times; ``token_type`` ``"Bearer"`` (RFC 6749 §5.1) for access
tokens; refresh tokens have no RFC 6749 §5.1 type (they are never presented to a resource server)
so they get no ``token_type``; the extension member ``token_use`` says ``access_token`` or
``refresh_token`` for both (the ``token_type_hint`` vocabulary). ``username`` is the token's
``preferred_username`` claim, else its subject. A token is active from its ``nbf`` (when it has
one) until the second of its ``exp``, by this server's clock: the verification leeway is for
services' local checks of a token against another host's clock, not for the authority.
"""

from __future__ import annotations

import math
import time
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import jwt
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from revoker import exceptions as exc
from revoker.api.auth import INTROSPECT_SCOPE, REVOKE_SCOPE, authenticate, authenticate_client
from revoker.api.errors import NO_STORE, ApiError
from revoker.api.requests import read_form
from revoker.metrics import REVOCATIONS

if TYPE_CHECKING:
    from starlette.requests import Request

    from revoker.api.auth import Principal
    from revoker.api.context import ApiContext
    from revoker.tokens import TokenData, TokenType

__all__ = ["introspect", "revoke", "routes"]

#: RFC 7009 §2.1 / RFC 7662 §2.1 hint values, and the ``token_use`` introspection reports.
_HINTS: Final[dict[str, TokenType]] = {"access_token": "access", "refresh_token": "refresh"}
_USE_NAMES: Final[dict[TokenType, str]] = {"access": "access_token", "refresh": "refresh_token"}


def _decode(context: ApiContext, form: dict[str, str]) -> TokenData | None:
    """The verified claims of the form's token; None when it does not verify."""
    try:
        return context.verifier.decode_any(
            form["token"], _HINTS.get(form.get("token_type_hint") or "", "access")
        )
    except exc.TokenError:
        return None


def _may_revoke(principal: Principal, data: TokenData) -> bool:
    """RFC 7009 §2.1: a client revokes tokens issued to it; ``revoker:revoke`` revokes any."""
    return principal.allows(REVOKE_SCOPE) or (
        principal.client_id is not None and data.client == principal.client_id
    )


async def revoke(context: ApiContext, request: Request) -> Response:
    """RFC 7009: revoke the presented token; refresh tokens take their family with them."""
    form = await read_form(request)
    principal = await authenticate_client(context, request, form)
    data = _decode(context, form)
    # §2.2: invalid, expired and unknown tokens get the same 200 as revoked ones.
    if data is not None:
        if principal is not None and not _may_revoke(principal, data):
            raise ApiError(
                400,
                "unauthorized_client",
                f"the token was not issued to this client, and the client lacks {REVOKE_SCOPE}",
            )
        if principal is None:
            actor, reason = data.sub, "revoked by its holder (RFC 7009)"
        else:
            actor, reason = principal.actor, f"revoked by client {principal.client_id} (RFC 7009)"
        store = context.store
        if data.typ == "refresh" and data.family is not None:
            if await store.revoke_family(
                data.family, tenant_id=data.tenant, reason=reason, actor=actor
            ):
                REVOCATIONS.labels("family").inc()
        elif await store.revoke_token(data.jti, expires_at=data.exp, reason=reason, actor=actor):
            REVOCATIONS.labels("token").inc()
    return Response(status_code=200, headers=NO_STORE)


_INACTIVE: Final = {"active": False}


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


async def introspect(context: ApiContext, request: Request) -> Response:
    """RFC 7662: what an active token carries; ``{"active": false}`` and nothing else if not."""
    form = await read_form(request)
    await authenticate(context, request, scope=INTROSPECT_SCOPE, form=form)
    data = _decode(context, form)
    now = time.time()
    if data is None or now >= data.exp:
        return JSONResponse(_INACTIVE, headers=NO_STORE)
    # The token verified: its claims set is the one just checked, read again for the claims
    # TokenData does not keep (nbf, aud, iss, preferred_username).
    claims: dict[str, Any] = jwt.decode(form["token"], options={"verify_signature": False})
    nbf = _number(claims.get("nbf"))
    if (nbf is not None and now < nbf) or not await _active(context, data):
        return JSONResponse(_INACTIVE, headers=NO_STORE)
    username = claims.get("preferred_username")
    answer: dict[str, Any] = {
        "active": True,
        "scope": " ".join(data.scopes) or None,
        "client_id": data.client,
        "username": username if isinstance(username, str) and username else data.sub,
        "token_type": "Bearer" if data.typ == "access" else None,
        "token_use": _USE_NAMES[data.typ],
        "exp": data.exp,
        "iat": math.floor(data.iat),
        "nbf": math.ceil(nbf) if nbf is not None else None,
        "sub": data.sub,
        "aud": claims.get("aud"),
        "iss": claims.get("iss"),
        "jti": data.jti,
        "tenant": data.tenant,
        "family": data.family,
    }
    return JSONResponse(
        {name: value for name, value in answer.items() if value is not None}, headers=NO_STORE
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
