"""Bulk jobs on a real 3-node Redis Cluster, run by a real ``celery -A revoker.worker worker``.

The data lives on the cluster (``redis_cluster=True``); the Celery broker and result backend are a
separate plain Redis, since Celery cannot use a cluster as its broker. Tenants are chosen so their
keys live on different nodes: a job whose commands span slots would fail with CROSSSLOT (or MOVED
inside a script), and a SCAN that visits one node only would leave the other nodes' keys behind.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, cast

import pytest
import redis
import redis.cluster
from celery import Celery
from redis.crc import key_slot

from celery_helpers import WorkerProcess, seed_sessions, start_worker, worker_env
from conftest import make_settings
from revoker import jobs
from revoker.exceptions import DuplicateJob, RefreshTokenReused
from revoker.keys import (
    KeyLayout,
    bucket_of_user,
    encode_record,
    family_bucket,
    family_id_prefix,
    family_ttl,
)
from revoker.localredis import LocalRedis, RedisCluster3, free_port, start_cluster
from revoker.refresh import rotate_refresh_token_sync
from revoker.rules import encode_mark, to_us
from revoker.sessions import start_session_sync
from revoker.settings import RevokerSettings, configure
from revoker.store import SyncRedisTokenRevocationStore
from revoker.tokens import decode_token
from revoker.worker import celery_config

pytestmark = [pytest.mark.cluster, pytest.mark.celery]

CHUNK = 250

JOB_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster3]:
    """Three redis-server nodes in cluster mode: the data store."""
    nodes = start_cluster()
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalRedis]:
    """A plain Redis of this module's own: Celery broker and result backend."""
    with LocalRedis() as lr:
        yield lr


@pytest.fixture(scope="module")
def module_settings(cluster: RedisCluster3, broker: LocalRedis) -> RevokerSettings:
    """Data on the cluster, Celery on the plain Redis; small chunks so jobs have several."""
    return make_settings(
        redis_url=cluster.url,
        redis_cluster=True,
        redis_timeout=5.0,
        broker_url=broker.url,
        result_backend=broker.url,
        chunk_size=CHUNK,
        visibility_timeout=30,
    )


@pytest.fixture(scope="module")
def worker(module_settings: RevokerSettings, broker: LocalRedis) -> Iterator[WorkerProcess]:
    """One real worker for the module (two pool processes), configured only by REVOKER_* vars."""
    w = start_worker(worker_env(module_settings, broker.url), concurrency=2)
    yield w
    w.stop()


@pytest.fixture
def s(module_settings: RevokerSettings, worker: WorkerProcess) -> RevokerSettings:
    """The module settings made process-wide for this test, with the worker running."""
    return configure(module_settings)


@pytest.fixture
def rc(cluster: RedisCluster3) -> Iterator[redis.cluster.RedisCluster]:
    """A cluster client for seeding and for reading what the jobs did."""
    client = redis.cluster.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    yield client
    client.close()


@pytest.fixture
def sstore(s: RevokerSettings) -> Iterator[SyncRedisTokenRevocationStore]:
    """The sync store on the cluster."""
    st = SyncRedisTokenRevocationStore(settings=s)
    assert st.is_cluster
    yield st
    st.close()


def seed(
    rc: redis.cluster.RedisCluster, s: RevokerSettings, tenant: str, count: int, **kwargs: Any
) -> list[str]:
    """``seed_sessions`` on the cluster (a cluster pipeline routes each bucket to its node)."""
    return seed_sessions(rc, s, tenant, count, **kwargs)


def pipeline(rc: redis.cluster.RedisCluster) -> Any:
    """A cluster pipeline (redis-py leaves ``RedisCluster.pipeline`` unannotated)."""
    return cast(Any, rc).pipeline()


def node_of(rc: redis.cluster.RedisCluster, key: str) -> str:
    """The name of the node serving ``key``."""
    return str(rc.nodes_manager.get_node_from_slot(key_slot(key.encode())).name)


def tenants_on_every_node(
    rc: redis.cluster.RedisCluster, keys: KeyLayout, stem: str, per_node: int = 1
) -> list[str]:
    """``per_node`` tenant ids per node of the cluster, found by their hash tag's slot."""
    found: dict[str, list[str]] = {}
    for i in range(2000):
        tenant = f"{stem}-{i}"
        bucket = found.setdefault(node_of(rc, keys.tenant_watermark(tenant)), [])
        if len(bucket) < per_node:
            bucket.append(tenant)
        if len(found) == 3 and all(len(b) == per_node for b in found.values()):
            return [t for b in found.values() for t in b]
    raise AssertionError(f"no {per_node} tenant(s) per node among 2000 candidates: {found}")


def revoked_flags(
    rc: redis.cluster.RedisCluster, keys: KeyLayout, tenant: str, ids: Sequence[str]
) -> list[bool]:
    """For each family id, whether its revoked mark is a field of its revoked-mark bucket."""
    pipe = pipeline(rc)
    for fid in ids:
        pipe.hexists(keys.family_revoked(tenant, fid), fid)
    return [bool(x) for x in pipe.execute()]


def marks_ttls(
    rc: redis.cluster.RedisCluster, keys: KeyLayout, tenant: str, ids: Sequence[str]
) -> set[int]:
    """The TTLs of the revoked-mark buckets holding these families' marks."""
    pipe = pipeline(rc)
    for key in sorted({keys.family_revoked(tenant, fid) for fid in ids}):
        pipe.ttl(key)
    return set(pipe.execute())


def present(
    rc: redis.cluster.RedisCluster, keys: KeyLayout, tenant: str, ids: Sequence[str]
) -> list[bool]:
    """For each family id, whether its record is still a field of its session bucket."""
    pipe = pipeline(rc)
    for fid in ids:
        bucket = family_bucket(fid)
        assert bucket is not None, fid
        pipe.hexists(keys.session_bucket(tenant, bucket), fid)
    return [bool(x) for x in pipe.execute()]


def expected_chunks(ids: Sequence[str], chunk: int) -> int:
    """The chunks a tenant job plans: non-empty buckets in order, a chunk closed at ``chunk``."""
    sizes = Counter(family_bucket(fid) for fid in ids)
    chunks = size = 0
    for bucket in sorted(b for b in sizes if b is not None):
        size += sizes[bucket]
        if size >= chunk:
            chunks, size = chunks + 1, 0
    return chunks + (1 if size else 0)


def neighbour_of(user: str, buckets: int) -> str:
    """Another user id whose sessions share ``user``'s bucket."""
    target = bucket_of_user(user, buckets)
    return next(f"n{i}" for i in range(1_000_000) if bucket_of_user(f"n{i}", buckets) == target)


def by_bucket(selected: dict[int, list[bytes]]) -> dict[int, set[str]]:
    """What ``revoke_buckets`` returned, order-free and decoded."""
    return {b: {fid.decode() for fid in ids} for b, ids in selected.items()}


def test_seeded_tenants_live_on_every_node(
    s: RevokerSettings, rc: redis.cluster.RedisCluster
) -> None:
    """The tenant picker really spreads tenants over the three nodes (the premise of this file)."""
    keys = KeyLayout(s.key_prefix)
    tenants = tenants_on_every_node(rc, keys, "spread")
    assert len({node_of(rc, keys.session_bucket(t, 0)) for t in tenants}) == 3
    # A tenant's buckets, marks and watermarks share one slot: a chunk touches one node.
    t = tenants[0]
    slots = {
        key_slot(k.encode())
        for k in (keys.session_bucket(t, 0), keys.session_bucket(t, s.session_buckets - 1),
                  keys.revoked_bucket(t, 0), keys.revoked_bucket(t, s.session_buckets - 1),
                  keys.family_revoked(t, "f"), keys.user_watermark(t, "u"),
                  keys.tenant_watermark(t))
    }  # fmt: skip
    assert len(slots) == 1


def test_unfiltered_tenant_jobs_on_every_node(
    s: RevokerSettings, rc: redis.cluster.RedisCluster, sstore: SyncRedisTokenRevocationStore
) -> None:
    """Three tenants (one per node, 1,000 sessions each) revoked at once; a fourth is untouched."""
    keys = sstore.keys
    candidates = tenants_on_every_node(rc, keys, "tj", per_node=2)
    # One victim per node; the bystander shares a node (and so a connection) with a victim.
    victims, bystander = candidates[0::2], candidates[1]
    assert len({node_of(rc, keys.tenant_watermark(t)) for t in victims}) == 3
    seeded = {t: seed(rc, s, t, 1000, users=20) for t in [*victims, bystander]}
    pairs = {t: start_session_sync("alice", tenant_id=t, store=sstore) for t in victims}
    tokens = {t: decode_token(p.access_token, "access", settings=s) for t, p in pairs.items()}
    for t in victims:
        seeded[t].append(pairs[t].family_id)
        assert not sstore.is_revoked(tokens[t])

    job_ids = {}
    for t in victims:
        job_ids[t] = jobs.enqueue_tenant_revocation(t, reason="breach", actor="ops@example.com")
        # Enforcement does not wait for the worker: the watermark was written before the return.
        assert sstore.is_revoked(tokens[t]).rule == "tenant"
    records = {t: jobs.wait_for_job(j, timeout=JOB_TIMEOUT) for t, j in job_ids.items()}

    for t in victims:
        ids, record = seeded[t], records[t]
        assert record.status == "done", record.error
        assert record.chunks_total == expected_chunks(ids, CHUNK) > 1
        assert record.chunks_done == record.chunks_total
        assert record.families_revoked == record.families_matched == len(ids)
        # No per-session marks: the tenant watermark refuses them (issue 15).
        assert not any(revoked_flags(rc, keys, t, ids)), t
        assert sstore.is_revoked(tokens[t]).rule == "tenant"
        # Every record was deleted from its bucket (an emptied hash is no key at all).
        assert not any(present(rc, keys, t, ids)), t
        buckets = {family_bucket(fid) for fid in ids}
        assert not any(rc.exists(keys.session_bucket(t, b)) for b in buckets if b is not None)
        assert sstore.get_session(pairs[t].family_id, tenant_id=t) is None
    assert not any(revoked_flags(rc, keys, bystander, seeded[bystander]))
    assert all(present(rc, keys, bystander, seeded[bystander]))
    assert rc.get(keys.tenant_watermark(bystander)) is None
    # The same request is accepted again once the job is done: the idempotency key was released.
    again = jobs.enqueue_tenant_revocation(victims[0], reason="again", actor="ops")
    assert jobs.wait_for_job(again, timeout=JOB_TIMEOUT).status == "done"


def test_user_job_on_the_cluster(
    s: RevokerSettings, rc: redis.cluster.RedisCluster, sstore: SyncRedisTokenRevocationStore
) -> None:
    """All of one user's sessions are revoked; other users, even in the same bucket, keep theirs."""
    keys = sstore.keys
    tenant = tenants_on_every_node(rc, keys, "uj")[1]
    ids = seed(rc, s, tenant, 600, users=3)
    mine = [fid for i, fid in enumerate(ids) if i % 3 == 1]
    theirs = [fid for i, fid in enumerate(ids) if i % 3 != 1]
    pair = start_session_sync("u1", tenant_id=tenant, store=sstore)
    mine.append(pair.family_id)
    token = decode_token(pair.access_token, "access", settings=s)
    # Another user's session in u1's very bucket: the job must pick records, not whole buckets.
    neighbour = start_session_sync(
        neighbour_of("u1", s.session_buckets), tenant_id=tenant, store=sstore
    )
    assert family_bucket(neighbour.family_id) == family_bucket(pair.family_id)
    theirs.append(neighbour.family_id)

    job_id = jobs.enqueue_user_revocation("u1", tenant_id=tenant, reason="left", actor="hr")
    assert sstore.is_revoked(token).rule == "user"
    record = jobs.wait_for_job(job_id, timeout=JOB_TIMEOUT)

    assert record.status == "done", record.error
    assert record.chunks_total == 1  # one bucket, its user's, whatever the chunk size
    assert record.families_revoked == record.families_matched == len(mine)
    # No per-session marks: the user watermark refuses them (issue 15).
    assert not any(revoked_flags(rc, keys, tenant, [*mine, *theirs]))
    assert sstore.is_revoked(token).rule == "user"
    assert not any(present(rc, keys, tenant, mine))
    assert all(present(rc, keys, tenant, theirs))
    assert not sstore.is_revoked(decode_token(neighbour.access_token, "access", settings=s))
    assert rc.get(keys.tenant_watermark(tenant)) is None


def test_client_filtered_job_on_the_cluster(
    s: RevokerSettings, rc: redis.cluster.RedisCluster, sstore: SyncRedisTokenRevocationStore
) -> None:
    """Only one client app's sessions are revoked, no watermark; a dry run first changes nothing."""
    keys = sstore.keys
    tenant = tenants_on_every_node(rc, keys, "cj")[2]
    ids = seed(rc, s, tenant, 900, users=7, client_ids=("web", "mobile", None))
    mobile = [fid for i, fid in enumerate(ids) if i % 3 == 1]
    rest = [fid for i, fid in enumerate(ids) if i % 3 != 1]
    web = start_session_sync("bob", tenant_id=tenant, client_id="web", store=sstore)

    dry = jobs.wait_for_job(
        jobs.enqueue_tenant_revocation(
            tenant, client_id="mobile", dry_run=True, reason="check", actor="ops"
        ),
        timeout=JOB_TIMEOUT,
    )
    assert (dry.status, dry.families_matched, dry.families_revoked) == ("done", len(mobile), 0)
    assert not any(revoked_flags(rc, keys, tenant, mobile))
    assert all(present(rc, keys, tenant, mobile))

    job_id = jobs.enqueue_tenant_revocation(
        tenant, client_id="mobile", reason="bad build", actor="ops"
    )
    record = jobs.wait_for_job(job_id, timeout=JOB_TIMEOUT)

    assert record.status == "done", record.error
    assert record.watermark_at is None
    assert rc.get(keys.tenant_watermark(tenant)) is None
    assert record.families_revoked == record.families_matched == len(mobile)
    assert all(revoked_flags(rc, keys, tenant, mobile))
    assert not any(revoked_flags(rc, keys, tenant, rest))
    assert not sstore.is_revoked(decode_token(web.access_token, "access", settings=s))
    assert not any(present(rc, keys, tenant, mobile))
    assert all(present(rc, keys, tenant, [*rest, web.family_id]))


def test_duplicate_request_is_detected_on_the_cluster(
    s: RevokerSettings, rc: redis.cluster.RedisCluster, sstore: SyncRedisTokenRevocationStore
) -> None:
    """The idempotency key works on the cluster: the same request while pending is refused."""
    tenant = tenants_on_every_node(rc, sstore.keys, "dup")[0]
    # A broker that is down keeps the job pending, so the worker cannot finish it meanwhile.
    configure(s.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"}))
    first = jobs.enqueue_tenant_revocation(tenant, reason="r", actor="a")
    assert jobs.get_job(first).status == "pending"
    with pytest.raises(DuplicateJob) as info:
        jobs.enqueue_tenant_revocation(tenant, reason="other words", actor="b")
    assert info.value.job_id == first
    # A different selector is a different request.
    jobs.enqueue_tenant_revocation(tenant, client_id="web", reason="r", actor="a")
    rc.hset(sstore.keys.job(first), "status", "done")
    assert jobs.enqueue_tenant_revocation(tenant, reason="r", actor="a") != first


def test_family_reuse_follow_up_on_the_cluster(
    s: RevokerSettings, rc: redis.cluster.RedisCluster, sstore: SyncRedisTokenRevocationStore
) -> None:
    """A reused refresh token: marked by the rotation, the task deletes its record and audits it."""
    keys = sstore.keys
    tenant = tenants_on_every_node(rc, keys, "reuse")[2]
    pair = start_session_sync("dave", tenant_id=tenant, store=sstore)
    keep = start_session_sync("dave", tenant_id=tenant, store=sstore)
    rotate_refresh_token_sync(pair.refresh_token, store=sstore)
    with pytest.raises(RefreshTokenReused):
        rotate_refresh_token_sync(pair.refresh_token, store=sstore)  # the superseded one again
    assert revoked_flags(rc, keys, tenant, [pair.family_id, keep.family_id]) == [True, False]
    mark = rc.hget(keys.family_revoked(tenant, pair.family_id), pair.family_id)
    assert mark is not None

    (job,) = [j for j in jobs.list_jobs() if j.family_id == pair.family_id]
    record = jobs.wait_for_job(job.id, timeout=JOB_TIMEOUT)

    assert record.status == "done", record.error
    assert record.kind == "family_reuse"
    # The rotation's mark stays as it was; the other session of the same user is not revoked.
    assert rc.hget(keys.family_revoked(tenant, pair.family_id), pair.family_id) == mark
    assert revoked_flags(rc, keys, tenant, [pair.family_id, keep.family_id]) == [True, False]
    assert rc.ttl(keys.family_revoked(tenant, pair.family_id)) > 0
    assert present(rc, keys, tenant, [pair.family_id, keep.family_id]) == [False, True]
    assert sstore.get_session(pair.family_id, tenant_id=tenant) is None
    audit = [e for _, e in audit_entries(rc, keys) if e[b"kind"] == b"family_reuse"]
    assert [e[b"target"] for e in audit] == [pair.family_id.encode()]


def audit_entries(
    rc: redis.cluster.RedisCluster, keys: KeyLayout
) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The audit stream, typed."""
    return cast(list[tuple[bytes, dict[bytes, bytes]]], rc.xrange(keys.audit))


def test_expire_entries_on_the_cluster(
    s: RevokerSettings, rc: redis.cluster.RedisCluster, sstore: SyncRedisTokenRevocationStore
) -> None:
    """The worker's expiry task prunes expired records and old marks on every node, old jobs
    and audit."""
    from revoker.tasks import expire_entries

    keys = sstore.keys
    tenants = tenants_on_every_node(rc, keys, "exp")
    old = int(time.time()) - s.leeway - 10  # past expiry plus leeway: prunable
    live = {t: seed(rc, s, t, 5, users=1) for t in tenants}
    u0 = bucket_of_user("u0", s.session_buckets)
    ghost = bucket_of_user("ghost", s.session_buckets)
    assert ghost != u0
    expired: dict[str, list[str]] = {}
    for t in tenants:
        # 30 expired sessions beside the live ones in u0's bucket, 30 alone in ghost's.
        expired[t] = []
        for user, bucket in (("u0", u0), ("ghost", ghost)):
            for i in range(30):
                fid = f"{family_id_prefix(bucket)}gone-{user}-{i}"
                record = encode_record(
                    user_id=user, client_id=None, created_us=(old - 3600) * 1_000_000,
                    expires=old - i, current_jti=f"rt-{fid}",
                )  # fmt: skip
                rc.hset(keys.session_bucket(t, bucket), fid, record)
                expired[t].append(fid)
    # Per tenant, a revoked mark past the refresh lifetime + leeway beside a fresh one.
    lifetime = family_ttl(s.refresh_token_ttl, s.leeway)
    old_mark = encode_mark(to_us(time.time() - lifetime - 60), "old")
    fresh_mark = encode_mark(to_us(time.time()), "fresh")
    marks = {t: keys.revoked_bucket(t, u0) for t in tenants}
    for t in tenants:
        rc.hset(marks[t], mapping={f"{family_id_prefix(u0)}stale": old_mark,
                                   f"{family_id_prefix(u0)}fresh": fresh_mark})  # fmt: skip
        rc.expire(marks[t], lifetime)
    # A finished job long past its retention, with its chunk list and done set.
    stale = "job-stale-cluster"
    rc.hset(keys.job(stale), mapping={"id": stale, "status": "done", "chunks_total": 1})
    rc.set(keys.job_chunk(stale, 0), "[]")
    rc.sadd(keys.job_chunks_done(stale), 0)
    rc.zadd(keys.jobs, {stale: 1_000})
    # Audit entries far past retention (more than one stream node, so "~" trimming drops some),
    # then a fresh one; the stream is rebuilt because XADD ids must grow.
    rc.delete(keys.audit)
    pipe = pipeline(rc)
    for i in range(300):
        pipe.xadd(keys.audit, {"kind": "old"}, id=f"1000-{i + 1}")
    pipe.xadd(keys.audit, {"kind": "new"})
    pipe.execute()
    audit_before = rc.xlen(keys.audit)

    # A client app of this module's own: revoker.worker.app took its broker from whichever
    # settings were current when an earlier test module first used it.
    client_app = Celery("cluster-expiry-test", set_as_current=False)
    client_app.conf.update(celery_config(s))
    try:
        result = client_app.send_task(expire_entries.name).get(timeout=JOB_TIMEOUT)
    finally:
        client_app.close()

    assert result["sessions"] == 2 * 30 * len(tenants)
    # At least ours: other tests of this module (same prefix) may leave old marks too.
    assert result["revoked_marks"] >= len(tenants)
    assert result["jobs"] >= 1
    assert result["audit_entries"] > 0
    for t in tenants:
        assert all(present(rc, keys, t, live[t]))
        assert not any(present(rc, keys, t, expired[t]))
        fields = cast(list[bytes], rc.hkeys(keys.session_bucket(t, u0)))
        assert {f.decode() for f in fields} == set(live[t])
        assert not rc.exists(keys.session_bucket(t, ghost))  # emptied, so gone
        left = cast(dict[bytes, bytes], rc.hgetall(marks[t]))
        assert left == {f"{family_id_prefix(u0)}fresh".encode(): fresh_mark.encode()}
    assert not rc.exists(keys.job(stale))
    assert not rc.exists(keys.job_chunk(stale, 0))
    assert not rc.exists(keys.job_chunks_done(stale))
    assert rc.zscore(keys.jobs, stale) is None
    assert rc.xlen(keys.audit) < audit_before
    assert [e[b"kind"] for _, e in audit_entries(rc, keys)][-1] == b"new"


def test_plan_and_revoke_buckets_in_process_on_the_cluster(
    s: RevokerSettings, rc: redis.cluster.RedisCluster, sstore: SyncRedisTokenRevocationStore
) -> None:
    """plan_chunks, revoke_buckets and delete_records work pipelined on a cluster client."""
    from revoker import tasks

    keys = sstore.keys
    tenant = tenants_on_every_node(rc, keys, "plan")[1]
    ids = seed(rc, s, tenant, 600, users=7)
    record = jobs.JobRecord(
        id="job-plan-cluster", kind="tenant", tenant_id=tenant, created_at=time.time()
    )
    chunks = tasks.plan_chunks(sstore, record)
    assert chunks == expected_chunks(ids, CHUNK) > 1
    # The chunk lists (in the job's slot) hold every non-empty bucket once, in order.
    raw = [cast(bytes, rc.get(keys.job_chunk(record.id, n))) for n in range(chunks)]
    lists: list[list[int]] = [json.loads(r) for r in raw]
    planned = [b for bucket_list in lists for b in bucket_list]
    assert planned == sorted({bucket_of_user(f"u{u}", s.session_buckets) for u in range(7)})
    time.sleep(0.01)
    later = start_session_sync("u3", tenant_id=tenant, store=sstore)  # after the cut-off
    select = tasks.Selection(record, to_us(record.created_at))

    # A dry run (no mark) selects everything covered and writes nothing.
    dry = tasks.revoke_buckets(sstore, planned, tenant_id=tenant, select=select, mark=None)
    assert sorted(fid for fids in by_bucket(dry).values() for fid in fids) == sorted(ids)
    assert not any(revoked_flags(rc, keys, tenant, ids))

    selected: dict[int, list[bytes]] = {}
    for bucket_list in lists:
        selected.update(
            tasks.revoke_buckets(sstore, bucket_list, tenant_id=tenant, select=select, mark="1|t")
        )
    assert by_bucket(selected) == by_bucket(dry)
    flags = revoked_flags(rc, keys, tenant, [*ids, later.family_id])
    assert all(flags[:-1])
    assert not flags[-1]
    # One revoked-mark bucket per session bucket, holding exactly its selected families' marks.
    lifetime = family_ttl(s.refresh_token_ttl, s.leeway)
    for bucket, fids in by_bucket(selected).items():
        marks = cast(dict[bytes, bytes], rc.hgetall(keys.revoked_bucket(tenant, bucket)))
        assert marks == {fid.encode(): b"1|t" for fid in fids}
        assert lifetime - 5 <= rc.ttl(keys.revoked_bucket(tenant, bucket)) <= lifetime
    # Until the records are deleted a rerun selects exactly the same sessions (crash recovery).
    again = tasks.revoke_buckets(sstore, planned, tenant_id=tenant, select=select, mark="1|t")
    assert by_bucket(again) == by_bucket(selected)
    assert all(present(rc, keys, tenant, ids))

    tasks.delete_records(sstore, tenant, selected)
    assert not any(present(rc, keys, tenant, ids))
    assert present(rc, keys, tenant, [later.family_id]) == [True]
    # Nothing covered is left; the later session is never selected.
    assert tasks.revoke_buckets(sstore, planned, tenant_id=tenant, select=select, mark="1|t") == {}
    assert not any(revoked_flags(rc, keys, tenant, [later.family_id]))
