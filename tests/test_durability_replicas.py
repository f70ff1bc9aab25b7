"""REVOKER_DURABILITY=replicas:1 against a primary and a replica of the test's own (redis-server
``--replicaof`` on free ports): acknowledged while the replica confirms, refused within the
timeout while it is stopped (SIGSTOP), and a bulk-job chunk not counted done meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from celery_helpers import seed_sessions
from conftest import make_settings
from revoker import health, jobs, tasks
from revoker.exceptions import DurabilityNotReached, RefreshTokenReused
from revoker.keys import family_bucket
from revoker.localredis import LocalRedis, free_port
from revoker.refresh import rotate_refresh_token, rotate_refresh_token_sync
from revoker.sessions import start_session, start_session_sync
from revoker.settings import RevokerSettings, configure
from revoker.store import RedisTokenRevocationStore, SyncRedisTokenRevocationStore
from revoker.tokens import create_access_token, decode_token
from test_cli import assert_exit, cli_env, run_cli

pytestmark = [pytest.mark.chaos]

#: The wait's bound, and what a refused revocation may take beyond it on a loaded machine.
TIMEOUT = 0.5
SLACK = 0.8


class Pair:
    """A primary and its replica."""

    def __init__(self) -> None:
        # No 5 s wait before the replica's first full sync (Redis's default diskless delay).
        self.primary = LocalRedis(args=("--repl-diskless-sync-delay", "0")).start()
        self.replica = LocalRedis(args=("--replicaof", "127.0.0.1", str(self.primary.port)))
        self.replica.start()
        self.p = redis.Redis(port=self.primary.port)
        self.r = redis.Redis(port=self.replica.port)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            info = self.p.info("replication")
            if info.get("slave0", {}).get("state") == "online" and self._acknowledges():
                self.p.config_resetstat()  # the tests count the WAITs revocations send
                return
            time.sleep(0.05)
        raise TimeoutError("the replica did not come online")

    def _acknowledges(self) -> bool:
        # "online" on the primary's side can come before the replica, still loading what it was
        # sent, answers its first acknowledgement request: a first WAIT then times out.
        self.p.set("pair:ready", "1")
        return int(self.p.execute_command("WAIT", 1, 1000)) >= 1

    def stop(self) -> None:
        self.replica.resume()  # harmless when it runs
        for client in (self.p, self.r):
            client.close()
        for server in (self.replica, self.primary):
            server.stop()
            shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture
def pair() -> Iterator[Pair]:
    servers = Pair()
    try:
        yield servers
    finally:
        servers.stop()


def _settings(pair: Pair) -> RevokerSettings:
    return configure(
        make_settings(
            redis_url=pair.primary.url,
            # A broker nobody listens on: jobs stay in the outbox; chunks are run by the test.
            broker_url=f"redis://127.0.0.1:{free_port()}/0",
            durability="replicas:1",
            durability_timeout=TIMEOUT,
            redis_timeout=2.0,
            session_buckets=64,
        )
    )


async def test_replicas_1_acknowledges_once_the_replica_has_it(pair: Pair) -> None:
    """Every single revocation returns only once the replica holds it (read from the replica)."""
    settings = _settings(pair)
    sync = SyncRedisTokenRevocationStore(settings=settings)
    store = RedisTokenRevocationStore(settings=settings)
    keys = sync.keys
    try:
        sync.revoke_token("j1")
        assert pair.r.exists(keys.jti("j1"))
        await store.revoke_token("j2")
        assert pair.r.exists(keys.jti("j2"))
        sync.revoke_family("f1", tenant_id="t")
        assert pair.r.hexists(keys.family_revoked("t", "f1"), "f1")
        await store.revoke_user_tokens("u1", tenant_id="t")
        assert pair.r.exists(keys.user_watermark("t", "u1"))
        sync.revoke_tenant_tokens("t2")
        assert pair.r.exists(keys.tenant_watermark("t2"))
        jobs.enqueue_tenant_revocation("t3", reason="r", actor="a", settings=settings)
        assert pair.r.exists(keys.tenant_watermark("t3"))
        assert pair.p.info("commandstats")["cmdstat_wait"]["calls"] == 6
        report = health.check(sync, settings)
        assert report.durability is not None
        assert report.durability["honoured"], report.durability
    finally:
        sync.close()
        await store.aclose()


async def test_a_stopped_replica_refuses_revocations_within_the_timeout(pair: Pair) -> None:
    """With the replica SIGSTOPped every revocation path raises DurabilityNotReached within the
    timeout, saying it was written; health stops calling the mode honoured."""
    settings = _settings(pair)
    sync = SyncRedisTokenRevocationStore(settings=settings)
    store = RedisTokenRevocationStore(settings=settings)
    keys = sync.keys
    pair.replica.pause()
    try:
        calls = {
            "sync revoke_token": lambda: sync.revoke_token("j1"),
            "sync revoke_family": lambda: sync.revoke_family("f1", tenant_id="t"),
            "sync revoke_user_tokens": lambda: sync.revoke_user_tokens("u1", tenant_id="t"),
            "sync revoke_tenant_tokens": lambda: sync.revoke_tenant_tokens("t"),
            "enqueue's watermark": lambda: jobs.enqueue_tenant_revocation(
                "t3", reason="r", actor="a", settings=settings
            ),
        }
        for name, call in calls.items():
            started = time.monotonic()
            with pytest.raises(DurabilityNotReached, match="0 of 1 replicas") as info:
                call()
            took = time.monotonic() - started
            assert TIMEOUT * 0.9 <= took < TIMEOUT + SLACK, (name, took)
            assert "written but is not acknowledged as durable" in str(info.value)
        for name, coro in {
            "async revoke_token": store.revoke_token("j2"),
            "async revoke_tenant_tokens": store.revoke_tenant_tokens("t4"),
        }.items():
            started = time.monotonic()
            with pytest.raises(DurabilityNotReached, match="0 of 1 replicas"):
                await coro
            assert time.monotonic() - started < TIMEOUT + SLACK, name
        # Written on the primary all the same.
        assert pair.p.exists(keys.jti("j1"), keys.jti("j2"), keys.tenant_watermark("t3")) == 3
        # No job was recorded for the refused enqueue: the caller retries it.
        assert jobs.list_jobs(settings=settings) == []
        # Health: the replica stops acknowledging; after its lag passes 2 s it is not counted.
        for _ in range(24):
            if not sync.durability_check()["honoured"]:
                break
            await asyncio.sleep(0.25)
        report = health.check(sync, settings)
        assert report.durability is not None
        assert not report.durability["honoured"]
        assert "0 of 1 replicas online and acknowledging" in report.durability["detail"]
    finally:
        pair.replica.resume()
        sync.close()
        await store.aclose()


def test_a_chunk_is_not_counted_done_while_the_replica_is_stopped(pair: Pair) -> None:
    """A chunk whose marks the replica has not confirmed raises (Celery retries it) and is not
    counted; rerun once the replica is back, it counts once and the replica has every mark."""
    settings = _settings(pair)
    store = SyncRedisTokenRevocationStore(settings=settings)
    keys = store.keys
    try:
        ids = seed_sessions(pair.p, settings, "acme", 40, client_ids=("web",))
        job_id = jobs.enqueue_tenant_revocation(
            "acme", client_id="web", reason="incident", actor="ops", settings=settings
        )
        pair.p.hset(keys.job(job_id), mapping={"status": "running", "chunks_total": 1,
                                               "snapshot": 1})  # fmt: skip
        pair.p.set(keys.job_chunk(job_id, 0), json.dumps(sorted({family_bucket(f) for f in ids})))
        pair.p.execute_command("WAIT", 1, 2000)  # the replica has the set-up

        pair.replica.pause()
        with pytest.raises(DurabilityNotReached, match="0 of 1 replicas"):
            tasks.revoke_chunk(job_id, 0)  # called directly, Celery's retry re-raises
        record = jobs.get_job(job_id, settings=settings)
        assert (record.status, record.chunks_done, record.families_revoked) == ("running", 0, 0)
        assert not pair.p.exists(keys.job_chunks_done(job_id))
        marked = {
            fid for fid in ids if pair.p.hexists(keys.family_revoked("acme", fid), fid)
        }  # written on the primary, not acknowledged
        assert marked == set(ids)

        pair.replica.resume()
        result = tasks.revoke_chunk(job_id, 0)
        assert result["revoked"] == len(ids)
        record = jobs.get_job(job_id, settings=settings)
        assert (record.status, record.chunks_done, record.families_revoked) == (
            "done",
            1,
            len(ids),
        )
        assert all(pair.r.hexists(keys.family_revoked("acme", fid), fid) for fid in ids)
    finally:
        pair.replica.resume()
        store.close()


def test_a_reuse_escalation_waits_for_the_replica(pair: Pair) -> None:
    """The user watermark of a reuse escalation (reuse_escalation=user) is a durable write: with
    the replica stopped the follow-up raises DurabilityNotReached (Celery retries it) and the job
    is not done; with it running the replica holds the watermark when the job is."""
    settings = configure(_settings(pair).model_copy(update={"reuse_escalation": "user"}))
    store = SyncRedisTokenRevocationStore(settings=settings)
    keys = store.keys
    try:
        seed_sessions(pair.p, settings, "acme", 3, client_ids=("web",))
        first = jobs.enqueue_family_reuse("fam-1", tenant_id="acme", user_id="u0",
                                          settings=settings)  # fmt: skip
        pair.replica.pause()
        with pytest.raises(DurabilityNotReached, match="0 of 1 replicas"):
            tasks.handle_family_reuse(first)  # called directly, Celery's retry re-raises
        assert jobs.get_job(first, settings=settings).status != "done"
        pair.replica.resume()
        pair.p.execute_command("WAIT", 1, 2000)
        pair.p.config_resetstat()
        second = jobs.enqueue_family_reuse("fam-2", tenant_id="acme", user_id="u1",
                                           settings=settings)  # fmt: skip
        tasks.handle_family_reuse(second)
        assert jobs.get_job(second, settings=settings).status == "done"
        assert pair.r.exists(keys.user_watermark("acme", "u1"))
        assert pair.p.info("commandstats")["cmdstat_wait"]["calls"] >= 1
    finally:
        pair.replica.resume()
        store.close()


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_handled_loss_is_durable_and_a_short_wait_only_logs(
    pair: Pair, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """The cut-off a check writes on a loss is followed by a WAIT; with the replica stopped the
    check still answers (revoked by the cut-off, within the wait's bound) and logs an ERROR that
    the handling is not acknowledged as durable. Both stores."""
    settings = _settings(pair)
    aio = RedisTokenRevocationStore(settings=settings)
    sync = SyncRedisTokenRevocationStore(settings=settings)
    keys = aio.keys
    token, _ = create_access_token("u", tenant_id="t", settings=settings)
    data = decode_token(token, "access", settings=settings)

    async def check() -> Any:
        return await aio.is_revoked(data) if kind == "async" else sync.is_revoked(data)

    try:
        sync.revoke_token("j0")  # the epoch
        assert not (await check()).revoked  # seen by the store
        for paused in (False, True):
            pair.p.delete(keys.integrity)  # the loss
            pair.p.execute_command("WAIT", 1, 2000)
            pair.p.config_resetstat()
            if paused:
                pair.replica.pause()
            caplog.clear()
            started = time.monotonic()
            with caplog.at_level(logging.ERROR, logger="revoker.integrity"):
                status = await check()
            took = time.monotonic() - started
            assert status.rule == "global"
            assert pair.p.info("commandstats")["cmdstat_wait"]["calls"] == 1
            short = [r for r in caplog.records if "not acknowledged as durable" in r.getMessage()]
            assert len(short) == (1 if paused else 0), caplog.text
            assert took < TIMEOUT + SLACK, took
            if not paused:
                assert pair.r.exists(keys.global_watermark)
            pair.replica.resume()
    finally:
        pair.replica.resume()
        await aio.aclose()
        sync.close()


def test_recover_reports_a_short_wait_in_one_line(pair: Pair) -> None:
    """`revoker recover` waits for the replica like a revocation: with it stopped it exits 3
    with one line saying the recovery is not acknowledged as durable; with it running, 0."""
    settings = _settings(pair)
    env = cli_env(settings)
    pair.replica.pause()
    try:
        result = run_cli(env, "recover", "--cutoff")
        assert_exit(result, 3)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "not acknowledged as durable" in lines[0]
        assert "0 of 1 replicas" in lines[0]
    finally:
        pair.replica.resume()
    pair.p.execute_command("WAIT", 1, 2000)
    pair.p.config_resetstat()
    assert_exit(run_cli(env, "recover", "--accept"), 0)
    assert pair.p.info("commandstats")["cmdstat_wait"]["calls"] == 1


async def test_a_reuse_mark_waits_for_the_replica(pair: Pair) -> None:
    """A rotation that finds reuse returns only once the replica has the family's mark: with the
    replica stopped it raises DurabilityNotReached (the mark written, the follow-up enqueued);
    with it running RefreshTokenReused, after one WAIT, and the replica holds the mark."""
    settings = _settings(pair)
    sync = SyncRedisTokenRevocationStore(settings=settings)
    store = RedisTokenRevocationStore(settings=settings)
    keys = sync.keys
    try:
        first = start_session_sync("u1", tenant_id="t", store=sync)
        rotate_refresh_token_sync(first.refresh_token, store=sync)
        pair.replica.pause()
        started = time.monotonic()
        with pytest.raises(DurabilityNotReached, match="0 of 1 replicas"):
            rotate_refresh_token_sync(first.refresh_token, store=sync)  # reuse
        assert time.monotonic() - started < TIMEOUT + SLACK
        assert pair.p.hexists(keys.family_revoked("t", first.family_id), first.family_id)
        assert [j.kind for j in jobs.list_jobs(settings=settings)] == ["family_reuse"]
        pair.replica.resume()

        second = await start_session("u2", tenant_id="t", store=store)
        await rotate_refresh_token(second.refresh_token, store=store)
        pair.p.execute_command("WAIT", 1, 2000)
        pair.p.config_resetstat()
        with pytest.raises(RefreshTokenReused):
            await rotate_refresh_token(second.refresh_token, store=store)
        assert pair.p.info("commandstats")["cmdstat_wait"]["calls"] == 1
        assert pair.r.hexists(keys.family_revoked("t", second.family_id), second.family_id)
    finally:
        pair.replica.resume()
        sync.close()
        await store.aclose()
