"""What the change feed costs a write: each write path with and without its feed entry.

    .venv/bin/python bench/feed_cost.py [--quick] [--url redis://127.0.0.1:6379/0]

Runs on a throwaway redis-server of its own (so INFO cpu counts only this script's writes), or
on ``--url`` under a private key prefix (deleted afterwards). For each path: client wall time
per write and the Redis server's CPU per write (INFO cpu), with the feed and as it was before
(NoFeedCore), in alternating rounds, medians printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from revoker import keys as k
from revoker.integrity import new_epoch
from revoker.localredis import local_redis
from revoker.rules import encode_mark, now_us
from revoker.settings import RevokerSettings
from revoker.store import StoreCore, SyncRedisTokenRevocationStore
from revoker.store._base import Command
from revoker.tasks.buckets import Selection, revoke_buckets

__all__ = ["main"]


class NoFeedCore(StoreCore):
    """StoreCore as it was before the feed: the writes and the bump in a MULTI/EXEC, the scripts
    without the feed key, no entry before a chunk's marks."""

    def sequenced(self, writes: Any, entry: dict[str, str]) -> list[Command]:
        return [*writes, *self.sequence_bump()]

    def written(self, replies: Any, count: int) -> list[Any]:
        return list(replies[:count])

    def script_sequence(self, entry: dict[str, str]) -> tuple[list[str], list[str], list[Command]]:
        return [self.keys.integrity], [new_epoch(), *self.feed_args(entry)], []

    def feed_command(self, entry: dict[str, str]) -> list[Command]:
        return []


def _every_field(flat: Any) -> list[bytes]:
    return list(flat[::2])


#: Selects every session of a bucket (the bench's chunk revokes all it reads).
_ALL: Selection = _every_field  # type: ignore[assignment]


def _server_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _measure(client: redis.Redis, n: int, write: Callable[[int], Any]) -> tuple[float, float]:
    """(client µs per write, server µs per write) over ``n`` writes."""
    cpu = _server_cpu(client)
    started = time.perf_counter()
    for i in range(n):
        write(i)
    wall = time.perf_counter() - started
    return wall / n * 1e6, (_server_cpu(client) - cpu) / n * 1e6


def _seed_sessions(client: redis.Redis, store: SyncRedisTokenRevocationStore, buckets: int) -> None:
    """~120 session records in each of ``buckets`` buckets of tenant "bench"."""
    pipe = client.pipeline(transaction=False)
    for b in range(buckets):
        key = store.keys.session_bucket("bench", b)
        for s in range(120):
            record = k.encode_record(
                user_id=f"u{b}-{s}", client_id=None, created_us=1, expires=2**31, current_jti="j"
            )
            pipe.hset(key, f"{k.family_id_prefix(b)}{uuid.uuid4().hex}", record)
    pipe.execute()


def _chunk_writer(
    store: SyncRedisTokenRevocationStore, buckets: int, mark: str
) -> Callable[[int], Any]:
    def write(i: int) -> Any:
        bucket_range = range(i * buckets, (i + 1) * buckets)
        return revoke_buckets(store, bucket_range, tenant_id="bench", select=_ALL, mark=mark)

    return write


def main(argv: list[str] | None = None) -> int:
    """Print the table; exit 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="an existing Redis (default: start one)")
    parser.add_argument("--quick", action="store_true", help="a few hundred writes per path")
    args = parser.parse_args(argv)
    if args.url is not None:
        return _run(args.url, quick=args.quick)
    with local_redis() as server:
        return _run(server.url, quick=args.quick)


def _run(url: str, *, quick: bool) -> int:
    n, rounds = (300, 2) if quick else (3000, 5)
    prefix = f"benchfeed-{uuid.uuid4().hex[:8]}"
    settings = RevokerSettings(  # type: ignore[call-arg]
        _env_file=None, redis_url=url, key_prefix=prefix, jwt_secret="b" * 32
    )
    client = redis.Redis.from_url(url)
    stores = {
        "feed": SyncRedisTokenRevocationStore(client, settings=settings),
        "no feed": SyncRedisTokenRevocationStore(client, settings=settings),
    }
    bare = stores["no feed"]
    bare.core = NoFeedCore(settings)
    bare.jobs.core = bare.core
    chunk_buckets, chunks = 8, 4 if quick else 16
    mark = encode_mark(now_us(), "bench")
    paths: dict[str, Callable[[SyncRedisTokenRevocationStore, str], Callable[[int], Any]]] = {
        "revoke_token": lambda s, tag: lambda i: s.revoke_token(f"{tag}-{i}", expires_at=None),
        "revoke_family": lambda s, tag: lambda i: s.revoke_family(f"{tag}-{i}", tenant_id="t"),
        "revoke_user_tokens": lambda s, tag: (
            lambda i: s.revoke_user_tokens(f"{tag}-{i}", tenant_id="t")
        ),
    }
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        for r in range(rounds):
            for name, path in paths.items():
                for variant, store in stores.items():
                    write = path(store, f"{variant}-{r}")
                    results.setdefault((name, variant), []).append(_measure(client, n, write))
            # Bulk chunks of 8 buckets of ~120 sessions (seeded afresh: a rerun rewrites marks).
            for variant, store in stores.items():
                _seed_sessions(client, store, chunk_buckets * chunks)
                per_chunk = _measure(client, chunks, _chunk_writer(store, chunk_buckets, mark))
                sessions = chunk_buckets * 120
                results.setdefault(("chunk (per session)", variant), []).append(
                    (per_chunk[0] / sessions, per_chunk[1] / sessions)
                )
        print(f"{'path':<22} {'variant':<8} {'client µs':>10} {'server µs':>10}")
        for (name, variant), samples in results.items():
            wall = statistics.median(s[0] for s in samples)
            server = statistics.median(s[1] for s in samples)
            print(f"{name:<22} {variant:<8} {wall:>10.1f} {server:>10.1f}")
        feed_len = client.xlen(stores["feed"].keys.feed)
        feed_mem = client.memory_usage(stores["feed"].keys.feed) or 0
        print(f"feed: {feed_len} entries, {feed_mem / max(feed_len, 1):.0f} B per entry")
    finally:
        for key in client.scan_iter(f"{prefix}:*", count=1000):
            client.delete(key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
