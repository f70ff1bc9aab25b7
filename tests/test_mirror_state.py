"""The mirror's state without Redis: the compact family set, feed entries applied, and decisions
equal to rules.decide on the values the round-trip check would read."""

from __future__ import annotations

import secrets
import time
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from revoker.keys import decode_feed_entry, encode_feed_entry, encode_mark
from revoker.mirror._digests import MERGE_AT, DigestSet, DigestSetBuilder
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


def test_digest_set_finds_what_was_added_and_nothing_else() -> None:
    """Members are found in the frozen part and the recent part, before and after merges; random
    digests are not (no false positive in 50,000 tries)."""
    members = [secrets.token_bytes(16) for _ in range(20_000)]
    digests = DigestSet(members[:10_000])
    for digest in members[10_000:]:
        digests.add(digest)  # merges at least once (MERGE_AT)
    assert len(members) - 10_000 > MERGE_AT
    assert len(digests) == len(members)
    assert all(m in digests for m in members)
    assert not any(secrets.token_bytes(16) in digests for _ in range(50_000))
    digests.merge()
    assert all(m in digests for m in members)
    assert b"short" not in digests


def test_a_match_straddling_two_entries_is_no_match() -> None:
    """A digest whose tail appears across two stored neighbours is not reported present."""
    a = b"\x00\x00" + b"A" * 7 + b"B" * 7
    b = b"\x00\x00" + b"C" * 7 + b"D" * 7
    straddle = b"\x00\x00" + b"B" * 7 + b"C" * 7
    digests = DigestSetBuilder()
    digests.add(a)
    digests.add(b)
    built = digests.build()
    assert a in built
    assert b in built
    assert straddle not in built


def test_families_cost_under_16_bytes_each() -> None:
    """The frozen part of 200,000 families holds ~14.3 bytes per family."""
    builder = DigestSetBuilder()
    for _ in range(200_000):
        builder.add(secrets.token_bytes(16))
    assert builder.build().nbytes / 200_000 <= 16


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
) -> None:
    """For any ids (commas, braces, non-ASCII) and times around the token's iat, the mirror fed
    the feed entries of some revocations decides as rules.decide does on the values the round
    trip would read (the rule and the time; a family's time is not kept); revocations in another
    tenant revoke nothing here."""
    where = "elsewhere" if other_tenant else tenant
    state = MirrorState()
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


def test_families_hashed_from_their_fields_are_found_by_their_ids() -> None:
    """The snapshot's path (a bucket's raw fields, hashed and grouped in bulk, ~4 per group) and
    the check's (the id's digest) agree: every family is found, in its own tenant only, and a
    non-ASCII id by its UTF-8 bytes; spread over every group and first byte."""
    family_ids = [f"{n % 97:x}.f{n}" for n in range(300_000)] + ["1.é", "1.\U0001f600"]
    builder = StateBuilder()
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
