"""``expire_entries`` and the outbox sweep, run in-process against the real Redis (own prefix)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis

from conftest import private_settings
from revoker import jobs, tasks
from revoker.exceptions import JobNotFound
from revoker.keys import (
    KeyLayout,
    bucket_of_user,
    decode_record,
    encode_record,
    family_id_prefix,
    family_ttl,
)
from revoker.localredis import free_port
from revoker.rules import encode_mark, to_us
from revoker.settings import RevokerSettings, configure
from revoker.store import get_sync_revocation_store
from revoker.tasks import expiry
from revoker.worker import BEAT_EXPIRE_SECONDS, EXPIRY_SLICES, celery_config

#: (bucket key, family id) -> the raw record written there.
Written = dict[tuple[str, str], str]

# A module, not its task objects: pytest would evaluate Celery's task proxies at collection.

pytestmark = [pytest.mark.redis]


@pytest.fixture
def s() -> Iterator[RevokerSettings]:
    """Private prefix, 8 session buckets, a broker that is down; keys deleted afterwards."""
    with private_settings(
        broker_url=f"redis://127.0.0.1:{free_port()}/0", session_buckets=8
    ) as settings:
        yield configure(settings)


def write_records(
    r: redis.Redis, s: RevokerSettings, tenant: str | None, users: dict[str, list[int]]
) -> Written:
    """One session record per (user, expires) given, as record_session writes it."""
    keys = KeyLayout(s.key_prefix)
    written: Written = {}
    pipe = r.pipeline(transaction=False)
    for user, expiries in users.items():
        bucket = bucket_of_user(user, s.session_buckets)
        key = keys.session_bucket(tenant, bucket)
        for i, expires in enumerate(expiries):
            fid = f"{family_id_prefix(bucket)}{user}-{i}"
            record = encode_record(
                user_id=user,
                client_id="web",
                created_us=to_us(time.time() - 60),
                expires=expires,
                current_jti=f"rt-{fid}",
                scopes=("read",),
            )
            pipe.hset(key, fid, record)
            written[key, fid] = record
        pipe.expire(key, 3600)
    pipe.execute()
    return written


def stored(r: redis.Redis, written: Written) -> set[tuple[str, str]]:
    """The (bucket, family id) of ``written`` whose record is still in its bucket, unchanged."""
    return {
        (key, fid) for (key, fid), record in written.items() if r.hget(key, fid) == record.encode()
    }


def test_expired_records_are_deleted_and_live_ones_kept(s: RevokerSettings, r: redis.Redis) -> None:
    """Records past expires + leeway leave their buckets, in every tenant; the others stay."""
    now = int(time.time())
    dead = now - s.leeway - 5  # its refresh token cannot verify any more
    grace = now - s.leeway + 5  # expired, but still inside the verification leeway
    live = now + 3600
    keys = KeyLayout(s.key_prefix)
    expired: Written = {}
    kept: Written = {}
    for tenant in ("a", "b:{weird}", None):
        for (key, fid), record in write_records(
            r, s, tenant, {"alice": [dead, live, grace]}
        ).items():
            (expired if fid.endswith("-0") else kept)[key, fid] = record
        # A bucket whose every record is dead.
        expired |= write_records(r, s, tenant, {"bob": [dead, dead - 1000]})
    # Keys that are not session buckets, under the same tenant tags: left alone (no WRONGTYPE).
    others = [keys.user_watermark("a", "alice"), keys.jti("j")]
    for key in others:
        r.set(key, "1", ex=3600)
    marks = keys.family_revoked("a", "x")
    r.hset(marks, "x", encode_mark(to_us(time.time())))
    others.append(marks)

    result = tasks.expire_entries()

    assert result["sessions"] == len(expired)
    assert stored(r, expired) == set()
    assert stored(r, kept) == set(kept)
    assert bucket_of_user("bob", s.session_buckets) != bucket_of_user("alice", s.session_buckets)
    for tenant in ("a", "b:{weird}", None):
        bob = keys.session_bucket(tenant, bucket_of_user("bob", s.session_buckets))
        assert not r.exists(bob)  # emptied: Redis drops the hash
    assert all(r.ttl(key) > 0 for key, _ in kept)  # a live bucket keeps its TTL
    assert r.exists(*others) == len(others)
    assert result["revoked_marks"] == 0  # the fresh mark stays
    assert tasks.expire_entries()["sessions"] == 0


def test_a_sliced_run_prunes_only_its_slice_of_buckets(
    s: RevokerSettings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """expire_entries(slices) reads the buckets of the clock's slice only; the others wait."""
    keys = KeyLayout(s.key_prefix)
    dead = int(time.time()) - s.leeway - 3600
    users = [f"user{i}" for i in range(40)]
    written = write_records(r, s, "sliced", {user: [dead] for user in users})
    old_mark = encode_mark(to_us(time.time() - s.refresh_token_ttl - s.leeway - 3600))
    for bucket in range(s.session_buckets):
        r.hset(keys.revoked_bucket("sliced", bucket), f"{family_id_prefix(bucket)}f", old_mark)
    real = time.time()
    minute = int(real // 60)
    slot = 3
    # A clock within ten minutes of now whose run is slice 3 of 4.
    monkeypatch.setattr(expiry.time, "time", lambda: (minute - minute % 4 + slot) * 60 + 1.0)

    result = tasks.expire_entries(4)

    in_slot = {b for b in range(s.session_buckets) if b % 4 == slot}
    gone = {(key, fid) for key, fid in written if int(key.rpartition(":")[2]) in in_slot}
    assert gone  # the test means something: some users fall in the slice
    assert stored(r, written) == set(written) - gone
    assert result["sessions"] == len(gone)
    assert result["revoked_marks"] == len(in_slot)
    for bucket in range(s.session_buckets):
        marks = keys.revoked_bucket("sliced", bucket)
        assert r.exists(marks) == (bucket not in in_slot)


def test_old_revoked_marks_are_deleted_and_newer_ones_kept(
    s: RevokerSettings, r: redis.Redis
) -> None:
    """Marks older than refresh TTL + leeway leave their bucket, in every tenant; newer marks,
    fields that are not marks and the bucket's TTL stay; a bucket left empty is gone."""
    now = time.time()
    lifetime = family_ttl(s.refresh_token_ttl, s.leeway)
    old = to_us(now - lifetime - 5)  # no token of the family can verify any more
    # Older than the refresh lifetime, not than lifetime + leeway: a token may still verify.
    young = to_us(now - lifetime + 5)
    assert s.leeway > 5
    fresh = to_us(now - 1)
    keys = KeyLayout(s.key_prefix)
    minted = family_id_prefix(3)
    gone: set[tuple[str, str]] = set()
    kept: dict[tuple[str, str], str] = {}
    for tenant in ("a", "b:{weird}", None):
        bucket = keys.revoked_bucket(tenant, 3)
        values = {
            f"{minted}old-1": encode_mark(old, "stolen"),
            f"{minted}old-2": encode_mark(old - 1_000_000, None),
            f"{minted}young": encode_mark(young, "logout"),
            f"{minted}fresh": encode_mark(fresh, "reuse"),
            "not-a-mark": "hello|world",  # not this version's: left alone
        }
        for fid, value in values.items():
            r.hset(bucket, fid, value)
            if "old" in fid:
                gone.add((bucket, fid))
            else:
                kept[bucket, fid] = value
        r.expire(bucket, lifetime)
        # A foreign id's bucket holding one old mark only: emptied, so dropped.
        lone = keys.family_revoked(tenant, "foreign-family")
        r.hset(lone, "foreign-family", encode_mark(old, "x"))
        r.expire(lone, lifetime)
        gone.add((lone, "foreign-family"))
    # A session record whose user id looks like a mark's time: marks pruning never reads it.
    session = keys.session_bucket("a", 3)
    record = encode_record(
        user_id="1", client_id=None, created_us=old, expires=int(now) + 3600, current_jti="rt"
    )
    r.hset(session, f"{minted}s", record)

    result = tasks.expire_entries()

    assert result["revoked_marks"] == len(gone)
    assert result["sessions"] == 0
    assert not any(r.hexists(key, fid) for key, fid in gone)
    assert {entry: r.hget(*entry) for entry in kept} == {e: v.encode() for e, v in kept.items()}
    for key in {key for key, _ in kept}:
        assert lifetime - 5 <= r.ttl(key) <= lifetime  # the pruning leaves the TTL as it was
    for tenant in ("a", "b:{weird}", None):
        assert not r.exists(keys.family_revoked(tenant, "foreign-family"))
    assert r.hget(session, f"{minted}s") == record.encode()
    assert tasks.expire_entries()["revoked_marks"] == 0


def test_big_bucket_is_pruned_across_hscan_pages(
    s: RevokerSettings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bucket grown past one HSCAN page (more than 500 records) is pruned whole, page by page."""
    now = int(time.time())
    dead, live = now - s.leeway - 10, now + 3600
    total = tasks.SCAN_FIELDS * 2 + 150
    expiries = [dead if i % 5 else live for i in range(total)]
    written = write_records(r, s, "acme", {"heavy": expiries})
    (key,) = {key for key, _ in written}
    assert r.hlen(key) == total > 500
    kept = {
        entry for entry, record in written.items() if decode_record(record)["expires"] == str(live)
    }
    pages: list[int] = []
    hscan = redis.Redis.hscan

    def counted(self: redis.Redis, name: str, *args: Any, **kwargs: Any) -> Any:
        reply = hscan(self, name, *args, **kwargs)
        if _text(name) == key:
            pages.append(len(reply[1]))
        return reply

    monkeypatch.setattr(redis.Redis, "hscan", counted)

    result = tasks.expire_entries()

    assert len(pages) >= 2  # really paged: one HSCAN could not have returned it all
    assert result["sessions"] == total - len(kept)
    assert {(key, _text(f)) for f in r.hkeys(key)} == kept
    assert stored(r, written) == kept
    assert tasks.expire_entries()["sessions"] == 0


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def test_expiry_touches_only_its_own_prefix(s: RevokerSettings, r: redis.Redis) -> None:
    """Expired records under another key prefix (another deployment) are not touched."""
    dead = int(time.time()) - s.leeway - 10
    with private_settings(session_buckets=s.session_buckets) as other:
        theirs = write_records(r, other, "acme", {"alice": [dead]})
        ours = write_records(r, s, "acme", {"alice": [dead]})
        assert tasks.expire_entries()["sessions"] == 1
        assert stored(r, ours) == set()
        assert stored(r, theirs) == set(theirs)


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
    with pytest.raises(JobNotFound):
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

    entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", r.xrange(keys.audit))
    kinds = [e[b"kind"] for _, e in entries]
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


def test_beat_runs_the_expiry_in_slices(s: RevokerSettings) -> None:
    """The beat schedule runs expire_entries every minute on one of EXPIRY_SLICES slices."""
    # Configured settings: naming a task finalizes the Celery app, which reads them.
    schedule = celery_config(s)["beat_schedule"]["revoker-expire-entries"]
    assert schedule["task"] == tasks.expire_entries.name
    assert (schedule["schedule"], schedule["args"]) == (BEAT_EXPIRE_SECONDS, (EXPIRY_SLICES,))
    assert EXPIRY_SLICES * BEAT_EXPIRE_SECONDS <= 15 * 60  # an expired entry waits minutes
