"""The router: revocations in, one ordered queue of events per destination out.

Sources, both read through one consumer group (:data:`~revoker.events.streams.EVENTS_GROUP`), so
nothing is lost across restarts: an entry is acknowledged (XACK) only after its events are in
their queues, and a router that died in between reads its pending entries again first (the same
jtis: the queue's index keeps one copy).

* the audit stream (``P:audit``), written in the same step as every revocation: a family
  (``family``, ``family_reuse``), a user or a tenant watermark (``user``, ``tenant``). A
  watermark is one event for the user or tenant; a revoked token (``token``) names no session and
  produces none.
* the chunk stream (``P:{ssf}:chunks``): the sessions of bulk-job chunks, written by
  :func:`revoker.events.emit_chunk_events` only while some destination wants per-session events.

One router runs at a time (a lease, ``P:{ssf}:pump``), so events enter each queue in the order the
router read them. The audit stream is trimmed by ``REVOKER_AUDIT_MAX_LEN`` and
``REVOKER_AUDIT_RETENTION``: a router stopped longer than that misses the entries trimmed meanwhile.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, Final

from redis.exceptions import ResponseError

from revoker import keys as k
from revoker.events.claims import (
    SESSION_REVOKED,
    Occurrence,
    event_jti,
    initiating_entity,
    logout_claims,
    session_revoked_claims,
    subject_members,
)
from revoker.events.streams import EVENTS_GROUP, Destination
from revoker.events.transmitter import Transmitter
from revoker.exceptions import InvalidIdentifier
from revoker.metrics import EVENTS

__all__ = ["CONSUMER", "ROUTE_BATCH", "lease", "release", "route"]

#: The router's consumer name: one router at a time, so one name (its pending entries are its own).
CONSUMER: Final = "router"
#: Entries read per XREADGROUP.
ROUTE_BATCH: Final = 500
#: Milliseconds the router lease lasts; renewed per batch.
ROUTER_LEASE_MS: Final = 15_000

_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


def lease(client: Any, key: str, ms: int, token: str | None = None) -> str | None:
    """Take (or, with its ``token``, renew) the lease ``key`` for ``ms``; None if another
    holds it."""
    if token is not None:
        return token if client.eval(_RENEW, 1, key, token, ms) else None
    token = secrets.token_hex(8)
    return token if client.set(key, token, nx=True, px=ms) else None


def release(client: Any, key: str, token: str) -> None:
    """Give up a lease taken with ``token`` (another's is left alone)."""
    client.eval(_RELEASE, 1, key, token)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _fields(raw: dict[Any, Any]) -> dict[str, str]:
    return {_text(name): _text(value) for name, value in raw.items()}


def occurrences_of_audit(entry_id: str, f: dict[str, str]) -> list[Occurrence]:
    """What one audit entry means for events (nothing for kinds that revoke no session)."""
    kind = f.get("kind", "")
    tenant = f.get("tenant") or None
    common: dict[str, Any] = {
        "source": f"a:{entry_id}",
        "tenant_id": tenant,
        "at_us": k.decode_time(f.get("at")) or 0,
        "reason": f.get("reason") or None,
        "initiator": initiating_entity(kind, f.get("actor") or None),
        "actor": f.get("actor") or None,
    }
    target = f.get("target", "")
    if kind == "family":
        return [Occurrence("session", family_id=target, **common)]
    if kind == "family_reuse":
        return [Occurrence("session", family_id=target, user_id=f.get("user") or None, **common)]
    if kind == "user":
        return [Occurrence("user", user_id=target, **common)]
    if kind == "tenant":
        return [Occurrence("tenant", **common)]
    return []


def occurrences_of_chunk(f: dict[str, str]) -> list[Occurrence]:
    """The sessions of one chunk-stream entry (see :func:`revoker.events.emit_chunk_events`)."""
    tenant = f.get("tenant") or None
    at = k.decode_time(f.get("at")) or 0
    initiator = initiating_entity("job_chunk", f.get("actor") or None)
    out = []
    for family, user, client in json.loads(f.get("s") or "[]"):
        out.append(
            Occurrence(
                "session",
                source=f"j:{f.get('job', '')}",
                tenant_id=tenant,
                user_id=user or None,
                family_id=family,
                client_id=client or None,
                at_us=at,
                reason=f.get("reason") or None,
                initiator=initiator,
                bulk=True,
            )
        )
    return out


def _with_sessions(t: Transmitter, found: list[Occurrence]) -> list[Occurrence]:
    """Single family revocations with their session's user and client, where its record is
    still there (a record is read once per family, in one pipeline)."""
    lookups: list[tuple[int, str]] = []
    pipe = t.client.pipeline(transaction=False)
    for n, occ in enumerate(found):
        if occ.scope == "session" and not occ.bulk and occ.family_id is not None:
            bucket = k.family_bucket(occ.family_id)
            if bucket is None:
                continue
            try:
                key = t.keys.session_bucket(occ.tenant_id, bucket)
            except InvalidIdentifier:
                continue
            pipe.hget(key, occ.family_id)
            lookups.append((n, occ.family_id))
    if not lookups:
        return found
    out = list(found)
    for (n, _), raw in zip(lookups, pipe.execute(), strict=True):
        if raw is None:
            continue
        record = k.decode_record(raw)
        occ = out[n]
        user = occ.user_id or record["user"] or None
        initiator = occ.initiator
        if initiator == "admin":
            initiator = initiating_entity("family", occ.actor, user)
        out[n] = replace(occ, user_id=user, client_id=record["client"] or None, initiator=initiator)
    return out


def events_for(
    t: Transmitter, occ: Occurrence, dests: Iterable[Destination]
) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(destination, jti, kind, claims) of every event ``occ`` produces."""
    out = []
    members: dict[str, dict[str, Any]] | None = None
    for dest in dests:
        if dest.kind == "logout":
            # A relying party hears of its own sessions, one logout token each.
            if occ.scope != "session" or occ.client_id is None or occ.client_id != dest.client_id:
                continue
            jti = event_jti(dest.id, occ)
            out.append(
                (
                    dest.id,
                    jti,
                    "logout",
                    logout_claims(occ, iss=t.issuer, client_id=dest.client_id, jti=jti),
                )
            )
            continue
        if dest.status == "disabled" or SESSION_REVOKED not in dest.events_delivered:
            continue
        if occ.bulk and not dest.per_session:
            continue
        if members is None:
            members = subject_members(occ, t.user_issuer)
        if not dest.matches(members):
            continue
        jti = event_jti(dest.id, occ)
        claims = session_revoked_claims(
            occ, iss=t.issuer, aud=dest.aud, jti=jti, user_issuer=t.user_issuer
        )
        out.append((dest.id, jti, "set", claims))
    return out


def route(t: Transmitter, *, budget: float = 5.0) -> int:
    """Move what the sources hold into the queues, for up to ``budget`` seconds; returns the
    events queued (0 when another router holds the lease)."""
    token = lease(t.client, t.keys.events_pump, ROUTER_LEASE_MS)
    if token is None:
        return 0
    queued = 0
    try:
        dests = t.registry.destinations()
        # The bulk jobs' hook reads this flag: a stream or relying party added since the last
        # run starts receiving per-session events within a run (and the hook's 1 s cache).
        t.registry.refresh_wanted(dests)
        if not dests:
            return 0
        t.registry.ensure_groups()
        deadline = time.monotonic() + budget
        # One source per call: on a Redis Cluster the audit stream and the chunk stream live in
        # different slots. Pending entries first (a router that died before its XACK), then new.
        for source in (t.keys.audit, t.keys.events_chunks):
            for start in ("0", ">"):
                while time.monotonic() < deadline:
                    try:
                        replies = t.client.xreadgroup(
                            EVENTS_GROUP, CONSUMER, {source: start}, count=ROUTE_BATCH
                        )
                    except ResponseError as e:
                        if "NOGROUP" not in str(e):
                            raise
                        t.registry.ensure_groups()
                        continue
                    entries = [(_text(name), rows) for name, rows in replies or [] if rows]
                    if not entries:
                        break
                    queued += _route_batch(t, dests, entries)
                    if lease(t.client, t.keys.events_pump, ROUTER_LEASE_MS, token) is None:
                        return queued  # our lease lapsed: another router carries on
    finally:
        release(t.client, t.keys.events_pump, token)
    return queued


def _route_batch(
    t: Transmitter, dests: list[Destination], entries: list[tuple[str, list[Any]]]
) -> int:
    found: list[Occurrence] = []
    acks: dict[str, list[str]] = {}
    for source, rows in entries:
        for entry_id, raw in rows:
            entry = _text(entry_id)
            acks.setdefault(source, []).append(entry)
            if raw is None:
                continue  # trimmed after it was read: nothing left to route
            fields = _fields(raw)
            if source == t.keys.audit:
                found += occurrences_of_audit(entry, fields)
            else:
                found += occurrences_of_chunk(fields)
    found = _with_sessions(t, found)
    pipe = t.client.pipeline(transaction=False)
    queued = 0
    for occ in found:
        for dest, jti, kind, claims in events_for(t, occ, dests):
            t.queues.enqueue(dest, jti, kind, claims, pipe=pipe)
            queued += 1
    if queued:
        pipe.execute()
        EVENTS.labels("routed").inc(queued)
    for source, ids in acks.items():
        t.client.xack(source, EVENTS_GROUP, *ids)
    return queued
