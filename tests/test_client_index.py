"""The client index (issue 15): a client-filtered tenant job walks only its client's sessions.

A session with a client is indexed beside its record (``keys``, "The client index"); a job
filtered by client walks the client's index buckets (``scripts/chunk_index.lua``) once the
tenant's index is known complete (its marker), and every record otherwise. The index is kept by
every path that creates, rotates or removes sessions. Jobs run in this process, on the real
Redis under the test's own prefix, as in ``tests/test_fanout_work.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from celery_helpers import run_job_inline
from conftest import private_settings
from revoker import jobs, tasks
from revoker.keys import bucket_of_user, family_id_prefix, read_time
from revoker.localredis import free_port
from revoker.refresh import rotate_refresh_token_sync
from revoker.sessions import start_session_sync
from revoker.settings import RevokerSettings, configure
from revoker.store import SyncRedisTokenRevocationStore, get_sync_revocation_store
from revoker.tasks import buckets
from revoker.tokens import decode_token, generate_jti

pytestmark = [pytest.mark.redis]

BUCKETS = 64


@pytest.fixture
def s() -> Iterator[RevokerSettings]:
    """Settings with a closed broker port (jobs run inline), 64 buckets and small chunks."""
    with private_settings(
        broker_url=f"redis://127.0.0.1:{free_port()}/0",
        session_buckets=BUCKETS,
        chunk_size=100,
        max_redeliveries=3,
    ) as settings:
        yield configure(settings)


def _record(
    r: redis.Redis,
    store: SyncRedisTokenRevocationStore,
    tenant: str,
    count: int,
    *,
    users: int = 20,
    clients: tuple[str, ...] = ("web", "ios"),
    created: float | None = None,
) -> list[str]:
    """``count`` sessions written with start_session's own commands (plan_record_session), fast:
    session ``i`` of user ``u<i % users>`` and client ``clients[i % len(clients)]``."""
    now = time.time() if created is None else created
    ids: list[str] = []
    pipe = r.pipeline(transaction=False)
    for i in range(count):
        user = f"u{i % users}"
        fid = family_id_prefix(bucket_of_user(user, BUCKETS)) + generate_jti()
        plan = store.core.plan_record_session(
            fid, user_id=user, tenant_id=tenant, client_id=clients[i % len(clients)],
            scopes=(), current_jti=generate_jti(), created=now, expires=int(now) + 3600,
        )  # fmt: skip
        for command in plan.commands:
            pipe.execute_command(*command)
        ids.append(fid)
    pipe.execute()
    return ids


def _complete(r: redis.Redis, store: SyncRedisTokenRevocationStore, tenant: str) -> None:
    """Declare the tenant's index complete (a fresh deployment: every session is indexed)."""
    r.set(store.keys.client_index_marker(tenant), "0")


def _fields(r: redis.Redis, store: SyncRedisTokenRevocationStore, tenant: str) -> set[str]:
    pipe = r.pipeline(transaction=False)
    for b in range(BUCKETS):
        pipe.hkeys(store.keys.session_bucket(tenant, b))
    return {fid.decode() for ids in pipe.execute() for fid in ids}


def _indexed(
    r: redis.Redis, store: SyncRedisTokenRevocationStore, tenant: str, client: str
) -> set[str]:
    pipe = r.pipeline(transaction=False)
    for key in store.keys.client_index_buckets(tenant, client, range(BUCKETS)):
        pipe.hkeys(key)
    return {fid.decode() for ids in pipe.execute() for fid in ids}


def _sources(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The sources of the chunk scripts the jobs call from now on."""
    real = buckets.bulk_script
    seen: list[str] = []

    def spied(client: Any, exchange: Any, source: str) -> Any:
        seen.append(source)
        return real(client, exchange, source)

    monkeypatch.setattr(buckets, "bulk_script", spied)
    return seen


def test_a_session_is_indexed_by_its_client_with_its_creation_time(
    s: RevokerSettings, r: redis.Redis
) -> None:
    """start_session writes the client-index entry (its creation time, read by the time rule)
    with the bucket's TTL, and the tenant's marker; a session without a client has no entry."""
    store = get_sync_revocation_store(s)
    before_us = int(time.time() * 1e6)
    pair = start_session_sync("alice", tenant_id="ix", client_id="web", store=store)
    start_session_sync("bob", tenant_id="ix", store=store)
    key = store.keys.client_index("ix", "web", bucket_of_user("alice", BUCKETS))
    raw = r.hget(key, pair.family_id)
    assert raw is not None
    created = read_time(raw)
    assert created is not None
    assert before_us - 1 <= created <= time.time() * 1e6
    assert 0 < r.ttl(key) <= s.refresh_token_ttl + s.leeway
    assert _indexed(r, store, "ix", "web") == {pair.family_id}
    since = r.get(store.keys.client_index_marker("ix"))
    assert since is not None
    assert read_time(since) is not None
    assert not list(r.scan_iter(match=f"{s.key_prefix}:*:ci:*bob*"))


def test_a_filtered_job_walks_only_its_clients_index(
    s: RevokerSettings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the index complete, a client-filtered job plans chunks of the client's sessions only
    and revokes through chunk_index.lua: exact counts, marks, the other client's sessions and
    entries kept, the revoked sessions' entries gone, tokens refused."""
    store = get_sync_revocation_store(s)
    ids = _record(r, store, "walk", 400)
    web = {fid for i, fid in enumerate(ids) if i % 2 == 0}
    ios = set(ids) - web
    _complete(r, store, "walk")
    pair = start_session_sync("u3", tenant_id="walk", client_id="web", store=store)
    job_id = jobs.enqueue_tenant_revocation("walk", client_id="web", reason="r", actor="a")
    sources = _sources(monkeypatch)
    record = run_job_inline(monkeypatch, job_id)
    assert record.status == "done", record.error
    assert record.families_revoked == record.families_matched == len(web) + 1
    # 201 of the client's sessions in chunks of at least 100: 2, not the 4 of all 401 records.
    assert record.chunks_total == 2
    assert sources
    assert set(sources) == {buckets.INDEX_SCRIPT}
    assert _fields(r, store, "walk") == ios
    assert _indexed(r, store, "walk", "web") == set()
    assert _indexed(r, store, "walk", "ios") == ios
    status = store.is_revoked(decode_token(pair.access_token, "access", settings=s))
    assert status.revoked
    assert status.rule == "family"


def test_a_tenant_whose_index_is_not_known_complete_walks_every_record(
    s: RevokerSettings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records written before the index existed (no entry, no marker), then indexed ones (the
    marker says since now): the job walks every record and revokes both, exactly."""
    store = get_sync_revocation_store(s)
    legacy = _record(r, store, "old", 100)
    for key in r.scan_iter(match=f"{s.key_prefix}:*:ci:*"):
        r.delete(key)
    r.delete(store.keys.client_index_marker("old"))
    indexed = _record(r, store, "old", 100)
    web = {fid for i, fid in enumerate(legacy) if i % 2 == 0}
    web |= {fid for i, fid in enumerate(indexed) if i % 2 == 0}
    job_id = jobs.enqueue_tenant_revocation("old", client_id="web", reason="r", actor="a")
    sources = _sources(monkeypatch)
    record = run_job_inline(monkeypatch, job_id)
    assert record.status == "done", record.error
    assert record.families_revoked == len(web)
    assert set(sources) == {buckets.CHUNK_SCRIPT}
    assert _fields(r, store, "old") == set(legacy + indexed) - web


def test_the_index_is_complete_once_no_older_session_can_verify(s: RevokerSettings) -> None:
    """Lifetimes.index_complete: a marker of 0 is complete, one younger than the records'
    lifetime is not, an older one is, no marker never is."""
    lifetimes = get_sync_revocation_store(s).core.lifetimes
    now = time.time()
    ttl = lifetimes.family_ttl
    assert lifetimes.index_complete(0, now)
    assert not lifetimes.index_complete(None, now)
    assert not lifetimes.index_complete(int((now - ttl + 5) * 1e6), now)
    assert lifetimes.index_complete(int((now - ttl - 5) * 1e6), now)


def test_an_entry_whose_record_is_gone_revokes_nothing_and_is_dropped(
    s: RevokerSettings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An orphan entry (its record deleted by a path that did not know its client) is neither
    marked nor counted, and the index walk drops it."""
    store = get_sync_revocation_store(s)
    ids = _record(r, store, "orph", 40, clients=("web",))
    _complete(r, store, "orph")
    gone = ids[0]
    r.hdel(store.keys.session_bucket("orph", bucket_of_user("u0", BUCKETS)), gone)
    job_id = jobs.enqueue_tenant_revocation("orph", client_id="web", reason="r", actor="a")
    record = run_job_inline(monkeypatch, job_id)
    assert record.status == "done", record.error
    assert record.families_revoked == len(ids) - 1
    assert r.hget(store.keys.family_revoked("orph", gone), gone) is None
    assert _indexed(r, store, "orph", "web") == set()


def test_an_unfiltered_job_removes_the_index_with_the_records(
    s: RevokerSettings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tenant job clears its records and their entries (whole buckets with their clients'
    index buckets, others entry by entry); a later session keeps its entry."""
    store = get_sync_revocation_store(s)
    ids = _record(r, store, "all", 300, users=30)
    job_id = jobs.enqueue_tenant_revocation("all", reason="r", actor="a")
    later = start_session_sync("u1", tenant_id="all", client_id="web", store=store)
    record = run_job_inline(monkeypatch, job_id)
    assert record.status == "done", record.error
    assert record.families_revoked == len(ids)
    assert _fields(r, store, "all") == {later.family_id}
    assert _indexed(r, store, "all", "web") == {later.family_id}
    assert _indexed(r, store, "all", "ios") == set()


def test_the_expiry_removes_expired_sessions_entries_and_orphans(
    s: RevokerSettings, r: redis.Redis
) -> None:
    """expire_entries deletes the entries of the records it expires, and entries whose record
    is gone; live sessions keep theirs."""
    store = get_sync_revocation_store(s)
    live = _record(r, store, "exp", 20, clients=("web",))
    dead = _record(r, store, "exp", 20, clients=("web",), created=time.time() - 7200)
    orphan = live[0]
    r.hdel(store.keys.session_bucket("exp", bucket_of_user("u0", BUCKETS)), orphan)
    result = tasks.expire_entries()
    assert result["sessions"] == len(dead)
    assert result["index_entries"] == 1
    assert _indexed(r, store, "exp", "web") == set(live[1:])


def test_a_rotation_indexes_its_session_and_renews_the_index_ttl(
    s: RevokerSettings, r: redis.Redis
) -> None:
    """A rotation writes the family's entry (its creation time, as the record holds it) and the
    bucket's TTL: a session recorded before the index existed is indexed by its next rotation."""
    store = get_sync_revocation_store(s)
    pair = start_session_sync("carol", tenant_id="rot", client_id="web", store=store)
    key = store.keys.client_index("rot", "web", bucket_of_user("carol", BUCKETS))
    created = r.hget(key, pair.family_id)
    r.delete(key)  # as before the index existed
    rotate_refresh_token_sync(pair.refresh_token, store=store)
    assert r.hget(key, pair.family_id) == created
    assert 0 < r.ttl(key) <= s.refresh_token_ttl + s.leeway
