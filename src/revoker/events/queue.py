"""One ordered queue of events per destination, acknowledgements, and the dead-letter list.

Stored formats (keys: :mod:`revoker.keys`, the ``{ssf}`` block), one encoder and decoder here:

* a queue entry (``P:{ssf}:q:<dest>``, a Redis stream, oldest first): ``j`` the jti, ``k`` the
  kind (``set`` | ``logout``), ``c`` the claims as JSON without ``iat``/``exp`` (added when it is
  signed, at each delivery: a logout token held for an hour is not sent expired);
* ``P:{ssf}:qj:<dest>``: jti -> entry id, so a poll acknowledges by jti and a jti is queued once;
* a dead letter (``P:{ssf}:dead``): ``d`` destination, ``j``, ``k``, ``c`` as above, ``e`` the last
  error, ``n`` the attempts, ``t`` unix ms.

A queue holds at most ``REVOKER_EVENTS_MAX_HELD`` events: an append beyond drops the oldest and
counts them (``P:{ssf}:dropped``); a paused stream or a receiver down that long loses its oldest
events, never the newest. Appending and trimming is one Lua script (the queue, its index and the
counter always agree).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any, Final

from revoker import keys as k
from revoker.events.streams import EventsError

__all__ = [
    "DeadLetter",
    "QueuedEvent",
    "Queues",
]

#: KEYS: queue, index, dropped. ARGV: jti, kind, claims, max held, dest. Returns the entry id,
#: or false when the jti is queued already.
_ENQUEUE: Final = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return false end
local id = redis.call('XADD', KEYS[1], '*', 'j', ARGV[1], 'k', ARGV[2], 'c', ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], id)
local excess = redis.call('XLEN', KEYS[1]) - tonumber(ARGV[4])
if excess > 0 then
  local old = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', excess)
  for _, entry in ipairs(old) do
    redis.call('XDEL', KEYS[1], entry[1])
    local fields = entry[2]
    for i = 1, #fields, 2 do
      if fields[i] == 'j' then redis.call('HDEL', KEYS[2], fields[i + 1]) end
    end
  end
  redis.call('HINCRBY', KEYS[3], ARGV[5], #old)
end
return id
"""


#: A Redis stream entry id, as dead letters are named.
_ENTRY_ID: Final = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class QueuedEvent:
    """One event waiting in a queue."""

    entry_id: str
    jti: str
    kind: str
    claims: dict[str, Any]

    @classmethod
    def decode(cls, entry_id: Any, fields: dict[Any, Any]) -> QueuedEvent:
        f = {_text(name): _text(value) for name, value in fields.items()}
        return cls(_text(entry_id), f["j"], f["k"], json.loads(f["c"]))


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a destination never accepted."""

    id: str
    dest: str
    jti: str
    kind: str
    claims: dict[str, Any]
    error: str
    attempts: int
    at_ms: int

    @classmethod
    def decode(cls, entry_id: Any, fields: dict[Any, Any]) -> DeadLetter:
        f = {_text(name): _text(value) for name, value in fields.items()}
        return cls(
            _text(entry_id),
            f["d"],
            f["j"],
            f["k"],
            json.loads(f["c"]),
            f["e"],
            int(f["n"]),
            int(f["t"]),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "stream_id": self.dest,
            "jti": self.jti,
            "kind": self.kind,
            "error": self.error,
            "attempts": self.attempts,
            "at": self.at_ms / 1000,
            "claims": self.claims,
        }


class Queues:
    """The queues of every destination over one synchronous Redis client."""

    def __init__(self, client: Any, keys: k.KeyLayout, *, max_held: int, dead_max: int) -> None:
        self.client = client
        self.keys = keys
        self.max_held = max_held
        self.dead_max = dead_max
        self._enqueue = client.register_script(_ENQUEUE)

    def enqueue(
        self, dest: str, jti: str, kind: str, claims: dict[str, Any], *, pipe: Any = None
    ) -> Any:
        """Append one event (nothing when its jti is queued already); ``pipe`` batches it."""
        keys = [
            self.keys.events_queue(dest),
            self.keys.events_queue_index(dest),
            self.keys.events_dropped,
        ]
        body = json.dumps(claims, separators=(",", ":"), sort_keys=True)
        return self._enqueue(keys=keys, args=[jti, kind, body, self.max_held, dest], client=pipe)

    def head(self, dest: str, count: int) -> list[QueuedEvent]:
        """The oldest ``count`` events of ``dest``, in order."""
        entries = self.client.xrange(self.keys.events_queue(dest), "-", "+", count=count)
        return [QueuedEvent.decode(entry_id, fields) for entry_id, fields in entries]

    def length(self, dest: str) -> int:
        return int(self.client.xlen(self.keys.events_queue(dest)))

    def remove(self, dest: str, events: list[QueuedEvent]) -> None:
        """Forget delivered events (and the head's failed attempts)."""
        if not events:
            return
        pipe = self.client.pipeline(transaction=True)
        pipe.xdel(self.keys.events_queue(dest), *(e.entry_id for e in events))
        pipe.hdel(self.keys.events_queue_index(dest), *(e.jti for e in events))
        pipe.delete(self.keys.events_attempts(dest))
        pipe.execute()

    def find(self, dest: str, jtis: list[str]) -> list[QueuedEvent]:
        """The queued events of ``jtis`` (others are ignored: delivered before, or unknown)."""
        if not jtis:
            return []
        ids = self.client.hmget(self.keys.events_queue_index(dest), jtis)
        pipe = self.client.pipeline(transaction=False)
        for entry_id in ids:
            if entry_id is not None:
                pipe.xrange(self.keys.events_queue(dest), entry_id, entry_id)
        return [QueuedEvent.decode(*rows[0]) for rows in pipe.execute() if rows]

    def acknowledge(self, dest: str, jtis: list[str]) -> list[QueuedEvent]:
        """Remove the queued events of ``jtis``; returns those that were queued."""
        events = self.find(dest, jtis)
        self.remove(dest, events)
        return events

    def dropped(self, dest: str) -> int:
        value = self.client.hget(self.keys.events_dropped, dest)
        return int(value or 0)

    # --- failed attempts of the head event ----------------------------------------------------

    def attempts(self, dest: str) -> tuple[str, int, float]:
        """(jti, attempts, next attempt unix s) of the head's failures, or ("", 0, 0)."""
        raw = self.client.get(self.keys.events_attempts(dest))
        if raw is None:
            return "", 0, 0.0
        jti, attempts, next_ms = _text(raw).split("|")
        return jti, int(attempts), int(next_ms) / 1000

    def note_failure(self, dest: str, jti: str, attempts: int, next_at: float) -> None:
        value = f"{jti}|{attempts}|{int(next_at * 1000)}"
        self.client.set(self.keys.events_attempts(dest), value, ex=86400 * 7)

    # --- dead letters -------------------------------------------------------------------------

    def dead_letter(self, dest: str, event: QueuedEvent, error: str, attempts: int) -> None:
        """Move ``event`` from its queue to the dead-letter list (one MULTI/EXEC)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(
            self.keys.events_dead,
            {
                "d": dest,
                "j": event.jti,
                "k": event.kind,
                "c": json.dumps(event.claims, separators=(",", ":"), sort_keys=True),
                "e": error[:1000],
                "n": str(attempts),
                "t": str(int(time.time() * 1000)),
            },
            maxlen=self.dead_max,
            approximate=True,
        )
        pipe.xdel(self.keys.events_queue(dest), event.entry_id)
        pipe.hdel(self.keys.events_queue_index(dest), event.jti)
        pipe.delete(self.keys.events_attempts(dest))
        pipe.execute()

    def dead_letters(self, *, dest: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, newest first (of one destination if ``dest``)."""
        out: list[DeadLetter] = []
        last = "+"
        while len(out) < limit:
            page = self.client.xrevrange(self.keys.events_dead, last, "-", count=500)
            if not page:
                break
            for entry_id, fields in page:
                letter = DeadLetter.decode(entry_id, fields)
                if dest is None or letter.dest == dest:
                    out.append(letter)
            last = "(" + _text(page[-1][0])
        return out[:limit]

    def replay(self, ids: list[str], *, exists: Any) -> list[DeadLetter]:
        """Put dead letters back at the end of their destination's queue (same jti: a receiver
        that got it after all deduplicates it); ``exists(dest)`` says whether the destination is
        still there. Returns the letters replayed."""
        done: list[DeadLetter] = []
        bad = [i for i in ids if not isinstance(i, str) or _ENTRY_ID.fullmatch(i) is None]
        if bad:
            raise EventsError(400, "invalid_request", f"not a dead-letter id: {bad[0]!r}"[:200])
        for entry_id in ids:
            entries = self.client.xrange(self.keys.events_dead, entry_id, entry_id)
            if not entries:
                continue
            letter = DeadLetter.decode(*entries[0])
            if not exists(letter.dest):
                continue
            self.enqueue(letter.dest, letter.jti, letter.kind, letter.claims)
            self.client.xdel(self.keys.events_dead, letter.id)
            done.append(letter)
        return done
