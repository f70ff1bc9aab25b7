"""The whole Redis key layout and every TTL rule. Pure: no I/O.

Layout (``P`` is ``REVOKER_KEY_PREFIX``; ``<x>`` is an escaped id)::

    P:jti:{<jti>}                  string  "<revoked_at_us>|<reason>"  one revoked token
    P:{<T>}:fr:<family>            string  "<revoked_at_us>|<reason>"  one revoked family (session)
    P:{<T>}:f:<family>             hash    the family (session) record, see FAMILY_FIELDS
    P:{<T>}:uw:<user>              string  "<revoked_at_us>" user watermark
    P:{<T>}:tw                     string  "<revoked_at_us>" tenant watermark
    P:{<T>}:ti                     zset    tenant index: family ids scored by expiry (unix s)
    P:{<T>}:ui:<user>              zset    user index: family ids scored by expiry (unix s)
    P:{<T>}:tj:<job_id>            zset    a tenant index frozen by an unfiltered tenant job
    P:job:{<job_id>}               hash    one bulk job record
    P:job:{<job_id>}:c:<n>         string  family ids of chunk n of the job's snapshot
    P:job:{<job_id>}:done          set     chunk numbers finished (each counted once)
    P:job:{<job_id>}:dlv           hash    chunk number -> deliveries (redelivery cap)
    P:jobs                         zset    job ids scored by creation time (ms)
    P:jobs:pending                 zset    outbox: jobs not yet started, by creation time (ms)
    P:jobkey:<digest>              string  idempotency key -> job id while the job is active
    P:audit                        stream  append-only audit of every revocation
    P:stats                        hash    revocation counters

``<T>`` is the tenant's hash tag: ``t:<tenant>``, or ``-`` for tokens without a tenant. Everything
of one tenant shares a Redis Cluster slot, so the check needs at most two slots (the jti's and the
tenant's) and a fan-out chunk touches one. The jti key is tagged by the jti alone: revoking a token
never requires knowing its tenant.

Ids are percent-escaped so that no id can contain ``{``, ``}`` or ``:``: no user, tenant or jti
string can forge another key or move a key to another slot.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

from revoker.exceptions import InvalidIdentifier

__all__ = [
    "FAMILY_FIELDS",
    "MAX_ID_LENGTH",
    "NO_TENANT_TAG",
    "KeyLayout",
    "escape_id",
    "family_ttl",
    "jti_ttl",
    "tenant_tag",
    "watermark_ttl",
]

#: Longest id accepted (jti, user, tenant, family, client). Longer ids are rejected, not truncated.
MAX_ID_LENGTH: Final = 256
#: Characters left as they are in keys; everything else (braces, colons, %, spaces, non-ASCII)
#: is percent-encoded, which keeps escaping injective.
_SAFE_CHARS: Final = "-._~@+=!$&'()*,;"
#: Ids made only of characters quote() never changes are their own escape. Nearly every id is
#: (jtis, uuids, slugs), and the per-request check escapes four of them: skip quote() for those.
_UNCHANGED_BY_QUOTE: Final = re.compile(r"[A-Za-z0-9_.~\-@+=!$&'()*,;]+")
#: Hash tag of tokens that carry no tenant. Never the escape of a real tenant (those start "t:").
NO_TENANT_TAG: Final = "-"
#: Field names of the family (session) hash: short, because there is one hash per session.
FAMILY_FIELDS: Final = {
    "user": "u",
    "tenant": "t",
    "client": "c",
    "created": "cr",  # unix seconds, float
    "expires": "ex",  # unix seconds, int
    "current": "cur",  # the jti of the family's one current refresh token
    "previous": "prv",  # the jti it replaced (grace-window retries)
    "rotated": "rot",  # unix seconds, float, of the last rotation
    "scopes": "sc",  # space-separated
    "successor": "nxt",  # the current access jti, for a grace-window retry
    "issued": "ia",  # integer µs iat of the current pair: a grace retry re-signs the same claims
}


def escape_id(value: object, what: str = "id") -> str:
    """Escape ``value`` for use inside a key, or raise InvalidIdentifier."""
    if not isinstance(value, str):
        raise InvalidIdentifier(f"{what} must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidIdentifier(f"{what} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidIdentifier(f"{what} is longer than {MAX_ID_LENGTH} characters")
    if _UNCHANGED_BY_QUOTE.fullmatch(value) is not None:
        return value
    try:
        return quote(value, safe=_SAFE_CHARS)
    except UnicodeEncodeError:
        # A lone surrogate (JSON "\ud800" decodes to one) has no UTF-8 form.
        raise InvalidIdentifier(f"{what} is not valid Unicode text") from None


def tenant_tag(tenant_id: str | None) -> str:
    """The hash tag shared by every key of one tenant."""
    if tenant_id is None:
        return NO_TENANT_TAG
    return "t:" + escape_id(tenant_id, "tenant id")


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """Builds every key revoker uses, under one prefix."""

    prefix: str = "revoker"

    def __post_init__(self) -> None:
        if not self.prefix or any(c in self.prefix for c in "{}: "):
            raise InvalidIdentifier("key prefix must be non-empty without braces, colons or spaces")

    def jti(self, jti: str) -> str:
        """A revoked token. Tagged by the jti alone."""
        return f"{self.prefix}:jti:{{{escape_id(jti, 'jti')}}}"

    def family(self, tenant_id: str | None, family_id: str) -> str:
        """The session record of one refresh family."""
        return f"{self.prefix}:{{{tenant_tag(tenant_id)}}}:f:{escape_id(family_id, 'family id')}"

    def family_revoked(self, tenant_id: str | None, family_id: str) -> str:
        """Marker of a revoked family, read by the per-request check."""
        return f"{self.prefix}:{{{tenant_tag(tenant_id)}}}:fr:{escape_id(family_id, 'family id')}"

    def family_keys(
        self, tenant_id: str | None, family_ids: Sequence[str]
    ) -> tuple[list[str], list[str]]:
        """``family`` and ``family_revoked`` of many families of one tenant, for the fan-out's
        hot path: the tenant's tag is escaped once and each family id once."""
        base = f"{self.prefix}:{{{tenant_tag(tenant_id)}}}"
        escaped = [escape_id(fid, "family id") for fid in family_ids]
        return [f"{base}:f:{e}" for e in escaped], [f"{base}:fr:{e}" for e in escaped]

    def user_watermark(self, tenant_id: str | None, user_id: str) -> str:
        """Every token of this user (in this tenant) issued at or before the value is revoked."""
        return f"{self.prefix}:{{{tenant_tag(tenant_id)}}}:uw:{escape_id(user_id, 'user id')}"

    def tenant_watermark(self, tenant_id: str | None) -> str:
        """Every token of this tenant issued at or before the value is revoked."""
        return f"{self.prefix}:{{{tenant_tag(tenant_id)}}}:tw"

    def tenant_index(self, tenant_id: str | None) -> str:
        """All live families of a tenant, scored by expiry."""
        return f"{self.prefix}:{{{tenant_tag(tenant_id)}}}:ti"

    def frozen_index(self, tenant_id: str | None, job_id: str) -> str:
        """The tenant index as an unfiltered tenant job found it (renamed aside; the job's
        snapshot). Not matched by the expiry task's ``:ti`` / ``:ui:*`` patterns."""
        return f"{self.prefix}:{{{tenant_tag(tenant_id)}}}:tj:{escape_id(job_id, 'job id')}"

    def user_index(self, tenant_id: str | None, user_id: str) -> str:
        """All live families of one user in one tenant, scored by expiry."""
        return f"{self.prefix}:{{{tenant_tag(tenant_id)}}}:ui:{escape_id(user_id, 'user id')}"

    def user_index_pattern(self, tenant_id: str | None) -> str:
        """SCAN MATCH pattern of every user index of one tenant (glob characters escaped)."""
        base = f"{self.prefix}:{{{tenant_tag(tenant_id)}}}:ui:"
        return re.sub(r"([*?\[\]\\])", r"\\\1", base) + "*"

    def job(self, job_id: str) -> str:
        """One bulk job record. Tagged by the job id: the job's keys below share its slot."""
        return f"{self.prefix}:job:{{{escape_id(job_id, 'job id')}}}"

    def job_chunk(self, job_id: str, chunk: int) -> str:
        """The family ids of one chunk of a job's snapshot, newline-separated."""
        return f"{self.job(job_id)}:c:{int(chunk)}"

    def job_chunks_done(self, job_id: str) -> str:
        """Set of the job's chunk numbers that have finished (counted exactly once)."""
        return f"{self.job(job_id)}:done"

    def job_deliveries(self, job_id: str) -> str:
        """Hash chunk number -> deliveries, for the redelivery cap."""
        return f"{self.job(job_id)}:dlv"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    @property
    def jobs_pending(self) -> str:
        """The outbox: ids of jobs not yet started, scored by creation time (ms)."""
        return f"{self.prefix}:jobs:pending"

    def job_idempotency(self, digest: str) -> str:
        return f"{self.prefix}:jobkey:{escape_id(digest, 'idempotency key')}"

    @property
    def audit(self) -> str:
        return f"{self.prefix}:audit"

    @property
    def stats(self) -> str:
        return f"{self.prefix}:stats"

    def check_keys(
        self, jti: str, tenant_id: str | None, user_id: str | None, family_id: str | None
    ) -> list[str | None]:
        """The keys the per-request check reads, in RULE_ORDER; None where a rule cannot apply."""
        return [
            self.jti(jti),
            self.family_revoked(tenant_id, family_id) if family_id is not None else None,
            self.user_watermark(tenant_id, user_id) if user_id is not None else None,
            self.tenant_watermark(tenant_id) if tenant_id is not None else None,
        ]


# --- TTL rules -------------------------------------------------------------------------------
# An entry is useful only while a token it covers could still verify: at most until that token's
# exp plus the verification leeway. Every TTL below is that bound, rounded up to whole seconds.


def jti_ttl(expires_at: float | None, now: float, access_ttl: int, leeway: int) -> int:
    """TTL of a revoked-jti entry: the token's remaining life plus leeway.

    Without ``expires_at`` the longest an access token can live is assumed, so a jti revoked
    without its token (the seed's ``revoke_token(jti=...)``) is covered for its whole life.
    """
    remaining = (expires_at - now) if expires_at is not None else access_ttl
    return max(1, math.ceil(remaining + leeway))


def watermark_ttl(longest_token_ttl: int, leeway: int) -> int:
    """TTL of a user or tenant watermark: after it, no token it covers can still verify."""
    return longest_token_ttl + leeway


def family_ttl(refresh_ttl: int, leeway: int) -> int:
    """TTL of a family record and of its revoked marker: the refresh token's life plus leeway."""
    return refresh_ttl + leeway
