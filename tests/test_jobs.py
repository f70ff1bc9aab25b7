"""The jobs API without a worker: validation, the outbox, duplicates, listing, the redelivery cap.

The broker URL points at a closed loopback port, so publishing fails as with a broker that is
down: every job stays ``pending``, exactly what the outbox must handle. Data is on the real Redis
under the test's own key prefix.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis

from celery_helpers import seed_sessions
from conftest import REDIS_URL, delete_prefix, make_settings
from revoker import jobs
from revoker.exceptions import DuplicateJob, InvalidIdentifier, JobNotFound, StoreUnavailable
from revoker.localredis import free_port
from revoker.settings import RevokerSettings, configure
from revoker.store import get_sync_revocation_store

pytestmark = [pytest.mark.redis]


def _settings(**overrides: object) -> RevokerSettings:
    return make_settings(broker_url=f"redis://127.0.0.1:{free_port()}/0", **overrides)


@pytest.fixture
def s() -> Iterator[RevokerSettings]:
    """Process-wide settings whose broker is down; the prefix's keys are deleted afterwards."""
    settings = configure(_settings(max_redeliveries=2))
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


@pytest.mark.parametrize(
    ("tenant", "error"),
    [("", InvalidIdentifier), ("x" * 300, InvalidIdentifier), (42, InvalidIdentifier)],
)
def test_bad_tenant_ids_are_rejected(s: RevokerSettings, tenant: object, error: type) -> None:
    """Empty, over-long and non-string tenant ids raise InvalidIdentifier, writing nothing."""
    with pytest.raises(error):
        jobs.enqueue_tenant_revocation(tenant, reason="r", actor="a")  # type: ignore[arg-type]
    assert jobs.list_jobs() == []


def test_bad_arguments_get_clear_errors(s: RevokerSettings) -> None:
    """A missing reason, naive datetimes and an inverted window are refused with a message."""
    with pytest.raises(ValueError, match="reason"):
        jobs.enqueue_tenant_revocation("t", reason=" ", actor="a")
    with pytest.raises(ValueError, match="timezone-aware"):
        jobs.enqueue_tenant_revocation(
            "t", reason="r", actor="a", issued_after=datetime(2024, 1, 1)
        )
    with pytest.raises(ValueError, match="later than"):
        jobs.enqueue_tenant_revocation(
            "t", reason="r", actor="a", issued_after=200.0, issued_before=100.0
        )
    with pytest.raises(InvalidIdentifier):
        jobs.enqueue_user_revocation("", tenant_id="t", reason="r", actor="a")
    with pytest.raises(TypeError, match="dry_run"):
        jobs.enqueue_tenant_revocation("t", reason="r", actor="a", dry_run="yes")  # type: ignore[arg-type]
    assert jobs.list_jobs() == []


def test_unknown_job_raises_job_not_found(s: RevokerSettings) -> None:
    """get_job of an unknown or unusable id raises JobNotFound, never a Redis error."""
    for job_id in ("nope", "", "x" * 1000):
        with pytest.raises(JobNotFound):
            jobs.get_job(job_id)


def test_broker_down_job_stays_pending_after_watermark(s: RevokerSettings, r: redis.Redis) -> None:
    """With the broker down: watermark written, job recorded pending in the outbox, id returned."""
    store = get_sync_revocation_store(s)
    job_id = jobs.enqueue_tenant_revocation("acme", reason="breach", actor="ops")
    record = jobs.get_job(job_id)
    assert record.status == "pending"
    assert record.published_at is None
    assert (record.kind, record.tenant_id, record.reason, record.actor) == (
        "tenant", "acme", "breach", "ops",
    )  # fmt: skip
    assert r.get(store.keys.tenant_watermark("acme")) is not None
    assert record.watermark_at is not None
    assert r.zscore(store.keys.jobs_pending, job_id) is not None


def test_filtered_and_dry_run_jobs_write_no_watermark(s: RevokerSettings, r: redis.Redis) -> None:
    """A filtered or dry-run job leaves enforcement to the fan-out: no watermark."""
    store = get_sync_revocation_store(s)
    after = datetime(2026, 1, 1, tzinfo=UTC)
    a = jobs.enqueue_tenant_revocation("t1", client_id="web", reason="r", actor="a")
    b = jobs.enqueue_tenant_revocation("t2", issued_after=after, reason="r", actor="a")
    c = jobs.enqueue_user_revocation("u", tenant_id="t3", dry_run=True, reason="r", actor="a")
    assert jobs.get_job(b).issued_after == after.timestamp()
    for tenant, job_id in (("t1", a), ("t2", b), ("t3", c)):
        assert r.get(store.keys.tenant_watermark(tenant)) is None
        assert jobs.get_job(job_id).watermark_at is None
    assert r.get(store.keys.user_watermark("t3", "u")) is None


def test_duplicate_request_is_detected(s: RevokerSettings, r: redis.Redis) -> None:
    """The same request while the first is active raises DuplicateJob with the first's id."""
    first = jobs.enqueue_tenant_revocation("dup", reason="r", actor="a")
    with pytest.raises(DuplicateJob) as info:
        jobs.enqueue_tenant_revocation("dup", reason="other words", actor="someone else")
    assert info.value.job_id == first
    # A different selector is a different request.
    jobs.enqueue_tenant_revocation("dup", client_id="web", reason="r", actor="a")
    jobs.enqueue_tenant_revocation("dup", dry_run=True, reason="r", actor="a")
    # Once the first job has finished, the same request is accepted again.
    r.hset(get_sync_revocation_store(s).keys.job(first), "status", "done")
    again = jobs.enqueue_tenant_revocation("dup", reason="r", actor="a")
    assert again != first


def test_list_jobs_newest_first_and_by_status(s: RevokerSettings, r: redis.Redis) -> None:
    """list_jobs returns newest first, honours limit and the status filter, rejects bad input."""
    ids = [jobs.enqueue_tenant_revocation(f"t{i}", reason="r", actor="a") for i in range(5)]
    r.hset(get_sync_revocation_store(s).keys.job(ids[1]), "status", "done")
    assert [j.id for j in jobs.list_jobs()] == ids[::-1]
    assert [j.id for j in jobs.list_jobs(limit=2)] == ids[:2:-1]
    assert [j.id for j in jobs.list_jobs(status="done")] == [ids[1]]
    assert jobs.list_jobs()[0].as_dict()["tenant_id"] == "t4"
    with pytest.raises(ValueError, match="status"):
        jobs.list_jobs(status="exploded")
    with pytest.raises(ValueError, match="limit"):
        jobs.list_jobs(limit=0)


def test_wait_for_job_times_out_and_reports_progress(s: RevokerSettings, r: redis.Redis) -> None:
    """wait_for_job calls on_progress with the record and raises TimeoutError when it is late."""
    job_id = jobs.enqueue_tenant_revocation("slow", reason="r", actor="a")
    seen: list[str] = []
    with pytest.raises(TimeoutError, match="pending"):
        jobs.wait_for_job(
            job_id, timeout=0.3, poll_interval=0.05, on_progress=lambda rec: seen.append(rec.status)
        )
    assert seen == ["pending"]
    r.hset(get_sync_revocation_store(s).keys.job(job_id), "status", "done")
    assert jobs.wait_for_job(job_id, timeout=2, poll_interval=0.05).status == "done"


def test_poison_chunk_is_parked_after_max_redeliveries(s: RevokerSettings, r: redis.Redis) -> None:
    """A chunk failing on every delivery is parked: the job fails with a clear error."""
    from revoker.tasks import revoke_chunk

    store = get_sync_revocation_store(s)
    job_id = jobs.enqueue_tenant_revocation("poison", reason="r", actor="a")
    r.hset(store.keys.job(job_id), mapping={"status": "running", "chunks_total": 1, "snapshot": 1})
    r.hset(store.keys.job_chunk(job_id, 0), "not", "a list")  # WRONGTYPE on every GET
    for _ in range(s.max_redeliveries):
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            revoke_chunk(job_id, 0)
    result = revoke_chunk(job_id, 0)
    assert result["parked"] is True
    record = jobs.get_job(job_id)
    assert record.status == "failed"
    assert record.error is not None
    assert "chunk 0 parked after 2 deliveries" in record.error
    assert "WRONGTYPE" in record.error
    assert record.chunks_done == 0


def test_rerun_chunk_counts_once(s: RevokerSettings, r: redis.Redis) -> None:
    """Running a chunk twice writes the same markers and counts its families once."""
    from revoker.tasks import revoke_chunk

    store = get_sync_revocation_store(s)
    ids = seed_sessions(r, s, "rerun", 30)
    job_id = jobs.enqueue_tenant_revocation("rerun", reason="r", actor="a")
    r.hset(store.keys.job(job_id), mapping={"status": "running", "chunks_total": 2, "snapshot": 1})
    r.set(store.keys.job_chunk(job_id, 0), json.dumps(ids[:20]))
    r.set(store.keys.job_chunk(job_id, 1), json.dumps(ids[20:]))
    revoke_chunk(job_id, 0)
    # Redelivered after it recorded itself done: nothing runs again.
    assert revoke_chunk(job_id, 0)["already_done"] is True
    # Killed after its writes but before recording itself done: it reruns, counting once.
    r.srem(store.keys.job_chunks_done(job_id), 0)
    r.hincrby(store.keys.job(job_id), "chunks_done", -1)
    r.hincrby(store.keys.job(job_id), "families_revoked", -20)
    r.hincrby(store.keys.job(job_id), "families_matched", -20)
    assert revoke_chunk(job_id, 0)["revoked"] == 20
    assert jobs.get_job(job_id).families_revoked == 20
    revoke_chunk(job_id, 1)
    record = jobs.get_job(job_id)
    assert (record.status, record.chunks_done, record.families_revoked) == ("done", 2, 30)
    assert all(r.exists(store.keys.family_revoked("rerun", fid)) for fid in ids)


def test_family_reuse_escalates_to_the_user(r: redis.Redis) -> None:
    """With reuse_escalation="user" the follow-up revokes all of the user's sessions."""
    from revoker.tasks import handle_family_reuse

    s = configure(_settings(reuse_escalation="user"))
    try:
        store = get_sync_revocation_store(s)
        ids = seed_sessions(r, s, "esc", 12, users=3)
        victim = [fid for i, fid in enumerate(ids) if i % 3 == 0]
        others = [fid for i, fid in enumerate(ids) if i % 3 != 0]
        job_id = jobs.enqueue_family_reuse(victim[0], tenant_id="esc", user_id="u0")
        handle_family_reuse(job_id)
        record = jobs.get_job(job_id)
        assert record.status == "done"
        assert record.families_revoked == len(victim)
        assert all(r.exists(store.keys.family_revoked("esc", fid)) for fid in victim)
        assert not any(r.exists(store.keys.family_revoked("esc", fid)) for fid in others)
        assert r.get(store.keys.user_watermark("esc", "u0")) is not None
        assert r.zcard(store.keys.user_index("esc", "u0")) == 0
        assert r.zcard(store.keys.tenant_index("esc")) == len(others)
    finally:
        delete_prefix(r, s.key_prefix)


def test_family_keys_match_the_single_key_builders(s: RevokerSettings) -> None:
    """The fan-out's batch key builder names exactly the keys the check reads."""
    keys = get_sync_revocation_store(s).keys
    ids = ["plain", "with:colon", "{brace}", "sp ace", "ünï"]
    for tenant in (None, "acme", "t:{x}"):
        family, revoked = keys.family_keys(tenant, ids)
        assert family == [keys.family(tenant, fid) for fid in ids]
        assert revoked == [keys.family_revoked(tenant, fid) for fid in ids]


def test_unreachable_redis_is_a_clear_error() -> None:
    """With the data Redis down, enqueue and get_job raise StoreUnavailable, not a Redis error."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    configure(make_settings(redis_url=dead, broker_url=dead))
    with pytest.raises(StoreUnavailable):
        jobs.enqueue_tenant_revocation("t", reason="r", actor="a")
    with pytest.raises(StoreUnavailable):
        jobs.enqueue_tenant_revocation("t", client_id="web", reason="r", actor="a")
    with pytest.raises(StoreUnavailable):
        jobs.get_job("some-job")
    with pytest.raises(StoreUnavailable):
        jobs.list_jobs()


def test_job_task_failing_for_good_fails_the_job(r: redis.Redis) -> None:
    """revoke_job retries a failure and, out of attempts, marks the job failed with the cause."""
    from revoker.tasks import revoke_job

    s = configure(_settings(max_redeliveries=1))
    try:
        store = get_sync_revocation_store(s)
        r.set(store.keys.tenant_index("broken"), "not a sorted set")
        job_id = jobs.enqueue_tenant_revocation("broken", reason="r", actor="a")
        revoke_job(job_id)
        record = jobs.get_job(job_id)
        assert record.status == "failed"
        assert record.error is not None
        assert "revoker.revoke_job failed 1 times" in record.error
        assert "WRONGTYPE" in record.error
        # The request can be made again once the failed job released its idempotency key.
        assert jobs.enqueue_tenant_revocation("broken", reason="r", actor="a") != job_id
    finally:
        delete_prefix(r, s.key_prefix)


def test_window_edges_compare_like_the_stored_creation_time() -> None:
    """A window bound equal to a session's creation time matches it, at any µs fraction."""
    rng = random.Random(3)
    # Times like time.time() today: a double there holds ~16 digits, so about one in eight of
    # them lands a µs apart when converted by another route than the writer's "%.6f".
    for at in [1795712581.3381386, 1795712557.3514514, 1795712648.6826906] + [
        1_795_000_000 + rng.random() * 100_000 for _ in range(2_000)
    ]:
        record = jobs.JobRecord(id="j", kind="tenant", tenant_id="t", issued_after=at,
                                issued_before=at, created_at=0.0)  # fmt: skip
        assert record.matches(None, f"{at:.6f}"), f"{at!r} stored as {at:.6f}"
        assert record.matches(None, at)


def test_unfiltered_tenant_job_freezes_the_index_and_spares_later_sessions(
    s: RevokerSettings, r: redis.Redis
) -> None:
    """The frozen snapshot's families are revoked and leave both indexes; newer ones stay."""
    from revoker import tasks
    from revoker.sessions import start_session_sync

    store = get_sync_revocation_store(s)
    keys = store.keys
    ids = seed_sessions(r, s, "frz", 1_200, users=7)
    record = jobs.JobRecord(id="job-frz", kind="tenant", tenant_id="frz", created_at=0.0)
    chunks, fields = tasks._freeze(store, record)
    assert chunks == -(-1_200 // s.chunk_size)
    later = start_session_sync("u3", tenant_id="frz", store=store)  # after the freeze
    frozen = keys.frozen_index("frz", record.id)
    first, size = int(fields["frozen_from"]), int(fields["frozen_chunk"])
    revoked = []
    for n in range(chunks):
        low = first + n * size
        revoked += tasks.revoke_frozen_range(
            store, frozen, low, low + size, tenant_id="frz", mark="1|test"
        )
    # Rerunning a chunk (a redelivery) revokes the same families again, nothing else.
    assert tasks.revoke_frozen_range(store, frozen, first, first + size, tenant_id="frz",
                                     mark="1|test") == revoked[:size]  # fmt: skip
    assert sorted(m.decode() for m in revoked) == sorted(ids)
    assert tasks.sweep_user_indexes(store, "frz", frozen) == len(ids)
    assert tasks.sweep_user_indexes(store, "frz", frozen) == 0  # idempotent
    pipe = r.pipeline(transaction=False)
    for fid in [*ids, later.family_id]:
        pipe.exists(keys.family_revoked("frz", fid))
    flags = pipe.execute()
    assert all(flags[:-1])
    assert not flags[-1]
    assert r.zrange(keys.tenant_index("frz"), 0, -1) == [later.family_id.encode()]
    assert r.zrange(keys.user_index("frz", "u3"), 0, -1) == [later.family_id.encode()]
    assert all(r.zcard(keys.user_index("frz", f"u{u}")) == 0 for u in range(7) if u != 3)


def test_each_chunk_of_a_frozen_job_sweeps_its_own_share_of_user_indexes(r: redis.Redis) -> None:
    """The job deals the user indexes out to its chunks; each chunk empties exactly its share."""
    from revoker import tasks

    s = configure(_settings(chunk_size=400, max_redeliveries=2))
    try:
        store = get_sync_revocation_store(s)
        keys = store.keys
        seed_sessions(r, s, "shr", 1_200, users=30)
        job_id = jobs.enqueue_tenant_revocation("shr", reason="r", actor="a")
        record = jobs.get_job(job_id)
        chunks, fields = tasks._freeze(store, record)
        tasks._share_sweep(store, record, chunks)
        r.hset(keys.job(job_id), mapping={**fields, "status": "running", "chunks_total": chunks,
                                          "snapshot": 1})  # fmt: skip
        shares = [json.loads(r.get(keys.job_chunk(job_id, n)) or "") for n in range(chunks)]
        every = [k for share in shares for k in share]
        assert chunks == 3
        assert sorted(every) == sorted(keys.user_index("shr", f"u{u}") for u in range(30))
        tasks.revoke_chunk(job_id, 0)
        assert all(r.zcard(key) == 0 for key in shares[0])
        assert all(r.zcard(key) > 0 for key in shares[1] + shares[2])
        r.delete(keys.job_chunk(job_id, 2))
        with pytest.raises(LookupError, match="user indexes of chunk 2 are gone"):
            tasks.revoke_chunk(job_id, 2)
        r.set(keys.job_chunk(job_id, 2), json.dumps(shares[2]))
        tasks.revoke_chunk(job_id, 1)
        tasks.revoke_chunk(job_id, 2)
        done = jobs.get_job(job_id)
        assert (done.status, done.families_revoked) == ("done", 1_200)
        assert [key for key in every if r.exists(key)] == []
    finally:
        delete_prefix(r, s.key_prefix)
