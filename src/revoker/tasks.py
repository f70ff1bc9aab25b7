"""Celery tasks: bulk fan-out in chunks, the family-reuse follow-up, expiry and the outbox sweep.

Every kind of job (tenant, user, filtered, dry run) walks session buckets (see ``keys``):

* ``revoke_job`` plans the chunks: a user job reads one bucket (its user's); a tenant job counts
  the sessions of each of the tenant's buckets (HLEN, pipelined) and groups consecutive
  non-empty buckets into chunks of about ``REVOKER_CHUNK_SIZE`` sessions, stored as JSON lists in
  ``P:job:{id}:c:<n>``. It records ``chunks_total`` and dispatches one ``revoke_chunk`` task per
  chunk not yet done. A rerun (redelivery) after the plan was recorded reuses it and dispatches
  only the missing chunks.
* ``revoke_chunk`` reads its buckets (HSCAN, a page of several buckets per round trip), selects
  the records the job covers, writes their revoked marks (one HSET per bucket), records
  itself done with ``job_chunk_done.lua`` (a set of done chunk numbers makes the counts exact even
  when a chunk is rerun after a crash), and only then deletes the selected records from their
  buckets (HDEL, one per bucket). Plain pipelined commands on a raw connection, no Lua: Redis
  serves the per-request checks between them. The last chunk flips the job to ``done``.

A job covers the sessions created at or before its cut-off: the watermark it wrote (unfiltered
jobs), or its enqueue time (filtered ones), and matching its filters (user, client, issue
window). Creation times never change, so a rerun selects exactly what the first run did, until
the records are deleted, which happens only after the chunk is counted. A session created
after the cut-off is never touched (nothing it issued is covered by the watermark either).

Audit: one stream entry per chunk listing its family ids (about 25 bytes per session rather than
a stream entry of ~100 bytes each), and every revoked mark's reason names the job. The audit
is at least once: a chunk killed after its audit entry but before it recorded itself done writes
a second entry when rerun; the counts in the job record are exactly once.

Redelivery cap: each chunk counts its deliveries (and retries) in ``P:job:{id}:dlv``. Past
``max_redeliveries`` the chunk is parked and the job marked failed with a clear error, instead
of looping forever on a poison message.

Lost messages: a running job is listed in ``P:jobs:running``; the outbox sweep
(``publish_pending_jobs``) publishes again a job whose progress has not moved for a visibility
timeout (:func:`_republish_stalled`), so a chunk message the broker lost does not leave its job
running for ever.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import hiredis
import redis

from revoker import keys as k
from revoker._extras import requires_extra
from revoker.exceptions import JobNotFound
from revoker.jobs import JobRecord, get_job, publish_job
from revoker.rules import encode_mark, now_us, to_us
from revoker.settings import RevokerSettings, get_settings
from revoker.store import StoreCore, SyncRedisTokenRevocationStore, get_sync_revocation_store
from revoker.store._base import load_script
from revoker.worker import BEAT_EXPIRE_SECONDS, app

with requires_extra("worker", __name__):
    from celery import Task
    from celery.exceptions import SoftTimeLimitExceeded

__all__ = [
    "OUTBOX_GRACE_SECONDS",
    "Selection",
    "expire_entries",
    "handle_family_reuse",
    "plan_chunks",
    "publish_pending_jobs",
    "revoke_buckets",
    "revoke_chunk",
    "revoke_job",
]

log = logging.getLogger(__name__)

#: Buckets counted (HLEN, O(1) each) per round trip while a tenant job plans its chunks.
COUNT_BATCH = 1_000
#: Buckets read per round trip by a chunk. Redis runs every command of one read (up to 16 KB)
#: before serving another client, and an HSCAN of a ~120-session bucket costs it ~90 µs: the
#: less a worker has in flight, the shorter a per-request check queues behind it (`make bench`:
#: check p99 during a fan-out by two workers ~4 ms with 16 buckets and 2,000 SETs in flight,
#: ~2.4 ms with 2 and 100, for ~8% fewer sessions/s).
READ_BUCKETS = 2
#: Fields per HSCAN call. A listpack bucket (Redis's compact encoding, up to 128 fields) comes
#: whole whatever the COUNT; only a bucket grown past that is paged.
SCAN_FIELDS = 500
#: Write commands per round trip (an HSET of one bucket's marks, ~120 fields, and two EXPIREs).
WRITE_COMMANDS = 6
#: Keys examined per SCAN call of the expiry task (~1 µs of Redis each under load).
SCAN_COUNT = 200
#: Jobs handled per page by the expiry task and the outbox sweep.
JOB_PAGE = 200
#: Seconds a new job is left to its own publish before the outbox sweep publishes it.
OUTBOX_GRACE_SECONDS = 5.0

_SCRIPTS = ("job_chunk_done",)
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


# --- the write path (no Lua) ---------------------------------------------------------------------


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


class Selection:
    """Which session records a job covers, tested on raw records (the fan-out's hot path).

    Created at or before ``cutoff_us``, of ``user_id`` if given, of the job's client if it names
    one, and created inside its issue window if it has one (inclusive, whole µs).
    """

    def __init__(self, record: JobRecord, cutoff_us: int, user_id: str | None = None) -> None:
        self.cutoff_us = cutoff_us
        self.user = k.escape_part(user_id).encode() if user_id is not None else None
        self.client = (
            k.escape_part(record.client_id).encode() if record.client_id is not None else None
        )
        self.after_us, self.before_us = record.window_us()

    def __call__(self, flat: Sequence[bytes]) -> list[bytes]:
        """The selected family ids of an HSCAN page (field, value, field, value...)."""
        cutoff, user, client = self.cutoff_us, self.user, self.client
        after, before = self.after_us, self.before_us
        out: list[bytes] = []
        for n in range(0, len(flat), 2):
            # user | client | created | the rest
            parts = flat[n + 1].split(b"|", 3)
            if len(parts) < 4 or not parts[2].isdigit():
                continue  # not a record this version wrote: left alone
            created = int(parts[2])
            if created > cutoff:
                continue
            if user is not None and parts[0] != user:
                continue
            if client is not None and parts[1] != client:
                continue
            if (after is not None and created < after) or (before is not None and created > before):
                continue
            out.append(flat[n])
        return out


def read_selected(
    exchange: Callable[[list[Any]], list[Any]],
    base: str,
    buckets: Sequence[int],
    select: Selection,
) -> dict[int, list[bytes]]:
    """The selected family ids of each bucket, read with pipelined HSCANs."""
    selected: dict[int, list[bytes]] = {}
    pending: list[tuple[int, bytes]] = [(b, b"0") for b in buckets]
    while pending:
        batch, pending = pending[:READ_BUCKETS], pending[READ_BUCKETS:]
        replies = exchange(
            [("HSCAN", f"{base}{b}", cursor, "COUNT", SCAN_FIELDS) for b, cursor in batch]
        )
        for (bucket, _), (cursor, flat) in zip(batch, replies, strict=True):
            if isinstance(flat, dict):  # a redis-py pipeline (cluster, fakeredis) parses HSCAN
                flat = [item for pair in flat.items() for item in pair]
            chosen = select(flat)
            if chosen:
                selected.setdefault(bucket, []).extend(chosen)
            if cursor not in (b"0", 0, "0"):
                pending.append((bucket, cursor))
    # HSCAN may return a field twice while a big (hashtable) bucket is rehashed.
    return {b: list(dict.fromkeys(ids)) for b, ids in selected.items()}


def revoke_buckets(
    store: SyncRedisTokenRevocationStore,
    buckets: Sequence[int],
    *,
    tenant_id: str | None,
    select: Selection,
    mark: str | None,
) -> dict[int, list[bytes]]:
    """Revoke the selected sessions of some buckets of a tenant; returns them by bucket.

    Per bucket, one HSET of the selected families' marks into its revoked-mark bucket (and its
    TTL), ``WRITE_COMMANDS`` commands per round trip; ``mark`` None (a dry run) writes nothing.
    The records stay: the caller deletes them (:func:`delete_records`) once it has counted them.
    Idempotent: a rerun selects the same families and rewrites the same marks.
    """
    keys = store.keys
    ttl = k.family_ttl(store.settings.refresh_token_ttl, store.settings.leeway)
    with _exchange(store) as exchange:
        selected = read_selected(exchange, keys.session_bucket_base(tenant_id), buckets, select)
        if mark is None:
            return selected
        mark_b = mark.encode()
        commands: list[Any] = []
        for bucket, ids in selected.items():
            marks = keys.revoked_bucket(tenant_id, bucket)
            for start in range(0, len(ids), SCAN_FIELDS):
                part = ids[start : start + SCAN_FIELDS]
                commands.append(("HSET", marks, *(x for fid in part for x in (fid, mark_b))))
            commands += StoreCore.bucket_ttl_commands(marks, ttl)
        for start in range(0, len(commands), WRITE_COMMANDS):
            exchange(commands[start : start + WRITE_COMMANDS])
    return selected


def delete_records(
    store: SyncRedisTokenRevocationStore,
    tenant_id: str | None,
    selected: dict[int, list[bytes]],
) -> None:
    """Delete revoked sessions' records from their buckets (HDEL, a few hundred per command)."""
    base = store.keys.session_bucket_base(tenant_id)
    commands: list[Any] = []
    for bucket, ids in selected.items():
        for start in range(0, len(ids), SCAN_FIELDS):
            commands.append(("HDEL", f"{base}{bucket}", *ids[start : start + SCAN_FIELDS]))
    if not commands:
        return
    with _exchange(store) as exchange:
        for start in range(0, len(commands), READ_BUCKETS):
            exchange(commands[start : start + READ_BUCKETS])


def _cutoff_us(record: JobRecord) -> int:
    """A job covers sessions created at or before its watermark (or, without one, its enqueue)."""
    return to_us(record.watermark_at if record.watermark_at is not None else record.created_at)


def _selection(record: JobRecord) -> Selection:
    return Selection(record, _cutoff_us(record), record.user_id if record.kind == "user" else None)


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
    _release_job(store, job_id)


def _release_job(store: SyncRedisTokenRevocationStore, job_id: str) -> None:
    """Take a finished job off the running list and free its idempotency key (if still ours).

    The chunk lists stay until the job record expires: a chunk redelivered after the job
    finished (killed between counting itself and deleting its records) still needs its list.
    """
    client = store.client
    client.zrem(store.keys.jobs_running, job_id)
    idem_key = client.hget(store.keys.job(job_id), "idem_key")
    if idem_key is not None and client.get(idem_key) == job_id.encode():
        client.delete(idem_key)


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


def plan_chunks(store: SyncRedisTokenRevocationStore, record: JobRecord) -> int:
    """Split the job's buckets into chunk lists stored in Redis; returns the number of chunks.

    A user job has one bucket, its user's. A tenant job counts every bucket of the tenant (HLEN,
    O(1), ``COUNT_BATCH`` per round trip) and groups consecutive non-empty ones into chunks of at
    least ``chunk_size`` sessions (the last may be smaller).
    """
    settings = store.settings
    keys = store.keys
    groups: list[list[int]] = []
    if record.kind == "user":
        assert record.user_id is not None
        groups.append([k.bucket_of_user(record.user_id, settings.session_buckets)])
    else:
        base = keys.session_bucket_base(record.tenant_id)
        group: list[int] = []
        size = 0
        with _exchange(store) as exchange:
            for start in range(0, settings.session_buckets, COUNT_BATCH):
                numbers = range(start, min(settings.session_buckets, start + COUNT_BATCH))
                counts = exchange([("HLEN", f"{base}{b}") for b in numbers])
                for bucket, count in zip(numbers, counts, strict=True):
                    if not count:
                        continue
                    group.append(bucket)
                    size += int(count)
                    if size >= settings.chunk_size:
                        groups.append(group)
                        group, size = [], 0
        if group:
            groups.append(group)
    pipe = store.client.pipeline(transaction=False)
    for n, buckets in enumerate(groups):
        pipe.set(keys.job_chunk(record.id, n), json.dumps(buckets), ex=settings.job_retention)
        if len(pipe) >= 100:
            pipe.execute()
    pipe.execute()
    return len(groups)


@_task(bind=True, name="revoker.revoke_job", ignore_result=True, max_retries=None)
def revoke_job(self: Task, job_id: str) -> None:
    """Plan the job's chunks of buckets and dispatch them (idempotent on redelivery)."""
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
    pipe.zadd(keys.jobs_running, {job_id: time.time()})
    pipe.hget(job_key, "snapshot")
    snapshotted = pipe.execute()[-1] is not None
    if snapshotted:
        total = int(client.hget(job_key, "chunks_total") or 0)
    else:
        if task.request.id is not None:  # None when called directly, not by a worker
            task.update_state(state="PROGRESS", meta={"job_id": job_id, "phase": "snapshot"})
        total = plan_chunks(store, record)
        client.hset(job_key, mapping={"chunks_total": total, "snapshot": "1"})
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


def _delete_revoked(store: SyncRedisTokenRevocationStore, job_id: str, chunk: int) -> None:
    """Delete the records a counted chunk revoked (it selects the same ones again)."""
    try:
        record = get_job(job_id, settings=store.settings)
    except JobNotFound:
        return
    if record.dry_run:
        return
    selected = _revoke_chunk(store, record, chunk, mark=None)
    if selected is not None:
        delete_records(store, record.tenant_id, selected)


def _revoke_chunk(
    store: SyncRedisTokenRevocationStore, record: JobRecord, chunk: int, *, mark: str | None
) -> dict[int, list[bytes]] | None:
    """:func:`revoke_buckets` on the buckets of one chunk of ``record``, with the job's
    selection; None when the chunk's bucket list is gone."""
    raw = store.client.get(store.keys.job_chunk(record.id, chunk))
    if raw is None:
        return None
    return revoke_buckets(
        store, json.loads(raw), tenant_id=record.tenant_id, select=_selection(record), mark=mark
    )


@_task(bind=True, name="revoker.revoke_chunk", max_retries=None)
def revoke_chunk(self: Task, job_id: str, chunk: int) -> dict[str, Any]:
    """Revoke one chunk of a job; rerunning it changes nothing and counts nothing twice."""
    settings, store = _context()
    client = store.client
    keys = store.keys
    if client.sismember(keys.job_chunks_done(job_id), chunk):
        # Counted, but maybe killed before it deleted its records: finish that (idempotent).
        _delete_revoked(store, job_id, chunk)
        return {"job_id": job_id, "chunk": chunk, "already_done": True}
    deliveries = int(client.hincrby(keys.job_deliveries(job_id), str(chunk), 1))
    if deliveries > settings.max_redeliveries:
        _park_chunk(store, job_id, chunk, deliveries)
        return {"job_id": job_id, "chunk": chunk, "parked": True}
    try:
        record = get_job(job_id, settings=settings)
        selected = _revoke_chunk(
            store, record, chunk, mark=None if record.dry_run else _job_mark(record)
        )
        if selected is None:
            raise LookupError(f"the bucket list of chunk {chunk} is gone")
        ids = [fid for fids in selected.values() for fid in fids]
        matched = len(ids)
        revoked = 0 if record.dry_run else matched
        listed = b" ".join(ids).decode()
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
        if revoked:
            # Only now: a rerun before this point must find the records it selected the first time.
            delete_records(store, record.tenant_id, selected)
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
        _release_job(store, job_id)
    meta = _report(self, store, job_id)
    return {"job_id": job_id, "chunk": chunk, "matched": matched, "revoked": revoked, **meta}


@_task(bind=True, name="revoker.handle_family_reuse", max_retries=None)
def handle_family_reuse(self: Task, job_id: str) -> dict[str, Any]:
    """After a refresh-token reuse: audit, record clean-up, optional escalation to the user."""
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
    pipe.zadd(keys.jobs_running, {job_id: time.time()})
    pipe.execute()
    tenant, user = record.tenant_id, record.user_id
    # The rotation that saw the reuse already wrote the family's marker; only its record is left.
    family_bucket = k.family_bucket(record.family_id)
    if family_bucket is not None:
        client.hdel(keys.session_bucket(tenant, family_bucket), record.family_id)
    revoked = 1
    extra: dict[str, Any] = {}
    audit = store.core.audit_command(
        "family_reuse", record.family_id, tenant_id=tenant, reason=record.reason,
        actor=record.actor, at_us=now_us(), extra={"user": user, "job": job_id},
    )  # fmt: skip
    client.execute_command(*audit)
    if settings.reuse_escalation == "user":
        watermark = record.watermark_at
        if watermark is None:
            watermark = store.revoke_user_tokens(
                user, tenant_id=tenant, reason=record.reason, actor="system"
            )
            # Recorded at once: a rerun after a crash keeps this cut-off instead of moving it
            # past the logins made since.
            client.hset(keys.job(job_id), "watermark_at", repr(watermark))
        extra["watermark_at"] = repr(watermark)
        select = Selection(record, to_us(watermark), user)
        selected = revoke_buckets(
            store,
            [k.bucket_of_user(user, settings.session_buckets)],
            tenant_id=tenant,
            select=select,
            mark=_job_mark(record),
        )
        delete_records(store, tenant, selected)
        revoked += sum(len(ids) for ids in selected.values())
    extra.update(chunks_total=1, chunks_done=1, families_matched=revoked, families_revoked=revoked)
    _finish_job(store, job_id, "done", extra=extra)
    return _report(task, store, job_id)


@_task(name="revoker.expire_entries")
def expire_entries(slices: int = 1) -> dict[str, int]:
    """Prune expired session records and revoked marks, finished jobs past retention, and old
    audit entries.

    Reading every record and mark costs ~2 s of worker CPU and ~1.4 s of Redis per million per
    run, so the beat schedule passes ``slices``: each run then reads the buckets of one slice
    (bucket number modulo ``slices``, the slice turning with the clock), and an expired entry
    waits at most ``slices`` runs. Nothing it deletes can verify any more, so a late deletion
    only costs memory meanwhile.
    """
    settings, store = _context()
    client = store.client
    keys = store.keys
    now = time.time()
    part = (max(1, slices), int(now // BEAT_EXPIRE_SECONDS) % max(1, slices))
    pruned = _prune_sessions(store, now, part)
    marks = _prune_marks(store, now, part)
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
            pipe.hmget(keys.job(job_id), ["status", "chunks_total"])
        kept = 0
        for job_id, (status, total) in zip(ids, pipe.execute(), strict=True):
            if status is not None and _text(status) not in ("done", "failed"):
                kept += 1  # still active: an operator must see it
                continue
            doomed = [keys.job(job_id), keys.job_chunks_done(job_id), keys.job_deliveries(job_id)]
            doomed += [keys.job_chunk(job_id, n) for n in range(int(total or 0))]
            client.delete(*doomed)
            client.zrem(keys.jobs, job_id)
            jobs_removed += 1
        offset += kept
    min_id = f"{int((now - settings.audit_retention) * 1000)}-0"
    # "~" lets Redis drop whole stream nodes only: bounded work per call.
    trimmed = int(client.xtrim(keys.audit, minid=min_id, approximate=True))
    return {
        "sessions": pruned,
        "revoked_marks": marks,
        "jobs": jobs_removed,
        "audit_entries": trimmed,
    }


def _in_slice(key: bytes, part: tuple[int, int]) -> bool:
    """Whether a bucket key (``...:<n>`` or ``...:x<n>``) is in slice ``part[1]`` of ``part[0]``."""
    slices, slot = part
    number = key.rpartition(b":")[2].lstrip(b"x")
    return slices == 1 or (number.isdigit() and int(number) % slices == slot)


def _prune_marks(
    store: SyncRedisTokenRevocationStore, now: float, part: tuple[int, int] = (1, 0)
) -> int:
    """Delete the revoked families' marks older than the refresh lifetime plus leeway (no token
    of such a family can still verify); returns how many."""
    ttl = k.family_ttl(store.settings.refresh_token_ttl, store.settings.leeway)
    limit = int((now - ttl) * 1_000_000)
    return _prune_buckets(
        store, store.keys.revoked_bucket_pattern(), part, lambda mark: _mark_before(mark, limit)
    )


def _mark_before(mark: bytes, limit_us: int) -> bool:
    at = mark.partition(b"|")[0]
    return at.isdigit() and int(at) < limit_us


def _expired(record: bytes, limit: int) -> bool:
    parts = record.split(b"|", 4)
    return len(parts) > 3 and parts[3].isdigit() and int(parts[3]) < limit


def _prune_sessions(
    store: SyncRedisTokenRevocationStore, now: float, part: tuple[int, int] = (1, 0)
) -> int:
    """Delete the records of sessions whose refresh token can no longer verify; returns how many.

    Past ``expires`` plus the leeway no rotation can touch a record again, so reading it and
    deleting it in two steps races nothing.
    """
    limit = int(now) - store.settings.leeway
    return _prune_buckets(
        store, store.keys.session_bucket_pattern(), part, lambda record: _expired(record, limit)
    )


def _prune_buckets(
    store: SyncRedisTokenRevocationStore,
    pattern: str,
    part: tuple[int, int],
    doomed: Callable[[bytes], bool],
) -> int:
    """Delete the fields whose value is ``doomed`` from every bucket matching ``pattern`` in
    slice ``part``; returns how many. Buckets found by SCAN, read by HSCAN pages (bounded steps).
    """
    client = store.client
    pruned = 0
    for key in client.scan_iter(match=pattern, count=SCAN_COUNT):
        if not _in_slice(key, part):
            continue
        cursor: int = 0
        while True:
            cursor, page = client.hscan(key, cursor, count=SCAN_FIELDS)
            gone = [field for field, value in page.items() if doomed(value)]
            if gone:
                pruned += int(client.hdel(key, *gone))
            if not cursor:
                break
    return pruned


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
    return published + _republish_stalled(store, now)


def _republish_stalled(store: SyncRedisTokenRevocationStore, now: float) -> int:
    """Publish again the task of every running job whose progress has not moved for a
    visibility timeout; returns how many.

    A worker killed between taking a message from the Redis broker (BRPOP) and recording it as
    unacknowledged loses that message: kombu never restores it, and a job waiting for that chunk
    would stay running for ever. The job task is idempotent and re-dispatches only the chunks not
    done (duplicates of a running chunk are harmless: the first to finish counts), so republishing
    a stalled job is always safe. Progress is ``chunks_done``, watched here (``watch_done``).
    """
    client = store.client
    keys = store.keys
    stalled_before = now - store.settings.visibility_timeout
    republished = 0
    for raw in client.zrange(keys.jobs_running, 0, JOB_PAGE - 1):
        job_id = _text(raw)
        fields = ["status", "chunks_done", "watch_done"]
        status, done, watched = client.hmget(keys.job(job_id), fields)
        if status is None or _text(status) != "running":
            client.zrem(keys.jobs_running, job_id)  # finished (or expired) meanwhile
            continue
        if done != watched:  # it moved: note where, and when
            client.hset(keys.job(job_id), "watch_done", done or b"0")
            client.zadd(keys.jobs_running, {job_id: now})
            continue
        if (client.zscore(keys.jobs_running, job_id) or now) > stalled_before:
            continue
        log.warning("job %s made no progress for %ss: publishing it again", job_id,
                    store.settings.visibility_timeout)  # fmt: skip
        try:
            record = get_job(job_id, settings=store.settings)
        except JobNotFound:
            continue
        if publish_job(record, settings=store.settings):
            client.zadd(keys.jobs_running, {job_id: now})
            republished += 1
    return republished
