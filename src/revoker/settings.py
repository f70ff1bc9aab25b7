"""The one configuration model of revoker.

Every setting is read from the environment with the ``REVOKER_`` prefix (or from a ``.env``
file), but only when :func:`get_settings` is first called: nothing reads the environment at import
time. Invalid configuration fails at start-up with a :class:`~revoker.exceptions.ConfigurationError`
that names the environment variable to fix.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from revoker.exceptions import ConfigurationError

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "ENV_PREFIX",
    "HMAC_ALGORITHMS",
    "MIN_HMAC_SECRET_BYTES",
    "JwtAlgorithm",
    "RevokerSettings",
    "configure",
    "get_settings",
    "load_settings",
    "reset_settings",
    "settings_reference",
]

ENV_PREFIX = "REVOKER_"

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
# RFC 7518 §3.2: an HMAC key must be at least as long as the hash output; 32 bytes covers HS256
# and is the floor we enforce for every HS* algorithm.
MIN_HMAC_SECRET_BYTES = 32

JwtAlgorithm = Literal[
    "HS256", "HS384", "HS512",
    "RS256", "RS384", "RS512",
    "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512",
    "EdDSA",
]  # fmt: skip


class RevokerSettings(BaseSettings):
    """All of revoker's settings. Field ``x`` is read from ``REVOKER_X``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        validate_default=True,
    )

    # --- Redis ---------------------------------------------------------------------------------
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis holding the revocation data (redis://, rediss:// or unix://).",
    )
    redis_cluster: bool = Field(
        False, description="Treat REVOKER_REDIS_URL as a seed node of a Redis Cluster."
    )
    redis_timeout: float = Field(
        0.1,
        gt=0,
        le=30,
        description="Seconds a per-request check waits on Redis before the failure policy applies.",
    )
    redis_connect_timeout: float = Field(
        0.5, gt=0, le=30, description="Seconds to wait for a new Redis connection."
    )
    redis_max_connections: int = Field(64, ge=1, description="Connection pool size per process.")
    key_prefix: str = Field(
        "revoker",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.\-]+$",
        description="Prefix of every Redis key revoker writes (no braces or colons).",
    )

    # --- Celery --------------------------------------------------------------------------------
    broker_url: str | None = Field(
        None, description="Celery broker (redis:// or amqp://). Defaults to REVOKER_REDIS_URL."
    )
    result_backend: str | None = Field(
        None, description="Celery result backend. Defaults to REVOKER_REDIS_URL."
    )
    visibility_timeout: int = Field(
        3600,
        ge=10,
        description="Seconds before an unacknowledged task is redelivered (Redis broker). "
        "Task time limits are derived from it so a running task is never redelivered.",
    )
    max_redeliveries: int = Field(
        5, ge=1, description="Deliveries of one chunk before it is parked as failed."
    )
    chunk_size: int = Field(5000, ge=1, le=100_000, description="Sessions per fan-out chunk task.")
    session_buckets: int = Field(
        8192,
        ge=1,
        le=65_536,
        description="Session buckets per tenant (hashes of the users' sessions). Keep a bucket "
        "under Redis's hash-max-listpack-entries (128): about one per 120 sessions of the biggest "
        "tenant. Fixed for the life of the data, like the key prefix.",
    )
    job_retention: int = Field(
        7 * 24 * 3600, ge=60, description="Seconds finished job records are kept."
    )
    audit_max_len: int = Field(
        1_000_000, ge=100, description="Approximate number of entries kept in the audit stream."
    )
    audit_retention: int = Field(
        90 * 24 * 3600,
        ge=60,
        description="Seconds audit entries are kept (expiry task trims older).",
    )

    # --- JWT -----------------------------------------------------------------------------------
    jwt_algorithm: JwtAlgorithm = Field(
        "HS256", description="The one algorithm tokens are signed and verified with."
    )
    jwt_secret: SecretStr | None = Field(
        None, description="HMAC secret for HS* algorithms, at least 32 bytes."
    )
    jwt_private_key_file: Path | None = Field(
        None, description="PEM private key for RS/PS/ES/EdDSA signing (issuers only)."
    )
    jwt_public_key_file: Path | None = Field(
        None, description="PEM public key for RS/PS/ES/EdDSA verification."
    )
    jwks_url: str | None = Field(
        None, description="JWKS URL for verify-only services (asymmetric algorithms only)."
    )
    jwt_key_id: str | None = Field(
        None,
        max_length=128,
        description="`kid` put in issued tokens; tokens naming another kid are rejected.",
    )
    issuer: str | None = Field(None, description="`iss` issued and required, exactly.")
    audience: str | None = Field(None, description="`aud` issued and required, exactly.")
    access_token_ttl: int = Field(
        900, ge=1, le=7 * 24 * 3600, description="Access token lifetime, seconds."
    )
    refresh_token_ttl: int = Field(
        30 * 24 * 3600, ge=1, le=365 * 24 * 3600, description="Refresh token lifetime, seconds."
    )
    leeway: int = Field(30, ge=0, le=600, description="Clock skew tolerated on exp/iat, seconds.")
    verify_cache_size: int = Field(
        10_000, ge=0, description="Verified tokens cached per process (0 disables the cache)."
    )

    # --- Per-request policy --------------------------------------------------------------------
    fail_open: bool = Field(
        True, description="Let requests through when Redis cannot answer (False: 503)."
    )
    breaker_failures: int = Field(
        5, ge=1, description="Consecutive Redis failures that open the circuit breaker."
    )
    breaker_reset_seconds: float = Field(
        5.0, gt=0, le=3600, description="Seconds the breaker stays open before one trial call."
    )
    retry_after_seconds: int = Field(
        5, ge=1, le=3600, description="Retry-After sent with fail-closed 503 answers."
    )

    on_data_loss: Literal["cutoff", "fail-closed", "accept"] = Field(
        "cutoff",
        description="What a check does when it finds the denylist lost or rolled back (its epoch "
        "missing or changed, or its revocation sequence lower than already seen). `cutoff`: write "
        "once, atomically, a global cut-off (every token issued before the detection is revoked) "
        "and a new epoch. `fail-closed`: every check answers 503, as when Redis is down and "
        "failing closed, until `revoker recover`. `accept`: adopt the new state and go on (an "
        "explicit opt-out). Each is logged at ERROR, counted in revoker_denylist_lost_total and "
        "reported by `revoker health` and GET /health until `revoker recover`.",
    )
    require_init: bool = Field(
        False,
        description="Set once `revoker init` has run: a missing epoch is then always a loss, even "
        "to a process that just started. Unset, a process that has never seen an epoch takes an "
        "empty Redis for a new deployment.",
    )

    # --- Refresh rotation ----------------------------------------------------------------------
    refresh_reuse_grace_seconds: int = Field(
        0,
        ge=0,
        le=300,
        description="Seconds a just-rotated refresh token may be retried without being reuse.",
    )
    reuse_escalation: Literal["family", "user"] = Field(
        "family",
        description="On refresh reuse revoke the family only, or all of the user's sessions.",
    )

    @field_validator("redis_url", "broker_url", "result_backend")
    @classmethod
    def _url_has_scheme(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value:
            raise ValueError("must be a URL such as redis://127.0.0.1:6379/0")
        return value

    @model_validator(mode="after")
    def _keys_match_algorithm(self) -> Self:
        alg = self.jwt_algorithm
        if alg in HMAC_ALGORITHMS:
            if self.jwt_secret is None:
                raise ValueError(f"{ENV_PREFIX}JWT_SECRET is required for {alg}")
            if len(self.jwt_secret.get_secret_value().encode()) < MIN_HMAC_SECRET_BYTES:
                raise ValueError(
                    f"{ENV_PREFIX}JWT_SECRET must be at least {MIN_HMAC_SECRET_BYTES} bytes "
                    f"for {alg}"
                )
            if self.jwks_url or self.jwt_private_key_file or self.jwt_public_key_file:
                raise ValueError(
                    f"{ENV_PREFIX}JWKS_URL and the key files are for asymmetric algorithms, "
                    f"not {alg}; set {ENV_PREFIX}JWT_SECRET only"
                )
        else:
            if self.jwt_secret is not None:
                raise ValueError(
                    f"{ENV_PREFIX}JWT_SECRET is for HS* algorithms; {alg} needs "
                    f"{ENV_PREFIX}JWT_PUBLIC_KEY_FILE or {ENV_PREFIX}JWKS_URL"
                )
            if not (self.jwt_public_key_file or self.jwt_private_key_file or self.jwks_url):
                raise ValueError(
                    f"{alg} needs {ENV_PREFIX}JWT_PUBLIC_KEY_FILE, "
                    f"{ENV_PREFIX}JWT_PRIVATE_KEY_FILE or {ENV_PREFIX}JWKS_URL"
                )
            for name in ("jwt_private_key_file", "jwt_public_key_file"):
                path = getattr(self, name)
                if path is not None and not Path(path).is_file():
                    raise ValueError(f"{ENV_PREFIX}{name.upper()}: no such file: {path}")
        return self

    @property
    def effective_broker_url(self) -> str:
        """The Celery broker: ``REVOKER_BROKER_URL``, else ``REVOKER_REDIS_URL``."""
        return self.broker_url or self.redis_url

    @property
    def effective_result_backend(self) -> str:
        """The Celery result backend: ``REVOKER_RESULT_BACKEND``, else ``REVOKER_REDIS_URL``."""
        return self.result_backend or self.redis_url

    @property
    def longest_token_ttl(self) -> int:
        """The longest lifetime any token revoker issues can have."""
        return max(self.access_token_ttl, self.refresh_token_ttl)

    @classmethod
    def from_dsn(cls, redis_url: str, **overrides: Any) -> RevokerSettings:
        """Settings for a Redis URL, the rest from the environment or ``overrides``."""
        return load_settings(redis_url=redis_url, **overrides)


def load_settings(**overrides: Any) -> RevokerSettings:
    """Build settings from the environment plus ``overrides``, or raise ConfigurationError."""
    try:
        return RevokerSettings(**overrides)
    except ValidationError as exc:
        raise ConfigurationError(_explain(exc)) from None


def _explain(exc: ValidationError) -> str:
    lines = ["invalid revoker configuration:"]
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        msg = error["msg"].removeprefix("Value error, ")
        if loc:
            lines.append(f"  {ENV_PREFIX}{'_'.join(loc).upper()}: {msg}")
        else:
            lines.append(f"  {msg}")
    return "\n".join(lines)


_lock = threading.Lock()
_current: RevokerSettings | None = None


def get_settings() -> RevokerSettings:
    """The process-wide settings, read from the environment on first use."""
    global _current
    if _current is None:
        with _lock:
            if _current is None:
                _current = load_settings()
    return _current


def configure(settings: RevokerSettings | None = None, **overrides: Any) -> RevokerSettings:
    """Replace the process-wide settings (for tests and embedding applications)."""
    global _current
    new = settings if settings is not None else load_settings(**overrides)
    with _lock:
        _current = new
    return new


def reset_settings() -> None:
    """Forget the process-wide settings; the next :func:`get_settings` reads the environment."""
    global _current
    with _lock:
        _current = None


def settings_reference() -> str:
    """The configuration reference as a Markdown table (the README embeds it; a test compares)."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, info in RevokerSettings.model_fields.items():
        default = info.default
        shown = "unset" if default is None else f"`{default}`"
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {shown} | {info.description or ''} |")
    return "\n".join(rows)
