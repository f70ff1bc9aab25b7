"""What every job task shares: the task decorator, its store, finishing a job, retrying, and
reporting progress. Job state itself is read and written only through the store's job plans
(``store.jobs``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, cast

from revoker._extras import requires_extra
from revoker.exceptions import JobNotFound
from revoker.job_record import JobRecord, JobStatus
from revoker.metrics import JOB_DURATION, JOB_SESSIONS_REVOKED, count_revocation
from revoker.settings import RevokerSettings, get_settings
from revoker.store import SyncRedisTokenRevocationStore, get_sync_revocation_store
from revoker.worker import app

with requires_extra("worker", __name__):
    from celery import Task

__all__ = [
    "context",
    "count_chunk",
    "finish_job",
    "job_event",
    "release_job",
    "report",
    "retry_or_fail",
    "task",
]

log = logging.getLogger("revoker.tasks")


def task(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``app.task`` with a type mypy can follow (Celery ships no annotations)."""
    return cast(Callable[[Callable[..., Any]], Any], app.task(**options))


def context() -> tuple[RevokerSettings, SyncRedisTokenRevocationStore]:
    settings = get_settings()
    return settings, get_sync_revocation_store(settings)


def finish_job(
    store: SyncRedisTokenRevocationStore,
    job_id: str,
    status: JobStatus,
    *,
    error: str | None = None,
    fields: Mapping[str, str] | None = None,
) -> None:
    """Finish a job now (unless it already is: see ``JobPlans.plan_finish``) and release it."""
    extra = dict(fields or {})
    if error is not None:
        extra["error"] = error
    store.execute(store.jobs.plan_finish(job_id, status, fields=extra))
    release_job(store, job_id)


def release_job(store: SyncRedisTokenRevocationStore, job_id: str) -> None:
    """Off the outbox and the running list, its idempotency key freed (``JobPlans.release``).

    Called once a job finished: its duration is observed, and Flower is told that the job's own
    task (whose id is the job id) ended as the job did (see :func:`job_event`).
    """
    store.run(store.jobs.release(job_id))
    try:
        record = store.get_job(job_id)
    except JobNotFound:
        return
    if not record.finished:
        return
    if record.finished_at is not None:
        JOB_DURATION.labels(record.kind, record.status).observe(
            max(0.0, record.finished_at - record.created_at)
        )
    meta = _progress(record.as_dict())
    if record.status == "done":
        job_event(job_id, "task-succeeded", result=repr(meta), runtime=_runtime(record))
    else:
        job_event(job_id, "task-failed", exception=record.error or "job failed", traceback="")
    log.info(
        "job %s %s: %d of %d sessions revoked in %d chunks",
        job_id,
        record.status,
        record.families_revoked,
        record.families_matched,
        record.chunks_done,
        extra={"event": "job_finished", **meta, "kind": record.kind, "tenant": record.tenant_id},
    )


def _runtime(record: JobRecord) -> float:
    start = record.started_at or record.created_at
    return max(0.0, (record.finished_at or start) - start)


def job_event(job_id: str, event: str, /, **fields: Any) -> None:
    """Send a task event for the job's own task (id = the job id) from inside a worker task.

    Flower builds its task list from events (not from the result backend), and a task's state
    there is the last event's: ``revoke_job`` returns without a ``task-succeeded`` while its
    chunks run (``Ignore``), the chunks' ``task-progress`` events move it to PROGRESS with the
    counts, and the chunk that finishes the job sends ``task-succeeded`` (or ``task-failed``) for
    it. Best effort, and only inside a worker task (a direct call has no broker to tell).
    ``job_id`` is positional-only: the progress fields carry a ``job_id`` of their own.
    """
    from celery import current_task

    if not current_task or current_task.request.id is None:  # a proxy: never "is None"
        return
    try:
        with app.events.default_dispatcher(hostname=current_task.request.hostname) as dispatcher:
            dispatcher.send(event, uuid=job_id, retry=False, **fields)
    except Exception as e:  # noqa: BLE001 - Flower's view is best effort; the record is the truth
        log.warning("could not send %s for job %s: %s", event, job_id, e)


def count_chunk(record: JobRecord, revoked: int) -> None:
    """A chunk counted itself done: its sessions in the metrics and the log line."""
    if revoked <= 0:
        return
    JOB_SESSIONS_REVOKED.labels(record.kind).inc(revoked)
    count_revocation(
        "family",
        "job",
        revoked,
        target=record.id,
        tenant=record.tenant_id,
        actor=record.actor,
        reason=record.reason,
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


def report(task: Task, store: SyncRedisTokenRevocationStore, job_id: str) -> dict[str, Any]:
    """Publish the job's progress: task state (CLI, API) and a task event (Flower)."""
    try:
        meta = _progress(store.get_job(job_id).as_dict())
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
            latest = _progress(store.get_job(job_id).as_dict())
            if latest["status"] == "done":
                task.backend.store_result(job_id, latest, "SUCCESS")
        # Flower's task API shows a fixed set of fields: the counts go in ``result`` too.
        if task.request.id == job_id:
            task.send_event("task-progress", result=repr(meta), **meta)
        else:
            task.send_event("task-progress", **meta)
            # The job's own task in Flower (see job_event): PROGRESS with the job's counts.
            job_event(job_id, "task-progress", result=repr(meta), **meta)
    except Exception as e:  # noqa: BLE001 - progress is best effort; the job record is the truth
        log.warning("could not report progress of job %s: %s", job_id, e)
    return meta


def retry_or_fail(
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
        finish_job(store, job_id, "failed", error=error)
    except Exception:
        # Redis itself may be what fails: nothing more can be recorded.
        log.exception("could not mark job %s failed", job_id)
