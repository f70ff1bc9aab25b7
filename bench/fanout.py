"""Issues 3 and 15's benchmark: fan-out of a big tenant by real Celery workers, from outside.

One run, on the benchmark's own Redis (data) and a second throwaway Redis (Celery broker):

* ``redis-benchmark -P 64 -c 1 -t set`` on the data Redis before every round: what one
  pipelining client reaches, beside the job it is compared with;
* per round: a tenant of N sessions (1,000,000; 200,000 with --quick; half of them of client
  "web") written with the exact commands of ``start_session``'s record path
  (``StoreCore.plan_record_session``), pipelined raw; Redis memory per session (``INFO memory``
  before/after); then one job fanned out by a worker with two pool processes, while a separate
  process runs ``store.is_revoked`` at a steady rate against the same Redis (its p50/p99 during
  the fan-out and in the seconds before it). Two kinds of job:

  - *unfiltered* (``enqueue_tenant_revocation(tenant)``): enforced by the tenant watermark
    before the job starts; the job writes no per-session marks, it counts, audits and removes
    the records (a bucket with one UNLINK). An HTTP client polls a uvicorn service
    (``TokenRevocationMiddleware``) with a token of the tenant: enforcement latency is the time
    from ``enqueue`` returning to the first 401 (also for a tenant of 10 sessions);
  - *filtered* (``client_id="web"``: half the sessions): the fan-out is the enforcement, one
    revoked mark per selected session.

Sessions per second = sessions walked / (enqueue called -> job seen done); marks written per
second = marks / the same span (filtered jobs only; one HSET per bucket). Write commands per
second = calls of write commands (``COMMAND`` flags, so commands run inside Lua scripts count)
in ``INFO commandstats`` over the same span. Worker and Redis CPU seconds per session say
which side bounds the fan-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import hiredis
import redis
from apps import ITEM_PATH
from common import (
    REPO_DIR,
    ServerProcess,
    clean_env,
    environment_line,
    fmt,
    markdown_table,
    median,
    process_cpu_seconds,
    reproduce_line,
    start_uvicorn,
)

from revoker import tasks
from revoker.jobs import enqueue_tenant_revocation, get_job, wait_for_job
from revoker.keys import bucket_of_user, encode_record, family_id_prefix, family_ttl
from revoker.localredis import LocalRedis
from revoker.sessions import start_session_sync
from revoker.settings import RevokerSettings, load_settings
from revoker.store import StoreCore, SyncRedisTokenRevocationStore
from revoker.tokens import generate_jti

sys.path.insert(0, str(REPO_DIR / "tests"))
from celery_helpers import WorkerProcess, start_worker, worker_env

NAME = "fanout"
SECRET = "bench-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
PREFIX = "bfan"
BIG = "big-tenant"
#: Sessions per user in the big tenant (each user has a user index of this many members).
SESSIONS_PER_USER = 4
#: Sessions of the tenant whose tokens the steady checker presents (never revoked).
CHECKED_SESSIONS = 200
#: Steady per-request checks per second during the fan-out (a lightly loaded service).
CHECK_RATE = 500
#: redis-benchmark's SETs while the checker measures the load's effect on its p99 (~2-4 s).
LOAD_REQUESTS = 1_500_000
#: Sessions written per pipelined batch while populating.
POPULATE_BATCH = 2_000
#: Sessions whose records carry a rotation's fields, for their memory per session (written
#: through redis-py: a full-size tenant would take minutes).
ROTATED_SESSIONS = 200_000

Sample = tuple[float, float]  # (unix time the check started, latency in seconds)


#: The kinds of job a round runs (see the module docstring).
UNFILTERED, FILTERED = "unfiltered", "filtered"
#: Worker pool processes of every round (the issue's figure).
WORKERS = 2
#: REVOKER_FANOUT_DUTY_CYCLE of the paced rounds (one of each kind, after the others).
PACED = 0.5


@dataclass
class Round:
    kind: str
    workers: int
    sessions: int
    wall_s: float
    job_span_s: float
    revoked: int
    writes: int
    by_command: dict[str, int]
    usec_by_command: dict[str, int]
    enforcement_big_ms: float
    enforcement_small_ms: float
    during: list[float] = field(default_factory=list)  # check latencies (s) during the fan-out
    idle: list[float] = field(default_factory=list)  # check latencies (s) before it
    check_errors: int = 0
    #: The same for a check in REVOKER_CHECK_MODE=mirror (another process, same tokens).
    mirror_during: list[float] = field(default_factory=list)
    mirror_idle: list[float] = field(default_factory=list)
    mirror_errors: int = 0
    #: The same round-trip check while redis-benchmark (the marks' baseline, LOAD_REQUESTS
    #: SETs) loads the same Redis after the job, and in the 2 s before that: what a load with
    #: no revoker in it does to the check's p99 on this host.
    load_during: list[float] = field(default_factory=list)
    load_idle: list[float] = field(default_factory=list)
    worker_cpu_s: float = 0.0
    redis_cpu_s: float = 0.0
    bytes_per_session: float = 0.0
    #: OBJECT ENCODING of the big tenant's buckets (listpack or hashtable).
    encodings: str = ""
    #: Memory per session once the job is done: its revoked mark (the record is deleted).
    bytes_per_revoked: float = 0.0
    populate_rate: float = 0.0
    #: MEMORY USAGE per session of each structure (family hash, tenant index, user indexes).
    memory_parts: dict[str, float] = field(default_factory=dict)
    #: Redis CPU seconds per session to read every record once and nothing else (filtered
    #: rounds: :func:`read_floor`), the part of the walk no selection can avoid.
    read_cpu_per_session: float = float("nan")

    #: redis-benchmark SET/s just before this round, on the same Redis.
    benchmark_rate: float = 0.0
    #: REVOKER_FANOUT_DUTY_CYCLE of the round's worker.
    duty: float = 1.0
    #: REVOKER_FANOUT_ADAPTIVE_PACING of the round's worker.
    adaptive: bool = False
    #: Whether the tenant's client index was known complete (a filtered job walks it).
    index: bool = False
    #: The job's fixed costs: enqueue -> its task started (Celery delivering it), started ->
    #: its chunks dispatched (counting the buckets, HLEN each; storing the chunk lists; one
    #: message per chunk), and the chunks it planned.
    queued_s: float = 0.0
    planned_s: float = 0.0
    chunks: int = 0

    @property
    def label(self) -> str:
        label = self.kind
        if self.kind == FILTERED:
            label += ", client index" if self.index else ", every record"
        if self.duty < 1:
            label += f", duty cycle {self.duty:g}"
        if self.adaptive:
            label += ", adaptive pacing"
        return label if self.workers == WORKERS else f"{label}, {self.workers} worker"

    @property
    def sessions_per_s(self) -> float:
        """Sessions the job walked (read, selected or not) per second."""
        return self.sessions / self.wall_s

    @property
    def writes_per_s(self) -> float:
        """Revoked marks written per second: one per selected session of a filtered job, as
        redis-benchmark writes one key per SET (a bucket's worth per HSET; ``writes`` counts
        commands); none for an unfiltered job (its watermark is the enforcement)."""
        return (self.revoked if self.kind == FILTERED else 0) / self.wall_s

    @property
    def p99_ratio(self) -> float:
        """The check's p99 during the fan-out over its p99 just before it."""
        return percentile(self.during, 0.99) / percentile(self.idle, 0.99)

    @property
    def mirror_p99_ratio(self) -> float:
        """The same for the mirror-mode check."""
        return percentile(self.mirror_during, 0.99) / percentile(self.mirror_idle, 0.99)

    @property
    def load_p99_ratio(self) -> float:
        """The check's p99 under redis-benchmark's load over its p99 just before it."""
        return percentile(self.load_during, 0.99) / percentile(self.load_idle, 0.99)

    @property
    def write_commands_per_s(self) -> float:
        return self.writes / self.wall_s


# --- setup ---------------------------------------------------------------------------------------


def bench_settings(data_url: str, broker_url: str) -> RevokerSettings:
    return load_settings(
        redis_url=data_url,
        broker_url=broker_url,
        result_backend=broker_url,
        key_prefix=PREFIX,
        jwt_algorithm="HS256",
        jwt_secret=SECRET,
        # Every round starts with FLUSHALL on purpose: the long-lived service would rightly take
        # it for a wiped denylist and cut every earlier token off (REVOKER_ON_DATA_LOSS=cutoff).
        on_data_loss="accept",
    )


#: The packed commands of each tenant populated so far, by (tenant, sessions, buckets): every
#: round writes the same sessions again (after its FLUSHALL) instead of encoding them again.
_POPULATED: dict[tuple[str, int, int], list[tuple[bytes, int]]] = {}


def session_batches(settings: RevokerSettings, tenant: str, n: int) -> list[tuple[bytes, int]]:
    """``n`` sessions of ``tenant`` as start_session's record commands, packed in batches of
    ``POPULATE_BATCH`` sessions: (the batch, its command count). Built once per run."""
    cached = _POPULATED.get((tenant, n, settings.session_buckets))
    if cached is not None:
        return cached
    core = StoreCore(settings)
    users = max(1, n // SESSIONS_PER_USER)
    now = time.time()
    expires = int(now + settings.refresh_token_ttl)
    batches: list[tuple[bytes, int]] = []
    for start in range(0, n, POPULATE_BATCH):
        out: list[bytes] = []
        for i in range(start, min(n, start + POPULATE_BATCH)):
            user = f"user-{i % users}"
            bucket = bucket_of_user(user, settings.session_buckets)
            plan = core.plan_record_session(
                family_id_prefix(bucket) + generate_jti(),
                user_id=user,
                tenant_id=tenant,
                # Half of them "web": the filtered round selects exactly those.
                client_id="web" if i % 2 else "mobile",
                scopes=(),
                current_jti=generate_jti(),
                created=now,
                expires=expires,
            )
            out.extend(hiredis.pack_command(command) for command in plan.commands)
        batches.append((b"".join(out), len(out)))
    _POPULATED[(tenant, n, settings.session_buckets)] = batches
    return batches


def populate(settings: RevokerSettings, port: int, tenant: str, n: int) -> float:
    """Write ``n`` sessions of ``tenant`` with start_session's record commands; returns sessions/s.

    The commands are exactly ``plan_record_session``'s (:func:`session_batches`, encoded once per
    run: every round writes the same sessions); only their transport is raw (one socket, one
    batch always in flight) so that a million sessions take seconds, not the ~15 minutes of
    signing two JWTs and a round trip per session. The rate is Redis writing them.
    """
    batches = session_batches(settings, tenant, n)
    reader = hiredis.Reader()
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        pending = 0

        def drain(expected: int) -> None:
            got = 0
            while got < expected:
                reply = reader.gets()
                if reply is False:
                    reader.feed(sock.recv(1 << 20))
                    continue
                if isinstance(reply, hiredis.ReplyError):
                    raise RuntimeError(f"populate: Redis replied {reply}")
                got += 1

        for batch, commands in batches:
            sock.sendall(batch)
            # One batch stays in flight: Redis works on it while the next one is sent.
            drain(pending)
            pending = commands
        drain(pending)
    return n / (time.perf_counter() - started)


def memory_parts(client: redis.Redis, settings: RevokerSettings, n: int) -> dict[str, float]:
    """Bytes per session of the tenant's session buckets and client-index buckets: ``MEMORY
    USAGE`` (exact: SAMPLES 0) of every bucket, over the sessions. MEMORY USAGE counts a key's
    name, object and value, not its main-dict and expires-dict entries (one per bucket, not per
    session)."""
    base = StoreCore(settings).keys.session_bucket_base(BIG)
    pipe = client.pipeline(transaction=False)
    for bucket in range(settings.session_buckets):
        pipe.memory_usage(f"{base}{bucket}", samples=0)
    total = sum(int(used or 0) for used in pipe.execute())
    keys = StoreCore(settings).keys
    for client_id in ("web", "mobile"):  # the clients populate gives the sessions
        for key in keys.client_index_buckets(BIG, client_id, range(settings.session_buckets)):
            pipe.memory_usage(key, samples=0)
    index = sum(int(used or 0) for used in pipe.execute())
    return {"session buckets": total / n, "client index buckets": index / n}


def bucket_encodings(client: redis.Redis, settings: RevokerSettings) -> str:
    """The ``OBJECT ENCODING`` of every 97th bucket of the big tenant, e.g. "hashtable"."""
    base = StoreCore(settings).keys.session_bucket_base(BIG)
    seen = {client.object("encoding", f"{base}{b}") for b in range(0, settings.session_buckets, 97)}
    return ", ".join(sorted(e.decode() for e in seen if e))


def rotated_bytes_per_session(client: redis.Redis, settings: RevokerSettings, n: int) -> float:
    """``used_memory`` per session of ``n`` sessions whose records carry a rotation's fields
    too (previous and successor jtis, rotation and issue times), as after their first refresh."""
    core = StoreCore(settings)
    now_us = int(time.time() * 1e6)
    client.flushall()
    before = used_memory(client)
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        user = f"user-{i % max(1, n // SESSIONS_PER_USER)}"
        bucket = bucket_of_user(user, settings.session_buckets)
        parts = encode_record(
            user_id=user, client_id="web", created_us=now_us, expires=now_us // 10**6 + 3600,
            current_jti=generate_jti(),
        ).split("|")  # fmt: skip
        parts[5:9] = [generate_jti(), str(now_us), generate_jti(), str(now_us)]
        key = core.keys.session_bucket(BIG, bucket)
        pipe.hset(key, family_id_prefix(bucket) + generate_jti(), "|".join(parts))
        if len(pipe) >= POPULATE_BATCH:
            pipe.execute()
    pipe.execute()
    per_session = (used_memory(client) - before) / n
    client.flushall()
    return per_session


def read_floor(client: redis.Redis, settings: RevokerSettings, n: int) -> float:
    """Redis CPU seconds per session of one ``HGETALL`` of every bucket of the big tenant
    (pipelined, nothing else running): what reading each record once costs Redis, whoever then
    selects from it. Half the sessions selected, a mark costs at least twice this."""
    base = StoreCore(settings).keys.session_bucket_base(BIG)
    before = redis_cpu(client)
    pipe = client.pipeline(transaction=False)
    for bucket in range(settings.session_buckets):
        pipe.execute_command("HGETALL", f"{base}{bucket}")
        if len(pipe) >= 256:
            pipe.execute()
    pipe.execute()
    return (redis_cpu(client) - before) / n


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def write_commands(client: redis.Redis) -> frozenset[str]:
    """Names of the commands Redis flags as writes (as INFO commandstats spells them)."""
    table: dict[str, Any] = client.command()
    return frozenset(name.lower() for name, info in table.items() if "write" in info["flags"])


def command_calls(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """(calls, microseconds) per command since the server started (INFO commandstats)."""
    return {
        name.removeprefix("cmdstat_").lower(): (int(stats["calls"]), int(stats["usec"]))
        for name, stats in client.info("commandstats").items()
    }


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _redis_benchmark_rate(port: int, args: list[str]) -> float:
    """Requests/s of ``redis-benchmark -P 64 -c 1 -q`` with ``args`` on the local ``port``."""
    binary = shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")
    if binary is None:
        raise SystemExit("redis-benchmark is not installed (apt-get install -y redis-tools)")
    command = [binary, "-h", "127.0.0.1", "-p", str(port), "-P", "64", "-c", "1", "-q", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    # -q prints progress with carriage returns, then "<TEST>: 123456.78 requests per second, ...".
    match = re.search(r": ([\d.]+) requests per second", done.stdout.replace("\r", "\n"))
    if match is None:
        raise RuntimeError(f"cannot parse redis-benchmark output: {done.stdout!r}")
    return float(match[1])


def redis_benchmark(port: int, requests: int) -> tuple[float, str]:
    """SET requests/s of ``redis-benchmark -P 64 -c 1 -t set -n requests`` and its command."""
    rate = _redis_benchmark_rate(port, ["-t", "set", "-n", str(requests)])
    return rate, f"redis-benchmark -P 64 -c 1 -t set -n {requests}"


def redis_benchmark_markers(
    port: int, requests: int, settings: RevokerSettings
) -> tuple[float, str]:
    """SET requests/s of ``redis-benchmark`` writing what the fan-out writes: a new key each
    time (``-r``), shaped like a revoked family's key-per-mark (key, value, EX), not one key
    overwritten."""
    key = StoreCore(settings).keys.revoked_bucket_base(BIG) + "1c20.RnsU4rkM7sm74E__rand_int__"
    ttl = str(family_ttl(settings.refresh_token_ttl, settings.leeway))
    mark = "1795722976123456|bench (job 0123456789abcdef01234567)"
    rate = _redis_benchmark_rate(
        port, ["-n", str(requests), "-r", "100000000", "SET", key, mark, "EX", ttl]
    )
    shown = f"redis-benchmark -P 64 -c 1 -n {requests} -r 100000000 SET <marker> <mark> EX {ttl}"
    return rate, shown


def worker_cpu(worker: WorkerProcess) -> float:
    """CPU seconds of the worker's main process and its pool children."""
    pids = [worker.pid]
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
        pids += [int(p) for p in children]
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += process_cpu_seconds(pid)
    return total


# --- the steady checker (a separate process) ------------------------------------------------------


def _checker_main(config_path: str) -> None:
    """Run a check at CHECK_RATE until SIGTERM (``store.is_revoked``, or in mirror mode what the
    middleware runs); print the samples as JSON."""
    config = json.loads(Path(config_path).read_text())
    # A service runs on its own machine, not on the workers' cores: a higher priority keeps the
    # checker's own CPU-scheduling delays out of the latencies (root may raise it; others can't).
    # Not the mirror-mode one: it reads no Redis, and a second high-priority process waking 500
    # times a second would delay the polls the enforcement rows measure.
    if config.get("mode") != "mirror":
        with contextlib.suppress(PermissionError):
            os.nice(-10)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(_check_loop(config))


async def _check_loop(config: dict[str, Any]) -> None:
    from revoker.exceptions import StoreUnavailable
    from revoker.store import RedisTokenRevocationStore
    from revoker.tokens import decode_token

    settings = bench_settings(config["redis_url"], config["redis_url"])
    store = RedisTokenRevocationStore(settings=settings)
    # The middleware caches verified tokens; what is measured here is the Redis round trip.
    tokens = [decode_token(t, settings=settings) for t in config["tokens"]]
    mirrored = config.get("mode") == "mirror"
    checker = None
    if mirrored:
        from revoker.check import RevocationChecker

        mirror_settings = settings.model_copy(update={"check_mode": "mirror"})
        checker = RevocationChecker(store, settings=mirror_settings)
        for text in config["tokens"]:  # the verify cache warm, as in a serving process
            await checker.check(text)
        mirror = checker.mirror()
        assert mirror is not None
        async with asyncio.timeout(120):
            await mirror.wait_ready()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    samples: list[Sample] = []
    errors = 0
    interval = 1.0 / config["rate"]
    next_at = time.perf_counter()
    print("ready", flush=True)
    i = 0
    while not stop.is_set():
        now = time.perf_counter()
        if now < next_at:
            await asyncio.sleep(next_at - now)
        next_at += interval
        token = tokens[i % len(tokens)]
        text = config["tokens"][i % len(tokens)]
        i += 1
        wall = time.time()
        started = time.perf_counter()
        try:
            if checker is not None:
                # The middleware's path: the warm answer, else the whole check.
                result = checker.check_now(text) or await checker.check(text)
                if result.store_error is not None:
                    errors += 1
                    continue
                revoked = False  # check() raises TokenRevoked
            else:
                revoked = (await store.is_revoked(token)).revoked
        except StoreUnavailable:
            errors += 1
            continue
        samples.append((wall, time.perf_counter() - started))
        if revoked:
            raise RuntimeError("a checker token was revoked: the benchmark is misconfigured")
    if checker is not None:
        await checker.aclose()
    await store.aclose()
    print(json.dumps({"samples": samples, "errors": errors}), flush=True)


@contextlib.contextmanager
def steady_checker(
    redis_url: str, tokens: list[str], workdir: Path, mode: str = "redis"
) -> Iterator[dict[str, Any]]:
    """Run the checker process (``mode``: REVOKER_CHECK_MODE) for the ``with`` block; the
    yielded dict gets its results."""
    config_path = workdir / f"checker-config-{mode}.json"
    config_path.write_text(
        json.dumps({"redis_url": redis_url, "tokens": tokens, "rate": CHECK_RATE, "mode": mode})
    )
    env = clean_env({"PYTHONPATH": str(Path(__file__).resolve().parent)})
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--checker", str(config_path)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    results: dict[str, Any] = {}
    try:
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("the checker process did not start")
        yield results
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            out, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
    if process.returncode != 0 or not out.strip():
        raise RuntimeError(f"the checker process failed ({process.returncode})")
    results.update(json.loads(out))


# --- enforcement ----------------------------------------------------------------------------------


def first_401_ms(server: ServerProcess, token: str, enqueue: Any) -> tuple[float, str]:
    """Milliseconds from ``enqueue()`` returning to the first 401 for ``token``; and the job id."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    headers = {"Authorization": f"Bearer {token}"}

    def status() -> int:
        conn.request("GET", ITEM_PATH, headers=headers)
        response = conn.getresponse()
        response.read()
        return int(response.status)

    try:
        if status() != 200:  # warm: connection open, token verified once (the cache is normal)
            raise RuntimeError("the enforcement token was rejected before the revocation")
        job_id = enqueue()
        returned = time.perf_counter()
        deadline = returned + 30
        while status() != 401:
            if time.perf_counter() > deadline:
                raise RuntimeError("no 401 within 30 s of enqueue returning")
        return (time.perf_counter() - returned) * 1000, job_id
    finally:
        conn.close()


# --- one round ------------------------------------------------------------------------------------


def one_round(
    *,
    kind: str,
    workers: int,
    n: int,
    settings: RevokerSettings,
    data: LocalRedis,
    server: ServerProcess,
    workdir: Path,
    writes: frozenset[str],
    index: int,
    walk_index: bool = False,
) -> Round:
    client = redis.Redis.from_url(data.url, socket_timeout=600)
    store = SyncRedisTokenRevocationStore(settings=settings)
    try:
        client.flushall()
        before = used_memory(client)
        rate = populate(settings, data.port, BIG, n)
        per_session = (used_memory(client) - before) / n
        parts = memory_parts(client, settings, n)
        encodings = bucket_encodings(client, settings)
        read_cpu = read_floor(client, settings, n) if kind == FILTERED else float("nan")
        marker = StoreCore(settings).keys.client_index_marker(BIG)
        if walk_index:
            # A fresh deployment: every session was indexed from the start (keys, "The client
            # index"). Otherwise the marker says since now, and the job walks every record.
            client.set(marker, "0")
        print(f"  populated {fmt(n)} sessions at {fmt(rate)}/s", file=sys.stderr)
        small = f"small-tenant-{index}"
        big_token = start_session_sync("user-0", tenant_id=BIG, store=store).access_token
        small_pairs = [start_session_sync(f"s{i}", tenant_id=small, store=store) for i in range(10)]
        checked = [
            start_session_sync(f"c{i}", tenant_id="checked", store=store).access_token
            for i in range(CHECKED_SESSIONS)
        ]
        worker = start_worker(worker_env(settings), concurrency=workers)
        try:
            with steady_checker(data.url, checked, workdir) as checks:
                time.sleep(2.0)  # baseline samples of the check before any fan-out
                small_ms, small_job = first_401_ms(
                    server,
                    small_pairs[0].access_token,
                    lambda: enqueue_tenant_revocation(
                        small, reason="bench", actor="bench", settings=settings
                    ),
                )
                wait_for_job(small_job, timeout=60, poll_interval=0.01, settings=settings)
                # The mirror-mode checker from here on: its start (and its priority) never
                # overlaps the small tenant's enforcement poll, and both checkers run steady
                # through the "before" window and the job.
                with steady_checker(data.url, checked, workdir, "mirror") as mirror_checks:
                    time.sleep(2.0)  # the "before" window: no job running, the checker steady
                    calls_before = command_calls(client)
                    cpu_before, redis_cpu_before = worker_cpu(worker), redis_cpu(client)
                    window_start = time.time()
                    started = time.perf_counter()
                    if kind == UNFILTERED:
                        big_ms, job_id = first_401_ms(
                            server,
                            big_token,
                            lambda: enqueue_tenant_revocation(
                                BIG, reason="bench", actor="bench", settings=settings
                            ),
                        )
                    else:
                        # No watermark: the token is refused once the fan-out reaches its bucket.
                        big_ms = float("nan")
                        job_id = enqueue_tenant_revocation(
                            BIG, client_id="web", reason="bench", actor="bench", settings=settings
                        )
                    record = wait_for_job(
                        job_id, timeout=1800, poll_interval=0.02, settings=settings
                    )
                    wall = time.perf_counter() - started
                    window_end = time.time()
                    worker_seconds = worker_cpu(worker) - cpu_before
                    redis_seconds = redis_cpu(client) - redis_cpu_before
                    calls_after = command_calls(client)
                    # The host's floor for the ratio: the same checker, the job done, while
                    # the marks' baseline (redis-benchmark) loads the same Redis.
                    time.sleep(2.0)
                    load_start = time.time()
                    redis_benchmark(data.port, LOAD_REQUESTS)
                    load_end = time.time()
        finally:
            worker.stop()
        if record.status != "done":
            raise RuntimeError(f"fan-out job ended {record.status}: {record.error}")
        record = get_job(job_id, settings=settings)
        dispatched = client.hget(store.keys.job(job_id), "dispatched_at")
        started_at = record.started_at or record.created_at
        per_revoked = (used_memory(client) - before) / n
        delta = {
            name: (
                calls - calls_before.get(name, (0, 0))[0],
                usec - calls_before.get(name, (0, 0))[1],
            )
            for name, (calls, usec) in calls_after.items()
            if calls != calls_before.get(name, (0, 0))[0]
        }
        samples: list[Sample] = checks["samples"]
        mirror_samples: list[Sample] = mirror_checks["samples"]
        TIMELINES.append(timeline(workers, window_start, samples, record))  # for bench/plots.py
        return Round(
            kind=kind,
            workers=workers,
            sessions=n + 1,
            wall_s=wall,
            job_span_s=(record.finished_at or 0) - (record.started_at or 0),
            revoked=record.families_revoked,
            writes=sum(calls for name, (calls, _) in delta.items() if name in writes),
            by_command={name: calls for name, (calls, _) in delta.items()},
            usec_by_command={name: usec for name, (_, usec) in delta.items()},
            enforcement_big_ms=big_ms,
            enforcement_small_ms=small_ms,
            during=[lat for at, lat in samples if window_start <= at <= window_end],
            # The 2 s before the job: after the small tenant's job, nothing else running.
            idle=[lat for at, lat in samples if window_start - 2.0 <= at < window_start],
            check_errors=int(checks["errors"]),
            mirror_during=[lat for at, lat in mirror_samples if window_start <= at <= window_end],
            mirror_idle=[
                lat for at, lat in mirror_samples if window_start - 2.0 <= at < window_start
            ],
            mirror_errors=int(mirror_checks["errors"]),
            load_during=[lat for at, lat in samples if load_start <= at <= load_end],
            load_idle=[lat for at, lat in samples if load_start - 2.0 <= at < load_start],
            worker_cpu_s=worker_seconds,
            redis_cpu_s=redis_seconds,
            bytes_per_session=per_session,
            bytes_per_revoked=per_revoked,
            encodings=encodings,
            memory_parts=parts,
            populate_rate=rate,
            read_cpu_per_session=read_cpu,
            queued_s=started_at - record.created_at,
            planned_s=(float(dispatched) - started_at) if dispatched else float("nan"),
            chunks=record.chunks_total or 0,
        )
    finally:
        store.close()
        client.close()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    data = sorted(values)
    return data[min(len(data) - 1, int(q * len(data)))]


# --- run and report -------------------------------------------------------------------------------


def run(quick: bool = False) -> str:
    n = 200_000 if quick else 1_000_000
    bench_requests = 400_000 if quick else 2_000_000
    workdir = Path(tempfile.mkdtemp(prefix="revoker-bench-fanout-"))
    rounds: list[Round] = []
    with LocalRedis() as data, LocalRedis() as broker:
        # Redis gets its own cores in production; here the workers would preempt it mid-command
        # and every check waiting on it would pay a scheduler time slice. Root may raise it.
        redis_niced = False
        with contextlib.suppress(PermissionError):
            os.setpriority(os.PRIO_PROCESS, data.pid, -10)
            redis_niced = True
        settings = bench_settings(data.url, broker.url)
        client = redis.Redis.from_url(data.url, socket_timeout=600)
        writes = write_commands(client)
        env = clean_env(worker_env(settings))
        server = start_uvicorn("apps:revoker", name="fanout-service", env=env, cpu=None,
                               log_dir=workdir, ready_path="/bench/count")  # fmt: skip
        try:
            rotated_bytes = rotated_bytes_per_session(client, settings, ROTATED_SESSIONS)
            print(f"  rotated sessions: {rotated_bytes:.0f} B/session", file=sys.stderr)
            client.flushall()
            marker_rate, marker_command = redis_benchmark_markers(data.port, n, settings)
            print(f"  {marker_command}: {fmt(marker_rate)} SET/s", file=sys.stderr)
            # (kind, duty cycle, workers, adaptive pacing, client index). Fixed pacing, then
            # adaptive, then fixed again (A/B/A: the host's load drifts between rounds).
            plan: list[tuple[str, float, int, bool, bool]] = []
            for adaptive in (False, True, False):
                plan += [(UNFILTERED, 1.0, WORKERS, adaptive, False)]
                plan += [(FILTERED, 1.0, WORKERS, adaptive, True)]
            plan.insert(2, (FILTERED, 1.0, WORKERS, False, False))  # every record, as before
            plan += [
                (UNFILTERED, PACED, WORKERS, False, False),
                (FILTERED, PACED, WORKERS, False, True),
            ]
            # One unfiltered round with a single worker process: the figure of sessions/s
            # against worker processes (bench/plots.py) needs a second point.
            plan += [(UNFILTERED, 1.0, 1, False, False)]
            for r, (kind, duty, workers, adaptive, walk_index) in enumerate(plan):
                client.flushall()
                rate, bench_command = redis_benchmark(data.port, bench_requests)
                print(f"  {bench_command}: {fmt(rate)} SET/s", file=sys.stderr)
                paced = settings.model_copy(
                    update={"fanout_duty_cycle": duty, "fanout_adaptive_pacing": adaptive}
                )
                result = one_round(
                    kind=kind, workers=workers, n=n, settings=paced, data=data,
                    server=server, workdir=workdir, writes=writes, index=len(rounds),
                    walk_index=walk_index,
                )  # fmt: skip
                result.benchmark_rate = rate
                result.duty = duty
                result.adaptive = adaptive
                result.index = walk_index
                rounds.append(result)
                print(
                    f"  round {r + 1}/{len(plan)}, {result.label}: {result.wall_s:.2f} s, "
                    f"{fmt(result.sessions_per_s)} sessions/s, "
                    f"{fmt(result.writes_per_s)} marks/s "
                    f"({result.writes_per_s / rate:.2f} of redis-benchmark), check p99 "
                    f"{percentile(result.idle, 0.99) * 1000:.2f} ms before, "
                    f"{percentile(result.during, 0.99) * 1000:.2f} ms during "
                    f"({result.p99_ratio:.2f}x), enforcement "
                    f"{result.enforcement_small_ms:.2f} / {result.enforcement_big_ms:.2f} ms, "
                    f"queued {result.queued_s * 1000:.0f} ms, planned and dispatched "
                    f"{result.chunks} chunks in {result.planned_s * 1000:.0f} ms",
                    file=sys.stderr,
                )
            env_line = environment_line(client)
        finally:
            server.stop()
            client.close()
    shutil.rmtree(workdir, ignore_errors=True)
    save_raw(rounds, quick=quick)
    return report(
        rounds, bench_command, env_line, n, settings, quick=quick,
        marker_rate=marker_rate, marker_command=marker_command, rotated_bytes=rotated_bytes,
        redis_niced=redis_niced,
    )  # fmt: skip


#: Both kinds of job, in the order each round plan runs them.
KINDS = (UNFILTERED, FILTERED)


def command_breakdown(r: Round) -> str:
    """The round's commands per session walked, then the Redis time of the costly ones."""
    per_session = sorted(
        ((name, calls / r.sessions) for name, calls in r.by_command.items()),
        key=lambda item: -item[1],
    )
    calls = ", ".join(f"{name.upper()} {v:.3f}" for name, v in per_session if v >= 0.001)
    usec = sorted(r.usec_by_command.items(), key=lambda item: -item[1])
    spent = ", ".join(
        f"{name.upper()} {u / r.sessions:.2f} µs/session ({u / r.by_command[name]:,.1f} µs/call)"
        for name, u in usec
        if u / r.sessions >= 0.05
    )
    return f"{calls}; time: {spent}"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def report(
    rounds: list[Round],
    bench_command: str,
    env_line: str,
    n: int,
    settings: RevokerSettings,
    *,
    quick: bool,
    redis_niced: bool,
    marker_rate: float,
    marker_command: str,
    rotated_bytes: float,
) -> str:
    bench_rate = median([r.benchmark_rate for r in rounds])
    rows = []
    for r in rounds:
        marks = f"{r.writes_per_s / r.benchmark_rate:.2f}" if r.kind == FILTERED else "(none)"
        rows.append(
            [
                r.label,
                fmt(r.sessions),
                fmt(r.revoked),
                f"{r.wall_s:.2f}",
                fmt(r.sessions_per_s),
                fmt(r.writes_per_s),
                fmt(r.benchmark_rate),
                marks,
                f"{percentile(r.idle, 0.5) * 1000:.2f} / {percentile(r.idle, 0.99) * 1000:.2f}",
                f"{percentile(r.during, 0.5) * 1000:.2f} / {percentile(r.during, 0.99) * 1000:.2f}",
                f"{r.p99_ratio:.2f}",
                f"{r.load_p99_ratio:.2f}",
                f"{percentile(r.mirror_idle, 0.99) * 1e6:.0f} / "
                f"{percentile(r.mirror_during, 0.99) * 1e6:.0f} ({r.mirror_p99_ratio:.2f}x)",
                f"{r.check_errors}",
                f"{r.worker_cpu_s / r.sessions * 1e6:.1f}",
                f"{r.redis_cpu_s / r.sessions * 1e6:.1f}",
                f"{r.enforcement_small_ms:.2f} / {r.enforcement_big_ms:.2f}",
            ]
        )
    table = markdown_table(
        [
            "job", "sessions walked", "sessions revoked", "enqueue → done s", "sessions/s",
            "marks written/s", "redis-benchmark SET/s (same run, just before)",
            "marks written / redis-benchmark SET", "check p50 / p99 ms before",
            "check p50 / p99 ms during", "p99 during / before",
            "p99 under redis-benchmark / before",
            "mirror-mode check p99 µs before / during", "check errors",
            "worker CPU µs/session", "Redis CPU µs/session", "enforcement ms, 10 / all sessions",
        ],
        rows,
    )  # fmt: skip
    main = [r for r in rounds if r.workers == WORKERS]
    fixed_rounds = [r for r in main if r.duty >= 1 and not r.adaptive]
    unfiltered = [r for r in fixed_rounds if r.kind == UNFILTERED]
    filtered = [r for r in fixed_rounds if r.kind == FILTERED and r.index]
    walked = [r for r in fixed_rounds if r.kind == FILTERED and not r.index]
    adaptive = [r for r in main if r.adaptive]
    adaptive_ratio = max(r.p99_ratio for r in adaptive)
    paced = [r for r in main if r.duty < 1]
    paced_ratio = max(r.p99_ratio for r in paced)
    unfiltered_s = median([r.wall_s for r in unfiltered])
    unfiltered_rate = median([r.sessions_per_s for r in unfiltered])
    filtered_s = median([r.wall_s for r in filtered])
    writes_ratio = median([r.writes_per_s / r.benchmark_rate for r in filtered])
    worst_ratio = max(r.p99_ratio for r in [*unfiltered, *filtered, *walked])
    walked_ratio = median([r.writes_per_s / r.benchmark_rate for r in walked])
    read_floor_us = median([r.read_cpu_per_session for r in walked]) * 1e6
    read_ceiling = median([1 / (2 * r.read_cpu_per_session * r.benchmark_rate) for r in walked])
    p99_during = max(percentile(r.during, 0.99) for r in rounds) * 1000
    load_ratios = [r.load_p99_ratio for r in rounds]
    mirror_ratio = max(r.mirror_p99_ratio for r in main)
    mirror_during = max(percentile(r.mirror_during, 0.99) for r in main) * 1e6
    mirror_vs_trip = mirror_during / 1e6 / min(percentile(r.idle, 0.99) for r in main)
    enforcement_small = max(r.enforcement_small_ms for r in rounds)
    enforcement_big = max(r.enforcement_big_ms for r in unfiltered)
    memory = median([r.bytes_per_session for r in rounds])
    targets = markdown_table(
        ["target", "measured", "goal", "verdict"],
        [
            [f"unfiltered job of {fmt(n)} sessions, enqueue → done", f"{unfiltered_s:.2f} s "
             f"({fmt(unfiltered_rate)} sessions/s)", "", ""],
            [f"filtered job (half of {fmt(n)} selected), enqueue → done", f"{filtered_s:.2f} s",
             "", ""],
            ["filtered job through the client index: marks written/s vs redis-benchmark SET/s "
             "(same round)", f"{writes_ratio:.2f}", "≥ 0.5", _verdict(writes_ratio >= 0.5)],
            ["(context) the same, walking every record (an index not known complete)",
             f"{walked_ratio:.2f}", "", ""],
            ["check p99 during a fan-out / just before it (worst round, unpaced)",
             f"{worst_ratio:.2f}", "≤ 1.5", _verdict(worst_ratio <= 1.5)],
            ["(context) the same check's p99 while redis-benchmark's SETs (the marks' baseline) "
             "load the same Redis, over its p99 just before (worst / median round): a load "
             "with no revoker in it, on the same host",
             f"{max(load_ratios):.2f} / {median(load_ratios):.2f}", "≤ 1.5",
             _verdict(max(load_ratios) <= 1.5)],
            ["the same, REVOKER_FANOUT_ADAPTIVE_PACING (worst adaptive round)",
             f"{adaptive_ratio:.2f}", "≤ 1.5", _verdict(adaptive_ratio <= 1.5)],
            ["adaptive jobs, enqueue → done (unfiltered / filtered through the index)",
             " / ".join(f"{r.wall_s:.2f} s" for r in adaptive), "", ""],
            [f"the same, REVOKER_FANOUT_DUTY_CYCLE={PACED:g} (worst paced round)",
             f"{paced_ratio:.2f}", "≤ 1.5", _verdict(paced_ratio <= 1.5)],
            [f"paced jobs, enqueue → done (unfiltered / filtered) at duty cycle {PACED:g}",
             " / ".join(f"{r.wall_s:.2f} s" for r in paced), "", ""],
            ["(context) check p99 during the fan-out (worst round)", f"{p99_during:.2f} ms", "",
             ""],
            ["(context) REVOKER_CHECK_MODE=mirror: the check's p99 during / just before "
             "(worst round: µs, so a scheduler time slice moves it), and its worst p99 during "
             "over the round-trip check's best p99 before",
             f"{mirror_ratio:.2f}x ({mirror_during:.0f} µs); {mirror_vs_trip:.2f}", "", ""],
            ["(context) Redis CPU to read each record once (HGETALL alone), per session walked; "
             "the marks/s ratio it leaves even if selecting, marking and deleting were free "
             "(one Redis core: 1 / (2 * that * redis-benchmark SET/s))",
             f"{read_floor_us:.2f} µs; ≤ {read_ceiling:.2f}", "", ""],
            ["(context) marks written/s vs redis-benchmark writing new keys with a TTL",
             f"{median([r.writes_per_s for r in filtered]) / marker_rate:.2f}", "", ""],
            ["enforcement, tenant of 10 (worst round)", f"{enforcement_small:.2f} ms", "< 5 ms",
             _verdict(enforcement_small < 5)],
            [f"enforcement, tenant of {fmt(n)} (worst unfiltered round)",
             f"{enforcement_big:.2f} ms", "< 5 ms", _verdict(enforcement_big < 5)],
            ["Redis memory per tracked session", f"{memory:.0f} B", "< 300 B",
             _verdict(memory < 300)],
        ],
    )  # fmt: skip
    fixed = markdown_table(
        ["job", "chunks", "enqueue → task started ms", "started → chunks dispatched ms",
         "the two, of enqueue → done"],
        [
            [r.label, fmt(r.chunks), f"{r.queued_s * 1000:.0f}", f"{r.planned_s * 1000:.0f}",
             f"{(r.queued_s + r.planned_s) / r.wall_s * 100:.0f}%"]
            for r in rounds
        ],
    )  # fmt: skip
    last = rounds[-1]
    parts = ", ".join(f"{name} {v:.0f} B" for name, v in last.memory_parts.items())
    unaccounted = last.bytes_per_session - sum(last.memory_parts.values())
    # The commands of the last round of each kind, unpaced: one reads its records (unfiltered),
    # the other runs chunk_buckets.lua (filtered).
    commands = "\n".join(
        f"- {r.label}: {command_breakdown(r)}"
        for r in [*unfiltered[-1:], *walked[-1:], *filtered[-1:]]
    )
    mode = " (--quick: figures are indicative only)" if quick else ""
    settings_buckets = settings.session_buckets
    read_buckets, script_fields = tasks.READ_BUCKETS, tasks.SCRIPT_FIELDS
    chunk_size = settings.chunk_size
    niced = "it did" if redis_niced else "not permitted here: it did not"
    return f"""## Fan-out: revoking a whole tenant with Celery workers (issues 3 and 15){mode}

{reproduce_line(NAME)}

Measured {env_line}. The data Redis and the Celery broker are two throwaway servers on loopback;
nothing is pinned, so the worker processes, Redis, the checker and the service share the
machine's cores with each other (and with whatever else the machine was running: see the load
average). The data Redis runs at nice -10 ({niced}),
as it would have cores of its own in production: otherwise the workers preempt it mid-command
and every check queued behind it pays a scheduler time slice. Each round: `FLUSHALL`,
`{bench_command}` on the data Redis (its rate is in the round's row; median
{fmt(bench_rate)} SET/s), a tenant of {fmt(n)} sessions
({SESSIONS_PER_USER} per user, half of client "web", written with `plan_record_session`'s
commands, pipelined raw at ~{fmt(median([r.populate_rate for r in rounds]))} sessions/s), then
`celery -A revoker.worker worker --concurrency {WORKERS}` (`REVOKER_CHUNK_SIZE` {chunk_size:,})
runs one job: *unfiltered* (`enqueue_tenant_revocation(tenant)`: the tenant watermark is the
enforcement, the job removes the records and writes no marks) or *filtered*
(`client_id="web"`, half the sessions: a revoked mark per selected session is the enforcement).
The last two rounds (one of each kind) run the worker with `REVOKER_FANOUT_DUTY_CYCLE={PACED:g}`:
each chunk pauses after every round trip to Redis for as long as it took, trading job time for
the checks' latency.
A separate process (at nice -10 where permitted, as a service would not share the workers'
cores) calls `store.is_revoked` {CHECK_RATE} times a second on the same Redis throughout
("before" = the 2 s before the job with nothing else running, "during" = enqueue to done).
After the job, the same checker measures the host's floor for that ratio: its p99 while
`redis-benchmark -P 64 -c 1 -t set -n {fmt(LOAD_REQUESTS)}` (the marks' baseline, no revoker in
it) loads the same Redis, over its p99 in the 2 s before ("p99 under redis-benchmark / before").
A second one (at the default priority, from the "before" window on) does the same with
`REVOKER_CHECK_MODE=mirror` (the middleware's path, the verify cache warm: `check_now`, else
`check`): its mirror reads no Redis per check but follows the feed, so every chunk's revocations
reach it while it checks.
Enforcement (unfiltered jobs): a uvicorn service with `TokenRevocationMiddleware` is polled over
one keep-alive connection from the moment `enqueue` returns until it answers 401.

{table}

Targets (two worker processes; worst round where a latency bound is stated):

{targets}

A job's fixed costs, before its first chunk can run: Celery delivering its task, then the task
counting the tenant's {settings.session_buckets:,} buckets (HLEN each, {tasks.COUNT_BATCH:,} per
round trip), storing the chunk lists and publishing one message per chunk:

{fixed}

Redis commands per session walked (`INFO commandstats`, script-internal commands included) and
the time Redis spent in them (`usec`; a script's time includes the commands it runs, which are
also listed on their own), in the last unpaced round of each kind:

{commands}

One command holds Redis for its whole duration, so a check arriving meanwhile waits for it:
compare its µs per call with the check's p99.
Worker CPU per session is the worker's main process plus pool children (utime+stime); Redis CPU
is `used_cpu_user+used_cpu_sys` over the same span: when the workers' CPU per session times the
rate approaches the cores they have, the client side bounds the fan-out, not Redis.

How the fan-out spends that (src/revoker/tasks/): sessions live as fields of the tenant's
{settings_buckets:,} bucket hashes (`P:{{T}}:s:<n>`, a user's sessions all in one bucket), and
revoked families as fields of bucket hashes of their own (`P:{{T}}:fr:<n>`). The job task counts
the buckets (HLEN each, pipelined) and groups consecutive non-empty ones into chunks of
~{chunk_size:,} sessions. An *unfiltered* chunk reads its buckets with pipelined HSCANs
({read_buckets} buckets per round trip, WATCHed), keeps the records created at or before the
job's cut-off, records itself done, then removes the records: a bucket all of whose records were
selected with one UNLINK (a MULTI/EXEC per chunk; a bucket changed since the read falls back to
HDEL), others with one HDEL each; plain pipelined commands on a raw connection. A *filtered*
chunk reads no record over the wire: `scripts/chunk_buckets.lua` (EVALSHA, at most
{script_fields} sessions examined per call, about one full bucket here) selects the covered
records in Redis (cut-off, client, window), writes their marks (one HSET per bucket, EXPIRE NX
and GT), deletes them, bumps the sequence, appends the feed entry naming them and records the
bucket as done in the chunk's progress with its count, all in one atomic step per call, so a
rerun skips what is done and counts exactly; the chunk then audits the families the progress
lists and counts itself.

Marks written / redis-benchmark: the issue's baseline, `{bench_command}`, writes one key per SET
and overwrites the same key every time (`key:__rand_int__` without `-r`): no allocation, no
new dict entry, no TTL. For context, the same tool writing a new key with a TTL each time,
shaped like the one-key-per-revoked-family marks revoker wrote before they were bucketed
(`{marker_command}`), reaches {fmt(marker_rate)} SET/s on the
same Redis: the "(context)" row compares the filtered job's marks written with that.

Memory per tracked session in the last round: {last.bytes_per_session:.0f} B
(`used_memory` before and after writing the sessions), of which `MEMORY USAGE` of the buckets
finds {parts}; the other {unaccounted:.0f} B are the buckets' dict entries and allocator slack.
A session has no key, key name or expires entry of its own: it is one field of its user's bucket
(~{n / settings_buckets:.0f} sessions per bucket here; `OBJECT ENCODING`: {last.encodings}).
Its record here is ~70 bytes (user, client, created µs, expires, current refresh jti), over
Redis's `hash-max-listpack-value` (64), so the buckets are hash tables: a session costs a table
entry plus its family id and its record as two strings. After a first rotation a record also
holds the previous and successor jtis and two times (~146 bytes): {rotated_bytes:.0f} B per
session, measured the same way on {fmt(ROTATED_SESSIONS)} such sessions. After the last round's job
({last.kind}) Redis holds {last.bytes_per_revoked:.0f} B per session more than before the sessions
were written (`used_memory`): a filtered job leaves a revoked mark (a field of its bucket's marks
hash) per revoked session and the unselected records; an unfiltered one leaves nothing per
session.
"""


# --- raw results for bench/plots.py (the figures of the same run) ---------------------------------

#: The steady checker's samples around each round's big fan-out (appended by one_round).
TIMELINES: list[dict[str, Any]] = []


def timeline(workers: int, enqueued: float, samples: list[Sample], record: Any) -> dict[str, Any]:
    """One round's check samples, with when its big job was enqueued, started and finished."""
    return {"workers": workers, "enqueued": enqueued, "samples": samples,
            "job_started": record.started_at, "job_finished": record.finished_at}  # fmt: skip


def save_raw(rounds: list[Round], *, quick: bool) -> None:
    from run import save_results

    data = {
        "rounds": [
            # An adaptive round's kind names it: bench/plots.py's sessions/s figure compares
            # unfiltered rounds at full speed only.
            {"workers": r.workers, "kind": r.kind + (" (adaptive)" if r.adaptive else ""),
             "duty": r.duty, "sessions": r.sessions,
             "adaptive": r.adaptive, "index": r.index,
             "sessions_per_s": r.sessions_per_s,
             "enforcement_ms": {"10": r.enforcement_small_ms,
                                str(r.sessions): r.enforcement_big_ms}}
            for r in rounds
        ],
        "timelines": TIMELINES,
    }  # fmt: skip
    save_results(NAME, data, quick=quick)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--checker":
        _checker_main(sys.argv[2])
    else:
        print(run(quick="--quick" in sys.argv))
