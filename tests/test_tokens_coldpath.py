"""The cold path: one verification costs PyJWT's own checks once each, and no more than them.

What makes it cheap is tested as behaviour (the key is prepared once, the header is read once, the
segment rule is PyJWS's exactly); the speed itself is measured in `bench/middleware.py`, and only a
generous bound is asserted here.
"""

from __future__ import annotations

import base64
import json
import statistics
import timeit
from typing import Any

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import HMACAlgorithm

from conftest import TEST_SECRET, make_settings
from revoker import exceptions as exc
from revoker import tokens
from revoker.tokens import TokenVerifier, create_access_token

SEGMENT_BYTES = st.binary(max_size=24) | st.text(
    alphabet="ABCXYZabcxyz0189-_=+/.!", max_size=24
).map(str.encode)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pyjws_segment(data: bytes) -> bytes | None:
    """PyJWS's own reading of a segment, None where it refuses it."""
    try:
        return jwt.PyJWS._decode_base64url_segment(data, "x")
    except jwt.DecodeError:
        return None


def ours(data: bytes) -> bytes | None:
    try:
        return tokens._segment(data)
    except exc.MalformedToken:
        return None


@settings(max_examples=3000, deadline=None)
@given(SEGMENT_BYTES)
def test_segment_rule_is_pyjws_rule(data: bytes) -> None:
    """The one-regex segment reader accepts and decodes exactly what PyJWS's does."""
    assert ours(data) == pyjws_segment(data)


@pytest.mark.parametrize(
    "data",
    [b"", b"QQ", b"QQ==", b"QR", b"QQ=", b"Q", b"QQ===", b"Q=Q", b"QUJD", b"QUI", b"QUJ", b"Q+/_"],
)
def test_segment_rule_on_the_edges(data: bytes) -> None:
    """Padding, impossible lengths, stray bits and the wrong alphabet: the same verdict as PyJWS."""
    assert ours(data) == pyjws_segment(data)


def test_hmac_key_is_prepared_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyJWT's HMAC prepare_key runs when the verifier is built, never per token."""
    s = make_settings(verify_cache_size=0)
    calls: list[Any] = []
    real = HMACAlgorithm.prepare_key

    def counting(self: HMACAlgorithm, key: Any) -> bytes:
        calls.append(key)
        return real(self, key)

    monkeypatch.setattr(HMACAlgorithm, "prepare_key", counting)
    verifier = TokenVerifier(s)
    assert len(calls) == 1
    token, _ = create_access_token("alice", settings=s)
    calls.clear()
    for _ in range(5):
        assert verifier.decode(token).sub == "alice"
    assert calls == []


def test_header_and_payload_are_read_once_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """One bounded read of the header and one of the claims; PyJWT's json.loads never runs."""
    s = make_settings(verify_cache_size=0)
    token, _ = create_access_token("alice", settings=s)
    verifier = TokenVerifier(s)
    reads: list[str] = []
    real = tokens._json_object

    def counting(data: bytes, segment: str) -> dict[str, Any]:
        reads.append(segment)
        return real(data, segment)

    def no_second_parser(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("json.loads parsed a token segment")

    monkeypatch.setattr(tokens, "_json_object", counting)
    monkeypatch.setattr(json, "loads", no_second_parser)
    assert verifier.decode(token).sub == "alice"
    assert reads == ["header", "payload"]


def test_key_prepared_for_another_algorithm_is_refused() -> None:
    """A prepared key is bound to its algorithm: another algorithm refuses it."""
    prepared = tokens._prepare_key("HS256", TEST_SECRET)
    hs512 = tokens._JWS.get_algorithm_by_name("HS512")
    with pytest.raises(jwt.InvalidKeyError):
        hs512.prepare_key(prepared)


def test_none_is_not_a_verification_algorithm() -> None:
    """The verifier's PyJWS has no "none" algorithm at all."""
    assert "none" not in tokens._JWS.get_algorithms()


def test_unencoded_payload_header_is_refused() -> None:
    """RFC 7797's b64=false needs "crit", which is refused: the token is not understood."""
    s = make_settings()
    token, _ = create_access_token("alice", settings=s)
    head, payload, signature = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=="))
    forged = f"{b64(json.dumps({**header, 'b64': False}).encode())}.{payload}.{signature}"
    with pytest.raises(exc.ForbiddenHeader, match="b64"):
        TokenVerifier(s).decode(forged)


def test_pem_secret_is_a_configuration_error(tmp_path: Any) -> None:
    """A secret PyJWT refuses as an HMAC key (a PEM public key) fails when the verifier is built."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(exc.ConfigurationError, match="not usable"):
        TokenVerifier(make_settings(jwt_secret=pem.decode()))


def test_verify_costs_no_more_than_jwt_decode() -> None:
    """Cold verify of a revoker token is not slower than jwt.decode of it (interleaved medians)."""
    s = make_settings(verify_cache_size=0, issuer="https://issuer", audience="api")
    token, _ = create_access_token("alice", tenant_id="acme", scopes=("read",), settings=s)
    verifier = TokenVerifier(s)
    options: Any = {"require": ["exp", "iat", "jti", "sub", "typ", "iss", "aud"]}

    def pyjwt() -> None:
        jwt.decode(
            token, TEST_SECRET, algorithms=["HS256"], issuer="https://issuer", audience="api",
            leeway=30, options=options,
        )  # fmt: skip

    def revoker() -> None:
        verifier.decode(token)

    ratios = []
    for _ in range(7):
        ours_s = timeit.timeit(revoker, number=200)
        theirs = timeit.timeit(pyjwt, number=200)
        ratios.append(ours_s / theirs)
    # Measured ~0.5; 1.0 is the bound, the median over rounds absorbs a loaded host.
    assert statistics.median(ratios) <= 1.0


def forge(header: dict[str, Any], token: str) -> str:
    """``token``'s claims under another header, signed with the test secret."""
    import hashlib
    import hmac

    body = token.split(".")[1]
    signing_input = f"{b64(json.dumps(header).encode())}.{body}"
    mac = hmac.new(TEST_SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def test_a_known_header_is_not_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The second token with the same header bytes reads only its claims; the result is equal."""
    s = make_settings(verify_cache_size=0)
    first, _ = create_access_token("alice", settings=s)
    second, _ = create_access_token("bob", settings=s)
    verifier = TokenVerifier(s)
    assert verifier.decode(first).sub == "alice"
    reads: list[str] = []
    real = tokens._json_object

    def counting(data: bytes, segment: str) -> dict[str, Any]:
        reads.append(segment)
        return real(data, segment)

    monkeypatch.setattr(tokens, "_json_object", counting)
    assert verifier.decode(second).sub == "bob"
    assert reads == ["payload"]


def test_header_cache_is_bounded_and_keeps_no_refused_header() -> None:
    """Many distinct signed headers fill the cache to its bound; a refused or unsigned one is
    never kept."""
    s = make_settings(verify_cache_size=0)
    token, _ = create_access_token("alice", settings=s)
    verifier = TokenVerifier(s)
    for n in range(tokens.HEADER_CACHE_SIZE + 20):
        assert verifier.decode(forge({"alg": "HS256", "typ": "JWT", "n": n}, token)).sub == "alice"
    assert len(verifier._headers) == tokens.HEADER_CACHE_SIZE
    fresh = TokenVerifier(s)
    for _ in range(2):  # refused both times: nothing remembered it as good
        with pytest.raises(exc.ForbiddenHeader):
            fresh.decode(forge({"alg": "HS256", "jku": "https://evil.example"}, token))
        with pytest.raises(exc.InvalidSignature):
            fresh.decode(forge({"alg": "HS512"}, token))
        head, body, _ = forge({"alg": "HS256", "made": "up"}, token).split(".")
        with pytest.raises(exc.InvalidSignature):  # a header that passes, but no valid signature
            fresh.decode(f"{head}.{body}.{b64(b'0' * 32)}")
    assert fresh._headers == {}


def test_claims_are_built_as_model_construct_builds_them() -> None:
    """With this pydantic the cold path builds its TokenData without model_construct, and what
    it builds is model_construct's, field for field and in pydantic's own state."""
    assert tokens._construct_token_data is tokens._fast_token_data
    s = make_settings(verify_cache_size=0)
    token, _ = create_access_token("alice", tenant_id="acme", scopes=("a", "b"), settings=s)
    made = TokenVerifier(s).decode(token)
    expected = tokens.TokenData.model_construct(**made.model_dump())
    assert made.__getstate__() == expected.__getstate__()
    assert made == tokens.TokenData(**made.model_dump())
    assert made.model_dump(exclude_unset=True) == made.model_dump()


@pytest.mark.parametrize(
    ("family", "accepted"),
    [
        (None, True),
        ("f1", True),
        ("é" * 10, True),
        ("a" * 256, True),
        ("a" * 257, False),
        ("é" * 257, False),
        ("", False),
        (5, False),
        (["alice"], False),
    ],
)
def test_an_id_claim_is_refused_as_escape_id_refuses_it(family: object, accepted: bool) -> None:
    """The ASCII shortcut in the claims' check accepts exactly what escape_id accepts: a
    non-empty string of at most MAX_ID_LENGTH characters (here the ``fam`` claim, which only
    revoker checks; absent is no family)."""
    s = make_settings(verify_cache_size=0)
    token, _ = create_access_token("alice", settings=s)
    claims = jwt.decode(token, options={"verify_signature": False})
    if family is not None:
        claims["fam"] = family
    forged = jwt.encode(claims, TEST_SECRET, algorithm="HS256")
    if accepted:
        assert TokenVerifier(s).decode(forged).family == family
    else:
        with pytest.raises(exc.InvalidClaim, match="token fam must be"):
            TokenVerifier(s).decode(forged)
