"""The admin HTTP API: RFC 7009 revocation, RFC 7662 introspection, bulk jobs, health, metrics.

``create_app()`` returns a plain Starlette app to mount or serve (``revoker api --port N``).

* ``POST /oauth/revoke`` needs no admin token: holding a token is enough to revoke it.
* ``POST /oauth/introspect`` and the ``/jobs`` endpoints need a bearer token issued by revoker
  with the ``revoker:admin`` scope, checked like the middleware checks any token (verified, then
  looked up in Redis). Admin requests fail closed: when Redis cannot say whether the admin token
  is revoked, the answer is 503, never a grant. The token's subject is the actor recorded on jobs
  and audit entries.
* ``GET /health`` and ``GET /metrics`` are open, for probes and scrapers.

Every error is a JSON object ``{"error": <code>, "error_description": <message>}``.

One job per module:

=================  ===========================================================================
``app``            ``create_app`` (routes + error handlers) and ``serve``
``context``        what one app's handlers share: settings, store, verifier, checker
``auth``           the admin token check (``ADMIN_SCOPE``)
``errors``         the error answer and the exception handlers
``requests``       reading a request: size cap, OAuth form, JSON, path ids
``bodies``         the job bodies and query; body -> :class:`revoker.bulk.BulkRevocation`
``oauth``          ``/oauth/revoke`` (RFC 7009), ``/oauth/introspect`` (RFC 7662)
``jobs``           ``/jobs`` endpoints
``ops``            ``/health``, ``/metrics``, ``/openapi.json``
``console``        ``/console``: the operator console (pages, sign-in sessions, CSRF)
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
