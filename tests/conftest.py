"""Shared fixtures: settings with a private key prefix, and the backend table.

Every test that touches a real Redis uses a key prefix of its own and deletes exactly the keys
under it afterwards: tests never touch data they did not create.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import fakeredis
import pytest
import redis
import redis.asyncio

from revoker.settings import RevokerSettings, configure, reset_settings
from revoker.store import (
    RedisTokenRevocationStore,
    SyncRedisTokenRevocationStore,
    reset_revocation_stores,
)

#: The real Redis the suite may use (its own prefixes only). .ci/run makes sure it is up.
REDIS_URL = os.environ.get("REVOKER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TEST_SECRET = "test-secret-0123456789-abcdefghijklmnop"

#: The backend table: every store/middleware test marked with the `backend` fixture runs on each.
BACKENDS = [
    pytest.param("fakeredis", id="fakeredis"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
]


def make_settings(**overrides: Any) -> RevokerSettings:
    """Settings for one test: a fresh key prefix, an HMAC secret, the test Redis."""
    values: dict[str, Any] = {
        "redis_url": REDIS_URL,
        "key_prefix": f"rvtest-{uuid.uuid4().hex[:12]}",
        "jwt_secret": TEST_SECRET,
        "jwt_algorithm": "HS256",
    }
    values.update(overrides)
    return RevokerSettings(_env_file=None, **values)  # type: ignore[call-arg]


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    """Delete every key under ``prefix:`` (and only those)."""
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test sees the developer's REVOKER_* environment or another test's settings."""
    for name in list(os.environ):
        if name.startswith("REVOKER_") and name != "REVOKER_TEST_REDIS_URL":
            monkeypatch.delenv(name)
    reset_settings()
    reset_revocation_stores()
    yield
    reset_settings()
    reset_revocation_stores()


@contextlib.contextmanager
def private_settings(**overrides: Any) -> Iterator[RevokerSettings]:
    """``make_settings(**overrides)``; afterwards its keys on the test Redis are deleted."""
    s = make_settings(**overrides)
    try:
        yield s
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            delete_prefix(client, s.key_prefix)
        except redis.ConnectionError:
            pass
        finally:
            client.close()


@pytest.fixture
def settings() -> Iterator[RevokerSettings]:
    """Process-wide settings with a private key prefix; its keys are deleted afterwards."""
    with private_settings() as s:
        yield configure(s)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The name of the backend under test: "fakeredis" or "redis"."""
    return str(request.param)


@pytest.fixture
async def store(
    backend: str, settings: RevokerSettings
) -> AsyncIterator[RedisTokenRevocationStore]:
    """The async store on each backend of the table."""
    if backend == "fakeredis":
        client: Any = fakeredis.aioredis.FakeRedis()
    else:
        client = redis.asyncio.Redis.from_url(REDIS_URL)
    s = RedisTokenRevocationStore(client, settings=settings)
    yield s
    await s.aclose()


@pytest.fixture
def sync_store(backend: str, settings: RevokerSettings) -> Iterator[SyncRedisTokenRevocationStore]:
    """The sync store on each backend of the table."""
    if backend == "fakeredis":
        client: Any = fakeredis.FakeRedis()
    else:
        client = redis.Redis.from_url(REDIS_URL)
    s = SyncRedisTokenRevocationStore(client, settings=settings)
    yield s
    s.close()
