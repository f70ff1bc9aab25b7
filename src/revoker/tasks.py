"""Celery tasks: bulk fan-out in chunks, the family-reuse follow-up, expiry and the outbox sweep.

A bulk job runs in two steps. An unfiltered tenant job (the big one) takes a faster road:

* ``revoke_job`` renames the tenant index aside (``P:{T}:tj:<job>``, O(1) RENAMENX: every member
  is to be revoked, and sessions started afterwards begin a fresh index), lists the tenant's
  user indexes (SCAN) into one share per chunk (``P:job:{id}:c:<n>``, JSON) and dispatches one
  ``revoke_chunk`` per rank range of the frozen index.
* ``revoke_chunk`` reads its rank range in pages and writes one revoked marker (SET EX) per
  family, then sweeps its share of the user indexes (per user one ZMSCORE against the frozen
  index and one ZREM): plain pipelined commands on a raw connection, no Lua and no per-family
  read, so Redis serves the per-request checks between them. The job is done when its chunks
  are (``job_chunk_done.lua``); the frozen index is then UNLINKed.

Other jobs (filtered, user, dry runs) take the general road:

* ``revoke_job`` snapshots the walked index (the tenant's or the user's) into chunk lists stored in
  Redis (``P:job:{id}:c:<n>``, JSON), records ``chunks_total`` and dispatches one
  ``revoke_chunk`` task per chunk not yet done. A rerun (redelivery) after the snapshot was
  recorded reuses it and dispatches only the missing chunks.
* ``revoke_chunk`` reads its families' records when it must (user ids for the user index,
  client and creation time for filters) with a read-only script in batches of
  :data:`READ_BATCH`, then writes the revoked markers and removes the families from both indexes
  with a write script in batches of :data:`WRITE_BATCH` (Redis is never held for more than about
  a millisecond), each phase one pipelined round trip. It then records itself
  done with ``job_chunk_done.lua``: a set of done chunk numbers makes the counts exact even when
  a chunk is rerun after a crash. The last chunk flips the job to ``done``.

Audit: one stream entry per chunk listing its family ids (about 25 bytes per session rather than
a stream entry of ~100 bytes each), and every revoked marker's reason names the job. The audit
is at least once: a chunk killed after its audit entry but before it recorded itself done writes
a second entry when rerun; the counts in the job record are exactly once.

Redelivery cap: each chunk counts its deliveries (and retries) in ``P:job:{id}:dlv``. Past
``max_redeliveries`` the chunk is parked and the job marked failed with a clear error, instead
of looping forever on a poison message.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import hiredis
import redis
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from revoker import keys as k
from revoker.exceptions import JobNotFound
from revoker.jobs import JobRecord, get_job, publish_job
from revoker.rules import encode_mark, now_us
from revoker.settings import RevokerSettings, get_settings
from revoker.store import SyncRedisTokenRevocationStore, get_sync_revocation_store
from revoker.store._base import load_script
from revoker.worker import app

__all__ = [
    "OUTBOX_GRACE_SECONDS",
    "READ_BATCH",
    "SNAPSHOT_BATCH",
    "WRITE_BATCH",
    "expire_entries",
    "handle_family_reuse",
    "publish_pending_jobs",
    "revoke_chunk",
    "revoke_families",
    "revoke_job",
]

log = logging.getLogger(__name__)

#: Index members read per ZRANGE while snapshotting or reading a frozen index: ZRANGE costs
#: ~0.8 us per member on a 1M-member index, so ~0.4 ms of Redis each (5,000 held it ~4 ms).
SNAPSHOT_BATCH = 500
#: Families per write script call (filtered and user jobs): ~10 us each, ~0.5 ms per call.
WRITE_BATCH = 50
#: Family records per read script call (~3 us each, ~0.3 ms per call).
READ_BATCH = 100
#: Keys examined per SCAN call (~1 µs of Redis each under load).
SCAN_COUNT = 200
#: User indexes per round trip of the sweep. Redis runs every command of one 16 KB read before
#: serving another client, and ~100 bytes of ZRANGE or ZMSCORE cost it ~5 µs: 500 of them held
#: it over a millisecond, which the per-request checks queued behind them felt.
SWEEP_BATCH = 100
#: Expired index members removed per script call.
EXPIRE_BATCH = 1_000
#: Jobs handled per page by the expiry task and the outbox sweep.
JOB_PAGE = 200
#: Seconds a new job is left to its own publish before the outbox sweep publishes it.
OUTBOX_GRACE_SECONDS = 5.0

_SCRIPTS = ("read_families", "revoke_families", "job_chunk_done", "prune_index")
_scripts: weakref.WeakKeyDictionary[SyncRedisTokenRevocationStore, dict[str, Any]] = (
    weakref.WeakKeyDictionary()
)


def _task(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``app.task`` with a type mypy can follow (Celery ships no annotations)."""
    return cast(Callable[[Callable[..., Any]], Any], app.task(**options))


def _context() -> tuple[RevokerSettings, SyncRedisTokenRevocationStore]:
    settings = get_settings()
    return settings, get_sync_revocation_store(settings)


def _script(store: SyncRedisTokenRevocationStore, name: str) -> Any:
    if store.is_cluster:
        return _ClusterScript(store.client, load_script(name))
    scripts = _scripts.get(store)
    if scripts is None:
        scripts = _scripts[store] = {
            n: store.client.register_script(load_script(n)) for n in _SCRIPTS
        }
    return scripts[name]


class _ClusterScript:
    """A Lua script callable like redis-py's, also inside a Redis Cluster pipeline.

    redis-py refuses scripts in a cluster pipeline, so EVALSHA is queued by hand; the cluster
    routes it by its keys' slot (a batch is always one tenant's or one job's slot). The script is
    loaded on every primary when this object is made, i.e. once per task step: a failover that
    flushed the script cache costs one failed attempt, not every retry.
    """

    def __init__(self, client: Any, text: str) -> None:
        self.client = client
        self.text = text
        self.sha = client.script_load(text)

    def __call__(
        self, keys: Sequence[Any] = (), args: Sequence[Any] = (), client: Any = None
    ) -> Any:
        if client is not None and client is not self.client:
            return client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        try:
            return self.client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self.sha = self.client.script_load(self.text)
            return self.client.evalsha(self.sha, len(keys), *keys, *args)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- the write path of unfiltered tenant jobs (no Lua) -------------------------------------------


@contextlib.contextmanager
def _exchange(store: SyncRedisTokenRevocationStore) -> Iterator[Callable[[list[Any]], list[Any]]]:
    """A function sending a batch of commands in one round trip and returning their replies.

    On a single Redis the batch is packed by hiredis and written to one pooled connection whose
    replies are then read one by one: redis-py's pipeline machinery costs several µs of Python
    per command, which at 200k sessions/s is the whole CPU budget. A cluster client (or fakeredis)
    goes through an ordinary pipeline. Never a MULTI or a script: Redis serves other clients
    between the commands of a batch, so the per-request check never waits behind a whole batch.
    """
    client = store.client
    if type(client) is not redis.Redis:

        def piped(commands: list[Any]) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return cast(list[Any], pipe.execute())

        yield piped
        return
    pool = client.connection_pool
    conn: Any = pool.get_connection()  # redis-py's Connection is unannotated
    pack = hiredis.pack_command
    reader = hiredis.Reader()

    def raw(commands: list[Any]) -> list[Any]:
        conn.send_packed_command([b"".join([pack(c) for c in commands])], check_health=False)
        # Replies parsed by our own hiredis reader straight off the pooled connection's socket
        # (ours while we hold it): redis-py's read_response costs ~2 µs of Python per reply.
        sock = conn._sock
        replies: list[Any] = []
        want = len(commands)
        while len(replies) < want:
            reply = reader.gets()
            if reply is False:
                data = sock.recv(1 << 20)
                if not data:
                    raise redis.ConnectionError("Redis closed the connection mid-batch")
                reader.feed(data)
                continue
            if isinstance(reply, hiredis.ReplyError):
                raise redis.ResponseError(str(reply))
            replies.append(reply)
        return replies

    try:
        conn.connect()  # a fresh pool connection has no socket until its first command
        yield raw
    except BaseException:
        # Replies may be left unread on the socket: never hand such a connection back.
        conn.disconnect()
        raise
    finally:
        pool.release(conn)


def revoke_frozen_range(
    store: SyncRedisTokenRevocationStore,
    frozen: str,
    start: int,
    stop: int,
    *,
    tenant_id: str | None,
    mark: str,
) -> list[bytes]:
    """Revoke the families at ranks ``[start, stop)`` of a frozen tenant index; returns their ids.

    One command per family: its revoked marker (SET EX). The tenant index needs no per-member
    ZREM (the frozen copy is the job's, UNLINKed once it is done) and the user indexes are swept
    per user afterwards (:func:`sweep_user_indexes`), so nothing reads the family records. One round
    trip per page of :data:`SNAPSHOT_BATCH` members carries the page's markers and the ZRANGE of
    the next page. Idempotent: the frozen index never changes, so a rerun rewrites the same
    markers.
    """
    ttl = k.family_ttl(store.settings.refresh_token_ttl, store.settings.leeway)
    revoked: list[bytes] = []
    with _exchange(store) as exchange:
        members: list[bytes] = exchange(
            [("ZRANGE", frozen, start, min(stop, start + SNAPSHOT_BATCH) - 1)]
        )[0]
        low = start + SNAPSHOT_BATCH
        while members:
            revoked_keys = store.keys.family_keys(tenant_id, [m.decode() for m in members])[1]
            commands: list[Any] = [("SET", key, mark, "EX", ttl) for key in revoked_keys]
            if low < stop:
                commands.append(("ZRANGE", frozen, low, min(stop, low + SNAPSHOT_BATCH) - 1))
            replies = exchange(commands)
            revoked += members
            members = replies[-1] if low < stop else []
            low += SNAPSHOT_BATCH
    return revoked


def user_index_keys(store: SyncRedisTokenRevocationStore, tenant_id: str | None) -> list[str]:
    """Every user index of the tenant (SCAN: bounded steps of :data:`SCAN_COUNT` keys)."""
    pattern = store.keys.user_index_pattern(tenant_id)
    return [_text(key) for key in store.client.scan_iter(match=pattern, count=SCAN_COUNT)]


def sweep_user_indexes(
    store: SyncRedisTokenRevocationStore,
    tenant_id: str | None,
    frozen: str,
    index_keys: Sequence[str] | None = None,
) -> int:
    """Remove the frozen index's families from the tenant's user indexes; returns how many.

    ``index_keys`` limits the sweep to those user indexes (a chunk's share); by default every
    user index of the tenant is swept.

    An unfiltered tenant job revokes every family of its frozen index, so it cleans the user
    indexes per user (a few families each), not per family: per page of them one round trip
    reads their members, one asks the frozen index which of them it holds (ZMSCORE) and one
    removes those. Members added after the freeze are kept. Idempotent, and every command is
    bounded (:data:`SNAPSHOT_BATCH` members).
    """
    removed = 0
    with _exchange(store) as exchange:

        def sweep(batch: list[tuple[str, int]]) -> list[tuple[str, int]]:
            nonlocal removed
            pages = exchange(
                [("ZRANGE", key, rank, rank + SNAPSHOT_BATCH - 1) for key, rank in batch]
            )
            read = [(b, p) for b, p in zip(batch, pages, strict=True) if p]
            if not read:
                return []
            scores = exchange([("ZMSCORE", frozen, *page) for _, page in read])
            drops: list[Any] = []
            more: list[tuple[str, int]] = []
            for ((key, rank), page), score in zip(read, scores, strict=True):
                gone = [m for m, sc in zip(page, score, strict=True) if sc is not None]
                if gone:
                    drops.append(("ZREM", key, *gone))
                if len(page) == SNAPSHOT_BATCH:  # a big index: its next page, after the kept
                    more.append((key, rank + len(page) - len(gone)))
            if drops:
                removed += sum(exchange(drops))
            return more

        if index_keys is None:
            index_keys = user_index_keys(store, tenant_id)
        pending = [(key, 0) for key in index_keys]
        while pending:
            pending = sweep(pending[:SWEEP_BATCH]) + pending[SWEEP_BATCH:]
    return removed


def _freeze(store: SyncRedisTokenRevocationStore, record: JobRecord) -> tuple[int, dict[str, Any]]:
    """Snapshot of an unfiltered tenant job: rename the tenant index aside (O(1)).

    Returns the number of chunks and the job fields that locate them. Every member is revoked by
    the job, so moving them all out of the tenant index at once replaces a per-member ZREM; new
    sessions (after the rename) start a fresh tenant index and are not touched. RENAMENX: a
    redelivered job task finds its frozen index already there and keeps it.
    """
    client = store.client
    index = store.keys.tenant_index(record.tenant_id)
    frozen = store.keys.frozen_index(record.tenant_id, record.id)
    client.zcard(index)  # WRONGTYPE before anything moves, if the index is not a sorted set
    client.hset(store.keys.job(record.id), "frozen", frozen)
    try:
        client.renamenx(index, frozen)
    except redis.ResponseError as e:
        if "no such key" not in str(e).lower():
            raise
    # Members are scored by expiry: the expired ones (lowest ranks) are skipped.
    first = int(client.zcount(frozen, "-inf", f"({int(time.time())}"))
    live = int(client.zcard(frozen)) - first
    size = store.settings.chunk_size
    chunks = math.ceil(live / size)
    return chunks, {"frozen_from": first, "frozen_chunk": size}


def _share_sweep(store: SyncRedisTokenRevocationStore, record: JobRecord, chunks: int) -> None:
    """Deal the tenant's user indexes out to the chunks of an unfiltered tenant job.

    Each chunk sweeps its share after its markers, so every worker process takes part in the
    sweep (one job task sweeping them all kept one process busy for most of the job). The SCAN
    runs before any chunk: then it steps over no revoked marker yet (~1 µs of Redis per key
    examined; a SCAN interleaved with the chunks stepped over nearly twice as many keys). The
    shares are written before the job records its snapshot, so before any chunk is dispatched: a
    rerun of the job task deals them afresh only while no chunk can have swept one.
    """
    shares: list[list[str]] = [[] for _ in range(chunks)]
    for n, key in enumerate(user_index_keys(store, record.tenant_id)):
        shares[n % chunks].append(key)
    retention = store.settings.job_retention
    pipe = store.client.pipeline(transaction=False)
    for n, share in enumerate(shares):
        pipe.set(store.keys.job_chunk(record.id, n), json.dumps(share), ex=retention)
        if len(pipe) >= 20:
            pipe.execute()
    pipe.execute()


# --- the write path of filtered and user jobs ----------------------------------------------------


def revoke_families(
    store: SyncRedisTokenRevocationStore,
    family_ids: Sequence[str],
    *,
    tenant_id: str | None,
    walked_index: str,
    user_id: str | None,
    select: JobRecord | None,
    dry_run: bool,
    mark: str,
) -> tuple[list[str], int]:
    """Revoke the families of one chunk; returns (the families matched, how many were revoked).

    ``user_id`` is the owner of every family when the job walks a user index (the other index is
    then the tenant's); otherwise each family's user is read from its record. ``select`` filters
    by client and creation time (families whose record has expired cannot match). Two pipelined
    round trips: the reads (when needed), then the writes, both as small Lua batches.
    """
    keys = store.keys
    client = store.client
    f = k.FAMILY_FIELDS
    filtered = select is not None and select.filtered
    family_keys, revoked_keys = keys.family_keys(tenant_id, family_ids)
    selected: list[int] = []
    other: list[str] = []
    if filtered or user_id is None:
        fields = [f["user"], f["client"], f["created"]] if filtered else [f["user"]]
        width = len(fields)
        read = _script(store, "read_families")
        pipe = client.pipeline(transaction=False)
        for start in range(0, len(family_keys), READ_BATCH):
            read(keys=family_keys[start : start + READ_BATCH], args=fields, client=pipe)
        values = [v for batch in pipe.execute() for v in batch]
        user_index: dict[Any, str] = {}
        for i in range(len(family_ids)):
            row = values[i * width : (i + 1) * width]
            owner = row[0]
            if filtered:
                assert select is not None
                if owner is None:
                    continue
                created = _text(row[2]) if row[2] is not None else None
                client_id = _text(row[1]) if row[1] is not None else None
                if not select.matches(client_id, created):
                    continue
            selected.append(i)
            if user_id is None:
                if owner is None:
                    other.append(walked_index)
                else:
                    index = user_index.get(owner)
                    if index is None:
                        index = user_index[owner] = keys.user_index(tenant_id, _text(owner))
                    other.append(index)
    else:
        selected = list(range(len(family_ids)))
    matched_ids = [family_ids[i] for i in selected]
    if dry_run or not selected:
        return matched_ids, 0
    if user_id is not None:
        other = [keys.tenant_index(tenant_id)] * len(selected)
    # Families of one user next to each other: the script removes each run with one ZREM.
    order = sorted(range(len(selected)), key=other.__getitem__)
    ttl = k.family_ttl(store.settings.refresh_token_ttl, store.settings.leeway)
    write = _script(store, "revoke_families")
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(order), WRITE_BATCH):
        batch = order[start : start + WRITE_BATCH]
        write(
            keys=[
                walked_index,
                *(revoked_keys[selected[j]] for j in batch),
                *(other[j] for j in batch),
            ],
            args=[mark, ttl, len(batch), *(family_ids[selected[j]] for j in batch)],
            client=pipe,
        )
    pipe.execute()
    return matched_ids, len(selected)


def _walked_index(store: SyncRedisTokenRevocationStore, record: JobRecord) -> str:
    if record.kind == "user":
        assert record.user_id is not None
        return store.keys.user_index(record.tenant_id, record.user_id)
    return store.keys.tenant_index(record.tenant_id)


def _job_mark(record: JobRecord) -> str:
    return encode_mark(now_us(), f"{record.reason or 'bulk revocation'} (job {record.id})")


# --- job bookkeeping -----------------------------------------------------------------------------


def _finish_job(
    store: SyncRedisTokenRevocationStore,
    job_id: str,
    status: str,
    *,
    error: str | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Mark a job finished (unless it already is), give its keys their retention, free its key."""
    keys = store.keys
    client = store.client
    job_key = keys.job(job_id)
    fields: dict[str, Any] = {"status": status, "finished_at": repr(time.time())}
    if error is not None:
        fields["error"] = error
    fields.update(extra or {})
    retention = store.settings.job_retention
    pipe = client.pipeline(transaction=False)
    pipe.hset(job_key, mapping=fields)
    for key in (job_key, keys.job_chunks_done(job_id), keys.job_deliveries(job_id)):
        pipe.expire(key, retention)
    pipe.zrem(keys.jobs_pending, job_id)
    pipe.execute()
    _release_job(store, job_id, done=status == "done")


def _release_job(store: SyncRedisTokenRevocationStore, job_id: str, *, done: bool) -> None:
    """Free the job's idempotency key (if still ours) and drop its chunk lists.

    A done job's frozen tenant index goes too (UNLINK: freed off Redis's main thread). A failed
    job keeps it (with the index's TTL) for a rerun or an operator, until the job record expires.
    """
    client = store.client
    job_key = store.keys.job(job_id)
    idem_key, total, frozen = client.hmget(job_key, ["idem_key", "chunks_total", "frozen"])
    if idem_key is not None and client.get(idem_key) == job_id.encode():
        client.delete(idem_key)
    if done and frozen is not None:
        client.unlink(frozen)
    chunks = int(total or 0)
    for start in range(0, chunks, 500):
        client.delete(
            *(store.keys.job_chunk(job_id, n) for n in range(start, min(chunks, start + 500)))
        )


def _progress(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "job_id": record["id"],
        "status": record["status"],
        "chunks_done": record["chunks_done"],
        "chunks_total": record["chunks_total"],
        "families_revoked": record["families_revoked"],
        "families_matched": record["families_matched"],
    }


def _report(task: Task, store: SyncRedisTokenRevocationStore, job_id: str) -> dict[str, Any]:
    """Publish the job's progress: task state (CLI, API) and a task event (Flower)."""
    try:
        meta = _progress(get_job(job_id, settings=store.settings).as_dict())
    except JobNotFound:
        return {}
    state = "SUCCESS" if meta["status"] == "done" else "PROGRESS"
    if task.request.id is None:
        return meta  # called directly, not by a worker: there is no task state to report
    try:
        task.update_state(state="PROGRESS", meta=meta)
        # The job's own task id is the job id: one place where its progress can be read.
        task.backend.store_result(job_id, meta, state)
        if state != "SUCCESS":
            # A chunk finishing the job meanwhile may have written SUCCESS before this stale
            # PROGRESS; it wrote it after finishing, so re-reading the job now sees "done".
            latest = _progress(get_job(job_id, settings=store.settings).as_dict())
            if latest["status"] == "done":
                task.backend.store_result(job_id, latest, "SUCCESS")
        task.send_event("task-progress", **meta)
    except Exception as e:  # noqa: BLE001 - progress is best effort; the job record is the truth
        log.warning("could not report progress of job %s: %s", job_id, e)
    return meta


# --- tasks ---------------------------------------------------------------------------------------


def _snapshot(store: SyncRedisTokenRevocationStore, record: JobRecord) -> int:
    """Copy the walked index's live members into chunk lists; returns the number of chunks.

    Pages are anchored on the rank of the last member read (ZRANK), so members pruned or removed
    meanwhile do not make the walk skip any. New sessions sort last (they expire last).
    """
    client = store.client
    keys = store.keys
    index = _walked_index(store, record)
    chunk_size = store.settings.chunk_size
    retention = store.settings.job_retention
    rank = int(client.zcount(index, "-inf", f"({int(time.time())}"))
    buffer: list[str] = []
    chunks = 0
    pipe = client.pipeline(transaction=False)

    def flush(final: bool) -> None:
        nonlocal chunks, buffer
        while len(buffer) >= chunk_size or (final and buffer):
            part, buffer = buffer[:chunk_size], buffer[chunk_size:]
            pipe.set(keys.job_chunk(record.id, chunks), json.dumps(part), ex=retention)
            chunks += 1
        if len(pipe) >= 20 or final:
            pipe.execute()

    while True:
        members = client.zrange(index, rank, rank + SNAPSHOT_BATCH - 1)
        if not members:
            break
        buffer.extend(_text(m) for m in members)
        flush(False)
        last_rank = client.zrank(index, members[-1])
        if last_rank is None:  # removed meanwhile: fall back to where the page ended
            last_rank = rank + len(members) - 1
        rank = int(last_rank) + 1
    flush(True)
    return chunks


@_task(bind=True, name="revoker.revoke_job", ignore_result=True, max_retries=None)
def revoke_job(self: Task, job_id: str) -> None:
    """Snapshot the job's index into chunks and dispatch them (idempotent on redelivery)."""
    settings, store = _context()
    try:
        record = get_job(job_id, settings=settings)
    except JobNotFound:
        log.warning("revoke_job: no job %s (expired or never recorded)", job_id)
        return
    if record.finished:
        return
    try:
        _run_job(self, store, record)
    except Exception as e:  # noqa: BLE001 - any failure is retried, then fails the job
        _retry_or_fail(self, store, job_id, e)


def _retry_or_fail(
    task: Task, store: SyncRedisTokenRevocationStore, job_id: str, exc: Exception
) -> None:
    """Retry a job-level task with a short backoff; after max_redeliveries attempts fail the job.

    Without this a failed task would be dropped (failures are not requeued) and its job would
    stay ``running`` for ever.
    """
    attempts = int(task.request.retries or 0) + 1
    if attempts < store.settings.max_redeliveries:
        raise task.retry(exc=exc, countdown=min(5.0, 0.2 * attempts)) from exc
    error = f"{task.name} failed {attempts} times: {type(exc).__name__}: {exc}"[:1000]
    log.error("job %s: %s", job_id, error)
    try:
        _finish_job(store, job_id, "failed", error=error)
    except Exception:
        # Redis itself may be what fails: nothing more can be recorded.
        log.exception("could not mark job %s failed", job_id)


def _run_job(task: Task, store: SyncRedisTokenRevocationStore, record: JobRecord) -> None:
    client = store.client
    keys = store.keys
    job_id = record.id
    job_key = keys.job(job_id)
    pipe = client.pipeline(transaction=False)
    pipe.hset(job_key, "status", "running")
    pipe.hsetnx(job_key, "started_at", repr(time.time()))
    pipe.zrem(keys.jobs_pending, job_id)
    pipe.hget(job_key, "snapshot")
    snapshotted = pipe.execute()[-1] is not None
    if snapshotted:
        total = int(client.hget(job_key, "chunks_total") or 0)
    else:
        if task.request.id is not None:  # None when called directly, not by a worker
            task.update_state(state="PROGRESS", meta={"job_id": job_id, "phase": "snapshot"})
        fields: dict[str, Any] = {}
        if record.kind == "tenant" and not record.filtered and not record.dry_run:
            total, fields = _freeze(store, record)
            if total:
                _share_sweep(store, record, total)
        else:
            total = _snapshot(store, record)
        client.hset(job_key, mapping={**fields, "chunks_total": total, "snapshot": "1"})
    if total == 0:
        _finish_job(store, job_id, "done")
        _report(task, store, job_id)
        return
    done = {int(n) for n in client.smembers(keys.job_chunks_done(job_id))}
    with task.app.producer_or_acquire() as producer:
        for n in range(total):
            if n not in done:
                revoke_chunk.apply_async((job_id, n), producer=producer)
    _report(task, store, job_id)


def _park_chunk(
    store: SyncRedisTokenRevocationStore, job_id: str, chunk: int, deliveries: int
) -> None:
    last_error = store.client.hget(store.keys.job(job_id), "last_error")
    detail = f": {_text(last_error)}" if last_error else ""
    error = (
        f"chunk {chunk} parked after {deliveries - 1} deliveries "
        f"(max_redeliveries={store.settings.max_redeliveries}){detail}"
    )
    log.error("job %s: %s", job_id, error)
    _finish_job(store, job_id, "failed", error=error)


@_task(bind=True, name="revoker.revoke_chunk", max_retries=None)
def revoke_chunk(self: Task, job_id: str, chunk: int) -> dict[str, Any]:
    """Revoke one chunk of a job; rerunning it changes nothing and counts nothing twice."""
    settings, store = _context()
    client = store.client
    keys = store.keys
    if client.sismember(keys.job_chunks_done(job_id), chunk):
        return {"job_id": job_id, "chunk": chunk, "already_done": True}
    deliveries = int(client.hincrby(keys.job_deliveries(job_id), str(chunk), 1))
    if deliveries > settings.max_redeliveries:
        _park_chunk(store, job_id, chunk, deliveries)
        return {"job_id": job_id, "chunk": chunk, "parked": True}
    try:
        record = get_job(job_id, settings=settings)
        frozen, frozen_from, frozen_chunk = client.hmget(
            keys.job(job_id), ["frozen", "frozen_from", "frozen_chunk"]
        )
        if frozen is not None and frozen_from is not None and frozen_chunk is not None:
            low = int(frozen_from) + chunk * int(frozen_chunk)
            ids = revoke_frozen_range(
                store, _text(frozen), low, low + int(frozen_chunk),
                tenant_id=record.tenant_id, mark=_job_mark(record),
            )  # fmt: skip
            revoked = matched = len(ids)
            listed = b" ".join(ids).decode()
            share = client.get(keys.job_chunk(job_id, chunk))
            if share is None:
                raise LookupError(f"the user indexes of chunk {chunk} are gone")
            sweep_user_indexes(store, record.tenant_id, _text(frozen), json.loads(share))
        else:
            raw = client.get(keys.job_chunk(job_id, chunk))
            if raw is None:
                raise LookupError(f"the family list of chunk {chunk} is gone")
            family_ids: list[str] = json.loads(raw)
            selected, revoked = revoke_families(
                store,
                family_ids,
                tenant_id=record.tenant_id,
                walked_index=_walked_index(store, record),
                user_id=record.user_id if record.kind == "user" else None,
                select=record,
                dry_run=record.dry_run,
                mark=_job_mark(record),
            )
            matched = len(selected)
            listed = " ".join(selected)
        if revoked:
            audit = store.core.audit_command(
                "job_chunk",
                job_id,
                tenant_id=record.tenant_id,
                reason=record.reason,
                actor=record.actor,
                at_us=now_us(),
                extra={"chunk": str(chunk), "count": str(revoked), "families": listed},
            )
            pipe = client.pipeline(transaction=False)
            pipe.execute_command(*audit)
            pipe.execute_command(*store.core.count_command("job_families", revoked))
            pipe.execute()
        _, finished = _script(store, "job_chunk_done")(
            keys=[keys.job(job_id), keys.job_chunks_done(job_id), keys.job_deliveries(job_id)],
            args=[chunk, matched, revoked, repr(time.time()), settings.job_retention],
        )
    except JobNotFound:
        return {"job_id": job_id, "chunk": chunk, "missing_job": True}
    except (Exception, SoftTimeLimitExceeded) as e:
        message = f"{type(e).__name__}: {e}"[:500]
        try:
            client.hset(keys.job(job_id), "last_error", f"chunk {chunk}: {message}")
        except Exception:  # noqa: BLE001 - Redis may be what failed; the retry tries again
            log.debug("could not record the error of job %s", job_id)
        # Each retry is a delivery for the cap; back off a little more each time.
        raise self.retry(exc=e, countdown=min(5.0, 0.2 * deliveries)) from e
    if finished:
        _release_job(store, job_id, done=True)
    meta = _report(self, store, job_id)
    return {"job_id": job_id, "chunk": chunk, "matched": matched, "revoked": revoked, **meta}


@_task(bind=True, name="revoker.handle_family_reuse", max_retries=None)
def handle_family_reuse(self: Task, job_id: str) -> dict[str, Any]:
    """After a refresh-token reuse: audit, index clean-up, optional escalation to the user."""
    settings, store = _context()
    try:
        record = get_job(job_id, settings=settings)
    except JobNotFound:
        return {"job_id": job_id, "missing_job": True}
    if record.finished:
        return record.as_dict()
    try:
        return _run_family_reuse(self, store, record)
    except Exception as e:  # noqa: BLE001 - any failure is retried, then fails the job
        _retry_or_fail(self, store, job_id, e)
        return {"job_id": job_id, "failed": True}


def _run_family_reuse(
    task: Task, store: SyncRedisTokenRevocationStore, record: JobRecord
) -> dict[str, Any]:
    settings = store.settings
    keys = store.keys
    client = store.client
    job_id = record.id
    assert record.family_id is not None
    assert record.user_id is not None
    pipe = client.pipeline(transaction=False)
    pipe.hset(keys.job(job_id), "status", "running")
    pipe.hsetnx(keys.job(job_id), "started_at", repr(time.time()))
    pipe.zrem(keys.jobs_pending, job_id)
    pipe.execute()
    tenant, user = record.tenant_id, record.user_id
    mark = _job_mark(record)
    user_index = keys.user_index(tenant, user)
    revoked = revoke_families(
        store, [record.family_id], tenant_id=tenant, walked_index=user_index, user_id=user,
        select=None, dry_run=False, mark=mark,
    )[1]  # fmt: skip
    extra: dict[str, Any] = {}
    audit = store.core.audit_command(
        "family_reuse", record.family_id, tenant_id=tenant, reason=record.reason,
        actor=record.actor, at_us=now_us(), extra={"user": user, "job": job_id},
    )  # fmt: skip
    client.execute_command(*audit)
    if settings.reuse_escalation == "user":
        extra["watermark_at"] = repr(
            store.revoke_user_tokens(user, tenant_id=tenant, reason=record.reason, actor="system")
        )
        while True:
            members = [_text(m) for m in client.zrange(user_index, 0, settings.chunk_size - 1)]
            if not members:
                break
            revoked += revoke_families(
                store, members, tenant_id=tenant, walked_index=user_index, user_id=user,
                select=None, dry_run=False, mark=mark,
            )[1]  # fmt: skip
    extra.update(chunks_total=1, chunks_done=1, families_matched=revoked, families_revoked=revoked)
    _finish_job(store, job_id, "done", extra=extra)
    return _report(task, store, job_id)


@_task(name="revoker.expire_entries")
def expire_entries() -> dict[str, int]:
    """Prune expired index members, finished jobs past retention, and old audit entries."""
    settings, store = _context()
    client = store.client
    keys = store.keys
    now = time.time()
    prune = _script(store, "prune_index")
    pruned = 0
    patterns = (keys.tenant_index(None), keys.user_index(None, "*"))
    # Index keys of every tenant: the tag of tenant-less keys ("{-}") replaced by a glob.
    for pattern in {p.replace("{-}", "{*}") for p in patterns}:
        for key in client.scan_iter(match=pattern, count=SCAN_COUNT):
            while True:
                removed = int(prune(keys=[key], args=[int(now), EXPIRE_BATCH]))
                pruned += removed
                if removed < EXPIRE_BATCH:
                    break
    jobs_removed = 0
    cutoff_ms = int((now - settings.job_retention) * 1000)
    offset = 0
    while True:
        ids = [
            _text(j)
            for j in client.zrange(
                keys.jobs, "-inf", cutoff_ms, byscore=True, offset=offset, num=JOB_PAGE
            )
        ]
        if not ids:
            break
        pipe = client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(keys.job(job_id), ["status", "chunks_total", "frozen"])
        kept = 0
        for job_id, (status, total, frozen) in zip(ids, pipe.execute(), strict=True):
            if status is not None and _text(status) not in ("done", "failed"):
                kept += 1  # still active: an operator must see it
                continue
            doomed = [keys.job(job_id), keys.job_chunks_done(job_id), keys.job_deliveries(job_id)]
            doomed += [keys.job_chunk(job_id, n) for n in range(int(total or 0))]
            client.delete(*doomed)
            if frozen is not None:
                client.unlink(frozen)
            client.zrem(keys.jobs, job_id)
            jobs_removed += 1
        offset += kept
    min_id = f"{int((now - settings.audit_retention) * 1000)}-0"
    # "~" lets Redis drop whole stream nodes only: bounded work per call.
    trimmed = int(client.xtrim(keys.audit, minid=min_id, approximate=True))
    return {"index_members": pruned, "jobs": jobs_removed, "audit_entries": trimmed}


@_task(name="revoker.publish_pending_jobs")
def publish_pending_jobs(grace: float = OUTBOX_GRACE_SECONDS) -> int:
    """The outbox sweep: publish jobs still pending a few seconds after their creation.

    A job published earlier but still not started after ``visibility_timeout`` is published
    again (a broker that lost it); a duplicate message is harmless, the job task is idempotent.
    """
    settings, store = _context()
    client = store.client
    keys = store.keys
    now = time.time()
    published = 0
    cutoff_ms = int((now - grace) * 1000)
    offset = 0
    while True:
        ids = [
            _text(j)
            for j in client.zrange(
                keys.jobs_pending, "-inf", cutoff_ms, byscore=True, offset=offset, num=JOB_PAGE
            )
        ]
        if not ids:
            break
        offset += len(ids)
        for job_id in ids:
            try:
                record = get_job(job_id, settings=settings)
            except JobNotFound:
                record = None
            if record is None or record.status != "pending":
                client.zrem(keys.jobs_pending, job_id)
                offset -= 1  # the entry left the set: later ones moved up a rank
                continue
            if (
                record.published_at is not None
                and now - record.published_at < settings.visibility_timeout
            ):
                continue
            if publish_job(record, settings=settings):
                published += 1
            else:
                return published  # the broker is still down: try again on the next beat
    return published
