"""The mirror against a real Redis: snapshot then feed, decisions equal to the round trip's, no
Redis command per check, and its faults (feed trimmed past it, Redis down, Redis wiped).

Fault tests run a redis-server of their own (revoker.localredis) to pause and flush it; the
others use the shared test Redis under a private key prefix.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis

from conftest import delete_prefix, make_settings, private_settings
from revoker import exceptions as exc
from revoker.check import CheckResult, RevocationChecker
from revoker.keys import bucket_of_user, family_id_prefix
from revoker.localredis import LocalRedis
from revoker.mirror import Mirror, stop_mirrors
from revoker.settings import RevokerSettings
from revoker.store import RedisTokenRevocationStore, SyncRedisTokenRevocationStore
from revoker.tokens import create_access_token, decode_token

pytestmark = pytest.mark.redis

#: Generous: the host is shared and loaded; a bound here proves liveness, not speed.
WAIT = 20.0


class CountingStore(RedisTokenRevocationStore):
    """A store that counts its round-trip checks (the mirror must not need them)."""

    round_trips = 0

    async def is_revoked(self, token: Any) -> Any:
        self.round_trips += 1
        return await super().is_revoked(token)


@pytest.fixture
def mirror_settings() -> Iterator[RevokerSettings]:
    """Mirror-mode settings with a private prefix on the shared test Redis."""
    with private_settings(check_mode="mirror", redis_timeout=2.0) as s:
        yield s


@pytest.fixture
async def stopped() -> AsyncIterator[None]:
    """Every mirror this test's loop started is stopped afterwards."""
    yield
    await stop_mirrors()


async def ready(checker: RevocationChecker) -> Mirror:
    """The checker's mirror, once loaded."""
    mirror = checker.mirror()
    assert mirror is not None
    async with asyncio.timeout(WAIT):
        await mirror.wait_ready()
    return mirror


def issue(settings: RevokerSettings, user: str, **claims: Any) -> str:
    return create_access_token(user, settings=settings, **claims)[0]


async def decision(checker: RevocationChecker, token: str) -> tuple[bool, str | None]:
    """(revoked, rule) as the middleware sees it; a store error fails the test."""
    try:
        result = await checker.check(token)
    except exc.TokenRevoked as e:
        return True, e.status.rule
    assert result.store_error is None, result.store_error
    return False, None


async def test_snapshot_and_feed_decide_as_the_round_trip(
    mirror_settings: RevokerSettings, stopped: None
) -> None:
    """Revocations of every kind made before the mirror started (snapshot) and after (feed):
    the mirror's decision for each token equals the round trip's, and no check asked Redis."""
    settings = mirror_settings
    store = CountingStore(settings=settings)
    round_trip = RevocationChecker(
        store, settings=settings.model_copy(update={"check_mode": "redis"})
    )
    family = family_id_prefix(bucket_of_user("fay", settings.session_buckets)) + "f1"

    def tokens(phase: str) -> dict[str, str]:
        return {
            "jti": issue(settings, "ann", tenant_id="acme", jti=f"jti-{phase}"),
            "family": issue(settings, "fay", tenant_id="acme", family_id=f"{family}{phase}"),
            "user": issue(settings, f"user-{phase}", tenant_id="acme"),
            "tenant": issue(settings, "tia", tenant_id=f"tenant-{phase}"),
            "tenantless": issue(settings, f"solo-{phase}"),
            "untouched": issue(settings, "bob", tenant_id="acme"),
        }

    async def revoke(phase: str) -> None:
        await store.revoke_token(f"jti-{phase}")
        await store.revoke_family(f"{family}{phase}", tenant_id="acme")
        await store.revoke_user_tokens(f"user-{phase}", tenant_id="acme")
        await store.revoke_tenant_tokens(f"tenant-{phase}")
        await store.revoke_user_tokens(f"solo-{phase}", tenant_id=None)

    before = tokens("before")
    await revoke("before")
    checker = RevocationChecker(store, settings=settings)
    mirror = await ready(checker)
    after = tokens("after")
    await revoke("after")
    async with asyncio.timeout(WAIT):
        await mirror.caught_up()
    trips = store.round_trips
    for name, token in [*before.items(), *after.items()]:
        got = await decision(checker, token)
        assert store.round_trips == trips, f"{name}: the mirror asked Redis"
        expected = await decision(round_trip, token)
        trips = store.round_trips
        assert got == expected, name
        assert got[0] == (name != "untouched"), name
    await store.aclose()


@pytest.mark.parametrize("protocol", [2, 3])
async def test_the_raw_reads_load_and_follow_in_either_protocol(
    mirror_settings: RevokerSettings, stopped: None, protocol: int
) -> None:
    """The mirror reads its snapshot and the feed as raw replies (hiredis, no redis-py
    callbacks): over RESP2 and RESP3 (maps where RESP2 has flat lists) it loads families,
    jtis, watermarks and follows the feed alike."""
    settings = mirror_settings
    store = RedisTokenRevocationStore(settings=settings)
    family = family_id_prefix(3) + "raw"

    async def revoke(phase: str) -> dict[str, str]:
        """Tokens of each kind, then their revocations."""
        tokens = {
            "family": issue(settings, "u", tenant_id="acme", family_id=f"{family}-{phase}"),
            "jti": issue(settings, "u", jti=f"jti-{phase}"),
            "tenant": issue(settings, "u", tenant_id=f"t-{phase}"),
        }
        await store.revoke_family(f"{family}-{phase}", tenant_id="acme")
        await store.revoke_token(f"jti-{phase}")
        await store.revoke_tenant_tokens(f"t-{phase}")
        return tokens

    before = await revoke("before")
    url = f"{settings.redis_url}{'&' if '?' in settings.redis_url else '?'}protocol={protocol}"
    mirror = Mirror(settings.model_copy(update={"redis_url": url}))
    try:
        async with asyncio.timeout(WAIT):
            await mirror.wait_ready()
        after = await revoke("after")
        async with asyncio.timeout(WAIT):
            await mirror.caught_up()
        now = time.monotonic()

        def rule(token: str) -> str | None:
            status = mirror.status(decode_token(token, settings=settings), now)
            assert status is not None, "the mirror is not fresh"
            return status.rule

        for name, token in [*before.items(), *after.items()]:
            assert rule(token) == name, name
        assert rule(issue(settings, "u", tenant_id="acme", family_id=family)) is None
        assert mirror.resyncs == {"start": 1}
    finally:
        await mirror.stop()
        await store.aclose()


async def test_a_checked_request_sends_no_redis_command(stopped: None) -> None:
    """With the mirror fresh, 300 checks (revoked and valid) send no command a check would send:
    INFO commandstats shows only the feed reader's reads (XREAD, XRANGE, HMGET)."""
    with LocalRedis() as server:
        settings = make_settings(redis_url=server.url, check_mode="mirror")
        store = RedisTokenRevocationStore(settings=settings)
        await store.revoke_token("gone")
        checker = RevocationChecker(store, settings=settings)
        await ready(checker)
        revoked = issue(settings, "ann", jti="gone")
        valid = issue(settings, "bob")
        admin = redis.Redis.from_url(server.url)
        admin.config_resetstat()
        for _ in range(150):
            assert await decision(checker, revoked) == (True, "jti")
            assert await decision(checker, valid) == (False, None)
        stats = admin.info("commandstats")
        admin.close()
        commands = {name.removeprefix("cmdstat_") for name in stats}
        assert commands <= {"xread", "xrange", "hmget", "info", "config|resetstat"}, commands
        await store.aclose()


async def test_the_warm_path_asks_the_mirror_as_it_is_now(
    mirror_settings: RevokerSettings, stopped: None
) -> None:
    """check_now answers a cached token from the fresh mirror without a round trip, and
    remembers an answer only for the state version it was given at: once a revocation is
    applied it leaves the token to check (which refuses it); a token not cached, or a mirror
    not fresh, is check's too."""
    store = CountingStore(settings=mirror_settings)
    checker = RevocationChecker(store, settings=mirror_settings)
    mirror = await ready(checker)
    token = issue(mirror_settings, "ann", tenant_id="acme")
    assert checker.check_now(token) is None  # not verified yet
    first = await checker.check(token)
    trips = store.round_trips
    for _ in range(3):
        result = checker.check_now(token)
        assert result is not None
        assert result.token == first.token
        assert result.store_error is None
    assert store.round_trips == trips
    mirror.synced = False  # a resync due: the mirror may not answer
    assert checker.check_now(token) is None
    mirror.synced = True
    assert checker.check_now(token) is not None
    await store.revoke_user_tokens("ann", tenant_id="acme")
    async with asyncio.timeout(WAIT):
        await mirror.caught_up()
    assert checker.check_now(token) is None
    assert await decision(checker, token) == (True, "user")
    await store.aclose()


def test_a_second_loop_of_the_same_thread_never_reads_the_first_loops_mirror(
    mirror_settings: RevokerSettings,
) -> None:
    """A mirror whose task ended (stopped with its loop) answers no check; a checker then used
    by another loop of the same thread (asyncio.run again) does not take the old mirror's
    answer for a token revoked in between, and follows the feed in a mirror of its own."""
    checker = RevocationChecker(settings=mirror_settings)
    token = issue(mirror_settings, "ann", tenant_id="acme")

    async def first() -> Mirror:
        store = RedisTokenRevocationStore(settings=mirror_settings)
        checker._store = store  # this loop's store, closed with it
        await checker.check(token)
        mirror = await ready(checker)
        assert checker.check_now(token) is not None
        await mirror.stop()  # as a lifespan's shutdown does
        assert mirror.fresh_state is None
        assert checker.check_now(token) is None
        await store.aclose()
        return mirror

    old = asyncio.run(first())
    sync_store = SyncRedisTokenRevocationStore(settings=mirror_settings)
    sync_store.revoke_user_tokens("ann", tenant_id="acme")
    sync_store.close()

    async def second() -> None:
        store = RedisTokenRevocationStore(settings=mirror_settings)
        checker._store = store
        assert checker.check_now(token) is None
        assert await decision(checker, token) == (True, "user")
        mirror = checker.mirror()
        assert mirror is not None
        assert mirror is not old
        await ready(checker)
        assert checker.check_now(token) is None  # the new mirror has the watermark
        assert await decision(checker, token) == (True, "user")
        await stop_mirrors()
        await store.aclose()

    asyncio.run(second())


def test_a_mirror_is_fresh_only_while_synced_within_the_lag_and_not_fail_closed() -> None:
    """status() answers only with a state, synced, read within REVOKER_MIRROR_MAX_LAG and the
    integrity state not fail-closed: each condition alone sends the check to Redis."""
    from revoker.mirror import MirrorState

    settings = make_settings(check_mode="mirror", mirror_max_lag=1.0, mirror_max_staleness=5)
    mirror = Mirror(settings)
    token = decode_token(issue(settings, "ann"), settings=settings)
    now = time.monotonic()
    assert mirror.status(token, now) is None  # no state yet
    mirror.state = MirrorState()
    mirror.fresh_at = now
    assert mirror.status(token, now) is None  # not synced
    mirror.synced = True
    status = mirror.status(token, now)
    assert status is not None
    assert not status.revoked
    assert mirror.status(token, now + 0.9) is not None
    assert mirror.status(token, now + 1.1) is None  # past the lag bound
    mirror.integrity_state = "fail-closed"
    assert mirror.status(token, now) is None
    mirror.integrity_state = "ok"
    assert mirror.status(token, now) is not None
    mirror.state = None
    assert mirror.status(token, now) is None


async def test_a_mirror_started_on_an_empty_feed_follows_its_first_entries(
    mirror_settings: RevokerSettings, stopped: None
) -> None:
    """A mirror whose snapshot found no feed at all follows the first revocations from the feed:
    no second snapshot (the feed's counts show none of its entries was ever trimmed), and the
    revocation is enforced."""
    settings = mirror_settings
    store = RedisTokenRevocationStore(settings=settings)
    admin = redis.Redis.from_url(settings.redis_url)
    assert not admin.exists(store.keys.feed)
    admin.close()
    checker = RevocationChecker(store, settings=settings)
    mirror = await ready(checker)
    token = issue(settings, "ann", jti="first-ever")
    await store.revoke_token("first-ever")
    await store.revoke_user_tokens("bob", tenant_id=None)
    async with asyncio.timeout(WAIT):
        await mirror.caught_up()
    assert await decision(checker, token) == (True, "jti")
    assert mirror.resyncs == {"start": 1}
    await store.aclose()


async def test_a_feed_trimmed_past_the_mirror_makes_it_resync(
    mirror_settings: RevokerSettings, stopped: None
) -> None:
    """A mirror stopped while revocations are written and the feed trimmed past it loads a
    snapshot when it follows again (resync "trimmed"), and enforces what it missed."""
    settings = mirror_settings
    store = RedisTokenRevocationStore(settings=settings)
    checker = RevocationChecker(store, settings=settings)
    mirror = await ready(checker)
    await store.revoke_token("first")  # the feed is no longer empty: one entry followed
    async with asyncio.timeout(WAIT):
        await mirror.caught_up()
    await mirror.stop()
    trimmed_before = mirror.resyncs.get("trimmed", 0)
    missed = [issue(settings, f"u{i}", jti=f"missed-{i}") for i in range(3)]
    for i in range(3):
        await store.revoke_token(f"missed-{i}")
    await store.revoke_token("last")
    admin = redis.Redis.from_url(settings.redis_url)
    admin.xtrim(
        store.keys.feed, maxlen=1, approximate=False
    )  # only "last" is left: the missed entries are gone
    admin.close()
    mirror.start()
    async with asyncio.timeout(WAIT):
        await mirror.caught_up()
    assert mirror.resyncs.get("trimmed", 0) == trimmed_before + 1
    for token in missed:
        assert await decision(checker, token) == (True, "jti")
    await store.aclose()


@pytest.fixture
def own() -> Iterator[LocalRedis]:
    """A redis-server of our own, to pause and flush."""
    with LocalRedis() as server:
        yield server


async def test_redis_down_serves_within_staleness_then_the_policy(
    own: LocalRedis, stopped: None
) -> None:
    """Redis paused: past the lag bound checks try Redis, fail, and are answered from the mirror
    (a revoked token still refused, a valid one admitted as checked) until the staleness bound;
    then the failure policy applies (fail-closed: unchecked)."""
    settings = make_settings(
        redis_url=own.url,
        check_mode="mirror",
        mirror_max_lag=0.2,
        mirror_max_staleness=2.0,
        fail_open=False,
        redis_timeout=0.05,
    )
    store = RedisTokenRevocationStore(settings=settings)
    await store.revoke_token("gone")
    checker = RevocationChecker(store, settings=settings)
    mirror = await ready(checker)
    revoked, valid = issue(settings, "ann", jti="gone"), issue(settings, "bob")
    own.pause()
    try:
        paused = time.monotonic()
        await asyncio.sleep(0.5)  # past the lag bound
        assert mirror.lag() > settings.mirror_max_lag
        assert await decision(checker, revoked) == (True, "jti")
        assert await decision(checker, valid) == (False, None)
        await asyncio.sleep(
            max(0.0, settings.mirror_max_staleness + 0.5 - (time.monotonic() - paused))
        )
        assert mirror.lag() > settings.mirror_max_staleness
        result = await checker.check(valid)
        assert isinstance(result, CheckResult)
        assert result.store_error is not None
        assert not checker.admit_unchecked(settings.fail_open, result.store_error)
        result = await checker.check(revoked)  # unknown now: the policy, not the mirror
        assert result.store_error is not None
    finally:
        own.resume()
    async with asyncio.timeout(WAIT):
        while mirror.lag() > settings.mirror_max_lag:  # noqa: ASYNC110 - a clock, not an event
            await asyncio.sleep(0.02)
    assert await decision(checker, revoked) == (True, "jti")
    await store.aclose()


async def test_redis_wiped_is_detected_and_cut_off(own: LocalRedis, stopped: None) -> None:
    """Redis wiped under a following mirror: the mirror sees the epoch gone, the default policy
    writes the global cut-off, the mirror loads it (resync "loss"), and every token issued
    before is refused (rule global); one issued after passes."""
    settings = make_settings(redis_url=own.url, check_mode="mirror", redis_timeout=2.0)
    store = RedisTokenRevocationStore(settings=settings)
    await store.revoke_token("gone")
    checker = RevocationChecker(store, settings=settings)
    mirror = await ready(checker)
    earlier = issue(settings, "ann")
    admin = redis.Redis.from_url(own.url)
    admin.flushall()
    admin.close()
    async with asyncio.timeout(WAIT):
        while not mirror.resyncs.get("loss"):  # noqa: ASYNC110 - a counter, not an event
            await asyncio.sleep(0.02)
        await mirror.caught_up()
    assert await decision(checker, earlier) == (True, "global")
    later = issue(settings, "ann")
    assert await decision(checker, later) == (False, None)
    await store.aclose()


def test_mirror_mode_is_refused_with_a_cluster() -> None:
    """REVOKER_CHECK_MODE=mirror with REVOKER_REDIS_CLUSTER fails at load, naming both."""
    with pytest.raises(ValueError, match=r"CHECK_MODE=mirror.*REDIS_CLUSTER"):
        make_settings(check_mode="mirror", redis_cluster=True)


def test_staleness_below_the_lag_bound_is_refused() -> None:
    """REVOKER_MIRROR_MAX_STALENESS below REVOKER_MIRROR_MAX_LAG fails at load."""
    with pytest.raises(ValueError, match="MIRROR_MAX_STALENESS"):
        make_settings(check_mode="mirror", mirror_max_lag=5, mirror_max_staleness=1)


_ = delete_prefix  # the shared Redis's keys are deleted by private_settings


async def test_health_shows_the_mode_and_this_processs_mirror(
    mirror_settings: RevokerSettings, stopped: None
) -> None:
    """The health report (behind `revoker health` and GET /health) names the check mode and
    this process's mirror: loaded, fresh, its entries and resyncs."""
    from revoker.health import check_async

    settings = mirror_settings
    store = RedisTokenRevocationStore(settings=settings)
    await store.revoke_token("gone")
    checker = RevocationChecker(store, settings=settings)
    await ready(checker)
    report = await check_async(store, settings)
    assert report.mirror["mode"] == "mirror"
    [mine] = [m for m in report.mirror["mirrors"] if m["key_prefix"] == settings.key_prefix]
    assert mine["ready"]
    assert mine["fresh"]
    assert mine["entries"]["jti"] == 1
    assert mine["resyncs"]["start"] == 1
    await store.aclose()
