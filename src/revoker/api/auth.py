"""Who is calling the admin API, and whether they may: bearer tokens and registered clients.

Two kinds of credentials are accepted (:func:`authenticate`):

* a **bearer token** issued by revoker (``Authorization: Bearer``), checked like the middleware
  checks any token (verified, then looked up in Redis); its ``scope`` claim grants;
* **client credentials** of a registered client (:mod:`revoker.clients`), RFC 6749 §2.3.1:
  ``client_secret_basic`` (``Authorization: Basic`` of ``id:secret``) or, on the form endpoints,
  ``client_secret_post`` (``client_id`` and ``client_secret`` in the form); its registered scopes
  grant. Bad client credentials are RFC 6749 §5.2 ``invalid_client``: 401 with a ``Basic``
  challenge.

Scopes: ``revoker:introspect`` (RFC 7662), ``revoker:revoke`` (revoke any token, enqueue and read
jobs), ``revoker:admin`` (everything). Authentication fails closed: when Redis cannot say whether
a token is revoked or what a client's secret is, the answer is 503, never a grant.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal
from urllib.parse import unquote_plus

from revoker import exceptions as exc
from revoker.api.errors import NO_STORE, ApiError
from revoker.check import bearer_token
from revoker.clients import (
    ADMIN_SCOPE,
    INTROSPECT_SCOPE,
    REVOKE_SCOPE,
    SCOPES,
    AsyncClientRegistry,
    ClientRecord,
)
from revoker.middleware import error_response

if TYPE_CHECKING:
    from collections.abc import Mapping

    from starlette.requests import Request
    from starlette.responses import JSONResponse

    from revoker.api.context import ApiContext
    from revoker.tokens import TokenData

__all__ = [
    "ADMIN_SCOPE",
    "CLIENT_AUTH_METHODS",
    "INTROSPECT_SCOPE",
    "REALM",
    "REVOKE_SCOPE",
    "SCOPES",
    "Principal",
    "authenticate",
    "authenticate_client",
    "client_credentials",
    "require_admin",
]

#: The realm of the ``Basic`` challenge.
REALM: Final = "revoker"
#: RFC 8414 / RFC 7591 names of the client authentication methods accepted.
CLIENT_AUTH_METHODS: Final = ("client_secret_basic", "client_secret_post")
_BASIC: Final = f'Basic realm="{REALM}", charset="UTF-8"'
_BASE64: Final = re.compile(r"[A-Za-z0-9+/]+={0,2}")
#: Longest secret checked: revoker's are 43 characters; a longer one is refused before Argon2.
_MAX_SECRET: Final = 512


@dataclass(frozen=True)
class Principal:
    """Who a request authenticated as.

    ``kind`` is ``"token"`` (a bearer token: ``name`` is its subject, ``client_id`` its
    ``client_id`` claim) or ``"client"`` (a registered client: ``name`` is its registered name).
    """

    name: str
    kind: Literal["client", "token"]
    scopes: tuple[str, ...]
    client_id: str | None
    token: TokenData | None = None

    def allows(self, scope: str) -> bool:
        """Whether the principal was granted ``scope`` (``revoker:admin`` grants every scope)."""
        return scope in self.scopes or ADMIN_SCOPE in self.scopes

    @property
    def actor(self) -> str:
        """Who is acting, for job records and the audit: a token's subject, ``client:<id>``."""
        if self.kind == "client":
            return f"client:{self.client_id}"
        return self.name

    @property
    def sub(self) -> str:
        """The actor (what callers of :func:`require_admin` read as the admin token's ``sub``)."""
        return self.actor


class _Unauthorized(ApiError):
    """A 401 carrying the RFC 6750 challenge the middleware sends (and, with no credentials at
    all, the ``Basic`` one too: either kind is accepted)."""

    def __init__(self, error_code: str | None, description: str) -> None:
        super().__init__(401, error_code or "unauthorized", description)
        self.error_code = error_code

    def response(self) -> JSONResponse:
        answer = error_response(401, self.error_code, self.description)
        if self.error_code is None:
            answer.headers["WWW-Authenticate"] += f", {_BASIC}"
        answer.headers.update(NO_STORE)
        return answer


def _invalid_client(description: str) -> ApiError:
    # RFC 6749 §5.2: 401 with a challenge of the scheme the client used (or could have used).
    return ApiError(401, "invalid_client", description, headers={"WWW-Authenticate": _BASIC})


def _basic_credentials(value: str) -> tuple[str, str]:
    """The client id and secret of a ``Basic`` credential (RFC 7617, RFC 6749 §2.3.1)."""
    encoded = value.strip()
    try:
        if _BASE64.fullmatch(encoded) is None:
            raise ValueError("not base64")
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _invalid_client("the Basic credentials are not base64 of UTF-8") from None
    client_id, colon, secret = decoded.partition(":")
    if not colon or not client_id or not secret:
        raise _invalid_client("the Basic credentials must be client_id:client_secret")
    # RFC 6749 §2.3.1: both are form-urlencoded before base64 (revoker's own never need it).
    return unquote_plus(client_id), unquote_plus(secret)


def client_credentials(
    request: Request, form: Mapping[str, str] | None = None
) -> tuple[str, str, str] | None:
    """The client credentials a request presents, as ``(method, client_id, secret)``, or None.

    Raises ApiError: ``invalid_request`` for two methods at once (RFC 6749 §2.3: a client uses
    one) or two Authorization headers, ``invalid_client`` for malformed Basic credentials or a
    ``client_secret`` without ``client_id``. A ``client_id`` alone is no credential (a public
    client naming itself, RFC 7009 §2.1): None.
    """
    headers = request.headers.getlist("authorization")
    if len(headers) > 1:
        raise ApiError(400, "invalid_request", "more than one Authorization header")
    header = headers[0] if headers else ""
    scheme, _, value = header.strip().partition(" ")
    posted_id = (form or {}).get("client_id")
    posted_secret = (form or {}).get("client_secret")
    if scheme.lower() == "basic":
        if posted_secret is not None:
            raise ApiError(400, "invalid_request", "use one client authentication method, not two")
        client_id, secret = _basic_credentials(value)
        if posted_id not in (None, client_id):
            raise ApiError(400, "invalid_request", "client_id differs from the Basic credentials")
        return "client_secret_basic", client_id, secret
    if posted_secret is not None:
        if header:
            raise ApiError(400, "invalid_request", "use one client authentication method, not two")
        if not posted_id or not posted_secret:
            raise _invalid_client("client_secret_post needs client_id and client_secret")
        return "client_secret_post", posted_id, posted_secret
    return None


async def authenticate_client(
    context: ApiContext, request: Request, form: Mapping[str, str] | None = None
) -> Principal | None:
    """The registered client the request authenticates as; None when it presents no client
    credentials; ``invalid_client`` (401) when they are wrong, 503 when Redis does not answer or
    the process already runs as many secret checks as it allows."""
    credentials = client_credentials(request, form)
    if credentials is None:
        return None
    _method, client_id, secret = credentials
    if len(secret) > _MAX_SECRET:
        raise _invalid_client("client authentication failed")
    registry = AsyncClientRegistry(context.store.client, context.store.keys)
    try:
        record: ClientRecord | None = await registry.authenticate(client_id, secret)
    except exc.Overloaded as e:
        raise ApiError(
            503, "temporarily_unavailable", str(e), headers={"Retry-After": "1"}
        ) from None
    if record is None:
        raise _invalid_client("client authentication failed")
    return Principal(record.name, "client", record.scopes, record.client_id)


async def _token_principal(context: ApiContext, request: Request, scope: str) -> Principal:
    try:
        raw = bearer_token(request.scope["headers"])
        if raw is None:
            # RFC 6750 §3.1: a request without credentials gets a challenge, no error code.
            raise _Unauthorized(
                None, f"a bearer token or client credentials with the {scope} scope are required"
            )
        result = await context.checker.check(raw)
    except exc.TokenError as e:
        raise _Unauthorized(e.error_code, e.description) from None
    if result.store_error is not None:
        # Admin actions fail closed: an unchecked token may be a revoked one.
        raise result.store_error
    token = result.token
    return Principal(token.sub, "token", token.scopes, token.client, token)


async def authenticate(
    context: ApiContext,
    request: Request,
    *,
    scope: str,
    form: Mapping[str, str] | None = None,
) -> Principal:
    """The request's principal if it may act with ``scope``; else an ApiError (400, 401, 403)
    or StoreUnavailable (503).

    ``form``: the request's OAuth form, already read, where ``client_secret_post`` may be used
    (the form endpoints); elsewhere only the Authorization header is read.
    """
    principal = await authenticate_client(context, request, form)
    if principal is None:
        principal = await _token_principal(context, request, scope)
    if not principal.allows(scope):
        headers = (
            {"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'}
            if principal.kind == "token"
            else None
        )
        raise ApiError(
            403,
            "insufficient_scope",
            f"the {principal.kind} lacks the {scope} scope",
            headers=headers,
        )
    return principal


async def require_admin(context: ApiContext, request: Request) -> Principal:
    """The request's principal if it holds ``revoker:admin`` (a bearer token or a client)."""
    return await authenticate(context, request, scope=ADMIN_SCOPE)
