"""The admin API's error answers: one JSON shape, and the exception handlers that produce it.

Every error is ``{"error": <code>, "error_description": <message>}`` plus, for some, extra members
(``errors`` of a validation failure, ``job_id`` of a duplicate job).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from pydantic import ValidationError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from revoker import exceptions as exc

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from revoker.settings import RevokerSettings

__all__ = ["EXCEPTION_HANDLERS", "NO_STORE", "ApiError"]

logger = logging.getLogger("revoker.api")

#: Headers of every answer that carries token data or a token-dependent verdict.
NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}


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
        # No error is cacheable: each depends on the credentials or the token presented (RFC 6749
        # §5.2 and RFC 7662 §2.3 answers carry no-store too).
        return JSONResponse(
            body, status_code=self.status_code, headers={**NO_STORE, **self.headers}
        )


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
        headers={"Retry-After": str(settings.retry_after_seconds), **NO_STORE},
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


Handler = Callable[["Request", Exception], Awaitable["Response"]]

#: The app's exception handlers: every failure becomes an error answer, never HTML or a traceback.
EXCEPTION_HANDLERS: Final[dict[Any, Handler]] = {
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
