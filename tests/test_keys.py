"""The key layout: escaping cannot forge keys or move hash tags; TTL rules, as Redis sets them."""

from __future__ import annotations

import time
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from revoker.exceptions import InvalidIdentifier
from revoker.keys import (
    MAX_ID_LENGTH,
    NO_TENANT_TAG,
    KeyLayout,
    escape_id,
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
LAYOUT = KeyLayout("rv")
#: Which of (tenant, user, family, jti) each kind of key is built from.
KEY_IDS = {
    "jti": (3,),
    "job": (3,),
    "family": (0, 2),
    "family_revoked": (0, 2),
    "user_watermark": (0, 1),
    "tenant_watermark": (0,),
    "tenant_index": (0,),
    "user_index": (0, 1),
    "frozen_index": (0, 3),
}


def hash_tag(key: str) -> str:
    """What Redis Cluster hashes: the text between the first '{' and the next '}'."""
    start = key.index("{")
    return key[start + 1 : key.index("}", start + 1)]


def all_keys(tenant: str | None, user: str, family: str, jti: str) -> dict[str, str]:
    return {
        "jti": LAYOUT.jti(jti),
        "family": LAYOUT.family(tenant, family),
        "family_revoked": LAYOUT.family_revoked(tenant, family),
        "user_watermark": LAYOUT.user_watermark(tenant, user),
        "tenant_watermark": LAYOUT.tenant_watermark(tenant),
        "tenant_index": LAYOUT.tenant_index(tenant),
        "user_index": LAYOUT.user_index(tenant, user),
        "job": LAYOUT.job(jti),
        "frozen_index": LAYOUT.frozen_index(tenant, jti),
    }


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


@given(tenants, ids, ids, ids)
def test_no_id_can_change_a_hash_tag(tenant: str | None, user: str, family: str, jti: str) -> None:
    """Tenant keys are tagged by the tenant alone, the jti key by the jti alone."""
    keys = all_keys(tenant, user, family, jti)
    tag = NO_TENANT_TAG if tenant is None else "t:" + escape_id(tenant)
    for name in ("family", "family_revoked", "user_watermark", "tenant_watermark"):
        assert hash_tag(keys[name]) == tag, name
    for name in ("tenant_index", "user_index", "frozen_index"):
        assert hash_tag(keys[name]) == tag, name
    assert hash_tag(keys["jti"]) == escape_id(jti)
    # One pair of braces per key: nothing an id contains opens a second tag.
    assert all(key.count("{") == key.count("}") == 1 for key in keys.values())


@given(
    st.tuples(tenants, ids, ids, ids),
    st.tuples(tenants, ids, ids, ids),
)
def test_no_ids_can_forge_another_key(
    first: tuple[str | None, str, str, str], second: tuple[str | None, str, str, str]
) -> None:
    """Two different sets of ids never produce the same key, of any kind."""
    a = all_keys(*first)
    b = all_keys(*second)
    # Within one set every kind of key is distinct.
    assert len(set(a.values())) == len(a)
    for kind_a, key_a in a.items():
        for kind_b, key_b in b.items():
            if key_a == key_b:
                # Only the same kind of key built from the same ids may coincide.
                assert kind_a == kind_b
                used = KEY_IDS[kind_a]
                assert [first[i] for i in used] == [second[i] for i in used]


@given(tenants, ids, ids, ids)
def test_tenant_keys_share_one_slot(tenant: str | None, user: str, family: str, jti: str) -> None:
    """Every key of one tenant lands in one Redis Cluster slot."""
    keys = all_keys(tenant, user, family, jti)
    slots = {
        key_slot(keys[name].encode())
        for name in (
            "family",
            "family_revoked",
            "user_watermark",
            "tenant_watermark",
            "tenant_index",
            "user_index",
            "frozen_index",
        )
    }
    assert len(slots) == 1


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
    assert LAYOUT.family_revoked(None, "f1") == "rv:{-}:fr:f1"
    assert LAYOUT.tenant_watermark("a:b{c}") == "rv:{t:a%3Ab%7Bc%7D}:tw"


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
