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
from collections.abc import Iterator

import httpx
import pytest
import redis

from celery_helpers import WorkerProcess, celery_command, seed_sessions, start_worker, worker_env
from conftest import make_settings
from revoker import jobs
from revoker.localredis import LocalRedis, free_port
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
    """How many of ``ids`` carry a revoked marker."""
    pipe = r.pipeline(transaction=False)
    for fid in ids:
        pipe.exists(store.keys.family_revoked(tenant, fid))
    return sum(pipe.execute())


def test_tenant_revocation_end_to_end(
    s: RevokerSettings, r: redis.Redis, sstore: SyncRedisTokenRevocationStore
) -> None:
    """A tenant of 1,000 sessions: watermark at once, every family marked, indexes emptied."""
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
    assert record.chunks_total == math.ceil(len(ids) / CHUNK)
    assert record.chunks_done == record.chunks_total
    assert record.families_revoked == record.families_matched == len(ids)
    assert record.watermark_at is not None
    assert revoked_count(r, sstore, "acme", ids) == len(ids)
    assert r.zcard(sstore.keys.tenant_index("acme")) == 0
    assert all(r.zcard(sstore.keys.user_index("acme", f"u{i}")) == 0 for i in range(20))
    assert r.zcard(sstore.keys.user_index("acme", "alice")) == 0
    # The bystander tenant is untouched.
    assert revoked_count(r, sstore, "bystander", other) == 0
    assert r.zcard(sstore.keys.tenant_index("bystander")) == len(other)
    # The audit names every session, one entry per chunk.
    entries = [e for _, e in r.xrange(sstore.keys.audit) if e[b"kind"] == b"job_chunk"]
    named = {fid for e in entries if e[b"target"] == job_id.encode()
             for fid in e[b"families"].decode().split()}  # fmt: skip
    assert named == set(ids)
    # The idempotency key is released and the snapshot's chunk lists are gone.
    assert r.get(sstore.keys.job_chunk(job_id, 0)) is None
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
    """All of one user's sessions are revoked; the other users of the tenant keep theirs."""
    ids = seed_sessions(r, s, "userco", 300, users=3)
    mine = [fid for i, fid in enumerate(ids) if i % 3 == 1]
    theirs = [fid for i, fid in enumerate(ids) if i % 3 != 1]
    pair = start_session_sync("u1", tenant_id="userco", store=sstore)
    mine.append(pair.family_id)
    token = decode_token(pair.access_token, "access", settings=s)

    job_id = jobs.enqueue_user_revocation("u1", tenant_id="userco", reason="left", actor="hr")
    assert sstore.is_revoked(token).rule == "user"
    record = jobs.wait_for_job(job_id, timeout=60)

    assert record.status == "done", record.error
    assert record.families_revoked == len(mine)
    assert revoked_count(r, sstore, "userco", mine) == len(mine)
    assert revoked_count(r, sstore, "userco", theirs) == 0
    assert r.zcard(sstore.keys.user_index("userco", "u1")) == 0
    remaining = {m.decode() for m in r.zrange(sstore.keys.tenant_index("userco"), 0, -1)}
    assert remaining == set(theirs)
    assert r.get(sstore.keys.tenant_watermark("userco")) is None


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
    remaining = {m.decode() for m in r.zrange(sstore.keys.tenant_index("clientco"), 0, -1)}
    assert remaining == {*rest, web.family_id}


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
    assert r.zcard(sstore.keys.tenant_index("windowco")) == len(outside)


def test_dry_run_changes_nothing(
    s: RevokerSettings, r: redis.Redis, sstore: SyncRedisTokenRevocationStore
) -> None:
    """A dry run counts the matching sessions and writes no marker, watermark or index change."""
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
    assert r.zcard(sstore.keys.tenant_index("dryco")) == len(ids) + 1
    assert r.get(sstore.keys.tenant_watermark("dryco")) is None
    assert not sstore.is_revoked(token)


def test_family_reuse_follow_up(
    s: RevokerSettings, r: redis.Redis, sstore: SyncRedisTokenRevocationStore
) -> None:
    """The reuse task audits the family, marks it and removes it from both indexes."""
    pair = start_session_sync("dave", tenant_id="reuseco", store=sstore)
    keep = start_session_sync("dave", tenant_id="reuseco", store=sstore)

    job_id = jobs.enqueue_family_reuse(pair.family_id, tenant_id="reuseco", user_id="dave")
    record = jobs.wait_for_job(job_id, timeout=30)

    assert record.status == "done", record.error
    assert record.kind == "family_reuse"
    assert r.exists(sstore.keys.family_revoked("reuseco", pair.family_id))
    assert not r.exists(sstore.keys.family_revoked("reuseco", keep.family_id))
    members = {m.decode() for m in r.zrange(sstore.keys.user_index("reuseco", "dave"), 0, -1)}
    assert members == {keep.family_id}
    audit = [e for _, e in r.xrange(sstore.keys.audit) if e[b"kind"] == b"family_reuse"]
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
        seed_sessions(r, s, "flowerco", 3 * CHUNK)
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
