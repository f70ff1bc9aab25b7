"""Job storage as store plans: no I/O in JobPlans, the same plans run by the sync and the async
store, one finishing transition, the bulk exchange's errors, and no upward import from tasks.

Data is on the real Redis under the test's own key prefix; the broker is down (a closed port),
so every enqueued job stays ``pending``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis

from conftest import REDIS_URL, delete_prefix, make_settings
from revoker import jobs
from revoker.bulk import BulkRevocation
from revoker.exceptions import DuplicateJob, JobNotFound, StoreUnavailable
from revoker.job_record import JOB_STATUSES, JobRecord
from revoker.localredis import free_port
from revoker.settings import RevokerSettings, configure
from revoker.store import (
    JobPlans,
    RedisTokenRevocationStore,
    StoreCore,
    SyncRedisTokenRevocationStore,
    get_sync_revocation_store,
)

pytestmark = [pytest.mark.redis]


@pytest.fixture
def s() -> Iterator[RevokerSettings]:
    """Process-wide settings whose broker is down; the prefix's keys are deleted afterwards."""
    settings = configure(make_settings(broker_url=f"redis://127.0.0.1:{free_port()}/0"))
    yield settings
    client = redis.Redis.from_url(REDIS_URL)
    delete_prefix(client, settings.key_prefix)
    client.close()


def _request(tenant: str, **fields: object) -> BulkRevocation:
    return BulkRevocation.model_validate(
        {"scope": "tenant", "tenant_id": tenant, "reason": "r", "actor": "a", **fields}
    )


def _running_job(store: SyncRedisTokenRevocationStore, tenant: str, chunks: int) -> str:
    """A recorded job, started, whose plan has ``chunks`` chunks."""
    job_id = jobs.enqueue(_request(tenant))
    assert store.run(store.jobs.start_job(job_id)).chunks_total is None  # no plan yet
    store.execute(store.jobs.plan_record_snapshot(job_id, chunks))
    assert store.run(store.jobs.start_job(job_id)).chunks_total == chunks  # a rerun reuses it
    return job_id


def test_job_plans_do_no_io() -> None:
    """JobPlans builds every plan without a client: only commands and how to read replies."""
    plans = JobPlans(StoreCore(make_settings()))
    record = JobRecord(id="j1", kind="tenant", tenant_id="t", created_at=1.0)
    plan = plans.plan_record_job(record, "idem")
    assert [c[0] for c in plan.commands] == ["HSET", "ZADD", "ZADD"]  # type: ignore[index]
    finish = plans.plan_finish("j1", "failed", fields={"error": "boom"})
    (call,) = finish.commands
    assert call.name == "job_chunk_done"  # type: ignore[union-attr]
    assert finish.finish([[1, 1]]) is True
    assert plans.plan_get_job("j1").finish([{b"id": b"j1", b"kind": b"user", b"created_at": b"2"}])
    with pytest.raises(JobNotFound):
        plans.plan_get_job("j1").finish([{}])
    flow = plans.begin_chunk("j1", 3)
    assert next(flow).commands == [("SISMEMBER", plans.keys.job_chunks_done("j1"), 3)]
    with pytest.raises(StopIteration) as done:
        flow.send(True)  # already counted: no delivery is counted
    assert done.value.value is None


def test_enqueue_takes_a_bulk_revocation(s: RevokerSettings) -> None:
    """enqueue(BulkRevocation) records the request's fields and writes its scope's watermark."""
    store = get_sync_revocation_store(s)
    request = BulkRevocation(
        scope="user", tenant_id="acme", user_id="alice", reason="r", actor="ops",
        client_id=None, issued_after=None, issued_before=None, dry_run=False,
    )  # fmt: skip
    record = jobs.get_job(jobs.enqueue(request))
    assert (record.kind, record.tenant_id, record.user_id, record.actor) == (
        "user", "acme", "alice", "ops",
    )  # fmt: skip
    assert record.watermark_at is not None
    assert redis.Redis.from_url(REDIS_URL).get(store.keys.user_watermark("acme", "alice"))
    filtered = jobs.get_job(jobs.enqueue(_request("acme", client_id="web")))
    assert (filtered.client_id, filtered.watermark_at) == ("web", None)


def test_the_async_store_runs_the_same_job_plans(s: RevokerSettings) -> None:
    """The async store reads and records jobs with the plans the sync store runs."""
    import asyncio

    sync_store = get_sync_revocation_store(s)
    first = jobs.enqueue(_request("async-a"))

    async def main() -> tuple[JobRecord, list[str], str]:
        store = RedisTokenRevocationStore(redis.asyncio.Redis.from_url(REDIS_URL), settings=s)
        try:
            record = await store.get_job(first)
            new = JobRecord(id=jobs.new_job_id(), kind="tenant", tenant_id="async-b",
                            created_at=time.time())  # fmt: skip
            await store.record_job(new, idem_key=store.keys.job_idempotency("async-b"))
            with pytest.raises(DuplicateJob):
                await store.record_job(new, idem_key=store.keys.job_idempotency("async-b"))
            listed = [r.id for r in await store.list_jobs(limit=10, status="pending")]
            return record, listed, new.id
        finally:
            await store.aclose()

    record, listed, new_id = asyncio.run(main())
    assert record == sync_store.get_job(first)
    assert listed == [new_id, first]
    assert [r.id for r in sync_store.list_jobs(limit=10)] == listed


def test_the_last_chunk_finishes_the_job_once(s: RevokerSettings) -> None:
    """Only the last chunk finishes a running job; a chunk counted twice counts once."""
    store = get_sync_revocation_store(s)
    job_id = _running_job(store, "fin", 2)
    finish = store.jobs.plan_finish
    assert store.execute(finish(job_id, "done", chunk=0, matched=3, revoked=3)) is False
    assert store.execute(finish(job_id, "done", chunk=0, matched=3, revoked=3)) is False
    assert store.get_job(job_id).status == "running"
    assert store.execute(finish(job_id, "done", chunk=1, matched=2, revoked=1)) is True
    record = store.get_job(job_id)
    assert (record.status, record.chunks_done, record.families_matched) == ("done", 2, 5)
    assert record.families_revoked == 4
    assert record.finished_at is not None
    assert 0 < redis.Redis.from_url(REDIS_URL).ttl(store.keys.job(job_id)) <= s.job_retention


def test_a_finished_job_never_changes_status(s: RevokerSettings) -> None:
    """Finishing at once writes the status and its fields; a finished job then stays as it is."""
    store = get_sync_revocation_store(s)
    job_id = _running_job(store, "once", 5)
    finish = store.jobs.plan_finish
    assert store.execute(finish(job_id, "failed", fields={"error": "boom"})) is True
    assert store.execute(finish(job_id, "done")) is False
    assert store.execute(finish(job_id, "done", chunk=0, matched=1, revoked=1)) is False
    record = store.get_job(job_id)
    assert (record.status, record.error) == ("failed", "boom")
    assert store.execute(finish("no-such-job", "done")) is False  # nothing is created
    with pytest.raises(JobNotFound):
        store.get_job("no-such-job")


def test_release_frees_the_idempotency_key(s: RevokerSettings) -> None:
    """A released job leaves the outbox and the running list, and the same request is accepted
    again."""
    store = get_sync_revocation_store(s)
    job_id = _running_job(store, "rel", 1)
    with pytest.raises(DuplicateJob):
        jobs.enqueue(_request("rel"))
    store.execute(store.jobs.plan_finish(job_id, "done"))
    store.run(store.jobs.release(job_id))
    r = redis.Redis.from_url(REDIS_URL)
    assert r.zscore(store.keys.jobs_running, job_id) is None
    assert r.zscore(store.keys.jobs_pending, job_id) is None
    assert jobs.enqueue(_request("rel")) != job_id


def test_bulk_exchange_failure_is_store_unavailable() -> None:
    """The bulk path raises the store's error type: Redis down, or a command refused."""
    dead = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with (
        SyncRedisTokenRevocationStore(settings=dead) as store,
        pytest.raises(StoreUnavailable),
        store.bulk_exchange() as exchange,
    ):
        exchange([("HLEN", "x")])
    live = make_settings()
    r = redis.Redis.from_url(REDIS_URL)
    r.set(f"{live.key_prefix}:str", "v")
    try:
        with SyncRedisTokenRevocationStore(settings=live) as store:
            with pytest.raises(StoreUnavailable, match="WRONGTYPE"), store.bulk_exchange() as ex:
                ex([("HLEN", f"{live.key_prefix}:str")])
            # The connection with unread replies was dropped, not handed back: the next works.
            with store.bulk_exchange() as ex:
                assert ex([("HLEN", f"{live.key_prefix}:none")]) == [0]
    finally:
        r.delete(f"{live.key_prefix}:str")
        r.close()


def test_job_statuses_are_one_type() -> None:
    """revoker.jobs re-exports the one status type; its constants partition the statuses."""
    assert jobs.JOB_STATUSES is JOB_STATUSES == ("pending", "running", "done", "failed")
    assert set(JOB_STATUSES) == jobs.ACTIVE_STATUSES | jobs.FINISHED_STATUSES
    assert not jobs.ACTIVE_STATUSES & jobs.FINISHED_STATUSES
    assert jobs.JobRecord is JobRecord


def test_tasks_do_not_import_jobs() -> None:
    """Importing every task leaves revoker.jobs unimported: no upward import."""
    code = "import sys, revoker.tasks; print('revoker.jobs' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
