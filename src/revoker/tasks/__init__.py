"""Celery tasks, one job per module: the bulk fan-out (:mod:`~revoker.tasks.fanout`), the
family-reuse follow-up (:mod:`~revoker.tasks.family_reuse`), expiry
(:mod:`~revoker.tasks.expiry`) and the outbox sweep (:mod:`~revoker.tasks.outbox`), over the
bulk primitives of :mod:`~revoker.tasks.buckets`.

Importing this package registers every task with ``revoker.worker.app`` (whose ``include``
names it). Job state is read and written through the store's job plans (``store.jobs``), the
fan-out's bulk traffic through ``store.bulk_exchange()``.
"""

from __future__ import annotations

from revoker.tasks.buckets import (
    READ_BUCKETS,
    SCAN_FIELDS,
    SCRIPT_FIELDS,
    WRITE_COMMANDS,
    Selection,
    delete_records,
    job_mark,
    job_selection,
    read_selected,
    revoke_buckets,
)
from revoker.tasks.expiry import JOB_PAGE, SCAN_COUNT, expire_entries
from revoker.tasks.family_reuse import handle_family_reuse
from revoker.tasks.fanout import COUNT_BATCH, plan_chunks, revoke_chunk, revoke_job
from revoker.tasks.outbox import OUTBOX_GRACE_SECONDS, _republish_stalled, publish_pending_jobs

__all__ = [
    "COUNT_BATCH",
    "JOB_PAGE",
    "OUTBOX_GRACE_SECONDS",
    "READ_BUCKETS",
    "SCAN_COUNT",
    "SCAN_FIELDS",
    "SCRIPT_FIELDS",
    "WRITE_COMMANDS",
    "Selection",
    "_republish_stalled",
    "delete_records",
    "expire_entries",
    "handle_family_reuse",
    "job_mark",
    "job_selection",
    "plan_chunks",
    "publish_pending_jobs",
    "read_selected",
    "revoke_buckets",
    "revoke_chunk",
    "revoke_job",
]
