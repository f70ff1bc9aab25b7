"""The key layout: escaping cannot forge keys or move hash tags; TTL rules, as Redis sets them."""

from __future__ import annotations

import time
import zlib
from fnmatch import fnmatchcase
from urllib.parse import unquote

import fakeredis
import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from conftest import make_settings
from revoker.exceptions import InvalidIdentifier
from revoker.keys import (
    FOREIGN_BUCKETS,
    MAX_ID_LENGTH,
    MAX_TIME,
    MAX_TTL,
    NO_TENANT_TAG,
    RECORD_CLIENT,
    RECORD_CREATED,
    RECORD_EXPIRES,
    RECORD_FIELDS,
    RECORD_HEAD,
    RECORD_USER,
    KeyLayout,
    Lifetimes,
    bucket_number,
    bucket_of_user,
    decode_mark,
    decode_record,
    decode_time,
    encode_mark,
    encode_record,
    escape_id,
    escape_part,
    family_bucket,
    family_id_prefix,
    family_ttl,
    jti_ttl,
    mark_time,
    read_time,
    record_head,
    watermark_ttl,
)
from revoker.settings import RevokerSettings
from revoker.store import SyncRedisTokenRevocationStore

# Arbitrary ids, biased towards the characters that matter to keys and hash tags.
ids = st.text(
    alphabet=st.one_of(
        st.sampled_from("{}:%-_ .|*?[]\\\x00\n"),
        st.characters(codec="utf-8"),
    ),
    min_size=1,
    max_size=40,
)
tenants = st.one_of(st.none(), ids)
buckets = st.integers(min_value=0, max_value=65_535)
#: Family ids: foreign ones (any id) and minted ones (naming their bucket, as start_session's do).
families = st.one_of(ids, st.builds(lambda b, rest: family_id_prefix(b) + rest, buckets, ids))
LAYOUT = KeyLayout("rv")
#: Which of (tenant, user, family, jti, bucket) each kind of key is built from (the marks keys,
#: family_revoked and revoked_bucket, are told apart by :func:`identity`).
KEY_IDS = {
    "jti": (3,),
    "job": (3,),
    "job_chunk": (3, 4),
    "session_bucket": (0, 4),
    "user_watermark": (0, 1),
    "tenant_watermark": (0,),
}
#: The keys of one tenant: all share its hash tag, hence its Redis Cluster slot.
TENANT_KEYS = (
    "session_bucket",
    "family_revoked",
    "revoked_bucket",
    "user_watermark",
    "tenant_watermark",
)
Ids = tuple[str | None, str, str, str, int]


def hash_tag(key: str) -> str:
    """What Redis Cluster hashes: the text between the first '{' and the next '}'."""
    start = key.index("{")
    return key[start + 1 : key.index("}", start + 1)]


def all_keys(
    tenant: str | None, user: str, family: str, jti: str, bucket: int = 0
) -> dict[str, str]:
    return {
        "jti": LAYOUT.jti(jti),
        "session_bucket": LAYOUT.session_bucket(tenant, bucket),
        "family_revoked": LAYOUT.family_revoked(tenant, family),
        "revoked_bucket": LAYOUT.revoked_bucket(tenant, bucket),
        "user_watermark": LAYOUT.user_watermark(tenant, user),
        "tenant_watermark": LAYOUT.tenant_watermark(tenant),
        "job": LAYOUT.job(jti),
        "job_chunk": LAYOUT.job_chunk(jti, bucket),
    }


def identity(kind: str, used: Ids) -> tuple[object, ...]:
    """What a key of ``kind`` built from ``used`` stands for: equal keys must stand for the same.

    A family's marks key is the revoked-mark bucket of the tenant its id names; every foreign id
    of a tenant may share any of the tenant's foreign buckets (they are hashed into few).
    """
    if kind in ("family_revoked", "revoked_bucket"):
        bucket = used[4] if kind == "revoked_bucket" else family_bucket(used[2])
        return ("marks", used[0], "foreign" if bucket is None else bucket)
    return (kind, *(used[i] for i in KEY_IDS[kind]))


@given(ids)
def test_escaping_is_reversible_hence_injective(value: str) -> None:
    """escape_id can be undone, so two different ids never share an escape."""
    escaped = escape_id(value)
    assert unquote(escaped) == value
    assert escaped.isascii()
    assert not set(escaped) & set("{}: \n\x00")


@given(ids, ids)
def test_different_ids_have_different_escapes(a: str, b: str) -> None:
    """Distinct ids escape to distinct strings."""
    assert (escape_id(a) == escape_id(b)) == (a == b)


@given(tenants, ids, families, ids, buckets)
def test_no_id_can_change_a_hash_tag(
    tenant: str | None, user: str, family: str, jti: str, bucket: int
) -> None:
    """Tenant keys are tagged by the tenant alone, the jti key by the jti alone."""
    keys = all_keys(tenant, user, family, jti, bucket)
    tag = NO_TENANT_TAG if tenant is None else "t:" + escape_id(tenant)
    for name in TENANT_KEYS:
        assert hash_tag(keys[name]) == tag, name
    assert hash_tag(keys["jti"]) == escape_id(jti)
    assert hash_tag(keys["job"]) == hash_tag(keys["job_chunk"]) == escape_id(jti)
    # One pair of braces per key: nothing an id contains opens a second tag.
    assert all(key.count("{") == key.count("}") == 1 for key in keys.values())


@given(
    st.tuples(tenants, ids, families, ids, buckets),
    st.tuples(tenants, ids, families, ids, buckets),
)
def test_no_ids_can_forge_another_key(first: Ids, second: Ids) -> None:
    """Two keys coincide only if they stand for the same thing (same kind, same ids or bucket)."""
    for one, other in ((first, first), (first, second)):
        a = all_keys(*one)
        b = all_keys(*other)
        for kind_a, key_a in a.items():
            for kind_b, key_b in b.items():
                if key_a == key_b:
                    assert identity(kind_a, one) == identity(kind_b, other), (kind_a, kind_b)


@given(tenants, ids, families, ids, buckets)
def test_tenant_keys_share_one_slot(
    tenant: str | None, user: str, family: str, jti: str, bucket: int
) -> None:
    """Every key of one tenant (every session bucket too) lands in one Redis Cluster slot."""
    keys = all_keys(tenant, user, family, jti, bucket)
    slots = {key_slot(keys[name].encode()) for name in TENANT_KEYS}
    assert len(slots) == 1


@given(tenants, ids, families, ids, buckets)
def test_bucket_patterns_match_their_buckets_only(
    tenant: str | None, user: str, family: str, jti: str, bucket: int
) -> None:
    """The expiry task's SCAN patterns: one finds session buckets only, the other marks only."""
    sessions = LAYOUT.session_bucket_pattern()
    marks = LAYOUT.revoked_bucket_pattern()
    for name, key in all_keys(tenant, user, family, jti, bucket).items():
        assert fnmatchcase(key, sessions) == (name == "session_bucket"), name
        assert fnmatchcase(key, marks) == (name in ("family_revoked", "revoked_bucket")), name
    bucket_key = LAYOUT.session_bucket(tenant, bucket)
    assert bucket_key == LAYOUT.session_bucket_base(tenant) + str(bucket)
    marks_key = LAYOUT.revoked_bucket(tenant, bucket)
    assert marks_key == LAYOUT.revoked_bucket_base(tenant) + str(bucket)
    assert LAYOUT.family_revoked(tenant, family).startswith(LAYOUT.revoked_bucket_base(tenant))


@given(ids, tenants, tenants)
def test_jti_key_is_independent_of_the_tenant(jti: str, t1: str | None, t2: str | None) -> None:
    """The jti key (and its slot) is the same whatever tenant the token carries."""
    k1 = LAYOUT.check_keys(jti, t1, "u", None)[0]
    k2 = LAYOUT.check_keys(jti, t2, "u", None)[0]
    assert k1 == k2 == LAYOUT.jti(jti)
    assert k1 is not None
    assert key_slot(k1.encode()) == key_slot(LAYOUT.jti(jti).encode())


def test_check_keys_span_at_most_three_slots() -> None:
    """The per-request check reads the jti's slot, the tenant's and the integrity slot (the
    global watermark, beside the integrity hash), nothing else."""
    keys = [k for k in LAYOUT.check_keys("j1", "acme", "alice", "f1") if k is not None]
    assert len(keys) == 5
    assert len({key_slot(k.encode()) for k in keys[:4]}) <= 2
    assert key_slot(keys[4].encode()) == key_slot(LAYOUT.integrity.encode())
    assert LAYOUT.check_keys("j1", None, "alice", None)[1:] == [
        None,
        LAYOUT.user_watermark(None, "alice"),
        None,
        LAYOUT.global_watermark,
    ]


def test_no_tenant_tag_is_not_any_tenants_tag() -> None:
    """Tenant-less keys never collide with a tenant literally named "-"."""
    assert LAYOUT.tenant_watermark(None) != LAYOUT.tenant_watermark(NO_TENANT_TAG)
    assert LAYOUT.user_watermark(None, "u") != LAYOUT.user_watermark("-", "u")


def test_layout_is_readable() -> None:
    """The documented layout, spelled out for one example."""
    assert LAYOUT.jti("j1") == "rv:jti:{j1}"
    assert LAYOUT.user_watermark("acme", "alice") == "rv:{t:acme}:uw:alice"
    assert LAYOUT.family_revoked(None, "f1") == "rv:{-}:fr:x740"  # foreign: crc32("f1") % 1024
    assert LAYOUT.family_revoked("acme", "1a.Zx7") == "rv:{t:acme}:fr:26"  # minted in bucket 0x1a
    assert LAYOUT.revoked_bucket("acme", 26) == "rv:{t:acme}:fr:26"
    assert LAYOUT.tenant_watermark("a:b{c}") == "rv:{t:a%3Ab%7Bc%7D}:tw"
    assert LAYOUT.session_bucket("acme", 42) == "rv:{t:acme}:s:42"
    assert LAYOUT.session_bucket(None, 0) == "rv:{-}:s:0"
    assert LAYOUT.job_chunk("j1", 3) == "rv:job:{j1}:c:3"
    assert LAYOUT.prefix_pattern() == "rv:*"


@pytest.mark.parametrize(
    "value",
    ["", None, 5, b"bytes", "x" * (MAX_ID_LENGTH + 1), "\ud800", "ok\udfffok"],
    ids=["empty", "none", "int", "bytes", "too-long", "lone-surrogate", "inner-surrogate"],
)
def test_unusable_ids_are_invalid_identifiers(value: object) -> None:
    """Ids that cannot be keys raise InvalidIdentifier naming what they were."""
    with pytest.raises(InvalidIdentifier, match="user id"):
        LAYOUT.user_watermark("acme", value)  # type: ignore[arg-type]


def test_longest_id_is_accepted() -> None:
    """An id of exactly MAX_ID_LENGTH characters is fine."""
    assert LAYOUT.jti("j" * MAX_ID_LENGTH).endswith("}")


@pytest.mark.parametrize("prefix", ["", "a:b", "a{b", "a b"])
def test_bad_prefix_is_refused(prefix: str) -> None:
    """A prefix that could break keys or tags is refused."""
    with pytest.raises(InvalidIdentifier):
        KeyLayout(prefix)


# --- session records and buckets ---------------------------------------------------------

#: Record parts: any text (no lone surrogates), "|" and spaces included.
parts = st.text(
    alphabet=st.one_of(st.sampled_from("| %{}:\t\n"), st.characters(codec="utf-8")),
    max_size=30,
)
scope_lists = st.lists(parts.filter(bool), max_size=5)


@given(
    user=parts.filter(bool),
    client=st.one_of(st.none(), parts),
    created_us=st.integers(min_value=0, max_value=2**62),
    expires=st.integers(min_value=0, max_value=2**40),
    current=parts.filter(bool),
    scopes=scope_lists,
)
def test_record_round_trip(
    user: str,
    client: str | None,
    created_us: int,
    expires: int,
    current: str,
    scopes: list[str],
) -> None:
    """decode_record(encode_record(...)) gives back every field; "|" never leaks from a part."""
    value = encode_record(
        user_id=user,
        client_id=client,
        created_us=created_us,
        expires=expires,
        current_jti=current,
        scopes=scopes,
    )
    assert value.count("|") == len(RECORD_FIELDS) - 1
    data = decode_record(value)
    assert set(data) == set(RECORD_FIELDS)
    assert data["user"] == user
    assert data["client"] == (client or "")
    assert (data["created"], data["expires"]) == (str(created_us), str(expires))
    assert data["current"] == current
    assert data["scopes"] == tuple(scopes)
    assert [data[n] for n in ("previous", "rotated", "successor", "issued")] == ["", "", "", ""]
    assert decode_record(value.encode()) == data
    # The raw record starts with the escaped user: what the fan-out's Selection compares.
    assert value.partition("|")[0] == escape_part(user)


@pytest.mark.parametrize(
    ("user", "client", "scopes"),
    [
        ("a|b", "c|d", ("x|y", "z")),
        ("jane doe", "my app", ("read write", "admin")),
        ("zoë", "クライアント", ("lire", "écrire")),
        ("alice", "", ()),
        ("alice", None, ("a", "b", "c", "d")),
    ],
    ids=["pipes", "spaces", "non-ascii", "empty-client", "several-scopes"],
)
def test_record_round_trip_examples(user: str, client: str | None, scopes: tuple[str, ...]) -> None:
    """Awkward ids, an empty or absent client and several scopes survive encoding exactly."""
    value = encode_record(
        user_id=user,
        client_id=client,
        created_us=1_700_000_000_123_456,
        expires=1_700_086_400,
        current_jti="rt|1 é",
        scopes=scopes,
    )
    assert value.isascii()
    data = decode_record(value)
    assert (data["user"], data["client"], data["scopes"]) == (user, client or "", scopes)
    assert (data["created"], data["expires"]) == ("1700000000123456", "1700086400")
    assert data["current"] == "rt|1 é"


def test_short_record_decodes_with_empty_fields() -> None:
    """A record with fewer parts (an older writer) decodes; missing fields are empty."""
    data = decode_record(b"alice|web|5|6|rt1")
    assert (data["user"], data["client"], data["current"]) == ("alice", "web", "rt1")
    assert (data["previous"], data["issued"], data["scopes"]) == ("", "", ())


def test_corrupt_record_decodes_without_raising_and_times_as_stored() -> None:
    """Non-UTF-8 bytes are replaced, not raised on; a time field is never unescaped, so that
    read_time reads from decode_record what it reads from the raw record."""
    data = decode_record(b"\xff|web|%31%32|12abc|rt%7C1|||||")
    assert (data["user"], data["current"]) == ("\ufffd", "rt|1")
    assert (data["created"], data["expires"]) == ("%31%32", "12abc")
    assert read_time(data["created"].encode()) is None


#: Stored whole times (µs) and what every reader makes of them: valid, edge and corrupt.
WHOLE_TIMES: list[tuple[str | None, int | None]] = [
    ("1700000000000000", 1_700_000_000_000_000),
    ("00012", 12),
    ("0", 0),
    (str(MAX_TIME + 1), MAX_TIME),
    ("9" * 5000, MAX_TIME),
    ("", None),
    (None, None),
    ("12abc", None),
    ("-5", None),
    (" 12", None),
    ("1.5e15", None),
    ("\u00b2", None),  # str.isdigit() says yes, int() raises
    ("\uff11\uff12", None),  # full-width digits: int() would read 12
]


@pytest.mark.parametrize(("raw", "at_us"), WHOLE_TIMES)
def test_whole_times_read_alike_everywhere(raw: str | None, at_us: int | None) -> None:
    """decode_time reads a stored ``at`` by read_time's rule, and the audit, console, events and
    health readers read it through it: the same time, 0 or None, never an exception."""
    from revoker import health
    from revoker.audit import AuditEntry
    from revoker.console.data import AuditEntry as ConsoleEntry
    from revoker.events.router import occurrences_of_chunk

    assert decode_time(raw) == at_us
    if raw is not None:
        assert decode_time(raw.encode()) == at_us
    seconds = at_us / 1e6 if at_us is not None else None
    fields = {"kind": "tenant", "target": "t"} | ({} if raw is None else {"at": raw})
    assert AuditEntry.from_stream("1-0", fields).at == seconds
    assert ConsoleEntry("5000-0", fields).at == (seconds if seconds is not None else 5.0)
    assert health._seconds(raw) == seconds
    chunk = {"job": "j", "s": '[["f","u",""]]'} | ({} if raw is None else {"at": raw})
    assert [o.at_us for o in occurrences_of_chunk(chunk)] == [at_us or 0]


@given(ids, st.integers(min_value=1, max_value=65_536))
def test_bucket_of_user_is_deterministic_and_in_range(user: str, count: int) -> None:
    """A user's bucket is the same on every call and lies in [0, count)."""
    bucket = bucket_of_user(user, count)
    assert 0 <= bucket < count
    assert bucket_of_user(user, count) == bucket


def test_bucket_of_user_is_stable_across_processes() -> None:
    """The bucket is a fixed function of the id (not hash()): every process finds the same one."""
    assert bucket_of_user("alice", 8192) == 7239
    assert bucket_of_user("alice", 16) == 7
    assert bucket_of_user("alice", 1) == 0


def test_bucket_of_user_spreads_users() -> None:
    """Many users use every one of a few buckets (no bucket collects everyone)."""
    counts = [0] * 16
    for i in range(1600):
        counts[bucket_of_user(f"user-{i}", 16)] += 1
    assert min(counts) > 50
    assert max(counts) < 150


def test_bucket_of_user_refuses_unusable_ids() -> None:
    """An empty user id has no bucket: InvalidIdentifier."""
    with pytest.raises(InvalidIdentifier, match="user id"):
        bucket_of_user("", 8192)


def test_family_id_prefix_round_trips_every_bucket() -> None:
    """family_bucket reads back the bucket of every possible prefix, whatever follows it."""
    for bucket in range(65_536):
        prefix = family_id_prefix(bucket)
        assert prefix == f"{bucket:x}."
        assert family_bucket(prefix + "Zx7.rest-of.jti") == bucket


@given(buckets, ids)
def test_family_id_prefix_round_trips_any_suffix(bucket: int, suffix: str) -> None:
    """Whatever random part follows the prefix, the id names its bucket."""
    assert family_bucket(family_id_prefix(bucket) + suffix) == bucket


@pytest.mark.parametrize(
    "family_id",
    [
        "f1",
        "",
        "fam-0001",
        "6f1c2b8e-4f0e-4c55-9d3e-1b2c3d4e5f60",
        ".abc",
        "A.abc",
        "1f2e3.abc",
        "g.abc",
        "12-3.abc",
        "é.abc",
    ],
)
def test_family_bucket_is_none_for_foreign_ids(family_id: str) -> None:
    """Ids without a 1-4 digit lower-case hex bucket and a dot (not minted) name no bucket."""
    assert family_bucket(family_id) is None


@given(tenants, buckets, ids)
def test_family_revoked_is_the_bucket_the_id_names(
    tenant: str | None, bucket: int, rest: str
) -> None:
    """A minted family's mark lives in the revoked-mark bucket its id names, whatever follows."""
    family = family_id_prefix(bucket) + rest
    assert LAYOUT.family_revoked(tenant, family) == LAYOUT.revoked_bucket(tenant, bucket)


@given(tenants, ids)
def test_foreign_family_lands_in_a_foreign_bucket(tenant: str | None, family: str) -> None:
    """A foreign id's mark lives in one of the tenant's FOREIGN_BUCKETS "x<n>" buckets, never in
    a minted bucket, and the same one on every call."""
    if family_bucket(family) is not None:
        return
    key = LAYOUT.family_revoked(tenant, family)
    base = LAYOUT.revoked_bucket_base(tenant)
    assert key.startswith(base + "x")
    assert 0 <= int(key[len(base) + 1 :]) < FOREIGN_BUCKETS
    assert LAYOUT.family_revoked(tenant, family) == key


def test_foreign_buckets_are_stable_across_processes() -> None:
    """The foreign bucket is a fixed function of the escaped id (crc32, not hash())."""
    for family in ("f1", "6f1c2b8e-4f0e-4c55-9d3e-1b2c3d4e5f60", "a:b{c}"):
        n = zlib.crc32(escape_id(family).encode()) % FOREIGN_BUCKETS
        assert LAYOUT.family_revoked("acme", family) == f"rv:{{t:acme}}:fr:x{n}"


def test_foreign_ids_spread_over_foreign_buckets() -> None:
    """Many foreign ids use many foreign buckets (no bucket collects every foreign mark)."""
    used = {LAYOUT.family_revoked("acme", f"fam-{i}") for i in range(4096)}
    assert len(used) > FOREIGN_BUCKETS // 2


@given(tenants, tenants, families)
def test_tenants_never_share_a_marks_key(t1: str | None, t2: str | None, family: str) -> None:
    """The same family id revoked in two tenants is marked in two different keys: one tenant's
    marks never revoke another tenant's family."""
    k1, k2 = LAYOUT.family_revoked(t1, family), LAYOUT.family_revoked(t2, family)
    assert (k1 == k2) == (t1 == t2)


@pytest.mark.parametrize(
    "value",
    ["", None, "x" * (MAX_ID_LENGTH + 1), "\ud800"],
    ids=["empty", "none", "too-long", "lone-surrogate"],
)
def test_unusable_family_ids_are_invalid_identifiers(value: object) -> None:
    """A family id that could not be a key is refused, though the key no longer contains it."""
    with pytest.raises(InvalidIdentifier, match="family id"):
        LAYOUT.family_revoked("acme", value)  # type: ignore[arg-type]


# --- TTL rules ------------------------------------------------------------------------------


def test_jti_ttl_with_expires_at() -> None:
    """A revoked jti lives for the token's remaining life plus leeway, rounded up."""
    assert jti_ttl(1100, 1000, access_ttl=900, leeway=30) == 130
    assert jti_ttl(1100, 999.5, access_ttl=900, leeway=30) == 131
    assert jti_ttl(1000.2, 1000, access_ttl=900, leeway=0) == 1


@pytest.mark.parametrize("exp", [1e300, 10.0**19, 2**80, float("inf"), float("nan")])
def test_jti_ttl_is_bounded_whatever_the_exp(exp: float) -> None:
    """No exp gives a TTL above MAX_TTL (Redis refuses an EX past its range), nor raises."""
    assert jti_ttl(exp, 1000, access_ttl=900, leeway=30) == MAX_TTL
    assert jti_ttl(MAX_TTL - 1000.0, 1000, access_ttl=900, leeway=0) == MAX_TTL - 2000
    assert jti_ttl(-1e300, 1000, access_ttl=900, leeway=30) == 1


def test_jti_ttl_of_an_expired_token_is_at_least_one_second() -> None:
    """An already-expired token still gets a positive TTL (SET EX 0 is an error)."""
    assert jti_ttl(500, 1000, access_ttl=900, leeway=30) == 1
    assert jti_ttl(990, 1000, access_ttl=900, leeway=30) == 20


def test_jti_ttl_without_expires_at_covers_an_access_token() -> None:
    """Without exp, the entry lives as long as any access token can, plus leeway."""
    assert jti_ttl(None, 1000, access_ttl=900, leeway=30) == 930


def test_watermark_and_family_ttls() -> None:
    """Watermarks outlive the longest token; families the refresh token; both plus leeway."""
    assert watermark_ttl(2_592_000, 30) == 2_592_030
    assert family_ttl(86_400, 30) == 86_430


def assert_ttl(store: SyncRedisTokenRevocationStore, key: str, expected: int) -> None:
    ttl = store.client.ttl(key)
    assert expected - 2 <= ttl <= expected, (key, ttl, expected)


def test_ttls_set_in_redis(sync_store: SyncRedisTokenRevocationStore) -> None:
    """Each write leaves its key with the TTL the rules give."""
    s: RevokerSettings = sync_store.settings
    keys = sync_store.keys
    sync_store.revoke_token("j-exp", expires_at=time.time() + 100)
    assert_ttl(sync_store, keys.jti("j-exp"), 100 + s.leeway)
    sync_store.revoke_token("j-noexp")
    assert_ttl(sync_store, keys.jti("j-noexp"), s.access_token_ttl + s.leeway)
    sync_store.revoke_family("f1", tenant_id="acme")
    assert_ttl(sync_store, keys.family_revoked("acme", "f1"), s.refresh_token_ttl + s.leeway)
    sync_store.revoke_user_tokens("alice", tenant_id="acme")
    assert_ttl(sync_store, keys.user_watermark("acme", "alice"), s.longest_token_ttl + s.leeway)
    sync_store.revoke_tenant_tokens("acme")
    assert_ttl(sync_store, keys.tenant_watermark("acme"), s.longest_token_ttl + s.leeway)
    # Audit, counters, the denylist's identity and the change feed (trimmed by age on each
    # append instead) are the only keys without a TTL.
    for key in sync_store.client.scan_iter(match=f"{s.key_prefix}:*"):
        name = key.decode()
        if name not in (keys.audit, keys.stats, keys.integrity, keys.feed):
            assert sync_store.client.ttl(key) > 0, name


def test_marks_bucket_ttl_is_never_shortened(sync_store: SyncRedisTokenRevocationStore) -> None:
    """A mark gives its bucket the family TTL if it had less, never less than it had; the first
    mark of a family stays."""
    s: RevokerSettings = sync_store.settings
    client = sync_store.client
    full = s.refresh_token_ttl + s.leeway
    first, second = family_id_prefix(7) + "a", family_id_prefix(7) + "b"
    bucket = sync_store.keys.family_revoked("acme", first)
    assert sync_store.keys.family_revoked("acme", second) == bucket
    assert sync_store.revoke_family(first, tenant_id="acme", reason="one") is True
    mark = client.hget(bucket, first)
    assert mark is not None
    assert mark.endswith(b"|one")
    client.expire(bucket, full + 1000)  # a longer TTL (e.g. written with other settings)
    sync_store.revoke_family(second, tenant_id="acme")
    assert_ttl(sync_store, bucket, full + 1000)
    client.expire(bucket, 10)  # a shorter one is raised again by the next mark
    assert sync_store.revoke_family(first, tenant_id="acme", reason="two") is False
    assert_ttl(sync_store, bucket, full)
    assert client.hget(bucket, first) == mark


# --- Lifetimes: every TTL and cut-off from one settings-bound object ------------------------


def test_lifetimes_are_the_settings_ttl_rules() -> None:
    """Lifetimes gives the TTLs the TTL functions give for the same settings."""
    s = make_settings(access_token_ttl=600, refresh_token_ttl=7200, leeway=7)
    life = Lifetimes.from_settings(s)
    assert life.jti_ttl(1100, 1000) == jti_ttl(1100, 1000, 600, 7) == 107
    assert life.jti_ttl(None, 1000) == 607
    assert life.watermark_ttl == watermark_ttl(s.longest_token_ttl, 7) == 7207
    assert life.family_ttl == family_ttl(7200, 7) == 7207
    assert (life.job_retention, life.audit_retention) == (s.job_retention, s.audit_retention)


@pytest.mark.parametrize("now", [1_700_000_000.0, 1_700_000_000.999_999, 1_799_999_999.5])
def test_lifetimes_cutoffs_are_what_the_expiry_computes(now: float) -> None:
    """The cut-offs equal the expressions tasks.expire_entries uses today (as of f274214)."""
    s = make_settings(refresh_token_ttl=86_400, leeway=30, job_retention=3600, audit_retention=60)
    life = Lifetimes.from_settings(s)
    ttl = family_ttl(s.refresh_token_ttl, s.leeway)
    assert life.records_expired_before(now) == int(now) - s.leeway
    assert life.marks_older_than(now) == int((now - ttl) * 1_000_000)
    assert life.jobs_finished_before(now) == int((now - s.job_retention) * 1000)
    assert life.audit_cutoff_id(now) == f"{int((now - s.audit_retention) * 1000)}-0"


def test_store_ttls_follow_its_lifetimes() -> None:
    """The store binds its lifetimes to its own settings."""
    s = make_settings(refresh_token_ttl=100, leeway=1)
    store = SyncRedisTokenRevocationStore(fakeredis.FakeRedis(), settings=s)
    assert store.core.lifetimes == Lifetimes.from_settings(s)
    assert store.core.lifetimes.family_ttl == 101


# --- stored times: one rule ----------------------------------------------------------------

#: (stored time part, what read_time reads). See "Reading a time" in revoker.keys.
TIME_PARTS: list[tuple[bytes, int | None]] = [
    (b"0", 0),
    (b"12", 12),
    (b"00012", 12),
    (b"1700000000123456", 1_700_000_000_123_456),
    (str(MAX_TIME).encode(), MAX_TIME),
    (str(MAX_TIME + 1).encode(), MAX_TIME),
    (b"9" * 16, MAX_TIME),
    (b"0" * 40 + b"12", 12),
    (b"9" * 400, MAX_TIME),
    (b"9" * 5000, MAX_TIME),  # int() of it raises ValueError: never converted
    (b"", None),
    (b"12abc", None),
    (b"-5", None),
    (b"+12", None),
    (b" 12", None),
    (b"12 ", None),
    (b"1_2", None),
    (b"1.5e15", None),
    (b"0x10", None),
    (b"inf", None),
    ("١٢".encode(), None),  # Arabic-Indic digits: int() reads them, Lua's %d does not
    ("\uff11\uff12".encode(), None),  # full-width digits
    (b"\xff12", None),
    (b"12\x00", None),
]


@pytest.mark.parametrize(("part", "expected"), TIME_PARTS)
def test_read_time_is_the_documented_rule(part: bytes, expected: int | None) -> None:
    """ASCII digits only, capped at MAX_TIME; anything else is unreadable."""
    assert read_time(part) == expected
    assert mark_time(part + b"|reason|more") == expected
    assert mark_time(part) == expected


@pytest.mark.parametrize(("part", "expected"), TIME_PARTS)
def test_decode_mark_reads_unreadable_as_zero_and_never_raises(
    part: bytes, expected: int | None
) -> None:
    """decode_mark gives the time by read_time (0 when unreadable) and the reason after "|"."""
    assert decode_mark(part + b"|why") == (expected or 0, "why")
    assert decode_mark(part) == (expected or 0, None)
    text = part.decode(errors="replace")
    assert decode_mark(text + "|a|b") == (read_time(text.encode()) or 0, "a|b")


def test_mark_round_trip_and_bad_bytes_in_the_reason() -> None:
    """decode_mark(encode_mark(t, r)) is (t, r); non-UTF-8 bytes in a reason are replaced."""
    assert decode_mark(encode_mark(1_700_000_000_000_001, "logout")) == (
        1_700_000_000_000_001,
        "logout",
    )
    assert decode_mark(encode_mark(5)) == (5, None)
    assert decode_mark(b"12|\xff") == (12, "\ufffd")
    assert decode_mark("") == (0, None)
    assert decode_mark("|") == (0, None)


def test_rules_re_exports_the_mark_encoder() -> None:
    """rules.encode_mark is keys.encode_mark (callers importing it from rules keep working)."""
    from revoker import rules

    assert rules.encode_mark is encode_mark


# --- raw readers: the same answers as the tasks.py helpers they replace ---------------------
# The reference functions below are the bodies of tasks.Selection, tasks._expired,
# tasks._mark_before and tasks._in_slice as of commit f274214, copied so that these tests keep
# their meaning after tasks switches to the keys readers.


def _ref_selection(
    value: bytes,
    cutoff: int,
    user: bytes | None,
    client: bytes | None,
    after: int | None,
    before: int | None,
) -> bool:
    parts = value.split(b"|", 3)
    if len(parts) < 4 or not parts[2].isdigit():
        return False
    created = int(parts[2])
    if created > cutoff:
        return False
    if user is not None and parts[0] != user:
        return False
    if client is not None and parts[1] != client:
        return False
    return not (
        (after is not None and created < after) or (before is not None and created > before)
    )


def _ref_expired(record: bytes, limit: int) -> bool:
    parts = record.split(b"|", 4)
    return len(parts) > 3 and parts[3].isdigit() and int(parts[3]) < limit


def _ref_mark_before(mark: bytes, limit_us: int) -> bool:
    at = mark.partition(b"|")[0]
    return at.isdigit() and int(at) < limit_us


def _ref_in_slice(key: bytes, part: tuple[int, int]) -> bool:
    slices, slot = part
    number = key.rpartition(b":")[2].lstrip(b"x")
    return slices == 1 or (number.isdigit() and int(number) % slices == slot)


def _new_selection(
    value: bytes,
    cutoff: int,
    user: bytes | None,
    client: bytes | None,
    after: int | None,
    before: int | None,
) -> bool:
    parts = record_head(value)
    if parts is None:
        return False
    created = read_time(parts[RECORD_CREATED])
    if created is None or created > cutoff:
        return False
    if user is not None and parts[RECORD_USER] != user:
        return False
    if client is not None and parts[RECORD_CLIENT] != client:
        return False
    return not (
        (after is not None and created < after) or (before is not None and created > before)
    )


def _new_expired(record: bytes, limit: int) -> bool:
    parts = record_head(record)
    if parts is None:
        return False
    expires = read_time(parts[RECORD_EXPIRES])
    return expires is not None and expires < limit


def _new_mark_before(mark: bytes, limit_us: int) -> bool:
    at = mark_time(mark)
    return at is not None and at < limit_us


def _new_in_slice(key: bytes, part: tuple[int, int]) -> bool:
    slices, slot = part
    number = bucket_number(key)
    return slices == 1 or (number is not None and number % slices == slot)


VALID_RECORD = encode_record(
    user_id="alice", client_id="web", created_us=1_000, expires=2_000, current_jti="rt1"
).encode()
#: Records: valid, edge and corrupt. (Times above 4300 digits are apart: tasks.py raises there.)
RECORDS: list[bytes] = [
    VALID_RECORD,
    b"alice|web|1000|2000|rt1",  # short: a record of an older layout
    b"alice||1000|2000|rt1|||||",
    b"alice|web|1000|2000|rt1|a|b|c|d|e|f|g|h",  # extra parts
    b"alice|web|1000|",  # expires empty
    b"alice|web||2000|rt1",  # created empty
    b"alice|web|1000",  # three fields: not a record
    b"",
    b"|",
    b"|||",
    b"||||",
    b"alice|web|00999|01999|rt1",
    b"alice|web|12abc|2000|rt1",
    b"alice|web|1000|12abc|rt1",
    b"alice|web|-5|-5|rt1",
    b"alice|web| 1000|2000 |rt1",
    "alice|web|١٢|١٢|rt1".encode(),
    b"alice|web|" + b"9" * 30 + b"|" + b"9" * 30 + b"|rt1",
    b"alice|web|" + b"9" * 400 + b"|" + b"9" * 400,
    b"\xff\xfe|\xff|1000|2000|\xff",
    b"bob|web|1000|2000|rt1",
    b"alice|ios|1000|2000|rt1",
]
# Cut-offs and limits are times of now or earlier, below MAX_TIME: a time above it reads as
# MAX_TIME, so only a cut-off of MAX_TIME or more (the year 2255) would tell the two apart.
SELECTIONS = [
    (cutoff, user, client, after, before)
    for cutoff in (0, 999, 1000, 1001, 10**15, MAX_TIME - 1)
    for user in (None, b"alice", b"bob")
    for client in (None, b"web")
    for after, before in ((None, None), (1000, None), (None, 999), (500, 1500), (1001, 2000))
]
LIMITS = [0, 1, 12, 13, 1999, 2000, 2001, 1_700_000_000, 10**15, MAX_TIME - 1, MAX_TIME]


@pytest.mark.parametrize("value", RECORDS)
def test_record_readers_select_as_tasks_selection(value: bytes) -> None:
    """record_head + read_time select exactly the records tasks.Selection selects."""
    for selection in SELECTIONS:
        assert _new_selection(value, *selection) == _ref_selection(value, *selection), selection


@pytest.mark.parametrize("value", RECORDS)
def test_record_readers_expire_as_tasks_expired(value: bytes) -> None:
    """record_head + read_time find expired exactly the records tasks._expired finds."""
    for limit in LIMITS:
        assert _new_expired(value, limit) == _ref_expired(value, limit), limit


def test_record_head_splits_the_leading_fields() -> None:
    """record_head gives the escaped leading fields at their indexes, the rest unsplit."""
    head = record_head(VALID_RECORD)
    assert head is not None
    assert head[:RECORD_HEAD] == [b"alice", b"web", b"1000", b"2000"]
    assert [RECORD_FIELDS[i] for i in (RECORD_USER, RECORD_CLIENT)] == ["user", "client"]
    assert [RECORD_FIELDS[i] for i in (RECORD_CREATED, RECORD_EXPIRES)] == ["created", "expires"]
    assert head[RECORD_HEAD] == b"rt1|||||"
    assert record_head(b"a|b|c") is None
    assert record_head(b"a|b|c|") == [b"a", b"b", b"c", b""]


MARKS: list[bytes] = [
    b"1000|logout",
    b"1000",
    b"1000|",
    b"1000|a|b",
    b"00999|x",
    b"",
    b"|",
    b"|1000",
    b"12abc|x",
    b"-5|x",
    b" 1000|x",
    b"1.5e15",
    "١٢|x".encode(),
    b"\xff\xfe",
    b"1000|\xff",
    b"9" * 30 + b"|x",
    b"9" * 400,
    str(MAX_TIME).encode() + b"|x",
]


@pytest.mark.parametrize("value", MARKS)
def test_mark_time_ages_marks_as_tasks_mark_before(value: bytes) -> None:
    """mark_time finds older than a limit exactly the marks tasks._mark_before finds."""
    for limit in [*LIMITS, 999, 1000, 1001]:
        assert _new_mark_before(value, limit) == _ref_mark_before(value, limit), limit


def test_times_too_long_for_int_are_read_where_tasks_raises() -> None:
    """Where the tasks.py helpers raise (int() of over 4300 digits), the readers answer."""
    huge = b"9" * 5000
    record = b"alice|web|" + huge + b"|" + huge + b"|rt1"
    with pytest.raises(ValueError, match="digits"):
        _ref_expired(record, 10)
    with pytest.raises(ValueError, match="digits"):
        _ref_mark_before(huge, 10)
    assert not _new_expired(record, 10)
    assert not _new_selection(record, MAX_TIME - 1, None, None, None, None)
    assert not _new_mark_before(huge, 10)


BUCKET_KEYS: list[bytes] = [
    b"rv:{t:acme}:s:0",
    b"rv:{t:acme}:s:12",
    b"rv:{-}:s:65535",
    b"rv:{t:acme}:fr:12",
    b"rv:{t:acme}:fr:x0",
    b"rv:{t:a%3Ab}:fr:x1023",
    b"rv:{t:acme}:s:00012",
    b"rv:{t:acme}:s:",
    b"rv:{t:acme}:s:x",
    b"rv:{t:acme}:s:abc",
    b"rv:{t:acme}:s:-1",
    b"rv:{t:acme}:s:12a",
    b"rv:{t:acme}:s:1 ",
    "rv:{t:acme}:s:١٢".encode(),
    b"12",
    b"",
]


@pytest.mark.parametrize("key", BUCKET_KEYS)
def test_bucket_number_slices_as_tasks_in_slice(key: bytes) -> None:
    """bucket_number puts a key in exactly the slices tasks._in_slice puts it in."""
    for part in [(1, 0), (2, 0), (2, 1), (3, 0), (3, 2), (7, 5), (16, 12)]:
        assert _new_in_slice(key, part) == _ref_in_slice(key, part), part


def test_bucket_number_refuses_what_no_key_holds() -> None:
    """Deliberate differences from tasks._in_slice, on keys no version writes: more than one
    "x", or more digits than a bucket number has, are not bucket numbers (that helper read
    them, or raised past 4300 digits)."""
    for key in (b"rv:{t:a}:fr:xx5", b"rv:{t:a}:s:123456", b"rv:{t:a}:s:" + b"1" * 5000):
        assert bucket_number(key) is None
        assert not _new_in_slice(key, (2, 1))


@given(tenants, buckets, families)
def test_bucket_number_reads_every_bucket_key_keys_builds(
    tenant: str | None, bucket: int, family: str
) -> None:
    """bucket_number of a bucket key built here is the bucket number it was built from."""
    assert bucket_number(LAYOUT.session_bucket(tenant, bucket).encode()) == bucket
    assert bucket_number(LAYOUT.revoked_bucket(tenant, bucket).encode()) == bucket
    marks = LAYOUT.family_revoked(tenant, family).encode()
    number = bucket_number(marks)
    assert number is not None
    expected = family_bucket(family)
    if expected is None:
        expected = zlib.crc32(escape_id(family).encode()) % FOREIGN_BUCKETS
    assert number == expected


def test_bucket_key_lists_are_the_single_keys() -> None:
    """session_buckets / revoked_buckets build the keys session_bucket / revoked_bucket build."""
    assert LAYOUT.session_buckets("a:b", [3, 0]) == [
        LAYOUT.session_bucket("a:b", 3),
        LAYOUT.session_bucket("a:b", 0),
    ]
    assert LAYOUT.revoked_buckets(None, range(2)) == [
        LAYOUT.revoked_bucket(None, 0),
        LAYOUT.revoked_bucket(None, 1),
    ]
