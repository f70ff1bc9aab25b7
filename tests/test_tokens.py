"""Issuing and verifying tokens: HMAC, RSA and EC keys from PEM files, and a JWKS over real HTTP."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conftest import make_settings
from revoker import exceptions as exc
from revoker import tokens
from revoker.rules import to_us
from revoker.settings import RevokerSettings
from revoker.tokens import (
    TokenData,
    create_access_token,
    create_refresh_token,
    decode_token,
    generate_jti,
    get_verifier,
)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def new_key(alg: str) -> PrivateKey:
    """A fresh private key for ``alg`` (RS256 or ES256)."""
    if alg.startswith("RS"):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def write_pem(path: Path, key: PrivateKey, *, private: bool) -> Path:
    """Write ``key`` (or its public half) as PEM to ``path``."""
    if private:
        data = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    else:
        data = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    path.write_bytes(data)
    return path


def asymmetric_settings(tmp_path: Path, alg: str, key: PrivateKey, **extra: Any) -> RevokerSettings:
    """Issuer settings signing with ``key`` read from a PEM file."""
    return make_settings(
        jwt_algorithm=alg,
        jwt_secret=None,
        jwt_private_key_file=write_pem(tmp_path / f"{alg}-private.pem", key, private=True),
        **extra,
    )


# --- HMAC round trips -----------------------------------------------------------------------


def test_generate_jti_is_random_and_url_safe() -> None:
    """jtis are 22 URL-safe characters and never repeat."""
    jtis = {generate_jti() for _ in range(1000)}
    assert len(jtis) == 1000
    assert all(len(j) == 22 and j.replace("-", "").replace("_", "").isalnum() for j in jtis)


def test_generated_ids_never_look_like_a_command_line_option() -> None:
    """10,000 jtis (also used as family ids): none starts with '-', which a CLI would misread."""
    assert not any(generate_jti().startswith("-") for _ in range(10_000))


def test_access_token_round_trip_carries_every_claim() -> None:
    """An access token decodes to the claims it was issued with."""
    s = make_settings()
    before = time.time()
    token, jti = create_access_token(
        "alice",
        tenant_id="acme",
        family_id="fam-1",
        scopes=("read", "write"),
        client_id="web",
        settings=s,
    )
    data = decode_token(token, settings=s)
    assert isinstance(data, TokenData)
    assert (data.sub, data.user_id, data.jti, data.typ) == ("alice", "alice", jti, "access")
    assert (data.tenant, data.tenant_id, data.family, data.family_id) == (
        "acme",
        "acme",
        "fam-1",
        "fam-1",
    )
    assert data.scopes == ("read", "write")
    assert data.client == "web"
    assert before <= data.iat <= time.time()
    assert data.exp - data.iat == pytest.approx(s.access_token_ttl, abs=1)


def test_tenantless_access_token_has_no_optional_claims() -> None:
    """Without tenant, family, scopes or client the token carries none of them."""
    s = make_settings()
    token, _ = create_access_token("bob", settings=s)
    payload = jwt.decode(token, options={"verify_signature": False})
    assert not {"tenant", "fam", "scope", "client_id"} & set(payload)
    data = decode_token(token, settings=s)
    assert (data.tenant, data.family, data.scopes, data.client) == (None, None, (), None)


def test_refresh_token_starts_a_new_family_or_keeps_the_given_one() -> None:
    """create_refresh_token returns a new family per call, or the one passed in."""
    s = make_settings()
    token, jti, family = create_refresh_token("alice", tenant_id="acme", settings=s)
    _, _, other_family = create_refresh_token("alice", tenant_id="acme", settings=s)
    assert family != other_family
    data = decode_token(token, "refresh", settings=s)
    assert (data.typ, data.jti, data.family, data.tenant) == ("refresh", jti, family, "acme")
    assert data.exp - data.iat == pytest.approx(s.refresh_token_ttl, abs=1)
    _, _, kept = create_refresh_token("alice", family_id="fam-x", settings=s)
    assert kept == "fam-x"


def test_iat_has_microsecond_precision() -> None:
    """iat carries microseconds that survive the JSON round trip exactly."""
    s = make_settings()
    iats = []
    for _ in range(50):
        token, _ = create_access_token("alice", settings=s)
        iat = decode_token(token, settings=s).iat
        assert to_us(iat) / 1e6 == iat
        iats.append(to_us(iat))
    # Whole-second iats would make almost all of these equal; microseconds make them distinct.
    assert len(set(iats)) > 1
    assert any(us % 1_000_000 for us in iats)


@pytest.mark.parametrize("delta", [timedelta(minutes=5), 300, 300.0])
def test_expires_delta_sets_the_lifetime(delta: timedelta | float) -> None:
    """expires_delta (timedelta or seconds) replaces the configured lifetime."""
    s = make_settings()
    token, _ = create_access_token("alice", expires_delta=delta, settings=s)
    data = decode_token(token, settings=s)
    assert data.exp - data.iat == pytest.approx(300, abs=1)


@pytest.mark.parametrize("delta", [0, -5, timedelta(seconds=-1)])
def test_non_positive_expires_delta_is_refused(delta: timedelta | float) -> None:
    """A lifetime of zero or less is a ValueError, not an already-expired token."""
    with pytest.raises(ValueError, match="expires_delta"):
        create_access_token("alice", expires_delta=delta, settings=make_settings())


@pytest.mark.parametrize("user_id", ["", None, 42, b"alice", "x" * 257, "\ud800"])
def test_bad_user_ids_are_invalid_identifiers(user_id: Any) -> None:
    """A user id no key could hold raises InvalidIdentifier (never a token that cannot verify)."""
    s = make_settings()
    with pytest.raises(exc.InvalidIdentifier):
        create_access_token(user_id, settings=s)
    with pytest.raises(exc.InvalidIdentifier):
        create_refresh_token(user_id, settings=s)


@pytest.mark.parametrize("field", ["tenant_id", "family_id", "client_id"])
def test_empty_optional_ids_are_invalid_identifiers(field: str) -> None:
    """An empty tenant, family or client id is refused rather than issued."""
    with pytest.raises(exc.InvalidIdentifier, match=field):
        create_access_token("alice", settings=make_settings(), **{field: ""})


@pytest.mark.parametrize("scope", ["", "two words"])
def test_bad_scopes_are_refused(scope: str) -> None:
    """Scopes are non-empty words: one with a space would split into two on decode."""
    with pytest.raises(ValueError, match="scope"):
        create_access_token("alice", scopes=[scope], settings=make_settings())


def test_token_of_another_secret_does_not_verify() -> None:
    """A token signed with a different HMAC secret is InvalidSignature."""
    token, _ = create_access_token("alice", settings=make_settings(jwt_secret="o" * 40))
    with pytest.raises(exc.InvalidSignature):
        decode_token(token, settings=make_settings())


def test_issuer_and_audience_are_issued_and_required() -> None:
    """Configured iss/aud are put in tokens and checked on decode."""
    s = make_settings(issuer="https://id.example", audience="api")
    token, _ = create_access_token("alice", settings=s)
    payload = jwt.decode(token, options={"verify_signature": False})
    assert (payload["iss"], payload["aud"]) == ("https://id.example", "api")
    assert decode_token(token, settings=s).sub == "alice"


def test_verify_cache_returns_the_same_claims_and_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The verification cache serves repeated tokens (no second verification) with the same
    claims, and keeps only the most recent entries its size allows."""
    s = make_settings(verify_cache_size=3)
    verifier = get_verifier(s)
    issued = [create_access_token("alice", settings=s)[0] for _ in range(5)]
    for token in issued:
        assert verifier.decode(token, use_cache=True) == verifier.decode(token)
    assert verifier._cache is not None
    assert len(verifier._cache) == 3
    claims = [decode_token(token, settings=s) for token in issued]
    verified: list[str] = []
    original = verifier._decode

    def counting(token: str, expected_type: Any) -> TokenData:
        verified.append(token)
        return original(token, expected_type)

    monkeypatch.setattr(verifier, "_decode", counting)
    for token, expected in zip(issued[2:], claims[2:], strict=True):  # the 3 most recent
        assert verifier.decode(token, use_cache=True) == expected
    assert verified == []
    verifier.decode(issued[0], use_cache=True)  # evicted: verified again
    assert verified == [issued[0]]


def test_verify_cache_does_not_outlive_exp() -> None:
    """A cached token stops verifying once it expires (plus leeway)."""
    s = make_settings(leeway=0)
    verifier = get_verifier(s)
    token, _ = create_access_token("alice", expires_delta=1, settings=s)
    verifier.decode(token, use_cache=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            verifier.decode(token, use_cache=True)
        except exc.TokenExpired:
            return
        time.sleep(0.05)
    pytest.fail("a cached token kept verifying after its exp")


# --- RS256 / ES256 from PEM files -----------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_asymmetric_round_trip_from_pem_files(tmp_path: Path, alg: str) -> None:
    """An issuer with a PEM private key signs tokens it can verify itself."""
    s = asymmetric_settings(tmp_path, alg, new_key(alg))
    token, jti = create_access_token("alice", tenant_id="acme", settings=s)
    assert jwt.get_unverified_header(token)["alg"] == alg
    data = decode_token(token, settings=s)
    assert (data.sub, data.jti, data.tenant) == ("alice", jti, "acme")


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_verify_only_service_with_the_public_key(tmp_path: Path, alg: str) -> None:
    """A service holding only the public key verifies tokens but cannot issue any."""
    key = new_key(alg)
    issuer = asymmetric_settings(tmp_path, alg, key)
    verifier_only = make_settings(
        jwt_algorithm=alg,
        jwt_secret=None,
        jwt_public_key_file=write_pem(tmp_path / "public.pem", key, private=False),
    )
    token, jti = create_access_token("alice", settings=issuer)
    assert decode_token(token, settings=verifier_only).jti == jti
    with pytest.raises(exc.ConfigurationError, match="REVOKER_JWT_PRIVATE_KEY_FILE"):
        create_access_token("alice", settings=verifier_only)
    other, _ = create_access_token(
        "alice", settings=asymmetric_settings(tmp_path, alg, new_key(alg))
    )
    with pytest.raises(exc.InvalidSignature):
        decode_token(other, settings=verifier_only)


def test_unreadable_pem_file_is_a_configuration_error(tmp_path: Path) -> None:
    """A key file that is not PEM fails with the setting's name, not a crypto traceback."""
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    s = make_settings(jwt_algorithm="RS256", jwt_secret=None, jwt_public_key_file=bad)
    with pytest.raises(exc.ConfigurationError, match="REVOKER_JWT_PUBLIC_KEY_FILE"):
        get_verifier(s)


def test_kid_is_issued_and_another_kid_is_refused(tmp_path: Path) -> None:
    """With jwt_key_id set, tokens carry it; a token naming another kid is UnknownKeyId."""
    key = new_key("ES256")
    s = asymmetric_settings(tmp_path, "ES256", key, jwt_key_id="k1")
    token, _ = create_access_token("alice", settings=s)
    assert jwt.get_unverified_header(token)["kid"] == "k1"
    assert decode_token(token, settings=s).sub == "alice"
    other = asymmetric_settings(tmp_path, "ES256", key, jwt_key_id="k2")
    forged, _ = create_access_token("alice", settings=other)
    with pytest.raises(exc.UnknownKeyId):
        decode_token(forged, settings=s)


# --- JWKS over real HTTP --------------------------------------------------------------------


class JwksServer:
    """A JWKS endpoint on 127.0.0.1 in a thread; ``keys`` can change while it runs."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                body = json.dumps({"keys": outer.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"

    def add(self, key: PrivateKey, kid: str, **fields: Any) -> None:
        if isinstance(key, rsa.RSAPrivateKey):
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        else:
            jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        self.keys.append({**jwk, "kid": kid, **fields})


@pytest.fixture
def jwks(monkeypatch: pytest.MonkeyPatch) -> Iterator[JwksServer]:
    """A running JWKS server; no proxy between us and it, no refetch cooldown."""
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(tokens, "JWKS_REFRESH_COOLDOWN", 0.0)
    server = JwksServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


JwksSetup = Callable[..., tuple[RevokerSettings, RevokerSettings]]


@pytest.fixture
def jwks_pair(tmp_path: Path, jwks: JwksServer) -> JwksSetup:
    """Build (issuer settings with kid, verify-only settings reading the JWKS)."""

    def build(kid: str = "k1", alg: str = "RS256") -> tuple[RevokerSettings, RevokerSettings]:
        key = new_key(alg)
        issuer = asymmetric_settings(tmp_path, alg, key, jwt_key_id=kid)
        verifier = make_settings(jwt_algorithm=alg, jwt_secret=None, jwks_url=jwks.url)
        jwks.add(key, kid, use="sig", alg=alg)
        return issuer, verifier

    return build


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_jwks_verifies_tokens_by_kid(jwks_pair: JwksSetup, alg: str) -> None:
    """A verify-only service finds the signing key in the JWKS by the token's kid."""
    issuer, verifier = jwks_pair("k1", alg)
    token, jti = create_access_token("alice", settings=issuer)
    assert decode_token(token, settings=verifier).jti == jti


def test_jwks_unknown_kid_is_refused(jwks_pair: JwksSetup, tmp_path: Path) -> None:
    """A token whose kid is not in the JWKS is UnknownKeyId, as is one without a kid."""
    _, verifier = jwks_pair("k1")
    stranger = asymmetric_settings(tmp_path, "RS256", new_key("RS256"), jwt_key_id="k9")
    token, _ = create_access_token("alice", settings=stranger)
    with pytest.raises(exc.UnknownKeyId):
        decode_token(token, settings=verifier)
    no_kid = asymmetric_settings(tmp_path, "RS256", new_key("RS256"))
    token, _ = create_access_token("alice", settings=no_kid)
    with pytest.raises(exc.UnknownKeyId):
        decode_token(token, settings=verifier)


def test_jwks_key_with_kid_of_another_key_does_not_verify(
    jwks_pair: JwksSetup, tmp_path: Path
) -> None:
    """A token naming a trusted kid but signed by another key is InvalidSignature."""
    _, verifier = jwks_pair("k1")
    impostor = asymmetric_settings(tmp_path, "RS256", new_key("RS256"), jwt_key_id="k1")
    token, _ = create_access_token("alice", settings=impostor)
    with pytest.raises(exc.InvalidSignature):
        decode_token(token, settings=verifier)


@pytest.mark.parametrize(
    "fields",
    [
        {"use": "enc"},
        {"use": "sig", "key_ops": ["encrypt"]},
        {"use": "sig", "alg": "RS512"},
    ],
    ids=["use-enc", "key_ops-encrypt", "other-alg"],
)
def test_jwks_key_not_meant_for_our_signatures_is_refused(
    tmp_path: Path, jwks: JwksServer, fields: dict[str, Any]
) -> None:
    """A JWKS key for encryption or for another algorithm never verifies a token."""
    key = new_key("RS256")
    issuer = asymmetric_settings(tmp_path, "RS256", key, jwt_key_id="k1")
    verifier = make_settings(jwt_algorithm="RS256", jwt_secret=None, jwks_url=jwks.url)
    jwks.add(key, "k1", **fields)
    token, _ = create_access_token("alice", settings=issuer)
    with pytest.raises(exc.UnknownKeyId):
        decode_token(token, settings=verifier)


def test_jwks_symmetric_key_is_never_an_hmac_secret(tmp_path: Path, jwks: JwksServer) -> None:
    """An `oct` key in the JWKS under a token's kid is refused, not handed to PyJWT."""
    issuer = asymmetric_settings(tmp_path, "RS256", new_key("RS256"), jwt_key_id="k1")
    verifier = make_settings(jwt_algorithm="RS256", jwt_secret=None, jwks_url=jwks.url)
    jwks.keys.append({"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0", "kid": "k1"})
    token, _ = create_access_token("alice", settings=issuer)
    with pytest.raises(exc.UnknownKeyId):
        decode_token(token, settings=verifier)


def test_jwks_rotated_key_is_fetched(tmp_path: Path, jwks: JwksServer) -> None:
    """A kid added to the JWKS after the first fetch is found by one refetch."""
    first = new_key("RS256")
    jwks.add(first, "k1", use="sig")
    verifier = make_settings(jwt_algorithm="RS256", jwt_secret=None, jwks_url=jwks.url)
    token, _ = create_access_token(
        "alice", settings=asymmetric_settings(tmp_path, "RS256", first, jwt_key_id="k1")
    )
    decode_token(token, settings=verifier)
    fetched = jwks.requests
    second = new_key("RS256")
    jwks.add(second, "k2", use="sig")
    token, _ = create_access_token(
        "alice", settings=asymmetric_settings(tmp_path, "RS256", second, jwt_key_id="k2")
    )
    assert decode_token(token, settings=verifier).sub == "alice"
    assert jwks.requests == fetched + 1


def test_jwks_unreachable_is_a_token_error(tmp_path: Path) -> None:
    """A JWKS URL nobody answers on gives UnknownKeyId (401), never a traceback."""
    from revoker.localredis import free_port

    issuer = asymmetric_settings(tmp_path, "RS256", new_key("RS256"), jwt_key_id="k1")
    verifier = make_settings(
        jwt_algorithm="RS256", jwt_secret=None, jwks_url=f"http://127.0.0.1:{free_port()}/jwks"
    )
    token, _ = create_access_token("alice", settings=issuer)
    with pytest.raises(exc.UnknownKeyId, match="JWKS"):
        decode_token(token, settings=verifier)


@pytest.mark.redis
async def test_jwks_fetch_does_not_block_the_event_loop(
    jwks_pair: JwksSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the check waits on a slow JWKS fetch, other coroutines on the loop keep running."""
    from revoker.check import RevocationChecker

    issuer, verifier = jwks_pair("k1")
    token, _ = create_access_token("alice", settings=issuer)
    original = jwt.PyJWKClient.fetch_data

    def slow_fetch(self: jwt.PyJWKClient) -> Any:
        time.sleep(0.5)
        return original(self)

    monkeypatch.setattr(jwt.PyJWKClient, "fetch_data", slow_fetch)
    checker = RevocationChecker(settings=verifier)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        result = await asyncio.wait_for(checker.check(token), 5)
    finally:
        task.cancel()
        await checker.store.aclose()
    assert result.token.sub == "alice"
    assert ticks >= 20, f"the loop ran only {ticks} times during a 0.5 s fetch"
