"""Push delivery: one destination's queue POSTed in order, with retries and dead letters.

* SSF push (RFC 8935): ``POST`` of the SET, ``Content-Type: application/secevent+jwt``, the
  stream's ``authorization_header`` if it set one. 202 (any 2xx) is delivered; 400 is final (the
  receiver's ``err`` code is kept): the event goes to the dead-letter list at once.
* Back-channel logout (OIDC Back-Channel Logout 1.0 §2.5): ``POST`` of ``logout_token=<JWT>``,
  ``application/x-www-form-urlencoded``; 200 (any 2xx) is delivered, 400 final.
* Anything else (a timeout, a refused connection, 401, 429, 5xx) is retried: the head event waits
  ``REVOKER_EVENTS_RETRY_BASE * 2**(n-1)`` seconds (at most ``REVOKER_EVENTS_RETRY_MAX``, half of
  it random: jitter), and after ``REVOKER_EVENTS_MAX_ATTEMPTS`` attempts it goes to the
  dead-letter list and the queue moves on.

In order, at least once: one task at a time delivers a destination (a lease, renewed before each
POST), the head event is removed only after the receiver accepted it, and a delivery cut by a
killed worker is sent again with the same jti (receivers deduplicate by jti). A paused or
disabled stream is not delivered (paused: held, bounded by ``REVOKER_EVENTS_MAX_HELD``); a poll
stream is delivered by the receiver's polls (:mod:`revoker.events.poll`).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from typing import TYPE_CHECKING, Final, Literal

from revoker._extras import requires_extra
from revoker.events.queue import QueuedEvent
from revoker.events.router import lease, release
from revoker.events.streams import PUSH, Destination
from revoker.events.transmitter import Transmitter
from revoker.metrics import EVENTS

if TYPE_CHECKING:
    import httpx

__all__ = [
    "READ_BATCH",
    "REMOVE_BATCH",
    "Outcome",
    "backoff",
    "deliver",
    "http_client",
    "lease_ms",
    "post_event",
]

log = logging.getLogger("revoker.events")

Outcome = Literal["idle", "busy", "held", "backoff", "more", "gone"]

#: The connection pool of this process: keep-alive to every receiver, across tasks.
_client: httpx.Client | None = None
_client_lock = threading.Lock()
#: Extra milliseconds a delivery lease outlives one POST's timeout.
LEASE_MARGIN_MS: Final = 5_000
#: Seconds between two renewals of a delivery lease (far below its REVOKER_EVENTS_PUSH_TIMEOUT
#: + 5 s: a POST never outlives the lease it started under).
LEASE_RENEW_SECONDS: Final = 1.0
#: Events read from the queue at once.
READ_BATCH: Final = 50
#: Delivered events removed from the queue together (or after REMOVE_SECONDS).
REMOVE_BATCH: Final = 20
REMOVE_SECONDS: Final = 0.2


def http_client() -> httpx.Client:
    """The process-wide HTTP client (keep-alive; created on first use, after a fork)."""
    global _client
    # Imported here: the worker imports this module with the "worker" extra alone, and only a
    # deployment that pushes events needs httpx ("events" extra).
    with requires_extra("events", "revoker.events push delivery"):
        import httpx
    with _client_lock:
        if _client is None:
            _client = httpx.Client(
                follow_redirects=False, limits=httpx.Limits(max_keepalive_connections=32)
            )
        return _client


def lease_ms(t: Transmitter) -> int:
    """How long a delivery lease lasts: a POST's timeout and a margin."""
    return int(t.settings.events_push_timeout * 1000) + LEASE_MARGIN_MS


def backoff(t: Transmitter, attempts: int) -> float:
    """Seconds before attempt ``attempts + 1``: doubled each time, capped, half of it jitter."""
    delay: float = min(
        t.settings.events_retry_max, t.settings.events_retry_base * 2 ** (attempts - 1)
    )
    return delay / 2 + random.uniform(0, delay / 2)  # noqa: S311 - jitter, not a secret


def post_event(
    t: Transmitter, dest: Destination, event: QueuedEvent, client: httpx.Client
) -> tuple[bool, bool, str]:
    """POST one event: (delivered, final, error)."""
    import httpx

    token = t.sign(event.kind, event.claims)
    assert dest.endpoint_url is not None
    timeout = t.settings.events_push_timeout
    try:
        if event.kind == "logout":
            response = client.post(
                dest.endpoint_url,
                data={"logout_token": token},
                timeout=timeout,
            )
        else:
            headers = {"Content-Type": "application/secevent+jwt", "Accept": "application/json"}
            if dest.authorization_header:
                headers["Authorization"] = dest.authorization_header
            response = client.post(
                dest.endpoint_url, content=token.encode(), headers=headers, timeout=timeout
            )
    except httpx.HTTPError as e:
        return False, False, f"{type(e).__name__}: {e}"[:500]
    if 200 <= response.status_code < 300:
        return True, False, ""
    detail = response.text[:300]
    if response.status_code == 400:
        try:
            body = json.loads(response.text)
            code = body.get("err") or body.get("error") or "invalid_request"
            detail = f"{code}: {body.get('description') or body.get('error_description') or ''}"
        except (ValueError, AttributeError):
            pass
        return False, True, f"400 {detail}"[:500]
    return False, False, f"{response.status_code} {detail}"[:500]


def deliver(
    t: Transmitter,
    dest_id: str,
    *,
    token: str | None = None,
    client: httpx.Client | None = None,
    budget: float | None = None,
) -> Outcome:
    """Deliver ``dest_id``'s queue in order for up to ``budget`` seconds (default
    ``REVOKER_EVENTS_PUSH_BUDGET``), holding its lease (``token``: a lease already taken for
    this task). ``more`` means events are left and the budget is spent."""
    ms = lease_ms(t)
    key = t.keys.events_lease(dest_id)
    held = lease(t.client, key, ms, token) if token is not None else None
    if held is None:
        held = lease(t.client, key, ms)
        if held is None:
            return "busy"
    try:
        return _deliver(t, dest_id, held, client or http_client(), budget)
    finally:
        release(t.client, key, held)


def _deliver(
    t: Transmitter, dest_id: str, token: str, client: httpx.Client, budget: float | None
) -> Outcome:
    dest = t.registry.destination(dest_id)
    if dest is None:
        return "gone"
    if dest.method != PUSH or dest.status != "enabled":
        return "held"
    deadline = time.monotonic() + (budget if budget is not None else t.settings.events_push_budget)
    key = t.keys.events_lease(dest_id)
    delivered: list[QueuedEvent] = []
    flushed = renewed = time.monotonic()

    def flush() -> None:
        # Delivered events leave the queue in small groups, not one MULTI/EXEC each (a Redis
        # round trip per event was most of a push's cost): a task killed before a flush sends
        # at most REMOVE_BATCH events again, with their jtis.
        nonlocal flushed
        t.queues.remove(dest_id, delivered)
        EVENTS.labels("delivered").inc(len(delivered))
        delivered.clear()
        flushed = time.monotonic()

    try:
        while True:
            batch = t.queues.head(dest_id, READ_BATCH)
            if not batch:
                return "idle"
            failed_jti, attempts, next_at = t.queues.attempts(dest_id)
            for event in batch:
                if failed_jti != event.jti:
                    attempts, next_at = 0, 0.0
                if next_at > time.time():
                    return "backoff"
                now = time.monotonic()
                if now >= deadline:
                    return "more"
                if now - renewed > LEASE_RENEW_SECONDS:
                    if lease(t.client, key, lease_ms(t), token) is None:
                        return "busy"  # our lease lapsed and another task took the destination
                    renewed = now
                ok, final, error = post_event(t, dest, event, client)
                if ok:
                    delivered.append(event)
                    if len(delivered) >= REMOVE_BATCH or now - flushed > REMOVE_SECONDS:
                        flush()
                    continue
                flush()
                attempts += 1
                if final or attempts >= t.settings.events_max_attempts:
                    log.warning(
                        "event %s to %s dead-lettered after %d attempts: %s",
                        event.jti, dest_id, attempts, error,
                    )  # fmt: skip
                    t.queues.dead_letter(dest_id, event, error, attempts)
                    EVENTS.labels("dead_lettered").inc()
                    failed_jti = ""
                    continue
                next_try = time.time() + backoff(t, attempts)
                t.queues.note_failure(dest_id, event.jti, attempts, next_try)
                EVENTS.labels("retried").inc()
                return "backoff"
            flush()
    finally:
        if delivered:
            flush()
