"""The follow-up of a refresh-token reuse: audit, record clean-up, and with
``reuse_escalation="user"`` the revocation of every session of the user.

The escalation is an ordinary user revocation: a :class:`~revoker.bulk.BulkRevocation` of the
user, enforced by the same watermark plan as an enqueued request, and its sessions selected and
revoked as a user job's chunk does.
"""

from __future__ import annotations

from typing import Any

from revoker import keys as k
from revoker._extras import requires_extra
from revoker.bulk import BulkRevocation
from revoker.exceptions import JobNotFound
from revoker.job_record import REUSE_REASON, JobRecord
from revoker.metrics import count_revocation
from revoker.rules import now_us, to_us
from revoker.store import SyncRedisTokenRevocationStore
from revoker.tasks._state import context, finish_job, report, retry_or_fail, task
from revoker.tasks.buckets import delete_records, job_mark, job_selection, revoke_buckets

with requires_extra("worker", __name__):
    from celery import Task

__all__ = ["handle_family_reuse"]


@task(bind=True, name="revoker.handle_family_reuse", max_retries=None)
def handle_family_reuse(self: Task, job_id: str, attempt: str | None = None) -> dict[str, Any]:
    """After a refresh-token reuse: audit, record clean-up, optional escalation to the user.

    Run by the message that owns the job only (``attempt``: see ``revoke_job``).
    """
    _settings, store = context()
    try:
        record = store.get_job(job_id)
    except JobNotFound:
        return {"job_id": job_id, "missing_job": True}
    if record.finished:
        return record.as_dict()
    try:
        return _run_family_reuse(self, store, record, attempt or "")
    except Exception as e:  # noqa: BLE001 - any failure is retried, then fails the job
        retry_or_fail(self, store, job_id, e)
        return {"job_id": job_id, "failed": True}


def _run_family_reuse(
    task: Task, store: SyncRedisTokenRevocationStore, record: JobRecord, attempt: str
) -> dict[str, Any]:
    job_id = record.id
    assert record.family_id is not None
    assert record.user_id is not None
    if not store.run(store.jobs.start_job(job_id, attempt)).run:
        return {"job_id": job_id, "duplicate": True}  # another copy of the message runs it
    tenant, user = record.tenant_id, record.user_id
    # The rotation that saw the reuse already wrote the family's marker; only its record is left.
    store.execute(store.jobs.plan_forget_session(tenant, record.family_id))
    store.execute(
        store.jobs.plan_audit(
            "family_reuse", record.family_id, tenant_id=tenant, reason=record.reason,
            actor=record.actor, at_us=now_us(), extra={"user": user, "job": job_id},
        )
    )  # fmt: skip
    revoked = 1
    fields: dict[str, str] = {}
    if store.settings.reuse_escalation == "user":
        escalated = _escalate(store, record)
        revoked += escalated
        assert record.watermark_at is not None
        fields["watermark_at"] = repr(record.watermark_at)
    fields.update(chunks_total="1", chunks_done="1", families_matched=str(revoked),
                  families_revoked=str(revoked))  # fmt: skip
    finish_job(store, job_id, "done", fields=fields)
    return report(task, store, job_id)


def _escalate(store: SyncRedisTokenRevocationStore, record: JobRecord) -> int:
    """Revoke every session of the reusing user, as a user revocation; returns how many.

    Sets ``record.watermark_at`` to the escalation's cut-off: the first run's if it recorded
    one (a rerun after a crash keeps it instead of moving it past the logins made since).
    """
    assert record.user_id is not None
    request = BulkRevocation(
        scope="user",
        tenant_id=record.tenant_id,
        user_id=record.user_id,
        reason=record.reason or REUSE_REASON,
        actor="system",
        client_id=None,
        issued_after=None,
        issued_before=None,
        dry_run=False,
    )
    if record.watermark_at is None:
        # Durable as an enqueued user revocation's watermark (REVOKER_DURABILITY): a chunk-less
        # escalation is only as safe as this one write.
        record.watermark_at = store.execute(store.jobs.plan_scope_watermark(request), durable=True)
        # Recorded at once: a rerun keeps this cut-off.
        store.execute(store.jobs.plan_record_watermark(record.id, record.watermark_at))
        count_revocation(
            "user",
            "rotation",
            target=record.user_id,
            tenant=record.tenant_id,
            actor="system",
            reason=request.reason,
        )
    escalation = JobRecord.for_request(request, job_id=record.id, created_at=record.created_at)
    selected = revoke_buckets(
        store,
        [k.bucket_of_user(request.target, store.settings.session_buckets)],
        tenant_id=request.tenant_id,
        select=job_selection(escalation, to_us(record.watermark_at)),
        mark=job_mark(record),
    )
    delete_records(store, request.tenant_id, selected)
    count_revocation(
        "family",
        "rotation",
        sum(len(ids) for ids in selected.values()),
        target=record.user_id,
        tenant=record.tenant_id,
        actor="system",
        reason=request.reason,
    )
    return sum(len(ids) for ids in selected.values())
