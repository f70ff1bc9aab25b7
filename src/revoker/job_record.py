"""What a bulk job is: its record, its kinds and its statuses, spelled here and nowhere else.

Below :mod:`revoker.store` (which reads and writes records), :mod:`revoker.jobs` (which
enqueues them), :mod:`revoker.tasks` (which runs them) and the CLI and admin API (which show
them), so every one of them imports the same names and none imports another for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Literal, get_args

from pydantic import BaseModel

from revoker.rules import to_us

if TYPE_CHECKING:
    from revoker.bulk import BulkRevocation

__all__ = [
    "ACTIVE_STATUSES",
    "FINISHED_STATUSES",
    "JOB_STATUSES",
    "REUSE_REASON",
    "TASK_FOR_KIND",
    "JobKind",
    "JobRecord",
    "JobStatus",
]

JobKind = Literal["tenant", "user", "family_reuse"]
#: A job is ``pending`` until a worker starts it, ``running`` until it finishes ``done`` or
#: ``failed``; a finished job never changes status again (see ``scripts/job_chunk_done.lua``).
JobStatus = Literal["pending", "running", "done", "failed"]
JOB_STATUSES: Final[tuple[JobStatus, ...]] = get_args(JobStatus)
ACTIVE_STATUSES: Final[frozenset[JobStatus]] = frozenset({"pending", "running"})
FINISHED_STATUSES: Final[frozenset[JobStatus]] = frozenset({"done", "failed"})
#: The Celery task that carries out each kind of job.
TASK_FOR_KIND: Final[dict[JobKind, str]] = {
    "tenant": "revoker.revoke_job",
    "user": "revoker.revoke_job",
    "family_reuse": "revoker.handle_family_reuse",
}

#: The reason of a family-reuse follow-up (and of its escalation to the user).
REUSE_REASON: Final = "refresh token reuse"

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

    @classmethod
    def for_request(cls, request: BulkRevocation, *, job_id: str, created_at: float) -> JobRecord:
        """The (pending) record of a job carrying out ``request``."""
        return cls(
            id=job_id,
            kind=request.scope,
            tenant_id=request.tenant_id,
            user_id=request.user_id,
            client_id=request.client_id,
            issued_after=request.after,
            issued_before=request.before,
            dry_run=request.dry_run,
            reason=request.reason,
            actor=request.actor,
            created_at=created_at,
        )

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
            to_us(self.issued_after) if self.issued_after is not None else None,
            to_us(self.issued_before) if self.issued_before is not None else None,
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
