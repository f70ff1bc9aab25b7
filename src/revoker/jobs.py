"""Enqueue bulk revocations: immediate watermark, durable job record, then publish (an outbox).

The order is the guarantee:

1. without filters, the tenant or user watermark is written first, synchronously: enforcement is
   immediate whatever the size of the tenant;
2. the job is recorded in Redis (status ``pending``) with its idempotency key;
3. the Celery task is published. If that fails (broker down) the job stays ``pending`` and
   ``publish_pending_jobs`` (beat) publishes it later: nothing accepted is lost.

Every function here is synchronous; the async admin API calls them in a thread pool.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any, Literal

from pydantic import BaseModel

from revoker.bulk import BulkRevocation
from revoker.exceptions import DuplicateJob, InvalidIdentifier, JobNotFound, StoreUnavailable
from revoker.keys import KeyLayout, escape_id
from revoker.settings import RevokerSettings, get_settings
from revoker.store import SyncRedisTokenRevocationStore, get_sync_revocation_store
from revoker.store._base import BACKEND_ERRORS

__all__ = [
    "ACTIVE_STATUSES",
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
    "publish_job",
    "wait_for_job",
]

log = logging.getLogger(__name__)

JobKind = Literal["tenant", "user", "family_reuse"]
JobStatus = Literal["pending", "running", "done", "failed"]
ACTIVE_STATUSES: frozenset[str] = frozenset({"pending", "running"})
FINISHED_STATUSES: frozenset[str] = frozenset({"done", "failed"})
#: The Celery task that carries out each kind of job.
TASK_FOR_KIND: dict[str, str] = {
    "tenant": "revoker.revoke_job",
    "user": "revoker.revoke_job",
    "family_reuse": "revoker.handle_family_reuse",
}
MAX_REASON_LENGTH = 512

_INT_FIELDS = ("chunks_total", "chunks_done", "families_matched", "families_revoked")
_FLOAT_FIELDS = (
    "issued_after",
    "issued_before",
    "watermark_at",
    "created_at",
    "started_at",
    "finished_at",
    "published_at",
)


class JobRecord(BaseModel):
    """One bulk job, as stored in its Redis hash."""

    id: str
    kind: JobKind
    tenant_id: str | None = None
    user_id: str | None = None
    family_id: str | None = None
    client_id: str | None = None
    issued_after: float | None = None  # unix seconds, on the family's creation time
    issued_before: float | None = None
    dry_run: bool = False
    reason: str | None = None
    actor: str | None = None
    status: JobStatus = "pending"
    chunks_total: int = 0
    chunks_done: int = 0
    families_matched: int = 0
    families_revoked: int = 0
    watermark_at: float | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    published_at: float | None = None
    error: str | None = None

    @property
    def filtered(self) -> bool:
        """True when only some sessions match (no watermark: the fan-out is the enforcement)."""
        return (
            self.client_id is not None
            or self.issued_after is not None
            or self.issued_before is not None
        )

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    def window_us(self) -> tuple[int | None, int | None]:
        """The issue window's bounds in whole µs (inclusive), None where open."""
        return (
            _stored_us(self.issued_after) if self.issued_after is not None else None,
            _stored_us(self.issued_before) if self.issued_before is not None else None,
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return self.model_dump(mode="json")

    def to_redis(self) -> dict[str, str]:
        """The hash fields (None fields are left out)."""
        out: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, bool):
                out[name] = "1" if value else "0"
            elif isinstance(value, float):
                out[name] = repr(value)
            else:
                out[name] = str(value)
        return out

    @classmethod
    def from_redis(cls, raw: dict[Any, Any]) -> JobRecord:
        data: dict[str, Any] = {
            (a.decode() if isinstance(a, bytes) else a): (b.decode() if isinstance(b, bytes) else b)
            for a, b in raw.items()
        }
        for name in _INT_FIELDS:
            if name in data:
                data[name] = int(data[name])
        for name in _FLOAT_FIELDS:
            if name in data:
                data[name] = float(data[name])
        if "dry_run" in data:
            data["dry_run"] = data["dry_run"] == "1"
        return cls.model_validate(data)


# --- helpers -------------------------------------------------------------------------------------


def _stored_us(value: str | float) -> int:
    """Integer µs of a time given in unix seconds, rounded through "%.6f" text.

    A double near 1.7e9 s does not hold 16 digits exactly: going through the text, a window bound
    equal to a session's creation time (a µs-precise iat) compares equal to it.
    """
    text = value if isinstance(value, str) else f"{value:.6f}"
    return int(Decimal(text).scaleb(6).to_integral_value())


def _store(settings: RevokerSettings | None) -> SyncRedisTokenRevocationStore:
    return get_sync_revocation_store(settings or get_settings())


def _redis_call(what: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except BACKEND_ERRORS as e:
        raise StoreUnavailable(f"Redis is unavailable ({what}): {type(e).__name__}: {e}") from e


def _to_unix(value: datetime | float | int | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware (a naive datetime is ambiguous)")
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a datetime or unix seconds, not {type(value).__name__}")
    return float(value)


def _check_text(value: str | None, name: str, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise ValueError(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string")
    if required and not value.strip():
        raise ValueError(f"{name} must not be empty")
    if len(value) > MAX_REASON_LENGTH:
        raise ValueError(f"{name} is longer than {MAX_REASON_LENGTH} characters")
    return value


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


_sender_lock = threading.Lock()
_senders: dict[tuple[str, str], Any] = {}


def _sender(settings: RevokerSettings) -> Any:
    """A Celery app that only publishes (no result backend: the job record is the state)."""
    from revoker._extras import requires_extra

    with requires_extra("worker", "publishing a job"):
        from celery import Celery

    from revoker.worker import celery_config

    key = (settings.effective_broker_url, settings.key_prefix)
    with _sender_lock:
        app = _senders.get(key)
        if app is None:
            config = celery_config(settings)
            config.pop("result_backend")
            app = Celery("revoker-sender", set_as_current=False)
            app.conf.update(config)
            _senders[key] = app
        return app


def publish_job(record: JobRecord, *, settings: RevokerSettings | None = None) -> bool:
    """Publish the job's task; True on success. A broker failure is logged, not raised."""
    settings = settings or get_settings()
    store = _store(settings)
    try:
        _sender(settings).send_task(
            TASK_FOR_KIND[record.kind], args=[record.id], task_id=record.id, retry=True
        )
    except Exception as e:  # noqa: BLE001 - kombu/amqp/redis raise many types; the outbox retries
        log.warning("publishing job %s failed, it stays pending: %s: %s", record.id, type(e), e)
        return False
    _redis_call(
        "mark published",
        lambda: store.client.hset(store.keys.job(record.id), "published_at", repr(time.time())),
    )
    return True


def _record_and_publish(record: JobRecord, settings: RevokerSettings) -> str:
    store = _store(settings)
    keys: KeyLayout = store.keys
    idem_key = keys.job_idempotency(_idempotency_digest(record))
    job_key = keys.job(record.id)
    client = store.client

    def claim() -> None:
        # NX claims the selector; a leftover claim of a finished or vanished job is taken over.
        existing_id = "unknown"
        for _ in range(3):
            if client.set(idem_key, record.id, nx=True, ex=settings.job_retention):
                return
            existing = client.get(idem_key)
            if existing is None:
                continue
            existing_id = existing.decode()
            status = client.hget(keys.job(existing_id), "status")
            if status is not None and status.decode() in ACTIVE_STATUSES:
                raise DuplicateJob(existing_id)
            client.delete(idem_key)
        # Three lost races in a row: another caller keeps claiming this very request.
        raise DuplicateJob(existing_id)

    _redis_call("claim idempotency key", claim)
    fields = record.to_redis()
    fields["idem_key"] = idem_key

    def write() -> None:
        pipe = client.pipeline(transaction=False)
        pipe.hset(job_key, mapping=fields)
        pipe.zadd(keys.jobs, {record.id: int(record.created_at * 1000)})
        # The outbox entry leaves only when a worker starts the job, not when publishing
        # succeeds: a broker that loses the message (restart without persistence) is covered.
        pipe.zadd(keys.jobs_pending, {record.id: int(record.created_at * 1000)})
        pipe.execute()

    _redis_call("record job", write)
    publish_job(record, settings=settings)
    return record.id


def new_job_id() -> str:
    """A new job id: 96 random bits in hex, so it never starts with "-" (a CLI option) and
    needs no quoting in URLs, shells or Flower's search box."""
    return secrets.token_hex(12)


def _new_record(**fields: Any) -> JobRecord:
    return JobRecord(id=new_job_id(), created_at=time.time(), **fields)


# --- the API -------------------------------------------------------------------------------------


def enqueue(request: BulkRevocation, *, settings: RevokerSettings | None = None) -> str:
    """Enqueue a validated bulk revocation; returns the job id.

    Temporary shim on the ``surfaces`` branch (the ``jobs`` branch owns the real one).
    """
    options: dict[str, Any] = {
        "reason": request.reason,
        "actor": request.actor,
        "client_id": request.client_id,
        "issued_after": request.after,
        "issued_before": request.before,
        "dry_run": request.dry_run,
        "settings": settings,
    }
    if request.scope == "tenant":
        return enqueue_tenant_revocation(request.target, **options)
    return enqueue_user_revocation(request.target, tenant_id=request.tenant_id, **options)


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

    Returns the job id. Raises InvalidIdentifier / ValueError / TypeError for bad input,
    DuplicateJob when the same request is in progress (an unfiltered request has still moved
    the watermark forward: tokens issued since the first request are refused too), and
    StoreUnavailable when Redis cannot be reached. A broker that is down is not an error: the
    job stays ``pending`` and the outbox sweep publishes it.
    """
    return _enqueue("tenant", tenant_id, None, reason, actor, client_id, issued_after,
                    issued_before, dry_run, settings)  # fmt: skip


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
    return _enqueue("user", tenant_id, user_id, reason, actor, client_id, issued_after,
                    issued_before, dry_run, settings)  # fmt: skip


def _enqueue(
    kind: Literal["tenant", "user"],
    tenant_id: str | None,
    user_id: str | None,
    reason: str,
    actor: str,
    client_id: str | None,
    issued_after: datetime | float | None,
    issued_before: datetime | float | None,
    dry_run: bool,
    settings: RevokerSettings | None,
) -> str:
    settings = settings or get_settings()
    if kind == "tenant" or tenant_id is not None:
        escape_id(tenant_id, "tenant id")
    if user_id is not None or kind == "user":
        escape_id(user_id, "user id")
    if client_id is not None:
        escape_id(client_id, "client id")
    _check_text(reason, "reason", required=True)
    _check_text(actor, "actor", required=True)
    if not isinstance(dry_run, bool):
        raise TypeError("dry_run must be a bool")
    after = _to_unix(issued_after, "issued_after")
    before = _to_unix(issued_before, "issued_before")
    if after is not None and before is not None and after > before:
        raise ValueError("issued_after must not be later than issued_before")
    record = _new_record(
        kind=kind,
        tenant_id=tenant_id,
        user_id=user_id,
        client_id=client_id,
        issued_after=after,
        issued_before=before,
        dry_run=dry_run,
        reason=reason,
        actor=actor,
    )
    if not record.filtered and not dry_run:
        store = _store(settings)
        if kind == "tenant":
            assert tenant_id is not None
            record.watermark_at = store.revoke_tenant_tokens(tenant_id, reason=reason, actor=actor)
        else:
            assert user_id is not None
            record.watermark_at = store.revoke_user_tokens(
                user_id, tenant_id=tenant_id, reason=reason, actor=actor
            )
    return _record_and_publish(record, settings)


def enqueue_family_reuse(
    family_id: str,
    *,
    tenant_id: str | None,
    user_id: str,
    settings: RevokerSettings | None = None,
) -> str:
    """Record and publish the follow-up of a detected refresh-token reuse.

    The family itself is already revoked (one write, by the rotation script); the job does the
    audit, the record clean-up and, with ``reuse_escalation="user"``, the user-wide revocation.
    """
    settings = settings or get_settings()
    escape_id(family_id, "family id")
    escape_id(user_id, "user id")
    if tenant_id is not None:
        escape_id(tenant_id, "tenant id")
    record = _new_record(
        kind="family_reuse",
        tenant_id=tenant_id,
        user_id=user_id,
        family_id=family_id,
        reason="refresh token reuse",
        actor="system",
    )
    try:
        return _record_and_publish(record, settings)
    except DuplicateJob as e:
        # Two reuses of the same family race: one follow-up is enough.
        return e.job_id


def get_job(job_id: str, *, settings: RevokerSettings | None = None) -> JobRecord:
    """The job record, or JobNotFound."""
    if not isinstance(job_id, str) or not job_id:
        raise JobNotFound(str(job_id))
    store = _store(settings)
    try:
        key = store.keys.job(job_id)
    except InvalidIdentifier:
        raise JobNotFound(job_id) from None
    raw = _redis_call("read job", lambda: store.client.hgetall(key))
    if not raw:
        raise JobNotFound(job_id)
    return JobRecord.from_redis(raw)


def list_jobs(
    *,
    limit: int = 50,
    status: str | None = None,
    settings: RevokerSettings | None = None,
) -> list[JobRecord]:
    """The newest jobs first (optionally only those with ``status``)."""
    if not isinstance(limit, int) or limit < 1 or limit > 1000:
        raise ValueError("limit must be between 1 and 1000")
    if status is not None and status not in ACTIVE_STATUSES | FINISHED_STATUSES:
        raise ValueError("status must be one of pending, running, done, failed")
    store = _store(settings)
    client = store.client
    out: list[JobRecord] = []
    offset = 0
    page = max(limit, 100)
    while len(out) < limit:
        ids: list[bytes] = _redis_call(
            "list jobs", partial(client.zrevrange, store.keys.jobs, offset, offset + page - 1)
        )
        if not ids:
            break
        offset += len(ids)
        pipe = client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(store.keys.job(job_id.decode()))
        for raw in _redis_call("read jobs", pipe.execute):
            if not raw:
                continue
            record = JobRecord.from_redis(raw)
            if status is None or record.status == status:
                out.append(record)
                if len(out) == limit:
                    break
    return out


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
