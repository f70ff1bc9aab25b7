"""Issue and verify JWTs with PyJWT.

Verification trusts nothing the token says about how to verify it: the algorithm is pinned from
settings, keys come from settings (a secret, a PEM file or a JWKS URL), headers that carry key
material or key URLs are refused, and ``exp``, ``iat``, ``jti``, ``sub`` and ``typ`` are required.
The header and the claims set are read by one bounded JSON reader (:func:`_json_object`): a token
no JSON parser should be trusted to read alike (too deep, huge numbers, not UTF-8, a repeated
name) is a MalformedToken before anything acts on it.
"""

from __future__ import annotations

import binascii
import json
import logging
import math
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple, NoReturn

import jwt
from jwt.algorithms import Algorithm
from pydantic import BaseModel, ConfigDict

from revoker import exceptions as exc
from revoker.keys import MAX_ID_LENGTH, escape_id
from revoker.rules import now_us
from revoker.settings import HMAC_ALGORITHMS, RevokerSettings, get_settings

__all__ = [
    "FORBIDDEN_HEADERS",
    "HEADER_CACHE_SIZE",
    "ISSUED_AT_US_CLAIM",
    "JWKS_FETCH_TIMEOUT",
    "JWKS_LIFESPAN",
    "JWKS_REFRESH_COOLDOWN",
    "MAX_JSON_DEPTH",
    "MAX_TIMESTAMP",
    "MAX_TOKEN_BYTES",
    "REQUIRED_CLAIMS",
    "RFC9068_REQUIRED_CLAIMS",
    "RFC9068_TYP",
    "CachedToken",
    "IssuedToken",
    "TokenData",
    "TokenType",
    "TokenVerifier",
    "create_access_token",
    "create_refresh_token",
    "decode_token",
    "generate_jti",
    "get_verifier",
    "issue_token",
]

logger = logging.getLogger("revoker.tokens")

TokenType = Literal["access", "refresh"]
#: Tokens (and Authorization header values) longer than this are rejected before decoding: it
#: also bounds the size of the header and of the claims set.
MAX_TOKEN_BYTES: Final = 8192
#: Deepest nesting of arrays and objects a header or claims set may have (the object itself is 1).
MAX_JSON_DEPTH: Final = 16
#: Most digits (and sign) an integer in a header or claims set may have: int64 and uint64 fit.
_MAX_INT_CHARS: Final = 21
#: Latest ``exp`` / ``iat`` accepted (9999-12-31T23:59:59Z): what a datetime, and a Redis TTL,
#: can hold.
MAX_TIMESTAMP: Final = 253_402_300_799
#: JOSE header parameters that carry key material or point at it (RFC 7515 §4.1), and ``crit``:
#: we implement no extension, so a token demanding one cannot be understood (RFC 7515 §4.1.11).
FORBIDDEN_HEADERS: Final = frozenset({"jwk", "jku", "x5u", "x5c", "crit"})
#: Claims every token must carry, beyond issuer/audience when those are configured.
REQUIRED_CLAIMS: Final = ("exp", "iat", "jti", "sub", "typ")
#: What RFC 9068 §2.2 adds for access tokens (its iss and aud: the settings demand both).
RFC9068_REQUIRED_CLAIMS: Final = ("client_id",)
#: The exact issue time in integer µs, beside a whole-second ``iat`` (RFC 9068 tokens): what the
#: watermark comparison reads (see revoker.rules).
ISSUED_AT_US_CLAIM: Final = "iat_us"
#: The JOSE header ``typ`` of an RFC 9068 access token (§2.1).
RFC9068_TYP: Final = "at+jwt"
#: Distinct token headers (encoded bytes) a verifier keeps once read and checked.
HEADER_CACHE_SIZE: Final = 64
#: Seconds a fetched JWKS is used before it is fetched again.
JWKS_LIFESPAN: Final = 300.0
#: Least seconds between two refetches of the JWKS caused by unknown kids (bounds what a flood
#: of made-up kids can cost the issuer and us).
JWKS_REFRESH_COOLDOWN: float = 30.0
#: Seconds a JWKS fetch may take.
JWKS_FETCH_TIMEOUT: Final = 3.0
#: The JWK ``kty`` each algorithm family verifies with (prefix of the algorithm name).
_JWK_KEY_TYPES: Final = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


def generate_jti() -> str:
    """A new random token id: 128 bits, URL-safe (22 characters), never starting with "-".

    Jtis and family ids are typed into `revoker revoke family ID` and friends, where a leading
    "-" reads as an option; redrawing the 1-in-64 such ids keeps every id usable as is.
    """
    while True:
        jti = secrets.token_urlsafe(16)
        if not jti.startswith("-"):
            return jti


class TokenData(BaseModel):
    """The verified claims revoker relies on."""

    model_config = ConfigDict(frozen=True)

    sub: str
    jti: str
    typ: TokenType
    iat: float
    exp: int
    tenant: str | None = None
    family: str | None = None
    scopes: tuple[str, ...] = ()
    client: str | None = None

    @property
    def user_id(self) -> str:
        """The subject: the seed's name for it."""
        return self.sub

    @property
    def tenant_id(self) -> str | None:
        return self.tenant

    @property
    def family_id(self) -> str | None:
        return self.family


def _lifetime(expires_delta: timedelta | float | None, default: int) -> float:
    if expires_delta is None:
        return float(default)
    seconds = (
        expires_delta.total_seconds()
        if isinstance(expires_delta, timedelta)
        else float(expires_delta)
    )
    if not seconds > 0:
        raise ValueError("expires_delta must be positive")
    return seconds


def _check_optional_id(value: str | None, what: str) -> None:
    # The ids a token carries become Redis keys: one rule (keys.escape_id) says which ids can,
    # so a token is never issued that the check could not look up.
    if value is not None:
        escape_id(value, what)


class IssuedToken(NamedTuple):
    """A signed token with its jti and the claims it carries."""

    token: str
    jti: str
    claims: dict[str, Any]


def issue_token(
    typ: TokenType,
    user_id: str,
    *,
    tenant_id: str | None,
    family_id: str | None,
    scopes: Iterable[str],
    client_id: str | None,
    lifetime: float,
    jti: str | None,
    settings: RevokerSettings,
    issued_at_us: int | None = None,
) -> IssuedToken:
    """Sign a token of type ``typ``; what create_access_token/create_refresh_token build on.

    ``issued_at_us`` (integer µs) pins ``iat`` and hence ``exp``: with the same jti it re-signs
    the same claims (a refresh grace-window retry returns the pair it already issued).
    """
    escape_id(user_id, "user_id")
    rfc9068 = typ == "access" and settings.rfc9068_access_tokens
    if rfc9068 and client_id is None:
        raise ValueError("REVOKER_ACCESS_TOKEN_PROFILE=rfc9068: an access token needs a client_id")
    _check_optional_id(jti, "jti")
    _check_optional_id(tenant_id, "tenant_id")
    _check_optional_id(family_id, "family_id")
    _check_optional_id(client_id, "client_id")
    scope_list = [scopes] if isinstance(scopes, str) else list(scopes)
    for scope in scope_list:
        if not scope or " " in scope:
            raise ValueError(f"invalid scope {scope!r}: scopes are non-empty and have no spaces")
    jti = jti or generate_jti()
    issued_us = now_us() if issued_at_us is None else issued_at_us
    # iat carries microseconds so that watermark comparisons are exact (see revoker.rules).
    iat = issued_us / 1_000_000
    payload: dict[str, Any] = {
        "sub": user_id,
        "jti": jti,
        "typ": typ,
        "iat": iat,
        "exp": math.ceil(iat + lifetime),
    }
    if rfc9068:
        # RFC 9068 consumers read iat as whole seconds (Authlib refuses a fractional iat as "in
        # the future" until the next second starts): iat is floored, the exact µs ride along.
        payload["iat"] = issued_us // 1_000_000
        payload[ISSUED_AT_US_CLAIM] = issued_us
    if settings.issuer is not None:
        payload["iss"] = settings.issuer
    if settings.audience is not None:
        payload["aud"] = settings.audience
    if tenant_id is not None:
        payload["tenant"] = tenant_id
    if family_id is not None:
        payload["fam"] = family_id
    if scope_list:
        payload["scope"] = " ".join(scope_list)
    if client_id is not None:
        payload["client_id"] = client_id
    verifier = get_verifier(settings)
    headers: dict[str, Any] = {"kid": settings.jwt_key_id} if settings.jwt_key_id else {}
    if rfc9068:
        headers["typ"] = RFC9068_TYP  # RFC 9068 §2.1
    token = jwt.encode(
        payload, verifier.signing_key(), algorithm=settings.jwt_algorithm, headers=headers or None
    )
    return IssuedToken(token, jti, payload)


def create_access_token(
    user_id: str,
    *,
    tenant_id: str | None = None,
    family_id: str | None = None,
    scopes: Iterable[str] = (),
    client_id: str | None = None,
    expires_delta: timedelta | float | None = None,
    jti: str | None = None,
    settings: RevokerSettings | None = None,
) -> tuple[str, str]:
    """Issue an access token. Returns ``(token, jti)``."""
    settings = settings or get_settings()
    token, jti, _ = issue_token(
        "access",
        user_id,
        tenant_id=tenant_id,
        family_id=family_id,
        scopes=scopes,
        client_id=client_id,
        lifetime=_lifetime(expires_delta, settings.access_token_ttl),
        jti=jti,
        settings=settings,
    )
    return token, jti


def create_refresh_token(
    user_id: str,
    *,
    tenant_id: str | None = None,
    family_id: str | None = None,
    scopes: Iterable[str] = (),
    client_id: str | None = None,
    expires_delta: timedelta | float | None = None,
    jti: str | None = None,
    settings: RevokerSettings | None = None,
) -> tuple[str, str, str]:
    """Issue a refresh token, starting a new family when none is given.

    Returns ``(token, jti, family_id)``. Pure: nothing is written to Redis (see
    :func:`revoker.start_session` for a tracked login session).
    """
    settings = settings or get_settings()
    family_id = family_id or generate_jti()
    token, jti, _ = issue_token(
        "refresh",
        user_id,
        tenant_id=tenant_id,
        family_id=family_id,
        scopes=scopes,
        client_id=client_id,
        lifetime=_lifetime(expires_delta, settings.refresh_token_ttl),
        jti=jti,
        settings=settings,
    )
    return token, jti, family_id


class CachedToken:
    """One entry of a verifier's cache: the claims, and what their users derive from them.

    ``memo`` belongs to the per-request check (:mod:`revoker.check`): what it would otherwise
    compute again on every request with this exact token (a pure function of the claims and
    of its owner's key, which the memo names), and the mirror state version at which the token
    was last admitted: an answer only for that exact version, never for a later one."""

    __slots__ = ("data", "exp", "memo", "typ")

    def __init__(self, data: TokenData) -> None:
        self.data = data
        self.typ = data.typ
        self.exp = data.exp
        self.memo: Any = None


class TokenVerifier:
    """Verifies tokens against one settings object; caches keys and (optionally) results.

    The result cache is keyed by the exact token string and drops each entry at the token's
    ``exp``; it only saves the signature check. Revocation is never cached here.
    """

    def __init__(self, settings: RevokerSettings) -> None:
        self.settings = settings
        self._algorithms = [settings.jwt_algorithm]
        self._verify_key: Any = None
        self._signing_key: Any = None
        self._jwks: jwt.PyJWKClient | None = None
        require = list(REQUIRED_CLAIMS)
        if settings.issuer is not None:
            require.append("iss")
        if settings.audience is not None:
            require.append("aud")
        #: Whether access tokens are RFC 9068 JWT access tokens (header typ at+jwt, client_id).
        self.rfc9068 = settings.rfc9068_access_tokens
        access_require = [*require, *RFC9068_REQUIRED_CLAIMS] if self.rfc9068 else require
        # PyJWT's options, merged once (jwt.decode merges them on every call).
        self._options: dict[TokenType, Any] = {
            "access": _JWT._merge_options({"require": access_require, "strict_aud": True}),
            "refresh": _JWT._merge_options({"require": require, "strict_aud": True}),
        }
        if settings.jwt_algorithm in HMAC_ALGORITHMS:
            assert settings.jwt_secret is not None  # enforced by the settings model
            secret = settings.jwt_secret.get_secret_value()
            self._signing_key = secret
            self._verify_key = _prepare_key(settings.jwt_algorithm, secret)
        else:
            if settings.jwt_private_key_file is not None:
                self._signing_key = _load_pem(
                    settings.jwt_private_key_file, "JWT_PRIVATE_KEY_FILE", private=True
                )
            if settings.jwt_public_key_file is not None:
                self._verify_key = _load_pem(
                    settings.jwt_public_key_file, "JWT_PUBLIC_KEY_FILE", private=False
                )
            elif self._signing_key is not None and settings.jwks_url is None:
                self._verify_key = self._signing_key.public_key()
            if self._verify_key is not None:
                self._verify_key = _prepare_key(settings.jwt_algorithm, self._verify_key)
            if settings.jwks_url is not None:
                self._jwks = jwt.PyJWKClient(
                    settings.jwks_url,
                    lifespan=JWKS_LIFESPAN,
                    cooldown_duration=JWKS_REFRESH_COOLDOWN,
                    # The fetch runs inside a request (on the event loop): keep it short.
                    timeout=JWKS_FETCH_TIMEOUT,
                )
        # Verified tokens by their exact string, least recently used first; an entry is used
        # only before its token's exp (as cachetools' TLRUCache with ttu=exp did, at a fifth of
        # the cost on the per-request path: no tuple key, no wrapper item, no expiry heap). A
        # token has one typ, so its string alone is the key: a hit of the other type is a miss.
        self._cache: OrderedDict[str, CachedToken] | None = (
            OrderedDict() if settings.verify_cache_size > 0 else None
        )
        self._cache_size = settings.verify_cache_size
        self._lock = threading.Lock()
        self._headers: dict[bytes, dict[str, Any]] = {}

    def signing_key(self) -> Any:
        if self._signing_key is None:
            raise exc.ConfigurationError(
                f"issuing {self.settings.jwt_algorithm} tokens needs REVOKER_JWT_PRIVATE_KEY_FILE"
            )
        return self._signing_key

    @property
    def fetches_keys(self) -> bool:
        """Whether verifying may fetch a JWKS over the network (a blocking call)."""
        return self._jwks is not None

    def cached(self, token: str, expected_type: TokenType = "access") -> TokenData | None:
        """The cached result of verifying ``token``, or None."""
        hit = self.cached_entry(token, expected_type)
        return None if hit is None else hit.data

    def cached_entry(self, token: str, expected_type: TokenType = "access") -> CachedToken | None:
        """The cache's entry for ``token`` if it holds one usable now (a ``expected_type``
        token before its exp), else None: the per-request check's one lookup."""
        cache = self._cache
        if cache is None:
            return None
        hit = cache.get(token)
        if hit is None or hit.typ != expected_type or not time.time() < hit.exp:
            return None
        # No lock: each OrderedDict operation is atomic under the GIL; the writers' lock keeps
        # their insert-and-evict whole. A thread may have evicted the entry meanwhile. (try,
        # not contextlib.suppress: a context manager per request costs more than the move.)
        try:  # noqa: SIM105 - see above
            cache.move_to_end(token)
        except KeyError:
            pass
        return hit

    def decode(
        self, token: str, expected_type: TokenType = "access", *, use_cache: bool = False
    ) -> TokenData:
        """Verify ``token`` and return its claims, or raise a TokenError."""
        cache = self._cache
        if use_cache and cache is not None:
            hit = self.cached(token, expected_type)
            if hit is not None:
                return hit
            data = self._decode(token, expected_type)
            with self._lock:
                cache[token] = CachedToken(data)
                cache.move_to_end(token)
                while len(cache) > self._cache_size:
                    cache.popitem(last=False)
            return data
        return self._decode(token, expected_type)

    def decode_any(self, token: str, first: TokenType = "access") -> TokenData:
        """Verify ``token`` as an access or a refresh token, trying ``first`` first (a hint).

        Only a token of the other type is tried again; any other TokenError is raised as is.
        """
        try:
            return self.decode(token, first)
        except exc.WrongTokenType:
            return self.decode(token, "refresh" if first == "access" else "access")

    def _decode(self, token: str, expected_type: TokenType) -> TokenData:
        # PyJWT's own decode, taken apart so that each step runs once: the header is read once
        # (by the bounded reader, before anything acts on it), the key is the one prepared at
        # start-up, and the claims PyJWT has checked are not walked again. The security steps
        # stay PyJWT's: PyJWS._verify_signature (the algorithm allow-list, the key's algorithm,
        # the signature) and PyJWT._validate_claims (required claims, exp, iat, nbf, iss, aud).
        if not isinstance(token, str):
            raise exc.MalformedToken("token must be a string")
        if len(token) > MAX_TOKEN_BYTES:
            raise exc.TokenTooLarge(f"token is larger than {MAX_TOKEN_BYTES} bytes")
        raw = token.encode("utf-8")
        signing_input, dot, crypto_segment = raw.rpartition(b".")
        header_segment, dot2, payload_segment = signing_input.partition(b".")
        if not (dot and dot2):
            raise exc.MalformedToken("token is not a well-formed JWT")
        # An issuer's tokens share a few headers, byte for byte: each is read and checked once
        # (the cache holds the result of those exact bytes, never edited).
        header = self._headers.get(header_segment)
        known = header is not None
        if header is None:
            header = _json_object(_segment(header_segment), "header")
            self._check_header(header)
        key = self._key_for(header.get("kid"))
        payload_bytes = _segment(payload_segment)
        signature = _segment(crypto_segment)
        try:
            _JWS._verify_signature(signing_input, header, signature, key, self._algorithms)
        except jwt.InvalidSignatureError:
            raise exc.InvalidSignature("token signature is invalid") from None
        except (jwt.InvalidAlgorithmError, jwt.InvalidKeyError):
            raise exc.InvalidSignature("token algorithm is not accepted") from None
        if not known and len(self._headers) < HEADER_CACHE_SIZE:
            # Kept only once signed with a trusted key: made-up headers cannot fill the cache.
            self._headers[header_segment] = header
        # Read only once the signature holds: an unsigned hostile payload never reaches a parser.
        payload = _json_object(payload_bytes, "payload")
        try:
            _JWT._validate_claims(
                payload,
                self._options[expected_type],
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=self.settings.leeway,
            )
        except jwt.ExpiredSignatureError:
            raise exc.TokenExpired("token has expired") from None
        except jwt.ImmatureSignatureError:
            raise exc.TokenNotYetValid("token is not yet valid") from None
        except jwt.MissingRequiredClaimError as e:
            raise exc.MissingClaim(f"token is missing the {e.claim!r} claim") from None
        except jwt.InvalidIssuerError:
            raise exc.InvalidClaim("token issuer is not accepted") from None
        except jwt.InvalidAudienceError:
            raise exc.InvalidClaim("token audience is not accepted") from None
        except jwt.DecodeError:  # PyJWT's word for an exp or nbf that is not a number
            raise exc.MalformedToken("token is not a well-formed JWT") from None
        except jwt.InvalidTokenError as e:
            raise exc.InvalidClaim(f"token claims are invalid: {e}") from None
        return self._claims(payload, header, expected_type)

    def _check_header(self, header: dict[str, Any]) -> None:
        forbidden = FORBIDDEN_HEADERS.intersection(header)
        if forbidden:
            raise exc.ForbiddenHeader(
                f"token header parameter not accepted: {', '.join(sorted(forbidden))}"
            )
        if header.get("alg") != self.settings.jwt_algorithm:
            raise exc.InvalidSignature("token algorithm is not accepted")
        if "kid" in header and not isinstance(header["kid"], str):
            raise exc.MalformedToken("token kid must be a string")
        if header.get("b64", True) is not True:
            # RFC 7797's unencoded payload needs "crit", which is refused: not understood here.
            raise exc.ForbiddenHeader("token header parameter not accepted: b64")

    def _key_for(self, kid: object) -> Any:
        if kid is not None and not isinstance(kid, str):
            raise exc.MalformedToken("token kid must be a string")
        if self._jwks is not None:
            if kid is None:
                raise exc.UnknownKeyId("token has no kid; the JWKS needs one")
            return self._jwks_key(kid)
        configured = self.settings.jwt_key_id
        if kid is not None and configured is not None and kid != configured:
            raise exc.UnknownKeyId("token kid is not trusted")
        if kid is not None and configured is None:
            raise exc.UnknownKeyId("token kid is not trusted")
        if self._verify_key is None:
            raise exc.ConfigurationError("no verification key is configured")
        return self._verify_key

    def _jwks_key(self, kid: str) -> Any:
        assert self._jwks is not None
        try:
            # get_signing_key refetches the set once (at most every cooldown) on an unknown kid,
            # so a key rotated in at the issuer is trusted without waiting for the cache to age.
            jwk = self._jwks.get_signing_key(kid)
        except jwt.PyJWKClientConnectionError as e:
            raise exc.UnknownKeyId(f"cannot fetch the JWKS: {e}") from None
        except jwt.PyJWKClientError:
            raise exc.UnknownKeyId("token kid is not trusted") from None
        # PyJWT filters on `use` but ignores `key_ops`, `alg` and the key type: only a key meant
        # to verify signatures of the pinned algorithm is accepted (an `oct` key in the set
        # must not become an HMAC secret).
        data = jwk._jwk_data
        ops = data.get("key_ops")
        alg = data.get("alg")
        if (
            data.get("use") not in (None, "sig")
            or (ops is not None and "verify" not in ops)
            or (alg is not None and alg != self.settings.jwt_algorithm)
            or jwk.key_type != _JWK_KEY_TYPES.get(self.settings.jwt_algorithm[:2])
        ):
            raise exc.UnknownKeyId("token kid is not trusted")
        return jwk.key

    def _claims(
        self, payload: dict[str, Any], header: dict[str, Any], expected_type: TokenType
    ) -> TokenData:
        # What PyJWT has not checked, once: PyJWT has seen every required claim present, iat and
        # exp int()-able and in time, iss and aud exact, sub and jti strings.
        typ = payload["typ"]
        if typ != expected_type:
            if typ in ("access", "refresh"):
                raise exc.WrongTokenType(f"a {typ} token cannot be used as a {expected_type} token")
            raise exc.InvalidClaim("token typ must be 'access' or 'refresh'")
        at_jwt = _is_at_jwt(header.get("typ"))
        if typ == "access" and self.rfc9068 and not at_jwt:
            raise exc.InvalidClaim("token is not an RFC 9068 access token (header typ at+jwt)")
        if typ == "refresh" and at_jwt:
            raise exc.InvalidClaim("an RFC 9068 access token (at+jwt) is not a refresh token")
        sub = payload["sub"]
        jti = payload["jti"]
        tenant = payload.get("tenant")
        family = payload.get("fam")
        client = payload.get("client_id")
        for claim, value in (
            ("sub", sub), ("jti", jti), ("tenant", tenant), ("fam", family), ("client_id", client)
        ):  # fmt: skip
            if value is None and claim not in ("sub", "jti"):
                continue
            # An ASCII string of the right length is an id escape_id takes (its other refusals
            # are of what is not a string or not encodable, which ASCII always is): no call.
            if type(value) is str and 0 < len(value) <= MAX_ID_LENGTH and value.isascii():
                continue
            try:
                escape_id(value, claim)
            except exc.InvalidIdentifier:
                raise exc.InvalidClaim(
                    f"token {claim} must be a non-empty string of at most "
                    f"{MAX_ID_LENGTH} characters"
                ) from None
        scope = payload.get("scope", "")
        if type(scope) is not str:
            raise exc.InvalidClaim("token scope must be a space-separated string")
        iat = payload["iat"]
        exp = payload["exp"]
        exact = payload.get(ISSUED_AT_US_CLAIM)
        if exact is not None:
            if type(exact) is not int or type(iat) is not int or exact // 1_000_000 != iat:
                raise exc.InvalidClaim(f"token {ISSUED_AT_US_CLAIM} does not match its iat")
            iat = exact / 1_000_000
        # The reader makes exact ints and floats; bool (an int to Python) and "123" (an int to
        # PyJWT's int()) are neither.
        if type(iat) not in (int, float):
            raise exc.InvalidClaim("token iat must be a number")
        if type(exp) not in (int, float):
            raise exc.InvalidClaim("token exp must be a number")
        if not (0 <= iat <= MAX_TIMESTAMP and 0 <= exp <= MAX_TIMESTAMP):
            raise exc.InvalidClaim("token iat or exp is out of range")
        # PyJWT refuses an nbf in the future but not one no date can hold (-1e300, or true):
        # introspection reports nbf, so it gets the same bound as iat and exp.
        nbf = payload.get("nbf")
        if nbf is not None and (type(nbf) not in (int, float) or not 0 <= nbf <= MAX_TIMESTAMP):
            raise exc.InvalidClaim("token nbf is not a number or is out of range")
        # Every value is of its field's exact type by now (checked above): built as
        # model_construct builds it, without pydantic validating each field again.
        return _construct_token_data(
            {
                "sub": sub,
                "jti": jti,
                "typ": typ,
                "iat": float(iat),
                "exp": int(exp),
                "tenant": tenant,
                "family": family,
                "scopes": tuple(scope.split()),
                "client": client,
            }
        )


_TOKEN_DATA_FIELDS: Final = frozenset(TokenData.model_fields)
_new_object = object.__new__
_set_attribute = object.__setattr__


def _fast_token_data(fields: dict[str, Any]) -> TokenData:
    """A TokenData of ``fields`` (every field, in order, each of its exact type), made as
    ``TokenData.model_construct(**fields)`` makes it, at a third of its cost on the cold path
    (model_construct walks every field's aliases and defaults on each call)."""
    data = _new_object(TokenData)
    _set_attribute(data, "__dict__", fields)
    _set_attribute(data, "__pydantic_fields_set__", set(_TOKEN_DATA_FIELDS))
    _set_attribute(data, "__pydantic_extra__", None)
    _set_attribute(data, "__pydantic_private__", None)
    return data


def _same_as_model_construct() -> bool:
    """Whether :func:`_fast_token_data` makes what model_construct makes with this pydantic
    (its instance layout is pydantic's own: a version that changes it gets model_construct)."""
    fields: dict[str, Any] = {
        "sub": "s", "jti": "j", "typ": "access", "iat": 1.0, "exp": 2,
        "tenant": "t", "family": "f", "scopes": ("a",), "client": "c",
    }  # fmt: skip
    made, expected = _fast_token_data(dict(fields)), TokenData.model_construct(**fields)
    return (
        list(fields) == list(TokenData.model_fields)
        and made.__getstate__() == expected.__getstate__()
        and made == expected
    )


_construct_token_data: Final = (
    _fast_token_data
    if _same_as_model_construct()
    else lambda fields: TokenData.model_construct(**fields)
)


def _is_at_jwt(typ: object) -> bool:
    """Whether a JOSE ``typ`` names an RFC 9068 access token (media types are case-blind)."""
    return isinstance(typ, str) and typ.lower() in ("at+jwt", "application/at+jwt")


class _Refused(ValueError):
    """A JSON text revoker will not read; the argument says why, in words safe for a client."""


#: A JSON string, or what is left of the text from an unterminated one. Possessive, and it cannot
#: fail once at a quote: linear in the text, whatever the text (no regex backtracking blow-up).
_STRING: Final = re.compile(r'"(?:[^"\\]|\\.)*+(?:"|\\?\Z)', re.DOTALL)
#: What nests: the brackets left once strings are gone.
_BRACKET: Final = re.compile(r"[\[\]{}]")
#: A \u escape of a UTF-16 surrogate: a lone one is a string UTF-8 cannot encode.
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")


def _too_deep(text: str) -> bool:
    """Whether ``text`` nests arrays and objects deeper than :data:`MAX_JSON_DEPTH`."""
    # Nesting needs at least as many brackets as levels: most texts are decided here, for free.
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return False
    depth = 0
    for bracket in _BRACKET.findall(_STRING.sub("", text)):
        if bracket in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        else:
            depth -= 1
    return False


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 7519 §4 / RFC 7515 §4: a repeated name (two "alg", two "sub") is read differently by
    # different parsers; Python's would silently take the last one.
    members = dict(pairs)
    if len(members) != len(pairs):
        raise _Refused("a duplicate member name")
    return members


def _bounded_int(literal: str) -> int:
    if len(literal) > _MAX_INT_CHARS:
        raise _Refused("a number out of range")
    return int(literal)


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _Refused("a number out of range")
    return value


def _no_constant(_literal: str) -> NoReturn:
    raise _Refused("a number out of range")  # NaN, Infinity, -Infinity: not JSON (RFC 8259 §6)


_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=_unique_members,
    parse_int=_bounded_int,
    parse_float=_finite_float,
    parse_constant=_no_constant,
)


def _json_object(data: bytes, segment: str) -> dict[str, Any]:
    """The JSON object of a token's ``segment`` ("header" or "payload"), read within bounds.

    Strict UTF-8 (not the UTF-16/32 ``json.loads`` guesses from bytes), at most
    :data:`MAX_JSON_DEPTH` levels, no repeated member names, integers of at most 20 digits,
    finite numbers: anything else is a MalformedToken. A string escaping a lone surrogate (valid
    JSON, but no UTF-8 can carry it to Redis or to a JSON response) is an InvalidClaim in the
    claims, a MalformedToken in the header. Either is logged once: one line, no traceback.
    """
    error: type[exc.TokenError] = exc.MalformedToken
    try:
        text = data.decode("utf-8")
        if _too_deep(text):
            raise _Refused(f"nesting deeper than {MAX_JSON_DEPTH}")
        value = _DECODER.decode(text)
    except _Refused as e:
        reason = f"token {segment} has {e.args[0]}"
    except UnicodeError:
        reason = f"token {segment} is not UTF-8"
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        reason = f"token {segment} is not valid JSON"
    else:
        if not isinstance(value, dict):
            reason = f"token {segment} is not a JSON object"
        elif _SURROGATE_ESCAPE.search(text) is None or _encodable(value):
            return value
        else:
            reason = f"token {segment} has a string that is not valid Unicode"
            if segment == "payload":
                error = exc.InvalidClaim
    logger.info("token rejected: %s", reason)
    raise error(reason) from None


def _encodable(value: dict[str, Any]) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeError:
        return False
    return True


class _Prepared(NamedTuple):
    """A verification key that PyJWT's algorithm ``algorithm`` has prepared (checked, converted)."""

    algorithm: str
    key: Any


class _ReusingAlgorithm(Algorithm):
    """One of PyJWT's algorithms that takes a key it prepared earlier as it is.

    PyJWS._verify_signature prepares the key on every call; for an HMAC secret that is ~30% of a
    decode (it tries the secret as a DER key, an X.509 certificate and a JWK, every time). The
    secret does not change, so it is prepared once, by this same algorithm, when the verifier is
    built. A key prepared for another algorithm is refused, never used.
    """

    def __init__(self, name: str, inner: Algorithm) -> None:
        self.name = name
        self.inner = inner

    def prepare_key(self, key: Any) -> Any:
        if isinstance(key, _Prepared):
            if key.algorithm != self.name:
                raise jwt.InvalidKeyError("the key was prepared for another algorithm")
            return key.key
        return self.inner.prepare_key(key)

    def prepare(self, key: Any) -> _Prepared:
        return _Prepared(self.name, self.inner.prepare_key(key))

    def check_key_length(self, key: Any) -> str | None:
        return self.inner.check_key_length(key)

    def sign(self, msg: bytes, key: Any) -> bytes:
        return self.inner.sign(msg, key)

    def verify(self, msg: bytes, key: Any, sig: bytes) -> bool:
        return self.inner.verify(msg, key, sig)

    @staticmethod
    def to_jwk(key_obj: Any, as_dict: bool = False) -> Any:
        raise NotImplementedError("verification only")

    @staticmethod
    def from_jwk(jwk: Any) -> Any:
        raise NotImplementedError("verification only")


def _reusing_jws() -> jwt.PyJWS:
    jws = jwt.PyJWS()
    for name in jws.get_algorithms():
        inner = jws.get_algorithm_by_name(name)
        jws.unregister_algorithm(name)
        if name != "none":  # never a verification algorithm here
            jws.register_algorithm(name, _ReusingAlgorithm(name, inner))
    return jws


#: PyJWS, whose _verify_signature checks every signature (see TokenVerifier._decode).
_JWS: Final = _reusing_jws()
#: PyJWT, whose _validate_claims checks every claims set.
_JWT: Final = jwt.PyJWT()


def _prepare_key(algorithm: str, key: Any) -> _Prepared:
    reusing = _JWS.get_algorithm_by_name(algorithm)
    assert isinstance(reusing, _ReusingAlgorithm)
    try:
        return reusing.prepare(key)
    except jwt.InvalidKeyError as e:
        raise exc.ConfigurationError(
            f"the {algorithm} verification key is not usable: {e}"
        ) from None


#: A base64url segment as PyJWS._decode_base64url_segment accepts it: the URL-safe alphabet, then
#: at most two "=" of padding.
_SEGMENT: Final = re.compile(rb"([A-Za-z0-9_-]*)(={0,2})")
_B64_ALPHABET: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_TO_STANDARD: Final = bytes.maketrans(b"-_", b"+/")
#: Bits of the last character that must be 0, by how many characters the last group has (a
#: group of 1 is refused anyway; its entry keeps the lookup total).
_STRAY_BITS: Final = {1: 0x3F, 2: 0x0F, 3: 0x03}


def _segment(data: bytes) -> bytes:
    """One token segment decoded, refused exactly where PyJWS._decode_base64url_segment refuses.

    PyJWS tests the alphabet byte by byte in a Python generator (~35% of a decode); one compiled
    match does the same test. The rules (GHSA-hxm8-2xgr-2p9m): the URL-safe alphabet only,
    padding only to a multiple of 4, no impossible length, and the canonical encoding (no stray
    bits after the last byte, which PyJWS tests by encoding again), so a token has exactly one
    spelling.
    """
    match = _SEGMENT.fullmatch(data)
    if match is not None:
        stripped = match[1]
        tail = len(stripped) % 4  # characters in the last group: 0, 2 or 3 (1 cannot be)
        padded_right = not (match[2] and len(data) % 4)
        # Of the last character's 6 bits, 2 (tail 3) or 4 (tail 2) carry no data: they must be 0.
        canonical = not tail or not _B64_ALPHABET.index(stripped[-1]) & _STRAY_BITS[tail]
        if padded_right and tail != 1 and canonical:
            return binascii.a2b_base64(stripped.translate(_TO_STANDARD) + b"=" * (-tail % 4))
    raise exc.MalformedToken("token is not a well-formed JWT")


def _load_pem(path: Any, setting: str, *, private: bool) -> Any:
    from cryptography.hazmat.primitives import serialization

    try:
        data = Path(path).read_bytes()
        if private:
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_pem_public_key(data)
    except (OSError, ValueError, TypeError) as e:
        raise exc.ConfigurationError(f"REVOKER_{setting}: cannot load PEM key: {e}") from None


_verifiers_lock = threading.Lock()
_verifiers: dict[int, tuple[RevokerSettings, TokenVerifier]] = {}


def get_verifier(settings: RevokerSettings | None = None) -> TokenVerifier:
    """The (cached) verifier for ``settings`` (default: the process settings)."""
    settings = settings or get_settings()
    entry = _verifiers.get(id(settings))
    if entry is not None and entry[0] is settings:
        return entry[1]
    verifier = TokenVerifier(settings)
    with _verifiers_lock:
        if len(_verifiers) > 32:  # settings objects come and go in tests; do not grow forever
            _verifiers.clear()
        _verifiers[id(settings)] = (settings, verifier)
    return verifier


def decode_token(
    token: str,
    expected_type: TokenType = "access",
    *,
    settings: RevokerSettings | None = None,
) -> TokenData:
    """Verify ``token`` (signature, pinned algorithm, required claims, type) and return its claims.

    Raises a subclass of :class:`~revoker.exceptions.TokenError`. Does not consult Redis: see
    :meth:`RedisTokenRevocationStore.is_revoked` for that.
    """
    return get_verifier(settings).decode(token, expected_type)
