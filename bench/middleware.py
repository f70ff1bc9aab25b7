"""Issues 2 and 11: the per-request check inside uvicorn, every variant side by side, cold and warm.

(a) no middleware, (b) pure-ASGI PyJWT verify only, (c) TokenRevocationMiddleware as shipped,
(d) BaseHTTPMiddleware + PyJWT + one read per rule. (c) runs warm (its verify cache holds every
token wrk sends) and cold (``REVOKER_VERIFY_CACHE_SIZE=0``: every request verified), and in each
check mode ``RevokerSettings`` knows (``REVOKER_CHECK_MODE=redis|mirror`` when the setting exists;
the round trip alone otherwise). (a), (b) and (d) have no cache: their one figure is both. All the
servers run at once (idle servers cost nothing) pinned to one core; wrk and the bench's own Redis
share the other. Every round runs each server once, in a rotating order, so drift on a shared
machine spreads over all of them. Before the servers, the same run times verification alone:
revoker's verifier against PyJWT's ``jwt.decode`` on the same tokens, in this process.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
import timeit
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import jwt
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
from revoker.tokens import REQUIRED_CLAIMS, TokenVerifier, create_access_token

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


@dataclass(frozen=True)
class Setup:
    """One server of the run: a variant, its verify cache, its check mode."""

    key: str
    letter: str
    cache: str  # "warm" | "cold" | "none" (a variant without a verify cache)
    mode: str  # the check mode, "" where the variant checks nothing or checks its own way
    env: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"({self.letter}) {VARIANTS[self.letter][1]}"

    @property
    def factory(self) -> str:
        return VARIANTS[self.letter][0]


def check_modes() -> tuple[str, ...]:
    """The check modes to measure (c) in: REVOKER_CHECK_MODE's values where the setting exists,
    else the round trip alone (reported as ``redis``, what the setting calls it)."""
    info = RevokerSettings.model_fields.get("check_mode")
    if info is None:
        return ("redis",)
    values = tuple(str(v) for v in typing.get_args(info.annotation)) or ("redis", "mirror")
    return tuple(sorted(values, key=lambda v: (v != "redis", v)))  # the round trip first


def setups(modes: tuple[str, ...]) -> list[Setup]:
    """(a), (b), then (c) warm and cold in every mode, then (d)."""
    out = [Setup("a", "a", "none", ""), Setup("b", "b", "none", "")]
    for mode in modes:
        mode_env = (
            {"REVOKER_CHECK_MODE": mode} if "check_mode" in RevokerSettings.model_fields else {}
        )
        out.append(Setup(f"c-warm-{mode}", "c", "warm", mode, dict(mode_env)))
        cold = {**mode_env, "REVOKER_VERIFY_CACHE_SIZE": "0"}
        out.append(Setup(f"c-cold-{mode}", "c", "cold", mode, cold))
    out.append(Setup("d", "d", "none", ""))
    return out


def check_behaviour(
    servers: dict[str, ServerProcess], by_key: dict[str, Setup], tokens: TokenSet
) -> None:
    """Before measuring: every server serves a valid token; (c) and (d) reject a revoked one.

    Polled for a few seconds: a mirror may still be loading its snapshot when the port opens.
    """
    good = {"Authorization": f"Bearer {tokens.tokens[0]}"}
    bad = {"Authorization": f"Bearer {tokens.revoked_probe}"}
    for key, server in servers.items():
        letter = by_key[key].letter
        expected = (200, 401 if letter in ("c", "d") else 200)

        def answers(server: ServerProcess = server) -> tuple[int, int]:
            return (
                http_get(server.base_url + ITEM_PATH, good),
                http_get(server.base_url + ITEM_PATH, bad),
            )

        deadline = time.monotonic() + 10
        got = answers()
        while got != expected and time.monotonic() < deadline:
            time.sleep(0.1)
            got = answers()
        if got != expected:
            raise RuntimeError(
                f"{key} answered {got[0]} to a valid token and {got[1]} to a revoked one "
                f"(expected {expected[0]} and {expected[1]})"
            )


@dataclass
class VerifyFigures:
    """Verification alone, per token: revoker's verifier (no cache) and PyJWT's jwt.decode."""

    revoker_us: list[float]
    pyjwt_us: list[float]
    ratios: list[float]
    tokens: int
    cpu: int


def verify_alone(
    settings: RevokerSettings, tokens: list[str], *, cpu: int, rounds: int
) -> VerifyFigures:
    """Time revoker's cold verify against ``jwt.decode`` of the same tokens, interleaved.

    ``jwt.decode`` is called as (b) calls it: the secret, the pinned algorithm, the leeway and
    the required claims. This process is pinned to ``cpu`` (the servers' core, idle now) while
    it measures.
    """
    verifier = TokenVerifier(settings.model_copy(update={"verify_cache_size": 0}))
    assert settings.jwt_secret is not None
    secret = settings.jwt_secret.get_secret_value()
    algorithms = [settings.jwt_algorithm]
    options: Any = {"require": list(REQUIRED_CLAIMS)}
    leeway = settings.leeway
    sample = tokens[:200]

    def ours() -> None:
        for token in sample:
            verifier.decode(token)

    def theirs() -> None:
        for token in sample:
            jwt.decode(token, secret, algorithms=algorithms, leeway=leeway, options=options)

    before = os.sched_getaffinity(0)
    pin(os.getpid(), cpu)
    try:
        ours(), theirs()  # warm: imports, caches of the JSON decoder
        mine: list[float] = []
        pyjwt: list[float] = []
        for r in range(rounds):
            pair = (ours, theirs) if r % 2 == 0 else (theirs, ours)
            times = {f: timeit.timeit(f, number=3) / (3 * len(sample)) * 1e6 for f in pair}
            mine.append(times[ours])
            pyjwt.append(times[theirs])
    finally:
        os.sched_setaffinity(0, before)
    return VerifyFigures(
        mine, pyjwt, [m / p for m, p in zip(mine, pyjwt, strict=True)], len(sample), cpu
    )


def run(quick: bool = False) -> str:
    # Many short rounds rather than a few long ones: a ratio compares servers measured seconds
    # apart, so the less a round spans, the less a shared host's drift enters it.
    rounds, seconds, warmup = (2, 2.0, 1.0) if quick else (10, 3.0, 2.0)
    server_cpu, load_cpu = pick_cpus()
    workdir = Path(tempfile.mkdtemp(prefix="revoker-bench-mw-"))
    modes = check_modes()
    plan = setups(modes)
    by_key = {s.key: s for s in plan}
    servers: dict[str, ServerProcess] = {}
    # The mirror-mode servers follow a Redis of their own holding the same data: their feed
    # reads (on their own clock, every round) then never land in a round-trip row's count.
    with LocalRedis() as local, LocalRedis() as mirrors_redis:
        pin(local.pid, load_cpu)
        pin(mirrors_redis.pid, load_cpu)
        client = redis.Redis.from_url(local.url)
        mirrors_client = redis.Redis.from_url(mirrors_redis.url)
        settings = bench_settings(local.url)
        tokens = make_tokens(settings)
        copy_data(client, mirrors_client)
        verify = verify_alone(settings, tokens.tokens, cpu=server_cpu, rounds=5 if quick else 15)
        script = write_rotating_script(
            workdir / "rotate.lua",
            ITEM_PATH,
            [{"Authorization": f"Bearer {token}"} for token in tokens.tokens],
        )
        base_env = {
            "REVOKER_REDIS_URL": local.url,
            "REVOKER_KEY_PREFIX": PREFIX,
            "REVOKER_JWT_ALGORITHM": "HS256",
            "REVOKER_JWT_SECRET": SECRET,
            "REVOKER_ACCESS_TOKEN_TTL": "3600",
        }
        try:
            for setup in plan:
                own = {"REVOKER_REDIS_URL": mirrors_redis.url} if setup.mode == "mirror" else {}
                servers[setup.key] = start_uvicorn(
                    f"apps:{setup.factory}",
                    name=f"mw-{setup.key}-{setup.factory}",
                    env=clean_env({**base_env, **setup.env, **own}),
                    cpu=server_cpu,
                    log_dir=workdir,
                    ready_path=COUNT_PATH,
                )
            check_behaviour(servers, by_key, tokens)
            for server in servers.values():  # warm: connections open, warm caches filled
                run_wrk(server.base_url + ITEM_PATH, duration=warmup, script=script, cpu=load_cpu)
            samples = {key: Samples() for key in servers}
            rps_rounds: list[dict[str, float]] = []
            keys = list(servers)
            for r in range(rounds):
                shift = r % len(keys)
                order = keys[shift:] + keys[:shift]
                rps: dict[str, float] = {}
                for key in order:
                    server, sample = servers[key], samples[key]
                    counted = mirrors_client if by_key[key].mode == "mirror" else client
                    before, unchecked_before = settled_count(server)
                    cpu_before = server.cpu_seconds()
                    reset_commandstats(counted)
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
                    counts = commandstats(counted)
                    sample.rps.append(result.rps)
                    sample.p50.append(result.p50_ms)
                    sample.p99.append(result.p99_ms)
                    sample.cpu_us.append(cpu / handled * 1e6)
                    checks = (
                        check_calls(counts) if by_key[key].mode == "mirror" else round_trips(counts)
                    )
                    sample.commands.append(checks / handled)
                    for command, calls in counts.items():
                        sample.by_command[command] = sample.by_command.get(command, 0) + calls
                    sample.requests += handled
                    sample.non_2xx += result.non_2xx + result.socket_errors
                    sample.unchecked += unchecked_after - unchecked_before
                    rps[key] = result.rps
                rps_rounds.append(rps)
                print(
                    f"  round {r + 1}/{rounds}: "
                    + ", ".join(f"{k} {fmt(rps[k])} req/s" for k in keys),
                    file=sys.stderr,
                )
            env_line = environment_line(client)
        finally:
            for server in servers.values():
                server.stop()
            client.close()
            mirrors_client.close()
    save_raw(plan, samples, quick=quick)
    return report(
        plan,
        samples,
        rps_rounds,
        verify,
        tokens,
        env_line,
        rounds,
        seconds,
        server_cpu,
        load_cpu,
        quick=quick,
    )


#: Commands the check script runs inside Redis (scripts/check.lua): part of its EVALSHA, not
#: round trips of their own.
CHECK_SCRIPT_COMMANDS = frozenset({"get", "hget", "hmget"})


def copy_data(source: redis.Redis, target: redis.Redis) -> None:
    """Every key of ``source`` into ``target`` as it is (DUMP/RESTORE: the feed stream with its
    entry ids, the integrity hash, the revocations; with their TTLs)."""
    for key in source.scan_iter(count=1000):
        ttl = source.pttl(key)
        target.restore(key, max(int(ttl), 0), source.dump(key), replace=True)


def check_calls(counts: dict[str, int]) -> int:
    """The check's own round trips (its script call) of a mirror-mode server: what a check sends
    when the mirror cannot answer. The mirror's feed reads are listed beside, not counted."""
    return sum(calls for command, calls in counts.items() if command in CHECK_COMMANDS)


#: What the check sends for one round trip (scripts/check.lua by SHA, or EVAL after NOSCRIPT).
CHECK_COMMANDS = frozenset({"evalsha", "eval"})


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


#: (cache, mode) -> [(ratio, target text, threshold)]: issue 2's targets for the round trip warm,
#: issue 11's for the rest ("not worse than today" for the round trip has no fixed number).
TARGETS: dict[tuple[str, str], list[tuple[str, str, float | None]]] = {
    ("warm", "redis"): [("c/a", "", None), ("c/b", "≥ 0.95", 0.95), ("c/d", "≥ 3", 3.0)],
    ("cold", "redis"): [("c/a", "", None), ("c/b", "≥ 1.0", 1.0), ("c/d", "", None)],
    ("warm", "mirror"): [("c/a", "≥ 0.85", 0.85), ("c/b", "", None), ("c/d", "", None)],
    ("cold", "mirror"): [("c/a", "", None), ("c/b", "≥ 1.1", 1.1), ("c/d", "", None)],
}


def report(
    plan: list[Setup],
    samples: dict[str, Samples],
    rps_rounds: list[dict[str, float]],
    verify: VerifyFigures,
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
    for setup in plan:
        s = samples[setup.key]
        rows.append(
            [
                setup.label,
                setup.cache,
                setup.mode or "—",
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
            "verify cache",
            "check mode",
            "req/s",
            "p50 ms",
            "p99 ms",
            "server CPU µs/req",
            "Redis commands/req (of which inside the script)",
        ],
        rows,
    )
    cpu = {key: median(s.cpu_us) for key, s in samples.items()}
    target_rows = []
    for setup in plan:
        if setup.letter != "c":
            continue
        c = samples[setup.key]
        for name, goal, threshold in TARGETS.get((setup.cache, setup.mode), []):
            other = name[-1]
            per_round = [r[setup.key] / r[other] for r in rps_rounds]
            value = median(per_round)
            by_cpu = cpu[other] / cpu[setup.key]
            target_rows.append(
                [
                    f"{name}, {setup.cache}, {setup.mode}",
                    f"{value:.2f}",
                    " ".join(f"{v:.2f}" for v in per_round),
                    f"{by_cpu:.2f}",
                    goal,
                    "" if threshold is None else _verdict(min(value, by_cpu) >= threshold),
                ]
            )
        if setup.mode == "mirror":
            ok = all(v == 0 for v in c.commands)
            goal = "exactly 0 (check round trips; the feed's reads are listed in the table)"
        else:
            ok = all(abs(v - 1.0) < 0.0005 for v in c.commands)
            goal = "exactly 1"
        target_rows.append(
            [
                f"Redis commands per checked request, {setup.cache}, {setup.mode}",
                f"{median(c.commands):.3f}",
                " ".join(f"{v:.3f}" for v in c.commands),
                "",
                goal,
                _verdict(ok),
            ]
        )
    ratio_table = markdown_table(
        ["ratio", "req/s, median", "req/s, per round", "by server CPU/req", "target", "verdict"],
        target_rows,
    )
    verify_ratio = median(verify.ratios)
    verify_table = markdown_table(
        ["verification alone, per token", "µs, median", "µs, per round"],
        [
            [
                "revoker `TokenVerifier.decode` (no cache)",
                f"{median(verify.revoker_us):.1f}",
                " ".join(f"{v:.1f}" for v in verify.revoker_us),
            ],
            [
                "PyJWT `jwt.decode` (as (b) calls it)",
                f"{median(verify.pyjwt_us):.1f}",
                " ".join(f"{v:.1f}" for v in verify.pyjwt_us),
            ],
            [
                "revoker / PyJWT (target ≤ 1.0: " + _verdict(verify_ratio <= 1.0) + ")",
                f"{verify_ratio:.2f}",
                " ".join(f"{v:.2f}" for v in verify.ratios),
            ],
        ],
    )
    failures = sum(s.non_2xx for s in samples.values())
    unchecked = ", ".join(
        f"{s.cache} {s.mode}: {samples[s.key].unchecked} of {samples[s.key].requests:,}"
        for s in plan
        if s.letter == "c"
    )
    mode_note = (
        "both check modes (`REVOKER_CHECK_MODE`)"
        if len({s.mode for s in plan if s.mode}) > 1
        else "the round-trip check (this tree has no `REVOKER_CHECK_MODE`)"
    )
    quick_note = " (--quick: indicative only)" if quick else ""
    warm_redis = next(s.key for s in plan if s.cache == "warm" and s.mode == "redis")
    return f"""## Middleware: the per-request check, cold and warm (issues 2 and 11){quick_note}

{reproduce_line(NAME)}

- Measured: {env_line}.
- Setup: uvicorn (uvloop, httptools, one worker, access log off) serves a one-route Starlette
  app on loopback, pinned to CPU {server_cpu}; wrk (1 thread, {CONNECTIONS} connections,
  `--latency`) and the benchmark's own Redis are pinned to CPU {load_cpu}. All {len(plan)} servers
  are up at once and measured in the same run: {rounds} rounds x {seconds:g} s per server, the
  order rotating every round. Figures are medians over rounds.
- (c) runs warm (the verify cache, `REVOKER_VERIFY_CACHE_SIZE` default, holds every token wrk
  sends) and cold (`REVOKER_VERIFY_CACHE_SIZE=0`: every request verified), in {mode_note}.
  (a), (b) and (d) have no verify cache: each of their figures is cold and warm at once.
  Cold still verifies every token, but the store and the mirror remember the lookup keys of a
  recurring token (up to 1,024 tokens: `CHECK_CALLS`, `LOOKUPS`, `PACKED_COMMANDS`), which the
  1,000-token cycle fits: a stream of tokens never seen twice costs a few µs more per request.
- Token set: {tokens.facts} wrk cycles through all of them.
- Server CPU per request: the uvicorn process's utime+stime delta (/proc/PID/stat) over the
  requests the app counted. Redis commands per request: `INFO commandstats` after `CONFIG
  RESETSTAT` before each round, over the same count; the first figure counts top-level commands
  (round trips' commands), the list also the reads the check script makes inside its EVALSHA.
  The mirror-mode servers follow a second Redis holding a copy of the same data (DUMP/RESTORE
  after the tokens were issued), so their feed reads never reach the first one's count; their
  rows count the check's round trips (EVALSHA/EVAL) on the second Redis, and list beside them
  every mirror-mode server's feed reads there (XREAD, XRANGE, HMGET of the identity: their own
  connections and clocks).
- Requests not answered 200: {failures}. Requests (c) let through unchecked because Redis did not
  answer within `REVOKER_REDIS_TIMEOUT` (fail-open): {unchecked}.

{table}

{ratio_table}

"by server CPU/req" is the other variant's CPU per request over (c)'s: the throughput ratio the
variants would have on a core of their own. On a shared machine it is steadier than req/s; a
verdict needs both. The check as shipped, warm, costs
{fmt(cpu[warm_redis] - cpu["a"], 1)} µs of server CPU per request over no middleware:
verify-cache hit, one pipelined EVALSHA of the check script (GET of the jti, user, tenant and
global watermark keys, HGET of the family's mark in its bucket, HMGET of the denylist's identity:
epoch and sequence), the decision, the identity comparison, metrics. (d) also shows how many
reads a check needs when each rule is one command: tokens without a family need four.

Verification alone, in the benchmark process pinned to CPU {verify.cpu} before the servers
start: {verify.tokens} tokens of the set, each round verifying all of them three times with each
verifier, the two alternating first ({len(verify.ratios)} rounds).

{verify_table}
"""


def _verdict(ok: bool | None) -> str:
    if ok is None:
        return ""
    return "met" if ok else "**missed**"


# --- raw results for bench/plots.py (the figures of the same run) ---------------------------------


def save_raw(plan: list[Setup], samples: dict[str, Samples], *, quick: bool) -> None:
    """Every server's per-round req/s, with its variant, verify cache and check mode."""
    from run import save_results

    rows = [
        {"variant": setup.label, "state": setup.cache, "mode": setup.mode or None,
         "rps": samples[setup.key].rps}
        for setup in plan
    ]  # fmt: skip
    save_results(NAME, {"rows": rows}, quick=quick)


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
