"""The jobs API without a worker: validation, the outbox, duplicates, listing, the redelivery cap.

The broker URL points at a closed loopback port, so publishing fails as with a broker that is
down: every job stays ``pending``, exactly what the outbox must handle. Data is on the real Redis
under the test's own key prefix. A job is run in this process (``_run_inline``) where a test needs
one done; the fan-out's parts (``plan_chunks``, ``Selection``, ``revoke_buckets``,
``delete_records``) are also tested on their own. Tenants get ``BUCKETS`` session buckets (planning
a tenant job counts every one), except where a test says it keeps the default.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from celery_helpers import run_job_inline, seed_sessions
from conftest import REDIS_URL, delete_prefix, make_settings
from revoker import jobs, tasks
from revoker.exceptions import DuplicateJob, InvalidIdentifier, JobNotFound, StoreUnavailable
from revoker.keys import bucket_of_user, encode_record, family_bucket, family_id_prefix
from revoker.localredis import free_port
from revoker.rules import now_us, to_us
from revoker.sessions import start_session_sync
from revoker.settings import RevokerSettings, configure
from revoker.store import SyncRedisTokenRevocationStore, get_sync_revocation_store
from revoker.tasks import fanout, outbox
from revoker.tokens import decode_token
from revoker.worker import app

pytestmark = [pytest.mark.redis]


#: Session buckets per tenant in these tests (the default, 8192, is kept by one test).
BUCKETS = 64


def _settings(**overrides: object) -> RevokerSettings:
    values: dict[str, Any] = {"session_buckets": BUCKETS, **overrides}
    return make_settings(broker_url=f"redis://127.0.0.1:{free_port()}/0", **values)


@pytest.fixture
def s() -> Iterator[RevokerSettings]:
    """Process-wide settings whose broker is down; the prefix's keys are deleted afterwards."""
    settings = configure(_settings(max_redeliveries=2))
    yield settings
    client = redis.Redis.from_url(REDIS_URL)
    delete_prefix(client, settings.key_prefix)
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
    with pytest.raises(ValueError, match=r"issued_after(.|\n)*timezone"):
        jobs.enqueue_tenant_revocation(
            "t", reason="r", actor="a", issued_after=datetime(2024, 1, 1)
        )
    with pytest.raises(ValueError, match="later than"):
        jobs.enqueue_tenant_revocation(
            "t", reason="r", actor="a", issued_after=200.0, issued_before=100.0
        )
    with pytest.raises(InvalidIdentifier):
        jobs.enqueue_user_revocation("", tenant_id="t", reason="r", actor="a")
    with pytest.raises(ValueError, match="dry_run"):
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
        with pytest.raises(StoreUnavailable, match="WRONGTYPE") as info:
            revoke_chunk(job_id, 0)
        assert isinstance(info.value.__cause__, redis.ResponseError)
    result = revoke_chunk(job_id, 0)
    assert result["parked"] is True
    record = jobs.get_job(job_id)
    assert record.status == "failed"
    assert record.error is not None
    assert "chunk 0 parked after 2 deliveries" in record.error
    assert "WRONGTYPE" in record.error
    assert record.chunks_done == 0


# --- helpers -------------------------------------------------------------------------------------


def _sharing_a_bucket(user: str, buckets: int, count: int) -> list[str]:
    """``count`` other user ids whose sessions share ``user``'s bucket."""
    target = bucket_of_user(user, buckets)
    others = (f"{user}-n{i}" for i in range(100_000))
    return [o for o in others if bucket_of_user(o, buckets) == target][:count]


def _fields(r: redis.Redis, store: SyncRedisTokenRevocationStore, tenant: str) -> set[str]:
    """Every family id with a record in any of the tenant's buckets."""
    pipe = r.pipeline(transaction=False)
    for b in range(store.settings.session_buckets):
        pipe.hkeys(store.keys.session_bucket(tenant, b))
    return {fid.decode() for ids in pipe.execute() for fid in ids}


def _marked(r: redis.Redis, store: SyncRedisTokenRevocationStore, tenant: str | None) -> set[str]:
    """Every family id with a revoked mark in the tenant, each found where the check reads it."""
    base = store.keys.revoked_bucket_base(tenant)
    marked: set[str] = set()
    for key in r.scan_iter(match=f"{base}*", count=1000):
        for raw in r.hkeys(key):
            fid = raw.decode() if isinstance(raw, bytes) else raw
            assert store.keys.family_revoked(tenant, fid) == key.decode(), fid
            marked.add(fid)
    return marked


def _raw(user: str, created_us: int, client: str | None = None) -> bytes:
    return encode_record(
        user_id=user, client_id=client, created_us=created_us, expires=2_000_000_000,
        current_jti="rt",
    ).encode()  # fmt: skip


def _record(**fields: Any) -> jobs.JobRecord:
    values: dict[str, Any] = {"id": "j", "kind": "tenant", "tenant_id": "t", "created_at": 0.0}
    return jobs.JobRecord(**{**values, **fields})


# --- chunks and redelivery -----------------------------------------------------------------------


def test_chunk_killed_between_counting_and_deleting_deletes_on_redelivery(
    s: RevokerSettings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk counted but not yet cleaned up deletes its records when redelivered."""
    store = get_sync_revocation_store(s)
    ids = seed_sessions(r, s, "gap", 20)
    job_id = jobs.enqueue_tenant_revocation("gap", reason="r", actor="a")
    r.hset(store.keys.job(job_id), mapping={"status": "running", "chunks_total": 1, "snapshot": 1})
    r.set(store.keys.job_chunk(job_id, 0), json.dumps(sorted({family_bucket(f) for f in ids})))

    def lost(*_args: Any, **_kwargs: Any) -> None:
        raise redis.ConnectionError("lost during HDEL")

    monkeypatch.setattr(fanout, "clear_records", lost)
    with pytest.raises(Exception, match="lost during HDEL"):
        tasks.revoke_chunk(job_id, 0)
    assert _fields(r, store, "gap") == set(ids)  # counted, not yet deleted
    monkeypatch.undo()
    assert tasks.revoke_chunk(job_id, 0)["already_done"] is True
    assert _fields(r, store, "gap") == set()
    record = jobs.get_job(job_id)
    assert (record.status, record.families_revoked) == ("done", 20)
    assert _marked(r, store, "gap") == set()  # the tenant watermark is the enforcement


def test_rerun_chunk_counts_once(s: RevokerSettings, r: redis.Redis) -> None:
    """A chunk rerun after a crash writes the same marks and counts its families once."""
    store = get_sync_revocation_store(s)
    keys = store.keys
    ids = seed_sessions(r, s, "rerun", 30)
    buckets = sorted({family_bucket(fid) or 0 for fid in ids})
    first, second = buckets[: len(buckets) // 2], buckets[len(buckets) // 2 :]
    in_second = [fid for fid in ids if family_bucket(fid) in second]
    job_id = jobs.enqueue_tenant_revocation("rerun", reason="r", actor="a")
    r.hset(keys.job(job_id), mapping={"status": "running", "chunks_total": 2, "snapshot": 1})
    r.set(keys.job_chunk(job_id, 0), json.dumps(first))
    r.set(keys.job_chunk(job_id, 1), json.dumps(second))
    assert tasks.revoke_chunk(job_id, 0)["revoked"] == len(ids) - len(in_second)
    # Redelivered after it recorded itself done: nothing runs again.
    assert tasks.revoke_chunk(job_id, 0)["already_done"] is True
    # Chunk 1 killed after reading its buckets but before recording itself done: it reruns.
    record = jobs.get_job(job_id)
    cutoff = to_us(record.watermark_at or 0.0)
    tasks.revoke_buckets(store, second, tenant_id="rerun", select=tasks.Selection(record, cutoff),
                         mark=None)  # fmt: skip
    r.hincrby(keys.job_deliveries(job_id), "1", 1)
    assert _fields(r, store, "rerun") == set(in_second)  # not deleted before being counted
    assert tasks.revoke_chunk(job_id, 1)["revoked"] == len(in_second)
    record = jobs.get_job(job_id)
    assert (record.status, record.chunks_done, record.families_revoked) == ("done", 2, 30)
    assert record.families_matched == 30
    assert _marked(r, store, "rerun") == set()
    assert _fields(r, store, "rerun") == set()


def test_family_reuse_escalates_to_the_user(r: redis.Redis) -> None:
    """With reuse_escalation="user" the follow-up revokes all of the user's sessions only."""
    s = configure(_settings(reuse_escalation="user"))
    try:
        store = get_sync_revocation_store(s)
        ids = seed_sessions(r, s, "esc", 12, users=3)
        victim = [fid for i, fid in enumerate(ids) if i % 3 == 0]
        others = [fid for i, fid in enumerate(ids) if i % 3 != 0]
        # A user of another name in the victim's bucket is no victim.
        (neighbour,) = _sharing_a_bucket("u0", s.session_buckets, 1)
        spared = start_session_sync(neighbour, tenant_id="esc", store=store).family_id
        assert family_bucket(spared) == family_bucket(victim[0])
        # The rotation that saw the reuse wrote the family's own mark; the job does the rest.
        r.hset(store.keys.family_revoked("esc", victim[0]), victim[0], "1|reuse")
        job_id = jobs.enqueue_family_reuse(victim[0], tenant_id="esc", user_id="u0")
        tasks.handle_family_reuse(job_id)
        record = jobs.get_job(job_id)
        assert record.status == "done"
        assert record.families_revoked == len(victim)
        assert _marked(r, store, "esc") == set(victim)
        assert r.get(store.keys.user_watermark("esc", "u0")) is not None
        assert _fields(r, store, "esc") == {*others, spared}
        assert store.get_session(victim[0], tenant_id="esc") is None
    finally:
        delete_prefix(r, s.key_prefix)


def test_a_rerun_family_reuse_job_keeps_its_first_cut_off(r: redis.Redis) -> None:
    """A reuse follow-up run again after a crash keeps the user watermark of its first run, so
    a login made in between survives."""
    s = configure(_settings(reuse_escalation="user"))
    try:
        store = get_sync_revocation_store(s)
        first = start_session_sync("zed", tenant_id="esc2", store=store)
        r.hset(store.keys.family_revoked("esc2", first.family_id), first.family_id, "1|reuse")
        job_id = jobs.enqueue_family_reuse(first.family_id, tenant_id="esc2", user_id="zed")
        tasks.handle_family_reuse(job_id)
        watermark = r.get(store.keys.user_watermark("esc2", "zed"))
        later = start_session_sync("zed", tenant_id="esc2", store=store)
        # As if the first run had died before it recorded itself done.
        r.hset(store.keys.job(job_id), "status", "running")
        tasks.handle_family_reuse(job_id)
        assert r.get(store.keys.user_watermark("esc2", "zed")) == watermark
        status = store.is_revoked(decode_token(later.access_token, "access", settings=s))
        assert not status.revoked
        assert store.get_session(later.family_id, tenant_id="esc2") is not None
        assert jobs.get_job(job_id).status == "done"
    finally:
        delete_prefix(r, s.key_prefix)


def test_revoke_buckets_marks_what_the_check_reads(s: RevokerSettings, r: redis.Redis) -> None:
    """The fan-out's marks refuse exactly its sessions, in every tenant's own marks buckets."""
    store = get_sync_revocation_store(s)
    for tenant in (None, "acme", "t:{x}"):
        pairs = [start_session_sync(f"u{i}", tenant_id=tenant, store=store) for i in range(6)]
        buckets = sorted({family_bucket(pair.family_id) or 0 for pair in pairs})
        select = tasks.Selection(_record(tenant_id=tenant), now_us())
        tasks.revoke_buckets(store, buckets, tenant_id=tenant, select=select, mark="1|fan-out")
        for pair in pairs:
            status = store.is_revoked(decode_token(pair.access_token, "access", settings=s))
            assert (status.rule, status.reason) == ("family", "fan-out")
            mark = r.hget(store.keys.family_revoked(tenant, pair.family_id), pair.family_id)
            assert mark == b"1|fan-out"
        assert _marked(r, store, tenant) == {pair.family_id for pair in pairs}


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
    s = configure(_settings(max_redeliveries=1))
    try:
        store = get_sync_revocation_store(s)
        r.set(store.keys.session_bucket("broken", 5), "not a hash")  # WRONGTYPE while planning
        job_id = jobs.enqueue_tenant_revocation("broken", reason="r", actor="a")
        tasks.revoke_job(job_id)
        record = jobs.get_job(job_id)
        assert record.status == "failed"
        assert record.error is not None
        assert "revoker.revoke_job failed 1 times" in record.error
        assert "WRONGTYPE" in record.error
        # The request can be made again once the failed job released its idempotency key.
        assert jobs.enqueue_tenant_revocation("broken", reason="r", actor="a") != job_id
    finally:
        delete_prefix(r, s.key_prefix)


# --- Selection -----------------------------------------------------------------------------------


def test_selection_cutoff_excludes_sessions_created_after_it() -> None:
    """Sessions created at or before the cut-off are selected; one µs later is not."""
    cutoff = 1_795_000_000_123_456
    flat = [
        b"early", _raw("u", cutoff - 1),
        b"at", _raw("u", cutoff),
        b"late", _raw("u", cutoff + 1),
        b"junk", b"not a record",
        b"bad-created", b"u||soon|1|rt",
    ]  # fmt: skip
    assert tasks.Selection(_record(), cutoff)(flat) == [b"early", b"at"]


def test_selection_user_filter_keeps_only_that_users_records() -> None:
    """A user selection picks its user's records of a shared bucket, by exact (escaped) id."""
    flat = [
        b"a1", _raw("alice", 1),
        b"b1", _raw("bob", 2),
        b"a2", _raw("alice", 3),
        b"x1", _raw("alice|x", 4),
        b"x2", _raw("alicex", 5),
    ]  # fmt: skip
    assert tasks.Selection(_record(kind="user"), 10, "alice")(flat) == [b"a1", b"a2"]
    assert tasks.Selection(_record(kind="user"), 10, "alice|x")(flat) == [b"x1"]
    assert tasks.Selection(_record(), 10)(flat) == [b"a1", b"b1", b"a2", b"x1", b"x2"]


def test_selection_client_filter() -> None:
    """A job naming a client selects only that client's sessions (escaped ids compare exactly)."""
    flat = [
        b"w", _raw("u", 1, "web"),
        b"i", _raw("u", 2, "ios"),
        b"n", _raw("u", 3),
        b"s", _raw("u", 4, "web app|2"),
    ]  # fmt: skip
    assert tasks.Selection(_record(client_id="web"), 10)(flat) == [b"w"]
    assert tasks.Selection(_record(client_id="web app|2"), 10)(flat) == [b"s"]
    assert tasks.Selection(_record(), 10)(flat) == [b"w", b"i", b"n", b"s"]


def test_selection_issue_window_is_inclusive_in_whole_microseconds() -> None:
    """Window bounds equal to a creation time match it; one µs outside does not."""
    after_us, before_us = 1_795_712_581_338_138, 1_795_712_648_682_690
    record = _record(issued_after=after_us / 1e6, issued_before=before_us / 1e6)
    assert record.window_us() == (after_us, before_us)
    flat = [
        b"below", _raw("u", after_us - 1),
        b"after", _raw("u", after_us),
        b"between", _raw("u", after_us + 5_000_000),
        b"before", _raw("u", before_us),
        b"above", _raw("u", before_us + 1),
    ]  # fmt: skip
    cutoff = before_us + 10
    assert tasks.Selection(record, cutoff)(flat) == [b"after", b"between", b"before"]
    open_below = _record(issued_before=before_us / 1e6)
    assert tasks.Selection(open_below, cutoff)(flat) == [b"below", b"after", b"between", b"before"]
    open_above = _record(issued_after=after_us / 1e6)
    assert tasks.Selection(open_above, cutoff)(flat) == [b"after", b"between", b"before", b"above"]


def test_window_edges_compare_like_the_stored_creation_time() -> None:
    """A window bound equal to a session's creation time (its µs iat) matches it, at any µs."""
    rng = random.Random(3)
    for at_us in [1_795_712_581_338_138, 1_795_712_557_351_451] + [
        1_795_000_000_000_000 + rng.randrange(100_000_000_000) for _ in range(2_000)
    ]:
        at = at_us / 1e6  # a token's iat, as issued
        record = _record(issued_after=at, issued_before=at)
        flat = [b"f", _raw("u", to_us(at))]  # created as record_session stores it
        assert tasks.Selection(record, at_us)(flat) == [b"f"], f"{at!r}"


def test_window_edges_match_any_float_the_session_was_created_at() -> None:
    """A bound equal to any float creation time (not only a µs-exact one) matches that session."""
    rng = random.Random(5)
    for _ in range(5_000):
        at = 1_795_000_000 + rng.random() * 100_000  # time.time()-like: more digits than µs hold
        record = _record(issued_after=at, issued_before=at)
        flat = [b"f", _raw("u", to_us(at))]
        assert tasks.Selection(record, to_us(at) + 1)(flat) == [b"f"], f"{at!r}"


# --- plan_chunks ---------------------------------------------------------------------------------


def _fill(r: redis.Redis, s: RevokerSettings, tenant: str, sizes: dict[int, int]) -> None:
    """Put ``sizes[b]`` session records into bucket ``b`` of ``tenant``."""
    store = get_sync_revocation_store(s)
    for bucket, size in sizes.items():
        r.hset(store.keys.session_bucket(tenant, bucket), mapping={
            f"{family_id_prefix(bucket)}f{i}": _raw(f"u{bucket}", 1) for i in range(size)
        })  # fmt: skip


def _chunks(r: redis.Redis, s: RevokerSettings, job_id: str, total: int) -> list[list[int]]:
    keys = get_sync_revocation_store(s).keys
    assert r.get(keys.job_chunk(job_id, total)) is None
    return [json.loads(r.get(keys.job_chunk(job_id, n)) or "null") for n in range(total)]


def test_plan_chunks_groups_consecutive_non_empty_buckets(r: redis.Redis) -> None:
    """A tenant job's chunks: consecutive non-empty buckets of >= chunk_size sessions, in order."""
    s = _settings(chunk_size=6)
    try:
        store = get_sync_revocation_store(s)
        _fill(r, s, "plan", {3: 5, 10: 2, 11: 4, 40: 7, 41: 9, 63: 1})
        _fill(r, s, "other", {4: 50})  # another tenant's buckets are not this job's
        record = _record(id="plan-job", tenant_id="plan")
        total = tasks.plan_chunks(store, record)
        assert _chunks(r, s, "plan-job", total) == [[3, 10], [11, 40], [41], [63]]
        assert 0 < r.ttl(store.keys.job_chunk("plan-job", 0)) <= s.job_retention
    finally:
        delete_prefix(r, s.key_prefix)


def test_plan_chunks_of_an_empty_tenant_is_zero_chunks(r: redis.Redis) -> None:
    """A tenant without sessions plans no chunk at all (the job is done at once)."""
    s = _settings()
    try:
        store = get_sync_revocation_store(s)
        _fill(r, s, "other", {0: 3})
        assert tasks.plan_chunks(store, _record(id="empty-job", tenant_id="empty")) == 0
        assert _chunks(r, s, "empty-job", 0) == []
    finally:
        delete_prefix(r, s.key_prefix)


def test_plan_chunks_of_a_user_job_is_its_users_bucket(r: redis.Redis) -> None:
    """A user job is one chunk: its user's bucket, with or without sessions in it."""
    s = _settings()
    try:
        store = get_sync_revocation_store(s)
        record = _record(id="user-job", kind="user", user_id="alice", tenant_id="acme")
        assert tasks.plan_chunks(store, record) == 1
        assert _chunks(r, s, "user-job", 1) == [[bucket_of_user("alice", BUCKETS)]]
    finally:
        delete_prefix(r, s.key_prefix)


def test_plan_chunks_with_the_default_bucket_count(r: redis.Redis) -> None:
    """With the default 8192 buckets every one is counted, across count batches to the last."""
    s = make_settings(chunk_size=4)
    assert s.session_buckets == 8192
    try:
        store = get_sync_revocation_store(s)
        _fill(r, s, "wide", {0: 1, 999: 2, 1_000: 1, 5_000: 4, 8_191: 3})
        total = tasks.plan_chunks(store, _record(id="wide-job", tenant_id="wide"))
        assert _chunks(r, s, "wide-job", total) == [[0, 999, 1_000], [5_000], [8_191]]
        # And end to end: every session of the tenant is revoked and its record deleted.
        seeded = seed_sessions(r, s, "wide2", 40, users=13)
        job = jobs.JobRecord(id="wide2-job", kind="tenant", tenant_id="wide2",
                             created_at=0.0, watermark_at=float(now_us() / 1e6))  # fmt: skip
        chunks = tasks.plan_chunks(store, job)
        lists = _chunks(r, s, "wide2-job", chunks)
        assert sorted(b for lst in lists for b in lst) == sorted(
            {bucket_of_user(f"u{u}", 8192) for u in range(13)}
        )
        select = tasks.Selection(job, to_us(job.watermark_at or 0.0))
        for lst in lists:
            done = tasks.revoke_buckets(store, lst, tenant_id="wide2", select=select, mark="1|t")
            tasks.delete_records(store, "wide2", done)
        assert _marked(r, store, "wide2") == set(seeded)
        assert _fields(r, store, "wide2") == set()
    finally:
        delete_prefix(r, s.key_prefix)


# --- revoke_buckets and delete_records -----------------------------------------------------------


def test_revoke_buckets_rerun_selects_and_marks_the_same(
    s: RevokerSettings, r: redis.Redis
) -> None:
    """A rerun returns the same selection and rewrites the same marks; the records stay."""
    store = get_sync_revocation_store(s)
    keys = store.keys
    # 3 users, 300 sessions each: buckets past the listpack size, read in several HSCAN pages.
    ids = seed_sessions(r, s, "rb", 900, users=3)
    buckets = sorted({family_bucket(fid) or 0 for fid in ids})
    select = tasks.Selection(_record(tenant_id="rb"), now_us())
    first = tasks.revoke_buckets(store, buckets, tenant_id="rb", select=select, mark="1|first")
    assert {b: sorted(v) for b, v in first.items()} == {
        b: sorted(fid.encode() for fid in ids if family_bucket(fid) == b) for b in buckets
    }
    assert _marked(r, store, "rb") == set(ids)
    assert r.hget(keys.family_revoked("rb", ids[0]), ids[0]) == b"1|first"
    full = s.refresh_token_ttl + s.leeway
    for b in buckets:
        assert full - 60 < r.ttl(keys.revoked_bucket("rb", b)) <= full
    assert _fields(r, store, "rb") == set(ids)  # deleting is the caller's step
    r.hdel(keys.family_revoked("rb", ids[5]), ids[5])  # as if lost: the rerun writes it again
    assert len(buckets) >= 2
    longer, lost = keys.revoked_bucket("rb", buckets[0]), keys.revoked_bucket("rb", buckets[1])
    r.expire(longer, 2 * full)  # a bucket's TTL is never shortened...
    r.persist(lost)  # ...and one without a TTL gets it back
    again = tasks.revoke_buckets(store, buckets, tenant_id="rb", select=select, mark="1|first")
    assert {b: sorted(v) for b, v in again.items()} == {b: sorted(v) for b, v in first.items()}
    assert _marked(r, store, "rb") == set(ids)
    assert r.hget(keys.family_revoked("rb", ids[5]), ids[5]) == b"1|first"
    assert r.ttl(longer) > full
    assert full - 60 < r.ttl(lost) <= full


def test_revoke_buckets_dry_run_writes_nothing(s: RevokerSettings, r: redis.Redis) -> None:
    """With mark=None the selection is returned and Redis is left exactly as it was."""
    store = get_sync_revocation_store(s)
    ids = seed_sessions(r, s, "dry", 50, users=5, client_ids=("web", "ios"))
    before = {key: r.hgetall(key) for key in r.scan_iter(match=f"{s.key_prefix}:*")}
    select = tasks.Selection(_record(tenant_id="dry", client_id="web"), now_us())
    buckets = list(range(BUCKETS))
    selected = tasks.revoke_buckets(store, buckets, tenant_id="dry", select=select, mark=None)
    assert sorted(fid for v in selected.values() for fid in v) == sorted(
        fid.encode() for i, fid in enumerate(ids) if i % 2 == 0
    )
    after = {key: r.hgetall(key) for key in r.scan_iter(match=f"{s.key_prefix}:*")}
    assert after == before


def test_revoke_buckets_user_selection_spares_other_users_in_the_bucket(
    s: RevokerSettings, r: redis.Redis
) -> None:
    """A user's revocation marks and deletes only that user's records of a shared bucket."""
    store = get_sync_revocation_store(s)
    neighbours = _sharing_a_bucket("alice", BUCKETS, 2)
    mine = [start_session_sync("alice", tenant_id="t", store=store).family_id for _ in range(3)]
    theirs = [start_session_sync(u, tenant_id="t", store=store).family_id for u in neighbours]
    bucket = bucket_of_user("alice", BUCKETS)
    select = tasks.Selection(_record(kind="user", user_id="alice"), now_us(), "alice")
    selected = tasks.revoke_buckets(store, [bucket], tenant_id="t", select=select, mark="1|u")
    assert sorted(selected[bucket]) == sorted(fid.encode() for fid in mine)
    tasks.delete_records(store, "t", selected)
    assert _marked(r, store, "t") == set(mine)
    assert _fields(r, store, "t") == set(theirs)


def test_delete_records_deletes_exactly_the_given_records(
    s: RevokerSettings, r: redis.Redis
) -> None:
    """Only the listed records go, in pages for a big bucket; an empty selection is a no-op."""
    store = get_sync_revocation_store(s)
    ids = seed_sessions(r, s, "del", 1_300, users=2)  # 650 per bucket: more than one HDEL each
    doomed = [fid for i, fid in enumerate(ids) if i % 13 != 0]
    by_bucket: dict[int, list[bytes]] = {}
    for fid in doomed:
        by_bucket.setdefault(family_bucket(fid) or 0, []).append(fid.encode())
    assert max(len(v) for v in by_bucket.values()) > tasks.SCAN_FIELDS
    tasks.delete_records(store, "del", {})
    assert _fields(r, store, "del") == set(ids)
    tasks.delete_records(store, "del", by_bucket)
    assert _fields(r, store, "del") == set(ids) - set(doomed)
    assert _marked(r, store, "del") == set()  # deleting a record is not revoking it


# --- whole jobs, run in this process -------------------------------------------------------------


def _check(store: SyncRedisTokenRevocationStore, access_token: str) -> bool:
    """Whether the per-request check refuses this access token."""
    return store.is_revoked(decode_token(access_token, "access", settings=store.settings)).revoked


def test_tenant_job_revokes_every_session_before_its_cutoff(
    s: RevokerSettings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every session created before the job is refused and deleted; a later one is untouched."""
    store = get_sync_revocation_store(s)
    seeded = seed_sessions(r, s, "acme", 600, users=40)
    live = [start_session_sync(f"u{i}", tenant_id="acme", store=store) for i in range(3)]
    other_tenant = start_session_sync("u1", tenant_id="globex", store=store)
    job_id = jobs.enqueue_tenant_revocation("acme", reason="breach", actor="ops")
    later = start_session_sync("u2", tenant_id="acme", store=store)  # after the cut-off
    record = run_job_inline(monkeypatch, job_id)
    assert record.status == "done", record.error
    assert record.families_revoked == record.families_matched == len(seeded) + 3
    assert record.chunks_done == record.chunks_total
    sizes = Counter(bucket_of_user(f"u{i % 40}", BUCKETS) for i in range(600))
    assert record.chunks_total >= 600 // (s.chunk_size + max(sizes.values()))
    assert all(_check(store, pair.access_token) for pair in live)
    assert _marked(r, store, "acme") == set()  # the tenant watermark refuses them
    assert _fields(r, store, "acme") == {later.family_id}
    assert not _check(store, later.access_token)
    assert store.get_session(later.family_id, tenant_id="acme") is not None
    assert not _check(store, other_tenant.access_token)
    assert _fields(r, store, "globex") == {other_tenant.family_id}


def test_user_job_revokes_only_that_user(
    s: RevokerSettings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user job revokes the user's sessions; its bucket neighbours and later sessions stay."""
    store = get_sync_revocation_store(s)
    (neighbour,) = _sharing_a_bucket("alice", BUCKETS, 1)
    mine = [start_session_sync("alice", tenant_id="acme", store=store) for _ in range(4)]
    theirs = start_session_sync(neighbour, tenant_id="acme", store=store)
    elsewhere = start_session_sync("alice", tenant_id="globex", store=store)
    job_id = jobs.enqueue_user_revocation("alice", tenant_id="acme", reason="r", actor="a")
    later = start_session_sync("alice", tenant_id="acme", store=store)
    record = run_job_inline(monkeypatch, job_id)
    assert (record.status, record.chunks_total, record.families_revoked) == ("done", 1, 4)
    assert all(_check(store, pair.access_token) for pair in mine)
    assert _marked(r, store, "acme") == set()  # the user watermark refuses them
    assert _fields(r, store, "acme") == {theirs.family_id, later.family_id}
    for pair in (theirs, later, elsewhere):
        assert not _check(store, pair.access_token)


def test_filtered_job_revokes_only_the_matching_client(
    s: RevokerSettings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client-filtered job has no watermark: the marks alone refuse the matching sessions."""
    store = get_sync_revocation_store(s)
    web = [start_session_sync(f"u{i}", tenant_id="acme", client_id="web", store=store)
           for i in range(5)]  # fmt: skip
    ios = [start_session_sync(f"u{i}", tenant_id="acme", client_id="ios", store=store)
           for i in range(5)]  # fmt: skip
    seeded = seed_sessions(r, s, "acme", 200, users=20, client_ids=("web", "ios", None))
    job_id = jobs.enqueue_tenant_revocation("acme", client_id="web", reason="r", actor="a")
    later = start_session_sync("u1", tenant_id="acme", client_id="web", store=store)
    record = run_job_inline(monkeypatch, job_id)
    seeded_web = {fid for i, fid in enumerate(seeded) if i % 3 == 0}
    assert record.status == "done", record.error
    assert record.families_revoked == len(web) + len(seeded_web)
    for pair in web:
        status = store.is_revoked(decode_token(pair.access_token, "access", settings=s))
        assert status.rule == "family"
    assert not any(_check(store, pair.access_token) for pair in [*ios, later])
    assert _marked(r, store, "acme") == {*seeded_web, *(pair.family_id for pair in web)}
    assert _fields(r, store, "acme") == (
        set(seeded) - seeded_web | {pair.family_id for pair in [*ios, later]}
    )


def test_dry_run_job_counts_and_changes_nothing(
    s: RevokerSettings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dry run reports how many sessions match and revokes or deletes none of them."""
    store = get_sync_revocation_store(s)
    pair = start_session_sync("u1", tenant_id="acme", store=store)
    seeded = seed_sessions(r, s, "acme", 300, users=30)
    job_id = jobs.enqueue_tenant_revocation("acme", dry_run=True, reason="r", actor="a")
    record = run_job_inline(monkeypatch, job_id)
    assert record.status == "done", record.error
    assert (record.families_matched, record.families_revoked) == (301, 0)
    assert _marked(r, store, "acme") == set()
    assert _fields(r, store, "acme") == {*seeded, pair.family_id}
    assert not _check(store, pair.access_token)


def test_a_stalled_job_is_published_again(
    s: RevokerSettings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running job whose chunk messages were lost is republished after a visibility timeout,
    not before, and never while it makes progress; it leaves the running list when done."""
    store = get_sync_revocation_store(s)
    keys = store.keys
    seed_sessions(r, s, "stall", 40, users=40)
    job_id = jobs.enqueue_tenant_revocation("stall", reason="r", actor="a")
    monkeypatch.setattr(app, "producer_or_acquire", lambda *a, **kw: contextlib.nullcontext(None))
    monkeypatch.setattr(tasks.revoke_chunk, "apply_async", lambda *a, **kw: None)  # lost
    tasks.revoke_job(job_id)
    assert jobs.get_job(job_id).status == "running"
    assert r.zscore(keys.jobs_running, job_id) is not None
    published: list[str] = []
    monkeypatch.setattr(
        outbox, "publish_job", lambda record, **kw: published.append(record.id) or True
    )
    now = time.time()
    late = now + s.visibility_timeout + 1

    assert tasks._republish_stalled(store, now) == 0  # first look: notes its progress
    assert tasks._republish_stalled(store, now + 1) == 0  # no progress, but not for long
    assert tasks._republish_stalled(store, late) == 1
    assert published == [job_id]
    assert tasks._republish_stalled(store, late + 1) == 0  # not again at once
    tasks.revoke_chunk(job_id, 0)  # progress
    assert tasks._republish_stalled(store, late + 2 * s.visibility_timeout) == 0
    assert published == [job_id]
    for n in range(1, jobs.get_job(job_id).chunks_total):
        tasks.revoke_chunk(job_id, n)
    assert jobs.get_job(job_id).status == "done"
    assert r.zscore(keys.jobs_running, job_id) is None
    assert tasks._republish_stalled(store, late + 10 * s.visibility_timeout) == 0
