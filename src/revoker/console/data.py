"""What the console's pages read beyond the JSON API: a job's chunk state, the audit trail, the
metrics counters.

Each read is one function, so when the owners' own interfaces land (``GET /audit`` and its store
plan, from the observe work) the console switches by changing one body, not its pages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import REGISTRY

from revoker.keys import decode_time
from revoker.store._base import Plan

if TYPE_CHECKING:
    from revoker.job_record import JobRecord
    from revoker.settings import RevokerSettings
    from revoker.store import RedisTokenRevocationStore

__all__ = [
    "AUDIT_FILTERS",
    "AUDIT_PAGE",
    "AuditEntry",
    "AuditPage",
    "JobDetail",
    "job_detail",
    "metric_counters",
    "read_audit",
    "worker_names",
]

#: Audit entries per page.
AUDIT_PAGE: Final = 50
#: Entries looked at per page at most: filters over a long trail stay a bounded read.
_AUDIT_SCAN: Final = 5000
#: The filters the audit page offers (each an exact match on the entry's field).
AUDIT_FILTERS: Final = ("kind", "tenant", "actor", "target")


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class JobDetail:
    """A job record with what its page adds: per-chunk deliveries, parked chunks, last error."""

    record: JobRecord
    deliveries: dict[int, int]
    parked: list[int]
    last_error: str | None

    def as_dict(self) -> dict[str, Any]:
        record = self.record
        elapsed = None
        if record.started_at is not None:
            elapsed = (record.finished_at or time.time()) - record.started_at
        return {
            **record.as_dict(),
            "deliveries": {str(n): count for n, count in sorted(self.deliveries.items())},
            "parked": self.parked,
            "last_error": self.last_error,
            "elapsed": elapsed,
        }


async def job_detail(store: RedisTokenRevocationStore, job_id: str) -> JobDetail:
    """The job and its chunk state (JobNotFound when unknown or expired)."""
    record = await store.get_job(job_id)
    deliveries, last_error = await store.execute(store.jobs.plan_deliveries(job_id))
    # A chunk delivered more often than the cap is parked (tasks.fanout): it will not run again.
    cap = store.settings.max_redeliveries
    parked = sorted(n for n, count in deliveries.items() if count > cap)
    return JobDetail(record, deliveries, parked, last_error)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit stream entry."""

    id: str
    fields: dict[str, str]

    @property
    def at(self) -> float:
        """When it was written (unix seconds): the ``at`` field, else the stream id's time."""
        at_us = decode_time(self.fields.get("at"))
        if at_us is not None:
            return at_us / 1e6
        return int(self.id.partition("-")[0]) / 1000

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at, **self.fields}


@dataclass(frozen=True, slots=True)
class AuditPage:
    entries: list[AuditEntry]
    #: Pass as ``before`` for the next (older) page; None on the last page.
    next_before: str | None
    filters: dict[str, str] = field(default_factory=dict)


async def read_audit(
    store: RedisTokenRevocationStore,
    *,
    filters: dict[str, str],
    before: str | None = None,
    limit: int = AUDIT_PAGE,
) -> AuditPage:
    """The newest audit entries matching ``filters`` (field -> exact value), older than
    ``before`` (a stream id), newest first.

    Reads the stream ``KeyLayout.audit`` itself with XREVRANGE until the store grows an audit
    plan (observe's ``GET /audit``): the one function to switch then.
    """
    wanted = {name: value for name, value in filters.items() if value}
    found: list[AuditEntry] = []
    start = f"({before}" if before else "+"
    scanned = 0
    batch = max(limit * 4, 200)
    last_id: str | None = None
    while len(found) < limit and scanned < _AUDIT_SCAN:
        rows = await store.execute(
            Plan([("XREVRANGE", store.keys.audit, start, "-", "COUNT", batch)], lambda r: r[0])
        )
        if not rows:
            last_id = None
            break
        for raw_id, raw_fields in rows:
            entry_id = _text(raw_id)
            last_id = entry_id
            scanned += 1
            pairs = (
                raw_fields.items()
                if isinstance(raw_fields, dict)
                else zip(raw_fields[::2], raw_fields[1::2], strict=True)
            )
            entry = AuditEntry(entry_id, {_text(k): _text(v) for k, v in pairs})
            if all(entry.fields.get(name) == value for name, value in wanted.items()):
                found.append(entry)
                if len(found) == limit:
                    break
        if len(rows) < batch and len(found) < limit:
            last_id = None
            break
        start = f"({last_id}"
    return AuditPage(found, last_id, wanted)


def metric_counters() -> list[tuple[str, str, float]]:
    """This process's revoker counters behind ``/metrics``: (name, labels, value)."""
    rows: list[tuple[str, str, float]] = []
    for family in REGISTRY.collect():
        if not family.name.startswith("revoker") or family.type != "counter":
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            labels = ", ".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            rows.append((sample.name, labels, sample.value))
    return rows


def worker_names(settings: RevokerSettings, timeout: float = 0.5) -> tuple[list[str], str | None]:
    """The Celery workers that answer a broadcast ping within ``timeout`` (blocking), and the
    error when the broker could not be asked."""
    from revoker.publisher import _sender

    try:
        replies = _sender(settings).control.ping(timeout=timeout)
    except Exception as e:  # noqa: BLE001 - any broker failure is a health answer, not a 500
        return [], f"{type(e).__name__}: {e}"
    return sorted(name for reply in replies or [] for name in reply), None
