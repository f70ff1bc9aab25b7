"""Speed-ups of the per-request path change no result: keys stay byte-for-byte the same."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import quote

import fakeredis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import make_settings
from revoker import exceptions as exc
from revoker.check import bearer_token
from revoker.keys import _SAFE_CHARS, KeyLayout, escape_id
from revoker.store import RedisTokenRevocationStore
from revoker.store._async import CHECK_CALLS
from revoker.store._base import StoreCore
from revoker.tokens import TokenData, create_access_token, get_verifier


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


def _bearer_by_the_full_rule(value: bytes) -> str | None:
    """bearer_token's rule for one Authorization value, as written before its one-regex path."""
    scheme, _, credentials = value.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    credentials = credentials.strip()
    if not credentials:
        raise exc.MalformedToken("bearer token is empty")
    if re.fullmatch(rb"[A-Za-z0-9\-._~+/]+=*", credentials) is None:
        raise exc.MalformedToken("bearer token has characters a JWT cannot contain")
    return credentials.decode("ascii")


def _outcome(read: Callable[[], str | None]) -> object:
    try:
        return read()
    except exc.TokenError as e:
        return type(e), str(e)


@given(
    st.sampled_from([b"Bearer", b"bearer", b"BEARER", b"bEaReR", b"Basic", b"Bearerx", b""]),
    st.sampled_from([b" ", b"  ", b"\t", b"", b" \t"]),
    st.one_of(
        st.text(alphabet="AZaz09-._~+/", max_size=30).map(str.encode),  # b64token characters
        st.binary(max_size=30),
    ),
    st.sampled_from([b"", b" ", b"=", b"==", b"\t", b" x"]),
    st.sampled_from([b"", b" ", b"\t"]),
)
def test_bearer_fast_path_reads_as_the_full_rule(
    scheme: bytes, gap: bytes, token: bytes, tail: bytes, lead: bytes
) -> None:
    """A plain ``Bearer <b64token>`` read by one regex gives what the full rule gives, and every
    other spelling (case, tabs, doubled spaces, padding, junk) still reads by the full rule."""
    value = lead + scheme + gap + token + tail
    got = _outcome(lambda: bearer_token([(b"authorization", value)]))
    assert got == _outcome(lambda: _bearer_by_the_full_rule(value))
    assert _outcome(lambda: bearer_token([(b"Authorization", value)])) == got


def test_remembered_authorization_values_are_bounded_and_skip_no_rule() -> None:
    """A recurring Authorization value gives the same token (the same string); the values
    remembered stay within their bound, a long one is not remembered, and a repeated header
    or an oversized value is refused whatever was remembered."""
    from revoker import check

    value = b"Bearer abc.def.ghi"
    first = bearer_token([(b"authorization", value)])
    assert first == "abc.def.ghi"
    assert bearer_token([(b"host", b"x"), (b"authorization", bytes(value))]) is first
    with pytest.raises(exc.MalformedToken, match="more than one"):
        bearer_token([(b"authorization", value), (b"Authorization", value)])
    for n in range(check._BEARERS_SIZE + 10):
        assert bearer_token([(b"authorization", b"Bearer t%d" % n)]) == f"t{n}"
    assert len(check._BEARERS) <= check._BEARERS_SIZE
    long = b"Bearer " + b"x" * check._BEARERS_VALUE_BYTES
    assert bearer_token([(b"authorization", long)]) == "x" * check._BEARERS_VALUE_BYTES
    assert long not in check._BEARERS
    with pytest.raises(exc.TokenTooLarge):
        bearer_token([(b"authorization", b"Bearer " + b"x" * 9000)])


ids = st.text(alphabet=st.sampled_from("ab:{}%,é.-_1f"), min_size=1, max_size=12)


@given(ids, st.none() | ids, ids, st.none() | ids | st.sampled_from(["1f.x", "0.y", "ffff.z"]))
def test_check_keys_are_the_layouts_own_keys(
    jti: str, tenant: str | None, user: str, family: str | None
) -> None:
    """check_keys (the tenant tag escaped once) names the keys the layout's own methods name,
    which the writers use: a revocation is written where the check reads."""
    layout = KeyLayout("p")
    assert layout.check_keys(jti, tenant, user, family) == [
        layout.jti(jti),
        None if family is None else layout.family_revoked(tenant, family),
        layout.user_watermark(tenant, user),
        None if tenant is None else layout.tenant_watermark(tenant),
        layout.global_watermark,
    ]


@given(ids, st.none() | ids, ids, st.none() | st.sampled_from(["1f.x", "0.y", "foreign"]))
def test_ordered_check_args_are_check_args(
    jti: str, tenant: str | None, user: str, family: str | None
) -> None:
    """The single-Redis check's ARGV from the known key order equals check_args's search."""
    core = StoreCore(make_settings(key_prefix="p"))
    token = TokenData(sub=user, jti=jti, typ="access", iat=1.0, exp=2, tenant=tenant, family=family)
    present = [key for key in core.check_keys(token) if key is not None]
    present.append(core.keys.integrity)
    assert core.ordered_check_args(token, present) == core.check_args(token, present)


def test_a_cached_token_is_no_token_of_the_other_type() -> None:
    """The verify cache is keyed by the token string alone: an access token it holds is still
    refused as a refresh token (WrongTokenType), and still served as an access token."""
    s = make_settings(verify_cache_size=10)
    verifier = get_verifier(s)
    token, _ = create_access_token("alice", settings=s)
    first = verifier.decode(token, "access", use_cache=True)
    with pytest.raises(exc.WrongTokenType):
        verifier.decode(token, "refresh", use_cache=True)
    assert verifier.cached(token, "refresh") is None
    assert verifier.decode(token, "access", use_cache=True) is first


async def test_remembered_check_calls_are_bounded_and_hold_no_answer() -> None:
    """A store remembers a recurring token's check keys (never its answer): a token checked,
    then revoked, is revoked at its next check; the memory stays within CHECK_CALLS."""
    settings = make_settings()
    store = RedisTokenRevocationStore(fakeredis.aioredis.FakeRedis(), settings=settings)
    token = get_verifier(settings).decode(create_access_token("ann", settings=settings)[0])
    assert not (await store.is_revoked(token)).revoked
    assert not (await store.is_revoked(token)).revoked  # the remembered call
    await store.revoke_token(token.jti)
    assert (await store.is_revoked(token)).rule == "jti"
    for n in range(CHECK_CALLS + 5):
        await store.is_revoked(token.model_copy(update={"jti": f"j{n}"}))
    assert len(store._check_calls) <= CHECK_CALLS
    await store.aclose()
