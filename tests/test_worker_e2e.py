"""Bulk jobs end to end: a real ``celery -A revoker.worker worker`` on a throwaway Redis.

The Redis started for this module is broker, result backend and data store at once, as in a
small deployment. Every test uses tenants of its own, so the module shares one worker.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from typing import cast

import httpx
import pytest
import redis

from celery_helpers import WorkerProcess, celery_command, seed_sessions, start_worker, worker_env
from conftest import make_settings
from revoker import jobs
from revoker.exceptions import RefreshTokenReused
from revoker.keys import bucket_of_user, family_bucket
from revoker.localredis import LocalRedis, free_port
from revoker.refresh import rotate_refresh_token_sync
from revoker.sessions import start_session_sync
from revoker.settings import RevokerSettings, configure
from revoker.store import SyncRedisTokenRevocationStore
from revoker.tokens import decode_token

pytestmark = [pytest.mark.celery]

CHUNK = 100


@pytest.fixture(scope="module")
def server() -> Iterator[LocalRedis]:
    """A Redis of this module's own: broker, result backend and data."""
    with LocalRedis() as lr:
        yield lr


@pytest.fixture(scope="module")
def module_settings(server: LocalRedis) -> RevokerSettings:
    """The settings the worker and the tests share (small chunks, so jobs have several)."""
    return make_settings(redis_url=server.url, chunk_size=CHUNK, visibility_timeout=30)


@pytest.fixture(scope="module")
def worker(module_settings: RevokerSettings, server: LocalRedis) -> Iterator[WorkerProcess]:
    """One real worker for the module (two pool processes)."""
    w = start_worker(worker_env(module_settings, server.url), concurrency=2)
    yield w
    w.stop()


@pytest.fixture
def s(module_settings: RevokerSettings, worker: WorkerProcess) -> RevokerSettings:
    """The module settings made process-wide for this test, with the worker running."""
    return configure(module_settings)


@pytest.fixture
def r(server: LocalRedis) -> Iterator[redis.Redis]:
    """A client of the module's Redis."""
    client = redis.Redis.from_url(server.url)
    yield client
    client.close()


@pytest.fixture
def sstore(s: RevokerSettings) -> Iterator[SyncRedisTokenRevocationStore]:
    """The sync store on the module's Redis."""
    st = SyncRedisTokenRevocationStore(settings=s)
    yield st
    st.close()


def revoked_count(r: redis.Redis, store: SyncRedisTokenRevocationStore, tenant: str,
                  ids: list[str]) -> int:  # fmt: skip
    """How many of ``ids`` carry a revoked mark."""
    pipe = r.pipeline(transaction=False)
    for fid in ids:
        pipe.hexists(store.keys.family_revoked(tenant, fid), fid)
    return sum(pipe.execute())


def present(r: redis.Redis, store: SyncRedisTokenRevocationStore, tenant: str,
            ids: list[str]) -> list[bool]:  # fmt: skip
    """For each family id, whether its record is still a field of its session bucket."""
    pipe = r.pipeline(transaction=False)
    for fid in ids:
        bucket = family_bucket(fid)
        assert bucket is not None, fid
        pipe.hexists(store.keys.session_bucket(tenant, bucket), fid)
    return [bool(x) for x in pipe.execute()]


def bucket_keys(r: redis.Redis, store: SyncRedisTokenRevocationStore, tenant: str) -> list[bytes]:
    """Every session bucket key of the tenant that still exists."""
    return list(r.scan_iter(match=f"{store.keys.session_bucket_base(tenant)}*", count=1000))


def expected_chunks(ids: list[str], chunk: int) -> int:
    """The chunks a tenant job plans: non-empty buckets in order, a chunk closed at ``chunk``."""
    sizes = Counter(family_bucket(fid) for fid in ids)
    chunks = size = 0
    for bucket in sorted(b for b in sizes if b is not None):
        size += sizes[bucket]
        if size >= chunk:
            chunks, size = chunks + 1, 0
    return chunks + (1 if size else 0)


def audit_of(
    r: redis.Redis, store: SyncRedisTokenRevocationStore, kind: bytes
) -> list[dict[bytes, bytes]]:
    """The audit stream's entries of one kind (field -> value, as bytes)."""
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], r.xrange(store.keys.audit))
    return [e for _, e in entries if e[b"kind"] == kind]


def neighbour_of(user: str, buckets: int) -> str:
    """Another user id whose sessions share ``user``'s bucket."""
    target = bucket_of_user(user, buckets)
    return next(f"n{i}" for i in range(1_000_000) if bucket_of_user(f"n{i}", buckets) == target)


def test_tenant_revocation_end_to_end(
    s: RevokerSettings, r: redis.Redis, sstore: SyncRedisTokenRevocationStore
) -> None:
    """A tenant of 1,000 sessions: watermark at once, records deleted, no per-session marks."""
    ids = seed_sessions(r, s, "acme", 1000, users=20)
    other = seed_sessions(r, s, "bystander", 30, users=3)
    pair = start_session_sync("alice", tenant_id="acme", store=sstore)
    ids.append(pair.family_id)
    token = decode_token(pair.access_token, "access", settings=s)
    assert not sstore.is_revoked(token)

    job_id = jobs.enqueue_tenant_revocation("acme", reason="breach", actor="ops@example.com")
    # Enforcement does not wait for the worker: the watermark was written before enqueue returned.
    assert sstore.is_revoked(token).rule == "tenant"
    record = jobs.wait_for_job(job_id, timeout=60)

    assert record.status == "done", record.error
    assert record.chunks_total == expected_chunks(ids, CHUNK)
    assert record.chunks_total >= math.ceil(len(ids) / (2 * CHUNK))  # several chunks
    assert record.chunks_done == record.chunks_total
    assert record.families_revoked == record.families_matched == len(ids)
    assert record.watermark_at is not None
    # The watermark is the enforcement: no per-session marks (issue 15).
    assert revoked_count(r, sstore, "acme", ids) == 0
    assert sstore.is_revoked(token).rule == "tenant"
    # Every record was deleted from its bucket, so no bucket of the tenant is left.
    assert not any(present(r, sstore, "acme", ids))
    assert bucket_keys(r, sstore, "acme") == []
    assert sstore.get_session(pair.family_id, tenant_id="acme") is None
    # The bystander tenant is untouched.
    assert revoked_count(r, sstore, "bystander", other) == 0
    assert all(present(r, sstore, "bystander", other))
    # The audit names every session, one entry per chunk.
    entries = audit_of(r, sstore, b"job_chunk")
    named = {fid for e in entries if e[b"target"] == job_id.encode()
             for fid in e[b"families"].decode().split()}  # fmt: skip
    assert named == set(ids)
    # The idempotency key is released; the chunk lists expire with the job record.
    assert 0 < r.ttl(sstore.keys.job_chunk(job_id, 0)) <= s.job_retention
    assert not list(r.scan_iter(match=f"{s.key_prefix}:jobkey:*"))


def test_progress_reaches_the_result_backend(s: RevokerSettings, r: redis.Redis) -> None:
    """The job's Celery state (task id = job id) ends as SUCCESS with the final counts."""
    seed_sessions(r, s, "progress-co", 250)
    job_id = jobs.enqueue_tenant_revocation("progress-co", reason="r", actor="a")
    jobs.wait_for_job(job_id, timeout=60)
    deadline = time.monotonic() + 10
    meta: dict[str, object] = {}
    while time.monotonic() < deadline:
        raw = r.get(f"celery-task-meta-{job_id}")
        meta = json.loads(raw) if raw else {}
        if meta.get("status") == "SUCCESS":
            break
        time.sleep(0.05)
    assert meta.get("status") == "SUCCESS"
    assert meta["result"]["families_revoked"] == 250  # type: ignore[index]


def test_user_revocation(
    s: RevokerSettings, r: redis.Redis, sstore: SyncRedisTokenRevocationStore
) -> None:
    """All of one user's sessions are revoked; other users, even in the same bucket, keep theirs."""
    ids = seed_sessions(r, s, "userco", 300, users=3)
    mine = [fid for i, fid in enumerate(ids) if i % 3 == 1]
    theirs = [fid for i, fid in enumerate(ids) if i % 3 != 1]
    pair = start_session_sync("u1", tenant_id="userco", store=sstore)
    mine.append(pair.family_id)
    # A session of another user stored in u1's very bucket: the job must pick records, not buckets.
    neighbour = start_session_sync(
        neighbour_of("u1", s.session_buckets), tenant_id="userco", store=sstore
    )
    assert family_bucket(neighbour.family_id) == family_bucket(pair.family_id)
    theirs.append(neighbour.family_id)
    token = decode_token(pair.access_token, "access", settings=s)

    job_id = jobs.enqueue_user_revocation("u1", tenant_id="userco", reason="left", actor="hr")
    assert sstore.is_revoked(token).rule == "user"
    record = jobs.wait_for_job(job_id, timeout=60)

    assert record.status == "done", record.error
    assert record.chunks_total == 1  # a user job reads one bucket, its user's
    assert record.families_revoked == record.families_matched == len(mine)
    # The user watermark is the enforcement: no per-session marks (issue 15).
    assert revoked_count(r, sstore, "userco", [*mine, *theirs]) == 0
    assert sstore.is_revoked(token).rule == "user"
    assert not any(present(r, sstore, "userco", mine))
    assert all(present(r, sstore, "userco", theirs))
    assert r.get(sstore.keys.tenant_watermark("userco")) is None
    neighbour_token = decode_token(neighbour.access_token, "access", settings=s)
    assert not sstore.is_revoked(neighbour_token)


def test_selective_by_client(
    s: RevokerSettings, r: redis.Redis, sstore: SyncRedisTokenRevocationStore
) -> None:
    """Only the sessions of one client app are revoked, and no watermark is written."""
    ids = seed_sessions(r, s, "clientco", 400, users=7, client_ids=("web", "mobile", None))
    mobile = [fid for i, fid in enumerate(ids) if i % 3 == 1]
    rest = [fid for i, fid in enumerate(ids) if i % 3 != 1]
    web = start_session_sync("bob", tenant_id="clientco", client_id="web", store=sstore)

    job_id = jobs.enqueue_tenant_revocation(
        "clientco", client_id="mobile", reason="bad build", actor="ops"
    )
    record = jobs.wait_for_job(job_id, timeout=60)

    assert record.status == "done", record.error
    assert record.watermark_at is None
    assert r.get(sstore.keys.tenant_watermark("clientco")) is None
    assert record.families_revoked == len(mobile)
    assert revoked_count(r, sstore, "clientco", mobile) == len(mobile)
    assert revoked_count(r, sstore, "clientco", rest) == 0
    assert not sstore.is_revoked(decode_token(web.access_token, "access", settings=s))
    assert not any(present(r, sstore, "clientco", mobile))
    assert all(present(r, sstore, "clientco", [*rest, web.family_id]))


def test_selective_by_issue_window(
    s: RevokerSettings, r: redis.Redis, sstore: SyncRedisTokenRevocationStore
) -> None:
    """Only sessions created inside the window (inclusive) are revoked."""
    base = time.time() - 3600
    created = [base + i for i in range(300)]
    ids = seed_sessions(r, s, "windowco", 300, created=created)
    inside = ids[100:201]  # created base+100 .. base+200, both ends included
    outside = ids[:100] + ids[201:]

    job_id = jobs.enqueue_tenant_revocation(
        "windowco", issued_after=base + 100, issued_before=base + 200, reason="incident",
        actor="sec",
    )  # fmt: skip
    record = jobs.wait_for_job(job_id, timeout=60)

    assert record.status == "done", record.error
    assert record.families_revoked == len(inside)
    assert revoked_count(r, sstore, "windowco", inside) == len(inside)
    assert revoked_count(r, sstore, "windowco", outside) == 0
    assert not any(present(r, sstore, "windowco", inside))
    assert all(present(r, sstore, "windowco", outside))


def test_dry_run_changes_nothing(
    s: RevokerSettings, r: redis.Redis, sstore: SyncRedisTokenRevocationStore
) -> None:
    """A dry run counts the matching sessions and writes no mark or watermark, deletes nothing."""
    ids = seed_sessions(r, s, "dryco", 250, client_ids=("web", "cli"))
    pair = start_session_sync("carol", tenant_id="dryco", store=sstore)
    token = decode_token(pair.access_token, "access", settings=s)

    all_job = jobs.enqueue_tenant_revocation("dryco", dry_run=True, reason="r", actor="a")
    web_job = jobs.enqueue_tenant_revocation(
        "dryco", client_id="web", dry_run=True, reason="r", actor="a"
    )
    everything = jobs.wait_for_job(all_job, timeout=60)
    only_web = jobs.wait_for_job(web_job, timeout=60)

    assert everything.status == only_web.status == "done"
    assert everything.families_matched == len(ids) + 1
    assert only_web.families_matched == len(ids) // 2
    assert everything.families_revoked == only_web.families_revoked == 0
    assert revoked_count(r, sstore, "dryco", [*ids, pair.family_id]) == 0
    assert all(present(r, sstore, "dryco", [*ids, pair.family_id]))
    assert r.get(sstore.keys.tenant_watermark("dryco")) is None
    assert not sstore.is_revoked(token)


def test_family_reuse_follow_up(
    s: RevokerSettings, r: redis.Redis, sstore: SyncRedisTokenRevocationStore
) -> None:
    """A reused refresh token: family marked at once, the task audits it and deletes its record."""
    pair = start_session_sync("dave", tenant_id="reuseco", store=sstore)
    keep = start_session_sync("dave", tenant_id="reuseco", store=sstore)
    rotate_refresh_token_sync(pair.refresh_token, store=sstore)
    with pytest.raises(RefreshTokenReused):
        rotate_refresh_token_sync(pair.refresh_token, store=sstore)  # the superseded one again
    # The rotation wrote the mark itself; the follow-up job only cleans up and audits.
    assert r.hexists(sstore.keys.family_revoked("reuseco", pair.family_id), pair.family_id)
    (job,) = [j for j in jobs.list_jobs() if j.family_id == pair.family_id]
    record = jobs.wait_for_job(job.id, timeout=30)

    assert record.status == "done", record.error
    assert record.kind == "family_reuse"
    assert r.hexists(sstore.keys.family_revoked("reuseco", pair.family_id), pair.family_id)
    assert not r.hexists(sstore.keys.family_revoked("reuseco", keep.family_id), keep.family_id)
    assert present(r, sstore, "reuseco", [pair.family_id, keep.family_id]) == [False, True]
    assert sstore.get_session(pair.family_id, tenant_id="reuseco") is None
    audit = audit_of(r, sstore, b"family_reuse")
    assert [(e[b"target"], e[b"actor"], e[b"reason"]) for e in audit] == [
        (pair.family_id.encode(), b"system", b"refresh token reuse")
    ]


def test_flower_shows_the_job_tasks_with_progress(
    s: RevokerSettings, r: redis.Redis, server: LocalRedis
) -> None:
    """Flower, fed only by task events, lists the job's tasks by name with their progress."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVOKER_")}
    env.update(worker_env(s, server.url), FLOWER_UNAUTHENTICATED_API="true")
    flower = subprocess.Popen(
        [*celery_command(), "-A", "revoker.worker", "flower", f"--port={port}",
         "--address=127.0.0.1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthcheck", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        # Flower answers before its event receiver listens: wait for a worker heartbeat event,
        # or the job task's events (sent at once on enqueue) can be missed.
        while time.monotonic() < deadline:
            if httpx.get(f"{base}/workers?json=1", timeout=2).json()["data"]:
                break
            time.sleep(0.2)
        seeded = seed_sessions(r, s, "flowerco", 3 * CHUNK)
        assert expected_chunks(seeded, CHUNK) == 3
        job_id = jobs.enqueue_tenant_revocation("flowerco", reason="r", actor="a")
        jobs.wait_for_job(job_id, timeout=60)
        chunks: list[dict[str, object]] = []
        names: set[object] = set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            tasks = httpx.get(f"{base}/api/tasks", timeout=5).json()
            mine = [t for t in tasks.values() if job_id in str(t.get("args"))]
            names = {t["name"] for t in mine}
            chunks = [t for t in mine if t["name"] == "revoker.revoke_chunk"]
            # Events arrive in any order: the job task's may come after its chunks finished.
            done = len(chunks) == 3 and all(t["state"] == "SUCCESS" for t in chunks)
            if done and "revoker.revoke_job" in names:
                break
            time.sleep(0.2)
        assert names == {"revoker.revoke_job", "revoker.revoke_chunk"}
        assert len(chunks) == 3
        assert all(t["state"] == "SUCCESS" for t in chunks)
        assert any("'chunks_done': 3" in str(t["result"]) for t in chunks)
    finally:
        os.killpg(flower.pid, signal.SIGTERM)
        flower.wait(10)
