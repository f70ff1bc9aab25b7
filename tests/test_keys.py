"""The key layout: escaping cannot forge keys or move hash tags; TTL rules, as Redis sets them."""

from __future__ import annotations

import time
import zlib
from fnmatch import fnmatchcase
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from revoker.exceptions import InvalidIdentifier
from revoker.keys import (
    FOREIGN_BUCKETS,
    MAX_ID_LENGTH,
    NO_TENANT_TAG,
    RECORD_FIELDS,
    KeyLayout,
    bucket_of_user,
    decode_record,
    encode_record,
    escape_id,
    escape_part,
    family_bucket,
    family_id_prefix,
    family_ttl,
    jti_ttl,
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


def test_check_keys_span_at_most_two_slots() -> None:
    """The per-request check reads the jti's slot and the tenant's, nothing else."""
    keys = [k for k in LAYOUT.check_keys("j1", "acme", "alice", "f1") if k is not None]
    assert len(keys) == 4
    assert len({key_slot(k.encode()) for k in keys}) <= 2
    assert LAYOUT.check_keys("j1", None, "alice", None)[1:] == [
        None,
        LAYOUT.user_watermark(None, "alice"),
        None,
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
    # Audit and counters are the only keys allowed to live without a TTL.
    for key in sync_store.client.scan_iter(match=f"{s.key_prefix}:*"):
        name = key.decode()
        if name not in (keys.audit, keys.stats):
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
