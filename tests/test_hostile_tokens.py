"""Hostile tokens: JSON that cannot be read within bounds is refused, never a 500 or a traceback.

Every token here is signed with the test secret, so it is the header or the claims set that is
refused, not the signature: deep nesting, huge or non-finite numbers, bytes that are not UTF-8,
and repeated member names (which different JSON parsers resolve differently). Each goes through
the verifier, the middleware, the dependency, the admin API and the CLI. The Redis these need is
fakeredis: no token here gets as far as a lookup, except the genuine ones.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import fakeredis
import httpx
import jwt
import pytest
from click.testing import CliRunner
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from conftest import REDIS_URL, TEST_SECRET, make_settings
from revoker import dependencies
from revoker import exceptions as exc
from revoker.api import ADMIN_SCOPE, create_app
from revoker.check import RevocationChecker
from revoker.cli import EXIT_REVOKED_OR_INVALID, EXIT_USAGE, cli
from revoker.dependencies import require_valid_token
from revoker.middleware import TokenRevocationMiddleware
from revoker.settings import RevokerSettings, configure
from revoker.store import RedisTokenRevocationStore
from revoker.tokens import (
    MAX_JSON_DEPTH,
    MAX_TIMESTAMP,
    MAX_TOKEN_BYTES,
    TokenData,
    create_access_token,
    decode_token,
    generate_jti,
)

HEADER = b'{"alg":"HS256","typ":"JWT"}'
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(header: bytes, payload: bytes) -> str:
    """A compact JWS of exactly these header and payload bytes, HS256 with the test secret."""
    signing_input = f"{b64(header)}.{b64(payload)}"
    mac = hmac.new(TEST_SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{b64(mac)}"
    assert len(token) <= MAX_TOKEN_BYTES, "the case must be refused for its JSON, not its size"
    return token


def claims(*extra: bytes, **values: bytes) -> bytes:
    """The JSON text of a valid access-token claims set, with raw ``values`` replacing members
    and raw ``extra`` members appended (so repeated names and odd numbers survive as written)."""
    now = time.time()
    members: dict[str, bytes] = {
        "sub": b'"alice"',
        "jti": f'"{generate_jti()}"'.encode(),
        "typ": b'"access"',
        "iat": repr(now).encode(),
        "exp": b"4102444800",  # 2100: collected tokens stay unexpired however long the run
    }
    members.update(values)
    parts = [b'"' + name.encode() + b'":' + value for name, value in members.items()]
    return b"{" + b",".join([*parts, *extra]) + b"}"


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


#: (id, header, payload, error): JSON the verifier refuses to read, one log line each.
HOSTILE: list[tuple[str, bytes, bytes, type[exc.TokenError]]] = [
    # nesting: the issue's 5,000 `[`, and deep JSON that would otherwise parse
    ("header-5000-brackets", b"[" * 5000, claims(), exc.MalformedToken),
    ("header-5000-braces", b"{" * 5000, claims(), exc.MalformedToken),
    ("header-deep-objects", b'{"a":' * 1000, claims(), exc.MalformedToken),
    (
        "header-deep-valid-json",
        HEADER[:-1] + b',"x":' + nested(2000) + b"}",
        claims(),
        exc.MalformedToken,
    ),
    ("payload-5000-brackets", HEADER, claims(x=b"[" * 5000), exc.MalformedToken),
    ("payload-5000-braces", HEADER, claims(x=b"{" * 5000), exc.MalformedToken),
    (
        "payload-deep-objects",
        HEADER,
        claims(x=b'{"a":' * 900 + b"1" + b"}" * 900),
        exc.MalformedToken,
    ),
    ("payload-deep-valid-json", HEADER, claims(x=nested(2500)), exc.MalformedToken),
    ("payload-one-level-too-deep", HEADER, claims(x=nested(MAX_JSON_DEPTH)), exc.MalformedToken),
    # numbers: over Python's 4,300-digit limit, over ours, and not finite
    ("exp-5000-digits", HEADER, claims(exp=b"9" * 5000), exc.MalformedToken),
    ("exp-25-digits", HEADER, claims(exp=b"9" * 25), exc.MalformedToken),
    ("exp-1e999", HEADER, claims(exp=b"1e999"), exc.MalformedToken),
    ("iat-minus-1e999", HEADER, claims(iat=b"-1e999"), exc.MalformedToken),
    ("exp-NaN", HEADER, claims(exp=b"NaN"), exc.MalformedToken),
    ("exp-Infinity", HEADER, claims(exp=b"Infinity"), exc.MalformedToken),
    (
        "header-5000-digits",
        HEADER[:-1] + b',"x":' + b"9" * 5000 + b"}",
        claims(),
        exc.MalformedToken,
    ),
    # text: not UTF-8, or not encodable as UTF-8
    ("header-invalid-utf8", b'{"alg":"HS256","typ":"JWT\xff"}', claims(), exc.MalformedToken),
    ("header-utf16", HEADER.decode().encode("utf-16"), claims(), exc.MalformedToken),
    ("header-utf8-bom", b"\xef\xbb\xbf" + HEADER, claims(), exc.MalformedToken),
    ("payload-invalid-utf8", HEADER, claims(name=b'"\xc3\x28"'), exc.MalformedToken),
    # UTF-8-encoded surrogates: json.loads(bytes) would take them ("surrogatepass")
    ("payload-utf8-surrogate", HEADER, claims(name=b'"\xed\xa0\x80"'), exc.MalformedToken),
    ("payload-utf16", HEADER, claims().decode().encode("utf-16-le"), exc.MalformedToken),
    ("header-lone-surrogate", b'{"alg":"HS256","typ":"JWT\\ud800"}', claims(), exc.MalformedToken),
    ("payload-lone-surrogate", HEADER, claims(scope=b'"read \\udc00"'), exc.InvalidClaim),
    # repeated names: every parser must read the same token
    ("header-duplicate-alg", b'{"alg":"none","alg":"HS256"}', claims(), exc.MalformedToken),
    ("header-duplicate-alg-last", b'{"alg":"HS256","alg":"none"}', claims(), exc.MalformedToken),
    ("header-duplicate-kid", b'{"alg":"HS256","kid":"a","kid":"b"}', claims(), exc.MalformedToken),
    ("payload-duplicate-sub", HEADER, claims(b'"sub":"mallory"'), exc.MalformedToken),
    ("payload-duplicate-exp", HEADER, claims(b'"exp":4102444800'), exc.MalformedToken),
    ("payload-duplicate-jti", HEADER, claims(b'"jti":"another"'), exc.MalformedToken),
    ("payload-duplicate-typ", HEADER, claims(b'"typ":"refresh"'), exc.MalformedToken),
    ("payload-duplicate-nested", HEADER, claims(b'"ctx":{"a":1,"a":2}'), exc.MalformedToken),
]
HOSTILE_IDS = [case[0] for case in HOSTILE]

#: (id, payload): JSON that reads fine, with times no date (nor Redis TTL) can hold.
OUT_OF_RANGE: list[tuple[str, bytes]] = [
    ("exp-1e300", claims(exp=b"1e300")),
    ("exp-year-10000", claims(exp=str(MAX_TIMESTAMP + 1).encode())),
    ("exp-20-digits", claims(exp=b"9" * 20)),
    ("iat-negative", claims(iat=b"-1e300")),
    ("nbf-negative", claims(nbf=b"-1e300")),
    ("nbf-below-zero", claims(nbf=b"-1")),
    ("nbf-true", claims(nbf=b"true")),
]
OUT_OF_RANGE_IDS = [case[0] for case in OUT_OF_RANGE]


@pytest.fixture
def hs() -> RevokerSettings:
    return make_settings()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every record from every logger, from DEBUG up."""
    caplog.set_level(logging.DEBUG)
    return caplog


def assert_one_line(caplog: pytest.LogCaptureFixture, lines: int = 1) -> None:
    """revoker logged ``lines`` records, and no logger logged a traceback."""
    ours = [r for r in caplog.records if r.name.startswith("revoker")]
    assert len(ours) == lines, [r.getMessage() for r in ours]
    assert all(r.exc_info is None and r.levelno <= logging.INFO for r in ours)
    assert not any(r.exc_info for r in caplog.records)
    assert "Traceback" not in caplog.text


def genuine(settings: RevokerSettings, *scopes: str) -> str:
    token, _ = create_access_token("alice", scopes=scopes, settings=settings)
    return token


def fake_store(settings: RevokerSettings) -> RedisTokenRevocationStore:
    return RedisTokenRevocationStore(fakeredis.aioredis.FakeRedis(), settings=settings)


def asgi_client(app: Any) -> httpx.AsyncClient:
    # As a server would: an exception escaping the app becomes a 500, not a test error.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://svc.test")


# --- the verifier ------------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "payload", "error"), [c[1:] for c in HOSTILE], ids=HOSTILE_IDS)
def test_verifier_refuses_json_out_of_bounds(
    hs: RevokerSettings,
    logs: pytest.LogCaptureFixture,
    header: bytes,
    payload: bytes,
    error: type[exc.TokenError],
) -> None:
    """Each hostile header or claims set is a TokenError of the expected class, logged once."""
    with pytest.raises(exc.TokenError) as raised:
        decode_token(sign(header, payload), settings=hs)
    assert type(raised.value) is error, raised.value
    assert_one_line(logs)
    assert logs.records[-1].getMessage() == f"token rejected: {raised.value}"


@pytest.mark.parametrize("payload", [c[1] for c in OUT_OF_RANGE], ids=OUT_OF_RANGE_IDS)
def test_verifier_refuses_times_out_of_range(hs: RevokerSettings, payload: bytes) -> None:
    """An exp, iat or nbf that no date can hold is InvalidClaim (it would break Redis TTLs,
    dates and introspection's integers)."""
    with pytest.raises(exc.InvalidClaim, match="out of range"):
        decode_token(sign(HEADER, payload), settings=hs)


def test_bounds_are_not_tighter_than_they_say(hs: RevokerSettings) -> None:
    """Nesting of exactly MAX_JSON_DEPTH, 20-digit integers, brackets inside strings and a
    surrogate pair escaped (PyJWT writes non-ASCII that way) all verify."""
    payload = claims(
        x=nested(MAX_JSON_DEPTH - 1),
        big=b"-" + b"9" * 20,
        text=json.dumps("[" * 100 + '{"' * 100).encode(),
        name=json.dumps("José 😀").encode(),
    )
    data = decode_token(sign(HEADER, payload), settings=hs)
    assert data.sub == "alice"
    token = jwt.encode(
        {**json.loads(claims()), "name": "José 😀", "roles": [["a"]]}, TEST_SECRET, "HS256"
    )
    assert decode_token(token, settings=hs).sub == "alice"


def test_depth_scan_is_linear_on_adversarial_strings(hs: RevokerSettings) -> None:
    """A header built to make a backtracking string scan quadratic is refused at once."""
    for body in (b'"\\' * 2900, b'"\\"' * 1900, b'"a' * 2900):
        header = b"[" * (MAX_JSON_DEPTH + 1) + body
        started = time.perf_counter()
        with pytest.raises(exc.MalformedToken):
            decode_token(sign(header, claims()), settings=hs)
        # Linear is well under a millisecond here; quadratic was about 0.2 s.
        assert time.perf_counter() - started < 0.05


# --- the middleware and the dependency --------------------------------------------------------


async def whoami(request: Request) -> JSONResponse:
    return JSONResponse({"sub": request.state.token.sub})


@pytest.fixture
async def middleware_client(hs: RevokerSettings) -> AsyncIterator[httpx.AsyncClient]:
    """A service behind TokenRevocationMiddleware (require_token), Redis being fakeredis."""
    store = fake_store(hs)
    app = TokenRevocationMiddleware(
        Starlette(routes=[Route("/me", whoami)]), store=store, require_token=True
    )
    async with asgi_client(app) as client:
        yield client
    await store.aclose()


@pytest.mark.parametrize(("header", "payload"), [c[1:3] for c in HOSTILE], ids=HOSTILE_IDS)
async def test_middleware_answers_401_with_one_log_line(
    hs: RevokerSettings,
    middleware_client: httpx.AsyncClient,
    logs: pytest.LogCaptureFixture,
    header: bytes,
    payload: bytes,
) -> None:
    """The middleware answers a hostile token 401 invalid_token; one log line, no traceback."""
    response = await middleware_client.get(
        "/me", headers={"Authorization": f"Bearer {sign(header, payload)}"}
    )
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert response.json()["error"] == "invalid_token"
    assert_one_line(logs)
    ok = await middleware_client.get("/me", headers={"Authorization": f"Bearer {genuine(hs)}"})
    assert (ok.status_code, ok.json()) == (200, {"sub": "alice"})


@pytest.mark.parametrize("payload", [c[1] for c in OUT_OF_RANGE], ids=OUT_OF_RANGE_IDS)
async def test_middleware_answers_401_to_times_out_of_range(
    middleware_client: httpx.AsyncClient, logs: pytest.LogCaptureFixture, payload: bytes
) -> None:
    """Out-of-range times are a 401 (once admitted, they broke Redis TTLs and CLI dates)."""
    response = await middleware_client.get(
        "/me", headers={"Authorization": f"Bearer {sign(HEADER, payload)}"}
    )
    assert response.status_code == 401, response.text
    assert_one_line(logs, lines=0)


@pytest.fixture
def dependency_client(hs: RevokerSettings, monkeypatch: pytest.MonkeyPatch) -> httpx.AsyncClient:
    """A FastAPI route guarded by Depends(require_valid_token), without the middleware."""
    configure(hs)  # the dependency's checker serves the process settings
    monkeypatch.setattr(dependencies, "_checker", RevocationChecker(fake_store(hs)))
    app = FastAPI()

    @app.get("/me")
    async def me(token: Annotated[TokenData, Depends(require_valid_token)]) -> dict[str, Any]:
        return {"sub": token.sub}

    return asgi_client(app)


@pytest.mark.parametrize(("header", "payload"), [c[1:3] for c in HOSTILE], ids=HOSTILE_IDS)
async def test_dependency_answers_401_with_one_log_line(
    hs: RevokerSettings,
    dependency_client: httpx.AsyncClient,
    logs: pytest.LogCaptureFixture,
    header: bytes,
    payload: bytes,
) -> None:
    """require_valid_token answers a hostile token 401 invalid_token; one log line."""
    async with dependency_client as client:
        response = await client.get(
            "/me", headers={"Authorization": f"Bearer {sign(header, payload)}"}
        )
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
        assert_one_line(logs)
        ok = await client.get("/me", headers={"Authorization": f"Bearer {genuine(hs)}"})
        assert (ok.status_code, ok.json()) == (200, {"sub": "alice"})


# --- the admin API -----------------------------------------------------------------------------


@pytest.fixture
async def api_client(hs: RevokerSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The admin API, its store on fakeredis."""
    store = fake_store(hs)
    async with asgi_client(create_app(store=store)) as client:
        yield client
    await store.aclose()


@pytest.mark.parametrize(
    ("header", "payload", "reads_logged"),
    [(*c[1:3], 1) for c in HOSTILE] + [(HEADER, c[1], 0) for c in OUT_OF_RANGE],
    ids=HOSTILE_IDS + OUT_OF_RANGE_IDS,
)
async def test_admin_api_oauth_endpoints_stay_calm(
    hs: RevokerSettings,
    api_client: httpx.AsyncClient,
    logs: pytest.LogCaptureFixture,
    header: bytes,
    payload: bytes,
    reads_logged: int,
) -> None:
    """/oauth/revoke answers RFC 7009's 200, /oauth/introspect {"active": false}, a hostile
    admin bearer 401; each read of the token is at most one log line, never a traceback."""
    token = sign(header, payload)
    for hint in ("access_token", "refresh_token"):
        revoked = await api_client.post(
            "/oauth/revoke", data={"token": token, "token_type_hint": hint}, headers=FORM
        )
        assert revoked.status_code == 200, revoked.text
    admin = {"Authorization": f"Bearer {genuine(hs, ADMIN_SCOPE)}", **FORM}
    introspected = await api_client.post("/oauth/introspect", data={"token": token}, headers=admin)
    assert (introspected.status_code, introspected.json()) == (200, {"active": False})
    as_admin = {"Authorization": f"Bearer {token}", **FORM}
    refused = await api_client.post("/oauth/introspect", data={"token": token}, headers=as_admin)
    assert refused.status_code == 401, refused.text
    # Four reads: two revocations, one introspection, one admin bearer.
    assert_one_line(logs, lines=4 * reads_logged)


# --- the CLI -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [sign(*c[1:3]) for c in HOSTILE] + [sign(HEADER, c[1]) for c in OUT_OF_RANGE],
    ids=HOSTILE_IDS + OUT_OF_RANGE_IDS,
)
def test_cli_check_calls_it_invalid(hs: RevokerSettings, token: str) -> None:
    """`revoker check` says invalid and why, exit 1 as for any invalid token, no traceback."""
    configure(hs)
    result = CliRunner().invoke(cli, ["check", token])
    assert result.exit_code == EXIT_REVOKED_OR_INVALID, result.output
    assert result.output.startswith("invalid: token "), result.output
    assert "Traceback" not in result.output
    as_json = CliRunner().invoke(cli, ["check", "--json", token])
    assert as_json.exit_code == EXIT_REVOKED_OR_INVALID, as_json.output
    body = json.loads(as_json.output)
    assert body["valid"] is False
    assert body["error"] in ("MalformedToken", "InvalidClaim")


#: The cases the bounded reader refuses (the others read fine and fail a claim rule later).
UNREADABLE = [case for case in HOSTILE if case[3] is exc.MalformedToken]


@pytest.mark.parametrize("command", ["token", "family"])
@pytest.mark.parametrize(
    "token", [sign(*c[1:3]) for c in UNREADABLE], ids=[c[0] for c in UNREADABLE]
)
def test_cli_revoke_refuses_it_in_one_line(
    hs: RevokerSettings, monkeypatch: pytest.MonkeyPatch, command: str, token: str
) -> None:
    """`revoker revoke token|family` given a token it cannot read: the usage exit, one line
    saying why, no traceback, and nothing is revoked (the store is never reached)."""
    configure(hs)

    def no_store() -> None:
        raise AssertionError("a token that cannot be read reached the store")

    monkeypatch.setattr("revoker.cli.revoke.cli_store", no_store)
    result = CliRunner().invoke(cli, ["revoke", command, token, "--reason", "hostile"])
    assert result.exit_code == EXIT_USAGE, result.output
    assert result.output.startswith("Error: refusing to revoke: token "), result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # click's exit, no error


def test_cli_check_of_the_issues_token_in_a_real_process(hs: RevokerSettings) -> None:
    """The issue's 5,000-`[` header, typed at a shell: "invalid: ...", exit 1, clean stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVOKER_")}
    env.update(
        REVOKER_REDIS_URL=REDIS_URL,
        REVOKER_KEY_PREFIX=hs.key_prefix,
        REVOKER_JWT_SECRET=TEST_SECRET,
        REVOKER_JWT_ALGORITHM="HS256",
    )
    result = subprocess.run(
        [sys.executable, "-m", "revoker", "check", sign(b"[" * 5000, claims())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == EXIT_REVOKED_OR_INVALID, result.stdout + result.stderr
    assert result.stdout.startswith("invalid: token header has nesting deeper than")
    assert result.stderr == ""
