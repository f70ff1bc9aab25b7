"""Login sessions: a refresh family recorded in its user's session bucket (see ``keys``)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from revoker import keys as k
from revoker.settings import RevokerSettings
from revoker.store import (
    NewSession,
    RedisTokenRevocationStore,
    SyncRedisTokenRevocationStore,
    get_revocation_store,
    get_sync_revocation_store,
)
from revoker.tokens import generate_jti, issue_token

__all__ = ["TokenPair", "issue_session_tokens", "start_session", "start_session_sync"]


@dataclass(frozen=True, slots=True)
class TokenPair:
    """An access token and a refresh token of one session (refresh family)."""

    access_token: str
    refresh_token: str
    access_jti: str
    refresh_jti: str
    family_id: str
    access_expires_at: int
    refresh_expires_at: int
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type, not a secret

    def as_response(self, now: float | None = None) -> dict[str, Any]:
        """An OAuth 2.0 token response body (RFC 6749 §5.1)."""
        now = time.time() if now is None else now
        return {
            "access_token": self.access_token,
            "token_type": self.token_type,
            "expires_in": max(0, math.floor(self.access_expires_at - now)),
            "refresh_token": self.refresh_token,
        }


def issue_session_tokens(
    user_id: str,
    *,
    tenant_id: str | None,
    family_id: str,
    client_id: str | None,
    scopes: Iterable[str],
    settings: RevokerSettings,
    access_jti: str | None = None,
    refresh_jti: str | None = None,
    issued_at_us: int | None = None,
) -> tuple[TokenPair, float]:
    """Sign an access and a refresh token of ``family_id``. Pure: writes nothing.

    ``issued_at_us`` pins both tokens' ``iat`` (refresh rotation re-signs a pair it issued).
    Returns the pair and the refresh token's ``iat``.
    """
    common: dict[str, Any] = {
        "tenant_id": tenant_id,
        "family_id": family_id,
        "scopes": tuple(scopes),
        "client_id": client_id,
        "settings": settings,
        "issued_at_us": issued_at_us,
    }
    refresh = issue_token(
        "refresh",
        user_id,
        lifetime=settings.refresh_token_ttl,
        jti=refresh_jti,
        **common,
    )
    access = issue_token(
        "access",
        user_id,
        lifetime=settings.access_token_ttl,
        jti=access_jti,
        **common,
    )
    pair = TokenPair(
        access.token,
        refresh.token,
        access.jti,
        refresh.jti,
        family_id,
        access.claims["exp"],
        refresh.claims["exp"],
    )
    return pair, refresh.claims["iat"]


def _new_session(
    user_id: str,
    tenant_id: str | None,
    client_id: str | None,
    scopes: Iterable[str],
    settings: RevokerSettings,
) -> tuple[TokenPair, NewSession]:
    scopes = tuple(scopes)
    pair, created = issue_session_tokens(
        user_id,
        tenant_id=tenant_id,
        family_id=k.family_id_prefix(k.bucket_of_user(user_id, settings.session_buckets))
        + generate_jti(),
        client_id=client_id,
        scopes=scopes,
        settings=settings,
    )
    record: NewSession = {
        "user_id": user_id,
        "tenant_id": tenant_id,
        "client_id": client_id,
        "scopes": scopes,
        "current_jti": pair.refresh_jti,
        "created": created,
        "expires": pair.refresh_expires_at,
    }
    return pair, record


async def start_session(
    user_id: str,
    *,
    tenant_id: str | None,
    client_id: str | None = None,
    scopes: Iterable[str] = (),
    store: RedisTokenRevocationStore | None = None,
) -> TokenPair:
    """Open a login session: a new refresh family, recorded in its user's bucket."""
    store = store or get_revocation_store()
    pair, record = _new_session(user_id, tenant_id, client_id, scopes, store.settings)
    await store.record_session(pair.family_id, **record)
    return pair


def start_session_sync(
    user_id: str,
    *,
    tenant_id: str | None,
    client_id: str | None = None,
    scopes: Iterable[str] = (),
    store: SyncRedisTokenRevocationStore | None = None,
) -> TokenPair:
    """The blocking twin of :func:`start_session`."""
    store = store or get_sync_revocation_store()
    pair, record = _new_session(user_id, tenant_id, client_id, scopes, store.settings)
    store.record_session(pair.family_id, **record)
    return pair
