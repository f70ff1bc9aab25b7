"""Login sessions: one pipeline writes the family and its index entries, with the right TTLs."""

from __future__ import annotations

import time
from typing import Any

import pytest

from revoker.keys import FAMILY_FIELDS, family_ttl
from revoker.sessions import TokenPair, start_session, start_session_sync
from revoker.store import RedisTokenRevocationStore, SyncRedisTokenRevocationStore
from revoker.tokens import decode_token


class RoundTrips:
    """Counts what a client sends: pipelines executed and single commands."""

    def __init__(self, client: Any) -> None:
        self.pipelines: list[int] = []
        self.singles = 0
        original_pipeline = client.pipeline
        original_execute = client.execute_command

        def pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe = original_pipeline(*args, **kwargs)
            execute = pipe.execute

            def counted(*a: Any, **kw: Any) -> Any:
                self.pipelines.append(len(pipe.command_stack))
                return execute(*a, **kw)

            pipe.execute = counted
            return pipe

        def single(*args: Any, **kwargs: Any) -> Any:
            self.singles += 1
            return original_execute(*args, **kwargs)

        client.pipeline = pipeline
        client.execute_command = single

    @property
    def total(self) -> int:
        return len(self.pipelines) + self.singles


def check_written(
    hgetall: dict[bytes, bytes],
    ttls: dict[str, int],
    scores: dict[str, float | None],
    pair: TokenPair,
    settings: Any,
    tenant: str | None,
) -> None:
    f = FAMILY_FIELDS
    record = {a.decode(): b.decode() for a, b in hgetall.items()}
    assert record[f["user"]] == "alice"
    assert record.get(f["tenant"]) == tenant
    assert record[f["client"]] == "web"
    assert record[f["current"]] == pair.refresh_jti
    assert record[f["scopes"]] == "read write"
    assert int(record[f["expires"]]) == pair.refresh_expires_at
    expected = family_ttl(settings.refresh_token_ttl, settings.leeway)
    for name, ttl in ttls.items():
        assert expected - 2 <= ttl <= expected, name
    assert scores == {
        "tenant_index": pair.refresh_expires_at,
        "user_index": pair.refresh_expires_at,
    }


@pytest.mark.parametrize("tenant", ["acme", None])
async def test_start_session_writes_family_and_indexes_in_one_pipeline(
    store: RedisTokenRevocationStore, tenant: str | None
) -> None:
    """start_session: one pipeline writes the family hash and both index entries, with TTLs."""
    trips = RoundTrips(store.client)
    pair = await start_session(
        "alice", tenant_id=tenant, client_id="web", scopes=("read", "write"), store=store
    )
    assert trips.total == 1
    assert trips.pipelines == [6]
    keys, c = store.keys, store.client
    family = keys.family(tenant, pair.family_id)
    check_written(
        await c.hgetall(family),
        {
            "family": await c.ttl(family),
            "tenant_index": await c.ttl(keys.tenant_index(tenant)),
            "user_index": await c.ttl(keys.user_index(tenant, "alice")),
        },
        {
            "tenant_index": await c.zscore(keys.tenant_index(tenant), pair.family_id),
            "user_index": await c.zscore(keys.user_index(tenant, "alice"), pair.family_id),
        },
        pair,
        store.settings,
        tenant,
    )


@pytest.mark.parametrize("tenant", ["acme", None])
def test_start_session_sync_writes_the_same(
    sync_store: SyncRedisTokenRevocationStore, tenant: str | None
) -> None:
    """start_session_sync writes exactly what start_session writes, in one pipeline."""
    trips = RoundTrips(sync_store.client)
    pair = start_session_sync(
        "alice", tenant_id=tenant, client_id="web", scopes=("read", "write"), store=sync_store
    )
    assert trips.total == 1
    assert trips.pipelines == [6]
    keys, c = sync_store.keys, sync_store.client
    family = keys.family(tenant, pair.family_id)
    check_written(
        c.hgetall(family),
        {
            "family": c.ttl(family),
            "tenant_index": c.ttl(keys.tenant_index(tenant)),
            "user_index": c.ttl(keys.user_index(tenant, "alice")),
        },
        {
            "tenant_index": c.zscore(keys.tenant_index(tenant), pair.family_id),
            "user_index": c.zscore(keys.user_index(tenant, "alice"), pair.family_id),
        },
        pair,
        sync_store.settings,
        tenant,
    )


async def test_session_tokens_carry_the_family(store: RedisTokenRevocationStore) -> None:
    """Both tokens of a session carry its family, tenant, client and scopes."""
    before = time.time()
    pair = await start_session(
        "alice", tenant_id="acme", client_id="web", scopes=["read"], store=store
    )
    access = decode_token(pair.access_token, "access", settings=store.settings)
    refresh = decode_token(pair.refresh_token, "refresh", settings=store.settings)
    for data in (access, refresh):
        assert (data.sub, data.tenant, data.family, data.client, data.scopes) == (
            "alice",
            "acme",
            pair.family_id,
            "web",
            ("read",),
        )
    assert (access.jti, refresh.jti) == (pair.access_jti, pair.refresh_jti)
    assert (access.exp, refresh.exp) == (pair.access_expires_at, pair.refresh_expires_at)
    record = await store.get_session(pair.family_id, tenant_id="acme")
    assert record is not None
    assert record.current_jti == pair.refresh_jti
    assert before <= record.created <= time.time()
    body = pair.as_response()
    assert body["token_type"] == "Bearer"
    assert 0 < body["expires_in"] <= store.settings.access_token_ttl


async def test_revoking_the_family_revokes_its_access_token(
    store: RedisTokenRevocationStore,
) -> None:
    """revoke_family(session) revokes the session's access token and no other session's."""
    pair = await start_session("alice", tenant_id="acme", store=store)
    other = await start_session("alice", tenant_id="acme", store=store)
    access = decode_token(pair.access_token, settings=store.settings)
    assert not await store.is_revoked(access)
    assert await store.revoke_family(pair.family_id, tenant_id="acme", reason="logout")
    status = await store.is_revoked(access)
    assert (status.rule, status.reason) == ("family", "logout")
    assert not await store.is_revoked(decode_token(other.access_token, settings=store.settings))


def test_sync_sessions_are_revoked_like_async_ones(
    sync_store: SyncRedisTokenRevocationStore,
) -> None:
    """A tenant-less session started sync is revoked by its family, sync."""
    pair = start_session_sync("bob", tenant_id=None, store=sync_store)
    access = decode_token(pair.access_token, settings=sync_store.settings)
    sync_store.revoke_family(pair.family_id, tenant_id=None)
    assert sync_store.is_revoked(access).rule == "family"


@pytest.mark.redis
async def test_start_session_uses_the_process_store(settings: Any) -> None:
    """Without store=, start_session records through get_revocation_store() (real Redis)."""
    from revoker.store import get_revocation_store

    pair = await start_session("carol", tenant_id="acme")
    record = await get_revocation_store().get_session(pair.family_id, tenant_id="acme")
    assert record is not None
    assert record.user_id == "carol"
    await get_revocation_store().aclose()
