"""decide(): which rule revokes a token, watermark arithmetic in microseconds, corrupt values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from revoker.keys import MAX_TIME
from revoker.rules import NOT_REVOKED, RevocationStatus, decide, encode_mark, now_us, to_us

T = 1_700_000_000.5  # a watermark half a second into a second
T_US = to_us(T)


def values(
    jti: str | bytes | None = None,
    family: str | bytes | None = None,
    user: str | bytes | None = None,
    tenant: str | bytes | None = None,
) -> list[str | bytes | None]:
    return [jti, family, user, tenant]


def test_nothing_stored_is_not_revoked() -> None:
    """No key present: not revoked, and falsy."""
    status = decide(T, values())
    assert status == NOT_REVOKED
    assert not status
    assert status.rule is None


def test_jti_wins_over_every_other_rule() -> None:
    """A revoked jti is reported as such even when every other rule also matches."""
    status = decide(
        T,
        values(
            encode_mark(T_US, "logout"),
            encode_mark(T_US, "x"),
            encode_mark(T_US + 10),
            encode_mark(T_US + 10),
        ),
    )
    assert status == RevocationStatus(True, "jti", T, "logout")


def test_family_wins_over_watermarks() -> None:
    """Without a jti entry, a revoked family comes before the watermarks."""
    status = decide(T, values(family=b"1700000000500000|reuse", user=encode_mark(T_US + 10)))
    assert (status.rule, status.reason, status.revoked_at) == ("family", "reuse", T)


@pytest.mark.parametrize(
    ("user", "tenant", "rule", "cutoff"),
    [
        (T_US + 5, T_US + 9, "tenant", T_US + 9),
        (T_US + 9, T_US + 5, "user", T_US + 9),
        (T_US + 9, None, "user", T_US + 9),
        (None, T_US + 9, "tenant", T_US + 9),
    ],
)
def test_effective_cutoff_is_the_max_of_the_watermarks(
    user: int | None, tenant: int | None, rule: str, cutoff: int
) -> None:
    """The later of user and tenant watermark decides, and names itself as the rule."""
    iat = (T_US + 7) / 1e6  # after the earlier watermark, before the later one
    status = decide(
        iat,
        values(
            user=None if user is None else encode_mark(user),
            tenant=None if tenant is None else encode_mark(tenant),
        ),
    )
    later = max(x for x in (user, tenant) if x is not None)
    if to_us(iat) <= later:
        assert (status.revoked, status.rule, status.revoked_at) == (True, rule, cutoff / 1e6)
    else:
        assert not status


def test_earlier_watermark_does_not_hide_a_later_one() -> None:
    """A token after the user watermark but before the tenant's is revoked by the tenant."""
    iat = (T_US + 5) / 1e6
    status = decide(iat, values(user=encode_mark(T_US), tenant=encode_mark(T_US + 10)))
    assert status.rule == "tenant"


def test_iat_equal_to_the_watermark_is_revoked() -> None:
    """iat == watermark counts as issued before it: revoked."""
    assert decide(T, values(user=encode_mark(T_US))).rule == "user"
    assert decide(T, values(tenant=encode_mark(T_US))).rule == "tenant"


def test_one_microsecond_after_the_watermark_passes() -> None:
    """A token issued 1 µs after the cut-off is valid."""
    assert not decide((T_US + 1) / 1e6, values(user=encode_mark(T_US), tenant=encode_mark(T_US)))


def test_whole_second_iat_in_the_same_second_is_revoked() -> None:
    """A foreign whole-second iat in the watermark's second falls on the safe side."""
    assert decide(1_700_000_000, values(user=encode_mark(T_US))).revoked
    assert not decide(1_700_000_001, values(user=encode_mark(T_US))).revoked


@given(st.integers(min_value=0, max_value=4_102_444_800_000_000))
def test_microseconds_survive_the_float_round_trip(us: int) -> None:
    """iat written as us/1e6 (as tokens carry it) reads back as exactly us."""
    assert to_us(us / 1_000_000) == us


@given(st.integers(min_value=1, max_value=4_102_444_800_000_000), st.integers(-3, 3))
def test_watermark_comparison_is_exact_at_microseconds(wm: int, delta: int) -> None:
    """Revoked exactly when iat_us <= watermark_us, for iats around the watermark."""
    status = decide((wm + delta) / 1e6, values(user=encode_mark(wm)))
    assert status.revoked == (delta <= 0)


@pytest.mark.parametrize("raw", [b"garbage", b"\xff\xfe\x00", "", "|", "12abc|x", b"-5"])
def test_corrupt_jti_or_family_value_still_revokes(raw: str | bytes) -> None:
    """An unreadable jti or family entry is revoked (presence is what counts), never a crash."""
    for index, rule in ((0, "jti"), (1, "family")):
        vals: list[str | bytes | None] = [None, None, None, None]
        vals[index] = raw
        status = decide(T, vals)
        assert (status.revoked, status.rule) == (True, rule)


@pytest.mark.parametrize("raw", [b"garbage", b"\xff\xfe", "", "1.5e15"])
def test_corrupt_watermark_is_no_cutoff_and_no_crash(raw: str | bytes) -> None:
    """An unreadable watermark revokes nothing (as the Lua scripts read it) and never raises."""
    assert not decide(T, values(user=raw, tenant=raw))
    assert decide(T, values(user=raw, tenant=encode_mark(T_US))).rule == "tenant"


def test_mark_encoding_round_trips_reason_and_time() -> None:
    """encode_mark's value decodes to the same time and reason; no reason reads as None."""
    assert encode_mark(T_US, "why") == f"{T_US}|why"
    status = decide(T, values(jti=encode_mark(T_US)))
    assert (status.revoked_at, status.reason) == (T, None)
    status = decide(T, values(jti=encode_mark(T_US, "a|b").encode()))
    assert status.reason == "a|b"


def test_now_us_is_integer_microseconds() -> None:
    """now_us is an int close to time.time() in µs."""
    import time

    before = to_us(time.time())
    value = now_us()
    assert isinstance(value, int)
    assert before - 1000 <= value <= to_us(time.time()) + 1000


def test_watermark_reason_is_reported_by_the_level_that_set_the_cutoff() -> None:
    """The status of a watermark revocation carries the reason stored with that watermark."""
    user = encode_mark(2_000_000, "offboarding")
    tenant = encode_mark(1_000_000, "breach")
    status = decide(1.5, [None, None, user, tenant])
    assert (status.rule, status.reason) == ("user", "offboarding")
    status = decide(0.5, [None, None, encode_mark(500_000, "old"), tenant])
    assert (status.rule, status.reason) == ("tenant", "breach")


@pytest.mark.parametrize("raw", ["-5|x", " 12|x", "+12|x", "١٢|x", b"9" * 5000])
def test_mark_time_is_read_by_the_keys_rule(raw: str | bytes) -> None:
    """decide reads a mark's time as keys.read_time does: a sign, a space or a non-ASCII digit
    is unreadable (revoked_at unknown); thousands of digits cap instead of raising."""
    status = decide(T, values(jti=raw))
    assert status.revoked
    text = raw if isinstance(raw, str) else raw.decode()
    assert status.revoked_at == (None if "|" in text else MAX_TIME / 1e6)


def test_huge_watermark_cuts_off_up_to_max_time_only() -> None:
    """A watermark of more digits than any time reads as MAX_TIME: it revokes every token issued
    up to then, and, as in the Lua scripts, none issued after."""
    huge = "9" * 400 + "|x"
    assert decide(9e9, values(user=huge)).revoked_at == MAX_TIME / 1e6
    assert not decide(1e10, values(user=huge))
