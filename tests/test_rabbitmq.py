"""The same bulk job with RabbitMQ as the broker (the machines run one at 127.0.0.1:5672).

Data and results stay on a throwaway Redis. The queue is named after the test's key prefix, so
nothing else on the shared RabbitMQ consumes it; it is deleted afterwards.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from celery_helpers import seed_sessions, start_worker, worker_env
from conftest import make_settings
from revoker import jobs
from revoker.keys import bucket_of_user
from revoker.localredis import LocalRedis
from revoker.settings import configure
from revoker.store import SyncRedisTokenRevocationStore

pytestmark = [pytest.mark.celery]

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


def _rabbitmq_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def server() -> Iterator[LocalRedis]:
    """A Redis of this test's own (data and results)."""
    if not _rabbitmq_up():
        pytest.skip("RabbitMQ is not reachable at 127.0.0.1:5672")
    with LocalRedis() as lr:
        yield lr


def test_tenant_job_over_rabbitmq(server: LocalRedis) -> None:
    """Enqueue over AMQP, a real worker consumes it and revokes every session."""
    from kombu.connection import Connection as _Connection

    connection: Any = _Connection  # kombu's Connection is unannotated

    # chunk_size=1: one chunk per non-empty session bucket, i.e. per distinct bucket of a user.
    s = configure(make_settings(redis_url=server.url, broker_url=AMQP_URL, chunk_size=1,
                                session_buckets=64))  # fmt: skip
    r = redis.Redis.from_url(server.url)
    store = SyncRedisTokenRevocationStore(settings=s)
    ids = seed_sessions(r, s, "rabbit", 450, users=10)
    buckets = {bucket_of_user(f"u{u}", s.session_buckets) for u in range(10)}
    worker = start_worker(worker_env(s, AMQP_URL), concurrency=2)
    try:
        job_id = jobs.enqueue_tenant_revocation("rabbit", reason="r", actor="a")
        record = jobs.wait_for_job(job_id, timeout=60)
    finally:
        worker.stop()
        with connection(AMQP_URL, connect_timeout=2) as conn:
            conn.default_channel.queue_delete(s.key_prefix)
    assert record.status == "done", record.error
    assert record.chunks_total == record.chunks_done == len(buckets)
    assert record.families_revoked == len(ids)
    # The revoked sessions' records are gone from their buckets.
    pipe = r.pipeline(transaction=False)
    for b in range(s.session_buckets):
        pipe.hlen(store.keys.session_bucket("rabbit", b))
    assert sum(pipe.execute()) == 0
    pipe = r.pipeline(transaction=False)
    for fid in ids:
        pipe.hexists(store.keys.family_revoked("rabbit", fid), fid)
    assert sum(pipe.execute()) == 0  # the tenant watermark is the enforcement (issue 15)
    store.close()
    r.close()
