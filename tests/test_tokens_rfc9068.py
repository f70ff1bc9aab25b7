"""RFC 9068 JWT access tokens (REVOKER_ACCESS_TOKEN_PROFILE=rfc9068), issued and verified here and
accepted by a validator nobody here wrote: Authlib's JWTBearerTokenValidator."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from authlib.oauth2.rfc6750.errors import InsufficientScopeError
from authlib.oauth2.rfc6750.errors import InvalidTokenError as AuthlibInvalidToken
from authlib.oauth2.rfc9068 import JWTBearerTokenValidator

from conftest import TEST_SECRET, make_settings
from revoker import exceptions as exc
from revoker.rules import decide, encode_mark, to_us
from revoker.settings import RevokerSettings
from revoker.tokens import (
    ISSUED_AT_US_CLAIM,
    TokenVerifier,
    create_access_token,
    create_refresh_token,
)

ISSUER = "https://auth.example.com"
AUDIENCE = "https://api.example.com"


@pytest.fixture
def rfc9068() -> RevokerSettings:
    """Settings issuing RFC 9068 access tokens."""
    return make_settings(issuer=ISSUER, audience=AUDIENCE, access_token_profile="rfc9068")


class Validator(JWTBearerTokenValidator):  # type: ignore[misc]
    """Authlib's RFC 9068 validator with our HMAC secret as its one key."""

    def get_jwks(self) -> dict[str, Any]:
        k = base64.urlsafe_b64encode(TEST_SECRET.encode()).rstrip(b"=").decode()
        return {"keys": [{"kty": "oct", "k": k, "alg": "HS256"}]}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def resign(token: str, header: dict[str, Any] | None = None, **claims: Any) -> str:
    """``token`` with header fields and claims changed, signed again with the test secret."""
    head, body, _ = token.split(".")
    h = {**json.loads(base64.urlsafe_b64decode(head + "==")), **(header or {})}
    c = {**json.loads(base64.urlsafe_b64decode(body + "==")), **claims}
    c = {k: v for k, v in c.items() if v is not None}
    signing_input = f"{b64(json.dumps(h).encode())}.{b64(json.dumps(c).encode())}"
    mac = hmac.new(TEST_SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_authlib_jwt_bearer_validator_accepts_our_token(rfc9068: RevokerSettings) -> None:
    """Authlib's JWTBearerTokenValidator authenticates and validates a token we just issued."""
    token, jti = create_access_token(
        "alice", client_id="app-1", scopes=("read", "write"), settings=rfc9068
    )
    validator = Validator(issuer=ISSUER, resource_server=AUDIENCE)
    claims = validator.authenticate_token(token)
    validator.validate_token(claims, ["read"], None)  # raises when anything is off
    assert (claims["client_id"], claims["sub"], claims["jti"]) == ("app-1", "alice", jti)
    assert claims.header["typ"] == "at+jwt"
    # ...and it is a real check: another resource server, or a scope not granted, is refused.
    other = Validator(issuer=ISSUER, resource_server="https://elsewhere")
    elsewhere = other.authenticate_token(token)
    with pytest.raises(AuthlibInvalidToken):
        other.validate_token(elsewhere, [], None)
    with pytest.raises(InsufficientScopeError):
        validator.validate_token(claims, ["admin"], None)


def test_issued_token_has_the_rfc9068_shape(rfc9068: RevokerSettings) -> None:
    """Header typ at+jwt; iss, aud, sub, client_id, exp, iat (whole seconds), jti all present."""
    token, _ = create_access_token("alice", client_id="app-1", settings=rfc9068)
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"
    claims = jwt.decode(token, options={"verify_signature": False})
    for name in ("iss", "aud", "sub", "client_id", "exp", "iat", "jti"):
        assert name in claims
    assert isinstance(claims["iat"], int)
    assert claims[ISSUED_AT_US_CLAIM] // 1_000_000 == claims["iat"]
    data = TokenVerifier(rfc9068).decode(token)
    assert data.client == "app-1"
    assert to_us(data.iat) == claims[ISSUED_AT_US_CLAIM]  # exact µs, as the default profile


def test_ordering_stays_exact_to_the_microsecond(rfc9068: RevokerSettings) -> None:
    """A whole-second iat does not make a token issued after a watermark in that second revoked."""
    token, _ = create_access_token("alice", client_id="app-1", settings=rfc9068)
    data = TokenVerifier(rfc9068).decode(token)
    just_before = encode_mark(to_us(data.iat) - 1, "x")
    assert not decide(data.iat, [None, None, just_before, None]).revoked
    assert decide(data.iat, [None, None, encode_mark(to_us(data.iat), "x"), None]).revoked


@pytest.mark.parametrize(
    ("header", "claims", "error"),
    [
        ({"typ": "JWT"}, {}, exc.InvalidClaim),  # no at+jwt: not an RFC 9068 access token
        ({}, {"client_id": None}, exc.MissingClaim),
        ({}, {"aud": None}, exc.MissingClaim),
        ({}, {ISSUED_AT_US_CLAIM: 1}, exc.InvalidClaim),  # exact time disagreeing with iat
        ({}, {ISSUED_AT_US_CLAIM: "1"}, exc.InvalidClaim),
    ],
)
def test_verifier_refuses_what_rfc9068_forbids(
    rfc9068: RevokerSettings, header: dict[str, Any], claims: dict[str, Any], error: type
) -> None:
    """Without at+jwt, client_id or aud, or with a forged exact time, the token is refused."""
    token, _ = create_access_token("alice", client_id="app-1", settings=rfc9068)
    with pytest.raises(error):
        TokenVerifier(rfc9068).decode(resign(token, header, **claims))


def test_media_type_form_of_typ_is_accepted(rfc9068: RevokerSettings) -> None:
    """RFC 9068 §4: `application/at+jwt` (any case) is the same type."""
    token, _ = create_access_token("alice", client_id="app-1", settings=rfc9068)
    assert TokenVerifier(rfc9068).decode(resign(token, {"typ": "Application/AT+JWT"})).sub == (
        "alice"
    )


def test_refresh_tokens_are_not_at_jwt(rfc9068: RevokerSettings) -> None:
    """Refresh tokens keep revoker's form; one claiming at+jwt is refused as a refresh token."""
    token, _, _ = create_refresh_token("alice", client_id="app-1", settings=rfc9068)
    verifier = TokenVerifier(rfc9068)
    assert jwt.get_unverified_header(token)["typ"] == "JWT"
    assert verifier.decode(token, "refresh").typ == "refresh"
    with pytest.raises(exc.WrongTokenType):
        verifier.decode(token, "access")
    with pytest.raises(exc.InvalidClaim, match="at\\+jwt"):
        verifier.decode(resign(token, {"typ": "at+jwt"}), "refresh")


def test_access_token_needs_a_client_id(rfc9068: RevokerSettings) -> None:
    """RFC 9068 §2.2 requires client_id: issuing without one is a clear error."""
    with pytest.raises(ValueError, match="client_id"):
        create_access_token("alice", settings=rfc9068)


def test_profile_needs_issuer_and_audience() -> None:
    """The setting refuses to start without REVOKER_ISSUER and REVOKER_AUDIENCE."""
    with pytest.raises(ValueError, match="REVOKER_ISSUER and REVOKER_AUDIENCE"):
        make_settings(issuer=ISSUER, access_token_profile="rfc9068")


def test_default_profile_unchanged() -> None:
    """Without the setting: header typ JWT, fractional iat, no client_id needed."""
    s = make_settings()
    token, _ = create_access_token("alice", settings=s)
    assert jwt.get_unverified_header(token)["typ"] == "JWT"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert ISSUED_AT_US_CLAIM not in claims
    assert TokenVerifier(s).decode(token).sub == "alice"
