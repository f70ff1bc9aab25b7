"""Issue 4's benchmark: refresh-token rotations per second against a real Redis.

Beside a full rotation (verify the presented token, sign the successor pair, one script call) it
measures the parts alone: verifying one refresh token and signing the two new tokens. Redis runs
on its own core, this process on another. Each round makes a fresh set of sessions and rotates
each one along its chain (the token just returned is the one presented next). Redis commands are
counted with ``INFO commandstats``: the script's EVALSHA is the only command a rotation sends
(the commands it runs inside the script are listed apart).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis
from common import (
    commandstats,
    environment_line,
    fmt,
    markdown_table,
    median,
    pick_cpus,
    pin,
    reproduce_line,
    reset_commandstats,
)

from revoker.localredis import LocalRedis
from revoker.refresh import rotate_refresh_token, rotate_refresh_token_sync
from revoker.rules import now_us
from revoker.sessions import TokenPair, issue_session_tokens, start_session_sync
from revoker.settings import RevokerSettings, load_settings
from revoker.store import RedisTokenRevocationStore, SyncRedisTokenRevocationStore
from revoker.tokens import get_verifier

NAME = "rotation"
SECRET = "bench-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
#: Sessions rotated concurrently by the asyncio variant (one event loop, one connection pool).
CONCURRENCY = 32
#: Commands the rotation script runs inside Redis (not round trips: they are part of EVALSHA).
SCRIPT_COMMANDS = frozenset({"get", "hget", "time", "hset", "expire", "set"})


def _settings(url: str) -> RevokerSettings:
    return load_settings(
        _env_file=None,
        redis_url=url,
        key_prefix="bench-rotation",
        jwt_secret=SECRET,
        redis_timeout=5.0,
        verify_cache_size=0,
    )


def _per_second(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("nan")


def _timed(fn: Callable[[], object], count: int) -> float:
    """Seconds for ``count`` calls of ``fn``."""
    started = time.perf_counter()
    for _ in range(count):
        fn()
    return time.perf_counter() - started


def _sign_only(settings: RevokerSettings, pair: TokenPair, count: int) -> float:
    data = get_verifier(settings).decode(pair.refresh_token, "refresh")

    def sign() -> object:
        return issue_session_tokens(
            data.sub,
            tenant_id=data.tenant,
            family_id=pair.family_id,
            client_id=data.client,
            scopes=data.scopes,
            settings=settings,
            issued_at_us=now_us(),
        )

    return _timed(sign, count)


def _verify_only(settings: RevokerSettings, pair: TokenPair, count: int) -> float:
    verifier = get_verifier(settings)
    return _timed(lambda: verifier.decode(pair.refresh_token, "refresh"), count)


def _sessions(store: SyncRedisTokenRevocationStore, count: int) -> list[TokenPair]:
    return [
        start_session_sync(f"user-{i}", tenant_id="bench", scopes=["read"], store=store)
        for i in range(count)
    ]


def _sync_rotations(
    store: SyncRedisTokenRevocationStore, pair: TokenPair, count: int
) -> tuple[float, int]:
    """One client, one chain starting at ``pair``: (seconds, rotations)."""
    started = time.perf_counter()
    for _ in range(count):
        pair = rotate_refresh_token_sync(pair.refresh_token, store=store)
    return time.perf_counter() - started, count


async def _async_rotations(
    settings: RevokerSettings, starts: list[TokenPair], per_chain: int
) -> tuple[float, int]:
    """``len(starts)`` chains rotated concurrently on one event loop: (seconds, rotations)."""
    store = RedisTokenRevocationStore(settings=settings)

    async def chain(pair: TokenPair) -> None:
        for _ in range(per_chain):
            pair = await rotate_refresh_token(pair.refresh_token, store=store)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(chain(p) for p in starts))
        return time.perf_counter() - started, len(starts) * per_chain
    finally:
        await store.aclose()


def _redis_cpu_us(client: redis.Redis) -> float:
    info = client.info("cpu")
    return (float(info["used_cpu_user"]) + float(info["used_cpu_sys"])) * 1e6


def run(quick: bool = False) -> str:
    rounds = 3 if quick else 5
    count = 200 if quick else 2000
    per_chain = max(1, count // CONCURRENCY)
    redis_cpu, load_cpu = pick_cpus()
    affinity = os.sched_getaffinity(0)
    server = LocalRedis().start()
    client = redis.Redis.from_url(server.url)
    samples: dict[str, list[float]] = {
        k: [] for k in ("sign", "verify", "sync", "async", "evalsha", "other", "redis_cpu")
    }
    script_inner: dict[str, int] = {}
    try:
        pin(server.pid, redis_cpu)
        pin(os.getpid(), load_cpu)
        settings = _settings(server.url)
        store = SyncRedisTokenRevocationStore(settings=settings)
        warm = _sessions(store, 1)[0]
        rotate_refresh_token_sync(warm.refresh_token, store=store)  # loads the script
        for r in range(rounds):
            (pair,) = _sessions(store, 1)
            samples["sign"].append(_sign_only(settings, pair, count) / count * 1e6)
            samples["verify"].append(_verify_only(settings, pair, count) / count * 1e6)

            (chain_start,) = _sessions(store, 1)
            reset_commandstats(client)
            cpu_before = _redis_cpu_us(client)
            seconds, done = _sync_rotations(store, chain_start, count)
            samples["redis_cpu"].append((_redis_cpu_us(client) - cpu_before) / done)
            stats = commandstats(client)
            samples["sync"].append(_per_second(done, seconds))
            samples["evalsha"].append(stats.pop("evalsha", 0) / done)
            samples["other"].append(
                sum(v for k, v in stats.items() if k not in SCRIPT_COMMANDS) / done
            )
            for k, v in stats.items():
                if k in SCRIPT_COMMANDS:
                    script_inner[k] = v

            starts = _sessions(store, CONCURRENCY)
            seconds, done = asyncio.run(_async_rotations(settings, starts, per_chain))
            samples["async"].append(_per_second(done, seconds))
            print(
                f"  round {r + 1}/{rounds}: sync {fmt(samples['sync'][-1])}/s, "
                f"async {fmt(samples['async'][-1])}/s, sign {samples['sign'][-1]:.1f} µs",
                file=sys.stderr,
            )
        env_line = environment_line(client)
        store.close()
    finally:
        os.sched_setaffinity(0, affinity)
        client.close()
        server.stop()
    return report(samples, script_inner, env_line, rounds, count, redis_cpu, load_cpu, quick=quick)


def report(
    samples: dict[str, list[float]],
    script_inner: dict[str, int],
    env_line: str,
    rounds: int,
    count: int,
    redis_cpu: int,
    load_cpu: int,
    *,
    quick: bool,
) -> str:
    sign_us, verify_us = median(samples["sign"]), median(samples["verify"])
    sync_rps, async_rps = median(samples["sync"]), median(samples["async"])
    sync_us = 1e6 / sync_rps
    rows = [
        ["sign the two new tokens alone (HS256)", f"{sign_us:.1f}", fmt(1e6 / sign_us)],
        ["verify the presented refresh token alone", f"{verify_us:.1f}", fmt(1e6 / verify_us)],
        [
            "full rotation, sync, one client, one chain",
            f"{sync_us:.1f}",
            fmt(sync_rps),
        ],
        [
            f"full rotation, asyncio, {CONCURRENCY} sessions at once",
            f"{1e6 / async_rps:.1f}",
            fmt(async_rps),
        ],
    ]
    table = markdown_table(
        ["measurement", "µs per rotation or 1/throughput (median)", "per second"], rows
    )
    per_round = " ".join(fmt(v) for v in samples["sync"])
    evalsha = median(samples["evalsha"])
    other = median(samples["other"])
    inner = ", ".join(f"{k.upper()} {v / count:.2f}" for k, v in sorted(script_inner.items()))
    mode = " (--quick: figures are indicative only)" if quick else ""
    rest_us = sync_us - sign_us - verify_us
    return f"""## Refresh-token rotation (issue 4){mode}

{reproduce_line(NAME)}

Measured {env_line}. The benchmark's own redis-server is pinned to CPU {redis_cpu}, this Python
process to CPU {load_cpu}. {rounds} rounds of {count:,} rotations each; figures are medians over
rounds. A rotation verifies the presented refresh token, signs the successor pair and sends one
`EVALSHA` of `rotate_refresh.lua` that checks and replaces the family's current token atomically.
The sync chain presents each returned token next (its latency bound); the asyncio run rotates
{CONCURRENCY} sessions' chains at once on one event loop.

{table}

- Redis round trips per rotation (`INFO commandstats`, after `CONFIG RESETSTAT`): `EVALSHA`
  {evalsha:.3f}, other top-level commands {other:.3f}. Inside the script, per rotation: {inner}.
- Of the {sync_us:.0f} µs of a sync rotation, signing takes {sign_us:.0f} µs and verifying
  {verify_us:.0f} µs; the remaining {rest_us:.0f} µs is the script round trip and the client.
- Redis CPU per rotation: {median(samples["redis_cpu"]):.1f} µs (`used_cpu_user+sys` delta).
- Sync rotations/s per round: {per_round}.
"""


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
