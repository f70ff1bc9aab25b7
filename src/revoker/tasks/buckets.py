"""The fan-out's bulk primitives: which records a job covers, and revoking and deleting them by
bucket. Shared by the fan-out chunks and the family-reuse escalation; their Redis traffic goes
through the store's bulk exchange (``store.bulk_exchange()``), the one fast path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from revoker import keys as k
from revoker.job_record import JobRecord
from revoker.rules import encode_mark, now_us, to_us
from revoker.store import Exchange, StoreCore, SyncRedisTokenRevocationStore

__all__ = [
    "READ_BUCKETS",
    "SCAN_FIELDS",
    "WRITE_BUCKETS",
    "WRITE_COMMANDS",
    "Selection",
    "delete_records",
    "job_mark",
    "job_selection",
    "read_selected",
    "revoke_buckets",
]

#: Buckets read per round trip by a chunk. Redis runs every command of one read (up to 16 KB)
#: before serving another client, and an HSCAN of a ~120-session bucket costs it ~90 µs: the
#: less a worker has in flight, the shorter a per-request check queues behind it (`make bench`:
#: check p99 during a fan-out by two workers ~4 ms with 16 buckets and 2,000 SETs in flight,
#: ~2.4 ms with 2 and 100, for ~8% fewer sessions/s).
READ_BUCKETS = 2
#: Fields per HSCAN call. A listpack bucket (Redis's compact encoding, up to 128 fields) comes
#: whole whatever the COUNT; only a bucket grown past that is paged.
SCAN_FIELDS = 500
#: Write commands per round trip (an HSET of one bucket's marks, ~120 fields, and two EXPIREs).
WRITE_COMMANDS = 6
#: Buckets written per round trip: each one MULTI/EXEC block of its HSET, two EXPIREs and the
#: sequence bump (``WRITE_COMMANDS`` writes).
WRITE_BUCKETS = 2


class Selection:
    """Which session records a job covers, tested on raw records (the fan-out's hot path).

    Created at or before ``cutoff_us``, of ``user_id`` if given, of the job's client if it names
    one, and created inside its issue window if it has one (inclusive, whole µs).
    """

    def __init__(self, record: JobRecord, cutoff_us: int, user_id: str | None = None) -> None:
        self.cutoff_us = cutoff_us
        self.user = k.escape_part(user_id).encode() if user_id is not None else None
        self.client = (
            k.escape_part(record.client_id).encode() if record.client_id is not None else None
        )
        self.after_us, self.before_us = record.window_us()

    def __call__(self, flat: Sequence[bytes]) -> list[bytes]:
        """The selected family ids of an HSCAN page (field, value, field, value...)."""
        cutoff, user, client = self.cutoff_us, self.user, self.client
        after, before = self.after_us, self.before_us
        out: list[bytes] = []
        head, read_time = k.record_head, k.read_time
        user_at, client_at, created_at = k.RECORD_USER, k.RECORD_CLIENT, k.RECORD_CREATED
        for n in range(0, len(flat), 2):
            parts = head(flat[n + 1])
            if parts is None:
                continue  # not a record this version wrote: left alone
            created = read_time(parts[created_at])
            if created is None or created > cutoff:
                continue  # an unreadable creation time is never covered (keys' rule)
            if user is not None and parts[user_at] != user:
                continue
            if client is not None and parts[client_at] != client:
                continue
            if (after is not None and created < after) or (before is not None and created > before):
                continue
            out.append(flat[n])
        return out


def read_selected(
    exchange: Exchange,
    keys: k.KeyLayout,
    tenant_id: str | None,
    buckets: Sequence[int],
    select: Selection,
) -> dict[int, list[bytes]]:
    """The selected family ids of each of the tenant's ``buckets``, read with pipelined HSCANs."""
    selected: dict[int, list[bytes]] = {}
    names = dict(zip(buckets, keys.session_buckets(tenant_id, buckets), strict=True))
    pending: list[tuple[int, bytes]] = [(b, b"0") for b in buckets]
    while pending:
        batch, pending = pending[:READ_BUCKETS], pending[READ_BUCKETS:]
        replies = exchange(
            [("HSCAN", names[b], cursor, "COUNT", SCAN_FIELDS) for b, cursor in batch]
        )
        for (bucket, _), (cursor, flat) in zip(batch, replies, strict=True):
            if isinstance(flat, dict):  # a redis-py pipeline (cluster, fakeredis) parses HSCAN
                flat = [item for pair in flat.items() for item in pair]
            chosen = select(flat)
            if chosen:
                selected.setdefault(bucket, []).extend(chosen)
            if cursor not in (b"0", 0, "0"):
                pending.append((bucket, cursor))
    # HSCAN may return a field twice while a big (hashtable) bucket is rehashed.
    return {b: list(dict.fromkeys(ids)) for b, ids in selected.items()}


def revoke_buckets(
    store: SyncRedisTokenRevocationStore,
    buckets: Sequence[int],
    *,
    tenant_id: str | None,
    select: Selection,
    mark: str | None,
) -> dict[int, list[bytes]]:
    """Revoke the selected sessions of some buckets of a tenant; returns them by bucket.

    Per bucket, one HSET of the selected families' marks into its revoked-mark bucket (and its
    TTL), ``WRITE_BUCKETS`` buckets per round trip followed by one sequence bump; the change-feed
    entry naming every selected family goes before the first mark and again after the last;
    ``mark`` None (a dry run) writes nothing.
    The records stay: the caller deletes them (:func:`delete_records`) once it has counted them.
    Idempotent: a rerun selects the same families and rewrites the same marks.
    """
    keys = store.keys
    ttl = store.core.lifetimes.family_ttl
    with store.bulk_exchange() as exchange:
        selected = read_selected(exchange, keys, tenant_id, buckets, select)
        if mark is None:
            return selected
        mark_b = mark.encode()
        core = store.core
        blocks: list[list[Any]] = []
        for bucket, ids in selected.items():
            marks = keys.revoked_bucket(tenant_id, bucket)
            writes: list[Any] = []
            for start in range(0, len(ids), SCAN_FIELDS):
                part = ids[start : start + SCAN_FIELDS]
                writes.append(("HSET", marks, *(x for fid in part for x in (fid, mark_b))))
            writes += StoreCore.bucket_ttl_commands(marks, ttl)
            blocks.append(writes)
        # The chunk's feed entry, sent before any of its marks on this same connection: Redis
        # applies a connection's commands in order, so a chunk cut anywhere can leave an entry
        # without (some of) its marks, which a rerun writes, never marks without an entry. The
        # same entry again after its last mark: a mirror's snapshot started between the two
        # (its feed position past the first, its reads before some marks) still meets the
        # second. Their "s" is empty: the bumps follow the marks (below).
        lead = core.feed_command(_feed_entry(core, tenant_id, selected, mark)) if blocks else []
        close = lead
        for start in range(0, len(blocks), WRITE_BUCKETS):
            batch = [c for block in blocks[start : start + WRITE_BUCKETS] for c in block]
            batch, lead = lead + batch, []
            if start + WRITE_BUCKETS >= len(blocks):
                batch += close
            # The bump follows the marks in the same pipeline, not in a MULTI/EXEC: Redis (and
            # its AOF and replicas) apply them in that order, so any state a check can meet
            # holds the marks of every bump it shows, and a state with marks but not yet their
            # bump only makes a rollback seen sooner. A MULTI/EXEC per bucket cost the fan-out
            # ~12% of its sessions/s and a check's p99 during it ~35% (`bench/run.py --quick
            # --only fanout`, same run). On a cluster the bump lives in another slot anyway.
            exchange(batch + core.sequence_bump())
    return selected


def _feed_entry(
    core: StoreCore, tenant_id: str | None, selected: dict[int, list[bytes]], mark: str
) -> dict[str, str]:
    """The chunk's feed entry: its families, at its mark's time."""
    ids = [
        k.escape_feed_id(fid.decode(errors="replace")) for fids in selected.values() for fid in fids
    ]
    at = k.decode_mark(mark)[0]
    return core.feed_entry("family", at_us=at, tenant_id=tenant_id, ids=ids, escaped=True)


def delete_records(
    store: SyncRedisTokenRevocationStore,
    tenant_id: str | None,
    selected: dict[int, list[bytes]],
) -> None:
    """Delete revoked sessions' records from their buckets (HDEL, a few hundred per command)."""
    names = store.keys.session_buckets(tenant_id, selected)
    commands: list[Any] = []
    for name, ids in zip(names, selected.values(), strict=True):
        for start in range(0, len(ids), SCAN_FIELDS):
            commands.append(("HDEL", name, *ids[start : start + SCAN_FIELDS]))
    if not commands:
        return
    with store.bulk_exchange() as exchange:
        for start in range(0, len(commands), READ_BUCKETS):
            exchange(commands[start : start + READ_BUCKETS])


def _cutoff_us(record: JobRecord) -> int:
    """A job covers sessions created at or before its watermark (or, without one, its enqueue)."""
    return to_us(record.watermark_at if record.watermark_at is not None else record.created_at)


def job_selection(record: JobRecord, cutoff_us: int | None = None) -> Selection:
    """The job's selection: its user's records for a user job, up to its cut-off (by default
    its watermark, or without one its enqueue time)."""
    cutoff = _cutoff_us(record) if cutoff_us is None else cutoff_us
    return Selection(record, cutoff, record.user_id if record.kind == "user" else None)


def job_mark(record: JobRecord) -> str:
    """The revoked mark a job writes: now, and a reason naming the job."""
    return encode_mark(now_us(), f"{record.reason or 'bulk revocation'} (job {record.id})")
