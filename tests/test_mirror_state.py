"""The mirror's state without Redis: the compact family set, feed entries applied, and decisions
equal to rules.decide on the values the round-trip check would read."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revoker.keys import decode_feed_entry, encode_feed_entry, encode_mark
from revoker.mirror._digests import _BATCH, MERGE_AT, Digester, DigestSet, DigestSetBuilder
from revoker.mirror._state import LOOKUPS, MirrorState, StateBuilder
from revoker.rules import decide
from revoker.tokens import TokenData

NOW = time.time()
LATER = int(NOW) + 3600


def token(
    *,
    jti: str = "j1",
    sub: str = "alice",
    tenant: str | None = "acme",
    family: str | None = None,
    iat: float = NOW,
) -> TokenData:
    """Verified claims as the check hands them on."""
    return TokenData(
        sub=sub, jti=jti, typ="access", iat=iat, exp=int(iat) + 900, tenant=tenant, family=family
    )


def entry(kind: str, **fields: object) -> object:
    """A feed entry as the writers encode it and the mirror decodes it."""
    return decode_feed_entry(encode_feed_entry(kind, **fields))  # type: ignore[arg-type]


def digest_of(top: int, low: bytes) -> int:
    """The digest (signed 64-bit) whose unsigned top 16 bits are ``top`` and low 48 ``low``."""
    return int.from_bytes(low + top.to_bytes(2, "little"), "little", signed=True)


def random_digests(count: int) -> list[int]:
    """Digests as ``hash`` gives them: signed 64-bit ints, every top byte and sign."""
    return [int.from_bytes(secrets.token_bytes(8), "little", signed=True) for _ in range(count)]


def test_digest_set_finds_what_was_added_and_nothing_else() -> None:
    """Members are found in the frozen part and the recent part, before and after merges (the
    extremes and both signs included); random digests and non-digests are not (no false
    positive in 50,000 tries)."""
    members = [*random_digests(20_000), -(1 << 63), (1 << 63) - 1, 0, -1, 1]
    digests = DigestSet(members[:10_000])
    for digest in members[10_000:]:
        digests.add(digest)  # merges at least once (MERGE_AT)
    assert len(members) - 10_000 > MERGE_AT
    assert len(digests) == len(members)
    assert all(m in digests for m in members)
    assert not any(d in digests for d in random_digests(50_000))
    digests.merge()
    assert len(digests._recent) == 0
    assert all(m in digests for m in members)
    assert not any(d in digests for d in random_digests(50_000))
    for other in (b"short", 1 << 63, -(1 << 63) - 1, 1 << 80, 0.0, "0", None):
        assert other not in digests
    with pytest.raises(ValueError, match="signed 64-bit"):
        digests.add(1 << 63)


def test_a_match_straddling_two_entries_is_no_match() -> None:
    """A digest whose stored part appears across two stored neighbours is not reported
    present."""
    a = digest_of(0, b"AAABBB")
    b = digest_of(0, b"CCCDDD")
    straddle = digest_of(0, b"BBBCCC")
    digests = DigestSetBuilder()
    digests.add(a)
    digests.add(b)
    built = digests.build()
    assert a in built
    assert b in built
    assert straddle not in built
    built.add(straddle)  # in the recent part, then merged into the group
    built.merge()
    assert straddle in built
    assert digest_of(0, b"AABBBC") not in built


def test_digests_sharing_a_group_or_a_stored_part_are_told_apart() -> None:
    """Digests in one group (same top 16 bits) differ by their stored 48 bits, and digests with
    the same 48 bits differ by their group (the implied top bits, the sign included): each is
    found only as itself, frozen and merged alike."""
    low = b"\x01\x02\x03\x04\x05\x06"
    same_low = [digest_of(top, low) for top in (0x0000, 0x0001, 0x0100, 0x7FFF, 0x8000, 0xFFFF)]
    same_group = [digest_of(0x8001, bytes([n]) * 6) for n in range(40)]
    half = DigestSet(same_low[::2] + same_group[::2])
    for one in same_low[1::2] + same_group[1::2]:
        assert one not in half
        half.add(one)
    half.merge()
    everything = DigestSet(same_low + same_group)
    for built in (half, everything):
        assert all(one in built for one in same_low + same_group)
        assert digest_of(0x0002, low) not in built
        assert digest_of(0x8001, bytes([41]) * 6) not in built
        assert digest_of(0x8000, bytes([1]) * 6) not in built


def test_a_build_groups_every_digest_by_its_top_16_bits() -> None:
    """The builder's batches (negatives first in their sorted order) end up in unsigned group
    order: the index is monotone, each group's range holds exactly its digests' low 48 bits,
    duplicates count but change no answer."""
    values = random_digests(70_000)
    builder = DigestSetBuilder()
    for at in range(0, len(values), 7_000):
        builder.add_all(iter(values[at : at + 7_000]))
    builder.add_all(values[:10])  # duplicates
    assert len(builder) == len(values) + 10
    assert len(builder._pending) < _BATCH
    builder.add_all(iter(values[:0]))
    built = builder.build()
    assert len(builder) == 0
    index = built._index
    assert index is not None
    assert index[0] == 0
    assert index[-1] == len(built) == len(values) + 10
    assert all(a <= b for a, b in pairwise(index))
    by_group: dict[int, set[bytes]] = {}
    for value in values:
        unsigned = value & 0xFFFF_FFFF_FFFF_FFFF
        by_group.setdefault(unsigned >> 48, set()).add(unsigned.to_bytes(8, "little")[:6])
    for group in (0, 1, 0x7FFF, 0x8000, 0xFFFF, *list(by_group)[:500]):
        stored = bytes(built._buffer[index[group] * 6 : index[group + 1] * 6])
        assert {stored[at : at + 6] for at in range(0, len(stored), 6)} == by_group.get(
            group, set()
        )
    assert all(v in built for v in values)


def test_a_builder_holds_at_most_a_batch_of_ints() -> None:
    """However many digests one call hands in (a generator of 100,000), the builder holds at
    most one batch of them as ints; all are found after the build."""
    values = random_digests(100_000)
    builder = DigestSetBuilder()
    seen = []

    def handed() -> Iterator[int]:
        for value in values:
            seen.append(len(builder._pending))
            yield value

    builder.add_all(handed())
    assert max(seen) < _BATCH
    built = builder.build()
    assert len(built) == len(values)
    assert all(v in built for v in values[::97])


def test_families_cost_about_6_bytes_each() -> None:
    """The frozen part of 200,000 families holds 6 bytes per family plus the group index
    (~6.26 B each at a million)."""
    builder = DigestSetBuilder()
    builder.add_all(random_digests(200_000))
    built = builder.build()
    assert built.nbytes == 6 * 200_000 + 4 * 65_537
    assert built.nbytes / 200_000 < 7.5


@pytest.mark.parametrize("keyed", [True, False], ids=["hash", "blake2b"])
def test_digests_in_bulk_equal_digests_one_by_one(keyed: bool) -> None:
    """Either implementation: of_all over raw fields equals of the joined bytes (the snapshot's
    digests are the check's), gives signed 64-bit ints, and depends on the prefix."""
    fields = [b"", b"a", b"3.f1", "é\U0001f600".encode(), secrets.token_bytes(40)]
    digester = Digester(secrets.token_bytes(16), keyed=keyed)
    bulk = list(digester.of_all(b"t:acme\0", fields))
    assert bulk == [digester.of(b"t:acme\0" + field) for field in fields]
    assert all(-(1 << 63) <= d < (1 << 63) for d in bulk)
    assert len(set(bulk)) == len(bulk)
    other = Digester(secrets.token_bytes(16), keyed=keyed)
    assert not set(bulk) & set(other.of_all(b"t:acme\0", fields))
    again = Digester(digester.prefix, keyed=keyed)
    assert list(again.of_all(b"t:acme\0", fields)) == bulk


def test_hash_keyed_digests_are_hash_and_the_fallback_is_blake2b() -> None:
    """The fast digest is the builtin hash of prefix and data; the fallback is BLAKE2b keyed by
    the prefix, 8 bytes little-endian signed: two different functions."""
    prefix = secrets.token_bytes(16)
    assert Digester(prefix, keyed=True).of(b"x") == hash(prefix + b"x")
    blake = hashlib.blake2b(b"x", digest_size=8, key=prefix).digest()
    assert Digester(prefix, keyed=False).of(b"x") == int.from_bytes(blake, "little", signed=True)


@pytest.mark.parametrize(
    ("seed", "keyed"), [(None, True), ("random", True), ("", True), ("0", False), ("123", False)]
)
def test_a_fixed_hash_seed_makes_digests_blake2b(seed: str | None, keyed: bool) -> None:
    """hash() is keyed only while PYTHONHASHSEED leaves the secret random: with a fixed seed
    (predictable hashes) a process's digests are BLAKE2b's."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    if seed is not None:
        env["PYTHONHASHSEED"] = seed
    out = subprocess.run(
        [sys.executable, "-c", "from revoker.mirror._digests import HASH_KEYED as k; print(k)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == str(keyed)


def test_epoch_entries_ask_for_a_resync_and_expired_entries_are_skipped() -> None:
    """An epoch entry is not applied (apply says resync); an entry past its expiry changes
    nothing."""
    state = MirrorState()
    assert state.apply(entry("epoch"), NOW) is False  # type: ignore[arg-type]
    assert state.apply(entry("jti", ids=["gone"], value_us=1, expires=int(NOW) - 1), NOW)  # type: ignore[arg-type]
    assert state.jtis == {}


def test_a_jti_keeps_its_first_time_and_its_latest_expiry_then_is_forgotten() -> None:
    """A repeated jti revocation keeps the earliest time (as Redis's NX keeps it) and the latest
    expiry; a sweep past that expiry forgets it."""
    state = MirrorState()
    state.add_jti("j1", 200, LATER)
    state.add_jti("j1", 300, LATER + 10)
    status = state.status(token(jti="j1"))
    assert (status.rule, status.revoked_at) == ("jti", 200 / 1e6)
    assert state.sweep(LATER + 5) == 0
    assert state.sweep(LATER + 11) == 1
    assert not state.status(token(jti="j1"))


def test_watermarks_only_move_forward() -> None:
    """An older watermark entry applied after a newer one does not lower the cut-off."""
    state = MirrorState()
    state.add_user("t:acme", "alice", 500, LATER)
    state.add_user("t:acme", "alice", 100, LATER)
    assert state.status(token(iat=400 / 1e6)).rule == "user"


ids = st.text(alphabet="ab,{}:%é 1", min_size=1, max_size=6)
maybe_us = st.one_of(st.none(), st.integers(min_value=1, max_value=3_000_000))


@settings(max_examples=300, deadline=None)
@given(
    jti=ids,
    sub=ids,
    tenant=st.one_of(st.none(), ids),
    family=st.one_of(st.none(), ids),
    iat_us=st.integers(min_value=1, max_value=3_000_000),
    jti_at=maybe_us,
    family_revoked=st.booleans(),
    user_wm=maybe_us,
    tenant_wm=maybe_us,
    global_wm=maybe_us,
    other_tenant=st.booleans(),
    keyed=st.booleans(),
)
def test_decisions_equal_rules_decide_on_the_same_data(
    jti: str,
    sub: str,
    tenant: str | None,
    family: str | None,
    iat_us: int,
    jti_at: int | None,
    family_revoked: bool,
    user_wm: int | None,
    tenant_wm: int | None,
    global_wm: int | None,
    other_tenant: bool,
    keyed: bool,
) -> None:
    """For any ids (commas, braces, non-ASCII) and times around the token's iat, the mirror fed
    the feed entries of some revocations decides as rules.decide does on the values the round
    trip would read (the rule and the time; a family's time is not kept); revocations in another
    tenant revoke nothing here. Either digest implementation."""
    where = "elsewhere" if other_tenant else tenant
    state = MirrorState(keyed=keyed)
    values: list[str | None] = [None, None, None, None, None]
    entries = []
    if jti_at is not None:
        entries.append(entry("jti", ids=[jti], value_us=jti_at, expires=LATER))
        values[0] = encode_mark(jti_at)
    if family_revoked and family is not None:
        entries.append(entry("family", tenant_id=where, ids=[family], value_us=7, expires=LATER))
        values[1] = encode_mark(7) if where == tenant else None
    if user_wm is not None:
        entries.append(entry("user", tenant_id=where, ids=[sub], value_us=user_wm, expires=LATER))
        values[2] = encode_mark(user_wm) if where == tenant else None
    if tenant_wm is not None and where is not None:
        entries.append(entry("tenant", tenant_id=where, value_us=tenant_wm, expires=LATER))
        values[3] = encode_mark(tenant_wm) if where == tenant else None
    if global_wm is not None:
        entries.append(entry("global", value_us=global_wm))
        values[4] = encode_mark(global_wm)
    for one in entries:
        assert state.apply(one, NOW)  # type: ignore[arg-type]
    checked = token(jti=jti, sub=sub, tenant=tenant, family=family, iat=iat_us / 1e6)
    expected = decide(checked.iat, values)
    got = state.status(checked)
    assert (got.revoked, got.rule) == (expected.revoked, expected.rule)
    if got.rule != "family":
        assert got.revoked_at == expected.revoked_at


@pytest.mark.parametrize("keyed", [True, False], ids=["hash", "blake2b"])
def test_families_hashed_from_their_fields_are_found_by_their_ids(keyed: bool) -> None:
    """The snapshot's path (a bucket's raw fields, hashed and grouped in bulk, ~4 per group) and
    the check's (the id's digest) agree: every family is found, in its own tenant only, and a
    non-ASCII id by its UTF-8 bytes; spread over every group and first byte. Either digest
    implementation."""
    family_ids = [f"{n % 97:x}.f{n}" for n in range(300_000)] + ["1.é", "1.\U0001f600"]
    builder = StateBuilder(keyed=keyed)
    for at in range(0, len(family_ids), 20_000):
        part = family_ids[at : at + 20_000]
        builder.add_family_fields("t:acme", [one.encode() for one in part])
    builder.add_families("t:other", ["9.only-other"])
    state = builder.build()
    assert len(state.families) == len(family_ids) + 1
    assert all(state.status(token(family=one)).rule == "family" for one in family_ids)
    assert not state.status(token(family="9.only-other"))
    assert state.status(token(family="9.only-other", tenant="other")).rule == "family"
    assert not any(state.status(token(family=f"0.absent{n}")) for n in range(20_000))
    index = state.families._index
    assert index is not None
    assert index[0] == 0
    assert index[-1] == len(family_ids) + 1
    assert all(a <= b for a, b in pairwise(index))


def test_remembered_lookups_never_hide_a_later_revocation() -> None:
    """The state remembers what a token is looked up by, never its answer: a token checked
    before its jti, family or user is revoked is revoked right after; the memory stays bounded."""
    state = MirrorState()
    checked = token(jti="j-late", family="3.f-late", sub="sam")
    assert not state.status(checked).revoked
    assert not state.status(checked).revoked  # from the remembered lookup
    assert state.apply(entry("jti", ids=["j-late"], value_us=5, expires=LATER), NOW)  # type: ignore[arg-type]
    assert state.status(checked).rule == "jti"
    other = token(jti="j-other", family="3.f-late", sub="sam")
    assert not state.status(other).revoked
    state.add_family("t:acme", "3.f-late")
    assert state.status(other).rule == "family"
    for n in range(LOOKUPS + 10):
        state.status(token(jti=f"j{n}"))
    assert len(state._lookups) <= LOOKUPS
    assert state.status(checked).rule == "jti"


def test_every_change_a_check_reads_takes_a_new_version() -> None:
    """A jti, family, user, tenant or global entry applied, and a sweep that forgets something,
    each give the state a version never seen before (the warm path's memo is only valid at the
    version it admitted a token at); a sweep that forgets nothing keeps it; two states never
    share one."""
    state = MirrorState()
    seen = {state.version, MirrorState(state.key).version}
    assert len(seen) == 2
    changes = [
        entry("jti", ids=["j-gone"], value_us=5, expires=int(NOW) + 2),
        entry("family", tenant_id="acme", ids=["3.f"], value_us=5, expires=LATER),
        entry("user", tenant_id="acme", ids=["sam"], value_us=5, expires=LATER),
        entry("tenant", tenant_id="acme", value_us=5, expires=LATER),
        entry("global", value_us=5),
    ]
    for change in changes:
        before = state.version
        assert state.apply(change, NOW)  # type: ignore[arg-type]
        assert state.version != before
        assert state.version not in seen
        seen.add(state.version)
    unchanged = state.version
    assert state.sweep(NOW) == 0
    assert state.version == unchanged
    assert state.sweep(NOW + 10) == 1  # the jti's expiry passed
    assert state.version not in seen


@pytest.mark.parametrize("keyed", [True, False], ids=["hash", "blake2b"])
def test_a_lookup_is_valid_for_every_state_of_the_same_key(keyed: bool) -> None:
    """What check.py memoizes per token (a Lookup, named by the state's key object) gives the
    same answers in a later state of the same key (a resync's), families from the snapshot
    included; a state of another key looks the token up by other digests."""
    key = secrets.token_bytes(16)
    first = MirrorState(key, keyed=keyed)
    checked = token(jti="j-memo", family="5.f-memo")
    lookup = first.lookup_of(checked)
    assert first.admits(lookup)
    builder = StateBuilder(key, keyed=keyed)
    builder.add_family_fields("t:acme", [b"5.f-memo"])
    later = builder.build()
    assert later.key is key
    assert later.lookup_of(checked) == lookup
    assert not later.admits(lookup)
    assert later.status(checked).rule == "family"
    later.add_jti("j-memo", 3, LATER)
    assert lookup[0] in later.jtis
    other = MirrorState(keyed=keyed)
    assert other.key is not key
    assert other.lookup_of(checked)[:2] != lookup[:2]


def test_the_memory_estimate_of_jtis_is_close_to_what_they_take() -> None:
    """nbytes counts a jti as a dict entry from an int digest to an int: within 30% of what
    tracemalloc sees 20,000 of them allocate."""
    state = MirrorState()
    before = state.nbytes
    jtis = [f"j{n}" for n in range(20_000)]
    tracemalloc.start()
    try:
        for jti in jtis:
            state.add_jti(jti, 1, LATER)
        taken, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all(type(k) is int for k in state.jtis)
    estimate = state.nbytes - before
    assert 0.7 < estimate / taken < 1.3
