"""Login sessions: one pipeline writes the record into its user's session bucket, with its TTL."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conftest import Backend, CheckPath, private_settings
from revoker.exceptions import InvalidIdentifier
from revoker.keys import (
    KeyLayout,
    bucket_of_user,
    decode_record,
    family_bucket,
    family_id_prefix,
    family_ttl,
)
from revoker.rules import to_us
from revoker.sessions import TokenPair, start_session, start_session_sync
from revoker.settings import RevokerSettings
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
    record: bytes | None,
    bucket_ttl: int,
    prefix_keys: set[bytes],
    bucket_key: str,
    pair: TokenPair,
    settings: RevokerSettings,
    tenant: str | None,
) -> None:
    """The session's record is in its user's bucket, with every field; beside it only its
    client-index entry (its creation time, the bucket's TTL) and the tenant's index marker."""
    bucket = bucket_of_user("alice", settings.session_buckets)
    assert pair.family_id.startswith(family_id_prefix(bucket))
    assert family_bucket(pair.family_id) == bucket
    assert record is not None
    data = decode_record(record)
    refresh = decode_token(pair.refresh_token, "refresh", settings=settings)
    assert data["user"] == "alice"
    assert data["client"] == "web"
    assert data["current"] == pair.refresh_jti
    assert data["scopes"] == ("read", "write")
    assert int(data["expires"]) == pair.refresh_expires_at
    assert int(data["created"]) == to_us(refresh.iat)
    assert [data[n] for n in ("previous", "rotated", "successor", "issued")] == ["", "", "", ""]
    expected = family_ttl(settings.refresh_token_ttl, settings.leeway)
    assert expected - 2 <= bucket_ttl <= expected
    # No per-family key: the bucket, the client's index bucket and the tenant's marker.
    keys = KeyLayout(settings.key_prefix)
    index_key = keys.client_index(tenant, "web", bucket)
    marker_key = keys.client_index_marker(tenant)
    assert prefix_keys == {bucket_key.encode(), index_key.encode(), marker_key.encode()}


@pytest.mark.parametrize("tenant", ["acme", None])
async def test_start_session_writes_its_record_in_one_pipeline(
    store: RedisTokenRevocationStore, tenant: str | None
) -> None:
    """start_session: one pipeline writes the record into the user's bucket and sets its TTL."""
    trips = RoundTrips(store.client)
    pair = await start_session(
        "alice", tenant_id=tenant, client_id="web", scopes=("read", "write"), store=store
    )
    assert trips.total == 1
    # The record and its TTL, its client-index entry and TTL, the marker and its TTL.
    assert trips.pipelines == [6]
    c = store.client
    bucket_key = store.keys.session_bucket(
        tenant, bucket_of_user("alice", store.settings.session_buckets)
    )
    check_written(
        await c.hget(bucket_key, pair.family_id),
        await c.ttl(bucket_key),
        {key async for key in c.scan_iter(match=f"{store.settings.key_prefix}:*")},
        bucket_key,
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
    # The record and its TTL, its client-index entry and TTL, the marker and its TTL.
    assert trips.pipelines == [6]
    c = sync_store.client
    bucket_key = sync_store.keys.session_bucket(
        tenant, bucket_of_user("alice", sync_store.settings.session_buckets)
    )
    check_written(
        c.hget(bucket_key, pair.family_id),
        c.ttl(bucket_key),
        set(c.scan_iter(match=f"{sync_store.settings.key_prefix}:*")),
        bucket_key,
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


@pytest.fixture
async def small_store(
    backend_entry: Backend, check_path: CheckPath
) -> AsyncIterator[RedisTokenRevocationStore]:
    """An async store on the backend under test, as the table builds it, with only 4 session
    buckets per tenant (users share them)."""
    with private_settings(session_buckets=4, **backend_entry.timeouts) as settings:
        s = backend_entry.async_store(settings)
        check_path.watch(s)
        yield s
        await s.aclose()
        check_path.assert_kept_to(backend_entry)


def users_sharing_a_bucket(buckets: int) -> tuple[str, str]:
    """Two different users whose sessions live in the same bucket."""
    seen: dict[int, str] = {}
    for i in range(1000):
        user = f"user-{i}"
        bucket = bucket_of_user(user, buckets)
        if bucket in seen:
            return seen[bucket], user
        seen[bucket] = user
    raise AssertionError("no two users share a bucket")


async def test_family_id_names_its_users_bucket(small_store: RedisTokenRevocationStore) -> None:
    """Each family id start_session mints starts with its user's bucket; get_session finds it."""
    for user in ("alice", "bob", "carol", "dave", "zoë", "a b|c"):
        pair = await start_session(user, tenant_id="acme", store=small_store)
        bucket = bucket_of_user(user, 4)
        assert family_bucket(pair.family_id) == bucket
        assert pair.family_id.startswith(family_id_prefix(bucket))
        key = small_store.keys.session_bucket("acme", bucket)
        assert await small_store.client.hexists(key, pair.family_id)
        record = await small_store.get_session(pair.family_id, tenant_id="acme")
        assert record is not None
        assert record.user_id == user


async def test_users_sharing_a_bucket_keep_separate_records(
    small_store: RedisTokenRevocationStore,
) -> None:
    """Two users in one bucket: each session keeps its own record, and tenants stay apart."""
    first, second = users_sharing_a_bucket(4)
    a = await start_session(first, tenant_id="acme", client_id="web", store=small_store)
    b = await start_session(
        second, tenant_id="acme", client_id="cli", scopes=["x"], store=small_store
    )
    a2 = await start_session(first, tenant_id="acme", store=small_store)
    key = small_store.keys.session_bucket("acme", bucket_of_user(first, 4))
    raw = await small_store.client.hgetall(key)
    assert set(raw) == {a.family_id.encode(), b.family_id.encode(), a2.family_id.encode()}
    records = {fid.decode(): decode_record(value) for fid, value in raw.items()}
    assert (records[a.family_id]["user"], records[a.family_id]["client"]) == (first, "web")
    assert (records[b.family_id]["user"], records[b.family_id]["scopes"]) == (second, ("x",))
    assert records[a2.family_id]["user"] == first
    assert records[a.family_id]["current"] == a.refresh_jti
    assert records[b.family_id]["current"] == b.refresh_jti
    got = await small_store.get_session(b.family_id, tenant_id="acme")
    assert got is not None
    assert (got.user_id, got.client_id, got.current_jti) == (second, "cli", b.refresh_jti)
    # The same family id in another tenant is another bucket key: unknown there.
    assert await small_store.get_session(a.family_id, tenant_id="other") is None
    assert await small_store.get_session(a.family_id, tenant_id=None) is None


@pytest.mark.parametrize("kind", ["other-bucket", "foreign"])
async def test_record_session_refuses_a_family_outside_the_users_bucket(
    small_store: RedisTokenRevocationStore, kind: str
) -> None:
    """A family id not naming its user's bucket is InvalidIdentifier; nothing is written."""
    bucket = bucket_of_user("alice", 4)
    family_id = family_id_prefix((bucket + 1) % 4) + "jti1" if kind == "other-bucket" else "fam-1"
    with pytest.raises(InvalidIdentifier, match="bucket"):
        await small_store.record_session(
            family_id,
            user_id="alice",
            tenant_id="acme",
            client_id=None,
            scopes=(),
            current_jti="rt1",
            created=time.time(),
            expires=int(time.time()) + 3600,
        )
    prefix = small_store.settings.key_prefix
    assert [key async for key in small_store.client.scan_iter(match=f"{prefix}:*")] == []
    assert await small_store.get_session(family_id, tenant_id="acme") is None
