"""The JSON bodies and query of the job endpoints, and the step from a body to a BulkRevocation.

A body model says which fields a body may carry, which of them it must, and documents them in
the OpenAPI document. It checks no value: :class:`revoker.bulk.BulkRevocation` does, for the API
as for the CLI and Python callers, so every surface accepts the same requests. The documented
type, constraints and default of each field are read from BulkRevocation's own schema.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from revoker.bulk import BulkRevocation, Scope
from revoker.job_record import JobStatus

__all__ = [
    "BODIES",
    "MAX_JOB_LIST",
    "PATH_IDS",
    "JobQuery",
    "TenantRevocationRequest",
    "UserRevocationRequest",
    "bulk_revocation",
]

#: Most jobs ``GET /jobs`` returns at once.
MAX_JOB_LIST: Final = 500

_BULK_SCHEMA: Final[dict[str, Any]] = BulkRevocation.model_json_schema()["properties"]
# What a body field states for itself: its own wording, and whether it may be left out.
_FIELD_OWN: Final = frozenset({"title", "description", "default"})


def _bulk_field(name: str, description: str, *, required: bool = False) -> Any:
    """A body field passed unchecked to BulkRevocation's field ``name`` and documented as it."""
    source = BulkRevocation.model_fields[name]
    schema = {key: value for key, value in _BULK_SCHEMA[name].items() if key not in _FIELD_OWN}
    default = ... if required or source.is_required() else source.default
    return Field(default, description=description, json_schema_extra=schema)


class TenantRevocationRequest(BaseModel):
    """Revoke a tenant's tokens: all of them, or a slice (one client app, an issue window)."""

    model_config = ConfigDict(extra="forbid", title="TenantRevocationRequest")

    reason: Any = _bulk_field("reason", "Why; kept in the audit log.")
    client_id: Any = _bulk_field("client_id", "Only tokens issued to this client application.")
    issued_after: Any = _bulk_field(
        "issued_after", "Only tokens issued after this time (RFC 3339, or unix seconds)."
    )
    issued_before: Any = _bulk_field(
        "issued_before", "Only tokens issued before this time (RFC 3339, or unix seconds)."
    )
    dry_run: Any = _bulk_field("dry_run", "Count what would be revoked; change nothing.")


class UserRevocationRequest(TenantRevocationRequest):
    """Revoke one user's tokens in one tenant (``tenant_id: null`` for tenant-less tokens)."""

    model_config = ConfigDict(extra="forbid", title="UserRevocationRequest")

    tenant_id: Any = _bulk_field(
        "tenant_id",
        "The tenant whose tokens of this user are revoked; null for tokens without "
        "a tenant. Required, so that forgetting it cannot silently revoke nothing.",
        required=True,
    )


#: The body of each scope's job endpoint.
BODIES: Final[dict[Scope, type[TenantRevocationRequest]]] = {
    "tenant": TenantRevocationRequest,
    "user": UserRevocationRequest,
}
#: The path parameter naming each scope's target.
PATH_IDS: Final[dict[Scope, str]] = {"tenant": "tenant_id", "user": "user_id"}


def bulk_revocation(scope: Scope, target: str, body: object, *, actor: str) -> BulkRevocation:
    """The request a job endpoint received: the path's id, the JSON body, the admin's subject.

    Raises pydantic's ValidationError (field names as in the body) when the request is invalid.
    """
    fields = BODIES[scope].model_validate(body).model_dump(exclude_unset=True)
    return BulkRevocation.model_validate(
        {**fields, "scope": scope, PATH_IDS[scope]: target, "actor": actor}
    )


class JobQuery(BaseModel):
    """The query of ``GET /jobs``."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(50, ge=1, le=MAX_JOB_LIST)
    status: JobStatus | None = None
