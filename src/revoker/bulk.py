"""One bulk-revocation request: what the CLI, the admin API, Python callers and the family-reuse
escalation ask for, validated here and nowhere else.

A request revokes every session of a *scope* (a tenant, or one user in one tenant), optionally
narrowed by filters (one client application, an issue window on the session's creation time).
Unfiltered requests are enforced at once by a watermark; filtered ones by the fan-out.

Every surface builds a :class:`BulkRevocation` and hands it to ``revoker.jobs.enqueue``; the
surfaces differ only in where the fields come from (path, body, options, the signed-in actor).
A bad field raises pydantic's ``ValidationError`` (a ``ValueError``) naming the field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)

from revoker.keys import MAX_ID_LENGTH, escape_id

__all__ = [
    "BODY_FIELDS",
    "MAX_REASON_LENGTH",
    "MAX_TIMESTAMP",
    "BulkRevocation",
    "Scope",
]

Scope = Literal["tenant", "user"]
#: Longest reason or actor kept in a job record and the audit trail.
MAX_REASON_LENGTH: Final = 500
#: Upper bound of a timestamp (9999-12-31T23:59:59Z): beyond it datetime arithmetic overflows.
MAX_TIMESTAMP: Final = 253_402_300_799.0
#: The fields a caller chooses freely (an API body, CLI options); scope, ids of the path and the
#: actor come from elsewhere on every surface.
BODY_FIELDS: Final = frozenset(
    {"reason", "client_id", "issued_after", "issued_before", "dry_run", "tenant_id"}
)


def _valid_id(value: str) -> str:
    # The same rule as every key: an id that could not become a key is refused before anything
    # is written (raises InvalidIdentifier, a ValueError, so pydantic reports the field).
    escape_id(value)
    return value


Identifier = Annotated[
    str, Field(min_length=1, max_length=MAX_ID_LENGTH), AfterValidator(_valid_id)
]
Timestamp = Annotated[float, Field(ge=0, le=MAX_TIMESTAMP, allow_inf_nan=False)]
Text = Annotated[str, Field(min_length=1, max_length=MAX_REASON_LENGTH)]


class BulkRevocation(BaseModel):
    """Revoke every session of a tenant, or of one user in one tenant, optionally filtered."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="BulkRevocation")

    scope: Scope = Field(description="tenant: every session of the tenant; user: one user's.")
    tenant_id: Identifier | None = Field(
        None,
        description="The tenant. Required for scope tenant; for scope user, null selects the "
        "user's tokens without a tenant.",
    )
    user_id: Identifier | None = Field(None, description="The user (scope user only).")
    reason: Text = Field(description="Why; kept in the job record and the audit log.")
    actor: Text = Field(description="Who asked: an operator, a client, or 'system'.")
    client_id: Identifier | None = Field(
        None, description="Only sessions of this client application."
    )
    issued_after: AwareDatetime | Timestamp | None = Field(
        None, description="Only sessions created at or after this time (RFC 3339 or unix s)."
    )
    issued_before: AwareDatetime | Timestamp | None = Field(
        None, description="Only sessions created at or before this time (RFC 3339 or unix s)."
    )
    dry_run: StrictBool = Field(False, description="Count what would be revoked; change nothing.")

    @field_validator("reason", "actor")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> BulkRevocation:
        if self.scope == "tenant":
            if self.tenant_id is None:
                raise ValueError("a tenant revocation needs tenant_id")
            if self.user_id is not None:
                raise ValueError("a tenant revocation takes no user_id")
        elif self.user_id is None:
            raise ValueError("a user revocation needs user_id")
        after, before = self.after, self.before
        if after is not None and before is not None and after > before:
            raise ValueError("issued_after must not be later than issued_before")
        return self

    @property
    def after(self) -> float | None:
        """``issued_after`` in unix seconds."""
        return _seconds(self.issued_after)

    @property
    def before(self) -> float | None:
        """``issued_before`` in unix seconds."""
        return _seconds(self.issued_before)

    @property
    def filtered(self) -> bool:
        """Only some sessions match: no watermark can enforce it, the fan-out does."""
        return self.client_id is not None or self.after is not None or self.before is not None

    @property
    def target(self) -> str:
        """The id the scope names (the tenant's or the user's)."""
        target = self.tenant_id if self.scope == "tenant" else self.user_id
        assert target is not None  # guaranteed by _consistent
        return target


def _seconds(value: datetime | float | None) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    return value
