"""Chaos, bounded so CI runs it: a worker SIGKILLed mid-job, a broker down at enqueue time, and a
poison chunk under a real worker.

Every test starts its own Redis servers (broker and data) and workers: nothing here may disturb
the shared Redis. The SIGKILL test keeps the default session bucket count (8192), as in
production; the others use ``BUCKETS`` so that planning their jobs is quick.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis

from celery_helpers import seed_sessions, start_beat, start_worker, worker_env
from conftest import make_settings
from revoker import jobs
from revoker.keys import KeyLayout, bucket_of_user, family_bucket
from revoker.localredis import LocalRedis
from revoker.sessions import start_session_sync
from revoker.settings import RevokerSettings, configure
from revoker.store import SyncRedisTokenRevocationStore
from revoker.tokens import decode_token

pytestmark = [pytest.mark.celery, pytest.mark.chaos]

SESSIONS = 100_000
CHUNK = 1_000
#: The minimum the settings allow; kombu then restores a dead worker's messages in ~11 s.
VISIBILITY = 10
#: Session buckets per tenant, except in the SIGKILL test (the default there).
BUCKETS = 64


def _expected_chunks(sizes: dict[int, int], chunk_size: int) -> int:
    """How many chunks a tenant job plans: consecutive non-empty buckets, >= chunk_size each."""
    chunks, size = 0, 0
    for bucket in sorted(sizes):
        size += sizes[bucket]
        if size >= chunk_size:
            chunks, size = chunks + 1, 0
    return chunks + (1 if size else 0)


def _records(r: redis.Redis, s: RevokerSettings, tenant: str) -> set[bytes]:
    """Every family id with a record in any of the tenant's session buckets."""
    keys = KeyLayout(s.key_prefix)
    pipe = r.pipeline(transaction=False)
    for b in range(s.session_buckets):
        pipe.hkeys(keys.session_bucket(tenant, b))
    return {fid for ids in pipe.execute() for fid in ids}


def _marks(r: redis.Redis, s: RevokerSettings, tenant: str) -> Counter[bytes]:
    """How many revoked marks each family id has in the tenant's marks buckets (each mark checked
    to be in the bucket the per-request check reads, and every bucket to have its TTL)."""
    keys = KeyLayout(s.key_prefix)
    full = s.refresh_token_ttl + s.leeway
    marks: Counter[bytes] = Counter()
    for key in r.scan_iter(match=f"{keys.revoked_bucket_base(tenant)}*", count=1000):
        assert 0 < r.ttl(key) <= full, key
        for raw in r.hkeys(key):
            fid = raw if isinstance(raw, bytes) else raw.encode()
            assert keys.family_revoked(tenant, fid.decode()) == key.decode(), fid
            marks[fid] += 1
    return marks


@pytest.fixture
def server() -> Iterator[LocalRedis]:
    """A Redis of this test's own (broker, result backend and data)."""
    with LocalRedis() as lr:
        yield lr


def test_worker_sigkill_mid_job_loses_nothing_and_counts_once(server: LocalRedis) -> None:
    """SIGKILL the whole worker at about half of a 100k-session job: a new worker finishes it."""
    s = configure(make_settings(redis_url=server.url, chunk_size=CHUNK,
                                visibility_timeout=VISIBILITY))  # fmt: skip
    assert s.session_buckets == 8192  # the default, as in production
    r = redis.Redis.from_url(server.url)
    store = SyncRedisTokenRevocationStore(settings=s)
    ids = seed_sessions(r, s, "big", SESSIONS, users=1000)
    sizes = Counter(family_bucket(fid) for fid in ids)
    total = _expected_chunks({b: n for b, n in sizes.items() if b is not None}, CHUNK)
    assert SESSIONS // (CHUNK + max(sizes.values())) <= total <= SESSIONS // CHUNK

    # Paced (each round trip followed by a pause four times as long): a chunk's window between
    # counting its delivery and recording itself done is otherwise a few ms, most of its time
    # being the clean-up after it, so the kill below could miss every running chunk.
    paced = worker_env(s, server.url) | {"REVOKER_FANOUT_DUTY_CYCLE": "0.2"}
    first = start_worker(paced, concurrency=2)
    try:
        job_id = jobs.enqueue_tenant_revocation("big", reason="chaos", actor="test")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            # Kill once half the chunks are done AND some chunk is running (it has counted its
            # delivery but not recorded itself done), so the kill lands mid-chunk.
            pipe = r.pipeline(transaction=False)
            pipe.smembers(store.keys.job_chunks_done(job_id))
            pipe.hkeys(store.keys.job_deliveries(job_id))
            pipe.hget(store.keys.job(job_id), "chunks_total")
            done, begun, planned = pipe.execute()
            if planned is not None and len(done) >= total // 2 and set(begun) - done:
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
    # Beat, as deployed: its sweep republishes a job stalled by a message the kill lost outright
    # (taken off the queue by BRPOP but not yet recorded as unacknowledged: kombu cannot restore
    # it). Messages recorded as unacknowledged come back after the visibility timeout.
    beat = start_beat(worker_env(s, server.url))
    try:
        record = jobs.wait_for_job(job_id, timeout=90)
    finally:
        beat.stop()
        second.stop()

    assert record.status == "done", record.error
    assert record.chunks_total == total
    assert record.chunks_done == total
    # Exactly once: a rerun chunk's families are not counted again.
    assert record.families_revoked == record.families_matched == SESSIONS
    assert r.scard(store.keys.job_chunks_done(job_id)) == total
    deliveries = {int(c): int(n) for c, n in r.hgetall(store.keys.job_deliveries(job_id)).items()}
    assert all(deliveries[c] >= 2 for c in in_flight), "chunks in flight were redelivered"
    # The tenant watermark is the enforcement: no per-session marks (issue 15).
    assert _marks(r, s, "big") == Counter()
    assert len(ids) == SESSIONS
    # Every revoked session's record is gone from its bucket, the chunks killed mid-way included.
    assert _records(r, s, "big") == set()
    store.close()
    r.close()


def test_broker_down_at_enqueue_enforces_at_once_and_completes_later(server: LocalRedis) -> None:
    """Broker stopped: enqueue still returns, the watermark enforces, beat's sweep finishes it."""
    with LocalRedis() as broker:
        s = configure(make_settings(redis_url=server.url, broker_url=broker.url, chunk_size=100,
                                    session_buckets=BUCKETS))  # fmt: skip
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
        later = start_session_sync("erin", tenant_id="outage", store=store)  # after the cut-off

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
        # The watermark is the enforcement: no per-session marks (issue 15).
        assert _marks(r, s, "outage") == Counter()
        # The revoked sessions' records are gone; the one started after the cut-off is untouched.
        assert _records(r, s, "outage") == {later.family_id.encode()}
        assert not store.is_revoked(decode_token(later.access_token, "access", settings=s))
        # Nothing left in the outbox: the next sweep publishes nothing.
        assert publish_pending_jobs(grace=0) == 0
        store.close()
        r.close()


def test_poison_chunk_is_parked_by_a_real_worker(server: LocalRedis) -> None:
    """A chunk failing on every delivery is parked as failed; the healthy chunk still completes."""
    s = configure(make_settings(redis_url=server.url, max_redeliveries=3, session_buckets=BUCKETS))
    r = redis.Redis.from_url(server.url)
    store = SyncRedisTokenRevocationStore(settings=s)
    seed_sessions(r, s, "poisoned", 10)
    buckets = sorted({bucket_of_user(f"u{u}", BUCKETS) for u in range(10)})
    # Published now, run once the worker starts: the record is rigged before that.
    job_id = jobs.enqueue_tenant_revocation("poisoned", reason="r", actor="a")
    r.hset(store.keys.job(job_id), mapping={"chunks_total": 2, "snapshot": 1})
    r.set(store.keys.job_chunk(job_id, 0), json.dumps(buckets))
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
    assert _marks(r, s, "poisoned") == Counter()  # the watermark enforces (issue 15)
    assert _records(r, s, "poisoned") == set()  # the healthy chunk deleted what it revoked
    store.close()
    r.close()
