"""The per-request check, shared by the middleware, the dependency and the admin API.

Parse the bearer token, verify it (cached by exact token string), then learn whether any rule
revokes it. The failure policy (fail-open or fail-closed) is the caller's: a Redis failure is
reported, not decided, here.

The check mode (``REVOKER_CHECK_MODE``) is chosen here, once, for every caller:

* ``redis``: ask the store in one round trip;
* ``mirror``: ask the process's mirror (:mod:`revoker.mirror`, started by the first check): no
  Redis command while it is fresh (within REVOKER_MIRROR_MAX_LAG); otherwise the round trip, and
  when Redis cannot answer, the mirror's state within REVOKER_MIRROR_MAX_STALENESS before the
  failure policy. Both decide with ``rules.decide`` on the same values.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from revoker import exceptions as exc
from revoker.breaker import CircuitBreaker, Transition
from revoker.metrics import BREAKER_OPEN, CHECK_LATENCY, CHECKS, MIRROR_FALLBACKS
from revoker.rules import RevocationStatus
from revoker.settings import RevokerSettings, get_settings
from revoker.tokens import MAX_TOKEN_BYTES, TokenData, TokenVerifier, get_verifier

if TYPE_CHECKING:
    from revoker.mirror import Mirror
    from revoker.store import RedisTokenRevocationStore

__all__ = ["CheckResult", "RevocationChecker", "bearer_token"]

logger = logging.getLogger("revoker.check")

#: RFC 6750 §2.1 b64token: what a bearer credential may contain.
_B64TOKEN: Final = re.compile(rb"[A-Za-z0-9\-._~+/]+=*")
_AUTHORIZATION: Final = b"authorization"
#: The spelling nearly every client sends: "Bearer <b64token>", nothing around it. A value it
#: matches reads the same by the full rule below (strip, split at the first space, scheme
#: case-blind, b64token); any other value is read by that rule.
_PLAIN_BEARER: Final = re.compile(rb"[Bb][Ee][Aa][Rr][Ee][Rr] ([A-Za-z0-9\-._~+/]+=*)")


#: Authorization values read, and the token each carries: a client sends the same value on
#: every request, and a dict lookup by the value costs a tenth of the match and decode (and
#: the token comes back as the same string object, whose hash the verify cache then reuses).
#: A pure function of the bytes; only values that carry a token, of at most
#: _BEARERS_VALUE_BYTES; emptied when _BEARERS_SIZE are held (at most ~5 MB).
_BEARERS: dict[bytes, str] = {}
_BEARERS_SIZE: Final = 1024
_BEARERS_VALUE_BYTES: Final = 2048
_AUTHORIZATION_LENGTH: Final = len(_AUTHORIZATION)


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The bearer token of raw ASGI headers; None when there is no bearer credential.

    Raises TokenTooLarge before looking inside an oversized value, and MalformedToken for a
    repeated Authorization header or a bearer value that is not an RFC 6750 b64token.
    """
    found: bytes | None = None
    for name, value in headers:
        # ASGI servers send names lower-cased; the lower() is for the rest (of the right size).
        if name != _AUTHORIZATION and (
            len(name) != _AUTHORIZATION_LENGTH or name.lower() != _AUTHORIZATION
        ):
            continue
        if found is not None:
            raise exc.MalformedToken("more than one Authorization header")
        found = value
    if found is None:
        return None
    if len(found) > MAX_TOKEN_BYTES:
        raise exc.TokenTooLarge(f"Authorization header is larger than {MAX_TOKEN_BYTES} bytes")
    token = _BEARERS.get(found)
    if token is not None:
        return token
    plain = _PLAIN_BEARER.fullmatch(found)
    if plain is not None:
        token = plain[1].decode("ascii")
        if len(found) <= _BEARERS_VALUE_BYTES:
            if len(_BEARERS) >= _BEARERS_SIZE:
                _BEARERS.clear()
            _BEARERS[found] = token
        return token
    scheme, _, credentials = found.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    credentials = credentials.strip()
    if not credentials:
        raise exc.MalformedToken("bearer token is empty")
    if _B64TOKEN.fullmatch(credentials) is None:
        raise exc.MalformedToken("bearer token has characters a JWT cannot contain")
    return credentials.decode("ascii")


@dataclass(frozen=True, slots=True)
class CheckResult:
    """A verified token, and whether the revocation lookup could be made."""

    token: TokenData
    #: Set when Redis could not answer: the token verified, but its revocation is unknown.
    store_error: exc.StoreUnavailable | None = None


class RevocationChecker:
    """Verify and look up one token. One per event loop (the breaker is not thread-safe).

    Failures are sorted here, once, for the middleware and the dependency alike:

    * a token that does not verify raises a TokenError (401); so does an unexpected error inside
      verification, logged with its traceback: a token nobody could verify is never admitted;
    * a Redis failure, a timeout, an open breaker, and any unexpected error inside the lookup (a
      store bug) are reported in ``CheckResult.store_error`` for the caller's failure policy
      (:meth:`admit_unchecked`); the unexpected ones are logged with their traceback.
    """

    def __init__(
        self,
        store: RedisTokenRevocationStore | None = None,
        *,
        settings: RevokerSettings | None = None,
        verifier: TokenVerifier | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.settings = settings or (store.settings if store is not None else get_settings())
        self.verifier = verifier or get_verifier(self.settings)
        self._store = store
        self.breaker = breaker or CircuitBreaker(
            self.settings.breaker_failures, self.settings.breaker_reset_seconds
        )
        # Each counts one when called: a C call per request (metrics.TalliedCounter).
        self._ok = CHECKS.counting("ok")
        self._revoked = CHECKS.counting("revoked")
        self._invalid = CHECKS.counting("invalid")
        self._error_open = CHECKS.counting("error_open")
        self._error_closed = CHECKS.counting("error_closed")
        self.mode = self.settings.check_mode
        # The running loop's mirror, looked up once per loop (mirror mode only), and the thread
        # that loop runs in.
        self._mirror: Mirror | None = None
        self._mirror_loop: asyncio.AbstractEventLoop | None = None
        self._mirror_thread: int | None = None
        self._to_redis = MIRROR_FALLBACKS.labels("redis")
        self._to_stale = MIRROR_FALLBACKS.labels("stale")

    def mirror(self) -> Mirror | None:
        """The running loop's mirror in mirror mode (started on first use), else None."""
        if self.mode != "mirror":
            return None
        loop = asyncio.get_running_loop()
        if self._mirror_loop is not loop or self._mirror is None:
            from revoker.mirror import get_mirror

            self._mirror = get_mirror(self.settings, self._store)
            self._mirror_loop = loop
            self._mirror_thread = threading.get_ident()
        return self._mirror

    async def aclose(self) -> None:
        """Stop this checker's mirror, if it started one (a lifespan's shutdown)."""
        mirror, self._mirror = self._mirror, None
        if mirror is not None:
            await mirror.stop()

    @property
    def store(self) -> RedisTokenRevocationStore:
        if self._store is not None:
            return self._store
        # Looked up per call: the process-wide store is one per event loop (see
        # get_revocation_store), and a middleware object can outlive the loop it first saw.
        return _process_store(self.settings)

    def check_now(self, token: str) -> CheckResult | None:
        """The warm path, without awaiting: the result for a token held by the verify cache
        that the running loop's fresh mirror finds nothing against (counted ``ok``). None when
        :meth:`check` must answer: not cached, not mirror mode (or its mirror not started on
        this loop yet), the mirror not fresh, or some rule to look at.

        One cache lookup: the cache's entry keeps what the mirror looks the token up by, the
        result, and the state version at which the mirror last admitted it
        (:attr:`CachedToken.memo <revoker.tokens.CachedToken.memo>`). Any change to the state
        changes its version (:attr:`MirrorState.version <revoker.mirror.MirrorState.version>`),
        so a token is looked up again whenever anything it could be revoked by may have
        changed, and otherwise costs one integer comparison (no dictionary or digest touched:
        in a busy server, those reads miss the CPU's caches)."""
        mirror = self._mirror
        # The mirror's loop, told by its thread: asyncio.get_running_loop() makes a getpid()
        # system call each time. A thread runs another loop only once this one is gone, and
        # the loop's end stops its mirror's task, which ends its freshness (fresh_state None).
        if mirror is None or self._mirror_thread != threading.get_ident():
            return None
        entry = self.verifier.cached_entry(token)
        if entry is None:
            return None
        state = mirror.fresh_state
        if state is None or time.monotonic() > mirror.fresh_until:
            return None
        memo = entry.memo
        if memo is None or memo[0] is not state.key:
            try:
                lookup = state.lookup_of(entry.data)
            except exc.InvalidIdentifier:
                return None  # check() sends it to the round trip
            memo = entry.memo = (state.key, lookup, CheckResult(entry.data), 0)
        if memo[3] != state.version:
            if not state.admits(memo[1]):
                return None
            entry.memo = (memo[0], memo[1], memo[2], state.version)
        self._ok()
        result: CheckResult = memo[2]
        return result

    async def check(self, token: str) -> CheckResult:
        """Verify ``token`` as an access token and look it up.

        Raises a TokenError (TokenRevoked when revoked); reports a Redis failure in the result.
        """
        try:
            if self.verifier.fetches_keys:
                # A JWKS (re)fetch is a blocking HTTP call: keep it off the event loop, so one
                # unknown kid does not stall every request in flight. Cache hits stay inline.
                cached = self.verifier.cached(token, "access")
                if cached is None:
                    cached = await asyncio.to_thread(
                        self.verifier.decode, token, "access", use_cache=True
                    )
                data = cached
            else:
                data = self.verifier.decode(token, "access", use_cache=True)
        except exc.TokenError:
            self._invalid()
            raise
        except Exception as e:
            self._invalid()
            logger.exception("token verification failed unexpectedly")
            raise exc.TokenError("token could not be verified") from e
        mirror = self.mirror() if self.mode == "mirror" else None
        if mirror is not None:
            try:
                found = mirror.status(data, time.monotonic())
            except exc.InvalidIdentifier:
                found = None  # the round trip refuses it the same way, through the policy
            if found is not None:
                return self._decided(data, found)
            self._to_redis.inc()
        result = await self._round_trip(data)
        if isinstance(result, CheckResult):
            if mirror is not None and not isinstance(result.store_error, exc.DenylistLost):
                stale = mirror.stale_status(data, time.monotonic())
                if stale is not None:
                    self._to_stale.inc()
                    return self._decided(data, stale)
            return result
        return self._decided(data, result)

    def _decided(self, data: TokenData, status: RevocationStatus) -> CheckResult:
        if status.revoked:
            self._revoked()
            raise exc.TokenRevoked(status, data)
        self._ok()
        return CheckResult(data)

    async def _round_trip(self, data: TokenData) -> RevocationStatus | CheckResult:
        """The store's one-round-trip lookup: its status, or the failure to report."""
        if not self.breaker.allow():
            return CheckResult(data, _BREAKER_OPEN)
        started = time.perf_counter()
        try:
            status = await self.store.is_revoked(data)
        except exc.DenylistLost as e:
            # Redis answered: nothing for the breaker. The policy, not fail-open, decides: 503.
            return CheckResult(data, e)
        except exc.StoreUnavailable as e:
            self._failed(str(e))
            return CheckResult(data, e)
        except Exception as e:
            # A bug in the store (or a client error it did not translate) says nothing about the
            # token: it goes through the failure policy like an unreachable Redis, loudly.
            logger.exception("revocation lookup failed unexpectedly")
            self._failed(f"{type(e).__name__}: {e}")
            return CheckResult(data, exc.StoreUnavailable(f"revocation lookup failed: {e!r}"))
        CHECK_LATENCY.observe(time.perf_counter() - started)
        if self.breaker.state != "closed":
            self._transition(self.breaker.record_success(), None)
        else:
            self.breaker.record_success()
        return status

    def admit_unchecked(self, fail_open: bool, error: exc.StoreUnavailable | None = None) -> bool:
        """Apply the failure policy to a token whose revocation is unknown; count the outcome.

        A lost denylist under REVOKER_ON_DATA_LOSS=fail-closed (``error`` a DenylistLost) is never
        let through, whatever ``fail_open`` says."""
        if fail_open and isinstance(error, exc.DenylistLost):
            fail_open = False
        if fail_open:
            self._error_open()
        else:
            self._error_closed()
        return fail_open

    def _failed(self, error: str) -> None:
        self._transition(self.breaker.record_failure(), error)

    def _transition(self, change: Transition | None, error: str | None) -> None:
        if change is None:
            return
        before, after = change
        extra = {
            "breaker_from": before,
            "breaker_to": after,
            "consecutive_failures": self.breaker.consecutive_failures,
            "error": error,
        }
        if after == "closed":
            BREAKER_OPEN.set(0)
            logger.info("revocation store reachable again; breaker closed", extra=extra)
        else:
            BREAKER_OPEN.set(1)
            logger.warning(
                "revocation store unavailable; breaker open for %.3gs",
                self.breaker.reset_seconds,
                extra=extra,
            )


def _process_store(settings: RevokerSettings) -> RedisTokenRevocationStore:
    """``revoker.store.get_revocation_store(settings)``, imported once (revoker.store imports
    this module): an import statement per request costs a microsecond of import machinery."""
    global _get_revocation_store
    if _get_revocation_store is None:
        from revoker.store import get_revocation_store

        _get_revocation_store = get_revocation_store
    return _get_revocation_store(settings)


_get_revocation_store: Callable[[RevokerSettings], RedisTokenRevocationStore] | None = None

#: Reported while the breaker is open: one shared instance, nothing is allocated per request.
_BREAKER_OPEN: Final = exc.StoreUnavailable("circuit breaker open: Redis is down")
