"""Refresh-token reuse with a real Celery worker, and with the broker stopped.

The revocation data lives on the shared Redis under this test's own prefix; the broker is a
private redis-server (``LocalRedis``) that the test stops and restarts.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from celery_helpers import WorkerProcess, start_worker, worker_env
from conftest import REDIS_URL, delete_prefix, make_settings
from revoker import exceptions as exc
from revoker import jobs
from revoker.localredis import LocalRedis
from revoker.refresh import REUSE_REASON, rotate_refresh_token_sync
from revoker.sessions import TokenPair, start_session_sync
from revoker.settings import RevokerSettings
from revoker.store import SyncRedisTokenRevocationStore
from revoker.tokens import decode_token

pytestmark = [pytest.mark.celery, pytest.mark.redis]

TENANT = "brokered"


@pytest.fixture
def broker() -> Iterator[LocalRedis]:
    """A private broker the test may stop and restart."""
    with LocalRedis() as server:
        yield server


@pytest.fixture
def settings_for(broker: LocalRedis) -> Iterator[RevokerSettings]:
    """Data on the shared Redis (own prefix), Celery on the private broker."""
    s = make_settings(broker_url=broker.url, result_backend=broker.url)
    yield s
    client = redis.Redis.from_url(REDIS_URL)
    delete_prefix(client, s.key_prefix)
    client.close()


def start_worker_with_beat(s: RevokerSettings, broker: LocalRedis, tmp: Path) -> WorkerProcess:
    """A worker with embedded beat, as deployed: beat runs the outbox sweep every few seconds."""
    return start_worker(
        worker_env(s, broker.url),
        concurrency=1,
        extra_args=("--beat", "--schedule", str(tmp / "beat-schedule")),
    )


def reuse(store: SyncRedisTokenRevocationStore, user: str) -> TokenPair:
    """Log in, rotate, replay the first token: returns the (now revoked) second pair."""
    first = start_session_sync(user, tenant_id=TENANT, store=store)
    second = rotate_refresh_token_sync(first.refresh_token, store=store)
    with pytest.raises(exc.RefreshTokenReused):
        rotate_refresh_token_sync(first.refresh_token, store=store)
    return second


def follow_up_of(family_id: str, s: RevokerSettings) -> jobs.JobRecord:
    (record,) = [r for r in jobs.list_jobs(settings=s, limit=100) if r.family_id == family_id]
    assert record.kind == "family_reuse"
    return record


def audited(s: RevokerSettings, family_id: str) -> list[dict[bytes, bytes]]:
    client = redis.Redis.from_url(REDIS_URL)
    store = SyncRedisTokenRevocationStore(client, settings=s)
    entries = [
        fields
        for _, fields in client.xrange(store.keys.audit)
        if fields.get(b"kind") == b"family_reuse" and fields.get(b"target") == family_id.encode()
    ]
    client.close()
    return entries


def test_reuse_follow_up_runs_and_survives_a_broker_outage(
    broker: LocalRedis, settings_for: RevokerSettings, tmp_path: Path
) -> None:
    """Broker up: the follow-up runs. Broker down: the family is still revoked at once, and the
    follow-up runs after the broker returns (outbox + beat sweep)."""
    s = settings_for
    store = SyncRedisTokenRevocationStore(settings=s)

    worker = start_worker_with_beat(s, broker, tmp_path)
    try:
        up = reuse(store, "ursula")
        done = jobs.wait_for_job(follow_up_of(up.family_id, s).id, timeout=30, settings=s)
        assert done.status == "done", done.error
        (entry,) = audited(s, up.family_id)
        assert entry[b"actor"] == b"system"
        assert entry[b"reason"] == REUSE_REASON.encode()
    finally:
        worker.stop()

    broker.stop()
    started = time.monotonic()
    down = reuse(store, "dan")
    assert time.monotonic() - started < 5, "a dead broker must not hang the refresh endpoint"
    status = store.is_revoked(decode_token(down.access_token, settings=s))
    assert status.rule == "family"
    pending = follow_up_of(down.family_id, s)
    assert pending.status == "pending"
    assert pending.published_at is None

    broker.restart()
    worker = start_worker_with_beat(s, broker, tmp_path)
    try:
        record = jobs.wait_for_job(pending.id, timeout=40, settings=s)
    finally:
        worker.stop()
    assert record.status == "done", record.error
    (entry,) = audited(s, down.family_id)
    assert entry[b"actor"] == b"system"
    with pytest.raises(exc.FamilyRevoked):
        rotate_refresh_token_sync(down.refresh_token, store=store)
    store.close()
