"""Watermark ordering on the real Redis: issued before the revocation call fails, after passes.

Each iteration issues token A, revokes (user or tenant), issues token B at once, and checks both
through the same RevocationChecker the middleware uses. Thousands of iterations, bounded in time.
"""

from __future__ import annotations

import time

import pytest

from revoker import exceptions as exc
from revoker.check import RevocationChecker
from revoker.store import RedisTokenRevocationStore
from revoker.tokens import create_access_token

ITERATIONS = 2000
#: Wall-clock cap per test; on a loaded machine fewer iterations run, but never fewer than this.
TIME_BUDGET = 20.0
MIN_ITERATIONS = 500

pytestmark = pytest.mark.redis


@pytest.fixture
def backend() -> str:
    """Ordering is about real Redis round trips and clocks: the real server only."""
    return "redis"


@pytest.mark.parametrize("level", ["user", "tenant"])
async def test_issued_before_fails_issued_after_passes(
    store: RedisTokenRevocationStore, level: str
) -> None:
    """Token A (issued before the revocation returned) is revoked; token B (after) never is."""
    settings = store.settings
    checker = RevocationChecker(store)
    deadline = time.monotonic() + TIME_BUDGET
    done = 0
    for i in range(ITERATIONS):
        user, tenant = f"u{i % 7}", f"t{i % 5}"
        before, _ = create_access_token(user, tenant_id=tenant, settings=settings)
        if level == "user":
            await store.revoke_user_tokens(user, tenant_id=tenant)
        else:
            await store.revoke_tenant_tokens(tenant)
        after, _ = create_access_token(user, tenant_id=tenant, settings=settings)
        with pytest.raises(exc.TokenRevoked) as revoked:
            await checker.check(before)
        assert revoked.value.status.rule == level, f"iteration {i}"
        result = await checker.check(after)
        assert result.store_error is None, f"iteration {i}"
        done += 1
        if time.monotonic() > deadline:
            break
    assert done >= min(ITERATIONS, MIN_ITERATIONS)


async def test_user_without_tenant(store: RedisTokenRevocationStore) -> None:
    """The same ordering holds for users without a tenant (tenant_id=None)."""
    settings = store.settings
    checker = RevocationChecker(store)
    for i in range(300):
        before, _ = create_access_token("solo", settings=settings)
        await store.revoke_user_tokens("solo", tenant_id=None)
        after, _ = create_access_token("solo", settings=settings)
        with pytest.raises(exc.TokenRevoked):
            await checker.check(before)
        assert (await checker.check(after)).store_error is None, f"iteration {i}"
