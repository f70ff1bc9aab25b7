"""RFC 8414 authorization server metadata, and the JWKS when tokens are signed asymmetrically.

``GET /.well-known/oauth-authorization-server`` says where revocation and introspection are and
how clients authenticate there, so that a gateway or an OAuth library configures itself from one
URL. revoker has no authorization or token endpoint (services issue tokens with
:func:`revoker.create_access_token`), so the metadata names none: ``response_types_supported`` is
empty and ``token_endpoint`` absent, which strict RFC 8414 validators call incomplete.

``issuer`` is ``REVOKER_ISSUER`` (the ``iss`` of revoker's tokens) or else the API's base URL;
endpoint URLs are built on ``REVOKER_API_PUBLIC_URL``, else on the URL the request was sent to.
The metadata is served at the root well-known path only (RFC 8414 §3: an issuer with a path
component would put it after the well-known suffix).

``jwks_uri`` is given only for asymmetric algorithms: with a local key
(``REVOKER_JWT_PUBLIC_KEY_FILE`` or ``REVOKER_JWT_PRIVATE_KEY_FILE``) it is
``/.well-known/jwks.json``, served here (the public key only, as an RFC 7517 JWK with ``kid``,
``use`` and ``alg``); with ``REVOKER_JWKS_URL`` it is that URL (the keys live with the issuer).
HMAC secrets are never published: no ``jwks_uri``, and the JWKS path answers 404.
"""

from __future__ import annotations

import json
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import jwt
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from revoker.api.auth import CLIENT_AUTH_METHODS, SCOPES
from revoker.api.errors import ApiError
from revoker.settings import HMAC_ALGORITHMS

if TYPE_CHECKING:
    from starlette.requests import Request

    from revoker.api.context import ApiContext
    from revoker.settings import RevokerSettings

__all__ = [
    "JWKS_PATH",
    "METADATA_PATH",
    "jwks",
    "jwks_document",
    "metadata",
    "metadata_document",
    "routes",
]

METADATA_PATH: Final = "/.well-known/oauth-authorization-server"
JWKS_PATH: Final = "/.well-known/jwks.json"
#: Metadata and keys change only with the configuration: let callers keep them a while.
_CACHEABLE: Final = {"Cache-Control": "public, max-age=300"}


def _base_url(settings: RevokerSettings, request: Request) -> str:
    if settings.api_public_url is not None:
        return settings.api_public_url
    return str(request.base_url).rstrip("/")


def _local_key(context: ApiContext) -> Any:
    """The public key revoker's tokens verify with, when it is held here and asymmetric."""
    settings = context.settings
    if settings.jwt_algorithm in HMAC_ALGORITHMS or settings.jwks_url is not None:
        return None
    if settings.jwt_public_key_file is not None:
        from cryptography.hazmat.primitives import serialization

        return serialization.load_pem_public_key(settings.jwt_public_key_file.read_bytes())
    if settings.jwt_private_key_file is not None:
        return context.verifier.signing_key().public_key()
    return None


def jwks_document(context: ApiContext) -> dict[str, Any] | None:
    """The RFC 7517 key set of the local verification key, or None when there is none to publish."""
    key = _local_key(context)
    if key is None:
        return None
    settings = context.settings
    jwk: dict[str, Any] = json.loads(jwt.get_algorithm_by_name(settings.jwt_algorithm).to_jwk(key))
    jwk.update({"use": "sig", "alg": settings.jwt_algorithm})
    if settings.jwt_key_id is not None:
        jwk["kid"] = settings.jwt_key_id
    return {"keys": [jwk]}


def metadata_document(context: ApiContext, base_url: str) -> dict[str, Any]:
    """The RFC 8414 metadata of the API reached at ``base_url``."""
    settings = context.settings
    document: dict[str, Any] = {
        "issuer": settings.issuer or base_url,
        "revocation_endpoint": f"{base_url}/oauth/revoke",
        # "none": a token's holder may revoke it without credentials (RFC 7009 public clients).
        "revocation_endpoint_auth_methods_supported": [*CLIENT_AUTH_METHODS, "none"],
        "introspection_endpoint": f"{base_url}/oauth/introspect",
        # RFC 8414 §2: access token types count as methods here: a scoped bearer token works too.
        "introspection_endpoint_auth_methods_supported": [*CLIENT_AUTH_METHODS, "Bearer"],
        "scopes_supported": list(SCOPES),
        "response_types_supported": [],
        "service_documentation": f"{base_url}/openapi.json",
    }
    if settings.jwks_url is not None and settings.jwt_algorithm not in HMAC_ALGORITHMS:
        document["jwks_uri"] = settings.jwks_url
    elif _local_key(context) is not None:
        document["jwks_uri"] = f"{base_url}{JWKS_PATH}"
    return document


async def metadata(context: ApiContext, request: Request) -> Response:
    """RFC 8414 §3.2: the metadata document."""
    document = metadata_document(context, _base_url(context.settings, request))
    return JSONResponse(document, headers=_CACHEABLE)


async def jwks(context: ApiContext, _request: Request) -> Response:
    """The public verification key as a JWK set; 404 when keys are symmetric or remote."""
    document = jwks_document(context)
    if document is None:
        raise ApiError(
            404, "not_found", "no key set here: tokens are HMAC-signed or their keys are remote"
        )
    return JSONResponse(document, headers=_CACHEABLE)


def routes(context: ApiContext) -> list[Route]:
    """The discovery endpoints of one app."""
    return [
        Route(METADATA_PATH, partial(metadata, context), methods=["GET"]),
        Route(JWKS_PATH, partial(jwks, context), methods=["GET"]),
    ]
