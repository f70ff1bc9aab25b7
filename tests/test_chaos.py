"""Chaos, bounded so CI runs it: a worker SIGKILLed mid-job, a broker down at enqueue time, and a
poison chunk under a real worker.

Every test starts its own Redis servers (broker and data) and workers: nothing here may disturb
the shared Redis.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis

from celery_helpers import seed_sessions, start_beat, start_worker, worker_env
from conftest import make_settings
from revoker import jobs
from revoker.localredis import LocalRedis
from revoker.sessions import start_session_sync
from revoker.settings import configure
from revoker.store import SyncRedisTokenRevocationStore
from revoker.tokens import decode_token

pytestmark = [pytest.mark.celery, pytest.mark.chaos]

SESSIONS = 100_000
CHUNK = 1_000
#: The minimum the settings allow; kombu then restores a dead worker's messages in ~11 s.
VISIBILITY = 10


@pytest.fixture
def server() -> Iterator[LocalRedis]:
    """A Redis of this test's own (broker, result backend and data)."""
    with LocalRedis() as lr:
        yield lr


def test_worker_sigkill_mid_job_loses_nothing_and_counts_once(server: LocalRedis) -> None:
    """SIGKILL the whole worker at about half of a 100k-session job: a new worker finishes it."""
    s = configure(make_settings(redis_url=server.url, chunk_size=CHUNK,
                                visibility_timeout=VISIBILITY))  # fmt: skip
    r = redis.Redis.from_url(server.url)
    store = SyncRedisTokenRevocationStore(settings=s)
    ids = seed_sessions(r, s, "big", SESSIONS, users=1000)
    total = SESSIONS // CHUNK

    first = start_worker(worker_env(s, server.url), concurrency=2)
    try:
        job_id = jobs.enqueue_tenant_revocation("big", reason="chaos", actor="test")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            # Kill once half the chunks are done AND some chunk is running (it has counted its
            # delivery but not recorded itself done), so the kill lands mid-chunk.
            pipe = r.pipeline(transaction=False)
            pipe.smembers(store.keys.job_chunks_done(job_id))
            pipe.hkeys(store.keys.job_deliveries(job_id))
            done, begun = pipe.execute()
            if len(done) >= total // 2 and set(begun) - done:
                break
            time.sleep(0.002)
        first.kill()
    finally:
        first.stop()
    done_at_kill = {int(c) for c in r.smembers(store.keys.job_chunks_done(job_id))}
    started = {int(c) for c in r.hkeys(store.keys.job_deliveries(job_id))}
    in_flight = started - done_at_kill
    assert total // 2 <= len(done_at_kill) < total, "the kill must land mid-job"
    assert in_flight, "some chunk must have been running when the worker died"

    second = start_worker(worker_env(s, server.url), concurrency=2)
    try:
        record = jobs.wait_for_job(job_id, timeout=90)
    finally:
        second.stop()

    assert record.status == "done", record.error
    assert record.chunks_total == total
    assert record.chunks_done == total
    # Exactly once: a rerun chunk's families are not counted again.
    assert record.families_revoked == record.families_matched == SESSIONS
    assert r.scard(store.keys.job_chunks_done(job_id)) == total
    deliveries = {int(c): int(n) for c, n in r.hgetall(store.keys.job_deliveries(job_id)).items()}
    assert all(deliveries[c] >= 2 for c in in_flight), "chunks in flight were redelivered"
    pipe = r.pipeline(transaction=False)
    for fid in ids:
        pipe.exists(store.keys.family_revoked("big", fid))
    assert sum(pipe.execute()) == SESSIONS
    assert r.zcard(store.keys.tenant_index("big")) == 0
    store.close()
    r.close()


def test_broker_down_at_enqueue_enforces_at_once_and_completes_later(server: LocalRedis) -> None:
    """Broker stopped: enqueue still returns, the watermark enforces, beat's sweep finishes it."""
    with LocalRedis() as broker:
        s = configure(make_settings(redis_url=server.url, broker_url=broker.url, chunk_size=100))
        r = redis.Redis.from_url(server.url)
        store = SyncRedisTokenRevocationStore(settings=s)
        ids = seed_sessions(r, s, "outage", 500)
        pair = start_session_sync("erin", tenant_id="outage", store=store)
        token = decode_token(pair.access_token, "access", settings=s)
        broker.stop()

        started = time.monotonic()
        job_id = jobs.enqueue_tenant_revocation("outage", reason="breach", actor="ops")
        assert time.monotonic() - started < 5, "enqueue must not hang on a dead broker"
        assert store.is_revoked(token).rule == "tenant"
        assert jobs.get_job(job_id).status == "pending"

        broker.restart()
        # The real sweeper: beat sends publish_pending_jobs every few seconds.
        beat = start_beat(worker_env(s, broker.url))
        worker = start_worker(worker_env(s, broker.url), concurrency=2)
        try:
            record = jobs.wait_for_job(job_id, timeout=60)
        finally:
            worker.stop()
            beat.stop()
        from revoker.tasks import publish_pending_jobs

        assert record.status == "done", record.error
        assert record.families_revoked == len(ids) + 1
        assert r.zcard(store.keys.tenant_index("outage")) == 0
        # Nothing left in the outbox: the next sweep publishes nothing.
        assert publish_pending_jobs(grace=0) == 0
        store.close()
        r.close()


def test_poison_chunk_is_parked_by_a_real_worker(server: LocalRedis) -> None:
    """A chunk failing on every delivery is parked as failed; the healthy chunk still completes."""
    s = configure(make_settings(redis_url=server.url, max_redeliveries=3))
    r = redis.Redis.from_url(server.url)
    store = SyncRedisTokenRevocationStore(settings=s)
    ids = seed_sessions(r, s, "poisoned", 10)
    # Published now, run once the worker starts: the record is rigged before that.
    job_id = jobs.enqueue_tenant_revocation("poisoned", reason="r", actor="a")
    r.hset(store.keys.job(job_id), mapping={"chunks_total": 2, "snapshot": 1})
    r.set(store.keys.job_chunk(job_id, 0), json.dumps(ids))
    r.hset(store.keys.job_chunk(job_id, 1), "not", "a list")  # WRONGTYPE on every delivery

    worker = start_worker(worker_env(s, server.url), concurrency=2)
    try:
        record = jobs.wait_for_job(job_id, timeout=60)
        deadline = time.monotonic() + 10
        while r.scard(store.keys.job_chunks_done(job_id)) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()
    assert record.status == "failed"
    assert record.error is not None
    assert "chunk 1 parked after 3 deliveries" in record.error
    assert "WRONGTYPE" in record.error
    assert int(r.hget(store.keys.job_deliveries(job_id), "1") or 0) == 4
    assert r.smembers(store.keys.job_chunks_done(job_id)) == {b"0"}
    assert all(r.exists(store.keys.family_revoked("poisoned", fid)) for fid in ids)
    store.close()
    r.close()
