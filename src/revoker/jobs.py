"""Enqueue bulk revocations: immediate watermark, durable job record, then publish (an outbox).

The order is the guarantee:

1. without filters, the tenant or user watermark is written first, synchronously: enforcement is
   immediate whatever the size of the tenant;
2. the job is recorded in Redis (status ``pending``) with its idempotency key;
3. the Celery task is published. If that fails (broker down) the job stays ``pending`` and
   ``publish_pending_jobs`` (beat) publishes it later: nothing accepted is lost.

A request is a :class:`~revoker.bulk.BulkRevocation` (validated there, once) handed to
:func:`enqueue`; tenant and user requests take the same path, the scope being a field. Job
storage is the store's (``store.jobs``: plans run by either store), the job's status type is
:mod:`revoker.job_record`'s, and publishing is :mod:`revoker.publisher`'s; their names are
re-exported here for the callers that import them from ``revoker.jobs``.

Every function here is synchronous; the async admin API calls them in a thread pool (the async
store has ``get_job``, ``list_jobs`` and ``record_job`` for callers that need no thread).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

from pydantic import ValidationError

from revoker.bulk import BulkRevocation
from revoker.exceptions import DuplicateJob, InvalidIdentifier
from revoker.job_record import (
    ACTIVE_STATUSES,
    FINISHED_STATUSES,
    JOB_STATUSES,
    REUSE_REASON,
    TASK_FOR_KIND,
    JobKind,
    JobRecord,
    JobStatus,
)
from revoker.keys import escape_id
from revoker.metrics import count_revocation, current_surface
from revoker.publisher import publish_job
from revoker.settings import RevokerSettings, get_settings
from revoker.store import SyncRedisTokenRevocationStore, get_sync_revocation_store

__all__ = [
    "ACTIVE_STATUSES",
    "FINISHED_STATUSES",
    "JOB_STATUSES",
    "REUSE_REASON",
    "TASK_FOR_KIND",
    "JobKind",
    "JobRecord",
    "JobStatus",
    "enqueue",
    "enqueue_family_reuse",
    "enqueue_tenant_revocation",
    "enqueue_user_revocation",
    "get_job",
    "list_jobs",
    "new_job_id",
    "publish_job",
    "wait_for_job",
]

#: BulkRevocation fields holding ids (see :func:`_request`).
_ID_FIELDS: Final = ("tenant_id", "user_id", "client_id")


# --- helpers -------------------------------------------------------------------------------------


def _store(settings: RevokerSettings | None) -> SyncRedisTokenRevocationStore:
    return get_sync_revocation_store(settings or get_settings())


def _idempotency_digest(record: JobRecord) -> str:
    selector = [
        record.kind,
        record.tenant_id,
        record.user_id,
        record.family_id,
        record.client_id,
        record.issued_after,
        record.issued_before,
        record.dry_run,
    ]
    return hashlib.sha256(json.dumps(selector).encode()).hexdigest()[:32]


def _record_and_publish(store: SyncRedisTokenRevocationStore, record: JobRecord) -> str:
    store.record_job(record, idem_key=store.keys.job_idempotency(_idempotency_digest(record)))
    publish_job(record, settings=store.settings)
    return record.id


def new_job_id() -> str:
    """A new job id: 96 random bits in hex, so it never starts with "-" (a CLI option) and
    needs no quoting in URLs, shells or Flower's search box."""
    return secrets.token_hex(12)


# --- the API -------------------------------------------------------------------------------------


def enqueue(request: BulkRevocation, *, settings: RevokerSettings | None = None) -> str:
    """Carry out a bulk revocation (a tenant's or a user's sessions, maybe filtered).

    Returns the job id. Raises DuplicateJob when the same request is in progress (an unfiltered
    request has still moved the watermark forward: tokens issued since the first request are
    refused too), and StoreUnavailable when Redis cannot be reached. A broker that is down is
    not an error: the job stays ``pending`` and the outbox sweep publishes it.
    """
    settings = settings or get_settings()
    record = JobRecord.for_request(request, job_id=new_job_id(), created_at=time.time())
    store = _store(settings)
    if not request.filtered and not request.dry_run:
        record.watermark_at = store.execute(store.jobs.plan_scope_watermark(request), durable=True)
        count_revocation(
            request.scope,
            current_surface(),
            target=request.target,
            tenant=request.tenant_id,
            actor=request.actor,
            reason=request.reason,
        )
    return _record_and_publish(store, record)


def enqueue_tenant_revocation(
    tenant_id: str,
    *,
    reason: str,
    actor: str,
    client_id: str | None = None,
    issued_after: datetime | float | None = None,
    issued_before: datetime | float | None = None,
    dry_run: bool = False,
    settings: RevokerSettings | None = None,
) -> str:
    """Revoke every session of ``tenant_id`` (or those of one client / issue window).

    :func:`enqueue` of the :class:`~revoker.bulk.BulkRevocation` these arguments make. Raises
    InvalidIdentifier for an id that cannot be stored, ValueError (pydantic's ValidationError,
    naming the field) for other bad input, and what :func:`enqueue` raises.
    """
    request = _request(
        scope="tenant", tenant_id=tenant_id, reason=reason, actor=actor, client_id=client_id,
        issued_after=issued_after, issued_before=issued_before, dry_run=dry_run,
    )  # fmt: skip
    return enqueue(request, settings=settings)


def enqueue_user_revocation(
    user_id: str,
    *,
    tenant_id: str | None,
    reason: str,
    actor: str,
    client_id: str | None = None,
    issued_after: datetime | float | None = None,
    issued_before: datetime | float | None = None,
    dry_run: bool = False,
    settings: RevokerSettings | None = None,
) -> str:
    """Revoke every session of one user in one tenant; see :func:`enqueue_tenant_revocation`."""
    request = _request(
        scope="user", tenant_id=tenant_id, user_id=user_id, reason=reason, actor=actor,
        client_id=client_id, issued_after=issued_after, issued_before=issued_before,
        dry_run=dry_run,
    )  # fmt: skip
    return enqueue(request, settings=settings)


def _request(**fields: Any) -> BulkRevocation:
    """The request of the keyword wrappers, whose contract names InvalidIdentifier for bad ids:
    a ValidationError only about ids is raised as one, in the words of the key layout."""
    try:
        return BulkRevocation(**fields)
    except ValidationError as e:
        bad = [error["loc"][0] if error["loc"] else None for error in e.errors()]
        if not all(name in _ID_FIELDS for name in bad):
            raise
        for name in _ID_FIELDS:
            if name in bad:
                try:
                    escape_id(fields[name], name.replace("_", " "))
                except InvalidIdentifier as refused:
                    raise refused from e
        raise InvalidIdentifier(str(e)) from e


def enqueue_family_reuse(
    family_id: str,
    *,
    tenant_id: str | None,
    user_id: str,
    settings: RevokerSettings | None = None,
) -> str:
    """Record and publish the follow-up of a detected refresh-token reuse.

    The family itself is already revoked (one write, by the rotation script); the job does the
    audit, the record clean-up and, with ``reuse_escalation="user"``, the user-wide revocation
    (a :class:`~revoker.bulk.BulkRevocation` of the user, see ``revoker.tasks.family_reuse``).
    """
    settings = settings or get_settings()
    escape_id(family_id, "family id")
    escape_id(user_id, "user id")
    if tenant_id is not None:
        escape_id(tenant_id, "tenant id")
    record = JobRecord(
        id=new_job_id(),
        created_at=time.time(),
        kind="family_reuse",
        tenant_id=tenant_id,
        user_id=user_id,
        family_id=family_id,
        reason=REUSE_REASON,
        actor="system",
    )
    try:
        return _record_and_publish(_store(settings), record)
    except DuplicateJob as e:
        # Two reuses of the same family race: one follow-up is enough.
        return e.job_id


def get_job(job_id: str, *, settings: RevokerSettings | None = None) -> JobRecord:
    """The job record, or JobNotFound."""
    return _store(settings).get_job(job_id)


def list_jobs(
    *,
    limit: int = 50,
    status: str | None = None,
    settings: RevokerSettings | None = None,
) -> list[JobRecord]:
    """The newest jobs first (optionally only those with ``status``)."""
    if not isinstance(limit, int) or limit < 1 or limit > 1000:
        raise ValueError("limit must be between 1 and 1000")
    if status is not None and status not in JOB_STATUSES:
        raise ValueError(f"status must be one of {', '.join(JOB_STATUSES)}")
    return _store(settings).list_jobs(limit=limit, status=status)


def wait_for_job(
    job_id: str,
    *,
    timeout: float | None = None,
    poll_interval: float = 0.2,
    on_progress: Callable[[JobRecord], None] | None = None,
    settings: RevokerSettings | None = None,
) -> JobRecord:
    """Poll until the job is done or failed; ``on_progress`` sees every change. TimeoutError."""
    deadline = None if timeout is None else time.monotonic() + timeout
    last: JobRecord | None = None
    while True:
        record = get_job(job_id, settings=settings)
        if on_progress is not None and record != last:
            on_progress(record)
        last = record
        if record.finished:
            return record
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(
                f"job {job_id} still {record.status} after {timeout}s "
                f"({record.chunks_done}/{record.chunks_total} chunks)"
            )
        time.sleep(poll_interval)
