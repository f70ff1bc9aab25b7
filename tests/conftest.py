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
import redis.asyncio.retry
from redis.backoff import NoBackoff

from revoker.localredis import RedisCluster3, start_cluster
from revoker.settings import RevokerSettings, configure, reset_settings
from revoker.store import (
    RedisTokenRevocationStore,
    SyncRedisTokenRevocationStore,
    reset_revocation_stores,
)

#: The real Redis the suite may use (its own prefixes only). .ci/run makes sure it is up.
REDIS_URL = os.environ.get("REVOKER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TEST_SECRET = "test-secret-0123456789-abcdefghijklmnop"


class Backend:
    """One way production talks to Redis, and how the ``store``/``sync_store`` fixtures build it.

    ``cannot`` maps a marker to the reason this backend cannot run tests carrying it: such a test
    is skipped on this backend with that reason (see ``pytest_collection_modifyitems``), never
    silently run on another path.
    """

    def __init__(
        self,
        name: str,
        what: str,
        *,
        injected: bool,
        pipelined: bool = False,
        cluster: bool = False,
        cannot: dict[str, str] | None = None,
    ) -> None:
        self.name, self.what = name, what
        #: The store gets a client from the test (True) or builds its own from settings (False).
        self.injected = injected
        #: The async store's check must go over the pipelined connection (asserted, never assumed).
        self.pipelined = pipelined
        self.cluster = cluster
        self.cannot = cannot or {}

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"

    @property
    def on_test_redis(self) -> bool:
        """Whether its keys live on the shared test Redis (and are deleted by prefix afterwards)."""
        return self.name != "fakeredis" and not self.cluster

    @property
    def timeouts(self) -> dict[str, Any]:
        """Settings overrides for a test building its own settings on this backend: the decision
        timeouts the ``store`` fixture runs with (none for fakeredis, which has no wire)."""
        return {} if self.name == "fakeredis" else dict(_DECISION_TIMEOUTS)

    def async_store(
        self, settings: RevokerSettings, *, server: fakeredis.FakeServer | None = None
    ) -> RedisTokenRevocationStore:
        """The async store on this backend for ``settings`` (whose redis_url picks the server).
        On fakeredis, ``server`` is the fake server it talks to (default: fakeredis's shared
        one), so that a test's other clients see the same data."""
        client: Any = None
        if self.name == "fakeredis":
            client = fakeredis.aioredis.FakeRedis(server=server)
        elif self.injected:
            # As a careful service injects one: the settings' timeouts, no retries (the breaker,
            # not the client, decides when to try again).
            client = redis.asyncio.Redis.from_url(
                settings.redis_url,
                socket_timeout=settings.redis_timeout,
                socket_connect_timeout=settings.redis_connect_timeout,
                retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
            )
        store = RedisTokenRevocationStore(client, settings=settings)
        # The entry is what it says, or the test fails here: no silent fallback to another path.
        assert (store._pipelined is not None) == self.pipelined, f"{self}: pipelined path"
        assert store.is_cluster == self.cluster, f"{self}: cluster client"
        return store

    def sync_store(
        self, settings: RevokerSettings, *, server: fakeredis.FakeServer | None = None
    ) -> SyncRedisTokenRevocationStore:
        """The sync store on this backend (the sync store has no pipelined path: built from
        settings it uses the client production's tasks and CLI use). ``server``: as for
        ``async_store``."""
        client: Any = None
        if self.name == "fakeredis":
            client = fakeredis.FakeRedis(server=server)
        elif self.injected:
            client = redis.Redis.from_url(settings.redis_url)
        store = SyncRedisTokenRevocationStore(client, settings=settings)
        assert store.is_cluster == self.cluster, f"{self}: cluster client"
        return store


_NO_SERVER = "runs in-process: there is no server to kill, pause or restart"
_NO_WIRE = "answers in-process: no server round trips, clocks or INFO counts to measure"
_NAME_ONLY = (
    "this test builds its own client from the backend's name (an injected one), so it would "
    "run the `redis` path again; a test reaches this path through the `store`/`sync_store` "
    "fixtures or `backend_entry`"
)

#: The backend table: what production runs, one entry per path to Redis.
TABLE: dict[str, Backend] = {
    entry.name: entry
    for entry in (
        Backend(
            "fakeredis",
            "fakeredis, injected (no server: the quick loop of `make test-fast`)",
            injected=True,
            cannot={"outage": _NO_SERVER, "wire": _NO_WIRE},
        ),
        Backend(
            "redis",
            "the real Redis through an injected redis-py client (the store uses it as is)",
            injected=True,
        ),
        Backend(
            "pipelined",
            "the real Redis, store built from settings as services do: the check over the "
            "pipelined hiredis connection, everything else over the store's own pool",
            injected=False,
            pipelined=True,
            cannot={"name-only": _NAME_ONLY},
        ),
        Backend(
            "cluster",
            "a three-node Redis Cluster, store built from settings (one check per slot)",
            injected=False,
            cluster=True,
            cannot={
                "name-only": _NAME_ONLY,
                "outage": "one node's outage is a different failure; not in this table",
                "wire": "counts and clocks of one server; test_cluster.py counts per node",
            },
        ),
    )
}

#: The default parametrization of ``backend``: every single-server path.
BACKENDS = [
    pytest.param("fakeredis", id="fakeredis"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("pipelined", id="pipelined", marks=pytest.mark.redis),
]
#: For tests of the check and of single revocations, where a cluster run makes sense.
WITH_CLUSTER = [*BACKENDS, pytest.param("cluster", id="cluster", marks=pytest.mark.cluster)]
with_cluster = pytest.mark.parametrize("backend", WITH_CLUSTER, indirect=True)

#: Decision tests are not about timeouts: a stall of a loaded machine must not fail them. The
#: failure-policy tests build their stores with the short timeouts they are about.
_DECISION_TIMEOUTS = {"redis_timeout": 2.0, "redis_connect_timeout": 2.0}

MARKERS = {
    "outage": "kills, pauses or restarts the Redis it runs on (needs a server of its own)",
    "wire": "needs a real server's round trips, clocks or INFO counts",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip, with the table's reason, each test a backend of the table cannot run."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("backend") if callspec is not None else None
        if name is None:
            continue
        entry = TABLE[name]
        needs = {marker.name for marker in item.iter_markers()} & entry.cannot.keys()
        if "backend_entry" not in getattr(item, "fixturenames", ()):
            needs |= {"name-only"} & entry.cannot.keys()
        for need in sorted(needs):
            item.add_marker(pytest.mark.skip(reason=f"{name}: {entry.cannot[need]}"))


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


#: The test harness's own switches (REVOKER_TEST_REDIS_URL, REVOKER_TEST_FULL_SIZE,
#: REVOKER_TEST_ARTIFACTS): no setting has this prefix, and a test reads them from os.environ, so
#: the settings scrub below must leave them (it deleted them, and the full-size tests never ran).
TEST_HARNESS_PREFIX = "REVOKER_TEST_"


def scrub_settings_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Delete every REVOKER_* setting from the environment; keep the harness's REVOKER_TEST_*."""
    for name in list(os.environ):
        if name.startswith("REVOKER_") and not name.startswith(TEST_HARNESS_PREFIX):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test sees the developer's REVOKER_* environment or another test's settings."""
    scrub_settings_environment(monkeypatch)
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
def r() -> Iterator[redis.Redis]:
    """A client of the test Redis (the job and expiry tests read and write its keys directly)."""
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def settings() -> Iterator[RevokerSettings]:
    """Process-wide settings with a private key prefix; its keys are deleted afterwards."""
    with private_settings() as s:
        yield configure(s)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The name of the backend under test (a key of TABLE)."""
    return str(request.param)


@pytest.fixture
def backend_entry(backend: str) -> Backend:
    """The table entry of the backend under test: how to build its stores."""
    return TABLE[backend]


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster3]:
    """Three redis-server nodes in cluster mode, started once for the session when first used."""
    nodes = start_cluster()
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def backend_settings(
    request: pytest.FixtureRequest, backend_entry: Backend, settings: RevokerSettings
) -> RevokerSettings:
    """The process-wide settings as the backend under test runs them (same key prefix)."""
    if backend_entry.name == "fakeredis":
        return settings
    update: dict[str, Any] = dict(_DECISION_TIMEOUTS)
    if backend_entry.cluster:
        cluster: RedisCluster3 = request.getfixturevalue("redis_cluster")
        update.update(redis_url=cluster.url, redis_cluster=True)
    return configure(settings.model_copy(update=update))


class CheckPath:
    """Counts which connection ran an async store's check script: the pipelined one or redis-py's
    client (a NOSCRIPT answer, which the store follows with a retry, is not a run). Installed by
    the ``store`` fixture; the pipelined entry must never run it on the client (asserted when the
    test ends)."""

    def __init__(self) -> None:
        self.pipelined = 0
        self.client = 0

    def watch(self, store: RedisTokenRevocationStore) -> None:
        sha = store._scripts["check"].sha
        send = store.client.execute_command

        async def client_command(*args: Any, **options: Any) -> Any:
            reply = await send(*args, **options)
            if str(args[0]).upper() == "EVALSHA" and args[1] in (sha, sha.encode()):
                self.client += 1
            return reply

        store.client.execute_command = client_command
        pipelined = store._pipelined
        if pipelined is not None:
            call = pipelined.call

            async def pipelined_call(*args: str | bytes) -> Any:
                reply = await call(*args)
                if str(args[0]).upper() in ("EVALSHA", "EVAL"):
                    self.pipelined += 1
                return reply

            pipelined.call = pipelined_call  # type: ignore[method-assign]

    def assert_kept_to(self, entry: Backend) -> None:
        """After a test: the pipelined entry never ran its check on redis-py's client."""
        if entry.pipelined:
            assert self.client == 0, f"{entry}: a check ran on redis-py's client, not pipelined"


@pytest.fixture
def check_path() -> CheckPath:
    """Where the ``store`` fixture's checks went (see CheckPath)."""
    return CheckPath()


@pytest.fixture
async def store(
    backend_entry: Backend, backend_settings: RevokerSettings, check_path: CheckPath
) -> AsyncIterator[RedisTokenRevocationStore]:
    """The async store on each backend of the table."""
    s = backend_entry.async_store(backend_settings)
    check_path.watch(s)
    yield s
    await s.aclose()
    check_path.assert_kept_to(backend_entry)


@pytest.fixture
def sync_store(
    backend_entry: Backend, backend_settings: RevokerSettings
) -> Iterator[SyncRedisTokenRevocationStore]:
    """The sync store on each backend of the table."""
    s = backend_entry.sync_store(backend_settings)
    yield s
    s.close()
