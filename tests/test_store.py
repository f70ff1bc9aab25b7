"""The revocation store, async and sync, on every backend of the table (conftest.TABLE).

Each test runs on {async, sync} x {fakeredis, real Redis through an injected client, real Redis
through a store built from settings (the async check on the pipelined connection)}; the tests of
the check and of single revocations also on a Redis Cluster. Round trips are counted on a Redis of
our own (INFO commandstats), not assumed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio

from conftest import (
    REDIS_URL,
    TABLE,
    Backend,
    CheckPath,
    delete_prefix,
    make_settings,
    with_cluster,
)
from revoker import exceptions as exc
from revoker.keys import MAX_TTL, bucket_of_user, family_id_prefix
from revoker.localredis import LocalRedis, free_port
from revoker.rules import now_us, to_us
from revoker.settings import RevokerSettings, configure
from revoker.store import (
    RedisTokenRevocationStore,
    SyncRedisTokenRevocationStore,
    get_revocation_store,
    get_sync_revocation_store,
)
from revoker.tokens import TokenData, create_access_token, decode_token

AnyStore = RedisTokenRevocationStore | SyncRedisTokenRevocationStore


class Either:
    """One store, async or sync, driven by the same awaitable calls."""

    def __init__(self, store: AnyStore) -> None:
        self.store = store
        self.settings: RevokerSettings = store.settings
        self.keys = store.keys

    async def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.store, method)(*args, **kwargs)
        if asyncio.iscoroutine(result):
            return await result
        return result

    async def raw(self, *command: Any) -> Any:
        """A raw Redis command on the store's own client."""
        result = self.store.client.execute_command(*command)
        if asyncio.iscoroutine(result):
            return await result
        return result

    async def close(self) -> None:
        if isinstance(self.store, RedisTokenRevocationStore):
            await self.store.aclose()
        else:
            self.store.close()


def build(kind: str, entry: Backend, settings: RevokerSettings) -> AnyStore:
    """The async or the sync store of ``entry`` for ``settings``."""
    return entry.async_store(settings) if kind == "async" else entry.sync_store(settings)


@pytest.fixture(params=["async", "sync"])
async def s(
    request: pytest.FixtureRequest,
    backend_entry: Backend,
    backend_settings: RevokerSettings,
    check_path: CheckPath,
) -> AsyncIterator[Either]:
    """The async or the sync store on the backend under test."""
    either = Either(build(request.param, backend_entry, backend_settings))
    if isinstance(either.store, RedisTokenRevocationStore):
        check_path.watch(either.store)
    yield either
    await either.close()
    check_path.assert_kept_to(backend_entry)


@pytest.fixture
async def make_store(
    backend_entry: Backend, backend_settings: RevokerSettings
) -> AsyncIterator[Callable[..., Either]]:
    """Build extra stores with settings overrides; their keys are deleted afterwards."""
    made: list[Either] = []

    def factory(kind: str = "sync", **overrides: Any) -> Either:
        fresh = {"key_prefix": make_settings().key_prefix, **overrides}
        either = Either(build(kind, backend_entry, backend_settings.model_copy(update=fresh)))
        made.append(either)
        return either

    yield factory
    for either in made:
        await either.close()
    if backend_entry.on_test_redis:
        client = redis.Redis.from_url(REDIS_URL)
        for either in made:
            delete_prefix(client, either.settings.key_prefix)
        client.close()


def token(
    sub: str = "alice",
    *,
    tenant: str | None = "acme",
    family: str | None = None,
    jti: str | None = None,
    iat: float | None = None,
) -> TokenData:
    """Verified claims as the middleware would hand them to the store."""
    iat = time.time() if iat is None else iat
    return TokenData(
        sub=sub,
        jti=jti or f"j-{now_us()}-{sub}",
        typ="access",
        iat=iat,
        exp=int(iat) + 900,
        tenant=tenant,
        family=family,
    )


# --- the table itself -----------------------------------------------------------------------


@with_cluster
async def test_each_backend_checks_over_its_own_path(
    store: RedisTokenRevocationStore, backend_entry: Backend, check_path: CheckPath
) -> None:
    """The pipelined entry checks on the pipelined connection, never via redis-py; the others
    via their client: the table cannot fall back to another path unnoticed."""
    await store.revoke_token("j1", reason="logout")
    assert (await store.is_revoked(token(jti="j1"))).rule == "jti"
    assert not await store.is_revoked(token(tenant=None))
    if backend_entry.pipelined:
        assert (check_path.pipelined, check_path.client) == (2, 0)
        # Server side: the pipelined socket is a client of this Redis whose last command was
        # the check script.
        assert store._pipelined is not None
        assert store._pipelined._protocol is not None
        transport = store._pipelined._protocol.transport
        assert transport is not None
        host, port = transport.get_extra_info("sockname")[:2]
        admin = redis.Redis.from_url(REDIS_URL)
        try:
            [connection] = [c for c in admin.client_list() if c["addr"] == f"{host}:{port}"]
        finally:
            admin.close()
        assert connection["cmd"] == "evalsha"
    else:
        assert store._pipelined is None
        assert check_path.pipelined == 0
        # One script call per check on a single server; one per slot on a cluster.
        assert check_path.client >= 2 if backend_entry.cluster else check_path.client == 2


# --- single tokens --------------------------------------------------------------------------


@with_cluster
async def test_seed_call_revokes_tenantless_and_tenant_tokens(s: Either) -> None:
    """revoke_token(jti=..., reason="logout") works whatever tenant the token carries."""
    for tenant in (None, "acme"):
        issued, jti = create_access_token("alice", tenant_id=tenant, settings=s.settings)
        data = decode_token(issued, settings=s.settings)
        assert not await s("is_revoked", data)
        assert await s("revoke_token", jti=jti, reason="logout") is True
        status = await s("is_revoked", data)
        assert (status.revoked, status.rule, status.reason) == (True, "jti", "logout")


@with_cluster
async def test_revoke_token_reports_newly_revoked_once(s: Either) -> None:
    """The first revocation returns True, a repeat False; the jti reads as revoked."""
    assert await s("is_token_revoked", "j1") is False
    assert await s("revoke_token", "j1", reason="logout") is True
    assert await s("revoke_token", "j1", reason="again") is False
    assert await s("is_token_revoked", "j1") is True
    assert await s("is_token_revoked", "j2") is False


@with_cluster
@pytest.mark.parametrize("exp", [1e300, 10.0**19 + 1, 2**70, float("inf"), float("nan"), -1e300])
async def test_a_token_with_a_huge_exp_is_revoked_with_a_bounded_entry(
    s: Either, exp: float
) -> None:
    """A validly signed token may carry any exp: its revocation is written (Redis refused the
    unbounded EX: "invalid expire time"), with a TTL of at most keys.MAX_TTL."""
    assert await s("revoke_token", "j-huge", expires_at=exp) is True
    assert await s("is_token_revoked", "j-huge") is True
    ttl = await s.raw("TTL", s.keys.jti("j-huge"))
    assert 0 < ttl <= MAX_TTL
    if exp > 0:
        assert ttl > MAX_TTL - 60


@with_cluster
async def test_repeat_revocation_keeps_the_first_mark_and_never_shortens(s: Either) -> None:
    """A repeat keeps the first time and reason; a later exp extends the entry, never shortens."""
    await s("revoke_token", "j1", reason="logout")
    first = await s("is_revoked", token(jti="j1"))
    short_ttl = await s.raw("TTL", s.keys.jti("j1"))
    await s("revoke_token", "j1", reason="again", expires_at=time.time() + 86_400)
    again = await s("is_revoked", token(jti="j1"))
    assert (again.reason, again.revoked_at) == ("logout", first.revoked_at)
    long_ttl = await s.raw("TTL", s.keys.jti("j1"))
    assert long_ttl > 86_000 > short_ttl
    await s("revoke_token", "j1", expires_at=time.time() + 10)
    assert await s.raw("TTL", s.keys.jti("j1")) >= long_ttl - 2
    await s("revoke_family", "f1", tenant_id="acme", reason="logout")
    await s("revoke_family", "f1", tenant_id="acme", reason="again")
    assert (await s("is_revoked", token(family="f1"))).reason == "logout"


@with_cluster
async def test_revoked_at_is_the_time_of_the_call(s: Either) -> None:
    """The status says when the jti was revoked."""
    before = time.time()
    await s("revoke_token", "j1", expires_at=time.time() + 60)
    status = await s("is_revoked", token(jti="j1"))
    assert before - 0.01 <= status.revoked_at <= time.time() + 0.01


# --- families -------------------------------------------------------------------------------


@with_cluster
async def test_revoke_family_revokes_tokens_of_that_family_only(s: Either) -> None:
    """Tokens carrying the family are revoked; other families and other tenants are not."""
    assert await s("revoke_family", "f1", tenant_id="acme", reason="logout") is True
    assert await s("revoke_family", "f1", tenant_id="acme") is False
    status = await s("is_revoked", token(family="f1"))
    assert (status.rule, status.reason) == ("family", "logout")
    assert not await s("is_revoked", token(family="f2"))
    assert not await s("is_revoked", token())
    assert not await s("is_revoked", token(family="f1", tenant="other"))


@with_cluster
async def test_revoke_family_of_tenantless_tokens(s: Either) -> None:
    """A family of tokens without a tenant is revoked with tenant_id=None."""
    await s("revoke_family", "f1", tenant_id=None)
    assert (await s("is_revoked", token(tenant=None, family="f1"))).rule == "family"
    assert not await s("is_revoked", token(tenant="acme", family="f1"))


async def test_revoke_family_needs_the_tenant_spelled_out(s: Either) -> None:
    """tenant_id has no default: forgetting it would silently revoke nothing."""
    with pytest.raises(TypeError, match="tenant_id"):
        await s("revoke_family", "f1")


# --- watermarks -----------------------------------------------------------------------------


@with_cluster
async def test_revoke_user_cuts_off_at_the_call(s: Either) -> None:
    """Tokens issued before revoke_user_tokens are revoked, those after are not."""
    before = token(iat=time.time() - 1)
    cutoff = await s("revoke_user_tokens", "alice", tenant_id="acme", reason="compromised")
    assert before.iat < cutoff <= time.time()
    after = token()
    assert after.iat > cutoff
    status = await s("is_revoked", before)
    assert (status.rule, status.revoked_at) == ("user", cutoff)
    assert not await s("is_revoked", after)
    assert not await s("is_revoked", token("bob", iat=before.iat))
    assert not await s("is_revoked", token(tenant="other", iat=before.iat))
    assert not await s("is_revoked", token(tenant=None, iat=before.iat))


@with_cluster
async def test_revoke_user_without_tenant(s: Either) -> None:
    """A tenant-less user is revoked with tenant_id=None, leaving tenant tokens alone."""
    before = time.time() - 1
    await s("revoke_user_tokens", "alice", tenant_id=None)
    assert (await s("is_revoked", token(tenant=None, iat=before))).rule == "user"
    assert not await s("is_revoked", token(tenant="acme", iat=before))


@with_cluster
async def test_revoke_tenant_cuts_off_every_user(s: Either) -> None:
    """Every token of the tenant issued before the call is revoked; others are untouched."""
    earlier = time.time() - 1
    cutoff = await s("revoke_tenant_tokens", "acme", reason="breach", actor="ops")
    for user in ("alice", "bob"):
        assert (await s("is_revoked", token(user, iat=earlier))).rule == "tenant"
    assert not await s("is_revoked", token(iat=cutoff + 1e-6))
    assert not await s("is_revoked", token(tenant="other", iat=earlier))
    assert not await s("is_revoked", token(tenant=None, iat=earlier))


@with_cluster
async def test_iat_equal_to_the_cutoff_is_revoked(s: Either) -> None:
    """A token whose iat is the returned cut-off, to the microsecond, is revoked."""
    cutoff = await s("revoke_tenant_tokens", "acme")
    assert (await s("is_revoked", token(iat=cutoff))).revoked
    assert not (await s("is_revoked", token(iat=(to_us(cutoff) + 1) / 1e6))).revoked


@with_cluster
async def test_watermark_never_moves_back(s: Either, monkeypatch: pytest.MonkeyPatch) -> None:
    """A later call with an older clock keeps the newer cut-off in place (and returns it)."""
    first = await s("revoke_user_tokens", "alice", tenant_id="acme")
    monkeypatch.setattr("revoker.store._base.now_us", lambda: to_us(first) - 5_000_000)
    assert await s("revoke_user_tokens", "alice", tenant_id="acme") == first
    assert (await s("is_revoked", token(iat=first))).rule == "user"


@with_cluster
async def test_watermark_moves_forward(s: Either) -> None:
    """A second revocation moves the cut-off to the later call."""
    first = await s("revoke_tenant_tokens", "acme")
    between = token(iat=(to_us(first) + 1) / 1e6)
    assert not await s("is_revoked", between)
    second = await s("revoke_tenant_tokens", "acme")
    assert second > first
    assert (await s("is_revoked", between)).rule == "tenant"


@with_cluster
async def test_issued_before_fails_issued_after_passes_every_time(s: Either) -> None:
    """Real tokens around revoke_user/tenant: before is revoked, after passes, 250 times over."""
    settings = s.settings
    for i in range(250):
        user = f"u{i % 7}"
        before = decode_token(
            create_access_token(user, tenant_id="acme", settings=settings)[0], settings=settings
        )
        if i % 2:
            await s("revoke_user_tokens", user, tenant_id="acme")
        else:
            await s("revoke_tenant_tokens", "acme")
        after = decode_token(
            create_access_token(user, tenant_id="acme", settings=settings)[0], settings=settings
        )
        assert (await s("is_revoked", before)).revoked, i
        assert not (await s("is_revoked", after)).revoked, i


async def test_revoke_tenant_none_is_refused(s: Either) -> None:
    """revoke_tenant_tokens(None) is InvalidIdentifier, not a revocation of tenant-less tokens."""
    with pytest.raises(exc.InvalidIdentifier):
        await s("revoke_tenant_tokens", None)


@pytest.mark.parametrize(
    ("method", "args", "kwargs"),
    [
        ("revoke_token", ("",), {}),
        ("revoke_token", ("x" * 300,), {}),
        ("revoke_family", ("{f}",), {"tenant_id": ""}),
        ("revoke_user_tokens", (42,), {"tenant_id": "acme"}),
        ("revoke_tenant_tokens", ("\ud800",), {}),
        ("is_token_revoked", ("",), {}),
    ],
)
async def test_bad_ids_fail_before_any_io(
    method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """Unusable ids are InvalidIdentifier even when Redis is unreachable, on either client path."""
    for entry in (TABLE["redis"], TABLE["pipelined"]):
        for kind in ("async", "sync"):
            settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
            dead = Either(build(kind, entry, settings))
            with pytest.raises(exc.InvalidIdentifier):
                await dead(method, *args, **kwargs)
            await dead.close()


# --- sessions -------------------------------------------------------------------------------


async def test_record_and_get_session(s: Either, settings: RevokerSettings) -> None:
    """A recorded session reads back field for field; an unknown one is None."""
    f1 = family_id_prefix(bucket_of_user("alice", settings.session_buckets)) + "f1"
    await s(
        "record_session",
        f1,
        user_id="alice",
        tenant_id="acme",
        client_id="web",
        scopes=("read", "write"),
        current_jti="r1",
        created=1_700_000_000.123456,
        expires=1_700_086_400,
    )
    record = await s("get_session", f1, tenant_id="acme")
    assert record is not None
    assert (record.user_id, record.tenant_id, record.client_id) == ("alice", "acme", "web")
    assert (record.current_jti, record.scopes, record.expires) == (
        "r1",
        ("read", "write"),
        1_700_086_400,
    )
    assert record.created == pytest.approx(1_700_000_000.123456, abs=1e-6)
    assert await s("get_session", f1, tenant_id="other") is None
    assert await s("get_session", "nope", tenant_id="acme") is None  # not a minted id
    assert await s("get_session", f1[:-1], tenant_id="acme") is None


# --- audit and stats ------------------------------------------------------------------------


def fields(entry: Any) -> dict[str, str]:
    _, raw = entry
    return {
        (a.decode() if isinstance(a, bytes) else a): (b.decode() if isinstance(b, bytes) else b)
        for a, b in raw.items()
    }


async def test_audit_records_who_why_what_when(s: Either) -> None:
    """Each revocation appends one entry: kind, target, tenant, reason, actor, time."""
    t0 = now_us()
    await s("revoke_token", "j1", reason="logout", actor="alice")
    await s("revoke_family", "f1", tenant_id="acme", reason="reuse", actor="system")
    await s("revoke_user_tokens", "bob", tenant_id="acme", reason="fired", actor="hr")
    await s("revoke_tenant_tokens", "acme", reason="breach", actor="ops")
    entries = [fields(e) for e in await s.raw("XRANGE", s.keys.audit, "-", "+")]
    assert [(e["kind"], e["target"], e["tenant"], e["reason"], e["actor"]) for e in entries] == [
        ("token", "j1", "", "logout", "alice"),
        ("family", "f1", "acme", "reuse", "system"),
        ("user", "bob", "acme", "fired", "hr"),
        ("tenant", "acme", "acme", "breach", "ops"),
    ]
    stamps = [int(e["at"]) for e in entries]
    assert t0 <= stamps[0] <= stamps[-1] <= now_us()


async def test_audit_stream_is_trimmed(make_store: Callable[..., Either]) -> None:
    """With audit_max_len=100 the stream stays near 100 entries after 300 revocations."""
    small = make_store("sync", audit_max_len=100)
    for i in range(300):
        await small("revoke_token", f"j{i}")
    length = await small.raw("XLEN", small.keys.audit)
    # MAXLEN ~ trims whole stream nodes (100 entries each by default): approximate, bounded.
    assert 100 <= length <= 200


async def test_stats_count_revocations(s: Either) -> None:
    """get_stats counts each kind of revocation and the audit stream's length."""
    assert (await s("get_stats"))["revoked_tokens"] == 0
    await s("revoke_token", "j1")
    await s("revoke_token", "j2")
    await s("revoke_family", "f1", tenant_id=None)
    await s("revoke_user_tokens", "alice", tenant_id="acme")
    await s("revoke_tenant_tokens", "acme")
    stats = await s("get_stats")
    assert stats["revoked_tokens"] == 2
    assert stats["revoked_families"] == 1
    assert stats["user_revocations"] == 1
    assert stats["tenant_revocations"] == 1
    assert stats["audit_entries"] == 5
    assert stats["key_prefix"] == s.settings.key_prefix


# --- health and failures --------------------------------------------------------------------


async def test_health_check_healthy(s: Either) -> None:
    """A reachable Redis reports healthy with a latency."""
    health = await s("health_check")
    assert (health["healthy"], health["status"], health["error"]) == (True, "healthy", None)
    assert health["latency_ms"] >= 0


@pytest.fixture
async def dead(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[str], Either]]:
    """Stores (built from settings, as in production) pointing at a closed port."""
    made: list[Either] = []

    def factory(kind: str) -> Either:
        settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
        store: AnyStore = (
            RedisTokenRevocationStore(settings=settings)
            if kind == "async"
            else SyncRedisTokenRevocationStore(settings=settings)
        )
        made.append(Either(store))
        return made[-1]

    yield factory
    for either in made:
        await either.close()


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_health_check_unhealthy_never_raises(
    dead: Callable[[str], Either], kind: str
) -> None:
    """A store pointed at a closed port reports unhealthy with the error, quickly."""
    store = dead(kind)
    started = time.monotonic()
    health = await store("health_check")
    assert (health["healthy"], health["status"]) == (False, "unhealthy")
    assert "Connection" in health["error"]
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("kind", ["async", "sync"])
@pytest.mark.parametrize(
    ("method", "args", "kwargs"),
    [
        ("revoke_token", ("j1",), {"reason": "logout"}),
        ("revoke_family", ("f1",), {"tenant_id": "acme"}),
        ("revoke_user_tokens", ("alice",), {"tenant_id": "acme"}),
        ("revoke_tenant_tokens", ("acme",), {}),
        ("is_token_revoked", ("j1",), {}),
        ("is_revoked", (token(),), {}),
        ("get_session", ("1.f1",), {"tenant_id": "acme"}),
        ("get_stats", (), {}),
    ],
)
async def test_connection_errors_are_store_unavailable(
    dead: Callable[[str], Either],
    kind: str,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    """Every store method wraps a refused connection as StoreUnavailable (a RevokerError)."""
    with pytest.raises(exc.StoreUnavailable, match="Redis is unavailable"):
        await dead(kind)(method, *args, **kwargs)


# --- the process-wide stores ----------------------------------------------------------------


async def test_get_revocation_store_is_one_per_event_loop(settings: RevokerSettings) -> None:
    """Same loop, same store; another loop gets its own; new settings, a new store."""
    here = get_revocation_store()
    assert get_revocation_store() is here
    assert here.settings is settings
    elsewhere: list[RedisTokenRevocationStore] = []

    async def grab() -> None:
        elsewhere.append(get_revocation_store())
        await elsewhere[0].aclose()

    thread = threading.Thread(target=lambda: asyncio.run(grab()))
    thread.start()
    thread.join(10)
    assert elsewhere
    assert elsewhere[0] is not here
    replaced = configure(make_settings())
    assert get_revocation_store() is not here
    assert get_revocation_store().settings is replaced
    await here.aclose()


def test_get_revocation_store_outside_a_loop_is_unshared(settings: RevokerSettings) -> None:
    """Without a running loop each call returns a fresh store (no pool bound to no loop)."""
    assert get_revocation_store() is not get_revocation_store()


def test_get_sync_revocation_store_is_process_wide(settings: RevokerSettings) -> None:
    """The sync store is shared until the settings change."""
    first = get_sync_revocation_store()
    assert get_sync_revocation_store() is first
    configure(make_settings())
    assert get_sync_revocation_store() is not first


# --- round trips, counted -------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_redis() -> Iterator[LocalRedis]:
    """A redis-server of our own, so INFO commandstats counts only our commands."""
    with LocalRedis() as server:
        yield server


def commands_since_reset(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if not name.startswith(("cmdstat_info", "cmdstat_config"))
    }


@pytest.mark.redis
@pytest.mark.parametrize("kind", ["async", "sync"])
@pytest.mark.parametrize(
    "claims",
    [
        {"tenant": None, "family": None},
        {"tenant": "acme", "family": None},
        {"tenant": None, "family": "f1"},
        {"tenant": "acme", "family": "f1"},
    ],
    ids=["bare", "tenant", "family", "tenant+family"],
)
async def test_is_revoked_is_exactly_one_command(
    own_redis: LocalRedis, kind: str, claims: dict[str, str | None]
) -> None:
    """One check sends one EVALSHA (its reads inside) and nothing else, whatever it carries."""
    settings = make_settings(redis_url=own_redis.url)
    store: AnyStore = (
        RedisTokenRevocationStore(settings=settings)
        if kind == "async"
        else SyncRedisTokenRevocationStore(settings=settings)
    )
    either = Either(store)
    admin = redis.Redis(port=own_redis.port)
    try:
        await either("revoke_tenant_tokens", "acme")  # make a watermark exist
        # Connect (and load the script) before counting.
        await either("is_revoked", token(iat=time.time() - 5, **claims))
        admin.config_resetstat()
        status = await either("is_revoked", token(iat=time.time() - 5, **claims))
        # jti, user (and tenant) and global watermarks; the integrity hash (epoch and sequence)
        reads = {"get": 3 + (claims["tenant"] is not None), "hmget": 1}
        if claims["family"] is not None:
            reads["hget"] = 1  # the family's mark in its bucket
        assert commands_since_reset(admin) == {"evalsha": 1, **reads}
        assert status.revoked == (claims["tenant"] == "acme")
    finally:
        admin.close()
        await either.close()
