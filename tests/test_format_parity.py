"""Python and every Lua script read a stored value by one rule (``keys.read_time``).

The same valid, edge and corrupt values (revoked marks, watermarks, session records) go through
the Python decoders (``keys.decode_mark``, ``rules.decide``, ``keys.decode_record``,
``keys.record_head``) and through each script that reads them, run on each backend of the table
(fakeredis with Lua, real Redis, the pipelined connection): the check (``check.lua``, via the
store), ``rotate_refresh.lua``, ``set_watermark.lua``, ``data_loss.lua`` (a global cut-off
kept or replaced) and a bulk job's ``chunk_buckets.lua`` (which records it selects, against
``tasks.buckets.Selection``, and the feed ids it writes, against ``keys.escape_feed_id``). Each
store call goes through both the backend's sync store and its async store (the one a service
checks with: on the `pipelined` entry, its check runs over the pipelined connection). Each test
asserts the scripts decide what Python decides; a rule changed on one side only makes one of
them fail.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import fakeredis
import pytest
import redis

from conftest import REDIS_URL, Backend, CheckPath, private_settings
from revoker.keys import (
    MAX_TIME,
    RECORD_FIELDS,
    RECORD_HEAD,
    bucket_of_user,
    decode_mark,
    decode_record,
    encode_mark,
    encode_record,
    escape_part,
    family_id_prefix,
    read_time,
    record_head,
)
from revoker.rules import RevocationStatus, decide, now_us
from revoker.store import (
    RedisTokenRevocationStore,
    RotationReply,
    SyncRedisTokenRevocationStore,
)
from revoker.store._base import Plan, load_script
from revoker.tokens import TokenData

USER, TENANT = "alice", "acme"
PRESENTED = "rt-presented"
GRACE = 30
T_US = 1_700_000_000_123_456

#: Stored marks and watermarks: valid, edge and corrupt.
VALUES: list[bytes] = [
    b"12",
    b"12|r",
    b"00012|r",
    b"0" * 30 + b"12|x",
    b"1000|a|b|c",
    f"{T_US}|logout".encode(),
    str(MAX_TIME).encode(),
    str(MAX_TIME + 1).encode() + b"|x",
    b"9" * 16,
    b"9" * 17 + b"|x",
    b"9" * 400,
    b"9" * 5000,
    b"",
    b"|",
    b"|12",
    b"12abc",
    b"12abc|x",
    b"-5|x",
    b"-5",
    b"+12",
    b" 12|x",
    b"12 ",
    b"\n12",
    b"12\n",
    b"1.5e15",
    b"0x10",
    b"inf",
    b"nan|x",
    b"12\x00|x",
    b"\xff\xfe",
    b"12|\xff",
    b"\xff12|x",
    "١٢|x".encode(),  # Arabic-Indic digits
    "\uff11\uff12".encode(),  # full-width digits
]
#: Issue times (µs) around the times those values could be read as.
IATS_US = [-1, 0, 1, 11, 12, 13, 999, 1000, 1001, T_US - 1, T_US, T_US + 1, MAX_TIME - 1, 10**16]


def _ids(value: bytes) -> str:
    return repr(value[:24]) + (f"..{len(value)}" if len(value) > 24 else "")


class Parity:
    """One data set seen through a backend's two stores, built as the table builds them: ``sync``
    (seeds keys, as tasks and the CLI do) and ``aio`` (the store a service checks with)."""

    def __init__(
        self,
        entry: Backend,
        sync: SyncRedisTokenRevocationStore,
        aio: RedisTokenRevocationStore,
        check_path: CheckPath,
    ) -> None:
        self.entry, self.sync, self.aio, self.check_path = entry, sync, aio, check_path

    async def is_revoked(self, token: TokenData) -> tuple[RevocationStatus, RevocationStatus]:
        """The check's decision through the sync store and through the async one."""
        ran = self.check_path.pipelined
        decided = (self.sync.is_revoked(token), await self.aio.is_revoked(token))
        if self.entry.pipelined:  # the async check ran over the pipelined connection, once
            assert self.check_path.pipelined == ran + 1, f"{self.entry}: not the pipelined check"
        return decided

    async def rotations(
        self,
        token: TokenData,
        record: bytes | None = None,
        setup: Callable[[str], object] | None = None,
    ) -> list[tuple[str, RotationReply]]:
        """rotate_refresh.lua on ``token`` through the sync store, then the async one: each on a
        family of its own, prepared by ``setup(family)`` and seeded with ``record`` (the first
        rotation rewrites its family's state). Returns each (family, reply)."""
        replies: list[tuple[str, RotationReply]] = []
        for rotate in (self._rotate_sync, self._rotate_async):
            family = _family(self.sync)
            if setup is not None:
                setup(family)
            _seed(self.sync, family, record)
            replies.append((family, await rotate(token.model_copy(update={"family": family}))))
        return replies

    async def _rotate_sync(self, token: TokenData) -> RotationReply:
        return self.sync.rotate_refresh(token, **_rotation_args())

    async def _rotate_async(self, token: TokenData) -> RotationReply:
        return await self.aio.rotate_refresh(token, **_rotation_args())


@pytest.fixture
async def parity_store(backend_entry: Backend, check_path: CheckPath) -> AsyncIterator[Parity]:
    """Both stores on each backend of the table, with a grace window for retries."""
    with private_settings(refresh_reuse_grace_seconds=GRACE, **backend_entry.timeouts) as s:
        server = fakeredis.FakeServer() if backend_entry.name == "fakeredis" else None
        sync = backend_entry.sync_store(s, server=server)
        aio = backend_entry.async_store(s, server=server)
        check_path.watch(aio)
        yield Parity(backend_entry, sync, aio, check_path)
        sync.close()
        await aio.aclose()
        check_path.assert_kept_to(backend_entry)


def _family(store: SyncRedisTokenRevocationStore) -> str:
    return family_id_prefix(bucket_of_user(USER, store.settings.session_buckets)) + uuid.uuid4().hex


def _token(family: str, iat_us: int) -> TokenData:
    return TokenData(
        sub=USER,
        jti=PRESENTED,
        typ="refresh",
        iat=iat_us / 1e6,
        exp=2**40,
        tenant=TENANT,
        family=family,
    )


def _session_key(store: SyncRedisTokenRevocationStore) -> str:
    return store.keys.session_bucket(TENANT, bucket_of_user(USER, store.settings.session_buckets))


def _seed(store: SyncRedisTokenRevocationStore, family: str, record: bytes | None = None) -> None:
    """A session of ``family`` whose current refresh jti is the presented one (or ``record``)."""
    if record is None:
        record = encode_record(
            user_id=USER, client_id="web", created_us=1, expires=2**33, current_jti=PRESENTED
        ).encode()
    store.client.hset(_session_key(store), family, record)


def _rotation_args() -> dict[str, Any]:
    return {
        "refresh_jti": "rt-next",
        "access_jti": "at-next",
        "issued_at_us": now_us(),
        "expires_at": int(time.time()) + 3600,
        "reuse_mark": encode_mark(now_us(), "reuse"),
    }


# --- watermarks: read for their time ------------------------------------------------------


@pytest.mark.parametrize("value", VALUES, ids=_ids)
@pytest.mark.parametrize("level", ["user", "tenant"])
async def test_watermark_decides_alike_in_check_and_rotation(
    parity_store: Parity, level: str, value: bytes
) -> None:
    """The check and rotate_refresh.lua revoke exactly the tokens rules.decide revokes."""
    store = parity_store.sync
    keys = store.keys
    key = keys.user_watermark(TENANT, USER) if level == "user" else keys.tenant_watermark(TENANT)
    store.client.set(key, value, ex=600)
    for iat_us in IATS_US:
        token = _token(_family(store), iat_us)
        raw: list[bytes | None] = [None, None, value, None]
        if level == "tenant":
            raw = [None, None, None, value]
        python = decide(token.iat, raw)
        assert await parity_store.is_revoked(token) == (python, python), iat_us
        for _, reply in await parity_store.rotations(token):
            assert reply.outcome == ("revoked" if python.revoked else "rotated"), iat_us
            if python.revoked:
                assert reply.status == python


@pytest.mark.parametrize("value", VALUES, ids=_ids)
async def test_set_watermark_keeps_the_old_value_exactly_when_python_reads_it_later(
    parity_store: Parity, value: bytes
) -> None:
    """set_watermark.lua keeps a stored watermark iff decode_mark reads it at or after the new
    mark's time; what it returns reads as the store reports it (sync and async store)."""
    store = parity_store.sync
    script = store.client.register_script(load_script("set_watermark"))
    key = store.keys.user_watermark(TENANT, "wm-" + uuid.uuid4().hex)
    old_at = decode_mark(value)[0]
    for new_at in [0, 1, 11, 12, 13, 1000, T_US, MAX_TIME - 1, MAX_TIME, MAX_TIME + 1]:
        new = encode_mark(new_at, "new").encode()
        store.client.set(key, value, ex=600)
        reply = script(keys=[key], args=[new, 600])
        expected = value if old_at >= decode_mark(new)[0] else new
        assert (reply, store.client.get(key)) == (expected, expected), new_at
    # Through each store: the time it reports is the stored value's, read by decode_mark.
    user = key.rpartition(":")[2]
    for flavour in ("sync", "async"):
        store.client.set(key, value, ex=600)
        before = now_us()
        if flavour == "sync":
            reported = store.revoke_user_tokens(user, tenant_id=TENANT)
        else:
            reported = await parity_store.aio.revoke_user_tokens(user, tenant_id=TENANT)
        after = store.client.get(key)
        assert after is not None, flavour
        assert reported == decode_mark(after)[0] / 1e6, flavour
        assert (after == value) == (old_at >= before), flavour
        # The check reads the watermark left behind as rules.decide does.
        token = _token(_family(store), T_US).model_copy(update={"sub": user})
        python = decide(token.iat, [None, None, after, None])
        assert await parity_store.is_revoked(token) == (python, python), flavour


@pytest.mark.parametrize("value", VALUES, ids=_ids)
async def test_a_cut_off_keeps_the_old_global_watermark_exactly_when_python_reads_it_later(
    parity_store: Parity, value: bytes
) -> None:
    """data_loss.lua (here through ``recover --cutoff``, the path a detected loss shares) keeps
    a stored global watermark iff decode_mark reads it at or after the new cut-off's time, else
    writes the cut-off; then the check decides on what is left as rules.decide does (sync and
    async store)."""
    store = parity_store.sync
    key = store.keys.global_watermark
    old_at = decode_mark(value)[0]
    for flavour in ("sync", "async"):
        store.client.set(key, value, ex=600)
        before = now_us()
        if flavour == "sync":
            store.recover(cutoff=True, actor="parity")
        else:
            await parity_store.aio.recover(cutoff=True, actor="parity")
        after_us = now_us()
        left = store.client.get(key)
        assert left is not None, flavour
        if old_at >= after_us:
            assert left == value, flavour
        else:
            assert old_at < before, "a value between the two reads: the test cannot tell"
            assert before <= decode_mark(left)[0] <= after_us, (flavour, left)
        token = _token(_family(store), T_US)
        python = decide(token.iat, [None, None, None, None, left])
        assert await parity_store.is_revoked(token) == (python, python), flavour


@pytest.mark.redis
async def test_pipelined_check_decides_as_python() -> None:
    """The production check (the async store's own pipelined connection to check.lua) returns
    every stored value byte for byte: it decides what rules.decide decides."""
    with private_settings() as s:
        store = RedisTokenRevocationStore(settings=s)
        assert store._pipelined is not None  # the path production runs, not an injected client
        sync = redis.Redis.from_url(REDIS_URL)
        try:
            for value in VALUES:
                family = "f-" + uuid.uuid4().hex
                sync.set(store.keys.user_watermark(TENANT, USER), value, ex=600)
                for iat_us in IATS_US:
                    token = _token(family, iat_us)
                    expected = decide(token.iat, [None, None, value, None])
                    assert await store.is_revoked(token) == expected, (value, iat_us)
                sync.hset(store.keys.family_revoked(TENANT, family), family, value)
                expected = decide(T_US / 1e6, [None, value, None, value])
                assert await store.is_revoked(_token(family, T_US)) == expected, value
        finally:
            sync.close()
            await store.aclose()


# --- jti and family marks: revoked by their presence --------------------------------------


@pytest.mark.parametrize("value", VALUES, ids=_ids)
@pytest.mark.parametrize("rule", ["jti", "family"])
async def test_mark_revokes_by_presence_in_check_and_rotation(
    parity_store: Parity, rule: str, value: bytes
) -> None:
    """Any stored jti or family mark revokes in the check and in rotate_refresh.lua, and both
    report the time and reason decode_mark reads."""
    store = parity_store.sync
    family = _family(store)
    token = _token(family, T_US)

    def mark_family(family: str) -> None:
        store.client.hset(store.keys.family_revoked(TENANT, family), family, value)

    if rule == "jti":
        store.client.set(store.keys.jti(PRESENTED + family), value, ex=600)
        token = token.model_copy(update={"jti": PRESENTED + family})
    else:
        mark_family(family)
    raw: list[bytes | None] = [value, None, None, None]
    if rule == "family":
        raw = [None, value, None, None]
    python = decide(token.iat, raw)
    at, reason = decode_mark(value)
    assert (python.revoked, python.rule, python.reason) == (True, rule, reason)
    assert python.revoked_at == (at / 1e6 if at else None)
    assert await parity_store.is_revoked(token) == (python, python)
    setup = mark_family if rule == "family" else None
    for _, reply in await parity_store.rotations(token, setup=setup):
        assert (reply.outcome, reply.status) == ("revoked", python)


# --- session records: read by position ----------------------------------------------------


def _record(**fields: bytes) -> bytes:
    """A record with these raw fields (names of RECORD_FIELDS), the others as a fresh session's."""
    base = {
        "user": USER.encode(),
        "client": b"web",
        "created": b"1000",
        "expires": b"2000",
        "current": b"rt-other",
    }
    base.update(fields)
    return b"|".join(base.get(name, b"") for name in RECORD_FIELDS)


def _records(now: int) -> list[bytes]:
    recent, old = str(now - 1_000_000).encode(), str(now - 3600 * 1_000_000).encode()
    retry = {"previous": PRESENTED.encode(), "successor": b"at-prev", "issued": b"1700"}
    return [
        _record(current=PRESENTED.encode()),
        _record(current=PRESENTED.encode(), created=b"12abc", expires=b"-5"),
        _record(current=PRESENTED.encode(), scopes=b"a b") + b"|x|y",  # extra parts
        b"alice|web|1000|2000|" + PRESENTED.encode(),  # short
        b"alice|web|1000|2000",  # shorter still: the current jti is empty
        _record(user=b"bob", current=PRESENTED.encode()),
        _record(user=b"\xff", current=PRESENTED.encode()),
        b"",
        b"|",
        b"||||" + PRESENTED.encode(),
        _record(rotated=recent, **retry),
        _record(rotated=b"00" + recent, **retry),
        _record(rotated=b"9" * 400, **retry),  # reads MAX_TIME: a rotation in the future
        _record(rotated=old, **retry),
        _record(rotated=b"", **retry),
        _record(rotated=b"12abc", **retry),
        _record(rotated=b"-5", **retry),
        _record(rotated=b" " + recent, **retry),
        _record(rotated=recent, **{**retry, "issued": b"00012"}),
        _record(rotated=recent, **{**retry, "issued": b"12abc"}),
        _record(rotated=recent, **{**retry, "issued": b""}),
        _record(rotated=recent, **{**retry, "successor": b""}),
        _record(rotated=recent, **{**retry, "previous": b"rt-else"}),
    ]


def _expected_rotation(record: bytes, now: int) -> str:
    """What rotate_refresh.lua must decide on ``record``, from the fields as Python splits them
    (keys.decode_record's split, still escaped) and their times by keys.read_time."""
    f = record.split(b"|")
    f += [b""] * (len(RECORD_FIELDS) - len(f))
    user, current, previous, rotated, successor, issued = (f[i] for i in (0, 4, 5, 6, 7, 8))
    if user != escape_part(USER).encode():
        return "unknown"
    if current == PRESENTED.encode():
        return "rotated"
    rotated_us = read_time(rotated)
    if (
        previous == PRESENTED.encode()
        and rotated_us is not None
        and successor
        and read_time(issued) is not None
        and now - rotated_us <= GRACE * 1_000_000
    ):
        return "grace"
    return "reuse"


@pytest.mark.parametrize("index", range(len(_records(0))))
async def test_record_is_read_alike_by_rotation_and_python(
    parity_store: Parity, index: int
) -> None:
    """rotate_refresh.lua splits a record and reads its times as the Python decoders do: the
    same outcome, the fields it keeps are those decode_record reads, and get_session never
    raises on it (sync and async store)."""
    store = parity_store.sync
    now = now_us()
    record = _records(now)[index]
    family = _family(store)
    _seed(store, family, record)
    data = decode_record(record)
    fields = record.split(b"|")
    padded = fields + [b""] * (len(RECORD_FIELDS) - len(fields))
    sessions = [
        store.get_session(family, tenant_id=TENANT),
        await parity_store.aio.get_session(family, tenant_id=TENANT),
    ]
    for session in sessions:
        if record:
            assert session is not None
            assert session.created == (read_time(padded[2]) or 0) / 1e6
            assert session.expires == (read_time(padded[3]) or 0)
            assert session.user_id == data["user"]
        else:
            assert session is None  # an empty value is no record
    head = record_head(record)
    if head is not None:
        assert head[:RECORD_HEAD] == fields[:RECORD_HEAD]
    else:
        assert len(fields) < RECORD_HEAD

    for rotated, reply in await parity_store.rotations(_token(family, T_US), record):
        assert reply.outcome == _expected_rotation(record, now)
        # Reuse revokes the family, in the check too; no other outcome revokes anything.
        checked = await parity_store.is_revoked(_token(rotated, T_US))
        assert [status.rule for status in checked] == [
            "family" if reply.outcome == "reuse" else None
        ] * 2
        if reply.outcome == "grace":
            assert reply.issued_at_us == read_time(record.split(b"|")[8])
            assert (reply.access_jti, reply.refresh_jti) == (data["successor"], data["current"])
        if reply.outcome == "rotated":
            written = store.client.hget(_session_key(store), rotated)
            assert written is not None
            assert written.count(b"|") == len(RECORD_FIELDS) - 1
            new = decode_record(written)
            assert (new["current"], new["previous"], new["successor"]) == (
                "rt-next",
                PRESENTED,
                "at-next",
            )
            kept = ("user", "client", "created", "scopes")
            assert {name: new[name] for name in kept} == {name: data[name] for name in kept}


# --- bulk jobs: the chunk script selects what tasks.buckets.Selection selects ---------------

#: Clients of the records a chunk reads: the job's, others, and ones a pattern could confuse.
CHUNK_CLIENTS = [b"web", b"w.b", b"wxb", b"", b"web2", b"(w)", b"%28w%29", b"we"]
#: Family ids needing every kind of feed escape (comma, percent, space, non-ASCII, reserved).
ODD_IDS = ["f,1", "f%2C", "f 1", "f\u00e9", "f~(x)*;!", "f/x?", "f:{t}", "f\u2603|"]


def _chunk_records(now: int) -> list[bytes]:
    """Session records for a chunk: the rotation cases, every stored time as the creation time,
    and every client and user."""
    records = list(_records(now))
    records += [_record(created=value) for value in VALUES]
    records += [_record(client=client) for client in CHUNK_CLIENTS]
    records += [_record(client=client, created=b"12") for client in CHUNK_CLIENTS]
    records += [_record(user=b"bob"), _record(user=b"alic"), _record(user=b"alice2")]
    records += [_record(created=str(t).encode()) for t in (11, 12, 13, 999, 1000, 1001)]
    return records


#: (job fields, the user a user job names): the selections a chunk can make.
CHUNK_JOBS: list[tuple[dict[str, Any], str | None]] = [
    ({"kind": "tenant", "client_id": "web"}, None),
    ({"kind": "tenant", "client_id": "w.b"}, None),
    ({"kind": "tenant", "client_id": "(w)"}, None),
    ({"kind": "tenant", "issued_after": 12e-6, "issued_before": 1000e-6}, None),
    ({"kind": "user", "user_id": USER, "client_id": "web"}, USER),
    ({"kind": "user", "user_id": USER, "issued_after": 1e-6}, USER),
    ({"kind": "tenant"}, None),
]


@pytest.mark.parametrize("index", range(len(CHUNK_JOBS)))
async def test_chunk_script_selects_as_python(parity_store: Parity, index: int) -> None:
    """chunk_buckets.lua marks and deletes exactly the records Selection selects (a record by
    keys.record_head, its created time by keys.read_time, the client and user compared as
    stored), and names each in the feed as keys.escape_feed_id escapes it."""
    from revoker import keys as k
    from revoker.job_record import JobRecord
    from revoker.tasks.buckets import Selection, revoke_server_side

    store = parity_store.sync
    fields, user = CHUNK_JOBS[index]
    tenant = "chunk-" + uuid.uuid4().hex[:8]
    record = JobRecord(id="job-" + uuid.uuid4().hex[:8], tenant_id=tenant, created_at=0, **fields)
    select = Selection(record, T_US, user)
    bucket = bucket_of_user(USER, store.settings.session_buckets)
    key = store.keys.session_bucket(tenant, bucket)
    records = _chunk_records(now_us())
    ids = [f"{family_id_prefix(bucket)}{n}" for n in range(len(records))]
    ids[: len(ODD_IDS)] = [family_id_prefix(bucket) + odd for odd in ODD_IDS]
    mapping = dict(zip(ids, records, strict=True))
    store.client.hset(key, mapping=mapping)  # type: ignore[arg-type]
    flat = [x for fid, raw in mapping.items() for x in (fid.encode(), raw)]
    expected = {fid.decode() for fid in select(flat)}
    assert expected, "each selection should cover some record"
    assert len(expected) < len(records), "and leave some"
    feed_before = len(store.client.xrange(store.keys.feed))

    mark = encode_mark(now_us(), "parity")
    with store.bulk_exchange() as bulk:
        done = revoke_server_side(bulk, store, record, 0, [bucket], select, mark)
    assert done.revoked == len(expected)
    left = {f.decode() for f in store.client.hkeys(key)}
    assert left == set(ids) - expected
    marks_key = store.keys.revoked_bucket(tenant, bucket)
    marked = {f.decode(): v for f, v in store.client.hgetall(marks_key).items()}
    assert marked == dict.fromkeys(expected, mark.encode())
    entries = [fields for _, fields in store.client.xrange(store.keys.feed)][feed_before:]
    assert entries, "the marks' feed entry"
    named = [i for e in entries for i in e[b"i"].decode().split(",")]
    assert sorted(named) == sorted(k.escape_feed_id(fid) for fid in expected)
    assert {i for e in entries for i in k.decode_feed_entry(e).ids} == expected


# --- the integrity sequence: read by keys.read_seq, bumped by _sequence.lua --------------------

#: Stored ``seq`` values: valid, edge and corrupt (scripts/_sequence.lua, keys.read_seq).
SEQ_VALUES: list[bytes] = [
    b"0",
    b"1",
    b"4",
    b"5",
    b"6",
    b"00012",
    b"0" * 30 + b"12",
    b"000",
    str(10**15 - 1).encode(),
    str(MAX_TIME - 1).encode(),
    str(MAX_TIME).encode(),
    str(MAX_TIME + 1).encode(),
    b"9" * 16,
    b"9" * 17,
    b"9" * 5000,
    b"",
    b"abc",
    b"12abc",
    b"-5",
    b"+12",
    b" 12",
    b"12 ",
    b"1.5",
    b"1e3",
    b"0x10",
    b"12\x00",
    b"\xff",
    "²".encode(),  # a Unicode digit: str.isdigit() says yes, int() raises
    "١٢".encode(),  # Arabic-Indic digits
    "\uff11\uff12".encode(),  # full-width digits
]


def _set_identity(store: SyncRedisTokenRevocationStore, seq: bytes) -> None:
    store.client.delete(store.keys.integrity)
    store.client.hset(store.keys.integrity, mapping={"epoch": "e-parity", "seq": seq})


@pytest.mark.parametrize("value", SEQ_VALUES, ids=_ids)
async def test_sequence_is_read_alike_by_python_the_check_and_every_bump(
    parity_store: Parity, value: bytes
) -> None:
    """A stored ``seq`` reads as keys.read_seq reads it (a corrupt one as 0) in the check (sync
    and async store: it never errors, so a revoked token is never admitted by the failure
    policy), in health, and in every script that bumps it: sequenced.lua (a jti),
    set_watermark.lua (a user), data_loss.lua (a recovery), each writing read + 1."""
    from revoker.health import integrity_report
    from revoker.keys import decode_seq, read_seq

    store, aio = parity_store.sync, parity_store.aio
    read = decode_seq(value)
    assert read == (read_seq(value) or 0)
    _set_identity(store, value)
    store.client.set(store.keys.jti(PRESENTED), encode_mark(T_US, "parity"), ex=600)
    token = _token(_family(store), T_US)
    decided = await parity_store.is_revoked(token)
    assert [status.rule for status in decided] == ["jti", "jti"], decided
    assert (store.core.watch.seq, aio.core.watch.seq) == (read, read)
    stored = store.integrity()  # non-UTF-8 bytes read as text, never an error
    assert stored["seq"] == value.decode(errors="replace")
    report = integrity_report(stored, seen_epoch="e-parity", seen_seq=0, require_init=False)
    assert report["seq"] == read
    assert report["healthy"] is (read_seq(value) is not None), report

    bumps: list[tuple[str, Callable[[], Any]]] = [
        ("sequenced.lua", lambda: store.revoke_token("jti-" + uuid.uuid4().hex)),
        ("set_watermark.lua", lambda: store.revoke_user_tokens(USER, tenant_id=TENANT)),
        ("data_loss.lua", lambda: store.recover(cutoff=False, actor="parity")),
        # The plain bump of a cluster's writes and of an unfiltered chunk (tasks.buckets).
        ("sequence_bump.lua", lambda: store.execute(Plan(store.core.sequence_bump(), list))),
    ]
    for script, bump in bumps:
        _set_identity(store, value)
        bump()
        after = store.client.hget(store.keys.integrity, "seq")
        assert after == str(read + 1).encode(), (script, after)
    _set_identity(store, value)
    await aio.revoke_token("jti-" + uuid.uuid4().hex)
    assert store.client.hget(store.keys.integrity, "seq") == str(read + 1).encode()


@pytest.mark.parametrize("value", SEQ_VALUES, ids=_ids)
async def test_a_sequence_read_lower_than_seen_is_a_rollback(
    parity_store: Parity, value: bytes
) -> None:
    """A store that saw seq 5 takes a stored ``seq`` for a rollback exactly when keys.decode_seq
    reads it below 5 (a corrupt one reads 0: always a rollback), and handles it by the policy
    (here the cut-off) instead of failing the check."""
    from revoker.keys import decode_seq

    store = parity_store.sync
    _set_identity(store, b"5")
    token = _token(_family(store), T_US)
    assert not store.is_revoked(token)
    _set_identity(store, value)
    rule = store.is_revoked(token).rule
    state = store.client.hget(store.keys.integrity, "state")
    if decode_seq(value) < 5:
        assert (state, rule) == (b"cutoff", "global"), value
    else:
        assert (state, rule) == (None, None), value


@pytest.mark.parametrize("index", [i for i, (f, _) in enumerate(CHUNK_JOBS) if f.get("client_id")])
async def test_index_script_selects_as_python(parity_store: Parity, index: int) -> None:
    """chunk_index.lua, walking an index that names every record of the bucket (whatever its
    client, with its stored created time as the entry), marks and deletes exactly the records
    Selection selects: the entry only proposes, the record decides by the same rules."""
    from revoker import keys as k
    from revoker.job_record import JobRecord
    from revoker.tasks.buckets import Selection, revoke_server_side

    store = parity_store.sync
    fields, user = CHUNK_JOBS[index]
    tenant = "chunk-" + uuid.uuid4().hex[:8]
    record = JobRecord(id="job-" + uuid.uuid4().hex[:8], tenant_id=tenant, created_at=0, **fields)
    select = Selection(record, T_US, user)
    bucket = bucket_of_user(USER, store.settings.session_buckets)
    key = store.keys.session_bucket(tenant, bucket)
    records = _chunk_records(now_us())
    ids = [f"{family_id_prefix(bucket)}{n}" for n in range(len(records))]
    ids[: len(ODD_IDS)] = [family_id_prefix(bucket) + odd for odd in ODD_IDS]
    mapping = dict(zip(ids, records, strict=True))
    store.client.hset(key, mapping=mapping)  # type: ignore[arg-type]
    index_key = store.keys.client_index(tenant, fields["client_id"], bucket)
    entries = {}
    for fid, raw in mapping.items():
        head = k.record_head(raw)
        entries[fid] = head[k.RECORD_CREATED] if head is not None else b"x"
    store.client.hset(index_key, mapping=entries)  # type: ignore[arg-type]
    flat = [x for fid, raw in mapping.items() for x in (fid.encode(), raw)]
    expected = {fid.decode() for fid in select(flat)}
    assert expected
    assert len(expected) < len(records)

    mark = encode_mark(now_us(), "parity")
    with store.bulk_exchange() as bulk:
        done = revoke_server_side(
            bulk, store, record, 0, [bucket], select, mark, index_client=fields["client_id"]
        )
    assert done.revoked == len(expected)
    assert {f.decode() for f in store.client.hkeys(key)} == set(ids) - expected
    marks_key = store.keys.revoked_bucket(tenant, bucket)
    marked = {f.decode(): v for f, v in store.client.hgetall(marks_key).items()}
    assert marked == dict.fromkeys(expected, mark.encode())
    assert {f.decode() for f in store.client.hkeys(index_key)} == set(ids) - expected
