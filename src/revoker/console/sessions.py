"""Console sign-in sessions: a record in Redis behind a signed cookie, and CSRF tokens.

The cookie carries only a random session id, signed (itsdangerous) so a forged or guessed value
is refused before Redis is asked. The record holds the signed-in identity and the verified claims
it signed in with (checked for revocation on every request, so revoking the admin token ends the
session; the token itself is never stored), a CSRF token and the expiry; its Redis TTL is the
session's lifetime, so an expired session is gone, not merely refused. Signing out deletes it.

Signing in happens before there is a session, so its form is protected by a double-submit pair:
a random nonce in a short-lived cookie and the same nonce, signed and timestamped, in the form.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final

from itsdangerous import BadSignature, Signer, TimestampSigner

from revoker.exceptions import ConfigurationError
from revoker.settings import ENV_PREFIX
from revoker.store._base import Plan

if TYPE_CHECKING:
    from revoker.settings import RevokerSettings
    from revoker.store import RedisTokenRevocationStore

__all__ = [
    "LOGIN_COOKIE",
    "LOGIN_FORM_MAX_AGE",
    "SESSION_COOKIE",
    "ConsoleSession",
    "SessionSigner",
    "csrf_matches",
]

#: The session cookie (HttpOnly, SameSite=Strict, Path=/console).
SESSION_COOKIE: Final = "revoker_console"
#: The sign-in form's double-submit cookie.
LOGIN_COOKIE: Final = "revoker_console_login"
#: Seconds a sign-in form stays usable.
LOGIN_FORM_MAX_AGE: Final = 600


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """One signed-in operator."""

    id: str
    #: The signed-in identity: the actor of every revocation made through the console.
    name: str
    #: The verified claims the operator signed in with (not the credential): what every request
    #: checks again for revocation.
    claims: dict[str, Any]
    csrf: str
    expires_at: float


def _secret(settings: RevokerSettings) -> bytes:
    if settings.console_secret is not None:
        return settings.console_secret.get_secret_value().encode()
    if settings.jwt_secret is not None:
        # A key of its own, derived so the console needs no second secret to configure, and a
        # console value can never be replayed as (or reveal anything about) a JWT signature.
        return hmac.new(
            settings.jwt_secret.get_secret_value().encode(), b"revoker console", hashlib.sha256
        ).digest()
    raise ConfigurationError(
        f"the console needs {ENV_PREFIX}CONSOLE_SECRET (there is no {ENV_PREFIX}JWT_SECRET "
        "to derive its key from)"
    )


def csrf_matches(expected: str, given: str | None) -> bool:
    """Whether a form's CSRF value is the session's (constant-time)."""
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


class SessionSigner:
    """Cookie values and session records of one app's settings."""

    def __init__(self, settings: RevokerSettings) -> None:
        secret = _secret(settings)
        self.settings = settings
        self._cookie = Signer(secret, salt="revoker.console.session")
        self._login = TimestampSigner(secret, salt="revoker.console.login")

    # --- the sign-in form ------------------------------------------------------------------

    def login_challenge(self) -> tuple[str, str]:
        """A new (cookie value, form value) pair for one sign-in form."""
        nonce = secrets.token_urlsafe(24)
        return nonce, self._login.sign(nonce).decode()

    def login_matches(self, cookie: str | None, form_value: str | None) -> bool:
        """Whether a submitted sign-in form is the one this browser was given, and recent."""
        if not cookie or not form_value:
            return False
        try:
            nonce = self._login.unsign(form_value, max_age=LOGIN_FORM_MAX_AGE).decode()
        except BadSignature:  # SignatureExpired is one
            return False
        return hmac.compare_digest(nonce.encode(), cookie.encode())

    # --- sessions ----------------------------------------------------------------------------

    def cookie_value(self, session: ConsoleSession) -> str:
        return self._cookie.sign(session.id).decode()

    def session_id(self, cookie: str | None) -> str | None:
        """The session id a cookie value carries; None when absent or not signed by us."""
        if not cookie:
            return None
        try:
            return self._cookie.unsign(cookie).decode()
        except BadSignature:
            return None

    def lifetime(self, credential_expires_at: float | None) -> int:
        """Seconds a new session lasts: the setting, cut to the credential's own expiry."""
        ttl = float(self.settings.console_session_ttl)
        if credential_expires_at is not None:
            ttl = min(ttl, credential_expires_at - time.time())
        return int(ttl)

    async def create(
        self,
        store: RedisTokenRevocationStore,
        *,
        name: str,
        claims: dict[str, Any],
        credential_expires_at: float | None,
    ) -> ConsoleSession | None:
        """A new session in Redis; None when the credential expires before it could start."""
        ttl = self.lifetime(credential_expires_at)
        if ttl < 1:
            return None
        session = ConsoleSession(
            id=secrets.token_urlsafe(32),
            name=name,
            claims=claims,
            csrf=secrets.token_urlsafe(32),
            expires_at=time.time() + ttl,
        )
        key = store.keys.console_session(session.id)
        await store.execute(Plan([("SET", key, json.dumps(asdict(session)), "EX", ttl)], _ignore))
        return session

    async def load(
        self, store: RedisTokenRevocationStore, session_id: str
    ) -> ConsoleSession | None:
        """The live session ``session_id``; None when unknown, expired or unreadable."""
        raw = await store.execute(
            Plan([("GET", store.keys.console_session(session_id))], lambda replies: replies[0])
        )
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            session = ConsoleSession(**data)
        except (ValueError, TypeError):
            return None
        if session.id != session_id or session.expires_at <= time.time():
            return None
        return session

    async def delete(self, store: RedisTokenRevocationStore, session_id: str) -> None:
        await store.execute(Plan([("DEL", store.keys.console_session(session_id))], _ignore))


def _ignore(_replies: list[Any]) -> None:
    return None
