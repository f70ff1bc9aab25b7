"""The change feed: every write of revocation state appends its entry in the same atomic step.

A table of every write path and the entry it must append (kind, tenant, ids, v, x, s), over the
backend table; atomicity (a failing write appends nothing, a cut chunk never leaves marks
without their entry); the sequence in entries is the integrity sequence; no feed on a cluster.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from conftest import WITH_CLUSTER
from revoker import exceptions as exc
from revoker import keys as k
from revoker.bulk import BulkRevocation
from revoker.integrity import Loss, read_observation
from revoker.job_record import REUSE_REASON, JobRecord
from revoker.refresh import rotate_refresh_token_sync
from revoker.rules import now_us
from revoker.sessions import start_session_sync
from revoker.store import SyncRedisTokenRevocationStore
from revoker.tasks import family_reuse
from revoker.tasks.buckets import job_mark, job_selection, revoke_buckets
from revoker.tokens import decode_token

TENANT = "acme:eu"  # a colon: the entry's tenant is escaped as in keys


def entries(store: SyncRedisTokenRevocationStore) -> list[tuple[str, k.FeedEntry]]:
    """Every entry of the feed, oldest first, decoded by keys.decode_feed_entry."""
    raw = store.client.xrange(store.keys.feed)
    return [(i.decode(), k.decode_feed_entry(fields)) for i, fields in raw]


def seq(store: SyncRedisTokenRevocationStore) -> int:
    """The integrity sequence as stored."""
    return int(store.client.hget(store.keys.integrity, "seq") or 0)


@dataclass
class Expect:
    """What a write path's entry must say; ``v``/``x`` None: checked by the path's own rule."""

    kind: str
    tenant_id: str | None
    ids: tuple[str, ...]
    #: (low, high) bounds of v in µs, or the exact value.
    v: tuple[int, int] | int
    x: Callable[[k.FeedEntry], int] | None
    #: True: s is the integrity sequence after the write; False: empty (bumped after).
    sequenced: bool = True


def _lifetimes(store: SyncRedisTokenRevocationStore) -> k.Lifetimes:
    return store.core.lifetimes


def _revoke_token(store: SyncRedisTokenRevocationStore) -> list[Expect]:
    exp = time.time() + 120
    t0 = now_us()
    store.revoke_token("tok,1", expires_at=exp, reason="r")
    lt = _lifetimes(store)
    return [
        Expect(
            "jti",
            None,
            ("tok,1",),
            (t0, now_us()),
            lambda e: lt.feed_expiry("jti", e.value_us / 1e6, exp),
        )
    ]


def _revoke_token_without_exp(store: SyncRedisTokenRevocationStore) -> list[Expect]:
    t0 = now_us()
    store.revoke_token("tok-2")
    lt = _lifetimes(store)
    return [
        Expect(
            "jti",
            None,
            ("tok-2",),
            (t0, now_us()),
            lambda e: lt.feed_expiry("jti", e.value_us / 1e6),
        )
    ]


def _revoke_family(store: SyncRedisTokenRevocationStore) -> list[Expect]:
    t0 = now_us()
    store.revoke_family("1f.fam", tenant_id=TENANT)
    lt = _lifetimes(store)
    return [
        Expect(
            "family",
            TENANT,
            ("1f.fam",),
            (t0, now_us()),
            lambda e: math.ceil(e.value_us / 1e6) + lt.family_ttl,
        )
    ]


def _revoke_family_without_tenant(store: SyncRedisTokenRevocationStore) -> list[Expect]:
    t0 = now_us()
    store.revoke_family("foreign id", tenant_id=None)
    lt = _lifetimes(store)
    return [
        Expect(
            "family",
            None,
            ("foreign id",),
            (t0, now_us()),
            lambda e: math.ceil(e.value_us / 1e6) + lt.family_ttl,
        )
    ]


def _watermark_x(store: SyncRedisTokenRevocationStore) -> Callable[[k.FeedEntry], int]:
    lt = _lifetimes(store)
    return lambda e: math.ceil(e.value_us / 1e6) + lt.watermark_ttl


def _revoke_user(store: SyncRedisTokenRevocationStore) -> list[Expect]:
    t0 = now_us()
    store.revoke_user_tokens("us,er", tenant_id=TENANT)
    return [Expect("user", TENANT, ("us,er",), (t0, now_us()), _watermark_x(store))]


def _revoke_user_without_tenant(store: SyncRedisTokenRevocationStore) -> list[Expect]:
    t0 = now_us()
    store.revoke_user_tokens("bob", tenant_id=None)
    return [Expect("user", None, ("bob",), (t0, now_us()), _watermark_x(store))]


def _revoke_tenant(store: SyncRedisTokenRevocationStore) -> list[Expect]:
    t0 = now_us()
    store.revoke_tenant_tokens(TENANT)
    return [Expect("tenant", TENANT, (), (t0, now_us()), _watermark_x(store))]


def _job_watermark(store: SyncRedisTokenRevocationStore) -> list[Expect]:
    """An enqueued unfiltered job's watermark (jobs.enqueue's first write)."""
    request = BulkRevocation(
        scope="tenant", tenant_id=TENANT, user_id=None, reason="job", actor="t", client_id=None,
        issued_after=None, issued_before=None, dry_run=False,
    )  # fmt: skip
    t0 = now_us()
    store.execute(store.jobs.plan_scope_watermark(request))
    return [Expect("tenant", TENANT, (), (t0, now_us()), _watermark_x(store))]


def _rotation_reuse(store: SyncRedisTokenRevocationStore) -> list[Expect]:
    pair = start_session_sync("alice", tenant_id=TENANT, store=store)
    rotate_refresh_token_sync(pair.refresh_token, store=store)
    t0 = now_us()
    with pytest.raises(exc.RefreshTokenReused):
        rotate_refresh_token_sync(pair.refresh_token, store=store)
    lt = _lifetimes(store)
    return [
        Expect(
            "family",
            TENANT,
            (pair.family_id,),
            (t0, now_us()),
            lambda e: math.ceil(e.value_us / 1e6) + lt.family_ttl,
        )
    ]


def _job_chunk(store: SyncRedisTokenRevocationStore) -> list[Expect]:
    families = [
        start_session_sync(f"u{i}", tenant_id=TENANT, store=store).family_id for i in range(6)
    ]
    record = JobRecord(id="job-1", kind="tenant", tenant_id=TENANT, created_at=time.time() + 1)
    buckets = sorted({k.family_bucket(f) or 0 for f in families})
    mark = job_mark(record)
    revoke_buckets(store, buckets, tenant_id=TENANT, select=job_selection(record), mark=mark)
    lt = _lifetimes(store)
    at = k.decode_mark(mark)[0]
    entry = Expect(
        "family",
        TENANT,
        tuple(families),
        at,
        lambda e: math.ceil(at / 1e6) + lt.family_ttl,
        sequenced=False,
    )
    return [entry, entry]  # before its first mark and after its last


def _reuse_escalation(store: SyncRedisTokenRevocationStore) -> list[Expect]:
    """The family-reuse follow-up with REVOKER_REUSE_ESCALATION=user: the user's watermark,
    then the chunk's entry (twice: around its marks) naming every session of the user."""
    pairs = [start_session_sync("mallory", tenant_id=TENANT, store=store) for _ in range(3)]
    record = JobRecord(
        id="reuse-1", kind="family_reuse", tenant_id=TENANT, user_id="mallory",
        family_id=pairs[0].family_id, reason=REUSE_REASON, created_at=time.time(),
    )  # fmt: skip
    t0 = now_us()
    family_reuse._escalate(store, record)
    t1 = now_us()
    lt = _lifetimes(store)
    ids = tuple(sorted(p.family_id for p in pairs))
    chunk = Expect(
        "family",
        TENANT,
        ids,
        (t0, t1),
        lambda e: math.ceil(e.value_us / 1e6) + lt.family_ttl,
        sequenced=False,
    )
    return [Expect("user", TENANT, ("mallory",), (t0, t1), _watermark_x(store)), chunk, chunk]


def _recover_with_cutoff(store: SyncRedisTokenRevocationStore) -> list[Expect]:
    t0 = now_us()
    store.recover(cutoff=True, actor="ops")
    return [Expect("epoch", None, (), (t0, now_us()), lambda _e: 0)]


def _recover_without_cutoff(store: SyncRedisTokenRevocationStore) -> list[Expect]:
    store.recover(cutoff=False)
    return [Expect("epoch", None, (), 0, lambda _e: 0)]


def _data_loss(store: SyncRedisTokenRevocationStore) -> list[Expect]:
    """A check that finds the identity gone (a wipe) handles the loss: an epoch entry."""
    store.revoke_token("seen")
    token = decode_token(_token(store), settings=store.settings)
    store.is_revoked(token)  # the store has now seen the epoch
    store.client.delete(store.keys.integrity)
    t0 = now_us()
    store.is_revoked(token)  # detects the loss; REVOKER_ON_DATA_LOSS=cutoff by default
    return [
        Expect("jti", None, ("seen",), (0, t0), None),
        Expect("epoch", None, (), (t0, now_us()), lambda _e: 0),
    ]


def _token(store: SyncRedisTokenRevocationStore) -> str:
    from revoker.tokens import create_access_token

    return create_access_token("carol", tenant_id=TENANT, settings=store.settings)[0]


def _init(store: SyncRedisTokenRevocationStore) -> list[Expect]:
    """`revoker init` creating the epoch appends an epoch entry (init bumps no sequence)."""
    created, _ = store.init()
    assert created
    store.init()  # a second init creates nothing and appends nothing
    return [Expect("epoch", None, (), 0, lambda _e: 0, sequenced=False)]


PATHS: dict[str, Callable[[SyncRedisTokenRevocationStore], list[Expect]]] = {
    "revoke_token": _revoke_token,
    "revoke_token without exp": _revoke_token_without_exp,
    "revoke_family": _revoke_family,
    "revoke_family without tenant": _revoke_family_without_tenant,
    "revoke_user_tokens": _revoke_user,
    "revoke_user_tokens without tenant": _revoke_user_without_tenant,
    "revoke_tenant_tokens": _revoke_tenant,
    "job watermark": _job_watermark,
    "rotation reuse": _rotation_reuse,
    "job chunk": _job_chunk,
    "reuse escalation": _reuse_escalation,
    "recover --cutoff": _recover_with_cutoff,
    "recover": _recover_without_cutoff,
    "data loss": _data_loss,
    "init": _init,
}


@pytest.fixture(autouse=True)
def _no_follow_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reuse's follow-up job would be published to a broker: not what these tests are about."""
    monkeypatch.setattr("revoker.refresh._enqueue_follow_up", lambda *_a: None)


@pytest.mark.parametrize("path", list(PATHS))
def test_every_write_path_appends_its_entry(
    sync_store: SyncRedisTokenRevocationStore, path: str
) -> None:
    """Each write path appends exactly the entries of the table (kind, tenant, ids, v, x, s),
    and an entry's s is the integrity sequence right after its write."""
    before = {i for i, _ in entries(sync_store)}
    expected = PATHS[path](sync_store)
    new = [e for i, e in entries(sync_store) if i not in before]
    # Sessions and rotations append nothing: only the table's entries are new.
    assert [e.kind for e in new] == [x.kind for x in expected], new
    for entry, want in zip(new, expected, strict=True):
        assert entry.tenant_id == want.tenant_id
        assert tuple(sorted(entry.ids)) == tuple(sorted(want.ids))
        if isinstance(want.v, int):
            assert entry.value_us == want.v
        else:
            assert want.v[0] <= entry.value_us <= want.v[1]
        if want.x is not None:
            assert entry.expires == want.x(entry)
        if want.sequenced:
            assert entry.seq is not None
        else:
            assert entry.seq is None
    if new[-1].seq is not None:
        assert new[-1].seq == seq(sync_store)
    else:  # a chunk's entry comes before its marks and their bump
        assert seq(sync_store) > max([e.seq for e in new if e.seq is not None], default=-1)


def test_sequence_in_entries_is_the_integrity_sequence(
    sync_store: SyncRedisTokenRevocationStore,
) -> None:
    """Over every write path in turn, the entries' sequences rise strictly, each one the
    sequence the integrity hash held right after its write."""
    for name, path in PATHS.items():
        if name in ("init", "data loss"):
            continue  # they start a new identity (covered by the table)
        count = len(entries(sync_store))
        path(sync_store)
        new = [e for _, e in entries(sync_store)[count:]]
        if new and new[-1].seq is not None:
            assert new[-1].seq == seq(sync_store), name
    every = [e.seq for _, e in entries(sync_store) if e.seq is not None]
    assert every == sorted(set(every))
    assert every[-1] == seq(sync_store)


def test_a_watermark_left_in_place_appends_nothing(
    sync_store: SyncRedisTokenRevocationStore,
) -> None:
    """A watermark already later than the new one is kept: no write, no bump, no entry."""
    key = sync_store.keys.user_watermark(TENANT, "bob")
    sync_store.client.set(key, k.encode_mark(now_us() + 10**9, "later"))
    sync_store.revoke_user_tokens("bob", tenant_id=TENANT)
    assert entries(sync_store) == []
    assert seq(sync_store) == 0


# --- atomicity ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "spoil"),
    [
        ("revoke_token", lambda s: s.client.hset(s.keys.jti("bad"), "x", "y")),
        ("revoke_family", lambda s: s.client.set(s.keys.family_revoked(TENANT, "bad"), "x")),
        (
            "revoke_user_tokens",
            lambda s: s.client.hset(s.keys.user_watermark(TENANT, "bad"), "x", "y"),
        ),
    ],
)
def test_a_write_that_fails_appends_no_entry(
    sync_store: SyncRedisTokenRevocationStore, path: str, spoil: Callable[[Any], Any]
) -> None:
    """A write that fails in Redis (its key holds another type) raises, and neither bumps the
    sequence nor appends an entry: the feed never says what Redis does not hold."""
    spoil(sync_store)
    write = {
        "revoke_token": lambda: sync_store.revoke_token("bad"),
        "revoke_family": lambda: sync_store.revoke_family("bad", tenant_id=TENANT),
        "revoke_user_tokens": lambda: sync_store.revoke_user_tokens("bad", tenant_id=TENANT),
    }[path]
    with pytest.raises(exc.StoreUnavailable, match="WRONGTYPE"):
        write()
    assert entries(sync_store) == []
    assert seq(sync_store) == 0


def _chunk_setup(store: SyncRedisTokenRevocationStore, tenant: str) -> tuple[list[int], JobRecord]:
    families = [
        start_session_sync(f"c{i}", tenant_id=tenant, store=store).family_id for i in range(8)
    ]
    record = JobRecord(
        id=f"job-{tenant}", kind="tenant", tenant_id=tenant, created_at=time.time() + 1
    )
    return sorted({k.family_bucket(f) or 0 for f in families}), record


def test_a_chunk_sends_its_entry_before_any_mark(
    sync_store: SyncRedisTokenRevocationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the order a chunk's commands reach Redis (one connection), its entry comes before its
    first mark (a chunk cut anywhere cannot leave marks without their entry) and again after
    its last (a snapshot taken in between meets it)."""
    sent: list[Any] = []
    real = sync_store.bulk_exchange

    @contextlib.contextmanager
    def recording() -> Iterator[Any]:
        with real() as exchange:

            def record(commands: list[Any]) -> list[Any]:
                sent.extend(commands)
                return exchange(commands)

            yield record

    monkeypatch.setattr(sync_store, "bulk_exchange", recording)
    buckets, record = _chunk_setup(sync_store, "t1")
    revoke_buckets(
        sync_store, buckets, tenant_id="t1", select=job_selection(record), mark=job_mark(record)
    )
    names = [c[0] for c in sent]
    xadds = [n for n, name in enumerate(names) if name == "XADD"]
    marks = [n for n, name in enumerate(names) if name == "HSET"]
    assert len(xadds) == 2
    assert xadds[0] < marks[0]
    assert xadds[1] > marks[-1]
    assert sent[xadds[0]][1:] == sent[xadds[1]][1:]
    assert all(sent[n][1] == sync_store.keys.feed for n in xadds)
    assert len({sent[n][1] for n in marks}) > 2, "the chunk should span several round trips"


def test_a_snapshot_taken_mid_chunk_misses_none_of_its_families(
    sync_store: SyncRedisTokenRevocationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mirror snapshots while a chunk is between round trips (its first entry already in the
    feed, some marks not yet written): the snapshot plus the feed after the snapshot's start
    name every family the chunk revokes."""
    real = sync_store.bulk_exchange
    taken: list[tuple[str, set[str]]] = []

    @contextlib.contextmanager
    def pausing() -> Iterator[Any]:
        with real() as exchange:

            def send(commands: list[Any]) -> list[Any]:
                replies = exchange(commands)
                if not taken and any(c[0] == "HSET" for c in commands):
                    items = list(sync_store.snapshot())
                    seen = {i for b in items[1:] if b.kind == "family" for i in b.ids}
                    taken.append((items[0].feed_id, seen))
                return replies

            yield send

    monkeypatch.setattr(sync_store, "bulk_exchange", pausing)
    buckets, record = _chunk_setup(sync_store, "mid")
    selected = revoke_buckets(
        sync_store, buckets, tenant_id="mid", select=job_selection(record), mark=job_mark(record)
    )
    revoked = {f.decode() for ids in selected.values() for f in ids}
    ((feed_id, seen),) = taken
    assert seen < revoked, "the snapshot should fall between the chunk's round trips"
    followed = {i for _, e in sync_store.read_feed(feed_id).entries for i in e.ids}
    assert revoked <= seen | followed


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 8])
def test_a_chunk_cut_mid_pipeline_never_leaves_marks_without_an_entry(
    sync_store: SyncRedisTokenRevocationStore, monkeypatch: pytest.MonkeyPatch, cut: int
) -> None:
    """The chunk's connection dies after ``cut`` of its write commands reached Redis: whatever
    marks were written, the feed holds the entry naming them (a rerun completes the marks)."""
    real = sync_store.bulk_exchange
    tenant = f"cut{cut}"

    @contextlib.contextmanager
    def dying() -> Iterator[Any]:
        with real() as exchange:

            def send(commands: list[Any]) -> list[Any]:
                if any(c[0] == "HSET" for c in commands):
                    exchange(commands[:cut])
                    raise exc.StoreUnavailable("connection lost mid-pipeline")
                return exchange(commands)

            yield send

    monkeypatch.setattr(sync_store, "bulk_exchange", dying)
    buckets, record = _chunk_setup(sync_store, tenant)
    with pytest.raises(exc.StoreUnavailable):
        revoke_buckets(
            sync_store,
            buckets,
            tenant_id=tenant,
            select=job_selection(record),
            mark=job_mark(record),
        )
    marked = {
        f.decode()
        for key in sync_store.keys.revoked_buckets(tenant, buckets)
        for f in sync_store.client.hkeys(key)
    }
    named = {i for _, e in entries(sync_store) for i in e.ids}
    assert marked <= named
    if marked:
        assert entries(sync_store), "marks were written without their entry"


# --- trimming ----------------------------------------------------------------------------------


def _old_entries(store: SyncRedisTokenRevocationStore, count: int, age: float) -> list[str]:
    """``count`` entries with ids ``age`` seconds old (as if appended then)."""
    base = int((time.time() - age) * 1000)
    fields = k.encode_feed_entry("jti", ids=["old"], value_us=1, expires=1, seq=1)
    pipe = store.client.pipeline(transaction=False)
    ids = [f"{base}-{n}" for n in range(count)]
    for i in ids:
        pipe.xadd(store.keys.feed, fields, id=i)
    pipe.execute()
    return ids


@pytest.fixture
def short_retention(backend_settings: Any) -> Any:
    """Settings whose feed keeps 60 s (the shortest REVOKER_FEED_RETENTION allows)."""
    return backend_settings.model_copy(update={"feed_retention": 60})


def test_each_append_trims_entries_past_the_retention(
    sync_store: SyncRedisTokenRevocationStore, short_retention: Any
) -> None:
    """An append trims (MINID ~) what is older than REVOKER_FEED_RETENTION, and keeps what is
    younger; a reader whose position was trimmed is told so."""
    store = SyncRedisTokenRevocationStore(sync_store.client, settings=short_retention)
    old = _old_entries(store, 500, age=600)  # ids grow: the old ones first
    young = _old_entries(store, 300, age=30)
    store.revoke_token("new")
    left = {i for i, _ in entries(store)}
    # "~" trims whole stream nodes: all but the node holding the cut-off can go.
    assert len(left & set(old)) <= 150
    assert set(young) <= left
    assert any(e.ids == ("new",) for _, e in entries(store))
    assert store.read_feed(old[0]).trimmed
    assert not store.read_feed(young[0]).trimmed


def test_a_reader_is_told_when_the_feed_is_gone(sync_store: SyncRedisTokenRevocationStore) -> None:
    """A deleted feed (a wiped Redis) with a reader part-way: trimmed; a reader at "0-0" of an
    empty feed: not."""
    sync_store.revoke_token("a")
    at = sync_store.feed_tail()
    assert not sync_store.read_feed(at).trimmed
    sync_store.client.delete(sync_store.keys.feed)
    assert sync_store.read_feed(at).trimmed
    assert not sync_store.read_feed("0-0").trimmed


def test_a_reader_from_an_empty_feed_is_told_only_of_a_real_trim(
    sync_store: SyncRedisTokenRevocationStore,
) -> None:
    """A reader at "0-0" (no feed when it began): the first appends are not a trim (the feed
    holds every entry ever added to it); once an entry was trimmed away, they are (it may have
    been one the reader needed)."""
    assert not sync_store.read_feed("0-0").trimmed
    sync_store.revoke_token("a")
    sync_store.revoke_token("b")
    read = sync_store.read_feed("0-0")
    assert [e.ids for _, e in read.entries] == [("a",), ("b",)]
    assert not read.trimmed
    sync_store.client.xtrim(sync_store.keys.feed, maxlen=1, approximate=False)
    assert sync_store.read_feed("0-0").trimmed


# --- the read API ------------------------------------------------------------------------------


def test_read_feed_returns_entries_after_an_id_in_order(
    sync_store: SyncRedisTokenRevocationStore,
) -> None:
    """feed_tail, then writes: read_feed from the tail returns exactly them, decoded, oldest
    first, in pages of ``count``; nothing more after the last id."""
    assert sync_store.feed_tail() == "0-0"
    sync_store.revoke_token("first")
    tail = sync_store.feed_tail()
    for n in range(5):
        sync_store.revoke_family(f"f{n}", tenant_id=TENANT)
    page = sync_store.read_feed(tail, count=3)
    assert [e.ids for _, e in page.entries] == [("f0",), ("f1",), ("f2",)]
    rest = sync_store.read_feed(page.last_id, count=10)
    assert [e.ids for _, e in rest.entries] == [("f3",), ("f4",)]
    done = sync_store.read_feed(rest.last_id, count=10, block_ms=10)
    assert done.entries == []
    assert done.last_id == rest.last_id
    assert not done.trimmed


def test_an_unreadable_entry_reads_as_an_epoch_change(
    sync_store: SyncRedisTokenRevocationStore,
) -> None:
    """An entry this version did not write makes the reader resync, never guess."""
    sync_store.client.xadd(sync_store.keys.feed, {"k": "session", "i": "x"})
    read = sync_store.read_feed("0-0")
    assert [e.kind for _, e in read.entries] == ["epoch"]


async def test_the_async_store_reads_what_the_sync_store_wrote(store: Any) -> None:
    """The async store's feed_tail, read_feed and snapshot over the same plans."""
    assert await store.feed_tail() == "0-0"
    await store.revoke_token("j1")
    await store.revoke_family("1f.a", tenant_id=TENANT)
    read = await store.read_feed("0-0")
    assert [e.kind for _, e in read.entries] == ["jti", "family"]
    assert await store.feed_tail() == read.last_id
    items = [item async for item in store.snapshot()]
    assert items[0].feed_id == read.last_id
    assert items[0].seq == 2
    kinds = {(b.kind, b.tenant_id, b.ids) for b in items[1:]}
    assert kinds == {("jti", None, ("j1",)), ("family", TENANT, ("1f.a",))}


@pytest.mark.parametrize("backend", [p for p in WITH_CLUSTER if p.id == "cluster"], indirect=True)
def test_no_feed_on_a_cluster(sync_store: SyncRedisTokenRevocationStore) -> None:
    """On a Redis Cluster the writes append nothing and every read of the feed is a clear
    configuration error."""
    sync_store.revoke_token("c1")
    sync_store.revoke_user_tokens("u1", tenant_id=TENANT)
    assert not sync_store.client.exists(sync_store.keys.feed)
    for read in (
        sync_store.feed_tail,
        lambda: sync_store.read_feed("0-0"),
        lambda: list(sync_store.snapshot()),
    ):
        with pytest.raises(exc.ConfigurationError, match="Redis Cluster"):
            read()


def test_a_loss_entry_carries_the_new_sequence(sync_store: SyncRedisTokenRevocationStore) -> None:
    """data_loss.lua's epoch entry has the sequence of the new identity."""
    sync_store.revoke_token("x")
    observed = read_observation(sync_store.client.hmget(sync_store.keys.integrity, "epoch", "seq"))
    plan = sync_store.core.plan_data_loss(Loss("epoch_changed", observed, "old-epoch", 1))
    sync_store.execute(plan)
    last = entries(sync_store)[-1][1]
    assert last.kind == "epoch"
    assert last.seq == seq(sync_store)
