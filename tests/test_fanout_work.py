"""Each bulk job does only the work it needs (issue 15).

An unfiltered tenant or user job is enforced by the watermark ``enqueue`` wrote before the job was
recorded: its chunks write no per-session marks, count and audit exactly, and remove the records
(a bucket wholly covered with one UNLINK, guarded by a WATCH so a session started meanwhile
stays). A filtered job's marks are its enforcement and stay. Jobs run in this process, as in
``tests/test_jobs.py``, on the real Redis under the test's own prefix.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from celery_helpers import run_job_inline, seed_sessions
from conftest import private_settings
from revoker import jobs, tasks
from revoker.exceptions import TokenRevoked
from revoker.keys import bucket_of_user, family_bucket
from revoker.localredis import free_port
from revoker.refresh import rotate_refresh_token_sync
from revoker.sessions import start_session_sync
from revoker.settings import RevokerSettings, configure
from revoker.store import SyncRedisTokenRevocationStore, get_sync_revocation_store
from revoker.tasks import buckets, fanout
from revoker.tokens import decode_token

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


def _fields(r: redis.Redis, store: SyncRedisTokenRevocationStore, tenant: str) -> set[str]:
    pipe = r.pipeline(transaction=False)
    for b in range(BUCKETS):
        pipe.hkeys(store.keys.session_bucket(tenant, b))
    return {fid.decode() for ids in pipe.execute() for fid in ids}


def _marks(r: redis.Redis, store: SyncRedisTokenRevocationStore, tenant: str) -> int:
    base = store.keys.revoked_bucket_base(tenant)
    return sum(int(r.hlen(key)) for key in r.scan_iter(match=f"{base}*", count=1000))


def _audited(r: redis.Redis, store: SyncRedisTokenRevocationStore, job_id: str) -> list[str]:
    """Every family id the job's chunk audit entries list (with repeats, if any)."""
    out: list[str] = []
    for _, entry in r.xrange(store.keys.audit):
        fields = {a.decode(): b.decode() for a, b in entry.items()}
        if fields.get("kind") == "job_chunk" and fields.get("target") == job_id:
            out += fields["families"].split()
    return out


def _spy(monkeypatch: pytest.MonkeyPatch, store: SyncRedisTokenRevocationStore) -> list[str]:
    """The names of the commands the store's bulk exchange sends from now on."""
    sent: list[str] = []
    real = store.bulk_exchange

    @contextlib.contextmanager
    def spied() -> Iterator[Any]:
        with real() as exchange:

            def send(commands: list[Any]) -> list[Any]:
                sent.extend(str(c[0]).upper() for c in commands)
                return exchange(commands)

            yield send

    monkeypatch.setattr(store, "bulk_exchange", spied)
    return sent


def _refused(store: SyncRedisTokenRevocationStore, access_token: str) -> str | None:
    status = store.is_revoked(decode_token(access_token, "access", settings=store.settings))
    return status.rule if status.revoked else None


def test_unfiltered_tenant_job_writes_no_marks_and_counts_exactly(
    s: RevokerSettings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tenant job: exact counts and audit, no per-session marks, its tokens and rotations
    refused by the watermark, covered buckets gone, a later session in a covered bucket kept."""
    store = get_sync_revocation_store(s)
    seeded = seed_sessions(r, s, "acme", 500, users=30)
    pairs = [start_session_sync(f"u{i}", tenant_id="acme", store=store) for i in range(3)]
    job_id = jobs.enqueue_tenant_revocation("acme", reason="breach", actor="ops")
    later = start_session_sync("u1", tenant_id="acme", store=store)  # after the watermark
    sent = _spy(monkeypatch, store)
    record = run_job_inline(monkeypatch, job_id)
    assert record.status == "done", record.error
    covered = {*seeded, *(p.family_id for p in pairs)}
    assert record.families_matched == record.families_revoked == len(covered)
    assert sorted(_audited(r, store, job_id)) == sorted(covered)
    assert _marks(r, store, "acme") == 0
    assert _fields(r, store, "acme") == {later.family_id}
    for pair in pairs:
        assert _refused(store, pair.access_token) == "tenant"
        with pytest.raises(TokenRevoked):
            rotate_refresh_token_sync(pair.refresh_token, store=store)
    assert _refused(store, later.access_token) is None
    assert rotate_refresh_token_sync(later.refresh_token, store=store).family_id == later.family_id
    # Buckets with no later session are gone whole (UNLINK), not left as empty shells.
    later_bucket = bucket_of_user("u1", BUCKETS)
    assert r.exists(store.keys.session_bucket("acme", later_bucket)) == 1
    assert sum(r.exists(store.keys.session_bucket("acme", b)) for b in range(BUCKETS)) == 1
    assert "HSET" not in sent
    assert "UNLINK" in sent
    # Per bucket: one UNLINK (in a MULTI/EXEC per chunk), an HDEL only where a session stays.
    assert sent.count("HDEL") == 1


def test_unfiltered_user_job_spares_bucket_neighbours(
    s: RevokerSettings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user job: the user's sessions removed and refused by the user watermark, no marks, a
    neighbour in the same bucket untouched."""
    store = get_sync_revocation_store(s)
    target = bucket_of_user("alice", BUCKETS)
    neighbour = next(
        u for u in (f"n{i}" for i in range(100_000)) if bucket_of_user(u, BUCKETS) == target
    )
    mine = [start_session_sync("alice", tenant_id="acme", store=store) for _ in range(4)]
    theirs = start_session_sync(neighbour, tenant_id="acme", store=store)
    job_id = jobs.enqueue_user_revocation("alice", tenant_id="acme", reason="r", actor="a")
    record = run_job_inline(monkeypatch, job_id)
    assert (record.status, record.families_matched, record.families_revoked) == ("done", 4, 4)
    assert _marks(r, store, "acme") == 0
    assert _fields(r, store, "acme") == {theirs.family_id}
    for pair in mine:
        assert _refused(store, pair.access_token) == "user"
        with pytest.raises(TokenRevoked):
            rotate_refresh_token_sync(pair.refresh_token, store=store)
    assert _refused(store, theirs.access_token) is None


def test_filtered_job_keeps_per_session_marks(
    s: RevokerSettings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client-filtered job (no watermark) writes a mark per selected session: the marks refuse
    them (rule "family"), the other client's sessions stay."""
    store = get_sync_revocation_store(s)
    seeded = seed_sessions(r, s, "acme", 300, users=20, client_ids=("web", "ios"))
    web = {fid for i, fid in enumerate(seeded) if i % 2 == 0}
    pair = start_session_sync("u1", tenant_id="acme", client_id="web", store=store)
    job_id = jobs.enqueue_tenant_revocation("acme", client_id="web", reason="r", actor="a")
    record = run_job_inline(monkeypatch, job_id)
    assert record.families_matched == record.families_revoked == len(web) + 1
    assert _marks(r, store, "acme") == len(web) + 1
    assert _refused(store, pair.access_token) == "family"
    assert _fields(r, store, "acme") == set(seeded) - web


def test_buckets_past_the_watch_cap_are_cleared_by_hdel(
    s: RevokerSettings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk with more buckets than WATCH_BUCKETS watches only the first ones (UNLINK) and
    clears the rest with HDEL: every record goes, counts stay exact."""
    store = get_sync_revocation_store(s)
    seeded = seed_sessions(r, s, "cap", 200, users=20)
    monkeypatch.setattr(buckets, "WATCH_BUCKETS", 2)
    job_id = jobs.enqueue_tenant_revocation("cap", reason="r", actor="a")
    sent: list[tuple[str, int]] = []
    real = store.bulk_exchange

    @contextlib.contextmanager
    def spied() -> Iterator[Any]:
        with real() as exchange:

            def send(commands: list[Any]) -> list[Any]:
                sent.extend((str(c[0]).upper(), len(c) - 1) for c in commands)
                return exchange(commands)

            yield send

    monkeypatch.setattr(store, "bulk_exchange", spied)
    record = run_job_inline(monkeypatch, job_id)
    assert record.families_revoked == len(seeded)
    assert _fields(r, store, "cap") == set()
    chunks = record.chunks_total
    assert [n for name, n in sent if name == "WATCH"] == [2] * chunks
    assert sum(n for name, n in sent if name == "UNLINK") <= 2 * chunks
    assert any(name == "HDEL" for name, _ in sent)


def test_a_lost_watermark_makes_the_job_write_marks(
    s: RevokerSettings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unfiltered job whose watermark Redis no longer holds (a failover that lost it) falls
    back to per-session marks: its sessions are still refused, by rule "family"."""
    store = get_sync_revocation_store(s)
    pairs = [start_session_sync(f"u{i}", tenant_id="lost", store=store) for i in range(5)]
    job_id = jobs.enqueue_tenant_revocation("lost", reason="r", actor="a")
    r.delete(store.keys.tenant_watermark("lost"))
    record = run_job_inline(monkeypatch, job_id)
    assert record.families_revoked == len(pairs)
    assert _marks(r, store, "lost") == len(pairs)
    assert all(_refused(store, pair.access_token) == "family" for pair in pairs)


def test_a_session_joining_a_covered_bucket_mid_chunk_is_kept(
    s: RevokerSettings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session recorded into a bucket between the chunk's read and its clean-up survives: the
    WATCH turns the UNLINK of that bucket into an HDEL of the selected records only."""
    store = get_sync_revocation_store(s)
    seeded = seed_sessions(r, s, "acme", 40, users=4)
    job_id = jobs.enqueue_tenant_revocation("acme", reason="r", actor="a")
    joined: list[str] = []
    real = buckets.clear_records

    def racing(*args: Any, **kwargs: Any) -> None:
        other = get_sync_revocation_store(s)
        joined.append(start_session_sync("u0", tenant_id="acme", store=other).family_id)
        real(*args, **kwargs)

    monkeypatch.setattr(fanout, "clear_records", racing)
    record = run_job_inline(monkeypatch, job_id)
    assert record.families_revoked == len(seeded)
    assert joined
    assert _fields(r, store, "acme") == {joined[0]}


class Killed(BaseException):
    """The worker process dying: nothing of the task runs after it (no handler, no retry)."""


def test_chunk_rerun_after_a_crash_counts_once(
    s: RevokerSettings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk killed after counting but before its clean-up: the redelivery only cleans up;
    one killed before counting reruns whole; counts and audit stay exact, no marks appear."""
    store = get_sync_revocation_store(s)
    ids = seed_sessions(r, s, "gap", 60, users=12)
    groups = sorted({family_bucket(f) or 0 for f in ids})
    first, second = groups[: len(groups) // 2], groups[len(groups) // 2 :]
    job_id = jobs.enqueue_tenant_revocation("gap", reason="r", actor="a")
    keys = store.keys
    r.hset(keys.job(job_id), mapping={"status": "running", "chunks_total": 2, "snapshot": 1})
    r.set(keys.job_chunk(job_id, 0), json.dumps(first))
    r.set(keys.job_chunk(job_id, 1), json.dumps(second))

    def killed(*_args: Any, **_kwargs: Any) -> None:
        raise Killed

    monkeypatch.setattr(fanout, "clear_records", killed)
    with pytest.raises(Killed):
        tasks.revoke_chunk(job_id, 0)
    monkeypatch.undo()
    assert tasks.revoke_chunk(job_id, 0)["already_done"] is True

    def crash(*_args: Any, **_kwargs: Any) -> None:
        raise redis.ConnectionError("lost before counting")

    with monkeypatch.context() as m:
        m.setattr(store.jobs, "plan_finish", crash)
        m.setattr(fanout, "context", lambda: (s, store))
        with pytest.raises(Exception, match="lost before counting"):
            tasks.revoke_chunk(job_id, 1)
    result = tasks.revoke_chunk(job_id, 1)
    assert result["revoked"] > 0
    record = jobs.get_job(job_id)
    assert (record.status, record.families_matched, record.families_revoked) == ("done", 60, 60)
    assert _fields(r, store, "gap") == set()
    assert _marks(r, store, "gap") == 0
    # The audit is at least once (the crashed run wrote its entry); every family is in it.
    assert set(_audited(r, store, job_id)) == set(ids)


def test_a_counted_chunk_retries_its_failed_clean_up_itself(
    s: RevokerSettings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk whose deletes fail after it counted itself (a failover) retries them in the task,
    not by a task retry (Celery drops a retry it cannot publish, and a job never redispatches a
    done chunk): every record goes, the counts stay exact."""
    store = get_sync_revocation_store(s)
    seed_sessions(r, s, "flaky", 60, users=12)
    job_id = jobs.enqueue_tenant_revocation("flaky", reason="r", actor="a")
    calls: list[int] = []
    real = buckets.clear_records

    def failing_once(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise redis.ConnectionError("the primary failed over")
        real(*args, **kwargs)

    def no_retry(*_args: Any, **_kwargs: Any) -> None:
        pytest.fail("a counted chunk's clean-up was left to a task retry")

    monkeypatch.setattr(fanout, "clear_records", failing_once)
    monkeypatch.setattr(tasks.revoke_chunk, "retry", no_retry)
    record = run_job_inline(monkeypatch, job_id)
    assert (record.status, record.families_matched, record.families_revoked) == ("done", 60, 60)
    assert len(calls) > 1
    assert _fields(r, store, "flaky") == set()


def test_adaptive_pacer_lengthens_its_pause_while_round_trips_are_slow() -> None:
    """REVOKER_FANOUT_ADAPTIVE_PACING: round trips at their idle baseline keep the duty cycle's
    pause; slower ones (Redis busy with others) lengthen it, never past PACE_MAX_FACTOR; once
    they are back at the baseline the pause shrinks back to the duty cycle's."""
    pace = buckets.Pacer(floor=1.0)
    assert pace.pause(0.010, 100) == pytest.approx(0.010)  # another shape: its own baseline
    for _ in range(5):
        assert pace.pause(0.001, 10) == pytest.approx(0.001)  # 0.5 duty cycle: as long
    slow = [pace.pause(0.003, 10) / 0.003 for _ in range(30)]
    assert slow[0] > 1.0
    assert slow == sorted(slow)
    assert slow[-1] == pytest.approx(buckets.PACE_MAX_FACTOR)
    # A call doing more work in proportion is not slow: the baseline is per unit of work.
    assert pace.pause(0.010, 100) / 0.010 < buckets.PACE_MAX_FACTOR
    fast = [pace.pause(0.001, 10) / 0.001 for _ in range(60)]
    assert fast == sorted(fast, reverse=True)
    assert fast[-1] == pytest.approx(1.0)
    fixed = buckets.Pacer(floor=1.0, adaptive=False)
    assert fixed.pause(0.003, 10) == pytest.approx(0.003)


def test_adaptive_pacing_is_kept_across_a_processs_chunks() -> None:
    """The pacer of a kind is the process's: a later chunk's exchange starts with the pause and
    baseline the earlier one learned, and a new configuration starts afresh."""
    first = buckets.pacer("test-kind", 1.0, True)
    first.factor = 3.0
    assert buckets.pacer("test-kind", 1.0, True) is first
    assert buckets.pacer("test-kind", 0.5, True) is not first


def test_paced_exchange_pauses_for_its_duty_cycle() -> None:
    """REVOKER_FANOUT_DUTY_CYCLE=0.5 makes each round trip take at least twice its own time;
    1 leaves the exchange as it is."""
    import time

    def slow(commands: list[Any]) -> list[Any]:
        time.sleep(0.02)
        return [len(commands)]

    assert buckets.paced(slow, 1.0) is slow
    started = time.perf_counter()
    assert buckets.paced(slow, 0.5)([("PING",)]) == [1]
    assert time.perf_counter() - started >= 0.04


# --- filtered chunks, selected, marked and deleted in Redis (chunk_buckets.lua) --------------


def _feed_families(r: redis.Redis, store: SyncRedisTokenRevocationStore) -> list[Any]:
    """The family entries of the feed, decoded, in order."""
    from revoker.keys import decode_feed_entry

    entries = [decode_feed_entry(fields) for _, fields in r.xrange(store.keys.feed)]
    return [e for e in entries if e.kind == "family"]


def _progress_keys(r: redis.Redis, store: SyncRedisTokenRevocationStore, tenant: str) -> list[Any]:
    base = store.keys.job_chunk_progress(tenant, "x", 0).rsplit(":", 2)[0]
    return list(r.scan_iter(match=f"{base}:*", count=1000))


def test_filtered_job_selects_marks_and_deletes_in_redis(
    s: RevokerSettings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client-filtered job reads no record over the wire (EVALSHA of chunk_buckets.lua, no
    HSCAN, HSET or HDEL from the worker): exact counts, one audit listing each revoked family
    once, every mark where the check reads it with its bucket's TTL, a feed entry naming each
    mark with its sequence, the other client's and later sessions kept, no progress left."""
    store = get_sync_revocation_store(s)
    seeded = seed_sessions(r, s, "srv", 400, users=25, client_ids=("web", "ios"))
    web = {fid for i, fid in enumerate(seeded) if i % 2 == 0}
    job_id = jobs.enqueue_tenant_revocation("srv", client_id="web", reason="r", actor="a")
    later = start_session_sync("u1", tenant_id="srv", client_id="web", store=store)
    sent = _spy(monkeypatch, store)
    record = run_job_inline(monkeypatch, job_id)
    assert record.status == "done", record.error
    assert record.families_matched == record.families_revoked == len(web)
    assert record.chunks_total > 1
    assert "EVALSHA" in sent
    assert not {"HSCAN", "HSET", "HDEL", "WATCH"} & set(sent)
    assert sorted(_audited(r, store, job_id)) == sorted(web)
    assert _fields(r, store, "srv") == set(seeded) - web | {later.family_id}
    assert _marks(r, store, "srv") == len(web)
    full = s.refresh_token_ttl + s.leeway
    for fid in web:
        key = store.keys.family_revoked("srv", fid)
        assert r.hget(key, fid) is not None
        assert 0 < r.ttl(key) <= full
    entries = _feed_families(r, store)
    assert {i for e in entries for i in e.ids} == web
    assert all(e.tenant_id == "srv" and e.seq is not None for e in entries)
    seqs = [e.seq for e in entries]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    assert int(r.hget(store.keys.integrity, "seq") or 0) >= seqs[-1]
    assert _refused(store, later.access_token) is None
    assert _progress_keys(r, store, "srv") == []


def _crashing_script(monkeypatch: pytest.MonkeyPatch, after: int) -> list[int]:
    """Make the chunk script's calls fail (the connection lost) once ``after`` calls have run
    in Redis: each run of a chunk gets ``after`` calls. Returns the calls made, per run."""
    real = buckets.bulk_script
    runs: list[int] = []

    def crashing(client: Any, exchange: Any, source: str) -> Any:
        call = real(client, exchange, source)
        runs.append(0)

        def counted(keys: Any, args: Any) -> Any:
            if runs[-1] == after:
                raise redis.ConnectionError("lost between two script calls")
            runs[-1] += 1
            return call(keys, args)

        return counted

    monkeypatch.setattr(buckets, "bulk_script", crashing)
    return runs


@pytest.mark.parametrize("after", [1, 3])
def test_a_filtered_chunk_cut_between_script_calls_reruns_exactly(
    s: RevokerSettings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch, after: int
) -> None:
    """A chunk killed after some of its atomic steps (records already marked and deleted): the
    rerun skips the buckets done, counts the chunk exactly once, and its audit entry lists every
    family the chunk revoked, those of the run that died included."""
    store = get_sync_revocation_store(s)
    # Every user (bucket) has sessions of both clients.
    ids = seed_sessions(r, s, "cut", 120, users=10, client_ids=("web", "ios", "ios"))
    web = {fid for i, fid in enumerate(ids) if i % 3 == 0}
    groups = sorted({family_bucket(f) or 0 for f in ids})
    job_id = jobs.enqueue_tenant_revocation("cut", client_id="web", reason="r", actor="a")
    keys = store.keys
    r.hset(keys.job(job_id), mapping={"status": "running", "chunks_total": 1, "snapshot": 1})
    r.set(keys.job_chunk(job_id, 0), json.dumps(groups))
    monkeypatch.setattr(buckets, "SCRIPT_FIELDS", 5)  # ~one bucket per call
    with monkeypatch.context() as m:
        runs = _crashing_script(m, after)
        with pytest.raises(Exception, match="lost between two script calls"):
            tasks.revoke_chunk(job_id, 0)
        assert runs == [after]
    gone = web - _fields(r, store, "cut")
    assert 0 < len(gone) < len(web), "the first run must have revoked some, not all"
    assert _audited(r, store, job_id) == []
    result = tasks.revoke_chunk(job_id, 0)
    assert result["revoked"] == len(web)
    record = jobs.get_job(job_id)
    assert (record.status, record.families_matched, record.families_revoked) == (
        "done",
        len(web),
        len(web),
    )
    assert sorted(_audited(r, store, job_id)) == sorted(web)
    assert _fields(r, store, "cut") == set(ids) - web
    assert _marks(r, store, "cut") == len(web)
    assert {i for e in _feed_families(r, store) for i in e.ids} == web
    assert tasks.revoke_chunk(job_id, 0)["already_done"] is True
    assert jobs.get_job(job_id).families_revoked == len(web)


def test_a_bucket_bigger_than_a_call_is_paged_and_resumed_at_its_cursor(
    s: RevokerSettings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One user's 400 sessions (a hash table bucket, bigger than a call may examine) are read in
    HSCAN pages over several calls; a run cut mid-bucket resumes at the saved cursor: every
    covered session revoked once, the rest kept."""
    store = get_sync_revocation_store(s)
    ids = seed_sessions(r, s, "big", 400, users=1, client_ids=("web", "ios"))
    web = {fid for i, fid in enumerate(ids) if i % 2 == 0}
    bucket = bucket_of_user("u0", BUCKETS)
    assert r.object("encoding", store.keys.session_bucket("big", bucket)) == b"hashtable"
    job_id = jobs.enqueue_tenant_revocation("big", client_id="web", reason="r", actor="a")
    monkeypatch.setattr(buckets, "SCRIPT_FIELDS", 60)
    monkeypatch.setattr(buckets, "SCRIPT_WHOLE_BUCKET", 100)
    monkeypatch.setattr(buckets, "SCRIPT_SCAN_COUNT", 20)
    keys = store.keys
    r.hset(keys.job(job_id), mapping={"status": "running", "chunks_total": 1, "snapshot": 1})
    r.set(keys.job_chunk(job_id, 0), json.dumps([bucket]))
    with monkeypatch.context() as m:
        _crashing_script(m, 2)
        with pytest.raises(Exception, match="lost between two script calls"):
            tasks.revoke_chunk(job_id, 0)
    progress = r.hgetall(keys.job_chunk_progress("big", job_id, 0))
    assert progress[str(bucket).encode()] not in (b"0", b"d"), "cut mid-bucket, at a cursor"
    assert 0 < int(progress[b"n"]) < len(web)
    assert tasks.revoke_chunk(job_id, 0)["revoked"] == len(web)
    assert _fields(r, store, "big") == set(ids) - web
    assert sorted(_audited(r, store, job_id)) == sorted(web)
    assert _marks(r, store, "big") == len(web)


def test_a_filtered_job_with_per_session_events_wanted_reads_its_records(
    s: RevokerSettings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a destination wants per-session events, a filtered chunk takes the Python path
    (the events are read from the records before they go): same counts, marks and deletions."""
    store = get_sync_revocation_store(s)
    seeded = seed_sessions(r, s, "ev", 100, users=10, client_ids=("web", "ios"))
    web = {fid for i, fid in enumerate(seeded) if i % 2 == 0}
    job_id = jobs.enqueue_tenant_revocation("ev", client_id="web", reason="r", actor="a")
    r.set(store.keys.events_wanted, "1")
    emitted: list[bytes] = []
    monkeypatch.setattr(fanout, "emit_chunk_events", lambda _s, _r, ids: emitted.extend(ids))
    sent = _spy(monkeypatch, store)
    record = run_job_inline(monkeypatch, job_id)
    assert record.families_revoked == len(web)
    assert "EVALSHA" not in sent
    assert {fid.decode() for fid in emitted} == web
    assert _marks(r, store, "ev") == len(web)
    assert _fields(r, store, "ev") == set(seeded) - web


def test_the_jobs_own_task_event_takes_the_progress_fields() -> None:
    """report() sends the job's progress fields (which carry a job_id) through job_event: the
    call binds (it raised TypeError, so Flower never saw the job's task move to PROGRESS)."""
    from revoker.tasks._state import job_event

    meta = {"job_id": "j1", "status": "running", "chunks_done": 1, "chunks_total": 2}
    job_event("j1", "task-progress", result=repr(meta), **meta)  # outside a worker: a no-op
