"""Registered API clients: who may call the admin API with client credentials, and for what.

A client is what a gateway, a resource server or an issuing service authenticates as on the admin
API (RFC 6749 §2.3.1: ``client_secret_basic`` or ``client_secret_post``). Each has an id, a name,
the scopes it is granted (:data:`SCOPES`), its creation time and, optionally, the OpenID
back-channel logout URI of the relying party it is (used by revoker's event delivery).

Secrets are 256 random bits, shown once when made (``revoker clients add`` / ``rotate-secret``)
and stored only as an Argon2id hash (argon2-cffi): never in clear, never logged. The parameters
are OWASP's minimum for Argon2id (19 MiB, 2 passes, 1 lane) rather than argon2-cffi's default
(64 MiB, 3 passes, 4 lanes): the secrets are random, so no work factor makes guessing them any
harder than 2^256 already does, and a lighter check bounds what a flood of wrong secrets costs
the API (measured on a loaded 2-core host: 0.15 s per check against 2.3 s for the default). Each
hash carries its parameters, so changing them later leaves stored hashes verifiable.

Argon2 is still slow on purpose, and a resource server may introspect on every request it
serves, so a *successful* check is remembered
in this process for :data:`VERIFIED_TTL` seconds, keyed by the client id, the stored hash and an
HMAC of the presented secret under a per-process random key. The client's record is still read
from Redis on every request: a rotated secret or a removed client is refused at once, because the
stored hash no longer matches the one remembered (or there is none).

The Redis keys are :meth:`revoker.keys.KeyLayout.client` (one hash per client, fields below) and
:attr:`~revoker.keys.KeyLayout.clients` (the set of ids). The record format is this module's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from cachetools import TTLCache

from revoker import exceptions as exc
from revoker.keys import escape_id

if TYPE_CHECKING:
    from collections.abc import Iterable

    from revoker.keys import KeyLayout

__all__ = [
    "ADMIN_SCOPE",
    "INTROSPECT_SCOPE",
    "MAX_NAME_LENGTH",
    "REVOKE_SCOPE",
    "SCOPES",
    "SECRET_CHECKS_AT_ONCE",
    "SECRET_CHECKS_QUEUED",
    "VERIFIED_TTL",
    "AsyncClientRegistry",
    "ClientExists",
    "ClientNotFound",
    "ClientRecord",
    "ClientRegistry",
    "check_scopes",
    "hash_secret",
    "new_client_id",
    "new_secret",
    "verify_secret",
]

#: May call ``POST /oauth/introspect`` (a resource server, a gateway).
INTROSPECT_SCOPE: Final = "revoker:introspect"
#: May revoke any token (``POST /oauth/revoke``), enqueue bulk jobs and read them.
REVOKE_SCOPE: Final = "revoker:revoke"
#: Everything the admin API does.
ADMIN_SCOPE: Final = "revoker:admin"
#: The scopes a client (or a token minted for an operator) can be granted.
SCOPES: Final = (INTROSPECT_SCOPE, REVOKE_SCOPE, ADMIN_SCOPE)

#: Longest client name accepted.
MAX_NAME_LENGTH: Final = 200
#: Seconds a successful secret check is remembered in this process (module docstring).
VERIFIED_TTL: Final = 300.0
#: Most remembered checks (one per client and secret in use).
_VERIFIED_MAX: Final = 4096
_NAME: Final = re.compile(r"[^\x00-\x1f\x7f]+")
#: A chosen client id: characters form-urlencoding leaves as they are, so that a client sending
#: ``id:secret`` in Basic credentials encoded (RFC 6749 §2.3.1) or not (most do not) is the same.
_CLIENT_ID: Final = re.compile(r"[A-Za-z0-9._~-]{1,128}")


class ClientNotFound(exc.RevokerError, LookupError):
    """No client is registered under this id."""


class ClientExists(exc.RevokerError, ValueError):
    """A client is already registered under this id."""


@dataclass(frozen=True)
class ClientRecord:
    """One registered client, as stored (the secret's hash is not part of what is shown)."""

    client_id: str
    name: str
    scopes: tuple[str, ...]
    created_at: int
    secret_rotated_at: int
    backchannel_logout_uri: str | None = None
    secret_hash: str = field(default="", repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """What ``revoker clients list --json`` prints: everything but the hash."""
        return {
            "client_id": self.client_id,
            "name": self.name,
            "scopes": list(self.scopes),
            "created_at": self.created_at,
            "secret_rotated_at": self.secret_rotated_at,
            "backchannel_logout_uri": self.backchannel_logout_uri,
        }


# --- pure rules: ids, secrets, hashing, the record's fields ---------------------------------------


def new_client_id() -> str:
    """A new random client id: 128 bits, URL-safe, usable as a token's ``client_id`` claim."""
    from revoker.tokens import generate_jti

    return generate_jti()


def new_secret() -> str:
    """A new client secret: 256 random bits, URL-safe (nothing to escape in a Basic header)."""
    return secrets.token_urlsafe(32)


@functools.cache
def _hasher() -> Any:
    from revoker._extras import requires_extra

    with requires_extra("server", "client secrets"):
        from argon2 import PasswordHasher

    return PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)


def hash_secret(secret: str) -> str:
    """The Argon2id hash (PHC string, salt included) stored for ``secret``."""
    return str(_hasher().hash(secret))


def verify_secret(secret_hash: str, secret: str) -> bool:
    """Whether ``secret`` is the one ``secret_hash`` was made from (Argon2, constant-time)."""
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return bool(_hasher().verify(secret_hash, secret))
    except (VerificationError, InvalidHashError):
        return False


def check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """The scopes, deduplicated in order; ValueError naming any that is not one of SCOPES."""
    chosen = tuple(dict.fromkeys(scopes))
    if not chosen:
        raise ValueError(f"a client needs at least one scope: {', '.join(SCOPES)}")
    unknown = [scope for scope in chosen if scope not in SCOPES]
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r}; scopes are {', '.join(SCOPES)}")
    return chosen


def _check_name(name: str) -> str:
    if not 0 < len(name) <= MAX_NAME_LENGTH or _NAME.fullmatch(name) is None:
        raise ValueError(f"a client name is 1 to {MAX_NAME_LENGTH} printable characters")
    return name


def _check_uri(uri: str | None) -> str | None:
    if uri is None:
        return None
    parts = urlsplit(uri)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.fragment:
        raise ValueError("backchannel_logout_uri must be an absolute http(s) URI without fragment")
    return uri


def _encode(record: ClientRecord) -> dict[str, str]:
    fields = {
        "name": record.name,
        "scopes": " ".join(record.scopes),
        "created_at": str(record.created_at),
        "secret_rotated_at": str(record.secret_rotated_at),
        "secret_hash": record.secret_hash,
    }
    if record.backchannel_logout_uri is not None:
        fields["backchannel_logout_uri"] = record.backchannel_logout_uri
    return fields


def _decode(client_id: str, raw: dict[Any, Any]) -> ClientRecord | None:
    fields = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }
    if "secret_hash" not in fields:
        return None
    return ClientRecord(
        client_id=client_id,
        name=fields.get("name", ""),
        scopes=tuple(fields.get("scopes", "").split()),
        created_at=int(fields.get("created_at", 0)),
        secret_rotated_at=int(fields.get("secret_rotated_at", 0)),
        backchannel_logout_uri=fields.get("backchannel_logout_uri") or None,
        secret_hash=fields["secret_hash"],
    )


# --- bounding the secret checks -----------------------------------------------------------------

#: Argon2 checks the admin API runs at once per process. Each takes ~19 MiB and most of a core for
#: ~0.1 s, so a flood of wrong secrets (which no memo can answer) would otherwise take every core
#: and every default-executor thread of the API, starving its other requests.
SECRET_CHECKS_AT_ONCE: Final = 2
#: Checks that may wait for one of those threads (~1 s of work at the rate above); past them a
#: check is refused at once (Overloaded: 503 with Retry-After) rather than queued without bound.
SECRET_CHECKS_QUEUED: Final = 16

# Its own pool: queued checks wait in its queue, not in threads other work needs.
_secret_checks = concurrent.futures.ThreadPoolExecutor(
    SECRET_CHECKS_AT_ONCE, thread_name_prefix="revoker-secret-check"
)
_secret_checks_pending = 0
_secret_checks_lock = threading.Lock()


async def _bounded_check(
    keys: KeyLayout, record: ClientRecord | None, secret: str
) -> ClientRecord | None:
    """:func:`_check` in the secret-check pool, or Overloaded when its queue is full."""
    global _secret_checks_pending
    with _secret_checks_lock:
        if _secret_checks_pending >= SECRET_CHECKS_AT_ONCE + SECRET_CHECKS_QUEUED:
            raise exc.Overloaded("too many client secret checks in progress; retry shortly")
        _secret_checks_pending += 1
    try:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_secret_checks, _check, keys, record, secret)
    finally:
        with _secret_checks_lock:
            _secret_checks_pending -= 1


# --- remembering successful checks ------------------------------------------------------------

_process_key: Final = secrets.token_bytes(32)
_verified: TTLCache[tuple[str, str, bytes], bool] = TTLCache(_VERIFIED_MAX, VERIFIED_TTL)
_verified_lock = threading.Lock()
_dummy_hash: list[str] = []


def _memo_key(keys: KeyLayout, record: ClientRecord, secret: str) -> tuple[str, str, bytes]:
    digest = hmac.digest(_process_key, secret.encode(), hashlib.sha256)
    return (keys.client(record.client_id), record.secret_hash, digest)


def _remembered(keys: KeyLayout, record: ClientRecord | None, secret: str) -> bool:
    """Whether ``secret`` was verified against ``record``'s current hash in the last
    VERIFIED_TTL seconds (cheap: no Argon2)."""
    if record is None:
        return False
    with _verified_lock:
        return bool(_verified.get(_memo_key(keys, record, secret)))


def _check(keys: KeyLayout, record: ClientRecord | None, secret: str) -> ClientRecord | None:
    """``record`` if ``secret`` is its secret, else None; an unknown client costs a check too, so
    that the answer's timing does not say which client ids exist."""
    if record is None:
        if not _dummy_hash:
            _dummy_hash.append(hash_secret(new_secret()))
        verify_secret(_dummy_hash[0], secret)
        return None
    if _remembered(keys, record, secret):
        return record
    memo = _memo_key(keys, record, secret)
    if not verify_secret(record.secret_hash, secret):
        return None
    with _verified_lock:
        _verified[memo] = True
    return record


def _valid_id(client_id: str) -> bool:
    try:
        escape_id(client_id, "client id")
    except exc.InvalidIdentifier:
        return False
    return True


# --- the registries: thin I/O over the rules above ----------------------------------------------


class ClientRegistry:
    """The registered clients, read and written with a blocking redis-py client (the CLI)."""

    def __init__(self, client: Any, keys: KeyLayout) -> None:
        self.client = client
        self.keys = keys

    def add(
        self,
        name: str,
        scopes: Iterable[str],
        *,
        client_id: str | None = None,
        backchannel_logout_uri: str | None = None,
    ) -> tuple[ClientRecord, str]:
        """Register a client; returns its record and its secret (the only time it is seen).

        Raises ValueError for a bad name, scope or URI, ClientExists for a taken id.
        """
        if client_id is None:
            client_id = new_client_id()
        elif _CLIENT_ID.fullmatch(client_id) is None:
            raise ValueError("a client id is 1 to 128 of A-Z a-z 0-9 . _ ~ -")
        secret = new_secret()
        now = int(time.time())
        record = ClientRecord(
            client_id=client_id,
            name=_check_name(name),
            scopes=check_scopes(scopes),
            created_at=now,
            secret_rotated_at=now,
            backchannel_logout_uri=_check_uri(backchannel_logout_uri),
            secret_hash=hash_secret(secret),
        )
        key = self.keys.client(client_id)
        # HSETNX on the hash's always-present field claims the id atomically; the rest follows
        # in one MULTI/EXEC (same slot: the {clients} tag).
        if not self.client.hsetnx(key, "secret_hash", record.secret_hash):
            raise ClientExists(f"a client with id {client_id!r} is already registered")
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping=_encode(record))
        pipe.sadd(self.keys.clients, client_id)
        pipe.execute()
        return record, secret

    def get(self, client_id: str) -> ClientRecord | None:
        """The client registered under ``client_id``, or None."""
        if not _valid_id(client_id):
            return None
        return _decode(client_id, self.client.hgetall(self.keys.client(client_id)))

    def list(self) -> list[ClientRecord]:
        """Every registered client, oldest first."""
        ids = sorted(
            (i.decode() if isinstance(i, bytes) else i)
            for i in self.client.smembers(self.keys.clients)
        )
        records = [record for record in map(self.get, ids) if record is not None]
        return sorted(records, key=lambda r: (r.created_at, r.client_id))

    def rotate_secret(self, client_id: str) -> tuple[ClientRecord, str]:
        """A new secret for the client; the old one stops working at once."""
        record = self.get(client_id)
        if record is None:
            raise ClientNotFound(f"no client {client_id!r}")
        secret = new_secret()
        now = int(time.time())
        secret_hash = hash_secret(secret)
        key = self.keys.client(client_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.exists(key)
        pipe.hset(key, mapping={"secret_hash": secret_hash, "secret_rotated_at": str(now)})
        existed, _ = pipe.execute()
        if not existed:  # removed between the read and the write: do not resurrect it half-made
            self.client.delete(key)
            raise ClientNotFound(f"no client {client_id!r}")
        return replace(record, secret_hash=secret_hash, secret_rotated_at=now), secret

    def remove(self, client_id: str) -> bool:
        """Unregister the client; its secret stops working at once. False if there was none."""
        if not _valid_id(client_id):
            return False
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.keys.client(client_id))
        pipe.srem(self.keys.clients, client_id)
        deleted, _ = pipe.execute()
        return bool(deleted)

    def authenticate(self, client_id: str, secret: str) -> ClientRecord | None:
        """The client if ``secret`` is its current secret, else None."""
        return _check(self.keys, self.get(client_id), secret)


class AsyncClientRegistry:
    """The registered clients as the admin API reads them (redis.asyncio); the secret check
    runs in a small pool of its own, off the event loop (Argon2 releases the GIL)."""

    def __init__(self, client: Any, keys: KeyLayout) -> None:
        self.client = client
        self.keys = keys

    async def get(self, client_id: str) -> ClientRecord | None:
        """The client registered under ``client_id``, or None."""
        if not _valid_id(client_id):
            return None
        return _decode(client_id, await self.client.hgetall(self.keys.client(client_id)))

    async def authenticate(self, client_id: str, secret: str) -> ClientRecord | None:
        """The client if ``secret`` is its current secret, else None. Redis errors propagate
        (the caller fails closed); Overloaded when the process's secret checks are at their
        bound (:data:`SECRET_CHECKS_AT_ONCE` running, :data:`SECRET_CHECKS_QUEUED` waiting)."""
        record = await self.get(client_id)
        if _remembered(self.keys, record, secret):
            return record  # the usual case: no thread hop
        return await _bounded_check(self.keys, record, secret)
