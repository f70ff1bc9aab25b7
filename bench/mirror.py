"""The mirror (REVOKER_CHECK_MODE=mirror) beside the round trip: enforcement latency to 4 service
processes, Redis commands per checked request, memory per revoked entry, and the time a mirror
takes to load a million revoked families.

* **Enforcement latency**: 4 uvicorn processes of ``revoker.demo_service`` in one mode, and one
  poller *process* per service (:data:`_POLLER`), each polling its own service over one keep-alive
  connection as fast as it answers, without pause. Each round mints a token; the pollers poll
  with it until each has seen it admitted, and go on polling; then this process revokes it
  (``revoke_token``, or a tenant's watermark: ``revoke_tenant_tokens``, what ``enqueue`` of a
  tenant job writes first) and notes ``time.monotonic()`` as the call returns. Each poller notes
  ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every process of the host) as its first
  401 arrives. A round's figure is the latest of the 4 (every process enforces it) minus the
  return; p50 and p99 over the rounds. No poll waits for the revocation: one in flight when the
  call returns is answered before or after the revocation was seen, as a request would be.
* **Commands per checked request**: INFO commandstats around requests with a valid token to one
  process (the mirror's feed reads, XREAD/XRANGE/HMGET, counted apart).
* **Memory**: RSS growth of a fresh process holding N revoked families and M jtis in a mirror's
  state, per entry (each point read after ``gc.collect()`` and glibc's ``malloc_trim``, so that
  neither garbage the allocator kept nor earlier garbage it gave back counts).
* **Startup**: a mirror loading a snapshot of N revoked families from Redis until ready (a
  service serves from its first request meanwhile: checks go to Redis until the mirror is ready).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

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


#: One poller: polls ``GET /me`` on one service (argv: port) with the token of the current round,
#: over one keep-alive connection, as fast as the service answers. Told on stdin ``T <round>
#: <token>`` (a new round) or ``Q``; says on stdout ``A <round>`` once the token was admitted
#: (200) and ``R <round> <monotonic>`` at its first 401 after that, then idles until the next
#: round. The rounds' commands are read between polls (a select with no wait).
_POLLER = r"""
import os, select, socket, sys, time
port = int(sys.argv[1])
sock = socket.create_connection(("127.0.0.1", port))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
stdin = sys.stdin.buffer
out = sys.stdout
buffer = b""

def reply():
    global buffer
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        if not data:
            raise SystemExit("the service closed the connection")
        buffer += data
    head, _, buffer = buffer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(buffer) < length:
        data = sock.recv(65536)
        if not data:
            raise SystemExit("the service closed the connection")
        buffer += data
    buffer = buffer[length:]
    return status

request = None
current = None
admitted = False
while True:
    ready, _, _ = select.select([stdin], [], [], 0 if request is not None else None)
    if ready:
        line = stdin.readline().split()
        if not line or line[0] == b"Q":
            break
        current, token = line[1].decode(), line[2].decode()
        request = (
            f"GET /me HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\r\n"
        ).encode()
        admitted = False
        continue
    sock.sendall(request)
    status = reply()
    if status == 200 and not admitted:
        admitted = True
        out.write(f"A {current}\n")
        out.flush()
    elif status == 401 and admitted:
        at = time.monotonic()
        out.write(f"R {current} {at!r}\n")
        out.flush()
        request = None
"""


class Poller:
    """A poller process (:data:`_POLLER`) for one service."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.process = subprocess.Popen(
            [sys.executable, "-c", _POLLER, str(server.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def start(self, round_id: int, token: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"T {round_id} {token}\n")
        self.process.stdin.flush()

    def expect(self, what: str, round_id: int, timeout: float = 10.0) -> list[str]:
        """The poller's next line, which must be ``what`` for ``round_id``."""
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError(f"{self.server.name}: no {what} for round {round_id}")
        line = self.process.stdout.readline().split()
        if line[:2] != [what, str(round_id)]:
            raise RuntimeError(f"{self.server.name}: {line} instead of {what} {round_id}")
        return line

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.write("Q\n")
            self.process.stdin.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


#: The revocations measured, alternated round by round (neither gets the warmer half of a run).
KINDS: Final = ("revoke_token", "revoke_tenant_tokens")
#: Rounds run before those measured: a service's mirror starts with its first check (its load
#: is the Startup figure, not this one), and each process's first requests are its slowest.
WARMUP: Final = 6


def enforcement(
    servers: list[ServerProcess], settings: RevokerSettings, rounds: int
) -> dict[str, list[float]]:
    """Per kind of revocation, per round: seconds from the revocation returning to the last of
    the processes' first 401."""
    store = SyncRedisTokenRevocationStore(settings=settings)
    pollers = [Poller(server) for server in servers]
    out: dict[str, list[float]] = {how: [] for how in KINDS}
    try:
        for i in range(-WARMUP, rounds * len(KINDS)):
            how = KINDS[i % len(KINDS)]
            tenant = f"{how}-{i}"
            token, jti = create_access_token("u", tenant_id=tenant, settings=settings)
            for poller in pollers:
                poller.start(i, token)
            for poller in pollers:
                poller.expect("A", i)
            if how == "revoke_token":
                store.revoke_token(jti)
            else:
                store.revoke_tenant_tokens(tenant)
            returned = time.monotonic()
            refused = [float(poller.expect("R", i)[2]) for poller in pollers]
            if i >= 0:
                out[how].append(max(refused) - returned)
    finally:
        for poller in pollers:
            poller.stop()
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
import ctypes, gc, secrets, sys, time
try:
    trim = ctypes.CDLL(None).malloc_trim
except (OSError, AttributeError):
    trim = lambda _: None
def rss():
    # After a collection and glibc's malloc_trim, at every point alike: the growth is what the
    # state holds, not what the allocator kept or gave back of earlier garbage.
    gc.collect()
    trim(0)
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


def enforcement_rows(
    url: str, admin: Any, rounds: int, requests: int, logs: Path
) -> tuple[list[list[str]], list[list[str]], dict[str, list[float]]]:
    """Enforcement latency (rows) and commands per request (rows) in each mode, and the raw
    latencies by "mode how"."""
    rows: list[list[str]] = []
    counts: list[list[str]] = []
    raw: dict[str, list[float]] = {}
    for mode in ("redis", "mirror"):
        prefix = f"bench-mirror-{mode}"
        settings = settings_for(url, mode, prefix)
        servers = [
            start_uvicorn(
                "revoker.demo_service:create_app",
                name=f"{mode}-{n}",
                env=env_for(url, mode, prefix),
                cpu=None,
                log_dir=logs,
                app_dir=REPO_DIR,
                ready_path="/health",
            )
            for n in range(PROCESSES)
        ]
        try:
            for how, waits in enforcement(servers, settings, rounds).items():
                raw[f"{mode} {how}"] = waits
                rows.append(
                    [
                        mode,
                        f"`{how}`",
                        str(rounds),
                        fmt(percentile(waits, 0.5) * 1000, 2),
                        fmt(percentile(waits, 0.99) * 1000, 2),
                        fmt(max(waits) * 1000, 2),
                    ]
                )
            if requests:
                check, feed = commands_per_request(servers[0], settings, admin, requests)
                counts.append([mode, str(requests), fmt(check, 3), fmt(feed, 3)])
        finally:
            for one in servers:
                one.stop()
    return rows, counts, raw


def startup_line(url: str, admin: Any, families: int) -> str:
    """A mirror loading ``families`` revoked families (the Startup sentence)."""
    keys = KeyLayout("bench-mirror-load")
    fill_families(admin, keys, families, 8192)
    load_settings = settings_for(url, "mirror", "bench-mirror-load")
    took, entries = asyncio.run(startup(load_settings))
    return (
        f"Startup: a mirror loaded a snapshot of {fmt(entries.get('family', 0))} revoked "
        f"families in **{took:.2f} s** (checks go to Redis meanwhile, so a service serves "
        "from its first request)."
    )


ENFORCEMENT_TEXT = (
    "Enforcement latency: from the revocation call returning to the first 401 of the last of "
    f"{PROCESSES} uvicorn processes (`revoker.demo_service`, one worker each), each polled without "
    "pause by a poller process of its own over one keep-alive connection (`time.monotonic()`, "
    f"CLOCK_MONOTONIC, in every process), the kinds alternated round by round, after {WARMUP} "
    "unmeasured rounds; verify cache off."
)
ENFORCEMENT_HEADER = ["mode", "revocation", "rounds", "p50 ms", "p99 ms", "max ms"]


def run(quick: bool = False) -> str:
    rounds = 20 if quick else 200
    requests = 200 if quick else 2000
    families = 100_000 if quick else 1_000_000
    jtis = 20_000 if quick else 100_000
    with LocalRedis() as server, tempfile.TemporaryDirectory() as logs:
        admin = redis.Redis.from_url(server.url)
        rows, counts, _ = enforcement_rows(server.url, admin, rounds, requests, Path(logs))
        startup_text = startup_line(server.url, admin, families)
        env_line = environment_line(admin)
        admin.close()
    per_family, per_jti = memory(families, jtis)
    return "\n\n".join(
        [
            "## Mirror (REVOKER_CHECK_MODE=mirror) beside the round trip",
            env_line,
            reproduce_line("mirror"),
            ENFORCEMENT_TEXT,
            markdown_table(ENFORCEMENT_HEADER, rows),
            "Redis commands per checked request (INFO commandstats): the check's script calls, "
            "and every other command (the script's own reads in the round-trip mode; the "
            "mirror's feed reads, which do not grow with requests, in mirror mode):",
            markdown_table(
                ["mode", "requests", "EVALSHA / request", "other commands / request"], counts
            ),
            f"Memory (RSS growth of a fresh process, after a collection and glibc's malloc_trim "
            f"at each point): **{per_family:.1f} B per revoked family** "
            f"({fmt(families)} families), **{per_jti:.0f} B per revoked jti** ({fmt(jtis)} jtis).",
            startup_text,
        ]
    )


def main(argv: list[str]) -> None:
    """``bench/mirror.py [--quick] [--startup | --enforcement [--rounds N]]``: the whole section,
    or one part of it printed (nothing written): the startup and memory lines, or the
    enforcement table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    part = parser.add_mutually_exclusive_group()
    part.add_argument("--startup", action="store_true", help="only the startup and memory")
    part.add_argument("--enforcement", action="store_true", help="only the enforcement table")
    parser.add_argument("--rounds", type=int, help="enforcement rounds per mode and kind")
    parser.add_argument("--families", type=int, help="families for the startup and memory")
    args = parser.parse_args(argv)
    families = args.families or (100_000 if args.quick else 1_000_000)
    if not (args.startup or args.enforcement):
        print(run(quick=args.quick))
        return
    with LocalRedis() as server, tempfile.TemporaryDirectory() as logs:
        admin = redis.Redis.from_url(server.url)
        print(environment_line(admin))
        if args.startup:
            print(startup_line(server.url, admin, families))
        else:
            rounds = args.rounds or (20 if args.quick else 200)
            rows, _, _ = enforcement_rows(server.url, admin, rounds, 0, Path(logs))
            print(ENFORCEMENT_TEXT)
            print(markdown_table(ENFORCEMENT_HEADER, rows))
        admin.close()
    if args.startup:
        per_family, per_jti = memory(families, 100_000)
        print(f"Memory: {per_family:.1f} B per revoked family, {per_jti:.0f} B per revoked jti")


if __name__ == "__main__":
    main(sys.argv[1:])
