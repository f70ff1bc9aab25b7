"""Reading an admin API request: a size-capped body, an OAuth form, a JSON document, a path id.

Each failure is an :class:`~revoker.api.errors.ApiError` saying what is wrong with the request.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl

from revoker.api.errors import ApiError
from revoker.keys import MAX_ID_LENGTH

if TYPE_CHECKING:
    from starlette.requests import Request

__all__ = ["MAX_BODY_BYTES", "path_id", "read_form", "read_json"]

#: Request bodies are small (a token, or a job request); anything larger is refused unread.
MAX_BODY_BYTES: Final = 64 * 1024


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


async def read_form(request: Request) -> dict[str, str]:
    """An OAuth form body (RFC 6749 §3.2): urlencoded, UTF-8, no repeated parameter, a token."""
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


async def read_json(request: Request) -> Any:
    """A JSON body (an empty one reads as ``{}``); NaN and Infinity are not JSON."""
    if _media_type(request) != "application/json":
        raise ApiError(415, "unsupported_media_type", "the body must be application/json")
    raw = await _body(request)
    if not raw.strip():
        return {}
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_request", "the body is not valid JSON") from None


def path_id(request: Request, name: str) -> str:
    """The path parameter ``name``, refused (422) when no key could hold it."""
    value = str(request.path_params[name])
    if not 0 < len(value) <= MAX_ID_LENGTH:
        raise ApiError(422, "invalid_request", f"{name} must be 1 to {MAX_ID_LENGTH} characters")
    return value
