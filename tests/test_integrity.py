"""Loss and rollback of the denylist are detected within one check and answered by
REVOKER_ON_DATA_LOSS, loudly (see ``revoker.integrity``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from conftest import make_settings, with_cluster
from revoker import exceptions as exc
from revoker.api import create_app
from revoker.health import check as health_check
from revoker.health import integrity_report, server_report
from revoker.integrity import IntegrityWatch, Observation
from revoker.job_record import JobRecord
from revoker.keys import bucket_of_user
from revoker.localredis import LocalRedis
from revoker.metrics import DENYLIST_LOST
from revoker.middleware import TokenRevocationMiddleware
from revoker.refresh import rotate_refresh_token
from revoker.sessions import start_session, start_session_sync
from revoker.settings import RevokerSettings
from revoker.store import RedisTokenRevocationStore, SyncRedisTokenRevocationStore
from revoker.tasks.buckets import job_selection, revoke_buckets
from revoker.tokens import create_access_token, decode_token
from test_cli import assert_exit, cli_env, run_cli

TENANT = "acme"


def obs(epoch: str | None, seq: int, state: str | None = None, **kw: str) -> Observation:
    return Observation(epoch, seq, state, kw.get("lost"), kw.get("replaced"))


# --- the rule, pure ---------------------------------------------------------------------------


def test_an_empty_redis_never_seen_is_a_new_deployment() -> None:
    """No epoch and none seen is no loss, unless REVOKER_REQUIRE_INIT says one must exist."""
    assert IntegrityWatch().observe(obs(None, 0), (None, 0)) is None
    loss = IntegrityWatch(require_init=True).observe(obs(None, 0), (None, 0))
    assert loss is not None
    assert loss.kind == "wiped"


def test_a_missing_epoch_once_seen_is_a_wipe() -> None:
    """After the first sight of an epoch its absence is always a loss."""
    watch = IntegrityWatch()
    assert watch.observe(obs("e1", 3), watch.snapshot()) is None
    loss = watch.observe(obs(None, 0), watch.snapshot())
    assert loss is not None
    assert (loss.kind, loss.seen_epoch, loss.seen_seq) == ("wiped", "e1", 3)


def test_a_different_epoch_is_a_loss_unless_it_records_the_one_seen() -> None:
    """A new epoch is a loss, except the record of this very loss handled elsewhere."""
    watch = IntegrityWatch()
    watch.observe(obs("e1", 3), watch.snapshot())
    loss = watch.observe(obs("e2", 1), watch.snapshot())
    assert loss is not None
    assert loss.kind == "epoch_changed"
    assert watch.observe(obs("e3", 2, "cutoff", lost="e1", replaced=""), watch.snapshot()) is None
    assert watch.epoch == "e3"
    # An old backup carrying a handled state of another loss is not adopted.
    loss = watch.observe(obs("e0", 9, "cutoff", lost="x", replaced="y"), watch.snapshot())
    assert loss is not None
    assert loss.kind == "epoch_changed"


def test_a_lower_sequence_is_a_rollback_but_late_replies_are_not() -> None:
    """Compared with what was seen when the check was sent: out-of-order replies pass."""
    watch = IntegrityWatch()
    watch.observe(obs("e1", 5), watch.snapshot())
    before = watch.snapshot()  # check A sent now
    assert watch.observe(obs("e1", 7), watch.snapshot()) is None  # check B, answered first
    assert watch.observe(obs("e1", 6), before) is None  # A's reply, late: no rollback
    assert watch.seq == 7
    loss = watch.observe(obs("e1", 6), watch.snapshot())
    assert loss is not None
    assert loss.kind == "rolled_back"


def test_health_report_judges_the_stored_identity() -> None:
    """A handled loss, an unhandled wipe and a rollback are unhealthy; a fresh Redis is not."""
    ok = integrity_report(
        {"epoch": "e1", "seq": "4"}, seen_epoch="e1", seen_seq=4, require_init=False
    )
    assert ok["healthy"]
    assert ok["state"] == "ok"
    new = integrity_report({}, seen_epoch=None, seen_seq=0, require_init=False)
    assert new["healthy"]
    assert new["state"] == "new"
    for stored, seen in (
        ({"epoch": "e2", "seq": "1", "state": "cutoff", "lost": "e1"}, ("e2", 1)),
        ({}, ("e1", 4)),
        ({"epoch": "e1", "seq": "2"}, ("e1", 4)),
    ):
        report = integrity_report(stored, seen_epoch=seen[0], seen_seq=seen[1], require_init=False)
        assert not report["healthy"], stored
        assert report["problem"], stored
    assert not integrity_report({}, seen_epoch=None, seen_seq=0, require_init=True)["healthy"]


def test_eviction_and_no_persistence_are_reported_unsafe() -> None:
    """Anything but noeviction, and no persistence at all, is unsafe; unknown is not claimed."""
    safe = {
        "maxmemory_policy": "noeviction",
        "appendonly": "yes",
        "appendfsync": "always",
        "save": "",
    }
    assert server_report(safe, 1)["safe"]
    evicting = server_report({**safe, "maxmemory_policy": "allkeys-lru"}, 0)
    assert not evicting["safe"]
    assert "allkeys-lru" in evicting["unsafe"][0]
    assert not server_report({**safe, "appendonly": "no"}, 0)["safe"]
    assert server_report(dict.fromkeys(safe), None)["safe"]  # CONFIG GET refused: unknown


# --- every revocation write bumps the sequence ------------------------------------------------


async def _identity(store: RedisTokenRevocationStore) -> tuple[bytes | None, int]:
    epoch, seq = await store.client.hmget(store.keys.integrity, "epoch", "seq")
    return epoch, int(seq or 0)


def _sync_identity(store: SyncRedisTokenRevocationStore) -> tuple[bytes | None, int]:
    epoch, seq = store.client.hmget(store.keys.integrity, "epoch", "seq")
    return epoch, int(seq or 0)


@with_cluster
async def test_every_revocation_write_bumps_the_sequence(
    store: RedisTokenRevocationStore, sync_store: SyncRedisTokenRevocationStore
) -> None:
    """jti, family, user, tenant, a rotation's reuse and a job chunk's marks: each creates the
    epoch if absent and raises the sequence."""
    assert await _identity(store) == (None, 0)
    steps: list[Any] = [
        lambda: store.revoke_token("j1"),
        lambda: store.revoke_family("f1", tenant_id=TENANT),
        lambda: store.revoke_user_tokens("alice", tenant_id=TENANT),
        lambda: store.revoke_tenant_tokens(TENANT),
    ]
    last = 0
    epoch = None
    for step in steps:
        await step()
        epoch_now, seq = await _identity(store)
        assert epoch_now is not None
        assert seq > last
        assert epoch is None or epoch_now == epoch  # created once, kept
        epoch, last = epoch_now, seq
    # A rotation's reuse.
    pair = await start_session("bob", tenant_id=TENANT, store=store)
    await rotate_refresh_token(pair.refresh_token, store=store)
    before = (await _identity(store))[1]
    with pytest.raises(exc.RefreshTokenReused):
        await rotate_refresh_token(pair.refresh_token, store=store)
    assert (await _identity(store))[1] > before
    # A job chunk's marks (the fan-out's bulk path).
    # (through the sync store: on fakeredis it is a server of its own)
    start_session_sync("bob", tenant_id=TENANT, store=sync_store)
    record = JobRecord(
        id="j1", kind="user", tenant_id=TENANT, user_id="bob", created_at=time.time() + 1
    )
    before = _sync_identity(sync_store)[1]
    buckets = [bucket_of_user("bob", store.settings.session_buckets)]
    selected = revoke_buckets(
        sync_store, buckets, tenant_id=TENANT, select=job_selection(record), mark="1|job"
    )
    assert any(selected.values())
    assert _sync_identity(sync_store)[1] > before


# --- a Redis of our own: wipe, rollback, epoch change ------------------------------------------


@pytest.fixture
def own() -> Iterator[LocalRedis]:
    """A redis-server of our own, to FLUSHALL, roll back and reconfigure."""
    with LocalRedis() as server:
        yield server


def _settings(server: LocalRedis, **overrides: Any) -> RevokerSettings:
    return make_settings(redis_url=server.url, redis_timeout=2.0, **overrides)


async def me(request: Request) -> JSONResponse:
    return JSONResponse({"sub": request.state.token.sub})


def _app(store: RedisTokenRevocationStore, **options: Any) -> httpx.AsyncClient:
    app = Starlette(
        routes=[Route("/me", me)],
        middleware=[Middleware(TokenRevocationMiddleware, store=store, **options)],
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")


async def _four_revoked(store: RedisTokenRevocationStore) -> list[str]:
    """Four tokens, each revoked by one rule (jti, family, user, tenant); all answered 401."""
    s = store.settings
    by_jti, jti = create_access_token("u1", tenant_id="t1", settings=s)
    by_family, _ = create_access_token("u2", tenant_id="t2", family_id="fam-2", settings=s)
    by_user, _ = create_access_token("u3", tenant_id="t3", settings=s)
    by_tenant, _ = create_access_token("u4", tenant_id="t4", settings=s)
    await store.revoke_token(jti)
    await store.revoke_family("fam-2", tenant_id="t2")
    await store.revoke_user_tokens("u3", tenant_id="t3")
    await store.revoke_tenant_tokens("t4")
    return [by_jti, by_family, by_user, by_tenant]


def test_a_chunk_bumps_the_sequence_after_its_marks(
    sync_store: SyncRedisTokenRevocationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every batch of a chunk that writes marks ends with the sequence bump, so no state a check
    can meet shows a bump whose marks are missing."""
    for i in range(3):
        start_session_sync("carol", tenant_id=TENANT, store=sync_store)
        start_session_sync(f"dave{i}", tenant_id=TENANT, store=sync_store)
    batches: list[list[Any]] = []
    real = sync_store.bulk_exchange

    @contextlib.contextmanager
    def recording() -> Iterator[Any]:
        with real() as exchange:

            def record(commands: list[Any]) -> list[Any]:
                batches.append(list(commands))
                return exchange(commands)

            yield record

    monkeypatch.setattr(sync_store, "bulk_exchange", recording)
    record = JobRecord(id="j2", kind="tenant", tenant_id=TENANT, created_at=time.time() + 1)
    buckets = sorted(
        {
            bucket_of_user(u, sync_store.settings.session_buckets)
            for u in ("carol", "dave0", "dave1")
        }
    )
    revoke_buckets(sync_store, buckets, tenant_id=TENANT, select=job_selection(record), mark="1|j")
    writing = [b for b in batches if any(c[0] == "HSET" for c in b)]
    assert writing, "the chunk wrote no marks"
    integrity = sync_store.keys.integrity
    for batch in writing:
        names = [c[0] for c in batch]
        assert names[-1] == "EVAL", names  # the bump (sequence_bump.lua) comes last
        assert batch[-1][2:4] == (1, integrity)
        last_mark = max(n for n, c in enumerate(batch) if c[0] == "HSET")
        assert last_mark < len(batch) - 1


async def test_a_wipe_is_detected_by_the_next_check_and_cut_off(
    own: LocalRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """FLUSHALL after four revocations: the very next check detects it; by default every one of
    the four is still refused (401) and a token issued after the detection passes."""
    store = RedisTokenRevocationStore(settings=_settings(own))
    assert store._pipelined is not None  # the production check path
    admin = redis.Redis(port=own.port)
    lost = DENYLIST_LOST.labels("wiped", "cutoff")
    counted = lost._value.get()
    try:
        revoked = await _four_revoked(store)
        async with _app(store) as client:
            for token in revoked:
                assert (
                    await client.get("/me", headers={"Authorization": f"Bearer {token}"})
                ).status_code == 401
            admin.flushall()
            assert admin.dbsize() == 0
            with caplog.at_level(logging.ERROR, logger="revoker.integrity"):
                for token in revoked:
                    response = await client.get("/me", headers={"Authorization": f"Bearer {token}"})
                    assert response.status_code == 401, response.text
            assert any(
                "lost" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR
            )
            assert lost._value.get() == counted + 1  # one detection, the others adopted it
            fresh, _ = create_access_token("u1", tenant_id="t1", settings=store.settings)
            assert (
                await client.get("/me", headers={"Authorization": f"Bearer {fresh}"})
            ).status_code == 200
        stored = admin.hgetall(store.keys.integrity)
        assert stored[b"state"] == b"cutoff"
        assert stored[b"epoch"]
        assert admin.exists(store.keys.global_watermark)
    finally:
        admin.close()
        await store.aclose()


async def test_a_wipe_recreated_by_a_revocation_is_an_epoch_change(own: LocalRedis) -> None:
    """Wiped, then a revocation from another process writes a new epoch: still a loss here."""
    settings = _settings(own)
    checker = RedisTokenRevocationStore(settings=settings)
    writer = SyncRedisTokenRevocationStore(settings=settings)
    admin = redis.Redis(port=own.port)
    try:
        old, jti = create_access_token("u", tenant_id="t", settings=settings)
        writer.revoke_token(jti)
        token = decode_token(old, "access", settings=settings)
        assert (await checker.is_revoked(token)).rule == "jti"
        admin.flushall()
        writer.revoke_token("another")  # creates a new epoch silently
        status = await checker.is_revoked(token)
        assert status.revoked
        assert status.rule == "global"
        assert admin.hget(settings.key_prefix + ":{integrity}:id", "state") == b"cutoff"
    finally:
        admin.close()
        writer.close()
        await checker.aclose()


async def test_a_rollback_to_an_older_snapshot_is_detected() -> None:
    """SAVE, more revocations, then DEBUG RELOAD NOSAVE from the older RDB: the lower sequence is
    a rollback, and the revocation it lost is still refused by the cut-off."""
    with LocalRedis(args=("--enable-debug-command", "yes")) as own:
        await _rollback(own)


async def _rollback(own: LocalRedis) -> None:
    settings = _settings(own)
    store = RedisTokenRevocationStore(settings=settings)
    admin = redis.Redis(port=own.port)
    try:
        await store.revoke_token("early")
        admin.save()
        late, jti = create_access_token("u", tenant_id="t", settings=settings)
        await store.revoke_token(jti)
        token = decode_token(late, "access", settings=settings)
        assert (await store.is_revoked(token)).rule == "jti"
        admin.execute_command("DEBUG", "RELOAD", "NOSAVE")
        assert not admin.exists(store.keys.jti(jti))  # the revocation really is gone
        status = await store.is_revoked(token)
        assert status.revoked
        assert status.rule == "global"
        assert admin.hget(store.keys.integrity, "state") == b"cutoff"
    finally:
        admin.close()
        await store.aclose()


async def test_a_lower_sequence_written_is_detected_by_the_sync_store(own: LocalRedis) -> None:
    """The sync store (CLI, tasks) detects a rollback too: written here as a lower sequence."""
    settings = _settings(own)
    store = SyncRedisTokenRevocationStore(settings=settings)
    admin = redis.Redis(port=own.port)
    try:
        for jti in ("a", "b", "c"):
            store.revoke_token(jti)
        old, _ = create_access_token("u", tenant_id="t", settings=settings)
        token = decode_token(old, "access", settings=settings)
        assert not store.is_revoked(token)
        admin.hset(store.keys.integrity, "seq", 1)
        status = store.is_revoked(token)
        assert status.revoked
        assert status.rule == "global"
    finally:
        admin.close()
        store.close()


async def test_a_different_epoch_is_detected(own: LocalRedis) -> None:
    """An epoch replaced under a running process (another data set) is a loss."""
    settings = _settings(own)
    store = RedisTokenRevocationStore(settings=settings)
    admin = redis.Redis(port=own.port)
    try:
        await store.revoke_token("x")
        old, _ = create_access_token("u", tenant_id="t", settings=settings)
        token = decode_token(old, "access", settings=settings)
        assert not await store.is_revoked(token)
        admin.hset(store.keys.integrity, "epoch", "someone-elses")
        assert (await store.is_revoked(token)).rule == "global"
    finally:
        admin.close()
        await store.aclose()


async def test_many_detections_at_once_write_one_cut_off(own: LocalRedis) -> None:
    """Two sync stores in threads and 50 concurrent checks of two async stores, all seeing the
    same wipe: one cut-off, one new epoch, adopted by all."""
    settings = _settings(own)
    asyncs = [RedisTokenRevocationStore(settings=settings) for _ in range(2)]
    syncs = [SyncRedisTokenRevocationStore(settings=settings) for _ in range(2)]
    admin = redis.Redis(port=own.port)
    try:
        await asyncs[0].revoke_token("x")
        old, _ = create_access_token("u", tenant_id="t", settings=settings)
        token = decode_token(old, "access", settings=settings)
        for s in asyncs:
            assert not await s.is_revoked(token)
        for sync in syncs:
            assert not sync.is_revoked(token)
        admin.flushall()
        # The async checks are all sent before any reply comes back: every one of them detects.
        results = await asyncio.gather(
            *(asyncs[i % 2].is_revoked(token) for i in range(50)),
            *(asyncio.to_thread(sync.is_revoked, token) for sync in syncs),
        )
        assert len(results) == 52
        assert all(r.rule == "global" for r in results)
        stored = admin.hgetall(asyncs[0].keys.integrity)
        assert stored[b"seq"] == b"1"  # data_loss.lua applied exactly once (it bumps by one)
        epochs = {s.core.watch.epoch for s in [*asyncs, *syncs]}
        assert epochs == {stored[b"epoch"].decode()}
        later, _ = create_access_token("u", tenant_id="t", settings=settings)
        assert not await asyncs[1].is_revoked(decode_token(later, "access", settings=settings))
    finally:
        admin.close()
        for sync in syncs:
            sync.close()
        for s in asyncs:
            await s.aclose()


def test_detections_that_all_read_the_lost_state_write_one_cut_off(own: LocalRedis) -> None:
    """Five stores each judge the same wiped reply a loss before any of them handles it (the
    worst interleaving, made deterministic): data_loss.lua applies the first one only."""
    settings = _settings(own)
    stores = [SyncRedisTokenRevocationStore(settings=settings) for _ in range(5)]
    admin = redis.Redis(port=own.port)
    try:
        stores[0].revoke_token("x")
        old, _ = create_access_token("u", tenant_id="t", settings=settings)
        token = decode_token(old, "access", settings=settings)
        for store in stores:
            assert not store.is_revoked(token)
        admin.flushall()
        wiped = [None] * 5  # what each one's check read
        losses = [
            store.core.integrity_values(wiped, store.core.watch.snapshot()) for store in stores
        ]
        results = [
            store.execute(store.core.plan_data_loss(loss))  # type: ignore[arg-type]
            for store, loss in zip(stores, losses, strict=True)
        ]
        assert {observed.epoch for observed, _ in results} == {results[0][0].epoch}
        assert {cutoff for _, cutoff in results} == {results[0][1]}
        assert admin.hget(stores[0].keys.integrity, "seq") == b"1"
        assert all(store.is_revoked(token).rule == "global" for store in stores)
    finally:
        admin.close()
        for store in stores:
            store.close()


async def test_a_rotation_before_the_cut_off_is_refused(own: LocalRedis) -> None:
    """rotate_refresh.lua reads the global watermark: a refresh token issued before a detected
    loss cannot rotate after it."""
    settings = _settings(own)
    store = RedisTokenRevocationStore(settings=settings)
    admin = redis.Redis(port=own.port)
    try:
        pair = await start_session("carol", tenant_id="t", store=store)
        await store.revoke_token("x")
        probe, _ = create_access_token("carol", tenant_id="t", settings=settings)
        await store.is_revoked(decode_token(probe, "access", settings=settings))
        admin.flushall()
        await start_session("carol", tenant_id="t", store=store)  # a record exists again
        assert (
            await store.is_revoked(decode_token(probe, "access", settings=settings))
        ).rule == "global"
        with pytest.raises(exc.TokenRevoked):
            await rotate_refresh_token(pair.refresh_token, store=store)
        # Through the script itself: revoked by the global level.
        token = decode_token(pair.refresh_token, "refresh", settings=settings)
        reply = await store.rotate_refresh(
            token, refresh_jti="r", access_jti="a", issued_at_us=1, expires_at=1, reuse_mark="1|x"
        )
        assert reply.outcome == "revoked"  # before the (lost) record is even looked up
        assert reply.status is not None
        assert reply.status.rule == "global"
    finally:
        admin.close()
        await store.aclose()


# --- the other policies ---------------------------------------------------------------------


async def test_fail_closed_answers_503_until_recovered(own: LocalRedis) -> None:
    """fail-closed: after a wipe every check is a 503 even with fail-open, and breaker-free;
    `recover --accept` ends it."""
    settings = _settings(own, on_data_loss="fail-closed", fail_open=True)
    store = RedisTokenRevocationStore(settings=settings)
    admin = redis.Redis(port=own.port)
    try:
        await store.revoke_token("x")
        token, _ = create_access_token("u", tenant_id="t", settings=settings)
        headers = {"Authorization": f"Bearer {token}"}
        async with _app(store) as client:
            assert (await client.get("/me", headers=headers)).status_code == 200
            admin.flushall()
            for _ in range(settings.breaker_failures + 2):
                assert (await client.get("/me", headers=headers)).status_code == 503
            other = RedisTokenRevocationStore(settings=settings)  # another process: fresh memory
            with pytest.raises(exc.DenylistLost):
                await other.is_revoked(decode_token(token, "access", settings=settings))
            await other.aclose()
            await store.recover(cutoff=False, actor="test")
            assert (await client.get("/me", headers=headers)).status_code == 200
        assert admin.hget(store.keys.integrity, "state") == b"recovered"
        assert not admin.exists(store.keys.global_watermark)
    finally:
        admin.close()
        await store.aclose()


async def test_accept_goes_on_but_stays_loud(own: LocalRedis) -> None:
    """accept (the opt-out): a lost revocation is accepted again, but the loss is counted and
    health is unhealthy until recovered."""
    settings = _settings(own, on_data_loss="accept")
    store = SyncRedisTokenRevocationStore(settings=settings)
    admin = redis.Redis(port=own.port)
    counted = DENYLIST_LOST.labels("wiped", "accept")._value.get()
    try:
        token, jti = create_access_token("u", tenant_id="t", settings=settings)
        data = decode_token(token, "access", settings=settings)
        store.revoke_token(jti)
        assert store.is_revoked(data)
        admin.flushall()
        assert not store.is_revoked(data)  # what "accept" means
        assert DENYLIST_LOST.labels("wiped", "accept")._value.get() == counted + 1
        assert admin.hget(store.keys.integrity, "state") == b"accepted"
        assert not health_check(store, settings).healthy
        store.recover(cutoff=False)
        assert health_check(store, settings).healthy
    finally:
        admin.close()
        store.close()


async def test_require_init_makes_a_fresh_process_see_a_wipe(own: LocalRedis) -> None:
    """With REVOKER_REQUIRE_INIT a process that just started treats "no epoch" as a loss."""
    settings = _settings(own, require_init=True)
    store = SyncRedisTokenRevocationStore(settings=settings)
    try:
        created, epoch = store.init()
        assert created
        assert store.init() == (False, epoch)
        old, _ = create_access_token("u", tenant_id="t", settings=settings)
        data = decode_token(old, "access", settings=settings)
        assert not store.is_revoked(data)
        redis.Redis(port=own.port).flushall()
        fresh = SyncRedisTokenRevocationStore(settings=settings)  # restarted with the wipe
        assert fresh.is_revoked(data).rule == "global"
        fresh.close()
    finally:
        store.close()


# --- health, CLI, admin API -----------------------------------------------------------------


def test_cli_health_init_and_recover(own: LocalRedis) -> None:
    """`revoker init` creates the epoch; after a handled wipe `revoker health` exits 8 and says
    LOST; `revoker recover --accept` makes it exit 0 again."""
    settings = _settings(own)
    env = cli_env(settings, REVOKER_BROKER_URL=own.url)
    result = run_cli(env, "init")
    assert_exit(result, 0)
    assert "created" in result.stdout
    assert "already" in run_cli(env, "init").stdout
    assert_exit(run_cli(env, "health"), 0)
    store = SyncRedisTokenRevocationStore(settings=settings)
    try:
        token, _ = create_access_token("u", tenant_id="t", settings=settings)
        store.is_revoked(decode_token(token, "access", settings=settings))
        redis.Redis(port=own.port).flushall()
        assert store.is_revoked(decode_token(token, "access", settings=settings)).rule == "global"
    finally:
        store.close()
    result = run_cli(env, "check", token)
    assert_exit(result, 1)
    assert "rule: global" in result.stdout
    result = run_cli(env, "health")
    assert_exit(result, 8)
    assert "LOST" in result.stdout
    assert_exit(run_cli(env, "recover"), 2)
    result = run_cli(env, "recover", "--accept")
    assert_exit(result, 0)
    assert "new epoch" in result.stdout
    assert_exit(run_cli(env, "health"), 0)


async def test_api_health_is_503_after_a_loss(own: LocalRedis) -> None:
    """GET /health: 200 with the integrity and server sections, 503 after a handled loss."""
    settings = _settings(own, broker_url=own.url)
    store = RedisTokenRevocationStore(settings=settings)
    admin = redis.Redis(port=own.port)
    try:
        app = create_app(settings=settings, store=store)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            await store.revoke_token("x")
            token, _ = create_access_token("u", tenant_id="t", settings=settings)
            data = decode_token(token, "access", settings=settings)
            assert not await store.is_revoked(data)  # this process has seen the epoch
            ok = await client.get("/health")
            assert ok.status_code == 200, ok.text
            body = ok.json()
            assert body["integrity"]["healthy"]
            assert body["integrity"]["epoch"]
            assert body["server"]["maxmemory_policy"] == "noeviction"
            admin.flushall()
            down = await client.get("/health")  # seen by the health read itself, not yet handled
            assert down.status_code == 503
            assert (await store.is_revoked(data)).rule == "global"
            handled = await client.get("/health")
            assert handled.status_code == 503
            assert handled.json()["integrity"]["state"] == "cutoff"
    finally:
        admin.close()
        await store.aclose()


def test_an_evicting_server_is_reported_unsafe() -> None:
    """A server with an evicting maxmemory-policy is reported unsafe by `revoker health`."""
    with LocalRedis(args=("--maxmemory-policy", "allkeys-lru")) as server:
        settings = _settings(server)
        result = run_cli(cli_env(settings, REVOKER_BROKER_URL=server.url), "health", "--json")
        assert_exit(result, 0)
        import json

        body = json.loads(result.stdout)
        assert body["server"]["safe"] is False
        assert any("allkeys-lru" in u for u in body["server"]["unsafe"])
        assert body["server"]["connected_replicas"] == 0


@pytest.mark.cluster
async def test_on_a_cluster_the_cut_off_reaches_checks_and_rotations(redis_cluster: Any) -> None:
    """On a Redis Cluster the global watermark (the integrity slot) is read by the check and by
    the rotation's pre-check: a loss's cut-off revokes there too."""
    settings = make_settings(redis_url=redis_cluster.url, redis_cluster=True, redis_timeout=2.0)
    store = RedisTokenRevocationStore(settings=settings)
    try:
        await store.revoke_token("creates-the-epoch")
        pair = await start_session("dave", tenant_id="t-cluster", store=store)
        access = decode_token(pair.access_token, "access", settings=settings)
        assert not await store.is_revoked(access)
        await store.client.delete(store.keys.integrity)  # the integrity slot's node lost its data
        status = await store.is_revoked(access)
        assert status.rule == "global"
        with pytest.raises(exc.TokenRevoked) as raised:
            await rotate_refresh_token(pair.refresh_token, store=store)
        assert raised.value.status.rule == "global"
    finally:
        keys = [
            store.keys.integrity,
            store.keys.global_watermark,
            store.keys.jti("creates-the-epoch"),
        ]
        for key in keys:
            await store.client.delete(key)
        await store.aclose()
