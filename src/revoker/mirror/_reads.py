"""The mirror's Redis reads, and what their replies mean. Pure: no I/O.

Position in the feed is judged from ``XINFO STREAM``'s counters (Redis >= 7.0):
``last-generated-id`` (the id of the last entry ever appended, trimmed or not), ``entries-added``
(how many were ever appended), ``length`` and ``recorded-first-entry-id``. A mirror remembers
the id it has applied up to and how many entries had been added by then; a read of the feed is
sent in one MULTI with ``XINFO STREAM`` and the integrity hash, so all three describe one moment:

* **gap** (the feed was trimmed past the mirror): every entry still in the stream is after the
  mirror's id (or the stream is empty) and fewer are left than were added since: some were
  trimmed before the mirror read them. Trimming removes the oldest entries first, so when the
  first entry still there is at or before the mirror's id nothing after it is missing. (Redis 7.0's
  ``max-deleted-entry-id`` is not moved by trimming, only by XDEL: no help here.)
* **rolled back**: the stream's last id is below the one the mirror applied, or fewer entries were
  ever added than the mirror counted (the stream was deleted, restored from an older backup, or
  a replica behind took over).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote

from revoker.integrity import INTEGRITY_FIELDS
from revoker.keys import KeyLayout, decode_mark

__all__ = [
    "BATCH",
    "FeedPosition",
    "KeyKind",
    "classify",
    "follow_commands",
    "parse_id",
    "position",
    "start_commands",
    "wake_command",
]

#: Entries read per round trip while catching up.
BATCH: Final = 1000

Command = tuple[Any, ...]


def parse_id(raw: bytes | str | None) -> tuple[int, int]:
    """A stream id ``"<ms>-<seq>"`` as a pair that orders as Redis orders ids."""
    if raw is None:
        return (0, 0)
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return (int(ms or 0), int(seq or 0))


@dataclass(frozen=True, slots=True)
class FeedPosition:
    """What ``XINFO STREAM`` said about the feed (all zeros when the stream does not exist)."""

    last_id: tuple[int, int]
    last_raw: bytes
    added: int
    length: int
    first_id: tuple[int, int]

    def gap(self, after: tuple[int, int], added_then: int) -> bool:
        """Whether entries after ``after`` (when ``added_then`` had been added) were trimmed."""
        all_after = self.length == 0 or self.first_id > after
        return all_after and self.added - added_then > self.length

    def rolled_back(self, after: tuple[int, int], added_then: int) -> bool:
        """Whether the feed is behind what the mirror applied."""
        return self.last_id < after or self.added < added_then


_NO_STREAM: Final = FeedPosition((0, 0), b"0-0", 0, 0, (0, 0))


def position(info: Any) -> FeedPosition:
    """``XINFO STREAM``'s reply (redis-py's dict), or its error for a missing stream."""
    if isinstance(info, BaseException) or not isinstance(info, dict):
        if isinstance(info, BaseException) and "no such key" not in str(info).lower():
            raise info
        return _NO_STREAM

    def field(name: str) -> Any:
        return info.get(name.encode(), info.get(name))

    last_raw = field("last-generated-id") or b"0-0"
    first = field("recorded-first-entry-id")
    if first is None:  # before Redis 7.0: the first entry's id
        entry = field("first-entry")
        first = entry[0] if entry else None
    added = field("entries-added")
    length = int(field("length") or 0)
    return FeedPosition(
        last_id=parse_id(last_raw),
        last_raw=last_raw if isinstance(last_raw, bytes) else str(last_raw).encode(),
        # Without the counter (Redis < 7.0) a gap cannot be told: the length stands in for it,
        # so only a stream trimmed to nothing is noticed.
        added=int(added) if added is not None else length,
        length=length,
        first_id=parse_id(first),
    )


def start_commands(keys: KeyLayout) -> list[Command]:
    """A snapshot's first read, in one MULTI: where the feed is, the integrity hash, the global
    cut-off (the rest of the state is read after it, so it holds at least every entry so far)."""
    return [
        ("XINFO", "STREAM", keys.feed),
        ("HMGET", keys.integrity, *INTEGRITY_FIELDS),
        ("GET", keys.global_watermark),
    ]


def follow_commands(keys: KeyLayout, after: bytes) -> list[Command]:
    """One read of the feed, in one MULTI: the position, the integrity hash, the entries."""
    return [
        ("XINFO", "STREAM", keys.feed),
        ("HMGET", keys.integrity, *INTEGRITY_FIELDS),
        ("XREAD", "COUNT", BATCH, "STREAMS", keys.feed, after),
    ]


def wake_command(keys: KeyLayout, after: bytes, block_ms: int) -> Command:
    """Wait (at most ``block_ms``) for an entry after ``after``: the heartbeat of an idle feed."""
    return ("XREAD", "BLOCK", block_ms, "COUNT", 1, "STREAMS", keys.feed, after)


KeyKind = tuple[str, str, str]


def classify(keys: KeyLayout, key: bytes) -> KeyKind | None:
    """What a key found by SCAN holds for the mirror: ``("jti", "", jti)``,
    ``("family", tag, "")`` (a revoked-mark bucket), ``("user", tag, user)``,
    ``("tenant", tag, "")``; None for every other key. Ids are unescaped, tags as in keys."""
    text = key.decode(errors="replace")
    prefix = keys.prefix + ":"
    if not text.startswith(prefix):
        return None
    rest = text[len(prefix) :]
    if rest.startswith("jti:{") and rest.endswith("}"):
        return ("jti", "", unquote(rest[5:-1]))
    if not rest.startswith("{"):
        return None
    tag, brace, tail = rest[1:].partition("}:")
    if not brace or tag == "integrity":
        return None
    if tail.startswith("fr:"):
        return ("family", tag, "")
    if tail.startswith("uw:"):
        return ("user", tag, unquote(tail[3:]))
    if tail == "tw":
        return ("tenant", tag, "")
    return None


def mark_time(raw: Any) -> int | None:
    """A stored mark's or watermark's time (µs), None when the key is gone."""
    return None if raw is None else decode_mark(raw)[0]
