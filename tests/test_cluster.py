"""Redis Cluster: three real nodes (started once per session, conftest); every revocation works.

No CROSSSLOT error anywhere (redis-py raises one for any multi-key command across slots), the
check reads at most three slots (jti, tenant, integrity), and tenants spread over the nodes are
revoked independently.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import redis
import redis.asyncio.cluster
import redis.cluster
from redis.crc import key_slot

from conftest import make_settings
from revoker.keys import bucket_of_user, family_id_prefix
from revoker.localredis import RedisCluster3
from revoker.rules import now_us
from revoker.sessions import start_session, start_session_sync
from revoker.settings import RevokerSettings
from revoker.store import RedisTokenRevocationStore, SyncRedisTokenRevocationStore
from revoker.tokens import TokenData, decode_token

pytestmark = pytest.mark.cluster

AnyStore = RedisTokenRevocationStore | SyncRedisTokenRevocationStore


@pytest.fixture
def cluster(redis_cluster: RedisCluster3) -> RedisCluster3:
    """The session's three-node cluster (conftest), shared with the table's cluster entry."""
    return redis_cluster


@pytest.fixture
def cluster_settings(cluster: RedisCluster3) -> RevokerSettings:
    """Settings for the cluster (a fresh prefix per test; the cluster is thrown away)."""
    return make_settings(redis_url=cluster.url, redis_cluster=True, redis_timeout=2.0)


class Call:
    """Drive an async or a sync store with the same awaitable calls."""

    def __init__(self, store: AnyStore) -> None:
        self.store = store

    async def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.store, method)(*args, **kwargs)
        return await result if asyncio.iscoroutine(result) else result


@pytest.fixture(params=["async-settings", "sync-settings", "async-client", "sync-client"])
async def call(
    request: pytest.FixtureRequest, cluster: RedisCluster3, cluster_settings: RevokerSettings
) -> AsyncIterator[Call]:
    """A cluster store: built from settings (make_*_client) or around an explicit client."""
    kind, how = request.param.split("-")
    port = cluster.nodes[0].port
    store: AnyStore
    if kind == "async":
        client: Any = (
            redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=port)
            if how == "client"
            else None
        )
        store = RedisTokenRevocationStore(client, settings=cluster_settings)
    else:
        client = (
            redis.cluster.RedisCluster(host="127.0.0.1", port=port) if how == "client" else None
        )
        store = SyncRedisTokenRevocationStore(client, settings=cluster_settings)
    assert store.is_cluster
    yield Call(store)
    if isinstance(store, RedisTokenRevocationStore):
        await store.aclose()
    else:
        store.close()


def token(
    sub: str = "alice", *, tenant: str | None = "acme", family: str | None = None, iat: float = 0
) -> TokenData:
    iat = iat or time.time()
    return TokenData(
        sub=sub,
        jti=f"j-{now_us()}-{sub}-{tenant}",
        typ="access",
        iat=iat,
        exp=int(iat) + 900,
        tenant=tenant,
        family=family,
    )


async def test_revoke_by_jti(call: Call) -> None:
    """A jti is revoked on the cluster, with and without a tenant."""
    for tenant in ("acme", None):
        data = token(tenant=tenant)
        assert not await call("is_revoked", data)
        assert await call("revoke_token", jti=data.jti, reason="logout") is True
        assert await call("is_token_revoked", data.jti)
        status = await call("is_revoked", data)
        assert (status.rule, status.reason) == ("jti", "logout")


async def test_revoke_by_family(call: Call) -> None:
    """A family is revoked on the cluster."""
    assert await call("revoke_family", "f1", tenant_id="acme") is True
    assert (await call("is_revoked", token(family="f1"))).rule == "family"
    assert not await call("is_revoked", token(family="f2"))


async def test_revoke_by_user_and_tenant(call: Call) -> None:
    """User and tenant watermarks cut off on the cluster; later tokens pass."""
    earlier = time.time() - 1
    await call("revoke_user_tokens", "alice", tenant_id="acme")
    assert (await call("is_revoked", token(iat=earlier))).rule == "user"
    assert not await call("is_revoked", token("bob", iat=earlier))
    cutoff = await call("revoke_tenant_tokens", "acme")
    assert (await call("is_revoked", token("bob", iat=earlier))).rule == "tenant"
    assert not await call("is_revoked", token("bob", iat=cutoff + 1e-6))


async def test_every_rule_at_once_needs_no_crossslot(call: Call) -> None:
    """A token with tenant, family and user reads four keys over two slots without error."""
    data = token(family="f9", iat=time.time() - 1)
    await call("revoke_family", "f9", tenant_id="acme")
    await call("revoke_user_tokens", "alice", tenant_id="acme")
    await call("revoke_tenant_tokens", "acme")
    assert (await call("is_revoked", data)).rule == "family"
    await call("revoke_token", data.jti)
    assert (await call("is_revoked", data)).rule == "jti"


async def test_sessions_stats_and_health(call: Call, cluster_settings: RevokerSettings) -> None:
    """Recording a session, stats and health work on the cluster too."""
    family = family_id_prefix(bucket_of_user("alice", cluster_settings.session_buckets)) + "f1"
    await call(
        "record_session",
        family,
        user_id="alice",
        tenant_id="acme",
        client_id=None,
        scopes=(),
        current_jti="r1",
        created=time.time(),
        expires=int(time.time()) + 3600,
    )
    record = await call("get_session", family, tenant_id="acme")
    assert record is not None
    assert (record.user_id, record.current_jti) == ("alice", "r1")
    await call("revoke_token", "j1")
    stats = await call("get_stats")
    assert (stats["revoked_tokens"], stats["audit_entries"]) == (1, 1)
    assert (await call("health_check"))["healthy"] is True


async def test_start_session_on_the_cluster(cluster_settings: RevokerSettings) -> None:
    """start_session and start_session_sync write to the cluster; revoking the family works."""
    async with RedisTokenRevocationStore(settings=cluster_settings) as store:
        pair = await start_session("alice", tenant_id="acme", store=store)
        with SyncRedisTokenRevocationStore(settings=cluster_settings) as sync_store:
            other = start_session_sync("alice", tenant_id="acme", store=sync_store)
            # Both sessions are fields of alice's one bucket, each found again by its id.
            bucket = sync_store.keys.session_bucket(
                "acme", bucket_of_user("alice", cluster_settings.session_buckets)
            )
            assert {f.decode() for f in sync_store.client.hkeys(bucket)} == {
                pair.family_id,
                other.family_id,
            }
            assert sync_store.client.ttl(bucket) > 0
            assert sync_store.get_session(other.family_id, tenant_id="acme") is not None
        await store.revoke_family(pair.family_id, tenant_id="acme")
        assert await store.is_revoked(decode_token(pair.access_token, settings=store.settings))
        assert not await store.is_revoked(decode_token(other.access_token, settings=store.settings))


class CommandStats:
    """Per node (host:port), the commands it ran since the last reset, scripts' own included.

    Read over one connection per node opened beforehand: its own commands (HELLO, INFO) are
    not counted, only the CONFIG RESETSTAT, which is left out.
    """

    def __init__(self, cluster: RedisCluster3) -> None:
        self.clients = {f"127.0.0.1:{n.port}": redis.Redis(port=n.port) for n in cluster.nodes}
        for client in self.clients.values():
            client.ping()

    def reset(self) -> None:
        for client in self.clients.values():
            client.config_resetstat()

    def read(self) -> dict[str, Counter[str]]:
        out: dict[str, Counter[str]] = {}
        for node, client in self.clients.items():
            stats = cast(dict[str, dict[str, Any]], client.info("commandstats"))
            calls = Counter(
                {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
            )
            del calls["config|resetstat"]
            if +calls:
                out[node] = +calls
        return out

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_check_sends_one_script_call_per_slot(
    cluster: RedisCluster3,
    cluster_settings: RevokerSettings,
    kind: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check sends one script call per slot involved (at most three: the jti's, the
    tenant's and the integrity slot), each to the node serving the slot, and nothing else; the
    async store sends them in parallel."""
    store: AnyStore = (
        RedisTokenRevocationStore(settings=cluster_settings)
        if kind == "async"
        else SyncRedisTokenRevocationStore(settings=cluster_settings)
    )
    call = Call(store)
    sent: list[str] = []
    in_flight = most = 0
    if isinstance(store, RedisTokenRevocationStore):
        send = store.client.execute_command

        async def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal in_flight, most
            sent.append(str(args[0]).upper())
            in_flight += 1
            most = max(most, in_flight)
            try:
                return await send(*args, **kwargs)
            finally:
                in_flight -= 1

        monkeypatch.setattr(store.client, "execute_command", counted)
    else:
        send_sync = store.client.execute_command

        def counted_sync(*args: Any, **kwargs: Any) -> Any:
            sent.append(str(args[0]).upper())
            return send_sync(*args, **kwargs)

        monkeypatch.setattr(store.client, "execute_command", counted_sync)
    probe = redis.cluster.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    stats = CommandStats(cluster)
    try:
        await call("revoke_family", "f1", tenant_id="acme")
        cases = [(token(tenant=None), None), (token(), None), (token(family="f1"), "family")]
        for data, rule in cases:
            keys = [k for k in store.core.check_keys(data) if k is not None]
            keys.append(store.keys.integrity)  # read with the global watermark, in its slot
            slots = {key_slot(k.encode()) for k in keys}
            assert len(slots) <= 3
            # Connections opened and the script loaded on these nodes before counting.
            await call("is_revoked", data)
            stats.reset()
            sent.clear()
            most = 0

            assert (await call("is_revoked", data)).rule == rule

            assert sent == ["EVALSHA"] * len(slots)
            # Server side: per node, one EVALSHA per slot it serves, and only the script's reads
            # (HGET of the family's mark, HMGET of the integrity hash, GET of every other key).
            family = store.keys.family_revoked(data.tenant, data.family) if data.family else None
            expected: dict[str, Counter[str]] = {}
            for slot in slots:
                node = probe.nodes_manager.get_node_from_slot(slot).name
                expected.setdefault(node, Counter())["evalsha"] += 1
            for key in keys:
                node = probe.nodes_manager.get_node_from_slot(key_slot(key.encode())).name
                read = "hmget" if key == store.keys.integrity else "get"
                expected[node]["hget" if key == family else read] += 1
            assert stats.read() == expected
            if kind == "async":
                assert most == len(slots)  # in parallel: every slot's call was out at once
    finally:
        stats.close()
        probe.close()
        if isinstance(store, RedisTokenRevocationStore):
            await store.aclose()
        else:
            store.close()


async def test_tenants_spread_over_nodes_are_independent(
    cluster: RedisCluster3, cluster_settings: RevokerSettings
) -> None:
    """Tenants whose keys live on all three nodes are each revoked without touching the others."""
    probe = redis.cluster.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    async with RedisTokenRevocationStore(settings=cluster_settings) as store:
        by_node: dict[str, str] = {}
        for i in range(200):
            tenant = f"tenant-{i}"
            slot = key_slot(store.keys.tenant_watermark(tenant).encode())
            node = probe.nodes_manager.get_node_from_slot(slot)
            by_node.setdefault(node.name, tenant)
            if len(by_node) == 3:
                break
        probe.close()
        assert len(by_node) == 3
        tenants = list(by_node.values())
        earlier = time.time() - 1
        for i, tenant in enumerate(tenants):
            await store.revoke_tenant_tokens(tenant)
            for j, other in enumerate(tenants):
                status = await store.is_revoked(token(tenant=other, iat=earlier))
                assert status.revoked == (j <= i), (tenant, other)
