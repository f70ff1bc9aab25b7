"""The change feed's key and entry format (keys.py): one encoder, one decoder, the TTL rule."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import make_settings
from revoker.keys import (
    DEFAULT_FEED_RETENTION,
    FEED_KINDS,
    MAX_ID_LENGTH,
    FeedEntry,
    KeyLayout,
    Lifetimes,
    decode_feed_entry,
    encode_feed_entry,
    escape_feed_id,
)


def test_feed_key_is_the_prefix_stream() -> None:
    """The feed is ``P:feed``, one untagged stream per prefix (as the contract names it)."""
    assert KeyLayout("acme").feed == "acme:feed"


def test_encode_writes_the_contract_fields_in_ascii() -> None:
    """Every field is present, ASCII, and in the contract's order and encoding."""
    fields = encode_feed_entry(
        "family", tenant_id="t:1", ids=["1f.a", "x,y"], value_us=12, expires=34, seq=5
    )
    assert list(fields) == ["k", "t", "i", "v", "x", "s"]
    assert fields == {
        "k": "family",
        "t": "t%3A1",
        "i": "1f.a,x%2Cy",
        "v": "12",
        "x": "34",
        "s": "5",
    }
    assert all(v.isascii() for v in fields.values())


def test_encode_defaults_are_empty_tenant_and_sequence() -> None:
    """No tenant and no sequence bump encode as empty strings, never "None"."""
    fields = encode_feed_entry("epoch")
    assert fields == {"k": "epoch", "t": "", "i": "", "v": "0", "x": "0", "s": ""}
    assert decode_feed_entry(fields) == FeedEntry("epoch", None, (), 0, 0, None)


def test_unknown_kind_is_refused_both_ways() -> None:
    """A kind outside FEED_KINDS is neither written nor read (the reader must resync)."""
    with pytest.raises(ValueError, match="kind"):
        encode_feed_entry("session")
    with pytest.raises(ValueError, match="kind"):
        decode_feed_entry({"k": "session", "t": "", "i": "", "v": "0", "x": "0", "s": ""})


@pytest.mark.parametrize(
    ("field", "value"),
    [("v", "-1"), ("v", "1.5"), ("x", ""), ("s", "abc"), ("v", "\uff11\uff12")],
)
def test_unreadable_numbers_are_refused(field: str, value: str) -> None:
    """A number that keys.read_time cannot read is a ValueError, not a silent 0."""
    fields = encode_feed_entry("jti", ids=["a"], value_us=1, expires=2, seq=3)
    fields[field] = value
    with pytest.raises(ValueError, match=repr(field)):
        decode_feed_entry(fields)


def test_missing_field_is_refused() -> None:
    """An entry missing a field names it."""
    fields = encode_feed_entry("jti", ids=["a"])
    del fields["x"]
    with pytest.raises(ValueError, match="'x'"):
        decode_feed_entry(fields)


def test_decode_reads_bytes_as_redis_returns_them() -> None:
    """redis-py returns bytes keys and values: they decode as the str form does."""
    fields = encode_feed_entry("user", tenant_id=None, ids=["bob"], value_us=7, expires=8, seq=9)
    raw = {a.encode(): b.encode() for a, b in fields.items()}
    assert decode_feed_entry(raw) == FeedEntry("user", None, ("bob",), 7, 8, 9)


@given(
    kind=st.sampled_from(sorted(FEED_KINDS)),
    tenant=st.none() | st.text(min_size=1, max_size=20),
    ids=st.lists(st.text(min_size=1, max_size=MAX_ID_LENGTH // 8), max_size=5),
    value=st.integers(0, 2**53 - 1),
    expires=st.integers(0, 2**40),
    seq=st.none() | st.integers(0, 2**53 - 1),
)
def test_round_trip(
    kind: str, tenant: str | None, ids: list[str], value: int, expires: int, seq: int | None
) -> None:
    """Decoding what was encoded gives back every id (commas, colons, non-ASCII included)."""
    try:
        fields = encode_feed_entry(
            kind, tenant_id=tenant, ids=ids, value_us=value, expires=expires, seq=seq
        )
    except ValueError:  # an id with a lone surrogate has no escape: refused, as keys refuse it
        return
    assert all(v.isascii() for v in fields.values())
    assert "," not in "".join(escape_feed_id(i) for i in ids)
    assert decode_feed_entry(fields) == FeedEntry(kind, tenant, tuple(ids), value, expires, seq)


def test_escaped_ids_are_used_as_given() -> None:
    """The bulk path escapes each id once and passes ``escaped=True``: not escaped twice."""
    fields = encode_feed_entry("family", ids=["a%2Cb"], escaped=True)
    assert fields["i"] == "a%2Cb"
    assert decode_feed_entry(fields).ids == ("a,b",)


def test_retention_setting_defaults_to_a_day_and_reaches_the_trim_point() -> None:
    """REVOKER_FEED_RETENTION (default DEFAULT_FEED_RETENTION) sets the MINID of each append."""
    assert make_settings().feed_retention == DEFAULT_FEED_RETENTION == 86400
    lifetimes = Lifetimes.from_settings(make_settings(feed_retention=600))
    assert lifetimes.feed_cutoff_id(10_000.5) == f"{int((10_000.5 - 600) * 1000)}-0"


def test_retention_setting_is_bounded() -> None:
    """A retention under a minute would trim what a mirror is reading; refused at load."""
    with pytest.raises(ValueError, match="feed_retention"):
        make_settings(feed_retention=5)


def test_feed_expiry_follows_the_ttl_rules() -> None:
    """``x`` is when the recorded state stops covering any token that can verify."""
    lt = Lifetimes.from_settings(make_settings())
    now = 1_000_000.25
    assert lt.feed_expiry("jti", now, now + 100) == math.ceil(now) + lt.jti_ttl(now + 100, now)
    assert lt.feed_expiry("jti", now) == math.ceil(now) + lt.jti_ttl(None, now)
    assert lt.feed_expiry("family", now) == math.ceil(now) + lt.family_ttl
    for kind in ("user", "tenant", "global"):
        assert lt.feed_expiry(kind, now) == math.ceil(now) + lt.watermark_ttl
    assert lt.feed_expiry("epoch", now) == 0
