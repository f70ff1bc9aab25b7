"""Reading the audit trail: the query (one validator for the CLI and the API), its entries, paging.

The trail is the Redis stream ``P:audit`` (see :mod:`revoker.keys`): one entry per revocation
written, by whatever wrote it (``kind``, ``target``, ``tenant``, ``reason``, ``actor``, ``at`` in
µs, and per kind a few more fields: a job chunk's ``chunk``, ``count`` and ``families``; a
refresh-reuse follow-up's ``user`` and ``job``). The stream is read a page at a time with
``XRANGE``/``XREVRANGE`` (``StoreCore.plan_audit_range``); the time window is the range itself
(stream ids are milliseconds), the other filters are applied to each entry read. A page scans at
most :data:`SCAN_BUDGET` entries: a filter matching little returns a short page and a cursor to
go on from, instead of reading the whole stream in one request.

A cursor is the id of the last entry examined; the next page starts strictly after it (before
it, newest first).
"""

from __future__ import annotations

import re
from collections.abc import Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from revoker.keys import MAX_ID_LENGTH, decode_time

if TYPE_CHECKING:
    from revoker.store._base import Plan, StoreCore

__all__ = [
    "KINDS",
    "MAX_SECONDS",
    "PAGE_SIZE",
    "SCAN_BUDGET",
    "AuditEntry",
    "AuditPage",
    "AuditQuery",
    "read_audit",
]

#: The kinds of entries revoker writes: one token, one session (family), a user's or a tenant's
#: watermark, one chunk of a bulk job (its sessions), a refresh-token reuse follow-up, a change of
#: the data's identity (a loss handled, ``revoker recover``: target the loss's kind or "recover").
KINDS: Final = ("token", "family", "user", "tenant", "job_chunk", "family_reuse", "global")
#: Entries read per round trip.
PAGE_SIZE: Final = 500
#: Entries examined per page at most, whatever the filters match.
SCAN_BUDGET: Final = 20_000
_STREAM_ID: Final = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
#: The latest time a query may name (unix seconds, year 5138): keeps stream ids in range.
MAX_SECONDS: Final = 10**11
#: Fields every entry has; the others are per kind.
_BASE_FIELDS: Final = ("kind", "target", "tenant", "reason", "actor", "at")


def _to_seconds(value: Any) -> Any:
    """Unix seconds (a number or digits) or an ISO 8601 time (UTC when no offset) to seconds."""
    if value is None or isinstance(value, int | float):
        return value
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{value!r} is neither unix seconds nor an ISO 8601 time (e.g. 2026-01-31T12:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


class AuditQuery(BaseModel):
    """What to read from the audit trail (``revoker audit``'s options, ``GET /audit``'s query)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    since: float | None = Field(
        None, ge=0, le=MAX_SECONDS, allow_inf_nan=False, description="From this time."
    )
    until: float | None = Field(
        None, ge=0, le=MAX_SECONDS, allow_inf_nan=False, description="Up to this time."
    )
    tenant: str | None = Field(None, min_length=1, max_length=MAX_ID_LENGTH)
    user: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_ID_LENGTH,
        description="A user's watermark entries and reuse follow-ups naming the user.",
    )
    actor: str | None = Field(None, min_length=1, max_length=1000)
    kind: tuple[Literal[KINDS], ...] = Field(  # type: ignore[valid-type]
        (), description="Only these kinds (comma-separated in a query string)."
    )
    limit: int = Field(100, ge=1, le=1000, description="Entries per page.")
    cursor: str | None = Field(None, description="A page's next_cursor: continue from there.")
    order: Literal["asc", "desc"] = Field("asc", description="Oldest first, or newest first.")

    @field_validator("since", "until", mode="before")
    @classmethod
    def _time(cls, value: Any) -> Any:
        return _to_seconds(value)

    @field_validator("kind", mode="before")
    @classmethod
    def _kinds(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("cursor")
    @classmethod
    def _cursor(cls, value: str | None) -> str | None:
        if value is not None and _STREAM_ID.fullmatch(value) is None:
            raise ValueError("cursor must be a next_cursor this endpoint returned (<ms>-<seq>)")
        return value

    @model_validator(mode="after")
    def _window(self) -> AuditQuery:
        if self.since is not None and self.until is not None and self.until < self.since:
            raise ValueError("until is before since")
        return self

    def matches(self, entry: AuditEntry) -> bool:
        """Whether ``entry`` passes the filters other than the time window."""
        if self.kind and entry.kind not in self.kind:
            return False
        if self.tenant is not None and entry.tenant != self.tenant:
            return False
        if self.actor is not None and entry.actor != self.actor:
            return False
        if self.user is not None:
            named = entry.target if entry.kind == "user" else entry.extra.get("user")
            if named != self.user:
                return False
        return True

    def bounds(self, cursor: str | None) -> tuple[str, str]:
        """The (low, high) stream ids to read, the cursor's side exclusive."""
        low = f"{int(self.since * 1000)}" if self.since is not None else "-"
        high = f"{int(self.until * 1000)}" if self.until is not None else "+"
        if cursor is not None:
            if self.order == "asc":
                low = f"({cursor}"
            else:
                high = f"({cursor}"
        return low, high


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit entry, decoded."""

    id: str
    kind: str
    target: str
    tenant: str | None
    actor: str | None
    reason: str | None
    #: When the revocation was written, unix seconds (µs precision).
    at: float | None
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_stream(cls, entry_id: Any, fields: Any) -> AuditEntry:
        text = {_text(k): _text(v) for k, v in (fields or {}).items()}
        at_us = decode_time(text.get("at"))
        return cls(
            id=_text(entry_id),
            kind=text.get("kind", ""),
            target=text.get("target", ""),
            tenant=text.get("tenant") or None,
            actor=text.get("actor") or None,
            reason=text.get("reason") or None,
            at=at_us / 1e6 if at_us is not None else None,
            extra={k: v for k, v in text.items() if k not in _BASE_FIELDS},
        )

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (a SIEM's line): the base fields, ``time`` in ISO 8601 UTC, the
        kind's fields (``families`` as a list, ``count`` and ``chunk`` as integers)."""
        out: dict[str, Any] = {
            "id": self.id,
            "time": (
                datetime.fromtimestamp(self.at, UTC).isoformat(timespec="microseconds")
                if self.at is not None
                else None
            ),
            "at": self.at,
            "kind": self.kind,
            "target": self.target,
            "tenant": self.tenant,
            "actor": self.actor,
            "reason": self.reason,
        }
        for name, value in self.extra.items():
            if name == "families":
                out[name] = value.split()
            elif name in ("count", "chunk") and value.isascii() and value.isdigit():
                out[name] = int(value)
            else:
                out[name] = value
        return out

    def line(self) -> str:
        """One human-readable line."""
        when = self.as_dict()["time"] or "-"
        parts = [when, self.kind, self.target]
        for name, value in (("tenant", self.tenant), ("actor", self.actor)):
            if value:
                parts.append(f"{name}={value}")
        for name, value in self.extra.items():
            if name != "families":
                parts.append(f"{name}={value}")
        if self.reason:
            parts.append(f"reason={self.reason!r}")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class AuditPage:
    """Entries matching a query, and where to go on from."""

    entries: list[AuditEntry]
    #: Set while more entries may match (pass it as ``cursor``); None once the range is read.
    next_cursor: str | None
    #: The last entry examined (matching or not), or the query's cursor: where a follower resumes.
    last_id: str | None


def read_audit(core: StoreCore, query: AuditQuery) -> Generator[Plan[Any], Any, AuditPage]:
    """A flow (``store.run``): pages of the stream until ``query.limit`` entries match, the
    range ends, or :data:`SCAN_BUDGET` entries were examined."""
    found: list[AuditEntry] = []
    cursor = query.cursor
    scanned = 0
    exhausted = False
    while len(found) < query.limit and scanned < SCAN_BUDGET:
        low, high = query.bounds(cursor)
        page: list[tuple[Any, Any]] = yield core.plan_audit_range(
            low, high, count=PAGE_SIZE, reverse=query.order == "desc"
        )
        for entry_id, fields in page:
            scanned += 1
            entry = AuditEntry.from_stream(entry_id, fields)
            cursor = entry.id
            if query.matches(entry):
                found.append(entry)
                if len(found) == query.limit:
                    break
        if len(page) < PAGE_SIZE and (not page or cursor == _text(page[-1][0])):
            exhausted = True
            break
    return AuditPage(found, None if exhausted else cursor, cursor)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
