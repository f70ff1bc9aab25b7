"""Reading the change feed and the state it changes, as store plans (no I/O), for mirrors.

The writers are :meth:`StoreCore.sequenced <revoker.store._base.StoreCore.sequenced>` and the
scripts (see :mod:`revoker.store._base`); the format is ``keys.py``'s ("The change feed"). A
mirror loads a snapshot and then follows the feed from the id the snapshot started at:

1. :meth:`FeedPlans.plan_snapshot`, a generator run by ``store.snapshot()``: first a
   :class:`SnapshotStart` (the feed's last id, the epoch and sequence, read in one atomic step),
   then :class:`SnapshotBatch` items: every revoked jti of a live token, every revoked family
   (per tenant), every user, tenant and global watermark, each with its value and when it stops
   mattering. Keys are found with SCAN and marks read with HSCAN in bounded pages, so a
   million revoked families arrive as a few thousand small replies, never one giant one.
2. :meth:`FeedPlans.plan_read_feed` from that id on: the entries after it, and whether some
   after it may have been trimmed (then: snapshot again).

A write that lands between the snapshot's start and its read of some key shows twice (in the
snapshot and in the feed): every entry is idempotent for a reader (a revoked id, a watermark
that only moves forward), so twice is harmless and nothing is missed.

No feed is written on a Redis Cluster: every plan here raises ConfigurationError there.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote

from revoker import keys as k
from revoker.exceptions import ConfigurationError
from revoker.store._base import FEED_ON_CLUSTER, Command, Plan, ScriptCall, StoreCore, _text

__all__ = [
    "SNAPSHOT_FIELDS",
    "SNAPSHOT_HASHES",
    "SNAPSHOT_SCAN_COUNT",
    "UNREADABLE_ENTRY",
    "FeedPlans",
    "FeedRead",
    "SnapshotBatch",
    "SnapshotFamilies",
    "SnapshotFlow",
    "SnapshotStart",
]

#: Keys examined per SCAN call of a snapshot.
SNAPSHOT_SCAN_COUNT: Final = 4000
#: Revoked-mark buckets read (HSCAN) per round trip of a snapshot: ~120 marks each, so a reply
#: of ~16,000 fields (~800 KB). A mirror sends the next round trip before it hashes this one's
#: families (``Mirror._snapshot``), so Redis works while the mirror does.
SNAPSHOT_HASHES: Final = 128
#: Fields per HSCAN call: a listpack bucket (~120 marks) comes whole; a bigger one is paged.
SNAPSHOT_FIELDS: Final = 1000
#: Distinct marks remembered while reading (each read once: a chunk's families share one).
_MARK_CACHE: Final = 10_000
_UNSEEN: Final[Any] = object()
#: A snapshot's start: the feed's last entry and the identity, in one atomic step (a MULTI
#: would do, but redis-py parses a queued XREVRANGE's "QUEUED" as a stream and fails).
_START: Final = (
    'return {redis.call("XREVRANGE", KEYS[1], "+", "-", "COUNT", 1),'
    ' redis.call("HMGET", KEYS[2], "epoch", "seq", "state")}'
)
#: For a reader at "0-0" (the feed was empty when it began): the feed's first entry, and, if the
#: feed exists, its length and how many entries were ever added to it (XINFO STREAM, Redis 7):
#: equal, none was ever trimmed, so nothing the reader should have read is gone.
_FIRST_AND_COUNTS: Final = """
local first = redis.call("XRANGE", KEYS[1], "-", "+", "COUNT", 1)
if redis.call("EXISTS", KEYS[1]) == 0 then return {first} end
local info = redis.call("XINFO", "STREAM", KEYS[1])
local length, added = false, false
for i = 1, #info - 1, 2 do
  if info[i] == "length" then length = info[i + 1]
  elseif info[i] == "entries-added" then added = info[i + 1] end
end
return {first, length, added}
"""
#: What an entry this version cannot read stands for: an epoch change, so the reader loads a
#: snapshot again instead of guessing what it changed.
UNREADABLE_ENTRY: Final = k.FeedEntry("epoch", None, (), 0, 0, None)


@dataclass(frozen=True, slots=True)
class FeedRead:
    """What :meth:`FeedPlans.plan_read_feed` read."""

    #: (stream id, entry), oldest first.
    entries: list[tuple[str, k.FeedEntry]]
    #: The id to read after next time (the last entry's, or the id given when none came).
    last_id: str
    #: Entries after the id given may have been trimmed (or the feed was deleted): the reader
    #: has missed what they said and must load a snapshot again.
    trimmed: bool
    #: The feed's oldest id when it was read (None: no feed).
    first_id: str | None = None


@dataclass(frozen=True, slots=True)
class SnapshotStart:
    """The first item of a snapshot: where to follow the feed from afterwards, and the identity
    of the data the snapshot reads (``revoker.integrity``), read together in one atomic step."""

    feed_id: str
    epoch: str | None
    seq: int
    state: str | None


@dataclass(frozen=True, slots=True)
class SnapshotBatch:
    """Part of a snapshot: state of one kind (a feed kind: ``jti``, ``family``, ``user``,
    ``tenant``, ``global``) and one tenant. ``ids`` are raw (as tokens carry them; empty for a
    tenant's or the global watermark, which is one value), with ``values_us`` (revocation time
    or watermark, µs) and ``expires`` (unix s, 0 for never) at the same positions; a
    watermark's batch has one value and no id but a user's."""

    kind: str
    tenant_id: str | None
    ids: tuple[str, ...]
    values_us: tuple[int, ...]
    expires: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SnapshotFamilies:
    """Part of a snapshot read with ``raw_families``: revoked families of one tenant as stored,
    the raw field of each (the family id's UTF-8 bytes, as the check's HGET names it), their
    marks already judged (a mark too old to matter is left out, as from a :class:`SnapshotBatch`)
    but not decoded one by one: what a mirror hashes without a Python string per family."""

    tenant_id: str | None
    fields: list[bytes]


#: A snapshot run: yields plans (the store executes each and sends back its result) and the
#: start and batches (the store hands them out and sends back None).
SnapshotFlow = Generator[Plan[Any] | SnapshotStart | SnapshotBatch | SnapshotFamilies, Any, None]


def _id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _decode(fields: Any) -> k.FeedEntry:
    try:
        return k.decode_feed_entry(fields if isinstance(fields, dict) else dict(_pairs(fields)))
    except ValueError:
        return UNREADABLE_ENTRY


def _pairs(flat: Sequence[Any]) -> Iterable[tuple[Any, Any]]:
    return zip(flat[::2], flat[1::2], strict=True)


def _stream_entries(reply: Any) -> list[tuple[str, Any]]:
    """XRANGE-shaped entries ([(id, fields)...]) as (id text, fields)."""
    return [(_text(entry[0]), entry[1]) for entry in reply or ()]


def _xread_entries(reply: Any) -> list[tuple[str, Any]]:
    """The one stream's entries of an XREAD reply (RESP2 list or RESP3 dict; None: nothing)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [e for entries in reply.values() for e in _stream_entries(_resp3(entries))]
    return [e for stream in reply for e in _stream_entries(stream[1])]


def _resp3(entries: Any) -> Any:
    # redis-py's RESP3 XREAD parser wraps each stream's entries in one more list; a raw reply
    # (hiredis, no callback: a mirror's) is the entries themselves, each [id, fields].
    if entries and isinstance(entries[0], list):
        first = entries[0]
        if not (first and isinstance(first[0], bytes | str)):
            return first
    return entries


def _hscan_columns(page: Any) -> tuple[list[Any], list[Any]]:
    """An HSCAN page's fields and values (redis-py parses it into a dict; a raw one is flat)."""
    if isinstance(page, dict):
        return list(page.keys()), list(page.values())
    if isinstance(page, list):
        return page[::2], page[1::2]
    return list(page[::2]), list(page[1::2])


def _decoded(fields: list[Any]) -> Iterable[str]:
    if fields and type(fields[0]) is bytes:
        return map(bytes.decode, fields)
    return map(str, fields)


def _raw(fields: list[Any]) -> list[bytes]:
    if not fields or type(fields[0]) is bytes:
        return fields
    return [f if isinstance(f, bytes) else str(f).encode() for f in fields]


def _tenant_of(tag: str) -> str | None:
    return None if tag == k.NO_TENANT_TAG else unquote(tag[2:])


class FeedPlans:
    """The feed's and the snapshot's plans, over one :class:`StoreCore`."""

    def __init__(self, core: StoreCore) -> None:
        self.core = core
        self.keys = core.keys

    def _refuse_cluster(self) -> None:
        if self.core.cluster:
            raise ConfigurationError(FEED_ON_CLUSTER)

    # --- following ---------------------------------------------------------------------------

    def plan_feed_tail(self) -> Plan[str]:
        """The feed's last id (``"0-0"`` for an empty feed): where a reader starting now follows
        from."""
        self._refuse_cluster()
        return Plan([("XREVRANGE", self.keys.feed, "+", "-", "COUNT", 1)], self._tail)

    @staticmethod
    def _tail(replies: list[Any]) -> str:
        entries = _stream_entries(replies[0])
        return entries[0][0] if entries else "0-0"

    def plan_read_feed(
        self, after_id: str, count: int = 1000, block_ms: int | None = None
    ) -> Plan[FeedRead]:
        """The entries after ``after_id`` (at most ``count``), waiting up to ``block_ms`` for one
        if none is there (None: do not wait; the connection's socket timeout must exceed it).

        Trimming is judged from the feed's first id read *after* the XREAD in the same round
        trip: the feed is trimmed only from its old end, so a first id at or before ``after_id``
        then means nothing after ``after_id`` was gone when the XREAD read."""
        self._refuse_cluster()
        _id_key(after_id)  # a malformed id fails here, by name, not as a Redis error
        read: Command = ("XREAD", "COUNT", int(count))
        if block_ms is not None:
            read += ("BLOCK", int(block_ms))
        read += ("STREAMS", self.keys.feed, after_id)

        from_start = after_id in ("0-0", "0")

        def finish(replies: list[Any]) -> FeedRead:
            entries = [(i, _decode(fields)) for i, fields in _xread_entries(replies[0])]
            counts: list[Any] = []
            if from_start:
                first_reply, *counts = replies[1]
            else:
                first_reply = replies[1]
            first = _stream_entries(first_reply)
            first_id = first[0][0] if first else None
            if first_id is None:
                # No first entry: the feed is gone (an append never empties it); unless none
                # was ever read.
                trimmed = not from_start
            elif from_start:
                # From "0-0" (the feed was empty when the reader began) every entry is one to
                # read: none is missing if none was ever trimmed (as many entries as were ever
                # added). Without those counts (before Redis 7), or when some were trimmed (the
                # feed had entries once, trimmed away before the reader began): possibly,
                # on the safe side, at the cost of one more snapshot.
                length, added = [*counts, None, None][:2]
                trimmed = not (isinstance(length, int) and length == added)
            else:
                trimmed = _id_key(first_id) > _id_key(after_id)
            last = entries[-1][0] if entries else after_id
            return FeedRead(entries, last, trimmed, first_id)

        first: Command = (
            ("EVAL", _FIRST_AND_COUNTS, 1, self.keys.feed)
            if from_start
            else ("XRANGE", self.keys.feed, "-", "+", "COUNT", 1)
        )
        return Plan([read, first], finish)

    # --- the snapshot ------------------------------------------------------------------------

    def plan_snapshot(self, *, raw_families: bool = False) -> SnapshotFlow:
        """Everything a check needs, in bounded batches (module docstring); run with
        ``store.snapshot()``. With ``raw_families``, revoked families come as
        :class:`SnapshotFamilies` (raw fields, no values) instead of :class:`SnapshotBatch`."""
        self._refuse_cluster()
        integrity = self.keys.integrity

        def start(replies: list[Any]) -> SnapshotStart:
            tail, (epoch, seq, state) = replies[0]
            return SnapshotStart(
                feed_id=self._tail([tail]),
                epoch=_text(epoch) if epoch is not None else None,
                seq=k.decode_seq(seq),
                state=_text(state) if state is not None else None,
            )

        began = yield Plan([("EVAL", _START, 2, self.keys.feed, integrity)], start)
        yield began
        pattern = f"{self.keys.prefix}:*"
        cursor: Any = 0
        while True:
            cursor, found = yield Plan(
                [("SCAN", cursor, "MATCH", pattern, "COUNT", SNAPSHOT_SCAN_COUNT)],
                lambda replies: (int(replies[0][0]), replies[0][1]),
            )
            strings: list[tuple[str, str | None, str | None, bytes]] = []
            buckets: list[tuple[str | None, bytes]] = []
            for key in found:
                shape = self._classify(key if isinstance(key, bytes) else key.encode())
                if shape is None:
                    continue
                kind, tenant, ident = shape
                if kind == "family":
                    buckets.append((tenant, key))
                else:
                    strings.append((kind, tenant, ident, key))
            if strings:
                yield from self._strings(strings)
            for start_at in range(0, len(buckets), SNAPSHOT_HASHES):
                yield from self._marks(
                    buckets[start_at : start_at + SNAPSHOT_HASHES], raw=raw_families
                )
            if cursor == 0:
                return

    def _classify(self, key: bytes) -> tuple[str, str | None, str | None] | None:
        """(kind, tenant, id) of a key the check reads, or None for any other key."""
        text = key.decode(errors="replace")
        rest = text[len(self.keys.prefix) + 1 :]
        if rest.startswith("jti:{") and rest.endswith("}"):
            return "jti", None, unquote(rest[5:-1])
        if not rest.startswith("{"):
            return None
        tag, _, tail = rest[1:].partition("}")
        if tag == "integrity":
            return ("global", None, None) if tail == ":gw" else None
        if tag != k.NO_TENANT_TAG and not tag.startswith("t:"):
            return None
        tenant = _tenant_of(tag)
        if tail.startswith(":fr:"):
            return "family", tenant, None
        if tail.startswith(":uw:"):
            return "user", tenant, unquote(tail[4:])
        if tail == ":tw":
            return "tenant", tenant, None
        return None

    def _strings(
        self, found: list[tuple[str, str | None, str | None, bytes]]
    ) -> Generator[Plan[Any] | SnapshotBatch, Any, None]:
        """The jtis' and watermarks' values and remaining lives: GET and PTTL of each."""
        commands: list[Command | ScriptCall] = []
        for *_, key in found:
            commands += [("GET", key), ("PTTL", key)]
        replies = yield Plan(commands, lambda replies: replies)
        now = time.time()
        groups: dict[tuple[str, str | None], list[tuple[str, int, int]]] = {}
        for n, (kind, tenant, ident, _key) in enumerate(found):
            value, pttl = replies[2 * n], replies[2 * n + 1]
            if value is None or pttl == -2:
                continue  # gone since the SCAN
            expires = 0 if pttl < 0 else math.ceil(now + pttl / 1000)
            groups.setdefault((kind, tenant), []).append(
                (ident or "", k.decode_mark(value)[0], expires)
            )
        for (kind, tenant), items in groups.items():
            if kind in ("tenant", "global"):
                for _, value_us, expires in items:
                    yield SnapshotBatch(kind, tenant, (), (value_us,), (expires,))
                continue
            ids, values, expires_at = zip(*items, strict=True)
            yield SnapshotBatch(kind, tenant, ids, values, expires_at)

    def _marks(
        self, buckets: list[tuple[str | None, bytes]], *, raw: bool = False
    ) -> Generator[Plan[Any] | SnapshotBatch | SnapshotFamilies, Any, None]:
        """The revoked families of some mark buckets, HSCAN page by page (a big bucket takes
        several round trips, each reply bounded by SNAPSHOT_FIELDS). With ``raw``, the families
        come as :class:`SnapshotFamilies`."""
        pending: list[tuple[str | None, bytes, Any]] = [(t, key, 0) for t, key in buckets]
        # A chunk writes one mark for all its families: read each distinct mark once.
        lives: dict[Any, tuple[int, int] | None] = {}
        while pending:
            replies = yield Plan(
                [("HSCAN", key, cursor, "COUNT", SNAPSHOT_FIELDS) for _, key, cursor in pending],
                lambda replies: replies,
            )
            now = time.time()
            if len(lives) > _MARK_CACHE:
                lives.clear()
            groups: dict[str | None, tuple[list[Any], list[int], list[int]]] = {}
            following: list[tuple[str | None, bytes, Any]] = []
            for (tenant, key, _), (cursor, page) in zip(pending, replies, strict=True):
                ids, values, expires = groups.setdefault(tenant, ([], [], []))
                if int(cursor) != 0:
                    following.append((tenant, key, cursor))
                fields, raws = _hscan_columns(page)
                if raws and raws.count(raws[0]) == len(raws):
                    # One mark for the whole page (a chunk's): no loop in Python.
                    life = lives.get(raws[0], _UNSEEN)
                    if life is _UNSEEN:
                        life = lives[raws[0]] = self._mark_life(raws[0], now)
                    if life is not None:
                        ids.extend(fields)
                        if not raw:
                            values.extend(itertools.repeat(life[0], len(raws)))
                            expires.extend(itertools.repeat(life[1], len(raws)))
                    continue
                for field, mark in zip(fields, raws, strict=True):
                    life = lives.get(mark, _UNSEEN)
                    if life is _UNSEEN:
                        life = lives[mark] = self._mark_life(mark, now)
                    if life is None:
                        continue  # covers no token that can verify: the expiry deletes it
                    ids.append(field)
                    if not raw:
                        values.append(life[0])
                        expires.append(life[1])
            for tenant, (ids, values, expires) in groups.items():
                if not ids:
                    continue
                if raw:
                    yield SnapshotFamilies(tenant, _raw(ids))
                else:
                    yield SnapshotBatch(
                        "family", tenant, tuple(_decoded(ids)), tuple(values), tuple(expires)
                    )
            pending = following

    def _mark_life(self, raw: Any, now: float) -> tuple[int, int] | None:
        """A revoked mark's (time µs, expiry unix s), or None for a mark too old to matter.
        An unreadable time revokes by presence: kept for the longest a mark is."""
        lifetimes = self.core.lifetimes
        at = k.mark_time(raw if isinstance(raw, bytes) else str(raw).encode())
        if at is not None and at < lifetimes.marks_older_than(now):
            return None
        return at or 0, math.ceil((at / 1e6 if at else now) + lifetimes.family_ttl)
