"""The admin HTTP API: RFC 7009 revocation, RFC 7662 introspection, bulk jobs, health, metrics.

``create_app()`` returns a plain Starlette app to mount or serve (``revoker api --port N``).

* ``POST /oauth/revoke`` needs no credentials: holding a token is enough to revoke it. With
  client credentials, RFC 7009 §2.1 applies (tokens issued to that client, or ``revoker:revoke``).
* ``POST /oauth/introspect`` needs ``revoker:introspect``, the ``/jobs`` endpoints
  ``revoker:revoke`` (``revoker:admin`` grants both): a bearer token issued by revoker, checked
  like the middleware checks any token, or a registered client's credentials
  (``client_secret_basic``/``client_secret_post``, :mod:`revoker.clients`). Authentication fails
  closed: when Redis cannot answer, the answer is 503, never a grant. Who it is (a token's
  subject, ``client:<id>``) is the actor recorded on jobs and audit entries.
* ``GET /.well-known/oauth-authorization-server`` (RFC 8414) and ``/.well-known/jwks.json``.
* ``GET /health`` and ``GET /metrics`` are open, for probes and scrapers.

Every error is a JSON object ``{"error": <code>, "error_description": <message>}``.

One job per module:

=================  ===========================================================================
``app``            ``create_app`` (routes + error handlers) and ``serve``
``context``        what one app's handlers share: settings, store, verifier, checker
``auth``           who is calling: bearer tokens, client credentials, scopes (``authenticate``)
``discovery``      RFC 8414 metadata, the JWKS (``/.well-known/...``)
``errors``         the error answer and the exception handlers
``requests``       reading a request: size cap, OAuth form, JSON, path ids
``bodies``         the job bodies and query; body -> :class:`revoker.bulk.BulkRevocation`
``oauth``          ``/oauth/revoke`` (RFC 7009), ``/oauth/introspect`` (RFC 7662)
``jobs``           ``/jobs`` endpoints
``ops``            ``/health``, ``/metrics``, ``/openapi.json``
``openapi``        the OpenAPI document
=================  ===========================================================================
"""

from __future__ import annotations

from revoker.api.app import create_app, serve
from revoker.api.auth import ADMIN_SCOPE
from revoker.api.bodies import TenantRevocationRequest, UserRevocationRequest
from revoker.api.openapi import openapi_document

__all__ = [
    "ADMIN_SCOPE",
    "TenantRevocationRequest",
    "UserRevocationRequest",
    "create_app",
    "openapi_document",
    "serve",
]
