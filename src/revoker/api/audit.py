"""``GET /audit``: the audit trail, filtered and paginated with a cursor (admin scope).

The query is :class:`revoker.audit.AuditQuery` (the CLI's too): ``since``/``until`` (unix
seconds or ISO 8601), ``tenant``, ``user``, ``actor``, ``kind`` (comma-separated), ``limit``
(1..1000, default 100), ``order`` (``asc``, the default, or ``desc``) and ``cursor`` (a page's
``next_cursor``). The answer is ``{"entries": [...], "next_cursor": ...}``; ``next_cursor`` is
null once the range is read. A page examines at most ``revoker.audit.SCAN_BUDGET`` entries, so a
narrow filter can give a short (even empty) page with a cursor: follow it.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from revoker.api.auth import ADMIN_SCOPE, authenticate
from revoker.api.errors import NO_STORE
from revoker.audit import AuditQuery, read_audit

if TYPE_CHECKING:
    from starlette.requests import Request

    from revoker.api.context import ApiContext

__all__ = ["authorize", "read", "routes"]


async def authorize(context: ApiContext, request: Request) -> None:
    """The one place this module authenticates: revoker:admin, as a bearer token or a
    registered client (client_secret_basic)."""
    await authenticate(context, request, scope=ADMIN_SCOPE)


async def read(context: ApiContext, request: Request) -> Response:
    """One page of audit entries matching the query."""
    await authorize(context, request)
    query = AuditQuery.model_validate(dict(request.query_params))
    store = context.store
    page = await store.run(read_audit(store.core, query))
    return JSONResponse(
        {"entries": [e.as_dict() for e in page.entries], "next_cursor": page.next_cursor},
        headers=NO_STORE,
    )


def routes(context: ApiContext) -> list[Route]:
    """The audit endpoint of one app."""
    return [Route("/audit", partial(read, context), methods=["GET"])]
