"""Tell the rest of the world: an SSF transmitter (CAEP ``session-revoked`` SETs, push and poll)
and OIDC back-channel logout, delivered by the Celery worker.

Modules, one job each: :mod:`~revoker.events.signing` (the key, JWKS, signing),
:mod:`~revoker.events.claims` (what an event says), :mod:`~revoker.events.streams` (streams and
relying parties), :mod:`~revoker.events.queue` (per-destination queues, dead letters),
:mod:`~revoker.events.router` (revocations in, queued events out), :mod:`~revoker.events.delivery`
(push), :mod:`~revoker.events.poll` (poll), :mod:`~revoker.events.tasks` (the Celery tasks).

Revocations are read from the audit stream, written in the same step as each revocation; the
sessions of bulk jobs come from :func:`emit_chunk_events`, called by the fan-out after a chunk's
marks are written, which writes them only while a destination wants per-session events.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

from revoker import keys as k

if TYPE_CHECKING:
    from revoker.job_record import JobRecord
    from revoker.store import SyncRedisTokenRevocationStore

__all__ = ["CHUNK_ENTRY_SESSIONS", "WANTED_CACHE_SECONDS", "emit_chunk_events"]

#: Sessions per chunk-stream entry (a 5,000-session chunk is ten entries of ~40 KB).
CHUNK_ENTRY_SESSIONS: Final = 500
#: Seconds a process trusts its last look at the per-session flag: with no destination wanting
#: per-session events a chunk costs one EXISTS per this many seconds per process, nothing else.
WANTED_CACHE_SECONDS: Final = 1.0

_wanted_lock = threading.Lock()
_wanted: dict[str, tuple[float, bool]] = {}


def _is_wanted(store: SyncRedisTokenRevocationStore) -> bool:
    key = store.keys.events_wanted
    now = time.monotonic()
    with _wanted_lock:
        seen = _wanted.get(key)
    if seen is not None and now - seen[0] < WANTED_CACHE_SECONDS:
        return seen[1]
    wanted = bool(store.client.exists(key))
    with _wanted_lock:
        _wanted[key] = (now, wanted)
    return wanted


def emit_chunk_events(
    store: SyncRedisTokenRevocationStore, record: JobRecord | None, family_ids: Sequence[bytes]
) -> int:
    """After a bulk-job chunk revoked ``family_ids``: hand its sessions (with their user and
    client, read from their records, still present) to the router, when a stream asked for
    per-session events or a relying party is registered. Returns the sessions handed over.

    A chunk rerun (a killed worker) hands them over again; their events carry the same jtis.
    """
    if record is None or not family_ids or not _is_wanted(store):
        return 0
    tenant = record.tenant_id
    by_bucket: dict[int, list[bytes]] = {}
    sessions: list[tuple[str, str, str]] = []
    for fid in family_ids:
        bucket = k.family_bucket(fid.decode(errors="replace"))
        if bucket is None:
            sessions.append((fid.decode(errors="replace"), "", ""))
        else:
            by_bucket.setdefault(bucket, []).append(fid)
    pipe = store.client.pipeline(transaction=False)
    names = store.keys.session_buckets(tenant, by_bucket)
    for key, ids in zip(names, by_bucket.values(), strict=True):
        pipe.hmget(key, ids)
    user_at, client_at = k.RECORD_USER, k.RECORD_CLIENT
    for ids, raws in zip(by_bucket.values(), pipe.execute(), strict=True):
        for fid, raw in zip(ids, raws, strict=True):
            # The two fields raw (record_head, not decode_record: half the hook's cost).
            head = k.record_head(raw) if raw is not None else None
            user = unquote(head[user_at].decode(errors="replace")) if head else ""
            client = unquote(head[client_at].decode(errors="replace")) if head else ""
            sessions.append((fid.decode(errors="replace"), user, client))
    common: dict[str, Any] = {
        "job": record.id,
        "tenant": tenant or "",
        "reason": record.reason or "",
        "actor": record.actor or "",
        "at": str(int(time.time() * 1_000_000)),
    }
    pipe = store.client.pipeline(transaction=False)
    for start in range(0, len(sessions), CHUNK_ENTRY_SESSIONS):
        part = sessions[start : start + CHUNK_ENTRY_SESSIONS]
        pipe.xadd(
            store.keys.events_chunks,
            {**common, "s": json.dumps(part, separators=(",", ":"))},
            maxlen=max(1000, store.settings.events_max_held),
            approximate=True,
        )
    pipe.execute()
    return len(sessions)
