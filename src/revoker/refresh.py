"""Refresh-token rotation with reuse detection.

A rotation verifies the presented token (refresh type only; a bad token fails before anything is
written), signs the successor pair, and then asks Redis, in one script call
(``scripts/rotate_refresh.lua``), to make that pair current. The script decides atomically:

* the token is revoked (its family, its jti, or a user/tenant watermark): nothing is written;
* the family is unknown (never started, expired, or not this user's): nothing is written;
* the token is the family's current one: the new refresh jti replaces it;
* it is the one just rotated, within ``REVOKER_REFRESH_REUSE_GRACE_SECONDS``: a client retrying
  after a lost response gets the same successor again (same jtis, same iat, so the same claims);
* anything else is reuse: the family is revoked in that same step, so its refresh and access
  tokens stop working everywhere, whatever happens next. The follow-up (audit, record clean-up,
  optional escalation to the user) is a Celery job; if the broker is down it stays pending in the
  job outbox and runs later. Under ``REVOKER_DURABILITY`` the rotation returns (raises
  RefreshTokenReused) only once the mark is durable, DurabilityNotReached otherwise.

Because the revoked mark is checked inside the script, a rotation racing a logout
(``revoke_family``) cannot succeed once the logout has returned.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from revoker import exceptions as exc
from revoker.keys import encode_mark
from revoker.metrics import count_revocation
from revoker.rules import now_us
from revoker.sessions import TokenPair, issue_session_tokens
from revoker.settings import RevokerSettings
from revoker.store import (
    RedisTokenRevocationStore,
    Rotation,
    RotationReply,
    SyncRedisTokenRevocationStore,
    get_revocation_store,
    get_sync_revocation_store,
)
from revoker.tokens import TokenData, get_verifier

__all__ = ["REUSE_REASON", "rotate_refresh_token", "rotate_refresh_token_sync"]

logger = logging.getLogger("revoker.refresh")

#: The reason recorded on a family revoked because one of its refresh tokens was reused.
REUSE_REASON: Final = "refresh token reuse"


def _verify(refresh_token: str, settings: RevokerSettings) -> TokenData:
    data = get_verifier(settings).decode(refresh_token, "refresh")
    if data.family is None:
        raise exc.MissingClaim("refresh token is missing the 'fam' claim")
    return data


def _sign(
    data: TokenData,
    settings: RevokerSettings,
    *,
    access_jti: str | None = None,
    refresh_jti: str | None = None,
    issued_at_us: int,
) -> TokenPair:
    """The successor pair: same user, tenant, client, scopes and family as ``data``."""
    assert data.family is not None  # checked by _verify
    pair, _ = issue_session_tokens(
        data.sub,
        tenant_id=data.tenant,
        family_id=data.family,
        client_id=data.client,
        scopes=data.scopes,
        settings=settings,
        access_jti=access_jti,
        refresh_jti=refresh_jti,
        issued_at_us=issued_at_us,
    )
    return pair


def _successor(data: TokenData, settings: RevokerSettings) -> tuple[TokenPair, Rotation]:
    """Sign the pair that replaces ``data`` and the script arguments that make it current."""
    issued_at_us = now_us()
    pair = _sign(data, settings, issued_at_us=issued_at_us)
    new: Rotation = {
        "refresh_jti": pair.refresh_jti,
        "access_jti": pair.access_jti,
        "issued_at_us": issued_at_us,
        "expires_at": pair.refresh_expires_at,
        "reuse_mark": encode_mark(issued_at_us, REUSE_REASON),
    }
    return pair, new


def _resolve(
    data: TokenData, pair: TokenPair, reply: RotationReply, settings: RevokerSettings
) -> TokenPair:
    """The pair to return for ``reply``, or the error it means (reuse is the caller's)."""
    assert data.family is not None
    if reply.outcome == "rotated":
        return pair
    if reply.outcome == "grace":
        assert reply.issued_at_us is not None
        return _sign(
            data,
            settings,
            access_jti=reply.access_jti,
            refresh_jti=reply.refresh_jti,
            issued_at_us=reply.issued_at_us,
        )
    if reply.outcome == "unknown":
        raise exc.UnknownFamily(data.family)
    if reply.outcome == "revoked":
        assert reply.status is not None
        if reply.status.rule == "family":
            raise exc.FamilyRevoked(data.family)
        raise exc.TokenRevoked(reply.status, data)
    raise exc.StoreError(f"unexpected rotation outcome {reply.outcome!r}")


def _enqueue_follow_up(data: TokenData, settings: RevokerSettings) -> None:
    """Enqueue the family-reuse job. Never raises: the family is already revoked."""
    assert data.family is not None
    logger.warning(
        "refresh token reuse: family revoked",
        extra={"family_id": data.family, "tenant_id": data.tenant, "user_id": data.sub},
    )
    try:
        from revoker.jobs import enqueue_family_reuse

        enqueue_family_reuse(
            data.family, tenant_id=data.tenant, user_id=data.sub, settings=settings
        )
    except exc.DuplicateJob:
        pass  # a follow-up for this family is already on its way
    except Exception:  # the revocation is done; a lost follow-up must not hide it
        logger.exception(
            "refresh token reuse: could not enqueue the follow-up job",
            extra={"family_id": data.family, "tenant_id": data.tenant},
        )


async def rotate_refresh_token(
    refresh_token: str, *, store: RedisTokenRevocationStore | None = None
) -> TokenPair:
    """Exchange a refresh token for a new access and refresh token of the same session.

    Raises a :class:`~revoker.exceptions.TokenError` for a token that does not verify as a refresh
    token (nothing is written), :class:`~revoker.exceptions.RefreshTokenReused` when a superseded
    token is presented (the family is revoked), :class:`~revoker.exceptions.FamilyRevoked`,
    :class:`~revoker.exceptions.UnknownFamily`, :class:`~revoker.exceptions.TokenRevoked` (by
    jti or watermark) and :class:`~revoker.exceptions.StoreUnavailable` (also
    :class:`~revoker.exceptions.DurabilityNotReached` for a reuse whose mark is written but not
    acknowledged as durable: the follow-up is enqueued all the same).
    """
    store = store or get_revocation_store()
    data = _verify(refresh_token, store.settings)
    if store.is_cluster:
        status = await store.rotation_precheck(data)
        if status.revoked:
            raise exc.TokenRevoked(status, data)
    pair, new = _successor(data, store.settings)
    reply = await store.rotate_refresh(data, **new)
    if reply.outcome == "reuse":
        assert data.family is not None
        count_revocation(
            "family", "rotation", target=data.family, tenant=data.tenant, reason="reuse"
        )
        await asyncio.to_thread(_enqueue_follow_up, data, store.settings)
        # The family's mark is a revocation: acknowledged durable (REVOKER_DURABILITY), after the
        # follow-up is on its way (DurabilityNotReached if the wait falls short: it was written).
        await store.acknowledge_reuse()
        raise exc.RefreshTokenReused(data.family)
    return _resolve(data, pair, reply, store.settings)


def rotate_refresh_token_sync(
    refresh_token: str, *, store: SyncRedisTokenRevocationStore | None = None
) -> TokenPair:
    """The blocking twin of :func:`rotate_refresh_token`."""
    store = store or get_sync_revocation_store()
    data = _verify(refresh_token, store.settings)
    if store.is_cluster:
        status = store.rotation_precheck(data)
        if status.revoked:
            raise exc.TokenRevoked(status, data)
    pair, new = _successor(data, store.settings)
    reply = store.rotate_refresh(data, **new)
    if reply.outcome == "reuse":
        assert data.family is not None
        count_revocation(
            "family", "rotation", target=data.family, tenant=data.tenant, reason="reuse"
        )
        _enqueue_follow_up(data, store.settings)
        # The family's mark is a revocation: acknowledged durable (REVOKER_DURABILITY), after the
        # follow-up is on its way (DurabilityNotReached if the wait falls short: it was written).
        store.acknowledge_reuse()
        raise exc.RefreshTokenReused(data.family)
    return _resolve(data, pair, reply, store.settings)
