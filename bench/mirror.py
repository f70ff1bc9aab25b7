"""The mirror (REVOKER_CHECK_MODE=mirror) beside the round trip: enforcement latency to 4 service
processes, Redis commands per checked request, memory per revoked entry, and the time a mirror
takes to load a million revoked families.

* **Enforcement latency**: 4 uvicorn processes of ``revoker.demo_service`` in one mode; each
  round mints a token, sees it admitted by all 4, revokes it (``revoke_token``, or a tenant's
  watermark: ``revoke_tenant_tokens``, what ``enqueue`` of a tenant job writes first), and polls
  every process until it answers 401. The figure is the time from the call returning to the 401
  of the *last* of the 4 (so every process enforces it), p50 and p99 over the rounds.
* **Commands per checked request**: INFO commandstats around requests with a valid token to one
  process (the mirror's feed reads, XREAD/XRANGE/HMGET, counted apart).
* **Memory**: RSS growth of a fresh process holding N revoked families and M jtis in a mirror's
  state, per entry.
* **Startup**: a mirror loading a snapshot of N revoked families from Redis until ready (a
  service serves from its first request meanwhile: checks go to Redis until the mirror is ready).
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis
from common import (
    REPO_DIR,
    ServerProcess,
    clean_env,
    environment_line,
    fmt,
    markdown_table,
    reproduce_line,
    start_uvicorn,
)

from revoker.keys import KeyLayout, encode_mark, family_id_prefix
from revoker.localredis import LocalRedis
from revoker.rules import now_us
from revoker.settings import RevokerSettings
from revoker.store import SyncRedisTokenRevocationStore
from revoker.tokens import create_access_token

SECRET = "bench-secret-0123456789-abcdefghijklmnop"
PROCESSES = 4


def settings_for(url: str, mode: str, prefix: str) -> RevokerSettings:
    return RevokerSettings(  # type: ignore[call-arg]
        _env_file=None,
        redis_url=url,
        key_prefix=prefix,
        jwt_secret=SECRET,
        check_mode=mode,
        redis_timeout=1.0,
    )


def env_for(url: str, mode: str, prefix: str) -> dict[str, str]:
    return clean_env(
        {
            "REVOKER_REDIS_URL": url,
            "REVOKER_KEY_PREFIX": prefix,
            "REVOKER_JWT_SECRET": SECRET,
            "REVOKER_CHECK_MODE": mode,
            "REVOKER_VERIFY_CACHE_SIZE": "0",
        }
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


async def until_401(client: httpx.AsyncClient, url: str, token: str, since: float) -> float:
    """Poll ``url`` until it refuses ``token``; seconds from ``since``."""
    headers = {"Authorization": f"Bearer {token}"}
    while True:
        response = await client.get(url, headers=headers)
        if response.status_code == 401:
            return time.perf_counter() - since


async def enforcement(
    servers: list[ServerProcess], settings: RevokerSettings, rounds: int, how: str
) -> list[float]:
    """Per round: seconds from the revocation returning to the last of the processes' 401."""
    store = SyncRedisTokenRevocationStore(settings=settings)
    out: list[float] = []
    async with httpx.AsyncClient(timeout=10.0) as client:
        for i in range(rounds):
            tenant = f"t{i}"
            token, jti = create_access_token("u", tenant_id=tenant, settings=settings)
            for server in servers:
                headers = {"Authorization": f"Bearer {token}"}
                deadline = time.monotonic() + 10
                while (
                    await client.get(server.base_url + "/me", headers=headers)
                ).status_code != 200:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{server.name} never admitted the token")
                    await asyncio.sleep(0.01)
            if how == "revoke_token":
                store.revoke_token(jti)
            else:
                store.revoke_tenant_tokens(tenant)
            returned = time.perf_counter()
            waits = await asyncio.gather(
                *(until_401(client, s.base_url + "/me", token, returned) for s in servers)
            )
            out.append(max(waits))
    store.close()
    return out


def commands_per_request(
    server: ServerProcess, settings: RevokerSettings, admin: Any, n: int
) -> tuple[float, float]:
    """(check commands, feed-read commands) per request, over ``n`` requests with a valid token."""
    token, _ = create_access_token("counted", settings=settings)
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=10.0) as client:
        client.get(server.base_url + "/me", headers=headers)
        admin.config_resetstat()
        for _ in range(n):
            assert client.get(server.base_url + "/me", headers=headers).status_code == 200
    counts = {
        name.removeprefix("cmdstat_"): int(stats["calls"])
        for name, stats in admin.info("commandstats").items()
    }
    counts.pop("config|resetstat", None)
    counts.pop("info", None)
    # The check is one EVALSHA (commandstats also counts the reads inside the script); in mirror
    # mode everything else is the follower's feed reads, which do not grow with requests.
    check = counts.get("evalsha", 0) + counts.get("eval", 0)
    other = sum(counts.values()) - check
    return check / n, other / n


_MEMORY = r"""
import gc, secrets, sys, time
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
from revoker.mirror._state import StateBuilder
families, jtis = int(sys.argv[1]), int(sys.argv[2])
ids = [f"{i % 8192:x}.{secrets.token_urlsafe(16)}" for i in range(families)]
jti_ids = [secrets.token_urlsafe(16) for _ in range(jtis)]
gc.collect(); base = rss()
builder = StateBuilder()
for at in range(0, families, 1000):
    builder.add_families("t:acme", ids[at:at + 1000])
state = builder.build()
gc.collect(); after_families = rss()
expires = int(time.time()) + 900
for jti in jti_ids:
    state.add_jti(jti, 1, expires)
gc.collect(); after_jtis = rss()
print((after_families - base) / families, (after_jtis - after_families) / max(jtis, 1))
"""


def memory(families: int, jtis: int) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY, str(families), str(jtis)],
        capture_output=True,
        text=True,
        check=True,
    )
    per_family, per_jti = (float(x) for x in out.stdout.split())
    return per_family, per_jti


def fill_families(admin: Any, keys: KeyLayout, families: int, buckets: int) -> None:
    """``families`` revoked marks spread over the session buckets of one tenant (as jobs write)."""
    mark = encode_mark(now_us(), "bench")
    pipe = admin.pipeline(transaction=False)
    per_bucket = max(1, families // buckets)
    written = 0
    bucket = 0
    while written < families:
        count = min(per_bucket, families - written)
        fields: dict[str, str] = {
            f"{family_id_prefix(bucket)}{secrets.token_urlsafe(12)}": mark for _ in range(count)
        }
        pipe.hset(keys.revoked_bucket("acme", bucket), mapping=fields)
        written += count
        bucket = (bucket + 1) % buckets
        if len(pipe) >= 200:
            pipe.execute()
    pipe.execute()


async def startup(settings: RevokerSettings) -> tuple[float, dict[str, int]]:
    from revoker.mirror import Mirror

    started = time.perf_counter()
    mirror = Mirror(settings)
    await mirror.wait_ready()
    took = time.perf_counter() - started
    entries = mirror.state.entries() if mirror.state is not None else {}
    await mirror.stop()
    return took, entries


def run(quick: bool = False) -> str:
    rounds = 20 if quick else 200
    requests = 200 if quick else 2000
    families = 100_000 if quick else 1_000_000
    jtis = 20_000 if quick else 100_000
    rows: list[list[str]] = []
    counts: list[list[str]] = []
    with LocalRedis() as server, tempfile.TemporaryDirectory() as logs:
        admin = redis.Redis.from_url(server.url)
        for mode in ("redis", "mirror"):
            prefix = f"bench-mirror-{mode}"
            settings = settings_for(server.url, mode, prefix)
            servers = [
                start_uvicorn(
                    "revoker.demo_service:create_app",
                    name=f"{mode}-{n}",
                    env=env_for(server.url, mode, prefix),
                    cpu=None,
                    log_dir=Path(logs),
                    app_dir=REPO_DIR,
                    ready_path="/health",
                )
                for n in range(PROCESSES)
            ]
            try:
                for how in ("revoke_token", "revoke_tenant_tokens"):
                    waits = asyncio.run(enforcement(servers, settings, rounds, how))
                    rows.append(
                        [
                            mode,
                            f"`{how}`",
                            str(rounds),
                            fmt(percentile(waits, 0.5) * 1000, 2),
                            fmt(percentile(waits, 0.99) * 1000, 2),
                        ]
                    )
                check, feed = commands_per_request(servers[0], settings, admin, requests)
                counts.append([mode, str(requests), fmt(check, 3), fmt(feed, 3)])
            finally:
                for one in servers:
                    one.stop()
        keys = KeyLayout("bench-mirror-load")
        fill_families(admin, keys, families, 8192)
        load_settings = settings_for(server.url, "mirror", "bench-mirror-load")
        took, entries = asyncio.run(startup(load_settings))
        env_line = environment_line(admin)
        admin.close()
    per_family, per_jti = memory(families, jtis)
    return "\n\n".join(
        [
            "## Mirror (REVOKER_CHECK_MODE=mirror) beside the round trip",
            env_line,
            reproduce_line("mirror"),
            f"Enforcement latency: from the revocation call returning to the 401 of the last of "
            f"{PROCESSES} uvicorn processes (`revoker.demo_service`, one worker each), polled "
            "concurrently; verify cache off.",
            markdown_table(["mode", "revocation", "rounds", "p50 ms", "p99 ms"], rows),
            "Redis commands per checked request (INFO commandstats): the check's script calls, "
            "and every other command (the script's own reads in the round-trip mode; the "
            "mirror's feed reads, which do not grow with requests, in mirror mode):",
            markdown_table(
                ["mode", "requests", "EVALSHA / request", "other commands / request"], counts
            ),
            f"Memory (RSS growth of a fresh process): **{per_family:.1f} B per revoked family** "
            f"({fmt(families)} families), **{per_jti:.0f} B per revoked jti** ({fmt(jtis)} jtis).",
            f"Startup: a mirror loaded a snapshot of {fmt(entries.get('family', 0))} revoked "
            f"families in **{took:.2f} s** (checks go to Redis meanwhile, so a service serves "
            "from its first request).",
        ]
    )


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
