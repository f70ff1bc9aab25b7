"""Hypothesis fuzz of raw Authorization headers through a real Starlette app and the middleware.

The ASGI app is driven with crafted scopes, so header bytes no HTTP client would send (NUL,
CR/LF, non-ASCII, 8 KiB+) reach the middleware exactly as a lenient server could pass them.
Every answer must be 200 or 401 as the rules say, never a 5xx or an exception.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from conftest import make_settings
from revoker.middleware import TokenRevocationMiddleware
from revoker.store import RedisTokenRevocationStore
from revoker.tokens import MAX_TOKEN_BYTES, create_access_token

VALID = b"<valid>"
REVOKED = b"<revoked>"

special_values = st.sampled_from(
    [
        b"",
        b" ",
        b"Bearer",
        b"Bearer ",
        b"bearer",
        b"Bearer  x",
        b"Bearer \x00",
        b"Bearer a\x00b",
        b"Bearer x\r\nX-Injected: 1",
        b"Bearer \xff\xfe\xfd",
        b"Bearer " + "jwt-\u00e9\u4e2d".encode(),
        b"Bearer a.b.c",
        b"Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
        b"Basic " + b"A" * 20,
        b"Bearer " + b"A" * (MAX_TOKEN_BYTES + 1),
        b"Bearer " + VALID,
        b"Bearer  " + VALID + b"  ",
        b"bEaReR " + VALID,
        b"Bearer " + VALID + b"x",
        b"Bearer " + REVOKED,
        VALID,
    ]
)
values = st.one_of(
    special_values,
    st.binary(max_size=200),
    st.binary(max_size=200).map(lambda b: b"Bearer " + b),
    st.text(max_size=80).map(lambda t: b"Bearer " + t.encode("utf-8", "surrogatepass")),
    st.integers(MAX_TOKEN_BYTES - 20, MAX_TOKEN_BYTES + 20).map(lambda n: b"Bearer " + b"a" * n),
)
auth_names = st.sampled_from([b"authorization", b"Authorization", b"AUTHORIZATION"])
other_headers = st.tuples(
    st.sampled_from([b"host", b"x-forwarded-for", b"cookie"]), st.binary(max_size=10)
)
headers_strategy = st.lists(
    st.one_of(st.tuples(auth_names, values), other_headers), max_size=4
).map(lambda pairs: list(pairs))


class Harness:
    """One event loop, one app, a valid and a revoked token; drives single requests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.settings = make_settings()
        self.store = RedisTokenRevocationStore(
            fakeredis.aioredis.FakeRedis(), settings=self.settings
        )
        self.valid, _ = create_access_token("fuzz", settings=self.settings)
        self.revoked, jti = create_access_token("fuzz", settings=self.settings)
        self.loop.run_until_complete(self.store.revoke_token(jti=jti))

        async def me(request: Request) -> JSONResponse:
            token = getattr(request.state, "token", None)
            return JSONResponse({"sub": token.sub if token else None})

        self.app = Starlette(
            routes=[Route("/me", me)],
            middleware=[Middleware(TokenRevocationMiddleware, store=self.store)],
        )

    def substitute(self, value: bytes) -> bytes:
        return value.replace(VALID, self.valid.encode()).replace(REVOKED, self.revoked.encode())

    def request(self, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[bytes, bytes], bytes]:
        return self.loop.run_until_complete(self._request(headers))

    async def _request(
        self, headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/me",
            "raw_path": b"/me",
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 80),
            "state": {},
        }
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        start = sent[0]
        assert start["type"] == "http.response.start"
        body = b"".join(m.get("body", b"") for m in sent[1:])
        return start["status"], dict(start["headers"]), body

    def close(self) -> None:
        self.loop.run_until_complete(self.store.aclose())
        self.loop.close()


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    """A module-wide harness: building the app once keeps 300 examples fast."""
    h = Harness()
    yield h
    h.close()


def expected(harness: Harness, headers: list[tuple[bytes, bytes]]) -> tuple[int, str | None]:
    """What RFC 6750 and our rules say: (status, sub seen by the app)."""
    auth = [v for n, v in headers if n.lower() == b"authorization"]
    if not auth:
        return 200, None
    if len(auth) > 1 or len(auth[0]) > MAX_TOKEN_BYTES:
        return 401, None
    scheme, _, credentials = auth[0].strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return 200, None
    if credentials.strip() == harness.valid.encode():
        return 200, "fuzz"
    return 401, None


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(raw=headers_strategy)
def test_authorization_headers_never_5xx(harness: Harness, raw: list[tuple[bytes, bytes]]) -> None:
    """Any Authorization header(s): 200 or 401 exactly as the rules say, with a clean challenge."""
    headers = [(name, harness.substitute(value)) for name, value in raw]
    status, response_headers, body = harness.request(headers)
    assert status < 500
    assert (status, json.loads(body).get("sub")) == expected(harness, headers)
    for value in response_headers.values():
        assert b"\r" not in value
        assert b"\n" not in value
        assert b"\x00" not in value
    if status == 401:
        assert response_headers[b"www-authenticate"].startswith(b'Bearer error="invalid_token"')
        assert json.loads(body)["error"] == "invalid_token"
