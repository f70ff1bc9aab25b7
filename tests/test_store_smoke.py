"""Smoke test of the fixtures: each backend of the table revokes and checks a token."""

from __future__ import annotations

from revoker.store import RedisTokenRevocationStore
from revoker.tokens import create_access_token, decode_token


async def test_revoke_then_check(store: RedisTokenRevocationStore) -> None:
    """A token revoked by jti is reported revoked by the jti rule; another one is not."""
    token, jti = create_access_token("alice", tenant_id="acme", settings=store.settings)
    other, _ = create_access_token("alice", tenant_id="acme", settings=store.settings)
    assert await store.revoke_token(jti=jti, reason="logout") is True
    status = await store.is_revoked(decode_token(token, settings=store.settings))
    assert status.revoked and status.rule == "jti" and status.reason == "logout"
    assert not await store.is_revoked(decode_token(other, settings=store.settings))
