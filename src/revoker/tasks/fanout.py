"""The bulk fan-out: ``revoke_job`` plans a job's chunks of session buckets, ``revoke_chunk``
revokes one chunk.

Every kind of job (tenant, user, filtered, dry run) walks session buckets (see ``keys``):

* ``revoke_job`` plans the chunks: a user job reads one bucket (its user's); a tenant job counts
  the sessions of each of the tenant's buckets (HLEN, pipelined) and groups consecutive
  non-empty buckets into chunks of about ``REVOKER_CHUNK_SIZE`` sessions, stored as JSON lists in
  ``P:job:{id}:c:<n>``. It records ``chunks_total`` and dispatches one ``revoke_chunk`` task per
  chunk not yet done. A rerun (redelivery) after the plan was recorded reuses it and dispatches
  only the missing chunks. Only the message that started the job runs it: copies published
  again by the outbox sweep do nothing (``JobPlans.start_job``).
* ``revoke_chunk`` reads its buckets (HSCAN, a page of several buckets per round trip), selects
  the records the job covers, writes their revoked marks (one HSET per bucket) where the marks
  are the enforcement (a filtered job, or one without a watermark: see
  ``buckets.enforced_by_watermark``; an unfiltered job's watermark, written before the job was
  recorded, already refuses every token and rotation of its sessions), records itself done with
  ``job_chunk_done.lua`` (a set of done chunk numbers makes the counts exact even when a chunk is
  rerun after a crash), and only then removes the selected records: a bucket all of whose
  records were selected with one UNLINK (guarded by a WATCH from before the read, so a session
  started meanwhile is never dropped), others with one HDEL each. Plain pipelined commands
  through the store's bulk exchange: Redis serves the per-request checks between them.
  A chunk whose marks are its enforcement (and no destination wants per-session events, which
  are read from the records) does not read its records at all: ``scripts/chunk_buckets.lua``
  selects, marks and deletes them in Redis, a bucket or a few per call (each call one atomic
  step that also bumps the sequence, appends the feed entry and records the chunk's progress:
  ``buckets.revoke_server_side``); then the chunk audits, waits for REVOKER_DURABILITY and
  counts itself, as above.
  The last chunk finishes the job (the script decides, see ``JobPlans.plan_finish``).

A job covers the sessions created at or before its cut-off: the watermark it wrote (unfiltered
jobs), or its enqueue time (filtered ones), and matching its filters (user, client, issue
window). Creation times never change, so a rerun selects exactly what the first run did, until
the records are deleted, which happens only after the chunk is counted. A session created
after the cut-off is never touched (nothing it issued is covered by the watermark either).
(Server-side, a record is deleted in the very step that marks and counts it, in the chunk's
progress: a rerun skips the buckets finished and counts only what it deletes, so the counts are
exact there too, and its audit entry lists every family of the chunk, from the progress.)

Audit: one stream entry per chunk listing its family ids (about 25 bytes per session rather than
a stream entry of ~100 bytes each), and every revoked mark's reason names the job. The audit
is at least once: a chunk killed after its audit entry but before it recorded itself done writes
a second entry when rerun; the counts in the job record are exactly once.

Redelivery cap: each chunk counts its deliveries (and retries) in ``P:job:{id}:dlv``. Past
``max_redeliveries`` the chunk is parked and the job marked failed with a clear error, instead
of looping forever on a poison message.
"""

from __future__ import annotations

import logging
import time
from typing import Any, NoReturn

from revoker import keys as k
from revoker._extras import requires_extra
from revoker.events import emit_chunk_events
from revoker.exceptions import JobNotFound
from revoker.job_record import JobRecord
from revoker.metrics import JOB_CHUNKS_PARKED
from revoker.rules import now_us
from revoker.store import SyncRedisTokenRevocationStore
from revoker.tasks._state import (
    context,
    count_chunk,
    finish_job,
    release_job,
    report,
    retry_or_fail,
    task,
)
from revoker.tasks.buckets import (
    can_watch,
    clear_records,
    enforced_by_watermark,
    forget_progress,
    job_mark,
    job_selection,
    paced,
    per_session_events_wanted,
    read_chunk,
    revoke_server_side,
    walks_index,
    watermark_holds,
    write_marks,
)

with requires_extra("worker", __name__):
    from celery import Task
    from celery.exceptions import Ignore

__all__ = ["CLEANUP_PATIENCE", "COUNT_BATCH", "plan_chunks", "revoke_chunk", "revoke_job"]

log = logging.getLogger("revoker.tasks")

#: Buckets counted (HLEN, O(1) each) per round trip while a tenant job plans its chunks.
COUNT_BATCH = 1_000


def plan_chunks(store: SyncRedisTokenRevocationStore, record: JobRecord) -> int:
    """Split the job's buckets into chunk lists stored in Redis; returns the number of chunks.

    A user job has one bucket, its user's. A tenant job counts every bucket of the tenant (HLEN,
    O(1), ``COUNT_BATCH`` per round trip) and groups consecutive non-empty ones into chunks of at
    least ``chunk_size`` sessions (the last may be smaller). A job that walks its client's index
    (``buckets.walks_index``, recorded in the job's ``walk`` field for its chunks) counts the
    client's index buckets instead: its chunks hold ``chunk_size`` of the client's sessions.
    """
    settings = store.settings
    keys = store.keys
    groups: list[list[int]] = []
    if record.kind == "user":
        assert record.user_id is not None
        groups.append([k.bucket_of_user(record.user_id, settings.session_buckets)])
    else:
        group: list[int] = []
        size = 0
        index = walks_index(store, record)
        # Before the chunk lists: the plan is used only once recorded whole (snapshot), and a
        # replanned job records its decision again.
        store.execute(store.jobs.plan_record_walk(record.id, index=index))
        with store.bulk_exchange() as exchange:
            for start in range(0, settings.session_buckets, COUNT_BATCH):
                numbers = range(start, min(settings.session_buckets, start + COUNT_BATCH))
                if index:
                    assert record.client_id is not None
                    names = keys.client_index_buckets(record.tenant_id, record.client_id, numbers)
                else:
                    names = keys.session_buckets(record.tenant_id, numbers)
                counts = exchange([("HLEN", name) for name in names])
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
    return store.run(store.jobs.save_chunk_plan(record.id, groups))


@task(bind=True, name="revoker.revoke_job", ignore_result=True, max_retries=None)
def revoke_job(self: Task, job_id: str, attempt: str | None = None) -> None:
    """Plan the job's chunks of buckets and dispatch them (idempotent on redelivery).

    ``attempt`` names the message (see ``publish_job``): a copy that does not own the job does
    nothing; None (a message from before attempts, or a direct call) runs it as its owner.
    """
    _settings, store = context()
    try:
        record = store.get_job(job_id)
    except JobNotFound:
        log.warning("revoke_job: no job %s (expired or never recorded)", job_id)
        return
    if record.finished:
        return
    try:
        running = _run_job(self, store, record, attempt or "")
    except Exception as e:  # noqa: BLE001 - any failure is retried, then fails the job
        retry_or_fail(self, store, job_id, e)
        running = True  # failed now: its task-failed event was sent; no task-succeeded after it
    if running and self.request.id is not None:
        # Acknowledged without a task-succeeded event: in Flower the job's task (its id is the
        # job id) stays STARTED/PROGRESS until the chunk that finishes the job ends it
        # (tasks._state.job_event). Celery acks an ignored message (acks_late included).
        raise Ignore()


def _run_job(
    task: Task, store: SyncRedisTokenRevocationStore, record: JobRecord, attempt: str
) -> bool:
    """Start the job; True while its chunks still run (or another message runs it)."""
    job_id = record.id
    start = store.run(store.jobs.start_job(job_id, attempt))
    if not start.run:
        log.info("revoke_job: job %s is another message's to run; this copy does nothing", job_id)
        return True  # a copy of the job's task id must not end the job in Flower either
    total = start.chunks_total
    if total is None:
        if task.request.id is not None:  # None when called directly, not by a worker
            task.update_state(state="PROGRESS", meta={"job_id": job_id, "phase": "snapshot"})
        total = plan_chunks(store, record)
        store.execute(store.jobs.plan_record_snapshot(job_id, total))
    if total == 0:
        finish_job(store, job_id, "done")
        report(task, store, job_id)
        return False
    done = store.execute(store.jobs.plan_done_chunks(job_id))
    with task.app.producer_or_acquire() as producer:
        for n in range(total):
            if n not in done:
                revoke_chunk.apply_async((job_id, n), producer=producer)
    store.execute(store.jobs.plan_mark_dispatched(job_id, time.time()))
    return report(task, store, job_id).get("status") != "done"


@task(bind=True, name="revoker.revoke_chunk", max_retries=None)
def revoke_chunk(self: Task, job_id: str, chunk: int) -> dict[str, Any]:
    """Revoke one chunk of a job; rerunning it changes nothing and counts nothing twice."""
    settings, store = context()
    deliveries = store.run(store.jobs.begin_chunk(job_id, chunk))
    if deliveries is None:
        # Counted, but maybe killed (or failed over) before its deletes were in: finish that
        # (idempotent), again on the next delivery if Redis fails meanwhile.
        try:
            _delete_revoked_patiently(store, job_id, chunk)
        except Exception as e:  # as a chunk's own failure below: retried, never dropped
            raise self.retry(exc=e, countdown=1.0) from e
        return {"job_id": job_id, "chunk": chunk, "already_done": True}
    if deliveries > settings.max_redeliveries:
        _park_chunk(store, job_id, chunk, deliveries)
        return {"job_id": job_id, "chunk": chunk, "parked": True}
    counted = False  # the chunk counted itself done: what may fail after it is the clean-up
    try:
        record = store.get_job(job_id)
        buckets = store.execute(store.jobs.plan_chunk_buckets(job_id, chunk))
        if buckets is None:
            raise LookupError(f"the bucket list of chunk {chunk} is gone")
        # One bulk connection for the chunk: its read WATCHes the buckets that its clean-up
        # may drop whole, after the chunk is counted (see tasks.buckets.clear_records).
        with store.bulk_exchange() as bulk:
            exchange = paced(
                bulk, settings.fanout_duty_cycle, adaptive=settings.fanout_adaptive_pacing
            )
            marks = not record.dry_run and not (
                enforced_by_watermark(record) and watermark_holds(exchange, store.keys, record)
            )
            if marks and not per_session_events_wanted(store):
                # The marks are the enforcement (a filtered job): selected, marked and deleted
                # in Redis, a few buckets per atomic step (tasks.buckets.revoke_server_side),
                # through the client index where the job's plan walks it.
                walks = store.execute(store.jobs.plan_walks_index(job_id))
                index_client = record.client_id if walks else None
                done = revoke_server_side(
                    bulk, store, record, chunk, buckets, job_selection(record), job_mark(record),
                    duty_cycle=settings.fanout_duty_cycle, index_client=index_client,
                    adaptive=settings.fanout_adaptive_pacing,
                )  # fmt: skip
                matched = revoked = done.revoked
                if revoked:
                    _audit_chunk(store, record, chunk, revoked, done.family_ids)
                finished = store.execute(
                    store.jobs.plan_finish(
                        job_id, "done", chunk=chunk, matched=matched, revoked=revoked
                    )
                )
                forget_progress(exchange, store, record, chunk)
            else:
                read = read_chunk(
                    exchange, store.keys, record.tenant_id, buckets, job_selection(record),
                    watch=not record.dry_run and can_watch(store),
                )  # fmt: skip
                if marks:
                    write_marks(exchange, store, record.tenant_id, read.selected, job_mark(record))
                ids = read.family_ids
                matched = len(ids)
                revoked = 0 if record.dry_run else matched
                if revoked:
                    _audit_chunk(store, record, chunk, revoked, b" ".join(ids))
                    # The sessions' events (free unless a stream wants per-session events),
                    # before the chunk counts itself: a chunk killed in between reruns and sends
                    # them again (the same jtis: receivers deduplicate), never none.
                    emit_chunk_events(store, record, ids)
                finished = store.execute(
                    store.jobs.plan_finish(
                        job_id, "done", chunk=chunk, matched=matched, revoked=revoked
                    )
                )
                counted = True
                if revoked:
                    # Only now: a rerun before this point must find the records it selected the
                    # first time.
                    clear_records(
                        exchange, store.keys, record.tenant_id, read, settings=store.settings
                    )
                elif read.watched:
                    exchange([("UNWATCH",)])
        count_chunk(record, revoked)  # metrics and the log line, once the chunk is counted
    except JobNotFound:
        return {"job_id": job_id, "chunk": chunk, "missing_job": True}
    except Exception as e:  # noqa: BLE001 - any failure of a chunk (a soft time limit too) is retried
        if not counted:
            _retry_chunk(self, store, job_id, chunk, deliveries, e)
        # Counted, then its deletes failed (a failover, say): done here, not by a task retry,
        # which Celery drops when the broker is down too, and a job never redispatches a
        # chunk already done.
        log.warning("job %s chunk %d: clean-up failed (%s); retrying it", job_id, chunk, e)
        try:
            _delete_revoked_patiently(store, job_id, chunk)
        except Exception as again:  # noqa: BLE001 - as a chunk's own failure: a task retry
            _retry_chunk(self, store, job_id, chunk, deliveries, again)
        count_chunk(record, revoked)
    if finished:
        release_job(store, job_id)
    meta = report(self, store, job_id)
    return {"job_id": job_id, "chunk": chunk, "matched": matched, "revoked": revoked, **meta}


def _retry_chunk(
    task: Task,
    store: SyncRedisTokenRevocationStore,
    job_id: str,
    chunk: int,
    deliveries: int,
    e: BaseException,
) -> NoReturn:
    """Note the chunk's error on its job and have it delivered again."""
    message = f"{type(e).__name__}: {e}"[:500]
    try:
        store.execute(store.jobs.plan_note_error(job_id, f"chunk {chunk}: {message}"))
    except Exception:  # noqa: BLE001 - Redis may be what failed; the retry tries again
        log.debug("could not record the error of job %s", job_id)
    # Each retry is a delivery for the cap; back off a little more each time.
    raise task.retry(exc=e, countdown=min(5.0, 0.2 * deliveries)) from e


def _audit_chunk(
    store: SyncRedisTokenRevocationStore,
    record: JobRecord,
    chunk: int,
    revoked: int,
    families: bytes,
) -> None:
    """The chunk's audit entry (its ``revoked`` families, space-separated) and job counter."""
    store.execute(
        store.jobs.plan_audit(
            "job_chunk",
            record.id,
            tenant_id=record.tenant_id,
            reason=record.reason,
            actor=record.actor,
            at_us=now_us(),
            extra={"chunk": str(chunk), "count": str(revoked), "families": families.decode()},
            count=revoked,
        ),
        # REVOKER_DURABILITY's wait, after the marks (written before this entry, so it covers
        # them) and before the chunk counts itself: else it raises and is retried.
        durable=True,
    )


def _park_chunk(
    store: SyncRedisTokenRevocationStore, job_id: str, chunk: int, deliveries: int
) -> None:
    last_error = store.execute(store.jobs.plan_last_error(job_id))
    detail = f": {last_error}" if last_error else ""
    error = (
        f"chunk {chunk} parked after {deliveries - 1} deliveries "
        f"(max_redeliveries={store.settings.max_redeliveries}){detail}"
    )
    log.error("job %s: %s", job_id, error)
    JOB_CHUNKS_PARKED.inc()
    finish_job(store, job_id, "failed", error=error)


#: How long a counted chunk goes on retrying its deletes itself (a Sentinel or Cluster failover
#: takes a few seconds) before it leaves them to a task retry.
CLEANUP_PATIENCE = 30.0


def _delete_revoked_patiently(
    store: SyncRedisTokenRevocationStore, job_id: str, chunk: int
) -> None:
    """:func:`_delete_revoked`, retried in this task for up to :data:`CLEANUP_PATIENCE`."""
    deadline = time.monotonic() + CLEANUP_PATIENCE
    delay = 0.1
    while True:
        try:
            _delete_revoked(store, job_id, chunk)
        except Exception:
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(2.0, delay * 2)
        else:
            return


def _delete_revoked(store: SyncRedisTokenRevocationStore, job_id: str, chunk: int) -> None:
    """Delete the records a counted chunk revoked (it selects the same ones again)."""
    try:
        record = store.get_job(job_id)
    except JobNotFound:
        return
    if record.dry_run:
        return
    buckets = store.execute(store.jobs.plan_chunk_buckets(job_id, chunk))
    if buckets is None:
        return
    with store.bulk_exchange() as exchange:
        read = read_chunk(
            exchange, store.keys, record.tenant_id, buckets, job_selection(record),
            watch=can_watch(store),
        )  # fmt: skip
        clear_records(exchange, store.keys, record.tenant_id, read, settings=store.settings)
