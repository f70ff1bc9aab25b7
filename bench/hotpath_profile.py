"""The middleware benchmark's variants driven in-process: no HTTP, no wrk, no noise from a shared
machine's scheduler. For speed decisions on the per-request path; bench/middleware.py measures.

    .venv/bin/python bench/hotpath_profile.py c-warm-mirror [requests] [--profile]

A variant is ``a``, ``b`` or ``c-<warm|cold>-<redis|mirror>`` (bench/apps.py). The app is called
with a fixed HTTP scope per token of bench/middleware.py's token set, 32 requests at a time (as
wrk's 32 connections), on uvloop; the figure is this process's CPU per request, best of three
(``--profile``: one cProfile run instead, by own time). A Redis of its own is started.
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import uvloop

from revoker.localredis import LocalRedis

#: Requests in flight at once (bench/middleware.py's wrk connections).
CONCURRENCY = 32


def _scope(token: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 5000),
        "scheme": "http",
        "method": "GET",
        "root_path": "",
        "path": "/item",
        "raw_path": b"/item",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"authorization", f"Bearer {token}".encode())],
    }


def main(variant: str, requests: int, profile: bool) -> None:
    with LocalRedis() as local:
        import middleware as mw

        tokens = mw.make_tokens(mw.bench_settings(local.url)).tokens
        os.environ.update(
            {
                "REVOKER_REDIS_URL": local.url,
                "REVOKER_KEY_PREFIX": mw.PREFIX,
                "REVOKER_JWT_ALGORITHM": "HS256",
                "REVOKER_JWT_SECRET": mw.SECRET,
                "REVOKER_ACCESS_TOKEN_TTL": "3600",
            }
        )
        if variant.startswith("c-"):
            _, cache, mode = variant.split("-")
            os.environ["REVOKER_CHECK_MODE"] = mode
            if cache == "cold":
                os.environ["REVOKER_VERIFY_CACHE_SIZE"] = "0"
        import apps

        app = {"a": apps.plain, "b": apps.verify_only}.get(variant[0], apps.revoker)()
        scopes = [_scope(token) for token in tokens]
        statuses: dict[int, int] = {}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Any) -> None:
            if message["type"] == "http.response.start":
                statuses[message["status"]] = statuses.get(message["status"], 0) + 1

        async def one(i: int) -> None:
            scope = dict(scopes[i % len(scopes)])
            scope["headers"] = list(scope["headers"])
            await app(scope, receive, send)

        async def run(n: int) -> float:
            started = time.process_time()
            for start in range(0, n, CONCURRENCY):
                await asyncio.gather(*(one(i) for i in range(start, start + CONCURRENCY)))
            return (time.process_time() - started) / n * 1e6

        async def measure() -> None:
            await run(3000)  # a mirror's snapshot, the caches, the connection
            await asyncio.sleep(0.5)
            await run(3000)
            if profile:
                profiler = cProfile.Profile()
                profiler.enable()
                await run(requests)
                profiler.disable()
                pstats.Stats(profiler).sort_stats("tottime").print_stats(40)
            else:
                best = min([await run(requests) for _ in range(3)])
                print(f"{variant}: {best:.1f} µs of CPU per request; statuses {statuses}")

        uvloop.run(measure())


if __name__ == "__main__":
    arguments = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(
        arguments[0] if arguments else "c-warm-mirror",
        int(arguments[1]) if len(arguments) > 1 else 20_000,
        "--profile" in sys.argv,
    )
