"""The whole Redis key layout and every TTL rule. Pure: no I/O.

Layout (``P`` is ``REVOKER_KEY_PREFIX``; ``<x>`` is an escaped id)::

    P:jti:{<jti>}                  string  "<revoked_at_us>|<reason>"  one revoked token
    P:{<T>}:s:<n>                  hash    session bucket n: family id -> session record
    P:{<T>}:fr:<n>                 hash    revoked families of bucket n: family id ->
                                           "<revoked_at_us>|<reason>"
    P:{<T>}:uw:<user>              string  "<revoked_at_us>|<reason>" user watermark
    P:{<T>}:tw                     string  "<revoked_at_us>|<reason>" tenant watermark
    P:{<T>}:ci:<client>:<n>        hash    client index bucket n: family id -> "<created_us>" of
                                           the sessions of one client in session bucket n
    P:{<T>}:ix                     string  "<since_us>": the client index holds every session
                                           of the tenant created or rotated since (its marker)
    P:job:{<job_id>}               hash    one bulk job record
    P:job:{<job_id>}:c:<n>         string  the session buckets of chunk n of the job (JSON list)
    P:job:{<job_id>}:done          set     chunk numbers finished (each counted once)
    P:job:{<job_id>}:dlv           hash    chunk number -> deliveries (redelivery cap)
    P:jobs                         zset    job ids scored by creation time (ms)
    P:jobs:pending                 zset    outbox: jobs not yet started, by creation time (ms)
    P:jobs:running                 zset    jobs running, by when their progress last moved (s)
    P:jobs:chunk_begun             string  when any chunk last began (unix s): workers busy
    P:jobkey:<digest>              string  idempotency key -> job id while the job is active
    P:{<T>}:jc:<job_id>:<n>        hash    progress of chunk n of a job revoked server-side
    P:{<T>}:jc:<job_id>:<n>:ids    string  the family ids that chunk revoked (its audit entry)
    P:audit                        stream  append-only audit of every revocation
    P:feed                         stream  change feed: one entry per write of revocation state
                                           (FeedEntry; not on a Redis Cluster), trimmed by age
    P:stats                        hash    revocation counters
    P:{clients}:c:<client_id>      hash    one registered API client (revoker.clients; no TTL)
    P:{clients}:ids                set     every registered client id
    P:console:<session>            string  one console sign-in (JSON), TTL = its lifetime
    P:{integrity}:id               hash    the denylist's identity: epoch, seq, state (no TTL)
    P:{integrity}:gw               string  "<revoked_at_us>|<reason>" global watermark (cut-off)
    P:{ssf}:streams                hash    SSF stream id -> stream configuration (JSON)
    P:{ssf}:subjects:<dest>        set     subjects added to a stream (canonical JSON)
    P:{ssf}:q:<dest>               stream  events waiting for one destination, in order
    P:{ssf}:qj:<dest>              hash    jti -> entry id in that queue (poll acks, dedup)
    P:{ssf}:try:<dest>             string  "<jti>|<attempts>|<next_at_ms>" of the head event
    P:{ssf}:lease:<dest>           string  the one delivery task of a destination (token, PX)
    P:{ssf}:chunks                 stream  per-session revocations of bulk-job chunks
    P:{ssf}:wanted                 string  present while a destination wants per-session events
    P:{ssf}:pump                   string  the one router (token, PX)
    P:{ssf}:dead                   stream  dead letters: events a destination never accepted
    P:{ssf}:dropped                hash    destination -> events dropped (REVOKER_EVENTS_MAX_HELD)

``<T>`` is the tenant's hash tag: ``t:<tenant>``, or ``-`` for tokens without a tenant. Everything
of one tenant shares a Redis Cluster slot, so the check needs at most three slots (the jti's, the
tenant's and the integrity slot below) and a fan-out chunk touches one (and the integrity slot).
The jti key is tagged by the jti alone: revoking a token never requires knowing its tenant.

Sessions live in buckets, not in a key each: a tenant's sessions are the fields of its
``REVOKER_SESSION_BUCKETS`` bucket hashes, and a user's sessions all share the bucket
:func:`bucket_of_user` names. A key per session cost ~90 bytes of Redis bookkeeping (dict entry,
expires entry, key name) before any data, and a tenant index and user index beside it another
~170; a bucket of ~120 sessions stays a compact listpack. So the buckets are also the indexes: a
tenant job walks the tenant's buckets, a user job reads one bucket. A family id starts with its
bucket (:func:`family_id_prefix`), so a family is found from its id alone. A record expires with
its refresh token (``expires``): the bucket's TTL is its newest session's, and the expiry task
deletes expired records from live buckets. Revoked families are bucketed the same way (the bucket
their id names; ids not minted by ``start_session`` hash into :data:`FOREIGN_BUCKETS` buckets of
their own): a bulk job revokes a bucket's sessions with one HSET, and a revoked family costs a
hash field instead of a key with a TTL. A revoked mark is useful for the refresh lifetime plus
leeway after its time: the bucket's TTL is its newest mark's, and the expiry task deletes older
marks.

**The client index** (``P:{<T>}:ci:<client>:<n>``, :meth:`KeyLayout.client_index`): beside its
record, a session with a client has an entry in the index bucket of its client and its session
bucket's number, the family id -> its creation time (:func:`encode_index_entry`, read by
:func:`decode_index_entry` as a time, by the rule below), so that a job filtered by client reads
only that client's sessions (``scripts/chunk_index.lua``). The session's creation writes it (and
the bucket's TTL, ``Lifetimes.family_ttl``, as the session bucket's), each rotation writes it again
and renews that TTL: an index bucket lives as long as its client's newest session in the bucket.
The index is a superset hint, never the truth: a job reads each indexed record before it selects
it (by the record, as the full walk does) and drops entries whose record is gone; the expiry and
the unfiltered jobs' clean-up remove entries with their records. A tenant's marker
``P:{<T>}:ix`` (:func:`encode_index_since`, :func:`decode_index_since`) holds when its index began:
the first indexed creation writes it (``SET NX``, TTL ``Lifetimes.index_marker_ttl`` renewed by
each creation); every session created or rotated since then is indexed, so once no session older
than that can still verify (:meth:`Lifetimes.index_complete`: ``since`` 0, or ``family_ttl`` ago)
the index is complete and a client-filtered job walks it; until then (records written before the
index existed) the job walks every record.

**Identity of the data** (``P:{integrity}:id``, see :mod:`revoker.integrity`): an ``epoch`` (a
random id, no TTL) and a ``seq`` that only grows. Every write of revocation state bumps ``seq`` in
the same atomic step (a MULTI/EXEC or the writing script) and creates the epoch if it is absent;
:meth:`KeyLayout.integrity` is the one key and ``StoreCore.sequenced`` the one builder of "a
revocation write and its bump". ``state`` records a handled loss (``cutoff``, ``fail-closed``,
``accepted``) until an operator runs ``revoker recover`` (``recovered``). The global watermark
``P:{integrity}:gw`` is the cut-off written when a loss is detected: one more level in the max of
the watermarks. Both share the ``{integrity}`` tag, which no tenant tag can equal (those are
``t:...`` or ``-``); on a Redis Cluster they live in that one slot.

**Reading the sequence** follows one rule, :func:`read_seq` (:func:`decode_seq` for the value a
check compares), which ``scripts/_sequence.lua`` restates for the bump every script makes
(``tests/test_format_parity.py`` holds them to it): ``seq`` is readable only if it is one or more
ASCII digits and nothing else (as a time, above) with a value at most :data:`MAX_TIME` (no
clamping: a clamped sequence would stop growing). A missing ``seq`` reads 0; an unreadable one
(``"abc"``, ``"-5"``, ``"1.5"``, a non-ASCII digit such as ``"²"``, 17 digits) is **corrupt and
reads 0 too**: never an error, so a check never takes the failure policy over it (with
fail-open that admitted revoked tokens). Reading 0 makes a corrupt sequence a rollback signal:
a process that had seen a higher one handles it as a loss (``REVOKER_ON_DATA_LOSS``), ``revoker
health`` reports it, and the next bump of any script writes 1 (a script reads it by the same
rule, so a revocation is still written).

Ids are percent-escaped so that no id can contain ``{``, ``}`` or ``:``: no user, tenant or jti
string can forge another key or move a key to another slot.

Stored values have one encoder and one decoder each, here: a revoked mark of a jti or family and a
watermark (:func:`encode_mark`, :func:`decode_mark`), a session record (:func:`encode_record`,
:func:`decode_record`; the fan-out and the expiry read records raw with :func:`record_head`),
and a time stored whole, in µs (:func:`decode_time`: the ``at`` of audit and chunk-stream
entries, the integrity hash's ``lost_at`` and ``recovered_at``).

**Reading a time** (of a mark, a watermark, or a record's ``created`` / ``expires``) follows one
rule, :func:`read_time`, which ``scripts/rotate_refresh.lua`` and ``scripts/set_watermark.lua``
restate line for line (``tests/test_format_parity.py`` holds them to it):

* the time of a mark or watermark is its part before the first ``"|"`` (all of it without one);
* it is readable only if it is one or more ASCII digits and nothing else: no sign, space, dot,
  exponent, or non-ASCII digit. ``"00012"`` reads 12; ``"12abc"``, ``"-5"``, ``" 12"``, ``"1.5e15"``
  and ``""`` are unreadable;
* a readable time above :data:`MAX_TIME` reads as :data:`MAX_TIME` (2**53 - 1: exact in the Lua
  scripts' numbers, which are doubles; no float conversion can overflow);
* an unreadable time of a mark or watermark reads as 0. A jti or family mark revokes by its mere
  presence whatever its time (then ``revoked_at`` is unknown); a watermark reading 0 cuts off
  nothing issued after the epoch: in effect no cut-off;
* in a record, an unreadable ``created`` keeps it out of every bulk job, an unreadable
  ``expires`` keeps it from the expiry (its bucket's TTL still ends it), ``get_session`` reads
  either as 0, and rotate_refresh.lua honours a grace retry only when ``rotated`` and ``issued``
  are readable (else the presented token is reuse).

**The change feed** (``P:feed``, :meth:`KeyLayout.feed`): every write of revocation state appends
one entry in the same atomic step as the write (one script with the write and its sequence
bump, ``StoreCore.sequenced`` or the writing script; a bulk chunk's pipeline sends its entry
*before* its marks, and again after them, for a snapshot taken in between), so a mirror that
loads a snapshot and then follows the feed misses nothing. One encoder and one decoder
(:func:`encode_feed_entry`, :func:`decode_feed_entry`), fields all ASCII:

* ``k``, the kind (:data:`FEED_KINDS`): ``jti``, ``family``, ``user``, ``tenant``, ``global``, or
  ``epoch`` (data loss, recovery, init: the mirror must load a snapshot again);
* ``t``, the tenant id escaped as in keys, empty for none;
* ``i``, the ids (jtis, family ids, a user id), each escaped as in keys and with ``,`` escaped
  too (:func:`escape_feed_id`), joined by ``,``; a chunk of a bulk job puts its families in one;
* ``v``, integer µs: the revocation time of a jti or family, the value of a watermark;
* ``x``, unix seconds after which no token the entry covers can verify (``0``: never), the rule
  of :meth:`Lifetimes.feed_expiry` (the same bounds as the TTLs);
* ``s``, the integrity sequence after the write, or empty where the step does not bump it (a bulk
  chunk's entry precedes its marks, and its bump follows them).

A repeated revocation of a jti or family appends again (with its later time; the stored mark
keeps the first): presence revokes, so a reader keeps the earliest ``v`` and the latest ``x``.
The feed is trimmed on every append to :data:`DEFAULT_FEED_RETENTION` seconds (or
``REVOKER_FEED_RETENTION``) by stream id (``XADD ... MINID ~``): a mirror that falls further
behind than that starts again from a snapshot.

These are the values Python read before the rule was shared (``int()``) for every value this
version writes and for most it does not; the scripts read a leading run of digits (``"12abc"`` was
12 there), so a corrupt watermark could revoke in a rotation and pass the check.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, unquote

from revoker.exceptions import InvalidIdentifier

if TYPE_CHECKING:
    from revoker.settings import RevokerSettings

__all__ = [
    "DEFAULT_FEED_RETENTION",
    "FAMILY_BUCKET_SEPARATOR",
    "FEED_KINDS",
    "FOREIGN_BUCKETS",
    "MAX_ID_LENGTH",
    "MAX_TIME",
    "MAX_TTL",
    "NO_TENANT_TAG",
    "RECORD_CLIENT",
    "RECORD_CREATED",
    "RECORD_EXPIRES",
    "RECORD_FIELDS",
    "RECORD_HEAD",
    "RECORD_USER",
    "FeedEntry",
    "KeyLayout",
    "Lifetimes",
    "bucket_number",
    "bucket_of_user",
    "decode_feed_entry",
    "decode_index_entry",
    "decode_index_since",
    "decode_mark",
    "decode_record",
    "decode_seq",
    "decode_time",
    "encode_feed_entry",
    "encode_index_entry",
    "encode_index_since",
    "encode_mark",
    "encode_record",
    "escape_feed_id",
    "escape_id",
    "escape_part",
    "family_bucket",
    "family_id_prefix",
    "family_ttl",
    "jti_ttl",
    "mark_time",
    "read_seq",
    "read_time",
    "record_head",
    "tenant_tag",
    "watermark_ttl",
]

#: Longest id accepted (jti, user, tenant, family, client). Longer ids are rejected, not truncated.
MAX_ID_LENGTH: Final = 256
#: Characters left as they are in keys; everything else (braces, colons, %, spaces, non-ASCII)
#: is percent-encoded, which keeps escaping injective.
_SAFE_CHARS: Final = "-._~@+=!$&'()*,;"
#: Ids made only of characters quote() never changes are their own escape. Nearly every id is
#: (jtis, uuids, slugs), and the per-request check escapes four of them: skip quote() for those.
_UNCHANGED_BY_QUOTE: Final = re.compile(r"[A-Za-z0-9_.~\-@+=!$&'()*,;]+")
#: Hash tag of tokens that carry no tenant. Never the escape of a real tenant (those start "t:").
NO_TENANT_TAG: Final = "-"
#: The fields of a session record, in order: one hash field value, "|"-separated, each part
#: percent-escaped (so "|" never occurs inside one). ``scripts/rotate_refresh.lua`` reads and
#: rewrites them by position (1-based there): keep the order.
RECORD_FIELDS: Final = (
    "user",  # the user id
    "client",  # the client id, or empty
    "created",  # integer µs: the session's first iat
    "expires",  # unix seconds: the current refresh token's exp
    "current",  # the jti of the family's one current refresh token
    "previous",  # the jti it replaced (grace-window retries), or empty
    "rotated",  # integer µs of the last rotation, or empty
    "successor",  # the current access jti, for a grace-window retry, or empty
    "issued",  # integer µs iat of the current pair: a grace retry re-signs the same claims
    "scopes",  # space-separated
)
#: Positions in a record (0-based) of the fields the fan-out and the expiry read raw.
RECORD_USER: Final = RECORD_FIELDS.index("user")
RECORD_CLIENT: Final = RECORD_FIELDS.index("client")
RECORD_CREATED: Final = RECORD_FIELDS.index("created")
RECORD_EXPIRES: Final = RECORD_FIELDS.index("expires")
#: How many leading fields :func:`record_head` splits off; a record has at least these.
RECORD_HEAD: Final = RECORD_EXPIRES + 1
#: The largest time a stored value can hold (see "Reading a time" above): 2**53 - 1, the largest
#: integer the Lua scripts' doubles hold exactly. In µs it is the year 2255.
MAX_TIME: Final = 2**53 - 1
#: The longest TTL any entry gets, in seconds (~285 years: MAX_TIME read as µs, i.e. the year
#: 2255 counted from 1970, and far inside what Redis' ``EX`` holds). A TTL rule that would give
#: more (a token whose ``exp`` is 1e300) gives this: no token outlives it in any useful sense.
MAX_TTL: Final = MAX_TIME // 1_000_000
#: Digits of MAX_TIME (16): a time with more, once leading zeros are gone, is above it.
_MAX_TIME_DIGITS: Final = len(str(MAX_TIME))
#: Buckets of the revoked marks of family ids that do not name their bucket (foreign ids).
FOREIGN_BUCKETS: Final = 1024
#: Separates a family id's bucket (lower-case hex) from its random part.
FAMILY_BUCKET_SEPARATOR: Final = "."
_FAMILY_BUCKET: Final = re.compile(r"([0-9a-f]{1,4})\.")


def escape_id(value: object, what: str = "id") -> str:
    """Escape ``value`` for use inside a key, or raise InvalidIdentifier."""
    if not isinstance(value, str):
        raise InvalidIdentifier(f"{what} must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidIdentifier(f"{what} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidIdentifier(f"{what} is longer than {MAX_ID_LENGTH} characters")
    if _UNCHANGED_BY_QUOTE.fullmatch(value) is not None:
        return value
    try:
        return quote(value, safe=_SAFE_CHARS)
    except UnicodeEncodeError:
        # A lone surrogate (JSON "\ud800" decodes to one) has no UTF-8 form.
        raise InvalidIdentifier(f"{what} is not valid Unicode text") from None


def tenant_tag(tenant_id: str | None) -> str:
    """The hash tag shared by every key of one tenant."""
    if tenant_id is None:
        return NO_TENANT_TAG
    return "t:" + escape_id(tenant_id, "tenant id")


def bucket_of_user(user_id: str, buckets: int) -> int:
    """The session bucket holding every session of ``user_id`` (in each tenant)."""
    return zlib.crc32(escape_id(user_id, "user id").encode()) % buckets


def family_id_prefix(bucket: int) -> str:
    """How the id of a family in ``bucket`` starts (its random part follows)."""
    return f"{bucket:x}{FAMILY_BUCKET_SEPARATOR}"


def family_bucket(family_id: str) -> int | None:
    """The bucket a family id names, or None for an id not minted by ``start_session``."""
    match = _FAMILY_BUCKET.match(family_id)
    return int(match.group(1), 16) if match is not None else None


#: Digits of the largest bucket number a key can carry (session buckets < 65536, foreign < 1024).
_BUCKET_DIGITS: Final = 5


def bucket_number(key: bytes) -> int | None:
    """The bucket number of a session or revoked-mark bucket key (``...:s:<n>``, ``...:fr:<n>``,
    ``...:fr:x<n>``), or None for a key that does not end in one."""
    number = key.rpartition(b":")[2]
    if number[:1] == b"x":
        number = number[1:]
    if not number.isdigit() or len(number) > _BUCKET_DIGITS:
        return None
    return int(number)


def escape_part(value: str) -> str:
    """Escape one part of a session record (no "|" or space can remain)."""
    if _UNCHANGED_BY_QUOTE.fullmatch(value) is not None:
        return value
    try:
        return quote(value, safe=_SAFE_CHARS)
    except UnicodeEncodeError:
        raise InvalidIdentifier(f"{value!r} is not valid Unicode text") from None


def encode_record(
    *,
    user_id: str,
    client_id: str | None,
    created_us: int,
    expires: int,
    current_jti: str,
    scopes: Sequence[str] = (),
) -> str:
    """A new session's record (never rotated: previous, rotated, successor, issued empty)."""
    return "|".join(
        (
            escape_part(user_id),
            escape_part(client_id) if client_id else "",
            str(int(created_us)),
            str(int(expires)),
            escape_part(current_jti),
            "",
            "",
            "",
            "",
            " ".join(escape_part(s) for s in scopes),
        )
    )


#: The record fields that hold times: never escaped, so read as stored (see :func:`read_time`).
_RECORD_TIMES: Final = frozenset({"created", "expires", "rotated", "issued"})


def decode_record(value: str | bytes) -> dict[str, Any]:
    """A record's fields by name, unescaped (absent ones empty); ``scopes`` is a tuple.

    Never raises: bytes that are not UTF-8 are replaced. Times stay as stored (not unescaped),
    so that every reader reads the same time from them."""
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    parts = text.split("|")
    parts += [""] * (len(RECORD_FIELDS) - len(parts))
    out: dict[str, Any] = {
        name: part if name in _RECORD_TIMES else unquote(part)
        for name, part in zip(RECORD_FIELDS, parts, strict=False)
    }
    out["scopes"] = tuple(unquote(s) for s in parts[RECORD_FIELDS.index("scopes")].split())
    return out


def record_head(raw: bytes) -> list[bytes] | None:
    """A raw record's leading fields, still escaped, at ``RECORD_USER`` .. ``RECORD_EXPIRES``
    (the unsplit rest follows, if any); None for a value with fewer than ``RECORD_HEAD`` fields
    (not a record this version wrote). Read their times with :func:`read_time`."""
    parts = raw.split(b"|", RECORD_HEAD)
    return parts if len(parts) >= RECORD_HEAD else None


# --- stored times and marks ------------------------------------------------------------------


def read_time(part: bytes) -> int | None:
    """The time ``part`` holds (the rule of the module docstring), or None if it is unreadable."""
    # bytes.isdigit() is ASCII-only and False for b"": exactly "one or more ASCII digits".
    if not part.isdigit():
        return None
    if len(part) > _MAX_TIME_DIGITS:
        part = part.lstrip(b"0") or b"0"
        if len(part) > _MAX_TIME_DIGITS:
            return MAX_TIME  # int() of thousands of digits would raise: never convert them
    at = int(part)
    return at if at <= MAX_TIME else MAX_TIME


def decode_time(raw: bytes | str | None) -> int | None:
    """A stored time in µs that is a whole value (an audit or chunk-stream entry's ``at``, the
    integrity hash's ``lost_at`` and ``recovered_at``) by :func:`read_time`'s rule; None when it
    is absent or unreadable. Never raises (``str.isdigit`` accepts ``"²"``, which int() refuses)."""
    if raw is None:
        return None
    return read_time(raw.encode(errors="replace") if isinstance(raw, str) else raw)


def mark_time(raw: bytes) -> int | None:
    """The time of a raw mark or watermark (its part before "|"), or None if it is unreadable."""
    return read_time(raw.partition(b"|")[0])


def read_seq(raw: bytes | str | None) -> int | None:
    """The integrity sequence ``raw`` holds (the rule of the module docstring, "Reading the
    sequence"): 0 for None (no ``seq``), None if it is corrupt (unreadable)."""
    if raw is None:
        return 0
    data = raw.encode(errors="replace") if isinstance(raw, str) else raw
    if not data.isdigit():  # ASCII-only: "²" or a full-width digit is not a digit here
        return None
    if len(data) > _MAX_TIME_DIGITS:
        data = data.lstrip(b"0") or b"0"
        if len(data) > _MAX_TIME_DIGITS:
            return None  # never int() thousands of digits (it raises past 4300)
    seq = int(data)
    return seq if seq <= MAX_TIME else None


def decode_seq(raw: bytes | str | None) -> int:
    """The sequence a check compares: :func:`read_seq`, with a corrupt value read as 0 (a
    rollback signal to a process that saw more; never an error). Never raises."""
    return read_seq(raw) or 0


def encode_mark(at_us: int, reason: str | None = None) -> str:
    """The value stored for a revoked jti or family, and for a watermark: ``"<at_us>|<reason>"``."""
    return f"{at_us}|{reason or ''}"


def decode_mark(raw: bytes | str) -> tuple[int, str | None]:
    """A mark's or watermark's time in µs (0 when unreadable) and reason (None when empty).

    Never raises: a value this version did not write reads by the rule of the module docstring,
    and bytes that are not UTF-8 are replaced in the reason."""
    data = raw.encode(errors="replace") if isinstance(raw, str) else raw
    at, _, reason = data.partition(b"|")
    at_us = read_time(at) or 0
    return at_us, reason.decode(errors="replace") or None


# --- the client index -------------------------------------------------------------------------


def encode_index_entry(created_us: int) -> str:
    """The value of a session's client-index entry: its creation time, integer µs."""
    return str(int(created_us))


def decode_index_entry(raw: bytes | str) -> int | None:
    """The creation time a client-index entry holds (:func:`decode_time`), None if unreadable
    (such an entry selects nothing by time; its record decides)."""
    return decode_time(raw)


def encode_index_since(since_us: int) -> str:
    """A tenant's client-index marker: since when (µs) every session created or rotated is
    indexed; 0 for "every session ever" (a tenant whose index is known complete)."""
    return str(int(since_us))


def decode_index_since(raw: bytes | str | None) -> int | None:
    """The time a client-index marker holds (:func:`decode_time`); None when there is none or it
    is unreadable: the index is then not known complete."""
    return decode_time(raw)


# --- the change feed ---------------------------------------------------------------------------

#: What a feed entry can record (module docstring, "The change feed").
FEED_KINDS: Final = frozenset({"jti", "family", "user", "tenant", "global", "epoch"})
#: Seconds the feed keeps an entry (``REVOKER_FEED_RETENTION``'s default): how long a mirror may
#: be cut off and still catch up from the feed instead of loading a snapshot again. A day covers
#: a night's outage; the cost is the stream's memory (~100 B per single revocation, one entry
#: per bulk chunk).
DEFAULT_FEED_RETENTION: Final = 86400
#: The feed entry's field names, in the order they are written.
_FEED_FIELDS: Final = ("k", "t", "i", "v", "x", "s")


def escape_feed_id(value: str) -> str:
    """An id as a feed entry's ``i`` holds it: escaped as in keys, and ``,`` (the separator, which
    keys leave as it is) escaped too. Injective: ``%`` is always escaped, so ``%2C`` is a comma.
    An encoding, not a validation: ids stored already (a bulk chunk's) are never refused here."""
    return escape_part(value).replace(",", "%2C")


@dataclass(frozen=True, slots=True)
class FeedEntry:
    """One decoded feed entry (module docstring): ids and tenant unescaped."""

    kind: str
    tenant_id: str | None
    ids: tuple[str, ...]
    #: µs: revocation time (jti, family) or the watermark's value (user, tenant, global).
    value_us: int
    #: Unix seconds after which the entry covers no token that can verify; 0: never.
    expires: int
    #: The integrity sequence after the write, None where the step did not bump it.
    seq: int | None


def encode_feed_entry(
    kind: str,
    *,
    tenant_id: str | None = None,
    ids: Iterable[str] = (),
    value_us: int = 0,
    expires: int = 0,
    seq: int | None = None,
    escaped: bool = False,
) -> dict[str, str]:
    """A feed entry's fields (``XADD`` them in this order). ``escaped``: the ids are already
    as :func:`escape_feed_id` makes them (the bulk path escapes each id once)."""
    if kind not in FEED_KINDS:
        raise ValueError(f"unknown feed entry kind {kind!r}")
    joined = ",".join(ids if escaped else (escape_feed_id(i) for i in ids))
    return {
        "k": kind,
        "t": escape_id(tenant_id, "tenant id") if tenant_id is not None else "",
        "i": joined,
        "v": str(int(value_us)),
        "x": str(int(expires)),
        "s": "" if seq is None else str(int(seq)),
    }


def _feed_text(fields: dict[Any, Any], name: str) -> str:
    value = fields.get(name, fields.get(name.encode()))
    if value is None:
        raise ValueError(f"feed entry has no {name!r} field")
    text = value.decode() if isinstance(value, bytes) else str(value)
    if not text.isascii():
        raise ValueError(f"feed entry field {name!r} is not ASCII")
    return text


def _feed_int(fields: dict[Any, Any], name: str) -> int:
    text = _feed_text(fields, name)
    at = read_time(text.encode())
    if at is None:
        raise ValueError(f"feed entry field {name!r} is not an integer: {text!r}")
    return at


def decode_feed_entry(fields: dict[Any, Any]) -> FeedEntry:
    """A feed entry's fields (str or bytes, as redis-py returns them) decoded; ValueError for one
    this version did not write (an unknown kind, a missing or unreadable field): the reader
    cannot know what it changed, so it should load a snapshot again."""
    kind = _feed_text(fields, "k")
    if kind not in FEED_KINDS:
        raise ValueError(f"unknown feed entry kind {kind!r}")
    tenant = _feed_text(fields, "t")
    ids = _feed_text(fields, "i")
    seq = _feed_text(fields, "s")
    return FeedEntry(
        kind=kind,
        tenant_id=unquote(tenant) if tenant else None,
        ids=tuple(unquote(i) for i in ids.split(",")) if ids else (),
        value_us=_feed_int(fields, "v"),
        expires=_feed_int(fields, "x"),
        seq=_feed_int(fields, "s") if seq else None,
    )


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """Builds every key revoker uses, under one prefix."""

    prefix: str = "revoker"

    def __post_init__(self) -> None:
        if not self.prefix or any(c in self.prefix for c in "{}: "):
            raise InvalidIdentifier("key prefix must be non-empty without braces, colons or spaces")

    def jti(self, jti: str) -> str:
        """A revoked token. Tagged by the jti alone."""
        return f"{self.prefix}:jti:{{{escape_id(jti, 'jti')}}}"

    def session_bucket(self, tenant_id: str | None, bucket: int) -> str:
        """One bucket of the tenant's session records."""
        return f"{self.session_bucket_base(tenant_id)}{int(bucket)}"

    def session_bucket_base(self, tenant_id: str | None) -> str:
        """What every bucket key of the tenant starts with (the bucket number follows)."""
        return f"{self.prefix}:{{{tenant_tag(tenant_id)}}}:s:"

    def session_buckets(self, tenant_id: str | None, buckets: Iterable[int]) -> list[str]:
        """The keys of several session buckets of the tenant (the tag escaped once)."""
        base = self.session_bucket_base(tenant_id)
        return [f"{base}{int(bucket)}" for bucket in buckets]

    def prefix_pattern(self) -> str:
        """A SCAN MATCH pattern of every key under the prefix (what the demo deletes after it)."""
        return f"{self.prefix}:*"

    def session_bucket_pattern(self) -> str:
        """SCAN MATCH pattern of every session bucket of every tenant."""
        return f"{self.prefix}:{{*}}:s:*"

    def client_index(self, tenant_id: str | None, client_id: str, bucket: int) -> str:
        """The client-index bucket of ``client_id``'s sessions in session bucket ``bucket``."""
        return f"{self.client_index_base(tenant_id, client_id)}{int(bucket)}"

    def client_index_base(self, tenant_id: str | None, client_id: str) -> str:
        """What every client-index bucket key of the tenant's client starts with."""
        client = escape_id(client_id, "client id")
        return f"{self.prefix}:{{{tenant_tag(tenant_id)}}}:ci:{client}:"

    def client_index_buckets(
        self, tenant_id: str | None, client_id: str, buckets: Iterable[int]
    ) -> list[str]:
        """The client-index bucket keys of several session buckets (the base escaped once)."""
        base = self.client_index_base(tenant_id, client_id)
        return [f"{base}{int(bucket)}" for bucket in buckets]

    def client_index_of_part(
        self, tenant_id: str | None, escaped_client: bytes, buckets: Iterable[int]
    ) -> list[bytes]:
        """The client-index bucket keys of a client as a record stores it (escaped already:
        :func:`escape_part`, the same escape as :func:`escape_id` for every valid id)."""
        base = f"{self.prefix}:{{{tenant_tag(tenant_id)}}}:ci:".encode() + escaped_client + b":"
        return [base + str(int(bucket)).encode() for bucket in buckets]

    def client_index_of_session_bucket(self, session_key: bytes, escaped_client: bytes) -> bytes:
        """The client-index bucket of the client (as a record stores it) in a session bucket."""
        head, sep, number = session_key.rpartition(b":s:")
        if not sep:
            raise ValueError(f"not a session bucket key: {session_key!r}")
        return head + b":ci:" + escaped_client + b":" + number

    def client_index_pattern(self) -> str:
        """SCAN MATCH pattern of every client-index bucket of every tenant."""
        return f"{self.prefix}:{{*}}:ci:*"

    def session_bucket_of_index(self, index_key: bytes) -> bytes | None:
        """The session bucket key a client-index bucket key indexes (same tag, same number), or
        None for a key that is not one."""
        head, sep, rest = index_key.partition(b"}:ci:")
        client, _, number = rest.rpartition(b":")
        if not sep or not client or not number.isdigit() or len(number) > _BUCKET_DIGITS:
            return None
        return head + b"}:s:" + number

    def client_index_marker(self, tenant_id: str | None) -> str:
        """The tenant's client-index marker (module docstring, "The client index")."""
        return f"{self.prefix}:{{{tenant_tag(tenant_id)}}}:ix"

    def family_revoked(self, tenant_id: str | None, family_id: str) -> str:
        """The hash holding the family's revoked mark (the field is the family id), read by the
        per-request check: the bucket the id names, or for a foreign id one of its own."""
        escape_id(family_id, "family id")  # a bad family id is named before a bad tenant id
        return self._family_revoked(tenant_tag(tenant_id), family_id)

    def _family_revoked(self, tag: str, family_id: str) -> str:
        escaped = escape_id(family_id, "family id")
        bucket = family_bucket(family_id)
        if bucket is not None:
            return f"{self._revoked_bucket_base(tag)}{int(bucket)}"
        foreign = zlib.crc32(escaped.encode()) % FOREIGN_BUCKETS
        return f"{self._revoked_bucket_base(tag)}x{foreign}"

    def revoked_bucket(self, tenant_id: str | None, bucket: int) -> str:
        """The revoked marks of the families of one session bucket."""
        return f"{self.revoked_bucket_base(tenant_id)}{int(bucket)}"

    def revoked_buckets(self, tenant_id: str | None, buckets: Iterable[int]) -> list[str]:
        """The keys of the revoked-mark buckets of several session buckets of the tenant."""
        base = self.revoked_bucket_base(tenant_id)
        return [f"{base}{int(bucket)}" for bucket in buckets]

    def revoked_bucket_base(self, tenant_id: str | None) -> str:
        """What every revoked-mark bucket key of the tenant starts with."""
        return self._revoked_bucket_base(tenant_tag(tenant_id))

    def _revoked_bucket_base(self, tag: str) -> str:
        return f"{self.prefix}:{{{tag}}}:fr:"

    def revoked_bucket_pattern(self) -> str:
        """SCAN MATCH pattern of every revoked-mark bucket of every tenant."""
        return f"{self.prefix}:{{*}}:fr:*"

    def user_watermark(self, tenant_id: str | None, user_id: str) -> str:
        """Every token of this user (in this tenant) issued at or before the value is revoked."""
        return self._user_watermark(tenant_tag(tenant_id), user_id)

    def _user_watermark(self, tag: str, user_id: str) -> str:
        return f"{self.prefix}:{{{tag}}}:uw:{escape_id(user_id, 'user id')}"

    def tenant_watermark(self, tenant_id: str | None) -> str:
        """Every token of this tenant issued at or before the value is revoked."""
        return self._tenant_watermark(tenant_tag(tenant_id))

    def _tenant_watermark(self, tag: str) -> str:
        return f"{self.prefix}:{{{tag}}}:tw"

    def job(self, job_id: str) -> str:
        """One bulk job record. Tagged by the job id: the job's keys below share its slot."""
        return f"{self.prefix}:job:{{{escape_id(job_id, 'job id')}}}"

    def job_chunk(self, job_id: str, chunk: int) -> str:
        """The session buckets of one chunk of a job (a JSON list)."""
        return f"{self.job(job_id)}:c:{int(chunk)}"

    def job_chunks_done(self, job_id: str) -> str:
        """Set of the job's chunk numbers that have finished (counted exactly once)."""
        return f"{self.job(job_id)}:done"

    def job_deliveries(self, job_id: str) -> str:
        """Hash chunk number -> deliveries, for the redelivery cap."""
        return f"{self.job(job_id)}:dlv"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    @property
    def jobs_pending(self) -> str:
        """The outbox: ids of jobs not yet started, scored by creation time (ms)."""
        return f"{self.prefix}:jobs:pending"

    @property
    def jobs_running(self) -> str:
        """Jobs started and not finished, scored by when their progress last moved (unix s)."""
        return f"{self.prefix}:jobs:running"

    @property
    def jobs_chunk_begun(self) -> str:
        """When any job's chunk last began (unix s): the workers are busy with chunks."""
        return f"{self.prefix}:jobs:chunk_begun"

    def job_idempotency(self, digest: str) -> str:
        return f"{self.prefix}:jobkey:{escape_id(digest, 'idempotency key')}"

    def job_chunk_progress(self, tenant_id: str | None, job_id: str, chunk: int) -> str:
        """Hash: a chunk's buckets revoked server-side (``scripts/chunk_buckets.lua``), bucket
        number -> ``d`` (done) or the HSCAN cursor to resume at, and ``n`` -> sessions revoked.
        In the tenant's slot, as the buckets it is written with."""
        job = escape_id(job_id, "job id")
        return f"{self.prefix}:{{{tenant_tag(tenant_id)}}}:jc:{job}:{int(chunk)}"

    def job_chunk_revoked(self, tenant_id: str | None, job_id: str, chunk: int) -> str:
        """String: the family ids that chunk revoked so far, space-separated (its audit entry)."""
        return f"{self.job_chunk_progress(tenant_id, job_id, chunk)}:ids"

    @property
    def audit(self) -> str:
        return f"{self.prefix}:audit"

    def console_session(self, session_id: str) -> str:
        """One signed-in console session (JSON); its TTL is the session's lifetime."""
        return f"{self.prefix}:console:{escape_id(session_id, 'session id')}"

    @property
    def feed(self) -> str:
        """The change feed (a stream; module docstring). Untagged: refused on a Redis Cluster,
        where no atomic step could span it and a tenant's slot."""
        return f"{self.prefix}:feed"

    @property
    def stats(self) -> str:
        return f"{self.prefix}:stats"

    # --- registered API clients (revoker.clients) ---------------------------------------------
    # Both keys share the {clients} tag so that adding or removing a client (its hash and its id
    # in the set) is one MULTI/EXEC on Redis Cluster too. No TTL: a client stays until removed.

    def client(self, client_id: str) -> str:
        """One registered client: name, scopes, created_at, the secret's Argon2 hash, and the
        optional back-channel logout URI (hash; the fields are revoker.clients')."""
        return f"{self.prefix}:{{clients}}:c:{escape_id(client_id, 'client id')}"

    @property
    def clients(self) -> str:
        """Set of every registered client id (what ``revoker clients list`` walks)."""
        return f"{self.prefix}:{{clients}}:ids"

    @property
    def integrity(self) -> str:
        """The denylist's identity: hash of ``epoch``, ``seq``, ``state`` (module docstring)."""
        return f"{self.prefix}:{{integrity}}:id"

    @property
    def global_watermark(self) -> str:
        """Every token issued at or before the value is revoked: the cut-off after a loss."""
        return f"{self.prefix}:{{integrity}}:gw"

    # --- SSF transmitter and back-channel logout (revoker.events) -------------------------------
    # Every key shares the {ssf} hash tag: on a Redis Cluster they live in one slot, so a
    # delivery's "deliver, forget, advance" is one MULTI/EXEC. A destination (``<dest>``) is an SSF
    # stream id, or ``rp:<client id>`` for a relying party's back-channel logout (a registered
    # client with a backchannel_logout_uri, revoker.clients).

    @property
    def events_streams(self) -> str:
        """Hash: SSF stream id -> its configuration (JSON, revoker.events.streams)."""
        return f"{self.prefix}:{{ssf}}:streams"

    def events_subjects(self, dest: str) -> str:
        """Set: the subjects added to one stream (canonical JSON); empty = every subject."""
        return f"{self.prefix}:{{ssf}}:subjects:{escape_id(dest, 'stream id')}"

    def events_queue(self, dest: str) -> str:
        """Stream: the events waiting for one destination, oldest first (bounded: MAXLEN)."""
        return f"{self.prefix}:{{ssf}}:q:{escape_id(dest, 'stream id')}"

    def events_queue_index(self, dest: str) -> str:
        """Hash: jti -> its entry id in the destination's queue (acks by jti; no jti twice)."""
        return f"{self.prefix}:{{ssf}}:qj:{escape_id(dest, 'stream id')}"

    def events_attempts(self, dest: str) -> str:
        """String ``"<jti>|<attempts>|<next_at_ms>"``: the failed attempts of the head event."""
        return f"{self.prefix}:{{ssf}}:try:{escape_id(dest, 'stream id')}"

    def events_lease(self, dest: str) -> str:
        """String: the token of the one task delivering to this destination (expires: PX)."""
        return f"{self.prefix}:{{ssf}}:lease:{escape_id(dest, 'stream id')}"

    @property
    def events_chunks(self) -> str:
        """Stream: the sessions of bulk-job chunks, written only while some destination wants
        per-session events (revoker.events.emit_chunk_events)."""
        return f"{self.prefix}:{{ssf}}:chunks"

    @property
    def events_wanted(self) -> str:
        """String, present while a stream asks for per-session events or a relying party exists."""
        return f"{self.prefix}:{{ssf}}:wanted"

    @property
    def events_pump(self) -> str:
        """String: the token of the one router moving revocations into queues (expires: PX)."""
        return f"{self.prefix}:{{ssf}}:pump"

    @property
    def events_dead(self) -> str:
        """Stream: dead letters (bounded: MAXLEN), listed and replayed by ``revoker events``."""
        return f"{self.prefix}:{{ssf}}:dead"

    @property
    def events_dropped(self) -> str:
        """Hash: destination -> events dropped because it held REVOKER_EVENTS_MAX_HELD already."""
        return f"{self.prefix}:{{ssf}}:dropped"

    def check_keys(
        self, jti: str, tenant_id: str | None, user_id: str | None, family_id: str | None
    ) -> list[str | None]:
        """The keys the per-request check reads, in RULE_ORDER; None where a rule cannot apply.

        The family's is a hash (its field is the family id); the others are strings."""
        jti_key = self.jti(jti)
        tag = tenant_tag(tenant_id)  # once: three of the keys carry it (the per-request path)
        return [
            jti_key,
            self._family_revoked(tag, family_id) if family_id is not None else None,
            self._user_watermark(tag, user_id) if user_id is not None else None,
            self._tenant_watermark(tag) if tenant_id is not None else None,
            self.global_watermark,
        ]


# --- TTL rules -------------------------------------------------------------------------------
# An entry is useful only while a token it covers could still verify: at most until that token's
# exp plus the verification leeway. Every TTL below is that bound, rounded up to whole seconds.
# Callers with settings use Lifetimes (bound to them once); the functions are its arithmetic.


def jti_ttl(expires_at: float | None, now: float, access_ttl: int, leeway: int) -> int:
    """TTL of a revoked-jti entry: the token's remaining life plus leeway, at most
    :data:`MAX_TTL`.

    Without ``expires_at`` the longest an access token can live is assumed, so a jti revoked
    without its token (the seed's ``revoke_token(jti=...)``) is covered for its whole life. A
    validly signed token may carry any ``exp`` (``1e300``, 20 digits, ``inf`` from ``1e400``):
    its entry is written with :data:`MAX_TTL`, which covers it for as long as it can be presented
    (Redis refuses an ``EX`` past its own range, which failed the revocation); ``nan`` is read as
    the longest too. Never raises.
    """
    remaining = (expires_at - now) if expires_at is not None else access_ttl
    ttl = remaining + leeway
    if not ttl < MAX_TTL:  # also inf and nan
        return MAX_TTL
    return max(1, math.ceil(ttl))


def watermark_ttl(longest_token_ttl: int, leeway: int) -> int:
    """TTL of a user or tenant watermark: after it, no token it covers can still verify."""
    return longest_token_ttl + leeway


def family_ttl(refresh_ttl: int, leeway: int) -> int:
    """How long a session record or a revoked family's mark is kept: the refresh token's life
    plus leeway (the TTL of their buckets, renewed by each write)."""
    return refresh_ttl + leeway


@dataclass(frozen=True, slots=True)
class Lifetimes:
    """Every TTL and age cut-off, bound to one configuration (:meth:`from_settings`)."""

    access_token_ttl: int
    refresh_token_ttl: int
    longest_token_ttl: int
    leeway: int
    job_retention: int
    audit_retention: int
    feed_retention: int = DEFAULT_FEED_RETENTION

    @classmethod
    def from_settings(cls, settings: RevokerSettings) -> Lifetimes:
        """The lifetimes ``settings`` configure."""
        return cls(
            access_token_ttl=settings.access_token_ttl,
            refresh_token_ttl=settings.refresh_token_ttl,
            longest_token_ttl=settings.longest_token_ttl,
            leeway=settings.leeway,
            job_retention=settings.job_retention,
            audit_retention=settings.audit_retention,
            feed_retention=settings.feed_retention,
        )

    def jti_ttl(self, expires_at: float | None, now: float) -> int:
        """TTL of a revoked jti revoked at ``now`` (see :func:`jti_ttl`)."""
        return jti_ttl(expires_at, now, self.access_token_ttl, self.leeway)

    @property
    def watermark_ttl(self) -> int:
        """TTL of a user or tenant watermark (see :func:`watermark_ttl`)."""
        return watermark_ttl(self.longest_token_ttl, self.leeway)

    @property
    def family_ttl(self) -> int:
        """TTL of a session bucket and of a revoked-mark bucket, renewed by each write; also how
        long a record or mark is useful (see :func:`family_ttl`)."""
        return family_ttl(self.refresh_token_ttl, self.leeway)

    @property
    def index_marker_ttl(self) -> int:
        """TTL of a tenant's client-index marker, renewed by each session created: twice the
        records' lifetime. A marker gone (no session created for that long) only makes the next
        one start later: the index is then not known complete for a ``family_ttl`` again."""
        return 2 * self.family_ttl

    def index_complete(self, since_us: int | None, now: float) -> bool:
        """Whether a client index begun at ``since_us`` (its marker; None: no marker) holds every
        session that can still verify: every one created or rotated since is indexed, and one
        last written before ``family_ttl`` ago has no token left."""
        if since_us is None:
            return False
        return since_us == 0 or since_us <= int((now - self.family_ttl) * 1_000_000)

    def records_expired_before(self, now: float) -> int:
        """Unix seconds: a record whose ``expires`` is below this can never verify or rotate."""
        return int(now) - self.leeway

    def marks_older_than(self, now: float) -> int:
        """µs: a revoked mark whose time is below this covers no token that can still verify."""
        return int((now - self.family_ttl) * 1_000_000)

    def jobs_finished_before(self, now: float) -> int:
        """Milliseconds (the jobs index's score): finished jobs created before this are dropped."""
        return int((now - self.job_retention) * 1000)

    def audit_cutoff_id(self, now: float) -> str:
        """The audit stream id (XTRIM MINID) before which entries are past their retention."""
        return f"{int((now - self.audit_retention) * 1000)}-0"

    def feed_cutoff_id(self, now: float) -> str:
        """The feed's trim point (``XADD ... MINID ~``): entries older than the retention go."""
        return f"{int((now - self.feed_retention) * 1000)}-0"

    def feed_expiry(self, kind: str, now: float, expires_at: float | None = None) -> int:
        """A feed entry's ``x`` (unix s): when the state it records covers no token that can still
        verify, by the TTL rules above (a jti: its token's exp, or the longest access life, plus
        leeway; a family: the refresh life plus leeway; a watermark: the longest token life plus
        leeway); 0 (never) for an epoch, which makes the reader load a snapshot."""
        if kind == "jti":
            return math.ceil(now) + self.jti_ttl(expires_at, now)
        if kind == "family":
            return math.ceil(now) + self.family_ttl
        if kind in ("user", "tenant", "global"):
            return math.ceil(now) + self.watermark_ttl
        return 0
