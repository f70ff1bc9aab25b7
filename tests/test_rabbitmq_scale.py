"""RabbitMQ at scale (issue 15): two worker processes (separate ``celery worker`` hosts' worth)
against the shared broker at 127.0.0.1:5672, one SIGKILLed mid-job.

RabbitMQ gives a dead consumer's unacknowledged message back the moment its connection drops
(no visibility timeout, unlike the Redis transport), so the other worker takes the killed chunk
at once; the job's done-set keeps the counts exact. The queue is named after the test's key
prefix and deleted afterwards; data and results are on a throwaway Redis.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from celery_helpers import seed_sessions, start_worker, worker_env
from conftest import make_settings
from revoker import jobs
from revoker.keys import KeyLayout
from revoker.localredis import LocalRedis
from revoker.settings import configure
from test_rabbitmq import AMQP_URL, _rabbitmq_up

pytestmark = [pytest.mark.celery, pytest.mark.chaos]

SESSIONS = 15_000
BUCKETS = 256
CHUNK = 250


@pytest.fixture
def server() -> Iterator[LocalRedis]:
    """A Redis of this test's own (data and results)."""
    if not _rabbitmq_up():
        pytest.skip("RabbitMQ is not reachable at 127.0.0.1:5672")
    with LocalRedis() as lr:
        yield lr


def _delete_queue(name: str) -> None:
    from kombu.connection import Connection as _Connection

    connection: Any = _Connection  # kombu's Connection is unannotated
    with connection(AMQP_URL, connect_timeout=2) as conn:
        conn.default_channel.queue_delete(name)


def _queue_type(name: str) -> str:
    """The type of an existing RabbitMQ queue: redeclaring it as a quorum queue succeeds only if
    it is one (RabbitMQ refuses an inequivalent x-queue-type with PRECONDITION_FAILED)."""
    from amqp.exceptions import PreconditionFailed
    from kombu.connection import Connection as _Connection

    connection: Any = _Connection  # kombu's Connection is unannotated
    with connection(AMQP_URL, connect_timeout=2) as conn:
        try:
            conn.channel().queue_declare(
                queue=name, durable=True, auto_delete=False,
                arguments={"x-queue-type": "quorum"},
            )  # fmt: skip
        except PreconditionFailed:
            return "classic"
    return "quorum"


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_worker_killed_mid_job_over_rabbitmq(server: LocalRedis, queue_type: str) -> None:
    """A 15,000-session tenant job on two workers over RabbitMQ (a classic and a quorum task
    queue); one is SIGKILLed mid-chunk: the other finishes, counts exact, every family audited,
    every record removed."""
    s = configure(make_settings(redis_url=server.url, broker_url=AMQP_URL,
                                result_backend=server.url, chunk_size=CHUNK,
                                session_buckets=BUCKETS, visibility_timeout=30,
                                broker_queue_type=queue_type))  # fmt: skip
    r = redis.Redis.from_url(server.url)
    keys = KeyLayout(s.key_prefix)
    ids = seed_sessions(r, s, "rabbit", SESSIONS, users=1_000)
    env = worker_env(s, AMQP_URL)
    first = start_worker(env, concurrency=1)
    second = start_worker(env, concurrency=1)
    try:
        job_id = jobs.enqueue_tenant_revocation("rabbit", reason="r", actor="a")
        deadline = time.monotonic() + 60
        total = 0
        while time.monotonic() < deadline:
            pipe = r.pipeline(transaction=False)
            pipe.hget(keys.job(job_id), "chunks_total")
            pipe.smembers(keys.job_chunks_done(job_id))
            pipe.hkeys(keys.job_deliveries(job_id))
            planned, done, begun = pipe.execute()
            total = int(planned or 0)
            # A third done and both workers mid-chunk (one process each, prefetch 1).
            if total and len(done) >= total // 3 and len(set(begun) - done) == 2:
                break
            time.sleep(0.002)
        first.kill()
        done_at_kill = r.scard(keys.job_chunks_done(job_id))
        assert 0 < done_at_kill < total, "the kill must land mid-job"
        record = jobs.wait_for_job(job_id, timeout=120)
    finally:
        first.stop()
        second.stop()
        declared = _queue_type(s.key_prefix)
        _delete_queue(s.key_prefix)
    assert declared == queue_type
    assert record.status == "done", record.error
    assert record.chunks_done == record.chunks_total == total
    assert record.families_matched == record.families_revoked == SESSIONS
    # The killed chunk's clean-up may trail "done" (it counted itself, then died): its
    # redelivery removes the records; wait for that, bounded.
    settle = time.monotonic() + 30
    while any(r.exists(keys.session_bucket("rabbit", b)) for b in range(BUCKETS)):
        assert time.monotonic() < settle, "records left after the job"
        time.sleep(0.2)
    audited: set[str] = set()
    for _, entry in r.xrange(keys.audit):
        if entry.get(b"target") == job_id.encode():
            audited.update(entry[b"families"].decode().split())
    assert audited == set(ids)
    deliveries = {int(c): int(n) for c, n in r.hgetall(keys.job_deliveries(job_id)).items()}
    again = sorted(c for c, n in deliveries.items() if n > 1)
    # Killed before its chunk counted itself, the chunk is begun again by the other worker;
    # killed after, the redelivery only removes its records: the counts are exact either way.
    print(f"\n{queue_type}: killed at {done_at_kill}/{total} chunks; begun again elsewhere: "
          f"{again}")  # fmt: skip
    r.close()
