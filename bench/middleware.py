"""Issue 2's benchmark: the per-request check inside uvicorn, four variants side by side.

(a) no middleware, (b) pure-ASGI PyJWT verify only, (c) TokenRevocationMiddleware as shipped,
(d) BaseHTTPMiddleware + PyJWT + one read per rule. All four run at once (idle servers cost
nothing) pinned to one core; wrk and the bench's own Redis share the other. Every round runs each
variant once, in a rotating order, so drift on a shared machine spreads over all four.
"""

from __future__ import annotations

import random
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis
from apps import COUNT_PATH, ITEM_PATH, VARIANTS
from common import (
    ServerProcess,
    clean_env,
    commandstats,
    environment_line,
    fmt,
    http_get,
    http_get_text,
    markdown_table,
    median,
    pick_cpus,
    pin,
    poll_until,
    reproduce_line,
    reset_commandstats,
    run_wrk,
    start_uvicorn,
    write_rotating_script,
)

from revoker.localredis import LocalRedis
from revoker.sessions import start_session_sync
from revoker.settings import RevokerSettings, load_settings
from revoker.store import SyncRedisTokenRevocationStore
from revoker.tokens import create_access_token

NAME = "middleware"
SECRET = "bench-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
PREFIX = "bench"
TENANTS = 10
USERS = 100
TOKENS_PER_USER = 10
#: wrk connections: enough to keep one uvicorn worker busy without queueing much.
CONNECTIONS = 32


@dataclass
class TokenSet:
    tokens: list[str]
    with_family: int
    revoked_probe: str
    facts: str


@dataclass
class Samples:
    rps: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    commands: list[float] = field(default_factory=list)
    by_command: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    non_2xx: int = 0
    unchecked: int = 0


def bench_settings(redis_url: str) -> RevokerSettings:
    return load_settings(
        redis_url=redis_url,
        key_prefix=PREFIX,
        jwt_algorithm="HS256",
        jwt_secret=SECRET,
        access_token_ttl=3600,
    )


def make_tokens(settings: RevokerSettings) -> TokenSet:
    """1,000 tokens of 100 users in 10 tenants, over a Redis that already holds revocations.

    The revocations are written first, so every benchmark token is newer and passes; the check
    still reads real watermark values for the revoked users and tenants.
    """
    rng = random.Random(2)
    store = SyncRedisTokenRevocationStore(settings=settings)
    users = [(f"user-{n}", f"tenant-{n % TENANTS}") for n in range(USERS)]
    revoked_users = rng.sample(users, 20)
    for user, tenant in revoked_users:
        store.revoke_user_tokens(user, tenant_id=tenant, reason="bench")
    for t in range(3):
        store.revoke_tenant_tokens(f"tenant-{t}", reason="bench")
    for _ in range(200):
        _, jti = create_access_token("someone", tenant_id="tenant-0", settings=settings)
        store.revoke_token(jti, reason="bench")
    for user, tenant in rng.sample(users, 20):
        pair = start_session_sync(user, tenant_id=tenant, store=store)
        store.revoke_family(pair.family_id, tenant_id=tenant, reason="bench")
    probe = start_session_sync("user-0", tenant_id="tenant-0", store=store)
    store.revoke_family(probe.family_id, tenant_id="tenant-0", reason="probe")

    tokens: list[str] = []
    with_family = 0
    for user, tenant in users:
        for i in range(TOKENS_PER_USER):
            if i % 2 == 0:
                tokens.append(start_session_sync(user, tenant_id=tenant, store=store).access_token)
                with_family += 1
            else:
                token, _ = create_access_token(
                    user, tenant_id=tenant, scopes=("read",), settings=settings
                )
                tokens.append(token)
    rng.shuffle(tokens)
    store.close()
    facts = (
        f"{len(tokens):,} distinct access tokens of {USERS} users in {TENANTS} tenants "
        f"({with_family} carry a session family). Before they were issued, Redis received "
        f"{len(revoked_users)} user watermarks, 3 tenant watermarks, 200 revoked jtis and 21 "
        "revoked families, so every benchmark request is a 200 while the check reads real values."
    )
    return TokenSet(tokens, with_family, probe.access_token, facts)


def served(server: ServerProcess) -> tuple[int, int]:
    """(requests that reached the app, those of them let through unchecked)."""
    done, unchecked = http_get_text(server.base_url + COUNT_PATH).split()
    return int(done), int(unchecked)


def settled_count(server: ServerProcess) -> tuple[int, int]:
    """:func:`served` once requests still in flight after wrk stopped are done."""
    last: list[tuple[int, int] | None] = [None]

    def stable() -> tuple[int, int] | None:
        now = served(server)
        if now == last[0]:
            return now
        last[0] = now
        return None

    return poll_until(stable, timeout=10, interval=0.05, what="the request count to settle")


def check_behaviour(servers: dict[str, ServerProcess], tokens: TokenSet) -> None:
    """Before measuring: every variant serves a valid token; (c) and (d) reject a revoked one."""
    good = {"Authorization": f"Bearer {tokens.tokens[0]}"}
    bad = {"Authorization": f"Bearer {tokens.revoked_probe}"}
    for letter, server in servers.items():
        status = http_get(server.base_url + ITEM_PATH, good)
        if status != 200:
            raise RuntimeError(f"variant ({letter}) answered {status} to a valid token")
        status = http_get(server.base_url + ITEM_PATH, bad)
        expected = 401 if letter in ("c", "d") else 200
        if status != expected:
            raise RuntimeError(f"variant ({letter}) answered {status} to a revoked token")


def run(quick: bool = False) -> str:
    rounds, seconds, warmup = (2, 2.0, 1.0) if quick else (5, 5.0, 2.0)
    server_cpu, load_cpu = pick_cpus()
    workdir = Path(tempfile.mkdtemp(prefix="revoker-bench-mw-"))
    servers: dict[str, ServerProcess] = {}
    with LocalRedis() as local:
        pin(local.pid, load_cpu)
        client = redis.Redis.from_url(local.url)
        settings = bench_settings(local.url)
        tokens = make_tokens(settings)
        script = write_rotating_script(
            workdir / "rotate.lua",
            ITEM_PATH,
            [{"Authorization": f"Bearer {token}"} for token in tokens.tokens],
        )
        env = clean_env(
            {
                "REVOKER_REDIS_URL": local.url,
                "REVOKER_KEY_PREFIX": PREFIX,
                "REVOKER_JWT_ALGORITHM": "HS256",
                "REVOKER_JWT_SECRET": SECRET,
                "REVOKER_ACCESS_TOKEN_TTL": "3600",
            }
        )
        try:
            for letter, (factory, _) in VARIANTS.items():
                servers[letter] = start_uvicorn(
                    f"apps:{factory}",
                    name=f"mw-{letter}-{factory}",
                    env=env,
                    cpu=server_cpu,
                    log_dir=workdir,
                    ready_path=COUNT_PATH,
                )
            check_behaviour(servers, tokens)
            for server in servers.values():  # warm: connections open, (c)'s cache filled
                run_wrk(server.base_url + ITEM_PATH, duration=warmup, script=script, cpu=load_cpu)
            samples = {letter: Samples() for letter in servers}
            ratios: dict[str, list[float]] = {"c/a": [], "c/b": [], "c/d": []}
            letters = list(servers)
            for r in range(rounds):
                order = letters[r % 4 :] + letters[: r % 4]
                rps: dict[str, float] = {}
                for letter in order:
                    server, sample = servers[letter], samples[letter]
                    before, unchecked_before = settled_count(server)
                    cpu_before = server.cpu_seconds()
                    reset_commandstats(client)
                    result = run_wrk(
                        server.base_url + ITEM_PATH,
                        duration=seconds,
                        connections=CONNECTIONS,
                        script=script,
                        cpu=load_cpu,
                    )
                    after, unchecked_after = settled_count(server)
                    handled = after - before
                    cpu = server.cpu_seconds() - cpu_before
                    counts = commandstats(client)
                    sample.rps.append(result.rps)
                    sample.p50.append(result.p50_ms)
                    sample.p99.append(result.p99_ms)
                    sample.cpu_us.append(cpu / handled * 1e6)
                    sample.commands.append(round_trips(counts) / handled)
                    for command, calls in counts.items():
                        sample.by_command[command] = sample.by_command.get(command, 0) + calls
                    sample.requests += handled
                    sample.non_2xx += result.non_2xx + result.socket_errors
                    sample.unchecked += unchecked_after - unchecked_before
                    rps[letter] = result.rps
                for pair in ratios:
                    ratios[pair].append(rps["c"] / rps[pair[-1]])
                print(
                    f"  round {r + 1}/{rounds}: "
                    + ", ".join(f"({k}) {fmt(v)} req/s" for k, v in rps.items()),
                    file=sys.stderr,
                )
            env_line = environment_line(client)
        finally:
            for server in servers.values():
                server.stop()
            client.close()
    save_raw(samples, quick=quick)
    return report(
        samples, ratios, tokens, env_line, rounds, seconds, server_cpu, load_cpu, quick=quick
    )


#: Commands the check script runs inside Redis (scripts/check.lua): part of its EVALSHA, not
#: round trips of their own.
CHECK_SCRIPT_COMMANDS = frozenset({"get", "hget", "hmget"})


def round_trips(counts: dict[str, int]) -> int:
    """Top-level commands: where the check script ran, the reads it made inside are not."""
    if "evalsha" not in counts and "eval" not in counts:
        return sum(counts.values())
    return sum(calls for command, calls in counts.items() if command not in CHECK_SCRIPT_COMMANDS)


def _per_request(sample: Samples) -> str:
    if not sample.by_command:
        return "0"
    parts = [
        f"{command.upper()} {calls / sample.requests:.3f}"
        for command, calls in sorted(sample.by_command.items())
    ]
    return f"{median(sample.commands):.3f} ({', '.join(parts)})"


def report(
    samples: dict[str, Samples],
    ratios: dict[str, list[float]],
    tokens: TokenSet,
    env_line: str,
    rounds: int,
    seconds: float,
    server_cpu: int,
    load_cpu: int,
    *,
    quick: bool,
) -> str:
    rows = []
    for letter, (_, description) in VARIANTS.items():
        s = samples[letter]
        rows.append(
            [
                f"({letter}) {description}",
                fmt(median(s.rps)),
                f"{median(s.p50):.2f}",
                f"{median(s.p99):.2f}",
                fmt(median(s.cpu_us), 1),
                _per_request(s),
            ]
        )
    table = markdown_table(
        [
            "variant",
            "req/s",
            "p50 ms",
            "p99 ms",
            "server CPU µs/req",
            "Redis commands/req (of which inside the script)",
        ],
        rows,
    )
    c = samples["c"]
    cpu = {letter: median(s.cpu_us) for letter, s in samples.items()}
    target_rows = []
    for name, goal, threshold in (("c/a", "", None), ("c/b", "≥ 0.95", 0.95), ("c/d", "≥ 3", 3.0)):
        value = median(ratios[name])
        target_rows.append(
            [
                name,
                f"{value:.2f}",
                " ".join(f"{v:.2f}" for v in ratios[name]),
                f"{cpu[name[-1]] / cpu['c']:.2f}",
                goal,
                "" if threshold is None else _verdict(value >= threshold),
            ]
        )
    exact_one = all(abs(v - 1.0) < 0.0005 for v in c.commands)
    target_rows.append(
        [
            "Redis commands per checked request, (c)",
            f"{median(c.commands):.3f}",
            " ".join(f"{v:.3f}" for v in c.commands),
            "",
            "exactly 1",
            _verdict(exact_one),
        ]
    )
    ratio_table = markdown_table(
        ["ratio", "req/s, median", "req/s, per round", "by server CPU/req", "target", "verdict"],
        target_rows,
    )
    failures = sum(s.non_2xx for s in samples.values())
    mode = " (--quick: indicative only)" if quick else ""
    return f"""## Middleware: the per-request check (issue 2){mode}

{reproduce_line(NAME)}

- Measured: {env_line}.
- Setup: uvicorn (uvloop, httptools, one worker, access log off) serves a one-route Starlette
  app on loopback, pinned to CPU {server_cpu}; wrk (1 thread, {CONNECTIONS} connections,
  `--latency`) and the benchmark's own Redis are pinned to CPU {load_cpu}. The four variants are
  up at once and measured in the same run: {rounds} rounds x {seconds:.0f} s per variant, the
  order rotating every round. Figures are medians over rounds.
- Token set: {tokens.facts} wrk cycles through all of them.
- Server CPU per request: the uvicorn process's utime+stime delta (/proc/PID/stat) over the
  requests the app counted. Redis commands per request: `INFO commandstats` after `CONFIG
  RESETSTAT` before each round, over the same count; the first figure counts top-level commands
  (round trips' commands), the list also the reads the check script makes inside its EVALSHA.
- Requests not answered 200: {failures}. Requests (c) let through unchecked because Redis did not
  answer within `REVOKER_REDIS_TIMEOUT` (fail-open): {c.unchecked} of {c.requests:,}.

{table}

{ratio_table}

"by server CPU/req" is the other variant's CPU per request over (c)'s: the throughput ratio the
variants would have on a core of their own. On a shared machine it is steadier than req/s.
The check as shipped costs {fmt(cpu["c"] - cpu["a"], 1)} µs of server CPU per request over no
middleware: verify-cache hit, one pipelined EVALSHA of the check script (GET of the jti, user,
tenant and global watermark keys, HGET of the family's mark in its bucket, HMGET of the
denylist's identity: epoch and sequence), the decision, the identity comparison, metrics. (d)
also shows how many reads a check needs when each rule is one command: tokens without a family
need four.
"""


def _verdict(ok: bool | None) -> str:
    if ok is None:
        return ""
    return "met" if ok else "**missed**"


# --- raw results for bench/plots.py (the figures of the same run) ---------------------------------


def save_raw(samples: dict[str, Samples], *, quick: bool, state: str = "warm") -> None:
    """Every variant's per-round req/s; all are measured warm here (caches filled first)."""
    from run import save_results

    rows = [
        {"variant": f"({letter}) {VARIANTS[letter][1]}", "state": state, "mode": None,
         "rps": sample.rps}
        for letter, sample in samples.items()
    ]  # fmt: skip
    save_results(NAME, {"rows": rows}, quick=quick)


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
