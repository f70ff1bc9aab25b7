"""The SSF transmitter endpoints (OpenID Shared Signals Framework 1.0) and the event admin API.

Open: ``/.well-known/ssf-configuration`` (transmitter metadata) and ``/ssf/jwks.json`` (the key
receivers verify SETs and logout tokens with). Authenticated (:func:`_authorize`, the one place):
stream management (``/ssf/streams``: create, read, update, replace, delete), status
(``/ssf/status``), subjects (``/ssf/subjects/add``, ``/ssf/subjects/remove``), verification
(``/ssf/verify``), poll delivery (``/ssf/poll/{stream_id}``, RFC 8936), dead letters
(``/ssf/dead-letters``, ``/ssf/dead-letters/replay``) and the back-channel logout relying parties
(``/ssf/relying-parties``: the registered clients with a ``backchannel_logout_uri``).

Without REVOKER_EVENTS_SIGNING_KEY_FILE there is no transmitter: every endpoint answers 404 with
an error naming the setting. The state lives in Redis (:mod:`revoker.events.streams`) and is
read with a synchronous client in the thread pool, as the job endpoints do; a poll that waits
for events sleeps on the event loop between looks.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Final, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from revoker.api.auth import ADMIN_SCOPE, authenticate
from revoker.api.errors import NO_STORE, ApiError
from revoker.events.claims import verification_claims
from revoker.events.poll import PollRequest, poll_once
from revoker.events.streams import (
    POLL,
    PUSH,
    EventsError,
    StreamRequest,
    SubjectRequest,
)
from revoker.events.transmitter import Transmitter
from revoker.store import get_sync_revocation_store

if TYPE_CHECKING:
    from starlette.requests import Request

    from revoker.api.context import ApiContext

__all__ = ["OPENAPI_PATHS", "routes"]

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

#: Largest request body read (a stream configuration or a poll with 1,000 acks fits).
MAX_BODY: Final = 256 * 1024
#: Seconds between two looks at the queue while a poll waits for events.
POLL_STEP: Final = 0.2

_transmitters: dict[int, Transmitter] = {}


def _transmitter(context: ApiContext) -> Transmitter:
    """This app's transmitter (one per app), or 404 when events are not configured."""
    t = _transmitters.get(id(context))
    if t is None or t.settings is not context.settings:
        store = get_sync_revocation_store(context.settings)
        t = _transmitters[id(context)] = Transmitter(store.client, context.settings)
    if not t.configured:
        raise ApiError(
            404, "not_found", "no SSF transmitter here: REVOKER_EVENTS_SIGNING_KEY_FILE is not set"
        )
    return t


async def _authorize(context: ApiContext, request: Request) -> None:
    """The one authentication of the SSF endpoints: a bearer token or client credentials
    (``client_secret_basic``) with the admin scope."""
    await authenticate(context, request, scope=ADMIN_SCOPE)


async def _call(fn: Callable[..., T], *args: Any) -> T:
    """Run a Redis-backed step in the thread pool; EventsError becomes its HTTP answer."""
    try:
        return await run_in_threadpool(fn, *args)
    except EventsError as e:
        raise ApiError(e.status, e.error, e.description) from None


async def _body(request: Request, model: type[M]) -> M:
    """The JSON body validated by ``model``, or a 400 saying what is wrong."""
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise ApiError(413, "request_too_large", f"the body is larger than {MAX_BODY} bytes")
    try:
        data = json.loads(raw or b"null")
    except ValueError:
        raise ApiError(400, "invalid_request", "the body is not JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_request", "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors(include_url=False, include_input=False, include_context=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        message = first["msg"].removeprefix("Value error, ")
        raise ApiError(400, "invalid_request", f"{where}: {message}") from None


def _stream_id(request: Request) -> str:
    value = request.query_params.get("stream_id")
    if not value:
        raise ApiError(400, "invalid_request", "the stream_id query parameter is required")
    return value


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _json(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=NO_STORE)


# --- open endpoints ----------------------------------------------------------------------------


async def configuration(context: ApiContext, request: Request) -> Response:
    """Transmitter configuration metadata (SSF 1.0 §7.1)."""
    t = _transmitter(context)
    base = _base(request)
    return JSONResponse(
        {
            "spec_version": "1_0",
            "issuer": t.issuer,
            "jwks_uri": f"{base}/ssf/jwks.json",
            "delivery_methods_supported": [PUSH, POLL],
            "configuration_endpoint": f"{base}/ssf/streams",
            "status_endpoint": f"{base}/ssf/status",
            "add_subject_endpoint": f"{base}/ssf/subjects/add",
            "remove_subject_endpoint": f"{base}/ssf/subjects/remove",
            "verification_endpoint": f"{base}/ssf/verify",
            "critical_subject_members": ["session", "user", "tenant"],
            "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6750"}],
            "default_subjects": "ALL",
        }
    )


async def jwks(context: ApiContext, _request: Request) -> Response:
    """The public key SETs and logout tokens are signed with."""
    t = _transmitter(context)
    return JSONResponse(t.key.jwks, headers={"Cache-Control": "max-age=300"})


# --- streams -----------------------------------------------------------------------------------


async def streams(context: ApiContext, request: Request) -> Response:
    """Create (POST), read (GET), update (PATCH), replace (PUT), delete (DELETE) a stream."""
    t = _transmitter(context)
    await _authorize(context, request)
    method = request.method
    poll_url = f"{_base(request)}/ssf/poll"
    if method == "GET":
        if request.query_params.get("stream_id"):
            return _json(await _call(t.registry.get, _stream_id(request)))
        return _json(await _call(t.registry.all_streams))
    if method == "DELETE":
        await _call(t.registry.delete, _stream_id(request))
        return Response(status_code=204)
    body = await _body(request, StreamRequest)
    if method == "POST":
        if body.stream_id is not None:
            raise ApiError(400, "invalid_request", "stream_id is assigned by the transmitter")
        created = await _call(partial(t.registry.create, body, poll_url=poll_url))
        return _json(created, 201)
    updated = await _call(
        partial(t.registry.update, body, poll_url=poll_url, replace=method == "PUT")
    )
    return _json(updated)


class _StatusRequest(BaseModel):
    stream_id: str
    status: str
    reason: str | None = None


async def status(context: ApiContext, request: Request) -> Response:
    """A stream's status (GET), or set it (POST): enabled, paused or disabled."""
    t = _transmitter(context)
    await _authorize(context, request)
    if request.method == "GET":
        return _json(await _call(t.registry.status, _stream_id(request)))
    body = await _body(request, _StatusRequest)
    return _json(await _call(t.registry.set_status, body.stream_id, body.status, body.reason))


async def add_subject(context: ApiContext, request: Request) -> Response:
    """Add a subject: the stream then gets only events about its subjects."""
    t = _transmitter(context)
    await _authorize(context, request)
    await _call(t.registry.add_subject, await _body(request, SubjectRequest))
    return Response(status_code=200)


async def remove_subject(context: ApiContext, request: Request) -> Response:
    """Remove a subject (none left: every subject again)."""
    t = _transmitter(context)
    await _authorize(context, request)
    await _call(t.registry.remove_subject, await _body(request, SubjectRequest))
    return Response(status_code=204)


class _VerifyRequest(BaseModel):
    stream_id: str
    state: str | None = None


def _verify(t: Transmitter, stream_id: str, state: str | None) -> None:
    config = t.registry.get(stream_id)
    claims = verification_claims(iss=t.issuer, aud=config["aud"], stream_id=stream_id, state=state)
    t.queues.enqueue(stream_id, claims["jti"], "set", claims)


async def verify(context: ApiContext, request: Request) -> Response:
    """Queue a verification event for the stream (delivered as its other events are)."""
    t = _transmitter(context)
    await _authorize(context, request)
    body = await _body(request, _VerifyRequest)
    if body.state is not None and len(body.state) > 1024:
        raise ApiError(400, "invalid_request", "state is longer than 1024 characters")
    await _call(_verify, t, body.stream_id, body.state)
    return Response(status_code=204)


async def poll(context: ApiContext, request: Request) -> Response:
    """RFC 8936 poll: acknowledge, report errors, and receive the next SETs."""
    t = _transmitter(context)
    await _authorize(context, request)
    stream_id = request.path_params["stream_id"]
    body = await _body(request, PollRequest)
    try:
        answer, found = await run_in_threadpool(poll_once, t, stream_id, body)
        if not found and not body.return_immediately and body.max_events != 0:
            # Acks and errors are applied once; the waiting polls only look for events.
            looking = PollRequest(maxEvents=body.max_events, returnImmediately=True)
            deadline = time.monotonic() + t.settings.events_poll_wait
            while not found and time.monotonic() < deadline:
                await asyncio.sleep(POLL_STEP)
                answer, found = await run_in_threadpool(poll_once, t, stream_id, looking)
    except EventsError as e:
        # RFC 8936 §2.4 / RFC 8935 §2.3: the error body is {"err", "description"}.
        return JSONResponse({"err": e.error, "description": e.description}, status_code=e.status)
    return _json(answer)


# --- dead letters and relying parties ----------------------------------------------------------


async def dead_letters(context: ApiContext, request: Request) -> Response:
    """Events a destination never accepted, newest first (``stream_id``, ``limit`` filter)."""
    t = _transmitter(context)
    await _authorize(context, request)
    dest = request.query_params.get("stream_id") or None
    try:
        limit = int(request.query_params.get("limit", "100"))
    except ValueError:
        raise ApiError(400, "invalid_request", "limit must be an integer") from None
    if not 1 <= limit <= 1000:
        raise ApiError(400, "invalid_request", "limit must be between 1 and 1000")
    letters = await _call(partial(t.queues.dead_letters, dest=dest, limit=limit))
    return _json({"dead_letters": [letter.as_dict() for letter in letters]})


class _ReplayRequest(BaseModel):
    ids: list[str] | None = None
    stream_id: str | None = None


def _replay(t: Transmitter, body: _ReplayRequest) -> list[str]:
    ids = body.ids
    if ids is None:
        ids = [letter.id for letter in t.queues.dead_letters(dest=body.stream_id, limit=10_000)]
    done = t.queues.replay(ids, exists=lambda dest: t.registry.destination(dest) is not None)
    return [letter.id for letter in done]


async def replay(context: ApiContext, request: Request) -> Response:
    """Queue dead letters again (``ids``, or every one of ``stream_id``, or all)."""
    t = _transmitter(context)
    await _authorize(context, request)
    body = await _body(request, _ReplayRequest)
    if body.ids is not None and len(body.ids) > 10_000:
        raise ApiError(400, "invalid_request", "at most 10000 ids at once")
    return _json({"replayed": await _call(_replay, t, body)})


async def relying_parties(context: ApiContext, request: Request) -> Response:
    """The back-channel logout relying parties: registered clients with a logout URI."""
    from revoker.events.streams import relying_parties as listed

    t = _transmitter(context)
    await _authorize(context, request)
    return _json({"relying_parties": await _call(listed, t.registry)})


def _handler(fn: Callable[[ApiContext, Request], Awaitable[Response]], context: ApiContext) -> Any:
    return partial(fn, context)


def routes(context: ApiContext) -> list[Route]:
    """The SSF endpoints of one app."""
    return [
        Route("/.well-known/ssf-configuration", _handler(configuration, context), methods=["GET"]),
        Route("/ssf/jwks.json", _handler(jwks, context), methods=["GET"]),
        Route(
            "/ssf/streams",
            _handler(streams, context),
            methods=["GET", "POST", "PATCH", "PUT", "DELETE"],
        ),
        Route("/ssf/status", _handler(status, context), methods=["GET", "POST"]),
        Route("/ssf/subjects/add", _handler(add_subject, context), methods=["POST"]),
        Route("/ssf/subjects/remove", _handler(remove_subject, context), methods=["POST"]),
        Route("/ssf/verify", _handler(verify, context), methods=["POST"]),
        Route("/ssf/poll/{stream_id}", _handler(poll, context), methods=["POST"]),
        Route("/ssf/dead-letters", _handler(dead_letters, context), methods=["GET"]),
        Route("/ssf/dead-letters/replay", _handler(replay, context), methods=["POST"]),
        Route("/ssf/relying-parties", _handler(relying_parties, context), methods=["GET"]),
    ]


# --- the OpenAPI description (merged into /openapi.json by revoker.api.openapi) -----------------


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


# A bearer token or a registered client (client_secret_basic) with the admin scope.
_SECURED: Final = {"security": [{"bearer": [ADMIN_SCOPE]}, {"clientSecretBasic": [ADMIN_SCOPE]}]}
_AUTH_ERRORS: Final = {
    "401": _error("No valid, unrevoked bearer token, or bad client credentials."),
    "403": _error("The token or client lacks the revoker:admin scope."),
    "404": _error("No such stream, or no transmitter (REVOKER_EVENTS_SIGNING_KEY_FILE unset)."),
    "503": _error("Redis cannot be reached."),
}
_OBJECT_BODY: Final = {
    "required": True,
    "content": {"application/json": {"schema": {"type": "object"}}},
}
_STREAM_ID_QUERY: Final = {
    "name": "stream_id",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "maxLength": 64},
}


def _op(
    summary: str,
    op_id: str,
    ok: dict[str, Any],
    *,
    body: bool = False,
    query: bool = False,
    secured: bool = True,
    path_param: str | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "operationId": op_id, "responses": {**ok}}
    if secured:
        op.update(_SECURED)
        op["responses"].update(_AUTH_ERRORS)
        op["responses"]["400"] = _error("The request is invalid.")
    else:
        op["responses"]["404"] = _error("No transmitter (REVOKER_EVENTS_SIGNING_KEY_FILE unset).")
    if body:
        op["requestBody"] = _OBJECT_BODY
        op["responses"]["413"] = _error("The body is too large.")
    parameters = []
    if query:
        parameters.append(_STREAM_ID_QUERY)
    if path_param is not None:
        parameters.append(
            {"name": path_param, "in": "path", "required": True, "schema": {"type": "string"}}
        )
    if parameters:
        op["parameters"] = parameters
    return op


_JSON_OK: Final = {"200": {"description": "OK.", "content": {"application/json": {}}}}
_NO_CONTENT: Final = {"204": {"description": "Done."}}

#: The SSF endpoints, in the OpenAPI document's ``paths``.
OPENAPI_PATHS: Final[dict[str, Any]] = {
    "/.well-known/ssf-configuration": {
        "get": _op("SSF transmitter metadata", "ssf_configuration", _JSON_OK, secured=False)
    },
    "/ssf/jwks.json": {
        "get": _op("The transmitter's public keys (JWKS)", "ssf_jwks", _JSON_OK, secured=False)
    },
    "/ssf/streams": {
        "get": _op("Read a stream (or list them)", "ssf_stream_get", _JSON_OK, query=True),
        "post": _op(
            "Create a stream",
            "ssf_stream_create",
            {"201": {"description": "Created.", "content": {"application/json": {}}}},
            body=True,
        ),
        "patch": _op("Update a stream", "ssf_stream_update", _JSON_OK, body=True),
        "put": _op("Replace a stream", "ssf_stream_replace", _JSON_OK, body=True),
        "delete": _op("Delete a stream", "ssf_stream_delete", _NO_CONTENT, query=True),
    },
    "/ssf/status": {
        "get": _op("A stream's status", "ssf_status_get", _JSON_OK, query=True),
        "post": _op("Set a stream's status", "ssf_status_set", _JSON_OK, body=True),
    },
    "/ssf/subjects/add": {
        "post": _op(
            "Add a subject", "ssf_subject_add", {"200": {"description": "Added."}}, body=True
        )
    },
    "/ssf/subjects/remove": {
        "post": _op("Remove a subject", "ssf_subject_remove", _NO_CONTENT, body=True)
    },
    "/ssf/verify": {"post": _op("Send a verification event", "ssf_verify", _NO_CONTENT, body=True)},
    "/ssf/poll/{stream_id}": {
        "post": _op(
            "Poll for SETs (RFC 8936)", "ssf_poll", _JSON_OK, body=True, path_param="stream_id"
        )
    },
    "/ssf/dead-letters": {
        "get": _op("Dead letters, newest first", "ssf_dead_letters", _JSON_OK, query=True)
    },
    "/ssf/dead-letters/replay": {
        "post": _op("Queue dead letters again", "ssf_replay", _JSON_OK, body=True)
    },
    "/ssf/relying-parties": {
        "get": _op("Back-channel logout relying parties", "ssf_rp_list", _JSON_OK),
    },
}
