"""``expire_entries`` and the outbox sweep, run in-process against the real Redis (own prefix)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from conftest import REDIS_URL, delete_prefix, make_settings
from revoker import jobs, tasks
from revoker.localredis import free_port
from revoker.settings import RevokerSettings, configure
from revoker.store import get_sync_revocation_store

# A module, not its task objects: pytest would evaluate Celery's task proxies at collection.

pytestmark = [pytest.mark.redis]


@pytest.fixture
def s() -> Iterator[RevokerSettings]:
    """Settings with a private prefix and a broker that is down; keys deleted afterwards."""
    settings = configure(make_settings(broker_url=f"redis://127.0.0.1:{free_port()}/0"))
    yield settings
    client = redis.Redis.from_url(REDIS_URL)
    delete_prefix(client, settings.key_prefix)
    client.close()


@pytest.fixture
def r() -> Iterator[redis.Redis]:
    """A client of the test Redis."""
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


def test_expired_index_members_are_pruned_in_batches(s: RevokerSettings, r: redis.Redis) -> None:
    """Members past their expiry leave every index, over several bounded batches; live ones stay."""
    keys = get_sync_revocation_store(s).keys
    now = int(time.time())
    expired = {f"old-{i}": now - 10 - i for i in range(tasks.EXPIRE_BATCH * 2 + 5)}
    live = {f"new-{i}": now + 3600 for i in range(7)}
    for tenant in ("a", "b:{weird}"):
        r.zadd(keys.tenant_index(tenant), {**expired, **live})
        r.zadd(keys.user_index(tenant, "u1"), {"old-x": now - 1, "new-x": now + 60})
    r.zadd(keys.tenant_index(None), {"old-y": now - 5, "new-y": now + 5})

    result = tasks.expire_entries()

    assert result["index_members"] == 2 * len(expired) + 2 + 1
    for tenant in ("a", "b:{weird}"):
        assert {m.decode() for m in r.zrange(keys.tenant_index(tenant), 0, -1)} == set(live)
        assert r.zrange(keys.user_index(tenant, "u1"), 0, -1) == [b"new-x"]
    assert r.zrange(keys.tenant_index(None), 0, -1) == [b"new-y"]
    assert tasks.expire_entries()["index_members"] == 0


def test_finished_jobs_past_retention_are_removed(s: RevokerSettings, r: redis.Redis) -> None:
    """Finished jobs older than job_retention go with their keys; active and recent ones stay."""
    keys = get_sync_revocation_store(s).keys
    old_done, old_active, recent_done = (
        jobs.enqueue_tenant_revocation(f"t{i}", reason="r", actor="a") for i in range(3)
    )
    long_ago_ms = int((time.time() - s.job_retention - 60) * 1000)
    r.zadd(keys.jobs, {old_done: long_ago_ms, old_active: long_ago_ms})
    r.hset(keys.job(old_done), mapping={"status": "done", "chunks_total": 2})
    r.set(keys.job_chunk(old_done, 1), "[]")
    r.sadd(keys.job_chunks_done(old_done), 0, 1)
    r.hset(keys.job(recent_done), "status", "done")

    assert tasks.expire_entries()["jobs"] == 1

    assert not r.exists(keys.job(old_done), keys.job_chunk(old_done, 1),
                        keys.job_chunks_done(old_done))  # fmt: skip
    assert r.zscore(keys.jobs, old_done) is None
    with pytest.raises(jobs.JobNotFound):
        jobs.get_job(old_done)
    assert jobs.get_job(old_active).status == "pending"
    assert jobs.get_job(recent_done).status == "done"


def test_audit_entries_past_retention_are_trimmed(s: RevokerSettings, r: redis.Redis) -> None:
    """Audit entries older than audit_retention are trimmed (whole stream nodes); new ones stay."""
    keys = get_sync_revocation_store(s).keys
    old_ms = int((time.time() - s.audit_retention - 3600) * 1000)
    for i in range(500):
        r.xadd(keys.audit, {"kind": "old"}, id=f"{old_ms}-{i + 1}")
    for _ in range(10):
        r.xadd(keys.audit, {"kind": "new"})

    trimmed = tasks.expire_entries()["audit_entries"]

    kinds = [e[b"kind"] for _, e in r.xrange(keys.audit)]
    assert kinds.count(b"new") == 10
    # Approximate trimming keeps at most one partly old stream node (100 entries by default).
    assert kinds.count(b"old") < 100
    assert trimmed == 500 - kinds.count(b"old")


def test_outbox_sweep_leaves_fresh_and_started_jobs_alone(
    s: RevokerSettings, r: redis.Redis
) -> None:
    """The sweep skips jobs inside the grace period, drops started ones, stops on a dead broker."""
    keys = get_sync_revocation_store(s).keys
    started = jobs.enqueue_tenant_revocation("started", reason="r", actor="a")
    fresh = jobs.enqueue_tenant_revocation("fresh", reason="r", actor="a")
    r.hset(keys.job(started), "status", "running")

    assert tasks.publish_pending_jobs() == 0  # both inside the grace period: untouched
    assert r.zscore(keys.jobs_pending, fresh) is not None
    assert tasks.publish_pending_jobs(grace=0) == 0  # broker still down: fresh stays pending
    assert r.zscore(keys.jobs_pending, fresh) is not None
    assert r.zscore(keys.jobs_pending, started) is None
    assert jobs.get_job(fresh).status == "pending"
