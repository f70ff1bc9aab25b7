"""Watermark ordering: issued before the revocation call fails, issued after passes.

Tokens are checked through the same RevocationChecker the middleware uses. The microsecond
boundary is proven on a clock the test sets (both the issuer and the store read it), so it is
exact and independent of the machine's speed; the real-clock runs then show that issuing,
revoking and issuing again in that order always lands on the right sides of the cut-off.
"""

from __future__ import annotations

import random
import time

import pytest

from conftest import with_cluster
from revoker import exceptions as exc
from revoker.check import RevocationChecker
from revoker.rules import to_us
from revoker.store import RedisTokenRevocationStore
from revoker.tokens import create_access_token, decode_token

#: Fixed iteration counts: every iteration asserts, none is cut short by a time budget.
REAL_CLOCK_ITERATIONS = 250
TENANTLESS_ITERATIONS = 200


class Clock:
    """The one microsecond clock of the issuer and the store while a test holds it."""

    def __init__(self, us: int) -> None:
        self.us = us

    def __call__(self) -> int:
        return self.us


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Token iat and revocation cut-offs both read this clock (set by the test)."""
    held = Clock(0)
    monkeypatch.setattr("revoker.tokens.now_us", held)
    monkeypatch.setattr("revoker.store._base.now_us", held)
    return held


def cutoffs(count: int) -> list[int]:
    """Cut-offs (µs) within the last minutes: every edge of a second, then a fixed spread."""
    second = (int(time.time()) - 300) * 1_000_000
    edges = [0, 1, 2, 499_999, 500_000, 999_998, 999_999]
    spread = random.Random(9).sample(range(1_000_000), count - len(edges))
    return [second + i * 1_000_000 + fraction for i, fraction in enumerate(edges + spread)]


@with_cluster
@pytest.mark.parametrize("level", ["user", "tenant", "tenantless user", "both"])
async def test_cutoff_is_exact_to_the_microsecond(
    store: RedisTokenRevocationStore, clock: Clock, level: str
) -> None:
    """Issued at the cut-off or 1 µs before: revoked; 1 µs after: passes (the later of a user's
    and a tenant's cut-offs 1 µs apart decides) — for cut-offs on every microsecond pattern."""
    settings = store.settings
    checker = RevocationChecker(store)
    for i, cutoff in enumerate(cutoffs(40)):
        user, tenant = f"u{i}", None if level == "tenantless user" else f"t{i}"

        def issue(at_us: int, user: str = user, tenant: str | None = tenant) -> str:
            clock.us = at_us
            return create_access_token(user, tenant_id=tenant, settings=settings)[0]

        before, at = issue(cutoff - 1), issue(cutoff)
        assert to_us(decode_token(at, settings=settings).iat) == cutoff, i
        if level == "both":
            clock.us = cutoff - 1
            assert tenant is not None
            await store.revoke_tenant_tokens(tenant)
        clock.us = cutoff
        if level == "tenant":
            returned = await store.revoke_tenant_tokens(f"t{i}")
        else:
            returned = await store.revoke_user_tokens(user, tenant_id=tenant)
        assert to_us(returned) == cutoff, i
        after = issue(cutoff + 1)
        rule = "tenant" if level == "tenant" else "user"
        for revoked in (before, at):
            with pytest.raises(exc.TokenRevoked) as raised:
                await checker.check(revoked)
            assert (raised.value.status.rule, to_us(raised.value.status.revoked_at or 0)) == (
                rule,
                cutoff,
            ), i
        assert (await checker.check(after)).store_error is None, i


@pytest.mark.wire
@pytest.mark.parametrize("level", ["user", "tenant"])
async def test_issued_before_fails_issued_after_passes(
    store: RedisTokenRevocationStore, level: str
) -> None:
    """On the real clocks: token A (issued before the call) is revoked, B (after) never is, and
    their iats lie on either side of the returned cut-off, every iteration."""
    settings = store.settings
    checker = RevocationChecker(store)
    for i in range(REAL_CLOCK_ITERATIONS):
        user, tenant = f"u{i % 7}", f"t{i % 5}"
        before, _ = create_access_token(user, tenant_id=tenant, settings=settings)
        if level == "user":
            cutoff = await store.revoke_user_tokens(user, tenant_id=tenant)
        else:
            cutoff = await store.revoke_tenant_tokens(tenant)
        after, _ = create_access_token(user, tenant_id=tenant, settings=settings)
        iats = [to_us(decode_token(t, settings=settings).iat) for t in (before, after)]
        assert iats[0] <= to_us(cutoff) < iats[1], f"iteration {i}"
        with pytest.raises(exc.TokenRevoked) as revoked:
            await checker.check(before)
        assert revoked.value.status.rule == level, f"iteration {i}"
        result = await checker.check(after)
        assert result.store_error is None, f"iteration {i}"


@pytest.mark.wire
async def test_user_without_tenant(store: RedisTokenRevocationStore) -> None:
    """The same real-clock ordering holds for users without a tenant (tenant_id=None)."""
    settings = store.settings
    checker = RevocationChecker(store)
    for i in range(TENANTLESS_ITERATIONS):
        before, _ = create_access_token("solo", settings=settings)
        await store.revoke_user_tokens("solo", tenant_id=None)
        after, _ = create_access_token("solo", settings=settings)
        with pytest.raises(exc.TokenRevoked):
            await checker.check(before)
        assert (await checker.check(after)).store_error is None, f"iteration {i}"
