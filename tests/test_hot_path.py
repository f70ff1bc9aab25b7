"""Speed-ups of the per-request path change no result: keys stay byte-for-byte the same."""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from revoker.keys import _SAFE_CHARS, escape_id


@given(
    st.text(
        alphabet=st.one_of(
            st.sampled_from("-._~@+=!$&'()*,;{}:%/ \x00é"), st.characters(codec="utf-8")
        ),
        min_size=1,
        max_size=40,
    )
)
def test_escape_fast_path_equals_quote(value: str) -> None:
    """Skipping quote() for plain ids gives the escape quote() gives: stored keys still match."""
    assert escape_id(value) == quote(value, safe=_SAFE_CHARS)


def test_every_single_character_escapes_as_quote_does() -> None:
    """Exhaustively over the first 1,024 code points (all of ASCII and then some)."""
    for code in range(1024):
        char = chr(code)
        assert escape_id(char) == quote(char, safe=_SAFE_CHARS), repr(char)
