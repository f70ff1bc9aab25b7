"""The admin HTTP API: RFC 7009 revocation, RFC 7662 introspection, bulk jobs, health, metrics.

``create_app()`` returns a plain Starlette app to mount or serve (``revoker api --port N``).

* ``POST /oauth/revoke`` needs no admin token: holding a token is enough to revoke it.
* ``POST /oauth/introspect`` and the ``/jobs`` endpoints need a bearer token issued by revoker
  with the ``revoker:admin`` scope, checked like the middleware checks any token (verified, then
  looked up in Redis). Admin requests fail closed: when Redis cannot say whether the admin token
  is revoked, the answer is 503, never a grant. The token's subject is the actor recorded on jobs
  and audit entries.
* ``GET /health`` and ``GET /metrics`` are open, for probes and scrapers.

Introspection reports ``token_type`` as ``access_token`` or ``refresh_token`` (the vocabulary of
``token_type_hint``): every token revoker issues is a bearer token, so "Bearer" would say nothing.

Every error is a JSON object ``{"error": <code>, "error_description": <message>}``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal
from urllib.parse import parse_qsl

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    model_validator,
)
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from revoker import exceptions as exc
from revoker.check import RevocationChecker, bearer_token
from revoker.keys import MAX_ID_LENGTH
from revoker.metrics import REVOCATIONS
from revoker.middleware import error_response
from revoker.settings import RevokerSettings, get_settings
from revoker.tokens import TokenData, TokenType, get_verifier

if TYPE_CHECKING:
    from revoker.jobs import JobRecord
    from revoker.store import RedisTokenRevocationStore

__all__ = [
    "ADMIN_SCOPE",
    "TenantRevocationRequest",
    "UserRevocationRequest",
    "create_app",
    "openapi_document",
    "serve",
]

logger = logging.getLogger("revoker.api")

#: The scope an admin token must carry.
ADMIN_SCOPE: Final = "revoker:admin"
#: Request bodies are small (a token, or a job request); anything larger is refused unread.
MAX_BODY_BYTES: Final = 64 * 1024
#: Most jobs ``GET /jobs`` returns at once.
MAX_JOB_LIST: Final = 500
JOB_STATUSES: Final = ("pending", "running", "done", "failed")
#: RFC 7009 §2.1 / RFC 7662 §2.1 hint values, and the ``token_type`` introspection reports.
_HINTS: Final[dict[str, TokenType]] = {"access_token": "access", "refresh_token": "refresh"}
_TYPE_NAMES: Final[dict[TokenType, str]] = {"access": "access_token", "refresh": "refresh_token"}
#: Upper bound of a timestamp (9999-12-31T23:59:59Z): beyond it datetime arithmetic overflows.
_MAX_TIMESTAMP: Final = 253_402_300_799.0
_NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}

Timestamp = Annotated[float, Field(ge=0, le=_MAX_TIMESTAMP, allow_inf_nan=False)]
Identifier = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]


# --- request bodies ------------------------------------------------------------------------------


class TenantRevocationRequest(BaseModel):
    """Revoke a tenant's tokens: all of them, or a slice (one client app, an issue window)."""

    model_config = ConfigDict(extra="forbid", title="TenantRevocationRequest")

    reason: str = Field(min_length=1, max_length=500, description="Why; kept in the audit log.")
    client_id: Identifier | None = Field(
        None, description="Only tokens issued to this client application."
    )
    issued_after: AwareDatetime | Timestamp | None = Field(
        None, description="Only tokens issued after this time (RFC 3339, or unix seconds)."
    )
    issued_before: AwareDatetime | Timestamp | None = Field(
        None, description="Only tokens issued before this time (RFC 3339, or unix seconds)."
    )
    dry_run: StrictBool = Field(False, description="Count what would be revoked; change nothing.")

    @model_validator(mode="after")
    def _window_is_ordered(self) -> TenantRevocationRequest:
        after, before = _seconds(self.issued_after), _seconds(self.issued_before)
        if after is not None and before is not None and after > before:
            raise ValueError("issued_after must not be later than issued_before")
        if not self.reason.strip():
            raise ValueError("reason must not be blank")
        return self


class UserRevocationRequest(TenantRevocationRequest):
    """Revoke one user's tokens in one tenant (``tenant_id: null`` for tenant-less tokens)."""

    model_config = ConfigDict(extra="forbid", title="UserRevocationRequest")

    tenant_id: Identifier | None = Field(
        description="The tenant whose tokens of this user are revoked; null for tokens without "
        "a tenant. Required, so that forgetting it cannot silently revoke nothing."
    )


def _seconds(value: datetime | float | None) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    return value


# --- errors --------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answer: status, RFC 6749-style error code, message, and extra members."""

    def __init__(
        self,
        status_code: int,
        error: str,
        description: str,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(description)
        self.status_code = status_code
        self.error = error
        self.description = description
        self.headers = dict(headers or {})
        self.extra = extra

    def response(self) -> JSONResponse:
        body = {"error": self.error, "error_description": self.description, **self.extra}
        return JSONResponse(body, status_code=self.status_code, headers=self.headers)


_HTTP_ERROR_CODES: Final = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}


async def _api_error(_request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return error.response()


async def _http_error(_request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    code = _HTTP_ERROR_CODES.get(error.status_code, "error")
    description = error.detail
    if error.status_code == 404:
        description = "no such endpoint; see /openapi.json"
    elif error.status_code == 405:
        description = "method not allowed on this endpoint; see the Allow header"
    return ApiError(error.status_code, code, description, headers=error.headers or None).response()


async def _validation_error(_request: Request, error: Exception) -> Response:
    assert isinstance(error, ValidationError)
    details = [
        {"loc": list(e["loc"]), "msg": e["msg"].removeprefix("Value error, ")}
        for e in error.errors(include_url=False, include_context=False, include_input=False)
    ]
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return ApiError(422, "invalid_request", f"{where}: {first['msg']}", errors=details).response()


async def _store_unavailable(request: Request, error: Exception) -> Response:
    settings: RevokerSettings = request.app.state.settings
    logger.warning("revocation store unavailable: %s", error)
    return ApiError(
        503,
        "temporarily_unavailable",
        "the revocation store (Redis) cannot be reached; try again later",
        headers={"Retry-After": str(settings.retry_after_seconds), **_NO_STORE},
    ).response()


async def _invalid_identifier(_request: Request, error: Exception) -> Response:
    return ApiError(422, "invalid_request", str(error)).response()


async def _job_not_found(_request: Request, error: Exception) -> Response:
    return ApiError(404, "not_found", str(error) or "no such job").response()


async def _duplicate_job(_request: Request, error: Exception) -> Response:
    assert isinstance(error, exc.DuplicateJob)
    return ApiError(
        409,
        "duplicate_job",
        f"an identical job is already pending or running: {error.job_id}",
        job_id=error.job_id,
        headers={"Location": f"/jobs/{error.job_id}"},
    ).response()


async def _server_error(_request: Request, error: Exception) -> Response:
    logger.error("unhandled error in the admin API", exc_info=error)
    return ApiError(500, "server_error", "internal error; see the server log").response()


# --- request helpers -----------------------------------------------------------------------------


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, "request_too_large", f"request body over {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, "request_too_large", f"request body over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _form(request: Request) -> dict[str, str]:
    """An OAuth form body (RFC 6749 §3.2): urlencoded, UTF-8, no repeated parameter."""
    if _media_type(request) != "application/x-www-form-urlencoded":
        raise ApiError(400, "invalid_request", "the body must be application/x-www-form-urlencoded")
    raw = await _body(request)
    try:
        pairs = parse_qsl(
            raw.decode("ascii"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=20,
        )
    except (UnicodeDecodeError, ValueError):
        raise ApiError(
            400, "invalid_request", "the form body is not valid urlencoded UTF-8"
        ) from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise ApiError(400, "invalid_request", f"parameter {name!r} is repeated")
        form[name] = value
    if not form.get("token"):
        raise ApiError(400, "invalid_request", "the token parameter is required")
    return form


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def _json(request: Request) -> Any:
    if _media_type(request) != "application/json":
        raise ApiError(415, "unsupported_media_type", "the body must be application/json")
    raw = await _body(request)
    if not raw.strip():
        return {}
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_request", "the body is not valid JSON") from None


def _path_id(request: Request, name: str) -> str:
    value = str(request.path_params[name])
    if not 0 < len(value) <= MAX_ID_LENGTH:
        raise ApiError(422, "invalid_request", f"{name} must be 1 to {MAX_ID_LENGTH} characters")
    return value


class _Api:
    """The handlers, bound to one settings object and (optionally) one store."""

    def __init__(self, settings: RevokerSettings, store: RedisTokenRevocationStore | None) -> None:
        self.settings = settings
        self._store = store
        self.verifier = get_verifier(settings)
        self.checker = RevocationChecker(store, settings=settings)

    @property
    def store(self) -> RedisTokenRevocationStore:
        if self._store is not None:
            return self._store
        from revoker.store import get_revocation_store

        return get_revocation_store(self.settings)

    # --- authentication --------------------------------------------------------------------------

    async def admin(self, request: Request) -> TokenData:
        """The request's admin token, or an ApiError (401, 403, 503)."""
        try:
            raw = bearer_token(request.scope["headers"])
            if raw is None:
                # RFC 6750 §3.1: a request without credentials gets a challenge, no error code.
                raise _Unauthorized(
                    None, f"a bearer token with the {ADMIN_SCOPE} scope is required"
                )
            result = await self.checker.check(raw)
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

    def decode_any(self, token: str, hint: str | None) -> TokenData | None:
        """The verified claims of an access or refresh token; None when it does not verify."""
        first = _HINTS.get(hint or "", "access")
        order: tuple[TokenType, TokenType] = (
            (first, "refresh") if first == "access" else (first, "access")
        )
        for typ in order:
            try:
                return self.verifier.decode(token, typ)
            except exc.WrongTokenType:
                continue
            except exc.TokenError:
                return None
        return None

    # --- RFC 7009 --------------------------------------------------------------------------------

    async def revoke(self, request: Request) -> Response:
        """RFC 7009: revoke the presented token; refresh tokens take their family with them."""
        form = await _form(request)
        data = self.decode_any(form["token"], form.get("token_type_hint"))
        # §2.2: invalid, expired and unknown tokens get the same 200 as revoked ones.
        if data is not None:
            reason = "revoked by its holder (RFC 7009)"
            if data.typ == "refresh" and data.family is not None:
                if await self.store.revoke_family(
                    data.family, tenant_id=data.tenant, reason=reason, actor=data.sub
                ):
                    REVOCATIONS.labels("family").inc()
            elif await self.store.revoke_token(
                data.jti, expires_at=data.exp, reason=reason, actor=data.sub
            ):
                REVOCATIONS.labels("token").inc()
        return Response(status_code=200, headers=_NO_STORE)

    # --- RFC 7662 --------------------------------------------------------------------------------

    async def introspect(self, request: Request) -> Response:
        """RFC 7662: what an active token carries; ``{"active": false}`` and nothing else if not."""
        await self.admin(request)
        form = await _form(request)
        data = self.decode_any(form["token"], form.get("token_type_hint"))
        if data is None or not await self._active(data):
            return JSONResponse({"active": False}, headers=_NO_STORE)
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
        }
        if self.settings.issuer is not None:
            claims["iss"] = self.settings.issuer
        if self.settings.audience is not None:
            claims["aud"] = self.settings.audience
        return JSONResponse(
            {name: value for name, value in claims.items() if value is not None},
            headers=_NO_STORE,
        )

    async def _active(self, data: TokenData) -> bool:
        if (await self.store.is_revoked(data)).revoked:
            return False
        if data.typ == "refresh" and data.family is not None:
            # Only the family's current refresh token can still be exchanged: a rotated-away one
            # is a replay waiting to happen, not an active token.
            session = await self.store.get_session(data.family, tenant_id=data.tenant)
            if session is not None and session.current_jti not in (None, data.jti):
                return False
        return True

    # --- jobs ------------------------------------------------------------------------------------

    async def enqueue_tenant(self, request: Request) -> Response:
        """Enqueue a revocation of a tenant's tokens (202 with the job record)."""
        admin = await self.admin(request)
        tenant_id = _path_id(request, "tenant_id")
        body = TenantRevocationRequest.model_validate(await _json(request))
        from revoker import jobs

        job_id = await _enqueue(
            jobs.enqueue_tenant_revocation,
            tenant_id,
            reason=body.reason,
            actor=admin.sub,
            client_id=body.client_id,
            issued_after=_seconds(body.issued_after),
            issued_before=_seconds(body.issued_before),
            dry_run=body.dry_run,
            settings=self.settings,
        )
        return await self._accepted(job_id)

    async def enqueue_user(self, request: Request) -> Response:
        """Enqueue a revocation of one user's tokens in one tenant (202 with the job record)."""
        admin = await self.admin(request)
        user_id = _path_id(request, "user_id")
        body = UserRevocationRequest.model_validate(await _json(request))
        from revoker import jobs

        job_id = await _enqueue(
            jobs.enqueue_user_revocation,
            user_id,
            tenant_id=body.tenant_id,
            reason=body.reason,
            actor=admin.sub,
            client_id=body.client_id,
            issued_after=_seconds(body.issued_after),
            issued_before=_seconds(body.issued_before),
            dry_run=body.dry_run,
            settings=self.settings,
        )
        return await self._accepted(job_id)

    async def _accepted(self, job_id: str) -> Response:
        record = await self._get_job(job_id)
        return JSONResponse(
            record.as_dict(), status_code=202, headers={"Location": f"/jobs/{job_id}"}
        )

    async def _get_job(self, job_id: str) -> JobRecord:
        from revoker import jobs

        return await run_in_threadpool(jobs.get_job, job_id, settings=self.settings)

    async def get_job(self, request: Request) -> Response:
        """One job record (404 when unknown or expired)."""
        await self.admin(request)
        job_id = _path_id(request, "job_id")
        try:
            record = await self._get_job(job_id)
        except exc.InvalidIdentifier:
            raise exc.JobNotFound(f"no job {job_id!r}") from None
        return JSONResponse(record.as_dict())

    async def list_jobs(self, request: Request) -> Response:
        """Recent jobs, newest first; ``?limit=`` (1..500) and ``?status=``."""
        await self.admin(request)
        limit = _JobQuery.model_validate(dict(request.query_params))
        from revoker import jobs

        records = await run_in_threadpool(
            jobs.list_jobs, limit=limit.limit, status=limit.status, settings=self.settings
        )
        return JSONResponse({"jobs": [record.as_dict() for record in records]})

    # --- operations ------------------------------------------------------------------------------

    async def health(self, _request: Request) -> Response:
        """Redis and broker reachability: 200 when both answer, else 503."""
        redis_health = await self.store.health_check()
        broker_url = self.settings.effective_broker_url
        if broker_url == self.settings.redis_url:
            broker_health = dict(redis_health)
        else:
            broker_health = await _broker_health(broker_url, self.settings.redis_connect_timeout)
        healthy = bool(redis_health["healthy"] and broker_health["healthy"])
        return JSONResponse(
            {
                "status": "ok" if healthy else "unavailable",
                "redis": redis_health,
                "broker": broker_health,
            },
            status_code=200 if healthy else 503,
            headers=_NO_STORE,
        )

    async def metrics(self, _request: Request) -> Response:
        """Prometheus metrics of this process (the default registry)."""
        return Response(generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi(self, _request: Request) -> Response:
        return JSONResponse(openapi_document())


async def _enqueue(enqueue: Callable[..., str], *args: Any, **kwargs: Any) -> str:
    try:
        return await run_in_threadpool(enqueue, *args, **kwargs)
    except (exc.InvalidIdentifier, exc.JobError):
        raise
    except ValueError as e:
        # The jobs module's own input checks (documented as ValueError): the caller's mistake.
        raise ApiError(422, "invalid_request", str(e)) from None


class _JobQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(50, ge=1, le=MAX_JOB_LIST)
    status: Literal["pending", "running", "done", "failed"] | None = None


class _Unauthorized(ApiError):
    """A 401 carrying the RFC 6750 challenge the middleware sends."""

    def __init__(self, error_code: str | None, description: str) -> None:
        super().__init__(401, error_code or "unauthorized", description)
        self.error_code = error_code

    def response(self) -> JSONResponse:
        return error_response(401, self.error_code, self.description)


async def _broker_health(url: str, connect_timeout: float) -> dict[str, Any]:
    """PING a Redis broker, or open an AMQP connection; never raises."""
    import time

    started = time.perf_counter()
    error: str | None = None
    if url.startswith(("redis://", "rediss://", "unix://")):
        import redis.asyncio
        from redis.exceptions import RedisError

        client = redis.asyncio.Redis.from_url(
            url, socket_connect_timeout=connect_timeout, socket_timeout=connect_timeout
        )
        try:
            await client.ping()
        except (RedisError, OSError) as e:
            error = f"{type(e).__name__}: {e}"
        finally:
            await client.aclose()
    else:
        error = await run_in_threadpool(_amqp_error, url, connect_timeout)
    return {
        "healthy": error is None,
        "status": "healthy" if error is None else "unhealthy",
        "latency_ms": round((time.perf_counter() - started) * 1000, 3),
        "error": error,
    }


def _amqp_error(url: str, timeout: float) -> str | None:
    from kombu.connection import Connection

    try:
        with Connection(url, connect_timeout=timeout) as connection:  # type: ignore[no-untyped-call]  # kombu is unannotated here
            connection.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as e:  # noqa: BLE001 - any failure means "unreachable": reported, not raised
        return f"{type(e).__name__}: {e}"
    return None


# --- the OpenAPI document ------------------------------------------------------------------------


def _error_ref(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json_ref(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


_ADMIN_ERRORS: Final = {
    "401": _error_ref("No valid, unrevoked bearer token."),
    "403": _error_ref("The token lacks the revoker:admin scope."),
    "503": _error_ref("Redis cannot be reached (admin requests fail closed)."),
}
_OAUTH_FORM: Final = {
    "required": True,
    "content": {
        "application/x-www-form-urlencoded": {
            "schema": {
                "type": "object",
                "required": ["token"],
                "properties": {
                    "token": {"type": "string", "minLength": 1},
                    "token_type_hint": {
                        "type": "string",
                        "description": "access_token or refresh_token; other values ignored.",
                    },
                },
            }
        }
    },
}


def _job_schema() -> dict[str, Any]:
    from revoker.jobs import JobRecord

    return JobRecord.model_json_schema(ref_template="#/components/schemas/{model}")


def _job_post(kind: str, id_name: str, body: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": f"Enqueue a bulk revocation of a {kind}'s tokens",
            "operationId": f"enqueue_{kind}_revocation",
            "security": [{"bearer": [ADMIN_SCOPE]}],
            "parameters": [
                {
                    "name": id_name,
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH},
                }
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}
                },
            },
            "responses": {
                "202": _json_ref("Accepted: the job record.", "JobRecord"),
                "400": _error_ref("The body is not JSON."),
                "409": _error_ref("An identical job is pending or running (job_id names it)."),
                "413": _error_ref("The body is too large."),
                "415": _error_ref("The body is not application/json."),
                "422": _error_ref("The body or the id is invalid."),
                **_ADMIN_ERRORS,
            },
        }
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of every endpoint."""
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error", "error_description"],
            "properties": {
                "error": {"type": "string"},
                "error_description": {"type": "string"},
            },
        },
        "Introspection": {
            "type": "object",
            "required": ["active"],
            "properties": {
                "active": {"type": "boolean"},
                "sub": {"type": "string"},
                "jti": {"type": "string"},
                "exp": {"type": "integer"},
                "iat": {"type": "number"},
                "token_type": {"type": "string", "enum": ["access_token", "refresh_token"]},
                "scope": {"type": "string"},
                "client_id": {"type": "string"},
                "tenant": {"type": "string"},
                "family": {"type": "string"},
                "iss": {"type": "string"},
                "aud": {"type": "string"},
            },
        },
        "JobRecord": _job_schema(),
        "JobList": {
            "type": "object",
            "required": ["jobs"],
            "properties": {
                "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/JobRecord"}}
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "redis", "broker"],
            "properties": {
                "status": {"type": "string", "enum": ["ok", "unavailable"]},
                "redis": {"type": "object"},
                "broker": {"type": "object"},
            },
        },
    }
    for model in (TenantRevocationRequest, UserRevocationRequest):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    schemas.update(schemas["JobRecord"].pop("$defs", {}))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "revoker admin API",
            "version": _version(),
            "description": "Revoke JWTs (RFC 7009), introspect them (RFC 7662), run bulk "
            "revocation jobs. Admin endpoints need a bearer token with the "
            f"{ADMIN_SCOPE} scope issued by revoker.",
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/oauth/revoke": {
                "post": {
                    "summary": "Revoke a token (RFC 7009); a refresh token revokes its session",
                    "operationId": "revoke",
                    "requestBody": _OAUTH_FORM,
                    "responses": {
                        "200": {"description": "Revoked, already revoked, expired or unknown."},
                        "400": _error_ref("The form is malformed or lacks the token."),
                        "413": _error_ref("The body is too large."),
                        "503": _error_ref("Redis cannot be reached; nothing was revoked."),
                    },
                }
            },
            "/oauth/introspect": {
                "post": {
                    "summary": "Introspect a token (RFC 7662)",
                    "operationId": "introspect",
                    "security": [{"bearer": [ADMIN_SCOPE]}],
                    "requestBody": _OAUTH_FORM,
                    "responses": {
                        "200": _json_ref(
                            '{"active": false} alone for any invalid, expired or revoked '
                            "token; the claims of an active one.",
                            "Introspection",
                        ),
                        "400": _error_ref("The form is malformed or lacks the token."),
                        "413": _error_ref("The body is too large."),
                        **_ADMIN_ERRORS,
                    },
                }
            },
            "/jobs/tenants/{tenant_id}/revocations": _job_post(
                "tenant", "tenant_id", "TenantRevocationRequest"
            ),
            "/jobs/users/{user_id}/revocations": _job_post(
                "user", "user_id", "UserRevocationRequest"
            ),
            "/jobs/{job_id}": {
                "get": {
                    "summary": "One bulk job: status and progress",
                    "operationId": "get_job",
                    "security": [{"bearer": [ADMIN_SCOPE]}],
                    "parameters": [
                        {
                            "name": "job_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "minLength": 1},
                        }
                    ],
                    "responses": {
                        "200": _json_ref("The job record.", "JobRecord"),
                        "404": _error_ref("No such job (or it expired)."),
                        "422": _error_ref("The id is invalid."),
                        **_ADMIN_ERRORS,
                    },
                }
            },
            "/jobs": {
                "get": {
                    "summary": "Recent bulk jobs, newest first",
                    "operationId": "list_jobs",
                    "security": [{"bearer": [ADMIN_SCOPE]}],
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": MAX_JOB_LIST,
                                "default": 50,
                            },
                        },
                        {
                            "name": "status",
                            "in": "query",
                            "schema": {"type": "string", "enum": list(JOB_STATUSES)},
                        },
                    ],
                    "responses": {
                        "200": _json_ref("The jobs.", "JobList"),
                        "422": _error_ref("Invalid query parameters."),
                        **_ADMIN_ERRORS,
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "Redis and broker reachability",
                    "operationId": "health",
                    "responses": {
                        "200": _json_ref("Both reachable.", "Health"),
                        "503": _json_ref("Redis or the broker cannot be reached.", "Health"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "operationId": "metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
    }


def _version() -> str:
    from revoker import __version__

    return __version__


# --- the app -------------------------------------------------------------------------------------


def create_app(
    *,
    settings: RevokerSettings | None = None,
    store: RedisTokenRevocationStore | None = None,
) -> Starlette:
    """The admin API for ``settings`` (default: the process settings).

    ``store`` pins one async store (tests, embedding); by default the process-wide store of the
    running event loop is used.
    """
    settings = settings or (store.settings if store is not None else get_settings())
    api = _Api(settings, store)
    handler = Callable[[Request, Exception], Awaitable[Response]]
    handlers: dict[Any, handler] = {
        ApiError: _api_error,
        HTTPException: _http_error,
        ValidationError: _validation_error,
        exc.StoreUnavailable: _store_unavailable,
        # The jobs functions run redis-py directly; a dead Redis there is the same 503.
        RedisError: _store_unavailable,
        exc.InvalidIdentifier: _invalid_identifier,
        exc.JobNotFound: _job_not_found,
        exc.DuplicateJob: _duplicate_job,
        Exception: _server_error,
    }
    app = Starlette(
        routes=[
            Route("/oauth/revoke", api.revoke, methods=["POST"]),
            Route("/oauth/introspect", api.introspect, methods=["POST"]),
            Route("/jobs", api.list_jobs, methods=["GET"]),
            Route("/jobs/tenants/{tenant_id}/revocations", api.enqueue_tenant, methods=["POST"]),
            Route("/jobs/users/{user_id}/revocations", api.enqueue_user, methods=["POST"]),
            Route("/jobs/{job_id}", api.get_job, methods=["GET"]),
            Route("/health", api.health, methods=["GET"]),
            Route("/metrics", api.metrics, methods=["GET"]),
            Route("/openapi.json", api.openapi, methods=["GET"]),
        ],
        exception_handlers=handlers,
    )
    app.state.settings = settings
    return app


def serve(host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve the admin API with uvicorn until interrupted (``revoker api``)."""
    from revoker._extras import requires_extra

    with requires_extra("server", "revoker api"):
        import uvicorn

    uvicorn.run(create_app(), host=host, port=port, proxy_headers=False, server_header=False)
