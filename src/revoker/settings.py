"""The one configuration model of revoker.

Every setting is read from the environment with the ``REVOKER_`` prefix (or from a ``.env``
file), but only when :func:`get_settings` is first called: nothing reads the environment at import
time. Invalid configuration fails at start-up with a :class:`~revoker.exceptions.ConfigurationError`
that names the environment variable to fix.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Self
from urllib.parse import parse_qsl, quote, unquote

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from revoker.durability import Durability, parse_durability
from revoker.exceptions import ConfigurationError
from revoker.keys import DEFAULT_FEED_RETENTION

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "ENV_PREFIX",
    "HMAC_ALGORITHMS",
    "MIN_HMAC_SECRET_BYTES",
    "SENTINEL_DEFAULT_PORT",
    "SENTINEL_SCHEME",
    "SENTINEL_URL_FORM",
    "JwtAlgorithm",
    "RevokerSettings",
    "SentinelConfig",
    "configure",
    "get_settings",
    "is_sentinel_url",
    "load_settings",
    "parse_sentinel_url",
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


#: Scheme of a Redis behind Sentinel (REVOKER_REDIS_URL, and REVOKER_BROKER_URL/RESULT_BACKEND).
SENTINEL_SCHEME: Final = "redis+sentinel"
SENTINEL_DEFAULT_PORT: Final = 26379
SENTINEL_URL_FORM: Final = (
    "redis+sentinel://[[username]:password@]host[:port][,host[:port]...]/master-name[/db]"
    "[?sentinel_username=...&sentinel_password=...]"
)
#: The query options of a sentinel URL: credentials for the sentinels themselves (the userinfo
#: part is for the Redis servers they manage).
_SENTINEL_OPTIONS: Final = ("sentinel_username", "sentinel_password")
_REDIS_SCHEMES: Final = ("redis", "rediss", "unix", SENTINEL_SCHEME)
_HOST: Final = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+)(?::(\d{1,5}))?$")


@dataclass(frozen=True)
class SentinelConfig:
    """A Redis master found through Sentinel: what a ``redis+sentinel://`` URL names."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    def sentinel_kwargs(self) -> dict[str, Any]:
        """Credentials of the sentinels (redis-py's and kombu's ``sentinel_kwargs``)."""
        kwargs: dict[str, Any] = {}
        if self.sentinel_username is not None:
            kwargs["username"] = self.sentinel_username
        if self.sentinel_password is not None:
            kwargs["password"] = self.sentinel_password
        return kwargs

    def kombu_url(self) -> str:
        """kombu's and Celery's form: ``sentinel://[user:pass@]host:port/db;sentinel://...``."""
        auth = ""
        if self.password is not None:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        return ";".join(
            f"sentinel://{auth}{f'[{host}]' if ':' in host else host}:{port}/{self.db}"
            for host, port in self.sentinels
        )

    def kombu_transport_options(self) -> dict[str, Any]:
        """The transport options kombu's sentinel transport (and Celery's backend) need."""
        options: dict[str, Any] = {"master_name": self.master_name}
        if self.sentinel_kwargs():
            options["sentinel_kwargs"] = self.sentinel_kwargs()
        return options


def is_sentinel_url(url: str | None) -> bool:
    """Whether ``url`` is a ``redis+sentinel://`` URL."""
    return url is not None and url.partition("://")[0].lower() == SENTINEL_SCHEME


def parse_sentinel_url(url: str) -> SentinelConfig:
    """The sentinels, master name, db and credentials of a ``redis+sentinel://`` URL.

    Raises ValueError saying what is wrong; the message never repeats the URL (it may hold a
    password).
    """
    scheme, _, rest = url.partition("://")
    if scheme.lower() != SENTINEL_SCHEME:
        raise ValueError(f"not a {SENTINEL_SCHEME}:// URL")
    if "#" in rest:
        raise ValueError(
            f"a {SENTINEL_SCHEME}:// URL has no #fragment; the form is {SENTINEL_URL_FORM}"
        )
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
        if password is None and username is not None:
            # redis-py's reading of redis://secret@host: a lone userinfo is the password.
            username, password = None, username
    sentinels: list[tuple[str, int]] = []
    # Messages name a part by position, never by content: a password with an unescaped / or @
    # would otherwise be echoed as a "host".
    for number, entry in enumerate(hostlist.split(","), start=1):
        if not entry:
            raise ValueError(
                f"names no sentinel host (or has an empty one); the form is {SENTINEL_URL_FORM}"
            )
        match = _HOST.match(entry)
        if match is None:
            raise ValueError(f"sentinel address {number} is not host or host:port")
        host, port_text = match.group(1).strip("[]"), match.group(2)
        port = int(port_text) if port_text else SENTINEL_DEFAULT_PORT
        if not 1 <= port <= 65535:
            raise ValueError(f"sentinel address {number}: port must be 1-65535")
        sentinels.append((host, port))
    parts = path.split("/") if slash else []
    if parts and parts[-1] == "":
        parts.pop()  # a trailing slash
    if not parts or not parts[0]:
        raise ValueError(f"names no master; the form is {SENTINEL_URL_FORM}")
    if len(parts) > 2:
        raise ValueError(f"has a path beyond /master-name/db; the form is {SENTINEL_URL_FORM}")
    master_name = unquote(parts[0])
    if any(c.isspace() for c in master_name):
        raise ValueError("master name must not contain whitespace")
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit() or len(parts[1]) > 5:
            raise ValueError("the database (after the master name) is not a number")
        db = int(parts[1])
    options: dict[str, str] = {}
    if query:
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise ValueError("query string is not name=value&...") from None
        for name, value in pairs:
            if name not in _SENTINEL_OPTIONS:
                raise ValueError(
                    f"unknown option {name!r}; a {SENTINEL_SCHEME}:// URL takes only "
                    + ", ".join(_SENTINEL_OPTIONS)
                )
            if name in options:
                raise ValueError(f"option {name!r} is given twice")
            options[name] = value
    return SentinelConfig(
        sentinels=tuple(sentinels),
        master_name=master_name,
        db=db,
        username=username,
        password=password,
        sentinel_username=options.get("sentinel_username"),
        sentinel_password=options.get("sentinel_password"),
    )


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

    durability: str = Field(
        "none",
        description="When a revocation is acknowledged: none (in memory), fsync (on the server's "
        "disk: WAITAOF, needs Redis >= 7.2 or Valkey with appendfsync always) or replicas:N "
        "(WAIT for N replicas). Bulk-job chunks count themselves done only after the same wait.",
    )
    durability_timeout: float = Field(
        0.05,
        gt=0,
        le=60,
        description="Seconds a revocation waits for REVOKER_DURABILITY before it fails (written, "
        "not acknowledged as durable). Below REVOKER_REDIS_TIMEOUT.",
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
    job_start_timeout: int = Field(
        30,
        ge=1,
        le=3600,
        description="Seconds a published job may wait for a worker to start it, and a running "
        "job's chunks for one of them to begin while no worker is busy with chunks, before the "
        "outbox sweep publishes the job again (a broker that lost the messages, e.g. restarted "
        "without persistence): within max(this, 5) + 5 s for a job not started, this + 10 s for "
        "lost chunks. Extra copies are harmless: the first message to start a job runs it, the "
        "others do nothing.",
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

    # --- Check mode and the mirror (revoker.mirror) ---------------------------------------------
    check_mode: Literal["redis", "mirror"] = Field(
        "redis",
        description="How a checked request learns whether its token is revoked. `redis`: one "
        "round trip per check. `mirror`: each process keeps a copy of the revocation state, "
        "loaded from a snapshot and kept current by the change feed (0 Redis commands per check; "
        "not with REVOKER_REDIS_CLUSTER).",
    )
    mirror_max_lag: float = Field(
        2.0,
        gt=0,
        le=300,
        description="Seconds since the mirror's last successful feed read past which a check "
        "asks Redis instead (the mirror enforces a revocation within this bound of its call "
        "returning).",
    )
    mirror_max_staleness: float = Field(
        30.0,
        gt=0,
        le=86_400,
        description="While Redis cannot answer, seconds since the mirror's last successful feed "
        "read during which checks are still answered from it; after that the failure policy "
        "(REVOKER_FAIL_OPEN) applies. At least REVOKER_MIRROR_MAX_LAG.",
    )

    @model_validator(mode="after")
    def _mirror_fits(self) -> Self:
        if self.check_mode != "mirror":
            return self
        if self.redis_cluster:
            raise ValueError(
                f"{ENV_PREFIX}CHECK_MODE=mirror is not supported with {ENV_PREFIX}REDIS_CLUSTER "
                "(the change feed is one stream on one node)"
            )
        if self.mirror_max_staleness < self.mirror_max_lag:
            raise ValueError(
                f"{ENV_PREFIX}MIRROR_MAX_STALENESS ({self.mirror_max_staleness:g} s) must be at "
                f"least {ENV_PREFIX}MIRROR_MAX_LAG ({self.mirror_max_lag:g} s)"
            )
        return self

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

    # --- Admin API discovery (revoker.api.discovery) -------------------------------------------
    api_public_url: str | None = Field(
        None,
        description="The admin API's base URL as its callers reach it (e.g. "
        "https://revoker.internal), for the endpoint URLs of its RFC 8414 metadata and the "
        "issuer when REVOKER_ISSUER is unset. Unset: the URL each metadata request was sent to.",
    )

    @field_validator("api_public_url")
    @classmethod
    def _public_url_is_a_base(cls, value: str | None) -> str | None:
        from urllib.parse import urlsplit  # here, so this block stays one insertion

        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an absolute http(s) URL such as https://revoker.internal")
        if parts.query or parts.fragment:
            raise ValueError("must have no query or fragment")
        return value.rstrip("/")

    # --- Access-token profile and WebSocket credentials (coldpath) -----------------------------
    access_token_profile: Literal["revoker", "rfc9068"] = Field(
        "revoker",
        description="`rfc9068`: access tokens are RFC 9068 JWT access tokens (header `typ: "
        "at+jwt`; `iss`, `aud`, `sub`, `client_id`, `exp`, `iat`, `jti` issued and required), as "
        "OAuth resource servers such as Authlib's JWTBearerTokenValidator expect; needs "
        "REVOKER_ISSUER and REVOKER_AUDIENCE, and a client id for every access token. `revoker`: "
        "the default claims, any header typ.",
    )
    websocket_subprotocol_auth: bool = Field(
        False,
        description="Also read a WebSocket's bearer token from `Sec-WebSocket-Protocol` (what a "
        "browser can set): the client offers `revoker.bearer` followed by the token, and the "
        "handshake answers `revoker.bearer`. Off: only the Authorization header counts.",
    )

    @property
    def rfc9068_access_tokens(self) -> bool:
        """Whether access tokens are RFC 9068 JWT access tokens."""
        return self.access_token_profile == "rfc9068"  # noqa: S105 - a profile name, no secret

    @model_validator(mode="after")
    def _rfc9068_names_issuer_and_audience(self) -> Self:
        if self.rfc9068_access_tokens and (self.issuer is None or self.audience is None):
            raise ValueError(
                f"{ENV_PREFIX}ACCESS_TOKEN_PROFILE=rfc9068 needs {ENV_PREFIX}ISSUER and "
                f"{ENV_PREFIX}AUDIENCE (RFC 9068 §2.2: iss and aud are required)"
            )
        return self

    # --- Console (revoker.api.console) ---------------------------------------------------------
    console_session_ttl: int = Field(
        3600,
        ge=60,
        le=24 * 3600,
        description="Seconds a console sign-in lasts (never longer than the admin token's own "
        "expiry).",
    )
    console_secret: SecretStr | None = Field(
        None,
        min_length=32,
        description="Key signing the console's session and CSRF values, at least 32 characters "
        "(default: derived from REVOKER_JWT_SECRET; required with asymmetric keys).",
    )

    # --- Observability (logs, worker metrics) --------------------------------------------------
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Log lines of the worker, the admin API, the CLI (and the middleware when "
        "REVOKER_LOG_MIDDLEWARE is set): `text`, or `json` (one object a line).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] | None = Field(
        None,
        description="Level of revoker's loggers; unset: INFO in the worker and the API, WARNING "
        "in the CLI.",
    )
    log_middleware: bool = Field(
        False,
        description="Let the middleware and the FastAPI dependency set up revoker's loggers "
        "with REVOKER_LOG_FORMAT/LEVEL in the service's process (off: the service's own logging "
        "configuration decides).",
    )
    worker_metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port of a Celery worker's Prometheus endpoint (served by its main process; "
        "with PROMETHEUS_MULTIPROC_DIR set, the sum of its pool children). Unset: none; 0: any "
        "free port.",
    )
    worker_metrics_address: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address the worker's metrics endpoint binds to.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level_upper(cls, value: Any) -> Any:
        """`info` and `INFO` alike, as logging itself accepts."""
        return value.strip().upper() if isinstance(value, str) else value

    # --- Shared Signals events and back-channel logout (revoker.events) -----------------------
    events_signing_key_file: Path | None = Field(
        None,
        description="PEM private key (EC P-256: ES256, or RSA: RS256) that signs Security Event "
        "Tokens and logout tokens; its public half is served as the transmitter's JWKS. Unset: "
        "the SSF endpoints answer 404 and no event is produced.",
    )
    events_issuer: str | None = Field(
        None,
        max_length=512,
        description="`iss` of SETs and logout tokens and the SSF `issuer` (a URL). Unset: "
        "REVOKER_ISSUER, else `urn:revoker`.",
    )
    events_key_id: str | None = Field(
        None,
        max_length=128,
        description="`kid` of the signing key. Unset: its RFC 7638 thumbprint.",
    )
    events_push_timeout: float = Field(
        5.0, gt=0, le=60, description="Seconds one push (RFC 8935) or logout POST may take."
    )
    events_max_attempts: int = Field(
        8,
        ge=1,
        le=100,
        description="Push attempts of one event before it goes to the dead-letter list.",
    )
    events_retry_base: float = Field(
        1.0,
        gt=0,
        le=600,
        description="Seconds before the first retry of a failed push; doubled per attempt, with "
        "jitter, up to REVOKER_EVENTS_RETRY_MAX.",
    )
    events_retry_max: float = Field(
        300.0, gt=0, le=86400, description="Longest wait between two push attempts, seconds."
    )
    events_max_held: int = Field(
        10_000,
        ge=10,
        le=10_000_000,
        description="Events one stream holds undelivered (paused, receiver down, not polled); "
        "beyond it the oldest are dropped and counted.",
    )
    events_dead_letter_max: int = Field(
        10_000, ge=10, le=10_000_000, description="Dead letters kept (oldest dropped beyond)."
    )
    events_poll_wait: float = Field(
        10.0,
        ge=0,
        le=60,
        description="Longest a poll without returnImmediately waits for events, seconds.",
    )
    events_push_budget: float = Field(
        10.0,
        gt=0,
        le=300,
        description="Seconds one delivery task works for one stream before it yields the worker "
        "(a slow receiver holds at most one worker slot, this long at a time).",
    )

    # --- Change feed (issue 11: what service mirrors follow) -----------------------------------
    feed_retention: int = Field(
        DEFAULT_FEED_RETENTION,
        ge=60,
        le=30 * 24 * 3600,
        description="Seconds the change feed (P:feed, a stream every revocation appends to; not "
        "written on a Redis Cluster) keeps entries: a mirror cut off for longer loads a snapshot "
        "again.",
    )

    # --- Bulk jobs at scale (issue 15) ---------------------------------------------------------
    broker_queue_type: Literal["classic", "quorum"] = Field(
        "classic",
        description="RabbitMQ queue type of the task queue: quorum replicates it across a "
        "RabbitMQ cluster (publisher confirms on); RabbitMQ refuses to change an existing "
        "queue's type, so delete the classic queue first. Ignored with a Redis broker.",
    )
    fanout_duty_cycle: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Share of a fan-out chunk's time spent in round trips to Redis: below 1 the "
        "chunk pauses after each round trip (0.5: as long as it took), leaving Redis and the "
        "workers' cores idle time, so per-request checks queue less behind a job that takes "
        "longer.",
    )
    fanout_adaptive_pacing: bool = Field(
        False,
        description="Pace each fan-out chunk by its own round trips to Redis: while they take "
        "longer than their idle baseline (Redis or the cores busy with other work, so per-request "
        "checks wait too) the chunk pauses longer after each, up to 3 times the round trip; the "
        "pause shrinks back to REVOKER_FANOUT_DUTY_CYCLE's once they do not. Keeps checks' "
        "latency nearer its idle value during a job, at the cost of job time (measured: an "
        "unfiltered job ~3x longer on a loaded 2-core host).",
    )

    @field_validator("redis_url", "broker_url", "result_backend")
    @classmethod
    def _url_has_scheme(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value:
            raise ValueError("must be a URL such as redis://127.0.0.1:6379/0")
        if is_sentinel_url(value):
            assert value is not None
            parse_sentinel_url(value)  # a malformed one fails here, at load, by name
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        scheme = value.partition("://")[0].lower()
        if scheme == "rediss+sentinel":
            raise ValueError("TLS to a Sentinel-managed Redis is not supported; use redis+sentinel")
        if scheme not in _REDIS_SCHEMES:
            raise ValueError(
                f"scheme {scheme}:// is not one of "
                + ", ".join(f"{name}://" for name in _REDIS_SCHEMES)
            )
        return value

    @field_validator("broker_url", "result_backend")
    @classmethod
    def _no_bare_kombu_sentinel(cls, value: str | None) -> str | None:
        if value is not None and value.lower().startswith("sentinel://"):
            raise ValueError(
                "kombu's sentinel:// form cannot name the master; use "
                f"{SENTINEL_URL_FORM} (or leave it unset to use REVOKER_REDIS_URL's)"
            )
        return value

    @model_validator(mode="after")
    def _sentinel_is_not_cluster(self) -> Self:
        if self.redis_cluster and is_sentinel_url(self.redis_url):
            raise ValueError(
                f"{ENV_PREFIX}REDIS_CLUSTER cannot be combined with a {SENTINEL_SCHEME}:// "
                f"{ENV_PREFIX}REDIS_URL"
            )
        return self

    @field_validator("durability")
    @classmethod
    def _durability_parses(cls, value: str) -> str:
        return str(parse_durability(value))

    @model_validator(mode="after")
    def _durability_fits(self) -> Self:
        if self.durability == "none":
            return self
        if self.redis_cluster:
            raise ValueError(
                f"{ENV_PREFIX}DURABILITY={self.durability} is not supported with "
                f"{ENV_PREFIX}REDIS_CLUSTER (WAIT and WAITAOF answer for one node only)"
            )
        if self.durability_timeout >= self.redis_timeout:
            raise ValueError(
                f"{ENV_PREFIX}DURABILITY_TIMEOUT ({self.durability_timeout:g} s) must be below "
                f"{ENV_PREFIX}REDIS_TIMEOUT ({self.redis_timeout:g} s): the async store's "
                "socket would time out before the wait answers"
            )
        return self

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
    def redis_sentinel(self) -> SentinelConfig | None:
        """The Sentinel-managed master REVOKER_REDIS_URL names, or None for a plain URL."""
        return parse_sentinel_url(self.redis_url) if is_sentinel_url(self.redis_url) else None

    @property
    def effective_broker_url(self) -> str:
        """The Celery broker: ``REVOKER_BROKER_URL``, else ``REVOKER_REDIS_URL``.

        A ``redis+sentinel://`` URL is given in kombu's ``sentinel://...;sentinel://...`` form,
        with :attr:`broker_transport_options` naming the master.
        """
        return _kombu_url(self.broker_url or self.redis_url)

    @property
    def effective_result_backend(self) -> str:
        """The Celery result backend: ``REVOKER_RESULT_BACKEND``, else ``REVOKER_REDIS_URL``
        (a sentinel URL in Celery's form, like :attr:`effective_broker_url`)."""
        return _kombu_url(self.result_backend or self.redis_url)

    @property
    def broker_transport_options(self) -> dict[str, Any]:
        """Transport options the effective broker URL needs (a Sentinel's master name)."""
        return _kombu_options(self.broker_url or self.redis_url)

    @property
    def result_backend_transport_options(self) -> dict[str, Any]:
        """Transport options the effective result backend needs (a Sentinel's master name)."""
        return _kombu_options(self.result_backend or self.redis_url)

    @property
    def durability_policy(self) -> Durability:
        """``REVOKER_DURABILITY`` parsed (see :mod:`revoker.durability`)."""
        return parse_durability(self.durability)

    @property
    def longest_token_ttl(self) -> int:
        """The longest lifetime any token revoker issues can have."""
        return max(self.access_token_ttl, self.refresh_token_ttl)

    @classmethod
    def from_dsn(cls, redis_url: str, **overrides: Any) -> RevokerSettings:
        """Settings for a Redis URL, the rest from the environment or ``overrides``."""
        return load_settings(redis_url=redis_url, **overrides)


def _kombu_url(url: str) -> str:
    return parse_sentinel_url(url).kombu_url() if is_sentinel_url(url) else url


def _kombu_options(url: str) -> dict[str, Any]:
    return parse_sentinel_url(url).kombu_transport_options() if is_sentinel_url(url) else {}


def load_settings(**overrides: Any) -> RevokerSettings:
    """Build settings from the environment plus ``overrides``, or raise ConfigurationError."""
    try:
        return RevokerSettings(**overrides)
    except ValidationError as exc:
        raise ConfigurationError(_explain(exc)) from None


def _explain(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        msg = error["msg"].removeprefix("Value error, ")
        problems.append(f"{ENV_PREFIX}{'_'.join(loc).upper()}: {msg}" if loc else msg)
    if len(problems) == 1:  # one line, as the CLI prints it
        return f"invalid revoker configuration: {problems[0]}"
    return "\n".join(["invalid revoker configuration:", *(f"  {p}" for p in problems)])


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
