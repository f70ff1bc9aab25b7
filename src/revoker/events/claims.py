"""What an event says: a revocation (:class:`Occurrence`) turned into SET or logout-token claims.

* CAEP ``session-revoked`` (OpenID CAEP 1.0) for a revoked session (family), user or tenant, with
  ``event_timestamp`` (unix seconds of the revocation), ``initiating_entity`` and ``reason_admin``;
* the subject (``sub_id``, SSF 1.0 / RFC 9493): a session is ``opaque`` (its family id), a user
  ``iss_sub`` (the issuer of the revoked tokens and the user id), a tenant ``opaque``; an event
  naming more than one of them uses a ``complex`` subject with members ``session``, ``user`` and
  ``tenant``;
* a back-channel logout token (OIDC Back-Channel Logout 1.0): ``iss``, ``aud`` (the client id),
  ``jti``, ``events`` with the logout event, ``sid`` (the family id) and ``sub`` (the user);
  never a ``nonce``. ``iat``/``exp`` are added when it is signed.

A jti is derived from the destination and the revocation (:func:`event_jti`): the same
revocation routed twice (a router restarted between queueing and acknowledging) carries the same
jti, so a receiver deduplicating by jti sees it once.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = [
    "BACKCHANNEL_LOGOUT",
    "SESSION_REVOKED",
    "VERIFICATION",
    "Occurrence",
    "event_jti",
    "initiating_entity",
    "logout_claims",
    "session_revoked_claims",
    "subject",
    "subject_members",
    "verification_claims",
]

SESSION_REVOKED: Final = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
VERIFICATION: Final = "https://schemas.openid.net/secevent/ssf/event-type/verification"
BACKCHANNEL_LOGOUT: Final = "http://schemas.openid.net/event/backchannel-logout"

Scope = Literal["session", "user", "tenant"]


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One revocation, as the router read it from the audit stream or a job chunk."""

    scope: Scope
    #: Where it came from: ``a:<audit entry id>`` or ``j:<job id>`` (part of the jti).
    source: str
    tenant_id: str | None = None
    user_id: str | None = None
    family_id: str | None = None
    client_id: str | None = None
    at_us: int = 0
    reason: str | None = None
    #: admin | user | policy | system (see :func:`initiating_entity`).
    initiator: str = "admin"
    #: Who revoked, as audited (not sent: it tells a holder's own revocation apart).
    actor: str | None = None
    #: True for a session of a bulk job's chunk: only streams asking for per-session events get it.
    bulk: bool = False


def initiating_entity(kind: str, actor: str | None, user_id: str | None = None) -> str:
    """CAEP ``initiating_entity`` of an audit entry: a refresh-token reuse is ``policy``; the
    session's own user (RFC 7009 revocation by the holder audits its ``sub``) or an actor
    ``user:<id>`` is ``user``; no actor (the library called without one, the data-loss cut-off)
    is ``system``; any other named operator or admin client is ``admin``."""
    if kind in ("family_reuse",):
        return "policy"
    if not actor:
        return "system"
    if actor.startswith("user:") or (user_id is not None and actor == user_id):
        return "user"
    return "admin"


def subject_members(occ: Occurrence, user_issuer: str) -> dict[str, dict[str, Any]]:
    """The entities ``occ`` names, by complex-subject member name (session, user, tenant)."""
    members: dict[str, dict[str, Any]] = {}
    if occ.family_id is not None:
        members["session"] = {"format": "opaque", "id": occ.family_id}
    if occ.user_id is not None:
        members["user"] = {"format": "iss_sub", "iss": user_issuer, "sub": occ.user_id}
    if occ.tenant_id is not None:
        members["tenant"] = {"format": "opaque", "id": occ.tenant_id}
    return members


def subject(members: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The RFC 9493 subject of :func:`subject_members` (complex when there is more than one)."""
    if len(members) == 1:
        return next(iter(members.values()))
    return {"format": "complex", **members}


def event_jti(dest: str, occ: Occurrence) -> str:
    """The jti of ``occ``'s event for destination ``dest``: the same for a re-routed copy."""
    parts = f"{dest}\x00{occ.source}\x00{occ.scope}\x00{occ.family_id or ''}"
    return hashlib.sha256(parts.encode()).hexdigest()[:32]


def session_revoked_claims(
    occ: Occurrence, *, iss: str, aud: str | list[str], jti: str, user_issuer: str
) -> dict[str, Any]:
    members = subject_members(occ, user_issuer)
    """The claims of a CAEP session-revoked SET (without iat)."""
    event: dict[str, Any] = {
        "event_timestamp": occ.at_us // 1_000_000,
        "initiating_entity": occ.initiator,
    }
    if occ.reason:
        event["reason_admin"] = {"en": occ.reason}
        if occ.initiator == "user":
            # The user's own words, fit to show the user (CAEP reason_user).
            event["reason_user"] = {"en": occ.reason}
    return {
        "iss": iss,
        "aud": aud,
        "jti": jti,
        "sub_id": subject(members),
        "events": {SESSION_REVOKED: event},
    }


def verification_claims(
    *, iss: str, aud: str | list[str], stream_id: str, state: str | None
) -> dict[str, Any]:
    """The claims of an SSF verification event (without iat); its jti is random."""
    event: dict[str, Any] = {} if state is None else {"state": state}
    return {
        "iss": iss,
        "aud": aud,
        "jti": secrets.token_hex(16),
        "sub_id": {"format": "opaque", "id": stream_id},
        "events": {VERIFICATION: event},
    }


def logout_claims(occ: Occurrence, *, iss: str, client_id: str, jti: str) -> dict[str, Any]:
    """The claims of a back-channel logout token (without iat/exp; never a nonce)."""
    claims: dict[str, Any] = {
        "iss": iss,
        "aud": client_id,
        "jti": jti,
        "events": {BACKCHANNEL_LOGOUT: {}},
    }
    if occ.family_id is not None:
        claims["sid"] = occ.family_id
    if occ.user_id is not None:
        claims["sub"] = occ.user_id
    return claims
