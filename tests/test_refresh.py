"""Refresh-token rotation with reuse detection (issue 4).

The follow-up job is replaced by a recorder (``fake_jobs``): these tests never publish to a
broker; tests/test_refresh_broker.py runs the real one.
"""

from __future__ import annotations

import asyncio
import sys
import types
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fakeredis
import httpx
import jwt
import pytest
import redis
import redis.asyncio
from redis.crc import key_slot
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from conftest import REDIS_URL, Backend, CheckPath, delete_prefix, make_settings
from revoker import exceptions as exc
from revoker.keys import bucket_of_user, encode_record, family_id_prefix
from revoker.localredis import LocalRedis
from revoker.middleware import TokenRevocationMiddleware
from revoker.refresh import REUSE_REASON, rotate_refresh_token, rotate_refresh_token_sync
from revoker.rules import now_us
from revoker.sessions import TokenPair, start_session, start_session_sync
from revoker.settings import RevokerSettings
from revoker.store import RedisTokenRevocationStore, SyncRedisTokenRevocationStore
from revoker.tokens import create_refresh_token, decode_token, issue_token

TENANT = "acme"


class JobRecorder:
    """Stands in for revoker.jobs: records enqueue_family_reuse calls, or fails them."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.error: BaseException | None = None

    def enqueue_family_reuse(
        self, family_id: str, *, tenant_id: str | None, user_id: str, settings: Any = None
    ) -> str:
        self.calls.append({"family_id": family_id, "tenant_id": tenant_id, "user_id": user_id})
        if self.error is not None:
            raise self.error
        return f"job-{len(self.calls)}"


@pytest.fixture(autouse=True)
def fake_jobs(monkeypatch: pytest.MonkeyPatch) -> JobRecorder:
    """revoker.jobs replaced by a recorder, so no test here publishes to a broker."""
    recorder = JobRecorder()
    module = types.ModuleType("revoker.jobs")
    module.enqueue_family_reuse = recorder.enqueue_family_reuse  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "revoker.jobs", module)
    return recorder


StoreFactory = Callable[..., RedisTokenRevocationStore]


@pytest.fixture
async def make_store(backend_entry: Backend, check_path: CheckPath) -> AsyncIterator[StoreFactory]:
    """Builds async stores on the backend under test, as the table builds them (on `pipelined`:
    from settings, the check over the pipelined connection), with settings overrides; each gets
    a sync client on the same data (``sync_client``); cleans up."""
    made: list[tuple[RedisTokenRevocationStore, Any]] = []

    def factory(**overrides: Any) -> RedisTokenRevocationStore:
        settings = make_settings(**{**backend_entry.timeouts, **overrides})
        sync: Any
        if backend_entry.name == "fakeredis":
            server = fakeredis.FakeServer()
            store = backend_entry.async_store(settings, server=server)
            sync = fakeredis.FakeRedis(server=server)
        else:
            store = backend_entry.async_store(settings)
            sync = redis.Redis.from_url(settings.redis_url)
        check_path.watch(store)
        store.sync_client = sync  # type: ignore[attr-defined]
        made.append((store, sync))
        return store

    yield factory
    for store, sync in made:
        await store.aclose()
        delete_prefix(sync, store.settings.key_prefix)
        sync.close()
    check_path.assert_kept_to(backend_entry)


def snapshot(client: Any, prefix: str) -> dict[str, Any]:
    """Every key under ``prefix`` with its value and whether it has a TTL: to prove no write."""
    state: dict[str, Any] = {}
    for key in client.scan_iter(match=f"{prefix}:*"):
        kind = client.type(key).decode()
        if kind == "hash":
            value: Any = client.hgetall(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "string":
            value = client.get(key)
        else:
            value = kind
        state[key.decode()] = value
    return state


def claims(token: str, settings: RevokerSettings, typ: str = "access") -> dict[str, Any]:
    data = decode_token(token, typ, settings=settings)  # type: ignore[arg-type]
    return {
        "sub": data.sub,
        "tenant": data.tenant,
        "family": data.family,
        "client": data.client,
        "scopes": data.scopes,
    }


async def login(store: RedisTokenRevocationStore, user: str = "alice") -> TokenPair:
    return await start_session(
        user, tenant_id=TENANT, client_id="web", scopes=["read", "write"], store=store
    )


def protected_app(store: RedisTokenRevocationStore) -> httpx.AsyncClient:
    """A tiny Starlette service behind the middleware, reached through httpx's ASGI transport."""

    async def me(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.state.token.sub)

    app = Starlette(routes=[Route("/me", me)])
    wrapped = TokenRevocationMiddleware(app, store=store, require_token=True)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=wrapped), base_url="http://svc")


async def status_of(client: httpx.AsyncClient, access_token: str) -> int:
    response = await client.get("/me", headers={"Authorization": f"Bearer {access_token}"})
    return response.status_code


# --- rotation --------------------------------------------------------------------------------


async def test_rotation_issues_a_new_pair_of_the_same_session(make_store: StoreFactory) -> None:
    """RT1 -> RT2: new jtis, same user/tenant/client/scopes/family; RT2 is now the current one."""
    store = make_store()
    first = await login(store)
    second = await rotate_refresh_token(first.refresh_token, store=store)
    assert second.family_id == first.family_id
    assert {second.access_jti, second.refresh_jti}.isdisjoint({first.access_jti, first.refresh_jti})
    s = store.settings
    assert claims(second.access_token, s) == claims(first.access_token, s)
    assert claims(second.refresh_token, s, "refresh") == claims(first.refresh_token, s, "refresh")
    assert not await store.is_revoked(decode_token(second.access_token, settings=s))
    session = await store.get_session(first.family_id, tenant_id=TENANT)
    assert session is not None
    assert session.current_jti == second.refresh_jti
    third = await rotate_refresh_token(second.refresh_token, store=store)
    session = await store.get_session(first.family_id, tenant_id=TENANT)
    assert session is not None
    assert session.current_jti == third.refresh_jti


async def test_rotation_keeps_the_session_recorded_until_its_new_expiry(
    make_store: StoreFactory,
) -> None:
    """The record bulk jobs walk carries the new refresh exp (the expiry task keeps it)."""
    store = make_store(refresh_token_ttl=3600)
    first = await login(store)
    await asyncio.sleep(1.05)  # exp has whole-second resolution: let the next one move
    second = await rotate_refresh_token(first.refresh_token, store=store)
    assert second.refresh_expires_at > first.refresh_expires_at
    sync = store.sync_client  # type: ignore[attr-defined]
    session = await store.get_session(first.family_id, tenant_id=TENANT)
    assert session is not None
    assert session.expires == second.refresh_expires_at
    assert session.current_jti == second.refresh_jti
    bucket = store.keys.session_bucket(
        TENANT, bucket_of_user("alice", store.settings.session_buckets)
    )
    assert sync.ttl(bucket) > 3600


def test_sync_twin_rotates_and_detects_reuse(
    backend_entry: Backend, fake_jobs: JobRecorder
) -> None:
    """rotate_refresh_token_sync behaves like the async one on the sync store."""
    settings = make_settings(**backend_entry.timeouts)
    store = backend_entry.sync_store(settings)
    client = store.client
    try:
        first = start_session_sync("bob", tenant_id=TENANT, store=store)
        second = rotate_refresh_token_sync(first.refresh_token, store=store)
        assert second.refresh_jti != first.refresh_jti
        with pytest.raises(exc.RefreshTokenReused):
            rotate_refresh_token_sync(first.refresh_token, store=store)
        assert fake_jobs.calls == [
            {"family_id": first.family_id, "tenant_id": TENANT, "user_id": "bob"}
        ]
        with pytest.raises(exc.FamilyRevoked):
            rotate_refresh_token_sync(second.refresh_token, store=store)
    finally:
        delete_prefix(client, settings.key_prefix)
        store.close()


def test_every_key_of_the_script_is_in_the_tenant_slot() -> None:
    """On a cluster the script's keys share one slot; only the jti key (checked apart) does not."""
    from revoker.store import StoreCore

    settings = make_settings(redis_cluster=True)
    core = StoreCore(settings)
    refresh, _, _family = create_refresh_token("carol", tenant_id=TENANT, settings=settings)
    token = decode_token(refresh, "refresh", settings=settings)
    plan = core.plan_rotate(
        token,
        refresh_jti="r",
        access_jti="a",
        issued_at_us=now_us(),
        expires_at=1,
        reuse_mark="1|x",
        check_jti=False,
    )
    call, *bump = plan.commands
    # The sequence bump (integrity slot) goes beside the script on a cluster, not inside it.
    integrity = core.keys.integrity
    assert [(c[0], *c[2:4]) for c in bump] == [("EVAL", 1, integrity)]  # sequence_bump.lua
    slots = {key_slot(key.encode()) for key in call.keys}  # type: ignore[union-attr]
    assert len(call.keys) == 4  # type: ignore[union-attr]
    assert len(slots) == 1


async def test_tenantless_sessions_rotate_and_detect_reuse(
    make_store: StoreFactory, fake_jobs: JobRecorder
) -> None:
    """A session without a tenant rotates (no tenant watermark key) and reuse still revokes it."""
    store = make_store()
    first = await start_session("solo", tenant_id=None, store=store)
    second = await rotate_refresh_token(first.refresh_token, store=store)
    assert decode_token(second.access_token, settings=store.settings).tenant is None
    with pytest.raises(exc.RefreshTokenReused):
        await rotate_refresh_token(first.refresh_token, store=store)
    status = await store.is_revoked(decode_token(second.access_token, settings=store.settings))
    assert status.rule == "family"
    assert fake_jobs.calls == [{"family_id": first.family_id, "tenant_id": None, "user_id": "solo"}]


# --- reuse -----------------------------------------------------------------------------------


async def test_replay_revokes_the_family_everywhere(
    make_store: StoreFactory, fake_jobs: JobRecorder
) -> None:
    """Replay RT1 after RT1 -> RT2: reuse error, family revoked, its tokens 401, others not."""
    store = make_store()
    first = await login(store)
    other = await login(store)  # a second session of the same user
    second = await rotate_refresh_token(first.refresh_token, store=store)
    async with protected_app(store) as client:
        assert await status_of(client, second.access_token) == 200
        with pytest.raises(exc.RefreshTokenReused) as caught:
            await rotate_refresh_token(first.refresh_token, store=store)
        assert caught.value.family_id == first.family_id
        for access in (first.access_token, second.access_token):
            assert await status_of(client, access) == 401
        assert await status_of(client, other.access_token) == 200
    with pytest.raises(exc.FamilyRevoked):
        await rotate_refresh_token(second.refresh_token, store=store)
    rotated_other = await rotate_refresh_token(other.refresh_token, store=store)
    assert rotated_other.family_id == other.family_id
    marks = store.keys.family_revoked(TENANT, first.family_id)
    mark = store.sync_client.hget(marks, first.family_id)  # type: ignore[attr-defined]
    assert mark is not None
    assert mark.decode().endswith("|" + REUSE_REASON)
    assert fake_jobs.calls == [
        {"family_id": first.family_id, "tenant_id": TENANT, "user_id": "alice"}
    ]


async def test_reuse_revokes_even_when_the_follow_up_cannot_be_enqueued(
    make_store: StoreFactory, fake_jobs: JobRecorder
) -> None:
    """A failing enqueue (broker and outbox unreachable) still leaves the family revoked."""
    fake_jobs.error = ConnectionError("broker down")
    store = make_store()
    first = await login(store)
    second = await rotate_refresh_token(first.refresh_token, store=store)
    with pytest.raises(exc.RefreshTokenReused):
        await rotate_refresh_token(first.refresh_token, store=store)
    assert len(fake_jobs.calls) == 1
    status = await store.is_revoked(decode_token(second.access_token, settings=store.settings))
    assert status.revoked
    assert status.rule == "family"


async def test_a_token_older_than_the_previous_one_is_reuse_even_in_the_grace_window(
    make_store: StoreFactory,
) -> None:
    """Only the immediately previous token enjoys the grace window; RT1 after RT3 is reuse."""
    store = make_store(refresh_reuse_grace_seconds=60)
    first = await login(store)
    second = await rotate_refresh_token(first.refresh_token, store=store)
    third = await rotate_refresh_token(second.refresh_token, store=store)
    with pytest.raises(exc.RefreshTokenReused):
        await rotate_refresh_token(first.refresh_token, store=store)
    status = await store.is_revoked(decode_token(third.access_token, settings=store.settings))
    assert (status.rule, status.reason) == ("family", REUSE_REASON)


# --- grace window ----------------------------------------------------------------------------


async def test_retry_within_the_grace_window_returns_the_same_successor(
    make_store: StoreFactory,
) -> None:
    """A retry of the token just rotated gets the identical pair; the family stays usable."""
    store = make_store(refresh_reuse_grace_seconds=30)
    first = await login(store)
    second = await rotate_refresh_token(first.refresh_token, store=store)
    retried = await rotate_refresh_token(first.refresh_token, store=store)
    # HS256 is deterministic: same jtis and same iat give byte-identical tokens.
    assert retried == second
    session = await store.get_session(first.family_id, tenant_id=TENANT)
    assert session is not None
    assert session.current_jti == second.refresh_jti
    third = await rotate_refresh_token(second.refresh_token, store=store)
    assert third.refresh_jti != second.refresh_jti
    assert not await store.is_revoked(decode_token(third.access_token, settings=store.settings))


async def test_retry_after_the_grace_window_is_reuse(make_store: StoreFactory) -> None:
    """With a 1 s window, a retry 1.2 s after the rotation revokes the family."""
    store = make_store(refresh_reuse_grace_seconds=1)
    first = await login(store)
    second = await rotate_refresh_token(first.refresh_token, store=store)
    assert await rotate_refresh_token(first.refresh_token, store=store) == second
    await asyncio.sleep(1.2)  # the window is measured on the Redis clock; nothing to poll
    with pytest.raises(exc.RefreshTokenReused):
        await rotate_refresh_token(first.refresh_token, store=store)
    with pytest.raises(exc.FamilyRevoked):
        await rotate_refresh_token(second.refresh_token, store=store)
    status = await store.is_revoked(decode_token(second.access_token, settings=store.settings))
    assert status.rule == "family"


async def test_grace_retry_is_still_covered_by_a_later_user_revocation(
    make_store: StoreFactory,
) -> None:
    """The re-signed pair keeps its first iat, so a user revocation after the rotation covers it."""
    store = make_store(refresh_reuse_grace_seconds=30)
    first = await login(store)
    second = await rotate_refresh_token(first.refresh_token, store=store)
    await store.revoke_user_tokens("alice", tenant_id=TENANT, reason="offboarding")
    assert await store.is_revoked(decode_token(second.access_token, settings=store.settings))
    with pytest.raises(exc.TokenRevoked) as caught:
        await rotate_refresh_token(first.refresh_token, store=store)
    assert caught.value.status.rule == "user"


# --- concurrency (real Redis) ----------------------------------------------------------------
# On both real-Redis entries: `pipelined`'s store is built from settings, so 50 rotations share
# the bounded pool production runs (REVOKER_REDIS_MAX_CONNECTIONS), not an injected client's.


@pytest.mark.redis
@pytest.mark.parametrize("backend", ["redis", "pipelined"])
async def test_fifty_concurrent_rotations_without_grace(
    make_store: StoreFactory, fake_jobs: JobRecorder
) -> None:
    """50 concurrent rotations, grace 0: one wins, the next is reuse, the rest find it revoked."""
    store = make_store()
    first = await login(store)
    results = await asyncio.gather(
        *(rotate_refresh_token(first.refresh_token, store=store) for _ in range(50)),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, TokenPair)]
    reused = [r for r in results if isinstance(r, exc.RefreshTokenReused)]
    refused = [r for r in results if isinstance(r, exc.FamilyRevoked)]
    assert (len(winners), len(reused), len(refused)) == (1, 1, 48), results
    assert len(fake_jobs.calls) == 1
    status = await store.is_revoked(decode_token(winners[0].access_token, settings=store.settings))
    assert status.revoked
    assert status.rule == "family"


@pytest.mark.redis
def test_fifty_concurrent_rotations_from_threads(fake_jobs: JobRecorder) -> None:
    """The sync twin from 50 threads (16 at a time): the same single winner, the family dies."""
    settings = make_settings()
    client = redis.Redis.from_url(REDIS_URL, max_connections=32)
    store = SyncRedisTokenRevocationStore(client, settings=settings)
    first = start_session_sync("dave", tenant_id=TENANT, store=store)

    def attempt(_: int) -> object:
        try:
            return rotate_refresh_token_sync(first.refresh_token, store=store)
        except exc.RefreshError as e:
            return e

    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(attempt, range(50)))
        winners = [r for r in results if isinstance(r, TokenPair)]
        reused = [r for r in results if isinstance(r, exc.RefreshTokenReused)]
        refused = [r for r in results if isinstance(r, exc.FamilyRevoked)]
        assert (len(winners), len(reused), len(refused)) == (1, 1, 48), results
        assert client.exists(store.keys.family_revoked(TENANT, first.family_id))
        assert len(fake_jobs.calls) == 1
    finally:
        delete_prefix(client, settings.key_prefix)
        store.close()


@pytest.mark.redis
@pytest.mark.parametrize("backend", ["redis", "pipelined"])
async def test_fifty_concurrent_retries_within_the_grace_window(make_store: StoreFactory) -> None:
    """With a grace window, all 50 concurrent callers get the same successor; the family lives."""
    store = make_store(refresh_reuse_grace_seconds=30)
    first = await login(store)
    results = await asyncio.gather(
        *(rotate_refresh_token(first.refresh_token, store=store) for _ in range(50))
    )
    assert {(r.access_jti, r.refresh_jti) for r in results} == {
        (results[0].access_jti, results[0].refresh_jti)
    }
    session = await store.get_session(first.family_id, tenant_id=TENANT)
    assert session is not None
    assert session.current_jti == results[0].refresh_jti
    after = await rotate_refresh_token(results[0].refresh_token, store=store)
    assert not await store.is_revoked(decode_token(after.access_token, settings=store.settings))


# --- logout races and revoked tokens ---------------------------------------------------------


async def test_no_rotation_succeeds_after_logout_returns(make_store: StoreFactory) -> None:
    """Logout (revoke_family) racing rotations: once it returns, every rotation is refused."""
    store = make_store()
    pair = await login(store)
    tasks = [asyncio.ensure_future(rotate_refresh_token(pair.refresh_token, store=store))]
    await store.revoke_family(pair.family_id, tenant_id=TENANT, reason="logout")
    status = await store.is_revoked(decode_token(pair.access_token, settings=store.settings))
    assert (status.rule, status.reason) == ("family", "logout")
    after = await asyncio.gather(
        *(rotate_refresh_token(pair.refresh_token, store=store) for _ in range(5)),
        return_exceptions=True,
    )
    assert all(isinstance(r, exc.FamilyRevoked) for r in after), after
    raced = (await asyncio.gather(*tasks, return_exceptions=True))[0]
    if isinstance(raced, TokenPair):  # it ran before the logout: its tokens are covered anyway
        status = await store.is_revoked(decode_token(raced.access_token, settings=store.settings))
        assert status.revoked
        assert status.rule == "family"


def _expired_refresh(store: RedisTokenRevocationStore) -> str:
    """A refresh token of a recorded family whose exp lies an hour in the past."""
    bucket = bucket_of_user("erin", store.settings.session_buckets)
    family = family_id_prefix(bucket) + "expired-family"
    issued = issue_token(
        "refresh",
        "erin",
        tenant_id=TENANT,
        family_id=family,
        scopes=(),
        client_id=None,
        lifetime=60,
        jti=None,
        settings=store.settings,
        issued_at_us=now_us() - 3_600_000_000,
    )
    store.sync_client.hset(  # type: ignore[attr-defined]
        store.keys.session_bucket(TENANT, bucket),
        family,
        encode_record(
            user_id="erin",
            client_id=None,
            created_us=now_us() - 3_600_000_000,
            expires=issued.claims["exp"],
            current_jti=issued.jti,
        ),
    )
    return issued.token


async def test_invalid_tokens_fail_with_distinct_errors_and_write_nothing(
    make_store: StoreFactory, fake_jobs: JobRecorder
) -> None:
    """Expired, wrong-type, unknown-family, family-less, malformed: each its own error, no write."""
    store = make_store()
    s = store.settings
    pair = await login(store)
    cases: dict[str, tuple[str, type[Exception]]] = {
        "expired": (_expired_refresh(store), exc.TokenExpired),
        "wrong type": (pair.access_token, exc.WrongTokenType),
        "unknown family": (
            create_refresh_token("alice", tenant_id=TENANT, settings=s)[0],
            exc.UnknownFamily,
        ),
        "no family": (
            issue_token(
                "refresh",
                "alice",
                tenant_id=TENANT,
                family_id=None,
                scopes=(),
                client_id=None,
                lifetime=60,
                jti=None,
                settings=s,
            ).token,
            exc.MissingClaim,
        ),
        "malformed": ("not-a-jwt", exc.MalformedToken),
        "bad signature": (
            jwt.encode({"typ": "refresh"}, "another-secret-0123456789-abcdefghijkl", "HS256"),
            exc.InvalidSignature,
        ),
    }
    sync = store.sync_client  # type: ignore[attr-defined]
    before = snapshot(sync, s.key_prefix)
    for name, (token, error) in cases.items():
        with pytest.raises(error):
            await rotate_refresh_token(token, store=store)
        assert snapshot(sync, s.key_prefix) == before, name
    assert len({error for _, error in cases.values()}) == len(cases)
    assert fake_jobs.calls == []
    assert (await rotate_refresh_token(pair.refresh_token, store=store)).family_id == pair.family_id


async def test_revoked_tokens_are_refused_without_writes(
    make_store: StoreFactory, fake_jobs: JobRecorder
) -> None:
    """Revoked family, revoked jti, user/tenant watermark: each refused by its rule, no write."""
    store = make_store()
    s = store.settings
    sync = store.sync_client  # type: ignore[attr-defined]
    sessions = [await login(store, user) for user in ("u1", "u2", "u3", "u4")]
    await store.revoke_family(sessions[0].family_id, tenant_id=TENANT, reason="logout")
    refresh_exp = decode_token(sessions[1].refresh_token, "refresh", settings=s).exp
    await store.revoke_token(sessions[1].refresh_jti, expires_at=refresh_exp)
    await store.revoke_user_tokens("u2", tenant_id="elsewhere")  # another tenant: no effect here
    await store.revoke_user_tokens("u3", tenant_id=TENANT)
    before = snapshot(sync, s.key_prefix)
    with pytest.raises(exc.FamilyRevoked):
        await rotate_refresh_token(sessions[0].refresh_token, store=store)
    for pair, rule in ((sessions[1], "jti"), (sessions[2], "user")):
        with pytest.raises(exc.TokenRevoked) as caught:
            await rotate_refresh_token(pair.refresh_token, store=store)
        assert caught.value.status.rule == rule
        # The check (the middleware's) refuses the same token by the same rule.
        refresh = decode_token(pair.refresh_token, "refresh", settings=s)
        assert (await store.is_revoked(refresh)).rule == rule
    assert snapshot(sync, s.key_prefix) == before
    await store.revoke_tenant_tokens(TENANT)
    with pytest.raises(exc.TokenRevoked) as caught:
        await rotate_refresh_token(sessions[3].refresh_token, store=store)
    assert caught.value.status.rule == "tenant"
    assert fake_jobs.calls == []
    # A login after the tenant revocation is not covered: its iat is later than the watermark.
    fresh = await login(store, "u4")
    assert (await rotate_refresh_token(fresh.refresh_token, store=store)).family_id


async def test_store_down_is_a_store_error_not_a_traceback(fake_jobs: JobRecorder) -> None:
    """With Redis unreachable, rotation raises StoreUnavailable (the caller answers 503)."""
    settings = make_settings(redis_url="redis://127.0.0.1:1/0")
    store = RedisTokenRevocationStore(settings=settings)
    refresh, _, _ = create_refresh_token("alice", tenant_id=TENANT, settings=settings)
    with pytest.raises(exc.StoreUnavailable):
        await rotate_refresh_token(refresh, store=store)
    await store.aclose()
    assert fake_jobs.calls == []


# --- one round trip --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def counted_redis() -> Iterator[LocalRedis]:
    """A private redis-server whose command statistics only this module's tests move."""
    with LocalRedis() as server:
        yield server


@pytest.mark.redis
def test_a_rotation_is_one_script_call(counted_redis: LocalRedis) -> None:
    """INFO commandstats after a warmed-up rotation: exactly one EVALSHA and nothing else."""
    settings = make_settings(redis_url=counted_redis.url)
    client = redis.Redis.from_url(counted_redis.url)
    store = SyncRedisTokenRevocationStore(settings=settings)
    first = start_session_sync("frank", tenant_id=TENANT, store=store)
    second = rotate_refresh_token_sync(first.refresh_token, store=store)  # loads the script
    client.config_resetstat()
    rotate_refresh_token_sync(second.refresh_token, store=store)
    stats = client.info("commandstats")
    calls = {
        name.removeprefix("cmdstat_"): int(v["calls"])
        for name, v in stats.items()
        if not name.startswith(("cmdstat_config", "cmdstat_info"))
    }
    # Commands run by a script are counted too; everything but the EVALSHA is the script's own.
    assert calls.pop("evalsha") == 1
    assert set(calls) <= {"get", "hget", "time", "hset", "expire"}
    assert calls["hset"] == 1
    store.close()
    client.close()


# --- Redis Cluster ---------------------------------------------------------------------------


@pytest.mark.cluster
async def test_rotation_on_a_redis_cluster(fake_jobs: JobRecorder) -> None:
    """On a 3-node cluster: one-slot script (no CROSSSLOT), reuse detected, jti checked apart."""
    from revoker.localredis import start_cluster

    cluster = start_cluster()
    try:
        settings = make_settings(redis_url=cluster.url, redis_cluster=True, redis_timeout=2.0)
        store = RedisTokenRevocationStore(settings=settings)
        assert store.is_cluster
        first = await login(store)
        second = await rotate_refresh_token(first.refresh_token, store=store)
        with pytest.raises(exc.RefreshTokenReused):
            await rotate_refresh_token(first.refresh_token, store=store)
        status = await store.is_revoked(decode_token(second.access_token, settings=settings))
        assert status.rule == "family"
        other = await login(store, "zoe")
        await store.revoke_token(other.refresh_jti)
        with pytest.raises(exc.TokenRevoked) as caught:
            await rotate_refresh_token(other.refresh_token, store=store)
        assert caught.value.status.rule == "jti"
        await store.aclose()
    finally:
        cluster.stop()
