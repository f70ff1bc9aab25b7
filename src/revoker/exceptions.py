"""Every error revoker raises, under one root.

The tree::

    RevokerError
    ├── ConfigurationError          invalid settings; the message names the REVOKER_ variable
    │   └── MissingExtra            an optional dependency is absent; names the extra (ImportError)
    ├── InvalidIdentifier           an id (jti, user, tenant, family, job) that cannot be used
    ├── TokenError                  a presented token is not acceptable (HTTP 401)
    │   ├── TokenTooLarge           over the size bound, rejected before any decoding
    │   ├── MalformedToken          not a JWS compact token, bad header or bad claims shape
    │   ├── ForbiddenHeader         jwk / jku / x5u / x5c / crit in the header
    │   ├── UnknownKeyId            `kid` names no key we trust
    │   ├── InvalidSignature        signature or algorithm does not verify
    │   ├── TokenExpired            `exp` in the past (beyond leeway)
    │   ├── TokenNotYetValid        `iat` / `nbf` in the future (beyond leeway)
    │   ├── MissingClaim            a required claim is absent
    │   ├── InvalidClaim            wrong issuer, audience or a claim of the wrong type
    │   ├── WrongTokenType          a refresh token used as access, or the reverse
    │   └── TokenRevoked            verified, but revoked; carries the RevocationStatus
    ├── RefreshError                refresh rotation could not proceed
    │   ├── RefreshTokenReused      a superseded refresh token was presented: family revoked
    │   ├── FamilyRevoked           the token's family was already revoked
    │   └── UnknownFamily           the family has no session record (never started or expired)
    ├── StoreError                  the revocation store could not answer
    │   └── StoreUnavailable        Redis unreachable, timed out, or the breaker is open
    │       ├── DenylistLost        the denylist was lost and REVOKER_ON_DATA_LOSS=fail-closed
    │       └── DurabilityNotReached  written, not acknowledged as durable (REVOKER_DURABILITY)
    ├── JobError                    bulk jobs
    │   ├── JobNotFound             no job record with that id
    │   └── DuplicateJob            the same request is already running (carries its job id)
    └── Overloaded                  this process is at its bound for a costly check (HTTP 503)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from revoker.rules import RevocationStatus
    from revoker.tokens import TokenData

__all__ = [
    "ConfigurationError",
    "DenylistLost",
    "DuplicateJob",
    "DurabilityNotReached",
    "FamilyRevoked",
    "ForbiddenHeader",
    "InvalidClaim",
    "InvalidIdentifier",
    "InvalidSignature",
    "JobError",
    "JobNotFound",
    "MalformedToken",
    "MissingClaim",
    "MissingExtra",
    "Overloaded",
    "RefreshError",
    "RefreshTokenReused",
    "RevokerError",
    "StoreError",
    "StoreUnavailable",
    "TokenError",
    "TokenExpired",
    "TokenNotYetValid",
    "TokenRevoked",
    "TokenTooLarge",
    "UnknownFamily",
    "UnknownKeyId",
    "WrongTokenType",
]


class RevokerError(Exception):
    """Root of every error revoker raises."""


class ConfigurationError(RevokerError):
    """The configuration is invalid; the message names the setting."""


class MissingExtra(ConfigurationError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it.

    An ImportError too, so code that probes for an optional feature with ``except ImportError``
    keeps working.
    """

    def __init__(self, extra: str, missing: str, feature: str) -> None:
        self.extra = extra
        self.feature = feature
        super().__init__(
            f"{feature} needs {missing}, which is not installed: pip install 'revoker[{extra}]'",
            name=missing,
        )


class InvalidIdentifier(RevokerError, ValueError):
    """An id that cannot be stored: empty, too long, or not a string."""


class TokenError(RevokerError):
    """A presented token is not acceptable. ``description`` is safe to send to the client."""

    #: RFC 6750 error code sent in WWW-Authenticate.
    error_code = "invalid_token"

    @property
    def description(self) -> str:
        return str(self)


class TokenTooLarge(TokenError):
    """The token or Authorization header exceeds the size bound."""


class MalformedToken(TokenError):
    """Not a well-formed JWS compact token."""


class ForbiddenHeader(TokenError):
    """The JOSE header carries key material, a key URL or an unknown critical extension."""


class UnknownKeyId(TokenError):
    """The token's ``kid`` names no trusted key."""


class InvalidSignature(TokenError):
    """The signature does not verify with the pinned algorithm and key."""


class TokenExpired(TokenError):
    """The token's ``exp`` has passed."""


class TokenNotYetValid(TokenError):
    """The token's ``iat`` or ``nbf`` lies in the future."""


class MissingClaim(TokenError):
    """A required claim is absent."""


class InvalidClaim(TokenError):
    """A claim has the wrong value or type (issuer, audience, ...)."""


class WrongTokenType(TokenError):
    """An access token where a refresh token is expected, or the reverse."""


class TokenRevoked(TokenError):
    """The token verified but has been revoked."""

    def __init__(self, status: RevocationStatus, token: TokenData | None = None) -> None:
        self.status = status
        #: The verified claims of the revoked token, for logs (never sent to the client).
        self.token = token
        super().__init__(f"token has been revoked ({status.rule} revocation)")


class RefreshError(RevokerError):
    """Refresh-token rotation could not proceed."""


class RefreshTokenReused(RefreshError):
    """A refresh token that was already rotated was presented again; its family is now revoked."""

    def __init__(self, family_id: str) -> None:
        self.family_id = family_id
        super().__init__(f"refresh token reuse detected: session {family_id} has been revoked")


class FamilyRevoked(RefreshError):
    """The refresh token's family (session) is revoked."""

    def __init__(self, family_id: str) -> None:
        self.family_id = family_id
        super().__init__(f"session {family_id} has been revoked")


class UnknownFamily(RefreshError):
    """The refresh token's family has no session record."""

    def __init__(self, family_id: str) -> None:
        self.family_id = family_id
        super().__init__(f"session {family_id} is unknown or has expired")


class StoreError(RevokerError):
    """The revocation store could not complete an operation."""


class StoreUnavailable(StoreError):
    """Redis is unreachable, timed out, or the circuit breaker is open."""


class DenylistLost(StoreUnavailable):
    """The denylist was lost or rolled back and the policy is fail-closed: every check answers as
    a fail-closed Redis outage (503), whatever REVOKER_FAIL_OPEN says, until an operator runs
    ``revoker recover``."""

    #: Never let through by a fail-open policy.
    fail_closed = True


class DurabilityNotReached(StoreUnavailable):
    """The write happened, but the wait ``REVOKER_DURABILITY`` asks for (WAITAOF or WAIT) did
    not confirm it in time: not acknowledged as durable. Retrying the (idempotent) call is safe."""


class JobError(RevokerError):
    """A bulk-job operation failed."""


class JobNotFound(JobError):
    """No job record exists with that id (it may have passed its retention)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no such job: {job_id}")


class DuplicateJob(JobError):
    """An identical request is already pending or running."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"an identical job is already in progress: {job_id}")


class Overloaded(RevokerError):
    """This process already runs (and queues) as many costly checks as it allows, such as the
    Argon2 check of a client secret; the request is refused at once rather than queued without
    bound. Retrying later is safe."""
