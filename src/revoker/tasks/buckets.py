"""The fan-out's bulk primitives: which records a job covers, and revoking and deleting them by
bucket. Shared by the fan-out chunks and the family-reuse escalation; their Redis traffic goes
through the store's bulk exchange (``store.bulk_exchange()``), the one fast path.

A chunk is three steps on one bulk connection: :func:`read_chunk` (HSCAN: which records the job
covers), :func:`write_marks` (the chunk's write pipeline: revoked marks and the sequence bump;
only where the marks are the enforcement, see :func:`enforced_by_watermark`) and, once the chunk
is counted, :func:`clear_records` (the records the job made dead: a bucket all of whose records
were selected is dropped whole, with one UNLINK, others lose the selected fields, one HDEL each).

A chunk whose marks are its enforcement (a filtered job) does all three in Redis instead:
:func:`revoke_server_side` runs ``scripts/chunk_buckets.lua`` over its buckets, a few per call,
which selects, marks and deletes each bucket's covered records, bumps the sequence and appends
the feed entry, and records the bucket's progress and count, in one atomic step per call. No
record crosses the wire; a rerun skips what an earlier run finished, and counts exactly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from revoker import keys as k
from revoker.events import emit_chunk_events
from revoker.exceptions import StoreUnavailable
from revoker.job_record import JobRecord
from revoker.rules import encode_mark, now_us, to_us
from revoker.settings import RevokerSettings
from revoker.store import Exchange, StoreCore, SyncRedisTokenRevocationStore
from revoker.store._base import BACKEND_ERRORS, load_script
from revoker.store._bulk import BulkScript, bulk_script

__all__ = [
    "CHUNK_SCRIPT",
    "INDEX_SCRIPT",
    "LAZY_FREE_FIELDS",
    "PACE_BASELINE_DRIFT",
    "PACE_GROW",
    "PACE_MAX_FACTOR",
    "PACE_SHRINK",
    "PACE_SLOW",
    "PACE_STEP",
    "READ_BUCKETS",
    "SCAN_FIELDS",
    "SCRIPT_BUCKETS",
    "SCRIPT_FIELDS",
    "SCRIPT_SCAN_COUNT",
    "SCRIPT_WHOLE_BUCKET",
    "UNLINK_COST",
    "WATCH_BUCKETS",
    "WRITE_BUCKETS",
    "WRITE_COMMANDS",
    "ChunkRead",
    "Pacer",
    "Selection",
    "ServerRevocation",
    "can_watch",
    "clear_records",
    "delete_records",
    "enforced_by_watermark",
    "forget_progress",
    "job_mark",
    "job_selection",
    "paced",
    "pacer",
    "per_session_events_wanted",
    "read_chunk",
    "read_selected",
    "revoke_buckets",
    "revoke_server_side",
    "walks_index",
    "watermark_holds",
    "write_marks",
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
#: Buckets written per round trip: each its HSET and two EXPIREs, the round trip ending with the
#: sequence bump (``WRITE_COMMANDS`` writes).
WRITE_BUCKETS = 2
#: Buckets of a chunk its read WATCHes (the first ones), so that its clean-up may drop them whole
#: (UNLINK); any further bucket loses its records by HDEL. Redis checks each key a WATCH adds
#: against every key the connection already watches: one WATCH of 1,024 keys held it ~47 ms,
#: 208 ~0.8 ms, 64 ~0.1 ms (`INFO commandstats`, a loaded 2-core host), about one bucket's HSCAN;
#: a chunk of 5,000 sessions at ~120 per bucket has ~42.
WATCH_BUCKETS = 64
#: What one MULTI/EXEC of a chunk's UNLINKs may cost Redis's main thread, in fields freed: a
#: hash table of more than 64 fields (Redis's LAZYFREE_THRESHOLD) is freed in the background
#: (cost 1), a smaller one field by field, there and then. Whole buckets past it lose their
#: records by HDEL instead, a command each: an EXEC of 42 small buckets held Redis ~1.1 ms
#: (`bench/run.py --quick --only fanout`, 24 fields per bucket), where a check waits for it.
UNLINK_COST = 256
#: Hash fields Redis frees in the background when their hash is unlinked (LAZYFREE_THRESHOLD).
LAZY_FREE_FIELDS = 64
#: Sessions one call of ``chunk_buckets.lua`` examines, about: a bucket not begun that would take
#: a call past it is left to the next call, unless it is the call's first (a bucket is read
#: whole, up to ``SCRIPT_WHOLE_BUCKET``). Redis runs a script call whole and a check arriving
#: meanwhile waits for it, ~2-3 µs of Redis CPU per session examined (half of them selected:
#: marked and deleted): a call is one bucket of a 1,000,000-session tenant (~122 sessions,
#: ~150-300 µs), two of a 200,000-session one (~120-160 µs; at 128, ~200-280 µs, for ~20% more
#: marks/s: interleaved rounds of the filtered job, a loaded 2-core host). Cutting a bucket into
#: HSCAN pages costs more than it saves: paged at 64 sessions per call, a 1,000,000-session job
#: took twice the Redis CPU per session. Re-measured (one private Redis, 1,000,000 sessions, the
#: chunk loop in one process, same run): whole buckets ~640 µs per call at 5.2-6.0 µs of Redis CPU
#: per session; paged at 64, 354 µs per call and +35%; at 32, 205 µs and +45%. And in
#: `bench/run.py --only fanout --quick` rounds alternating 64 and 16 sessions per call, the smaller
#: calls made the job ~1.6x slower without lowering a check's p99 during it (3.8-5.0 ms against
#: 3.1-3.2 ms): on 2 shared cores that rise is CPU contention, which pacing
#: (REVOKER_FANOUT_DUTY_CYCLE) addresses, not the length of a call.
SCRIPT_FIELDS = 64
#: The largest bucket read whole (HGETALL, cheaper than HSCAN pages); a bigger one (a user with
#: hundreds of sessions) is read in pages of ``SCRIPT_SCAN_COUNT`` over as many calls as needed.
SCRIPT_WHOLE_BUCKET = 256
#: HSCAN's COUNT inside the script, for a bucket bigger than ``SCRIPT_WHOLE_BUCKET``.
SCRIPT_SCAN_COUNT = 100
#: Buckets named per script call at most (two keys each). Each call names about twice as many
#: as the last one finished (one more for a margin): naming buckets a call does not reach costs
#: it their keys' arguments.
SCRIPT_BUCKETS = 32
#: What both chunk scripts begin with: ``_sequence.lua`` (the sequence bump and feed entry), then
#: ``_chunk.lua`` (their arguments, the selection and the step's end).
_CHUNK_PRELUDE = load_script("_sequence") + load_script("_chunk")
#: The prelude then ``chunk_buckets.lua``: the chunk's script (its source is what ``SCRIPT LOAD``
#: and EVALSHA name).
CHUNK_SCRIPT = _CHUNK_PRELUDE + load_script("chunk_buckets")
#: The prelude then ``chunk_index.lua``: a client-filtered chunk walking the client index (keys,
#: "The client index") instead of every record of its buckets.
INDEX_SCRIPT = _CHUNK_PRELUDE + load_script("chunk_index")


class Selection:
    """Which session records a job covers, tested on raw records (the fan-out's hot path).

    Created at or before ``cutoff_us``, of ``user_id`` if given, of the job's client if it names
    one, and created inside its issue window if it has one (inclusive, whole µs).
    """

    def __init__(self, record: JobRecord, cutoff_us: int, user_id: str | None = None) -> None:
        #: The job, for the events of its chunks (revoker.events.emit_chunk_events).
        self.record = record
        self.cutoff_us = cutoff_us
        self.user = k.escape_part(user_id).encode() if user_id is not None else None
        self.client = (
            k.escape_part(record.client_id).encode() if record.client_id is not None else None
        )
        self.after_us, self.before_us = record.window_us()
        #: The client (escaped, as stored) of each selected record that has one, collected when
        #: not None: a clean-up removes their client-index entries with the records.
        self.clients: dict[bytes, bytes] | None = None

    def __call__(self, flat: Sequence[bytes]) -> list[bytes]:
        """The selected family ids of an HSCAN page (field, value, field, value...)."""
        cutoff, user, client = self.cutoff_us, self.user, self.client
        after, before = self.after_us, self.before_us
        clients = self.clients
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
            if clients is not None and parts[client_at]:
                clients[flat[n]] = parts[client_at]
        return out


@dataclass(slots=True)
class ChunkRead:
    """What :func:`read_chunk` found in a chunk's buckets."""

    #: The selected family ids of each bucket (buckets with none left out).
    selected: dict[int, list[bytes]]
    #: Watched buckets every record of which was selected: once dead the key can go whole.
    whole: set[int] = field(default_factory=set)
    #: Whether the read WATCHed the buckets (a later change makes :func:`clear_records` fall
    #: back from UNLINK to HDEL, so a session started meanwhile is never dropped).
    watched: bool = False
    #: The client (escaped) of each selected family that has one: :func:`clear_records` removes
    #: their client-index entries (keys, "The client index") with the records.
    clients: dict[bytes, bytes] = field(default_factory=dict)

    def index_entries(self, bucket: int) -> dict[bytes, list[bytes]]:
        """The selected families of ``bucket`` that have a client, by client."""
        out: dict[bytes, list[bytes]] = {}
        clients = self.clients
        for fid in self.selected.get(bucket, ()):
            client = clients.get(fid)
            if client is not None:
                out.setdefault(client, []).append(fid)
        return out

    @property
    def family_ids(self) -> list[bytes]:
        """Every selected family id (the chunk's audit entry, its events)."""
        return [fid for ids in self.selected.values() for fid in ids]


#: Adaptive pacing (REVOKER_FANOUT_ADAPTIVE_PACING): a round trip is "slow" when its time per
#: unit of work (a session examined by a script call, a command of an exchange) is above this
#: multiple of its idle baseline; then Redis (or the cores) served something else meanwhile, and
#: a per-request check arriving then waited as well.
PACE_SLOW = 1.25
#: How a slow round trip lengthens the pause factor (pause = factor x the round trip's time):
#: ``factor * PACE_GROW + PACE_STEP``; a round trip at its baseline shortens it by ``PACE_SHRINK``,
#: down to the duty cycle's factor. Multiplicative both ways: workers contending for one Redis
#: back off together within a few calls, and come back within a few dozen once it is idle.
PACE_GROW = 1.5
PACE_STEP = 0.25
PACE_SHRINK = 0.85
#: The longest pause, as a multiple of the round trip (a duty cycle of 1/4): a job always moves,
#: at a quarter of its speed at worst (a loaded host's noise must not stall it).
PACE_MAX_FACTOR = 3.0
#: How fast the idle baseline (the lowest time per unit seen) forgets a low value, per call: a
#: lucky fast call (a bucket cached, no other client) must not hold the job back for ever.
PACE_BASELINE_DRIFT = 0.002


@dataclass(slots=True)
class Pacer:
    """The pause after each round trip of one kind (an exchange, a script's calls) of a worker
    process: the duty cycle's, lengthened while the round trips take longer than their idle
    baseline (see ``PACE_SLOW``). One per kind per process, shared by its chunks, so that a
    chunk starts where the last one left off."""

    floor: float
    adaptive: bool = True
    factor: float = 0.0
    #: The idle baselines: seconds per unit of work, the lowest seen (drifting up slowly), by
    #: the round trip's shape (its first command and the magnitude of its work: a batch of two
    #: HSCANs is not compared with one GET, nor a call examining 5 sessions with one of 120).
    baselines: dict[tuple[str, int], float] = field(default_factory=dict)

    def pause(self, elapsed: float, units: int, what: str = "") -> float:
        """Seconds to pause after a round trip of ``elapsed`` s that did ``units`` of work
        (``what``: its first command, or the script's name)."""
        self.factor = max(self.factor, self.floor)
        if not self.adaptive:
            return elapsed * self.floor
        per = elapsed / max(1, units)
        shape = (what, max(1, units).bit_length())
        base = self.baselines.get(shape)
        if base is None:
            # A shape seen for the first time has no baseline yet: not a sign of contention.
            self.baselines[shape] = per
            return elapsed * self.factor
        if per < base:
            self.baselines[shape] = base = per
        else:
            self.baselines[shape] = base = base + (per - base) * PACE_BASELINE_DRIFT
        if per > base * PACE_SLOW:
            self.factor = min(PACE_MAX_FACTOR, self.factor * PACE_GROW + PACE_STEP)
        else:
            self.factor = max(self.floor, self.factor * PACE_SHRINK)
        return elapsed * self.factor


#: The worker process's pacers, by kind of round trip (see :func:`pacer`).
_PACERS: dict[str, Pacer] = {}


def pacer(kind: str, duty_cycle: float, adaptive: bool) -> Pacer:
    """The process's pacer of ``kind`` for this configuration (its learned baseline and pause
    kept across chunks)."""
    floor = 0.0 if duty_cycle >= 1 else 1 / duty_cycle - 1
    found = _PACERS.get(kind)
    if found is None or found.floor != floor or found.adaptive != adaptive:
        found = _PACERS[kind] = Pacer(floor, adaptive, floor)
    return found


def paced(exchange: Exchange, duty_cycle: float, *, adaptive: bool = False) -> Exchange:
    """``exchange``, pausing after each round trip so that round trips take ``duty_cycle`` of
    the time (REVOKER_FANOUT_DUTY_CYCLE), and with ``adaptive`` longer while round trips take
    longer than their idle baseline (REVOKER_FANOUT_ADAPTIVE_PACING, :class:`Pacer`); 1 and
    not adaptive is ``exchange`` itself."""
    if duty_cycle >= 1 and not adaptive:
        return exchange
    pace = pacer("exchange", duty_cycle, adaptive)

    def paced_exchange(commands: list[Any]) -> list[Any]:
        started = time.perf_counter()
        replies = exchange(commands)
        what = str(commands[0][0]) if commands else ""
        _sleep(pace.pause(time.perf_counter() - started, len(commands), what))
        return replies

    return paced_exchange


def _paced_script(call: BulkScript, duty_cycle: float, adaptive: bool, kind: str) -> BulkScript:
    """A chunk script's calls, paced as :func:`paced`; a call's work is the sessions it examined
    (the third item of its reply)."""
    if duty_cycle >= 1 and not adaptive:
        return call
    pace = pacer(kind, duty_cycle, adaptive)

    def paced_call(keys: Sequence[Any], args: Sequence[Any]) -> Any:
        started = time.perf_counter()
        reply = call(keys, args)
        _sleep(pace.pause(time.perf_counter() - started, int(reply[2]), kind))
        return reply

    return paced_call


def _sleep(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)


def can_watch(store: SyncRedisTokenRevocationStore) -> bool:
    """Whether the store's bulk exchange keeps one connection across its batches (a plain
    redis-py client: the raw path of ``store._bulk``), so a WATCH sent in one batch still holds
    in a later one. A cluster client or fakeredis gets a fresh pipeline per batch."""
    return type(store.client) is redis.Redis


def read_chunk(
    exchange: Exchange,
    keys: k.KeyLayout,
    tenant_id: str | None,
    buckets: Sequence[int],
    select: Selection,
    *,
    watch: bool = False,
) -> ChunkRead:
    """The selected family ids of each of the tenant's ``buckets``, read with pipelined HSCANs.

    ``watch`` (only where :func:`can_watch`): WATCH the buckets in the first batch, before any
    read, for :func:`clear_records`.
    """
    selected: dict[int, list[bytes]] = {}
    unselected: dict[int, int] = dict.fromkeys(buckets, 0)
    names = dict(zip(buckets, keys.session_buckets(tenant_id, buckets), strict=True))
    pending: list[tuple[int, bytes]] = [(b, b"0") for b in buckets]
    watched = list(names.values())[:WATCH_BUCKETS] if watch else []
    prefix: list[Any] = [("WATCH", *watched)] if watched else []
    clients: dict[bytes, bytes] = {}
    select.clients = clients
    while pending:
        batch, pending = pending[:READ_BUCKETS], pending[READ_BUCKETS:]
        replies = exchange(
            prefix + [("HSCAN", names[b], cursor, "COUNT", SCAN_FIELDS) for b, cursor in batch]
        )
        replies, prefix = replies[len(prefix) :], []
        for (bucket, _), (cursor, flat) in zip(batch, replies, strict=True):
            if isinstance(flat, dict):  # a redis-py pipeline (cluster, fakeredis) parses HSCAN
                flat = [item for pair in flat.items() for item in pair]
            chosen = select(flat)
            unselected[bucket] += len(flat) // 2 - len(chosen)
            if chosen:
                selected.setdefault(bucket, []).extend(chosen)
            if cursor not in (b"0", 0, "0"):
                pending.append((bucket, cursor))
    # HSCAN may return a field twice while a big (hashtable) bucket is rehashed.
    deduped = {b: list(dict.fromkeys(ids)) for b, ids in selected.items()}
    first = set(list(names)[:WATCH_BUCKETS]) if watched else set()
    whole = {b for b in deduped if not unselected[b] and b in first}
    select.clients = None
    return ChunkRead(deduped, whole, watched=bool(watched), clients=clients)


def read_selected(
    exchange: Exchange,
    keys: k.KeyLayout,
    tenant_id: str | None,
    buckets: Sequence[int],
    select: Selection,
) -> dict[int, list[bytes]]:
    """The selected family ids of each of the tenant's ``buckets`` (:func:`read_chunk`)."""
    return read_chunk(exchange, keys, tenant_id, buckets, select).selected


def write_marks(
    exchange: Exchange,
    store: SyncRedisTokenRevocationStore,
    tenant_id: str | None,
    selected: dict[int, list[bytes]],
    mark: str,
) -> None:
    """The chunk's write pipeline: the selected families' revoked marks, one HSET per bucket
    (and its TTL), ``WRITE_BUCKETS`` buckets per round trip, each round trip ending with the
    sequence bump. Idempotent: a rerun rewrites the same marks."""
    keys = store.keys
    core = store.core
    ttl = core.lifetimes.family_ttl
    mark_b = mark.encode()
    blocks: list[list[Any]] = []
    for bucket, ids in selected.items():
        marks = keys.revoked_bucket(tenant_id, bucket)
        writes: list[Any] = []
        for start in range(0, len(ids), SCAN_FIELDS):
            part = ids[start : start + SCAN_FIELDS]
            # field, value, field, value...: slice assignment, ~2x a nested generator.
            pairs: list[bytes] = [mark_b] * (2 * len(part))
            pairs[0::2] = part
            writes.append(("HSET", marks, *pairs))
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


def clear_records(
    exchange: Exchange,
    keys: k.KeyLayout,
    tenant_id: str | None,
    read: ChunkRead,
    *,
    settings: RevokerSettings,
) -> None:
    """Delete the records a counted chunk made dead (its selected ones).

    The deletes end with ``REVOKER_DURABILITY``'s wait (DurabilityNotReached
    when it falls short): the chunk counted itself done first, so a failover that lost the
    deletes would otherwise leave dead records that a later job counts again. Raising makes the
    chunk run again, and a chunk already done only repeats this (see ``revoke_chunk``).

    A bucket every record of which was selected goes whole (UNLINK: O(1) for Redis's main
    thread, which frees a big hash in the background), in one MULTI/EXEC guarded by the read's
    WATCH: if any of the buckets changed since the read (a session started after the cut-off
    may have joined it), EXEC does nothing and they lose only their selected fields like the
    others (HDEL, a few hundred per command). Unwatched reads only HDEL. The EXEC frees at most
    ``UNLINK_COST`` fields there and then (small buckets are freed at once, not in the
    background): further whole buckets are HDEL'd, a command each (empty, the key goes).
    """
    names = dict(zip(read.selected, keys.session_buckets(tenant_id, read.selected), strict=True))
    rest = dict(read.selected)
    if read.watched:
        whole: list[int] = []
        cost = 0
        for b in read.selected:
            if b in read.whole:
                fields = len(read.selected[b])
                cost += fields if fields <= LAZY_FREE_FIELDS else 1
                if whole and cost > UNLINK_COST:
                    break
                whole.append(b)
        if whole:
            # With each whole bucket, its clients' index buckets: they index only its records,
            # every one selected (a session written since changed the watched bucket, and its
            # index entry follows its record: keys, "The client index").
            indexes = [
                key
                for b in whole
                for client in read.index_entries(b)
                for key in keys.client_index_of_part(tenant_id, client, [b])
            ]
            replies = exchange(
                [("MULTI",), ("UNLINK", *(names[b] for b in whole), *indexes), ("EXEC",)]
            )
            if replies[-1] is not None:  # nil: a watched bucket changed, nothing was unlinked
                for b in whole:
                    del rest[b]
        else:
            exchange([("UNWATCH",)])
    commands: list[Any] = []
    for bucket, ids in rest.items():
        for start in range(0, len(ids), SCAN_FIELDS):
            commands.append(("HDEL", names[bucket], *ids[start : start + SCAN_FIELDS]))
        # The records' client-index entries, after the records (an entry without its record is
        # only dropped later; a record without its entry would be missed by an index walk).
        for client, fids in read.index_entries(bucket).items():
            (index,) = keys.client_index_of_part(tenant_id, client, [bucket])
            for start in range(0, len(fids), SCAN_FIELDS):
                commands.append(("HDEL", index, *fids[start : start + SCAN_FIELDS]))
    for start in range(0, len(commands), READ_BUCKETS):
        exchange(commands[start : start + READ_BUCKETS])
    policy, timeout = settings.durability_policy, settings.durability_timeout
    wait = policy.wait_command(timeout)
    if wait is not None:
        policy.check(exchange([wait])[0], timeout)


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
    with store.bulk_exchange() as exchange:
        selected = read_selected(exchange, store.keys, tenant_id, buckets, select)
        if mark is not None:
            write_marks(exchange, store, tenant_id, selected, mark)
    if mark is not None:
        # After the marks: the sessions' events (free unless a stream wants per-session events).
        emit_chunk_events(store, select.record, [fid for ids in selected.values() for fid in ids])
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


def enforced_by_watermark(record: JobRecord) -> bool:
    """Whether a job's own watermark already refuses every token of the sessions it covers, so
    per-session marks would be redundant for every check (the check and refresh rotation read
    the watermark, and it outlives every token it covers): an unfiltered job that wrote one
    (``enqueue`` does, before recording the job). Such a job only clears the records, counts and
    audits them; a filtered job's marks are its enforcement."""
    return not record.filtered and record.watermark_at is not None


def watermark_holds(exchange: Exchange, keys: k.KeyLayout, record: JobRecord) -> bool:
    """Whether the watermark of an unfiltered job is still in Redis, at or after the job's
    cut-off. A Redis that lost it (a cluster failover dropping unreplicated writes, where
    REVOKER_DURABILITY cannot apply; a restore from an older snapshot) leaves the job to enforce
    by per-session marks, as a filtered job does, rather than undo the revocation silently. One
    GET per chunk, in the tenant's slot like its buckets."""
    if record.watermark_at is None:
        return False
    if record.kind == "user":
        assert record.user_id is not None
        key = keys.user_watermark(record.tenant_id, record.user_id)
    else:
        key = keys.tenant_watermark(record.tenant_id)
    (raw,) = exchange([("GET", key)])
    return raw is not None and (k.mark_time(raw) or 0) >= to_us(record.watermark_at)


def job_mark(record: JobRecord) -> str:
    """The revoked mark a job writes: now, and a reason naming the job."""
    return encode_mark(now_us(), f"{record.reason or 'bulk revocation'} (job {record.id})")


def per_session_events_wanted(store: SyncRedisTokenRevocationStore) -> bool:
    """Whether some destination wants per-session events now (``events_wanted``): their chunks
    keep the records until the events are read from them (revoker.events.emit_chunk_events),
    so they take the Python path, not :func:`revoke_server_side`."""
    try:
        return bool(store.client.exists(store.keys.events_wanted))
    except BACKEND_ERRORS as e:
        raise StoreUnavailable(f"Redis is unavailable: {type(e).__name__}: {e}") from e


def walks_index(store: SyncRedisTokenRevocationStore, record: JobRecord) -> bool:
    """Whether a job can walk its client's index (keys, "The client index") instead of every
    record: a tenant job filtered by client, whose tenant's index is known complete now (its
    marker, :meth:`Lifetimes.index_complete`). Decided once, when the job plans its chunks (a
    chunk rerun walks as its plan did). A job filtered only by its issue window, a user job (one
    bucket) and an unfiltered one walk the records."""
    if record.kind != "tenant" or record.client_id is None:
        return False
    since = store.execute(store.jobs.plan_index_since(record.tenant_id))
    return store.core.lifetimes.index_complete(since, time.time())


@dataclass(frozen=True, slots=True)
class ServerRevocation:
    """What :func:`revoke_server_side` did for a chunk, over every run of it."""

    #: Sessions the chunk revoked (marked and deleted), each counted once.
    revoked: int
    #: Their family ids, space-separated (the chunk's audit entry).
    family_ids: bytes


def revoke_server_side(
    bulk: Exchange,
    store: SyncRedisTokenRevocationStore,
    record: JobRecord,
    chunk: int,
    buckets: Sequence[int],
    select: Selection,
    mark: str,
    *,
    duty_cycle: float = 1.0,
    adaptive: bool = False,
    index_client: str | None = None,
) -> ServerRevocation:
    """Revoke a chunk's covered sessions in Redis: ``chunk_buckets.lua`` over its buckets, at
    most ``SCRIPT_BUCKETS`` named and about ``SCRIPT_FIELDS`` sessions examined per call.

    Each call, in one atomic step: the covered records of its buckets get ``mark`` (one HSET per
    bucket into its marks bucket, the TTL as :meth:`StoreCore.bucket_ttl_commands`) and are
    deleted (HDEL), the sequence is bumped and the feed entry naming the families marked is
    appended (a single Redis; on a Redis Cluster the bump follows the call, in its own slot, and
    there is no feed), and the chunk's progress (``KeyLayout.job_chunk_progress``) records each
    bucket finished (or the cursor of one cut short) and the sessions revoked. A rerun (a chunk
    killed, redelivered) skips the buckets finished, resumes a cut one at its cursor and adds
    only what it deletes: ``revoked`` is exact, and ``family_ids`` lists every family the chunk
    revoked, in any run. ``bulk`` is the chunk's bulk exchange, unpaced (``duty_cycle`` and
    ``adaptive`` pace the calls, as :func:`paced`). The caller drops the progress once the chunk
    is counted (:func:`forget_progress`).

    ``index_client`` (the job's client, where :func:`walks_index`): ``chunk_index.lua`` instead,
    which reads each bucket's candidates from the client's index bucket and then only their
    records, selecting by the record as ``chunk_buckets.lua`` does.
    """
    keys, core = store.keys, store.core
    tenant = record.tenant_id
    progress = keys.job_chunk_progress(tenant, record.id, chunk)
    revoked_ids = keys.job_chunk_revoked(tenant, record.id, chunk)
    entry = core.feed_entry("family", at_us=k.decode_mark(mark)[0], tenant_id=tenant)
    sequence_keys, sequence_args, bump = core.script_sequence(entry)
    exchange = paced(bulk, duty_cycle, adaptive=adaptive)
    source = CHUNK_SCRIPT if index_client is None else INDEX_SCRIPT
    kind = "script" if index_client is None else "index script"
    call = _paced_script(bulk_script(store.client, bulk, source), duty_cycle, adaptive, kind)
    window = [
        "" if select.after_us is None else select.after_us,
        "" if select.before_us is None else select.before_us,
    ]
    head = [
        select.cutoff_us,
        select.user or b"",
        select.client or b"",
        *window,
        mark,
        core.lifetimes.family_ttl,
        store.settings.job_retention,
        SCRIPT_FIELDS,
        SCRIPT_SCAN_COUNT,
        SCRIPT_WHOLE_BUCKET,
    ]
    pending = list(buckets)
    width = 4
    while pending:
        part = pending[:width]
        names: list[str] = []
        if index_client is None:
            for session, marks in zip(
                keys.session_buckets(tenant, part), keys.revoked_buckets(tenant, part), strict=True
            ):
                names += (session, marks)
        else:
            for index, session, marks in zip(
                keys.client_index_buckets(tenant, index_client, part),
                keys.session_buckets(tenant, part),
                keys.revoked_buckets(tenant, part),
                strict=True,
            ):
                names += (index, session, marks)
        finished, revoked, _seen = call(
            [progress, revoked_ids, *names, *sequence_keys],
            [*head, len(part), *part, *sequence_args],
        )
        if int(revoked) and bump:
            exchange(bump)  # a Redis Cluster: the bump after the marks, in the integrity slot
        pending = pending[int(finished) :]
        width = min(SCRIPT_BUCKETS, 2 * int(finished) + 1)
    total, ids = exchange([("HGET", progress, "n"), ("GET", revoked_ids)])
    return ServerRevocation(int(total or 0), (ids or b"").rstrip(b" "))


def forget_progress(
    exchange: Exchange, store: SyncRedisTokenRevocationStore, record: JobRecord, chunk: int
) -> None:
    """Drop a counted chunk's progress (:func:`revoke_server_side`); else its TTL would."""
    keys = store.keys
    exchange(
        [
            ("UNLINK", keys.job_chunk_progress(record.tenant_id, record.id, chunk)),
            ("UNLINK", keys.job_chunk_revoked(record.tenant_id, record.id, chunk)),
        ]
    )
