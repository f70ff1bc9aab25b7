"""The check's decision tests, run again with REVOKER_CHECK_MODE=mirror: same data, same expected
decisions, nothing restated.

The tests are imported from the modules that own them (test_ordering: the cut-off exact to the
microsecond, issued-before fails and issued-after passes on the real clocks; test_middleware: 401
per rule, narrow revocations, no cached revocation). The fixtures here run them in mirror mode:
``backend_settings`` sets the mode, and ``store`` is a store whose revocations return once the
mirror has applied their feed entry (what "a revocation returned and its feed entry was applied"
means), and which fails the test if a check went to Redis instead of the mirror.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conftest import Backend
from revoker.mirror import get_mirror, stop_mirrors
from revoker.settings import RevokerSettings, configure
from revoker.store import RedisTokenRevocationStore
from test_middleware import (
    test_other_tokens_survive_a_narrow_revocation,
    test_revocation_is_never_cached,
    test_revoked_token_gets_401_with_challenge,
    test_valid_token_reaches_the_app_with_its_claims,
)
from test_ordering import (
    clock,
    test_cutoff_is_exact_to_the_microsecond,
    test_issued_before_fails_issued_after_passes,
    test_user_without_tenant,
)

__all__ = [
    "clock",
    "test_cutoff_is_exact_to_the_microsecond",
    "test_issued_before_fails_issued_after_passes",
    "test_other_tokens_survive_a_narrow_revocation",
    "test_revocation_is_never_cached",
    "test_revoked_token_gets_401_with_challenge",
    "test_user_without_tenant",
    "test_valid_token_reaches_the_app_with_its_claims",
]

#: Generous: the host is loaded; catching up proves the feed was applied, not how fast.
CATCH_UP = 20.0


class MirroredStore(RedisTokenRevocationStore):
    """A store whose revocations return once the process's mirror has applied them, and which
    counts the checks that went to Redis (none may, once the mirror is loaded)."""

    round_trips = 0

    async def _applied(self) -> None:
        async with asyncio.timeout(CATCH_UP):
            await get_mirror(self.settings, self).caught_up()

    async def is_revoked(self, token: Any) -> Any:
        self.round_trips += 1
        return await super().is_revoked(token)

    async def revoke_token(self, *args: Any, **kwargs: Any) -> Any:
        result = await super().revoke_token(*args, **kwargs)
        await self._applied()
        return result

    async def revoke_family(self, *args: Any, **kwargs: Any) -> Any:
        result = await super().revoke_family(*args, **kwargs)
        await self._applied()
        return result

    async def revoke_user_tokens(self, *args: Any, **kwargs: Any) -> Any:
        result = await super().revoke_user_tokens(*args, **kwargs)
        await self._applied()
        return result

    async def revoke_tenant_tokens(self, *args: Any, **kwargs: Any) -> Any:
        result = await super().revoke_tenant_tokens(*args, **kwargs)
        await self._applied()
        return result


@pytest.fixture
def backend_settings(backend_entry: Backend, settings: RevokerSettings) -> RevokerSettings:
    """The backend's settings in mirror mode (a real single Redis: the feed is one stream)."""
    if backend_entry.name == "fakeredis" or backend_entry.cluster:
        pytest.skip(f"{backend_entry.name}: mirror mode needs the feed of one real Redis")
    return configure(
        settings.model_copy(
            update={"check_mode": "mirror", "redis_timeout": 2.0, "redis_connect_timeout": 2.0}
        )
    )


@pytest.fixture
async def store(
    backend_entry: Backend, backend_settings: RevokerSettings
) -> AsyncIterator[RedisTokenRevocationStore]:
    """The backend's store, mirrored; its mirror loaded before the test begins."""
    built = backend_entry.async_store(backend_settings)
    mirrored = MirroredStore(
        built.client if backend_entry.injected else None, settings=backend_settings
    )
    if not backend_entry.injected:
        await built.aclose()
    async with asyncio.timeout(CATCH_UP):
        await get_mirror(backend_settings, mirrored).wait_ready()
    yield mirrored
    assert mirrored.round_trips == 0, "a check went to Redis instead of the mirror"
    await stop_mirrors()
    await mirrored.aclose()
