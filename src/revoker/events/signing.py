"""The transmitter's key: loading it, its JWKS, and signing SETs (RFC 8417) and logout tokens.

One asymmetric key (``REVOKER_EVENTS_SIGNING_KEY_FILE``): an EC P-256 key signs ES256, an RSA key
RS256. Receivers verify with the public half, served as a JWKS at the transmitter's ``jwks_uri``;
no secret is ever shared with a receiver. The ``kid`` is the key's RFC 7638 thumbprint unless
``REVOKER_EVENTS_KEY_ID`` names one, so a new key gets a new kid by itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from revoker.exceptions import ConfigurationError
from revoker.settings import RevokerSettings

__all__ = [
    "LOGOUT_TYP",
    "SET_TYP",
    "SigningKey",
    "events_issuer",
    "signing_key",
]

#: ``typ`` header of a Security Event Token (RFC 8417 §2.3).
SET_TYP: Final = "secevent+jwt"
#: ``typ`` header of a back-channel logout token (OIDC Back-Channel Logout 1.0 §2.4).
LOGOUT_TYP: Final = "logout+jwt"
#: Seconds a logout token is valid after its iat (the spec asks for a short exp; 2 minutes).
LOGOUT_TOKEN_TTL: Final = 120


def events_issuer(settings: RevokerSettings) -> str:
    """``iss`` of every event: REVOKER_EVENTS_ISSUER, else REVOKER_ISSUER, else ``urn:revoker``."""
    return settings.events_issuer or settings.issuer or "urn:revoker"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class SigningKey:
    """A loaded private key, its algorithm, kid and public JWK."""

    private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    algorithm: str
    kid: str
    public_jwk: dict[str, Any]

    @classmethod
    def from_pem(cls, pem: bytes, kid: str | None = None) -> SigningKey:
        """A key from PEM bytes (PKCS#8 or the traditional EC/RSA forms), or ConfigurationError."""
        try:
            private = load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as e:
            raise ConfigurationError(
                f"REVOKER_EVENTS_SIGNING_KEY_FILE: not an unencrypted PEM private key ({e})"
            ) from None
        jwk: dict[str, Any]
        if isinstance(private, ec.EllipticCurvePrivateKey):
            if not isinstance(private.curve, ec.SECP256R1):
                raise ConfigurationError(
                    "REVOKER_EVENTS_SIGNING_KEY_FILE: an EC key must be on P-256 (ES256)"
                )
            algorithm = "ES256"
            jwk = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
            members = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
        elif isinstance(private, rsa.RSAPrivateKey):
            if private.key_size < 2048:
                raise ConfigurationError("REVOKER_EVENTS_SIGNING_KEY_FILE: RSA keys need 2048 bits")
            algorithm = "RS256"
            jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
            members = {name: jwk[name] for name in ("e", "kty", "n")}
        else:
            raise ConfigurationError(
                "REVOKER_EVENTS_SIGNING_KEY_FILE: the key must be EC P-256 or RSA"
            )
        # RFC 7638: the SHA-256 of the required members, sorted, without whitespace.
        canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
        kid = kid or _b64(hashlib.sha256(canonical).digest())
        public = {**jwk, "kid": kid, "use": "sig", "alg": algorithm}
        return cls(private, algorithm, kid, public)

    @property
    def jwks(self) -> dict[str, Any]:
        """The JWKS a receiver verifies with."""
        return {"keys": [self.public_jwk]}

    def sign(self, claims: dict[str, Any], typ: str) -> str:
        """A compact JWS of ``claims`` with ``typ``, this key's ``alg`` and ``kid``."""
        return jwt.encode(
            claims, self.private, algorithm=self.algorithm, headers={"typ": typ, "kid": self.kid}
        )

    def sign_set(self, claims: dict[str, Any], *, now: float | None = None) -> str:
        """A SET: ``claims`` (iss, aud, jti, events, sub_id...) with ``iat`` now."""
        return self.sign({**claims, "iat": int(now if now is not None else time.time())}, SET_TYP)

    def sign_logout(self, claims: dict[str, Any], *, now: float | None = None) -> str:
        """A logout token: ``claims`` with ``iat`` now and ``exp`` two minutes later."""
        at = int(now if now is not None else time.time())
        return self.sign({**claims, "iat": at, "exp": at + LOGOUT_TOKEN_TTL}, LOGOUT_TYP)


_lock = threading.Lock()
_cache: dict[tuple[str, float, str | None], SigningKey] = {}


def signing_key(settings: RevokerSettings) -> SigningKey | None:
    """The configured key (re-read when its file changes), or None when none is configured."""
    path: Path | None = settings.events_signing_key_file
    if path is None:
        return None
    try:
        mtime = path.stat().st_mtime
    except OSError as e:
        raise ConfigurationError(
            f"REVOKER_EVENTS_SIGNING_KEY_FILE: cannot read {path}: {e}"
        ) from None
    cache_key = (str(path), mtime, settings.events_key_id)
    with _lock:
        key = _cache.get(cache_key)
        if key is None:
            key = SigningKey.from_pem(path.read_bytes(), settings.events_key_id)
            _cache.clear()
            _cache[cache_key] = key
    return key
