"""Hostile tokens: each is refused with its specific TokenError, and with a 401 (never a 500).

Tokens are forged by hand (base64url + HMAC or a private key of the attacker's), so PyJWT's
encoder, which refuses some of these shapes, cannot soften the attack.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fakeredis
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from conftest import TEST_SECRET, make_settings
from revoker import exceptions as exc
from revoker.middleware import TokenRevocationMiddleware
from revoker.settings import RevokerSettings
from revoker.store import RedisTokenRevocationStore
from revoker.tokens import MAX_TOKEN_BYTES, decode_token, generate_jti

ISSUER = "https://id.example"
AUDIENCE = "api"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(obj: Any) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def claims(**changes: Any) -> dict[str, Any]:
    """A valid access-token payload for the HMAC settings, with ``changes`` (None deletes)."""
    now = time.time()
    payload: dict[str, Any] = {
        "sub": "alice",
        "jti": generate_jti(),
        "typ": "access",
        "iat": now,
        "exp": int(now) + 300,
        "iss": ISSUER,
        "aud": AUDIENCE,
    }
    for name, value in changes.items():
        if value is None:
            payload.pop(name, None)
        else:
            payload[name] = value
    return payload


def hs_forge(payload: dict[str, Any], secret: bytes, **header: Any) -> str:
    """An HS256 token over ``payload`` with ``secret``, header fields added as given."""
    head = {"alg": "HS256", "typ": "JWT", **header}
    signing_input = f"{segment(head)}.{segment(payload)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def signed(**changes: Any) -> str:
    """A correctly signed HS256 token of our own secret with the claim ``changes``."""
    return hs_forge(claims(**changes), TEST_SECRET.encode())


@pytest.fixture
def hs() -> RevokerSettings:
    """HMAC settings with issuer and audience configured."""
    return make_settings(issuer=ISSUER, audience=AUDIENCE)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Path]]:
    """An RSA and an EC key pair of the service, private key and public PEM path."""
    out: dict[str, tuple[Any, Path]] = {}
    for alg, key in (
        ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("ES256", ec.generate_private_key(ec.SECP256R1())),
    ):
        path = tmp_path_factory.mktemp(alg) / "public.pem"
        path.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        out[alg] = (key, path)
    return out


def public_settings(keys: dict[str, tuple[Any, Path]], alg: str) -> RevokerSettings:
    return make_settings(
        jwt_algorithm=alg,
        jwt_secret=None,
        jwt_public_key_file=keys[alg][1],
        issuer=ISSUER,
        audience=AUDIENCE,
    )


# --- signature and algorithm ----------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("signature", ["", "c2ln"], ids=["empty-sig", "junk-sig"])
def test_alg_none_is_refused(hs: RevokerSettings, alg: str, signature: str) -> None:
    """An unsigned token is InvalidSignature whatever the spelling of none."""
    token = f"{segment({'alg': alg, 'typ': 'JWT'})}.{segment(claims())}.{signature}"
    with pytest.raises(exc.InvalidSignature):
        decode_token(token, settings=hs)


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_hs256_signed_with_the_public_key_is_refused(
    keys: dict[str, tuple[Any, Path]], alg: str
) -> None:
    """Key confusion: HS256 keyed with the service's public PEM is InvalidSignature."""
    s = public_settings(keys, alg)
    token = hs_forge(claims(), keys[alg][1].read_bytes())
    with pytest.raises(exc.InvalidSignature):
        decode_token(token, settings=s)


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_genuine_asymmetric_token_passes(keys: dict[str, tuple[Any, Path]], alg: str) -> None:
    """Control for the key-confusion case: the real key's token verifies."""
    token = jwt.encode(claims(), keys[alg][0], algorithm=alg)
    assert decode_token(token, settings=public_settings(keys, alg)).sub == "alice"


def test_stripped_signature_is_refused(hs: RevokerSettings) -> None:
    """A token with its signature removed is InvalidSignature."""
    head, body, _ = signed().split(".")
    with pytest.raises(exc.InvalidSignature):
        decode_token(f"{head}.{body}.", settings=hs)


def test_altered_signature_is_refused(hs: RevokerSettings) -> None:
    """Changing one signature byte makes it InvalidSignature."""
    head, body, sig = signed().split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    raw[0] ^= 0x01
    with pytest.raises(exc.InvalidSignature):
        decode_token(f"{head}.{body}.{b64(bytes(raw))}", settings=hs)


def test_altered_payload_is_refused(hs: RevokerSettings) -> None:
    """Swapping in another payload under the old signature is InvalidSignature."""
    head, _, sig = signed().split(".")
    with pytest.raises(exc.InvalidSignature):
        decode_token(f"{head}.{segment(claims(sub='admin'))}.{sig}", settings=hs)


@pytest.mark.parametrize(
    "token", ["", "abc", "a.b", "a.b.c.d", "!!!.???.***", "W10.e30.c2ln", "bnVsbA.e30.c2ln"]
)
def test_garbage_is_malformed(hs: RevokerSettings, token: str) -> None:
    """Strings that are not JWS compact tokens are MalformedToken."""
    with pytest.raises(exc.MalformedToken):
        decode_token(token, settings=hs)


# --- header injection -----------------------------------------------------------------------


def attacker_jwk() -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("jwk", "attacker"),
        ("jku", "https://attacker.example/jwks.json"),
        ("x5u", "https://attacker.example/cert.pem"),
        ("x5c", ["MIIBattacker"]),
    ],
)
def test_key_material_in_the_header_is_refused(hs: RevokerSettings, name: str, value: Any) -> None:
    """A header carrying a key or a key URL is ForbiddenHeader, even if otherwise valid."""
    if value == "attacker":
        value = attacker_jwk()
    token = hs_forge(claims(), TEST_SECRET.encode(), **{name: value})
    with pytest.raises(exc.ForbiddenHeader, match=name):
        decode_token(token, settings=hs)


def test_embedded_jwk_of_the_attacker_is_refused(keys: dict[str, tuple[Any, Path]]) -> None:
    """An RS256 token signed by the attacker with their jwk embedded is ForbiddenHeader."""
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(attacker.public_key(), as_dict=True)
    token = jwt.encode(claims(), attacker, algorithm="RS256", headers={"jwk": jwk})
    with pytest.raises(exc.ForbiddenHeader):
        decode_token(token, settings=public_settings(keys, "RS256"))


def test_unknown_crit_extension_is_refused(hs: RevokerSettings) -> None:
    """A header demanding an extension we do not implement is ForbiddenHeader."""
    token = hs_forge(claims(), TEST_SECRET.encode(), crit=["exp-ext"], **{"exp-ext": 1})
    with pytest.raises(exc.ForbiddenHeader, match="crit"):
        decode_token(token, settings=hs)


@pytest.mark.parametrize("kid", ["other", "../../etc/passwd", ""])
def test_kid_nobody_configured_is_refused(hs: RevokerSettings, kid: str) -> None:
    """A kid when none is configured (or another one) is UnknownKeyId."""
    with pytest.raises(exc.UnknownKeyId):
        decode_token(hs_forge(claims(), TEST_SECRET.encode(), kid=kid), settings=hs)


def test_kid_other_than_the_configured_one_is_refused() -> None:
    """With jwt_key_id "k1", a token naming "k2" is UnknownKeyId; "k1" passes."""
    s = make_settings(jwt_key_id="k1")
    payload = claims(iss=None, aud=None)
    assert decode_token(hs_forge(payload, TEST_SECRET.encode(), kid="k1"), settings=s)
    with pytest.raises(exc.UnknownKeyId):
        decode_token(hs_forge(payload, TEST_SECRET.encode(), kid="k2"), settings=s)


@pytest.mark.parametrize("kid", [5, ["k1"], {"k": 1}, None, True])
def test_kid_that_is_not_a_string_is_malformed(kid: Any) -> None:
    """A non-string kid is MalformedToken (PyJWT's own error must not escape)."""
    s = make_settings(jwt_key_id="k1")
    token = hs_forge(claims(iss=None, aud=None), TEST_SECRET.encode(), kid=kid)
    with pytest.raises(exc.MalformedToken):
        decode_token(token, settings=s)


# --- issuer and audience --------------------------------------------------------------------


@pytest.mark.parametrize(
    "iss",
    [ISSUER + ".evil", "evil." + ISSUER, ISSUER[:-1], ISSUER.upper(), [ISSUER], 7],
    ids=["prefix", "suffix", "partial", "case", "list", "number"],
)
def test_wrong_issuer_is_refused(hs: RevokerSettings, iss: Any) -> None:
    """Only the exact configured issuer string is accepted."""
    with pytest.raises(exc.InvalidClaim, match="issuer"):
        decode_token(signed(iss=iss), settings=hs)


@pytest.mark.parametrize(
    "aud",
    [AUDIENCE + "2", "x" + AUDIENCE, AUDIENCE[:-1], [AUDIENCE], [AUDIENCE, "other"], ["other"]],
    ids=["prefix", "suffix", "partial", "list", "list-with-other", "list-other"],
)
def test_wrong_audience_is_refused(hs: RevokerSettings, aud: Any) -> None:
    """Only the exact configured audience string is accepted, never a list containing it."""
    with pytest.raises(exc.InvalidClaim, match="audience"):
        decode_token(signed(aud=aud), settings=hs)


@pytest.mark.parametrize("claim", ["iss", "aud"])
def test_missing_issuer_or_audience_is_refused_when_configured(
    hs: RevokerSettings, claim: str
) -> None:
    """A configured iss/aud is required: a token without it is MissingClaim."""
    with pytest.raises(exc.MissingClaim, match=claim):
        decode_token(signed(**{claim: None}), settings=hs)


# --- time -----------------------------------------------------------------------------------


def test_expired_token_is_refused(hs: RevokerSettings) -> None:
    """A token past exp plus leeway is TokenExpired."""
    now = int(time.time())
    with pytest.raises(exc.TokenExpired):
        decode_token(signed(iat=now - 600, exp=now - hs.leeway - 5), settings=hs)


def test_token_inside_the_leeway_passes(hs: RevokerSettings) -> None:
    """A token that expired less than leeway ago still verifies (clock skew)."""
    now = int(time.time())
    assert decode_token(signed(iat=now - 600, exp=now - hs.leeway // 2), settings=hs)


@pytest.mark.parametrize("claim", ["iat", "nbf"])
def test_token_from_the_future_is_refused(hs: RevokerSettings, claim: str) -> None:
    """iat or nbf beyond the leeway in the future is TokenNotYetValid."""
    future = time.time() + hs.leeway + 60
    with pytest.raises(exc.TokenNotYetValid):
        decode_token(signed(**{claim: future, "exp": int(future) + 300}), settings=hs)


# --- claims ---------------------------------------------------------------------------------


@pytest.mark.parametrize("claim", ["jti", "exp", "iat", "sub", "typ"])
def test_missing_required_claim_is_refused(hs: RevokerSettings, claim: str) -> None:
    """Each required claim, when absent, is MissingClaim naming it."""
    with pytest.raises(exc.MissingClaim, match=claim):
        decode_token(signed(**{claim: None}), settings=hs)


def test_refresh_token_used_as_access_is_refused(hs: RevokerSettings) -> None:
    """typ=refresh where an access token is expected is WrongTokenType."""
    token = signed(typ="refresh", fam="f1")
    with pytest.raises(exc.WrongTokenType):
        decode_token(token, "access", settings=hs)
    assert decode_token(token, "refresh", settings=hs).family == "f1"


def test_access_token_used_as_refresh_is_refused(hs: RevokerSettings) -> None:
    """typ=access where a refresh token is expected is WrongTokenType."""
    with pytest.raises(exc.WrongTokenType):
        decode_token(signed(), "refresh", settings=hs)


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("sub", 123),
        ("sub", ""),
        ("sub", ["alice"]),
        ("jti", 42),
        ("jti", ""),
        ("typ", 1),
        ("typ", "id"),
        ("tenant", 7),
        ("tenant", ""),
        ("fam", ["f"]),
        ("client_id", {"id": 1}),
        ("scope", ["read"]),
        ("iat", "yesterday"),
        ("sub", "a" * 300),
        ("sub", "\ud800"),
        ("tenant", "t\udfff"),
        ("jti", "j" * 257),
    ],
)
def test_claim_of_the_wrong_type_is_refused(hs: RevokerSettings, claim: str, value: Any) -> None:
    """A claim of the wrong type or shape is InvalidClaim."""
    with pytest.raises(exc.InvalidClaim):
        decode_token(signed(**{claim: value}), settings=hs)


@pytest.mark.parametrize("value", ["tomorrow", [1], {"t": 1}])
def test_exp_that_is_not_a_number_is_refused(hs: RevokerSettings, value: Any) -> None:
    """A non-numeric exp is MalformedToken (PyJWT classes it as a decode error)."""
    with pytest.raises(exc.MalformedToken):
        decode_token(signed(exp=value), settings=hs)


def test_oversized_token_is_refused_before_decoding(hs: RevokerSettings) -> None:
    """A correctly signed token over 8 KiB is TokenTooLarge."""
    token = signed(pad="x" * MAX_TOKEN_BYTES)
    assert len(token) > MAX_TOKEN_BYTES
    with pytest.raises(exc.TokenTooLarge):
        decode_token(token, settings=hs)


def test_oversized_garbage_is_too_large_not_malformed(hs: RevokerSettings) -> None:
    """Size is checked before anything is parsed."""
    with pytest.raises(exc.TokenTooLarge):
        decode_token("." * (MAX_TOKEN_BYTES + 1), settings=hs)


def test_non_string_token_is_malformed(hs: RevokerSettings) -> None:
    """decode_token given bytes or None raises MalformedToken, not a TypeError."""
    for value in (signed().encode(), None, 12):
        with pytest.raises(exc.MalformedToken):
            decode_token(value, settings=hs)  # type: ignore[arg-type]


# --- through the middleware: always 401 -----------------------------------------------------


def altered(token: str) -> str:
    """``token`` with the last four characters of its signature replaced by others."""
    return token[:-4] + ("AAAA" if token[-4:] != "AAAA" else "BBBB")


Attack = Callable[[dict[str, tuple[Any, Path]]], str]

ATTACKS: list[tuple[str, Attack]] = [
    ("alg-none", lambda k: f"{segment({'alg': 'none'})}.{segment(claims())}."),
    ("alg-NoNe", lambda k: f"{segment({'alg': 'NoNe'})}.{segment(claims())}."),
    ("hs256-with-public-key", lambda k: hs_forge(claims(), k["RS256"][1].read_bytes())),
    ("stripped-signature", lambda k: signed().rsplit(".", 1)[0] + "."),
    ("altered-signature", lambda k: altered(signed())),
    ("jwk-header", lambda k: hs_forge(claims(), TEST_SECRET.encode(), jwk={"kty": "oct"})),
    ("jku-header", lambda k: hs_forge(claims(), TEST_SECRET.encode(), jku="https://a.example")),
    ("x5c-header", lambda k: hs_forge(claims(), TEST_SECRET.encode(), x5c=["MII"])),
    ("crit-header", lambda k: hs_forge(claims(), TEST_SECRET.encode(), crit=["x"])),
    ("kid-not-string", lambda k: hs_forge(claims(), TEST_SECRET.encode(), kid=5)),
    ("kid-unknown", lambda k: hs_forge(claims(), TEST_SECRET.encode(), kid="k9")),
    ("wrong-issuer", lambda k: signed(iss=ISSUER + ".evil")),
    ("issuer-list", lambda k: signed(iss=[ISSUER])),
    ("audience-list", lambda k: signed(aud=[AUDIENCE, "x"])),
    ("expired", lambda k: signed(exp=int(time.time()) - 3600)),
    ("not-yet-valid", lambda k: signed(iat=time.time() + 3600, exp=int(time.time()) + 7200)),
    ("missing-jti", lambda k: signed(jti=None)),
    ("missing-exp", lambda k: signed(exp=None)),
    ("refresh-as-access", lambda k: signed(typ="refresh")),
    ("sub-not-string", lambda k: signed(sub=5)),
    ("tenant-lone-surrogate", lambda k: signed(tenant="t\udfff")),
    ("sub-too-long-for-a-key", lambda k: signed(sub="a" * 300)),
    ("exp-not-number", lambda k: signed(exp="soon")),
    ("oversized", lambda k: signed(pad="x" * MAX_TOKEN_BYTES)),
    ("garbage", lambda k: "not-a-jwt"),
]


async def whoami(request: Request) -> JSONResponse:
    return JSONResponse({"sub": request.state.token.sub})


@pytest.mark.parametrize(("name", "attack"), ATTACKS, ids=[name for name, _ in ATTACKS])
async def test_every_attack_is_a_401_through_the_middleware(
    hs: RevokerSettings, keys: dict[str, tuple[Any, Path]], name: str, attack: Attack
) -> None:
    """Each attack token answered 401 with an RFC 6750 challenge; a genuine one 200."""
    store = RedisTokenRevocationStore(fakeredis.aioredis.FakeRedis(), settings=hs)
    app = TokenRevocationMiddleware(
        Starlette(routes=[Route("/me", whoami)]), store=store, require_token=True
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        response = await client.get("/me", headers={"Authorization": f"Bearer {attack(keys)}"})
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
        assert response.json()["error"] == "invalid_token"
        ok = await client.get("/me", headers={"Authorization": f"Bearer {signed()}"})
        assert (ok.status_code, ok.json()) == (200, {"sub": "alice"})
    await store.aclose()
