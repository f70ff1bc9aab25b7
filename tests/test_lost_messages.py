"""Lost job messages: a published job no worker started is published again after
``REVOKER_JOB_START_TIMEOUT``, and the copies that makes are harmless.

The decision tests run the sweep and the start claim in this process on the real Redis (own key
prefix, the broker down or the publisher replaced). The ``celery`` tests start a Redis broker of
their own without persistence, lose a filtered job's message by restarting it, then run a real
worker and beat: the job completes within the documented bound. Data lives on a second Redis of
the test's own, which the broker restart does not touch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from celery_helpers import WorkerProcess, seed_sessions, start_beat, start_worker, worker_env
from conftest import make_settings, private_settings
from revoker import jobs, tasks
from revoker.exceptions import ConfigurationError
from revoker.job_record import JobRecord
from revoker.localredis import LocalRedis, free_port
from revoker.publisher import _sender, publish_job
from revoker.sessions import start_session_sync
from revoker.settings import RevokerSettings, configure, load_settings
from revoker.store import SyncRedisTokenRevocationStore, get_sync_revocation_store
from revoker.tasks import outbox
from revoker.tasks.outbox import OUTBOX_GRACE_SECONDS
from revoker.tokens import decode_token
from revoker.worker import BEAT_OUTBOX_SECONDS, app

BUCKETS = 64
#: The short start timeout of the process tests (the default is 30 s).
START_TIMEOUT = 2
#: What the worker and beat need to come up and run the job, on a loaded CI machine.
MARGIN = 20.0


@pytest.fixture
def s() -> Iterator[RevokerSettings]:
    """Process-wide settings whose broker is down; the prefix's keys are deleted afterwards."""
    with private_settings(
        broker_url=f"redis://127.0.0.1:{free_port()}/0", session_buckets=BUCKETS
    ) as settings:
        yield configure(settings)


def _filtered_job(tenant: str) -> str:
    return jobs.enqueue_tenant_revocation(tenant, client_id="web", reason="r", actor="a")


# --- the decision, in this process ---------------------------------------------------------------


def test_start_timeout_is_validated() -> None:
    """REVOKER_JOB_START_TIMEOUT defaults to 30 s and must be 1 to 3600 seconds."""
    assert make_settings().job_start_timeout == 30
    for bad in (0, 3601):
        with pytest.raises(ConfigurationError, match="REVOKER_JOB_START_TIMEOUT"):
            load_settings(jwt_secret="x" * 32, job_start_timeout=bad)


@pytest.mark.redis
def test_the_sweep_publishes_again_only_jobs_published_long_ago_and_not_started(
    s: RevokerSettings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Published a start timeout ago and not started: published again; recently, or started:
    left alone; never published: published."""
    keys = get_sync_revocation_store(s).keys
    now = time.time()
    old, recent, started, never = (_filtered_job(t) for t in ("old", "recent", "started", "never"))
    r.hset(keys.job(old), "published_at", repr(now - s.job_start_timeout - 1))
    r.hset(keys.job(recent), "published_at", repr(now - s.job_start_timeout + 5))
    r.hset(keys.job(started), "published_at", repr(now - 10 * s.job_start_timeout))
    store = get_sync_revocation_store(s)
    assert store.run(store.jobs.start_job(started, "worker-copy")).run
    published: list[str] = []
    monkeypatch.setattr(
        outbox, "publish_job", lambda record, **kw: published.append(record.id) or True
    )

    assert tasks.publish_pending_jobs(grace=0) == 2
    assert sorted(published) == sorted([old, never])
    assert r.zscore(keys.jobs_pending, recent) is not None  # still watched
    assert r.zscore(keys.jobs_pending, started) is None  # off the outbox


@pytest.mark.redis
def test_only_the_message_that_started_a_job_runs_it(
    s: RevokerSettings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second copy of a started job's message dispatches nothing; the owner's redelivery and
    the stall watch's takeover still rerun it."""
    seed_sessions(r, s, "dup", 40, users=40, client_ids=("web", "mobile"))
    job_id = _filtered_job("dup")
    dispatched: list[Any] = []
    monkeypatch.setattr(app, "producer_or_acquire", lambda *a, **kw: contextlib.nullcontext(None))
    monkeypatch.setattr(
        tasks.revoke_chunk, "apply_async", lambda args, **kw: dispatched.append(args)
    )

    tasks.revoke_job(job_id, attempt="first")  # starts it; its chunk messages are then lost
    chunks = jobs.get_job(job_id).chunks_total
    assert chunks >= 1
    assert len(dispatched) == chunks
    tasks.revoke_job(job_id, attempt="copy")  # the outbox's copy, run later: nothing
    assert len(dispatched) == chunks
    tasks.revoke_job(job_id, attempt="first")  # the owner redelivered (a crash): runs again
    assert len(dispatched) == 2 * chunks

    store = get_sync_revocation_store(s)
    store.execute(store.jobs.plan_take_over(job_id, "stall-watch"))
    tasks.revoke_job(job_id, attempt="first")  # the old owner lost it
    assert len(dispatched) == 2 * chunks
    tasks.revoke_job(job_id, attempt="stall-watch")
    assert len(dispatched) == 3 * chunks

    for args in dispatched[:chunks]:
        tasks.revoke_chunk(*args)
    record = jobs.get_job(job_id)
    assert record.status == "done", record.error
    assert record.families_matched == record.families_revoked == 20
    assert not store.run(store.jobs.start_job(job_id, "stall-watch")).run  # finished: nobody


@pytest.mark.redis
def test_a_copy_of_a_family_reuse_message_does_nothing(s: RevokerSettings) -> None:
    """The family-reuse follow-up claims its start the same way: a copy neither audits again
    nor finishes the job."""
    job_id = jobs.enqueue_family_reuse("fam1", tenant_id="reuse", user_id="u1")
    store = get_sync_revocation_store(s)
    assert store.run(store.jobs.start_job(job_id, "owner")).run
    assert tasks.handle_family_reuse(job_id, attempt="copy") == {
        "job_id": job_id,
        "duplicate": True,
    }
    assert jobs.get_job(job_id).status == "running"
    tasks.handle_family_reuse(job_id, attempt="owner")
    assert jobs.get_job(job_id).status == "done"


def _started_with_lost_chunks(
    r: redis.Redis, s: RevokerSettings, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> str:
    """A filtered job started by its job task, whose chunk messages were all lost."""
    seed_sessions(r, s, tenant, 40, users=40, client_ids=("web", "mobile"))
    job_id = _filtered_job(tenant)
    monkeypatch.setattr(app, "producer_or_acquire", lambda *a, **kw: contextlib.nullcontext(None))
    monkeypatch.setattr(tasks.revoke_chunk, "apply_async", lambda *a, **kw: None)
    tasks.revoke_job(job_id, attempt="first")
    assert jobs.get_job(job_id).status == "running"
    return job_id


@pytest.mark.redis
def test_the_watch_publishes_again_a_running_job_whose_chunks_were_lost(
    s: RevokerSettings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks dispatched a start timeout ago, none running, no chunk of any job begun since:
    published again once; a chunk running or any chunk begun lately holds it back."""
    store = get_sync_revocation_store(s)
    keys = store.keys
    lost = _started_with_lost_chunks(r, s, "lost", monkeypatch)
    busy = _started_with_lost_chunks(r, s, "busy", monkeypatch)
    assert store.run(store.jobs.begin_chunk(busy, 0)) == 1  # one of its chunks is running
    published: list[str] = []
    monkeypatch.setattr(
        outbox, "publish_job", lambda record, **kw: published.append(record.id) or True
    )
    now = time.time()
    late = now + s.job_start_timeout + 1

    assert tasks._republish_stalled(store, now) == 0  # first look, dispatched just now
    r.set(keys.jobs_chunk_begun, repr(late - 1))  # the workers are busy with other chunks
    assert tasks._republish_stalled(store, late) == 0
    r.delete(keys.jobs_chunk_begun)
    assert tasks._republish_stalled(store, late) == 1
    assert published == [lost]
    assert tasks._republish_stalled(store, late + s.job_start_timeout + 1) == 0  # once only
    assert late + s.job_start_timeout + 1 - now < s.visibility_timeout


# --- real processes: a broker that loses the message ----------------------------------------------


@pytest.fixture
def servers() -> Iterator[tuple[LocalRedis, LocalRedis]]:
    """(data, broker): two Redis servers of this test's own, neither with persistence."""
    with LocalRedis() as data, LocalRedis() as broker:
        yield data, broker


def _process_settings(data: LocalRedis, broker: LocalRedis) -> RevokerSettings:
    # The visibility timeout keeps its default (1 h): the bound below must not depend on it.
    return configure(
        make_settings(
            redis_url=data.url, broker_url=broker.url, result_backend=broker.url,
            session_buckets=BUCKETS, chunk_size=50, job_start_timeout=START_TIMEOUT,
        )
    )  # fmt: skip


def _stop_all(processes: list[WorkerProcess]) -> None:
    for process in reversed(processes):
        process.stop()


def _run_until_finished(
    s: RevokerSettings, job_id: str, bound: float
) -> tuple[JobRecord, float, str]:
    """Start a worker and beat, wait at most ``bound`` for the job; its record, how long it took
    from the worker's start, and the worker's log. Both processes are stopped whatever happens."""
    processes: list[WorkerProcess] = []
    try:
        processes.append(start_worker(worker_env(s), concurrency=2))
        processes.append(start_beat(worker_env(s)))
        up = time.monotonic()
        record = jobs.wait_for_job(job_id, timeout=bound)
        return record, time.monotonic() - up, processes[0].log()
    finally:
        _stop_all(processes)


@pytest.mark.celery
def test_a_filtered_job_whose_message_the_broker_lost_completes(
    servers: tuple[LocalRedis, LocalRedis],
) -> None:
    """Enqueue a filtered job with no worker, restart the broker (the message is gone), start a
    worker and beat: the sweep publishes it again and it completes within the bound."""
    data, broker = servers
    s = _process_settings(data, broker)
    assert s.visibility_timeout == 3600
    r = redis.Redis.from_url(data.url)
    b = redis.Redis.from_url(broker.url)
    store = SyncRedisTokenRevocationStore(settings=s)
    ids = seed_sessions(r, s, "lost", 400, users=40, client_ids=("web", "mobile"))
    web = start_session_sync("erin", tenant_id="lost", client_id="web", store=store)
    mobile = start_session_sync("erin", tenant_id="lost", client_id="mobile", store=store)

    job_id = _filtered_job("lost")
    assert jobs.get_job(job_id).published_at is not None
    assert b.llen(s.key_prefix) == 1  # the job's message, waiting for a worker
    broker.restart()  # no persistence: the message is lost
    assert b.llen(s.key_prefix) == 0
    # A filtered job has no watermark: until it runs, the selected sessions stay valid.
    assert not store.is_revoked(decode_token(web.access_token, "access", settings=s))

    bound = max(START_TIMEOUT, OUTBOX_GRACE_SECONDS) + BEAT_OUTBOX_SECONDS + MARGIN
    record, took, log = _run_until_finished(s, job_id, bound)

    assert record.status == "done", record.error
    assert "no worker has started it: publishing it again" in log
    assert took < bound, f"took {took:.1f}s"
    assert record.families_matched == record.families_revoked == len(ids) // 2 + 1
    assert store.is_revoked(decode_token(web.access_token, "access", settings=s))
    assert not store.is_revoked(decode_token(mobile.access_token, "access", settings=s))
    store.close()
    r.close()
    b.close()


@pytest.mark.celery
def test_copies_of_a_job_message_start_it_once(servers: tuple[LocalRedis, LocalRedis]) -> None:
    """Four messages of one job (three copies the sweep would publish while no worker runs): one
    starts it, the others do nothing; no chunk is dispatched twice and the counts are exact."""
    data, broker = servers
    s = _process_settings(data, broker)
    r = redis.Redis.from_url(data.url)
    store = SyncRedisTokenRevocationStore(settings=s)
    ids = seed_sessions(r, s, "copies", 400, users=40, client_ids=("web", "mobile"))
    job_id = _filtered_job("copies")
    for _ in range(3):
        assert publish_job(jobs.get_job(job_id), settings=s)

    processes: list[WorkerProcess] = []
    try:
        processes.append(start_worker(worker_env(s), concurrency=2))
        record = jobs.wait_for_job(job_id, timeout=60)
        deadline = time.monotonic() + 10  # the last copies may still be on their way
        while time.monotonic() < deadline and processes[0].log().count("does nothing") < 3:
            time.sleep(0.1)
        log = processes[0].log()
    finally:
        _stop_all(processes)

    assert record.status == "done", record.error
    assert log.count("this copy does nothing") == 3
    assert record.families_matched == record.families_revoked == len(ids) // 2
    deliveries = r.hgetall(store.keys.job_deliveries(job_id))
    assert len(deliveries) == record.chunks_total
    assert set(deliveries.values()) == {b"1"}  # each chunk ran once
    store.close()
    r.close()


@pytest.mark.celery
def test_a_running_job_whose_chunk_messages_the_broker_lost_completes(
    servers: tuple[LocalRedis, LocalRedis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run a filtered job's job task with no worker (its chunks wait in the broker), restart the
    broker: the watch publishes the job again and it completes within the bound."""
    data, broker = servers
    s = _process_settings(data, broker)
    r = redis.Redis.from_url(data.url)
    b = redis.Redis.from_url(broker.url)
    store = SyncRedisTokenRevocationStore(settings=s)
    ids = seed_sessions(r, s, "chunks", 400, users=40, client_ids=("web", "mobile"))
    web = start_session_sync("erin", tenant_id="chunks", client_id="web", store=store)
    job_id = _filtered_job("chunks")
    # The job task, run here as a worker would; its chunk messages go to the test's broker.
    monkeypatch.setattr(app, "producer_or_acquire", lambda *a, **kw: contextlib.nullcontext(None))
    monkeypatch.setattr(
        tasks.revoke_chunk,
        "apply_async",
        lambda args, **kw: _sender(s).send_task("revoker.revoke_chunk", args=list(args)),
    )
    tasks.revoke_job(job_id)
    record = jobs.get_job(job_id)
    assert record.status == "running"
    assert record.chunks_total >= 2
    assert b.llen(s.key_prefix) == 1 + record.chunks_total  # the job's message and its chunks'
    broker.restart()
    assert b.llen(s.key_prefix) == 0

    bound = START_TIMEOUT + 2 * BEAT_OUTBOX_SECONDS + MARGIN
    record, took, log = _run_until_finished(s, job_id, bound)

    assert record.status == "done", record.error
    assert "their messages were lost, publishing it again" in log
    assert took < bound, f"took {took:.1f}s"
    assert record.families_matched == record.families_revoked == len(ids) // 2 + 1
    assert store.is_revoked(decode_token(web.access_token, "access", settings=s))
    store.close()
    r.close()
    b.close()
