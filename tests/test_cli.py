"""The ``revoker`` CLI, driven as an operator would: subprocesses against the real Redis.

Single revocations and checks run against the shared Redis under a private key prefix; job
commands run against a real Celery worker whose broker is a throwaway LocalRedis. Fast error-path
cases also go through click's CliRunner in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from click.testing import CliRunner

from celery_helpers import WorkerProcess, start_worker, worker_env
from conftest import TEST_SECRET, private_settings
from revoker.cli import EXIT_CODES, cli
from revoker.cli import _common as cli_module
from revoker.localredis import LocalRedis, free_port
from revoker.sessions import start_session_sync
from revoker.settings import RevokerSettings, configure
from revoker.store import SyncRedisTokenRevocationStore
from revoker.tokens import create_access_token, decode_token

pytestmark = pytest.mark.redis


def cli_env(settings: RevokerSettings, **extra: str) -> dict[str, str]:
    """This process's environment without REVOKER_*, plus ``settings`` as REVOKER_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVOKER_")}
    env.update(worker_env(settings))
    env.update(extra)
    return env


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m revoker ARGS`` as a user would type it."""
    return subprocess.run(
        [sys.executable, "-m", "revoker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_exit(result: subprocess.CompletedProcess[str] | Any, code: int) -> None:
    """The command exited with ``code`` and printed no traceback."""
    output = getattr(result, "stdout", "") + (getattr(result, "stderr", "") or "")
    actual = getattr(result, "returncode", getattr(result, "exit_code", None))
    assert actual == code, f"exit {actual}, wanted {code}:\n{output}"
    assert "Traceback" not in output, output


@pytest.fixture
def env(settings: RevokerSettings) -> dict[str, str]:
    """REVOKER_* environment for the per-test settings (shared Redis, private prefix)."""
    return cli_env(settings)


@pytest.fixture
def sync(settings: RevokerSettings) -> Iterator[SyncRedisTokenRevocationStore]:
    """A sync store on the shared Redis under the test's prefix."""
    store = SyncRedisTokenRevocationStore(settings=settings)
    yield store
    store.close()


# --- help, configuration ----------------------------------------------------------------------


def test_help_lists_every_exit_code() -> None:
    """`revoker --help` documents each exit code scripts may rely on."""
    result = CliRunner().invoke(cli, ["--help"])
    assert_exit(result, 0)
    for code, meaning in EXIT_CODES.items():
        assert f"{code}  {meaning}" in result.output


def test_console_script_and_python_m_agree(env: dict[str, str]) -> None:
    """The installed `revoker` script and `python -m revoker` are the same CLI."""
    script = os.path.join(os.path.dirname(sys.executable), "revoker")
    via_script = subprocess.run(
        [script, "--version"], env=env, capture_output=True, text=True, check=False, timeout=30
    )
    via_module = run_cli(env, "--version")
    assert_exit(via_script, 0)
    assert_exit(via_module, 0)
    assert via_script.stdout == via_module.stdout
    assert "revoker" in via_module.stdout


def test_missing_secret_is_a_usage_error_naming_the_variable(settings: RevokerSettings) -> None:
    """Invalid configuration exits 2 with a message naming the REVOKER_ variable to fix."""
    env = cli_env(settings)
    del env["REVOKER_JWT_SECRET"]
    result = run_cli(env, "stats")
    assert_exit(result, 2)
    assert "REVOKER_JWT_SECRET" in result.stderr


# --- check and revoke token ---------------------------------------------------------------------


def test_check_then_revoke_jwt_then_check_again(
    env: dict[str, str], settings: RevokerSettings, sync: SyncRedisTokenRevocationStore
) -> None:
    """A valid token checks 0; after `revoke token JWT` it checks 1 naming rule, time and reason."""
    token, jti = create_access_token("alice", tenant_id="acme", settings=settings)
    result = run_cli(env, "check", token)
    assert_exit(result, 0)
    assert result.stdout.startswith("valid")

    before = time.time()
    assert_exit(run_cli(env, "revoke", "token", token, "--reason", "laptop stolen"), 0)
    assert sync.is_token_revoked(jti)
    # The entry lives as long as the token could verify: about its remaining lifetime + leeway.
    ttl = sync.client.ttl(sync.keys.jti(jti))
    assert settings.access_token_ttl - 5 <= ttl <= settings.access_token_ttl + settings.leeway + 2

    result = run_cli(env, "check", token)
    assert_exit(result, 1)
    assert "rule: jti" in result.stdout
    assert "laptop stolen" in result.stdout
    as_json = json.loads(run_cli(env, "check", "--json", token).stdout)
    assert as_json["revoked"] is True
    assert as_json["rule"] == "jti"
    assert as_json["reason"] == "laptop stolen"
    assert as_json["claims"]["jti"] == jti
    assert before - 1 <= as_json["revoked_at"] <= time.time() + 1


def test_check_explains_invalid_tokens(env: dict[str, str], settings: RevokerSettings) -> None:
    """Garbage, a forged signature and an expired token each exit 1 with the reason."""
    forged = jwt.encode(
        {"sub": "mallory", "jti": "x", "typ": "access", "iat": time.time(), "exp": 2**31},
        "another-secret-that-is-long-enough-000",
        algorithm="HS256",
    )
    now = time.time()
    expired = jwt.encode(
        {"sub": "bob", "jti": "old", "typ": "access", "iat": now - 7200, "exp": int(now) - 3600},
        TEST_SECRET,
        algorithm="HS256",
    )
    cases = {"not-a-jwt": "MalformedToken", forged: "InvalidSignature", expired: "TokenExpired"}
    for token, error in cases.items():
        result = run_cli(env, "check", "--json", token)
        assert_exit(result, 1)
        body = json.loads(result.stdout)
        assert body == {"valid": False, "error": error, "description": body["description"]}


def test_revoke_bare_jti(env: dict[str, str], sync: SyncRedisTokenRevocationStore) -> None:
    """A bare jti is revoked as given, for the longest access-token lifetime."""
    jti = f"jti-{uuid.uuid4().hex}"
    result = run_cli(env, "revoke", "token", jti, "--json")
    assert_exit(result, 0)
    assert json.loads(result.stdout)["jti"] == jti
    assert sync.is_token_revoked(jti)
    again = run_cli(env, "revoke", "token", jti)
    assert_exit(again, 0)
    assert "already revoked" in again.stdout


def test_expired_genuine_token_is_revocable_but_forged_one_is_not(
    env: dict[str, str], sync: SyncRedisTokenRevocationStore
) -> None:
    """An expired JWT with a valid signature is revoked by its jti; a forged one is refused (2)."""
    now = time.time()
    claims = {"sub": "bob", "typ": "access", "iat": now - 60, "exp": int(now) - 1}
    genuine = jwt.encode({**claims, "jti": "genuine-1"}, TEST_SECRET, algorithm="HS256")
    forged = jwt.encode(
        {**claims, "jti": "forged-1"}, "not-our-secret-0123456789-abcdefghij", algorithm="HS256"
    )
    assert_exit(run_cli(env, "revoke", "token", genuine), 0)
    assert sync.is_token_revoked("genuine-1")
    result = run_cli(env, "revoke", "token", forged)
    assert_exit(result, 2)
    assert "signature" in result.stderr
    assert not sync.is_token_revoked("forged-1")


@pytest.mark.parametrize("exp", [1e300, 10**19 + 7])
def test_a_genuine_token_with_a_huge_exp_is_revoked(
    env: dict[str, str], sync: SyncRedisTokenRevocationStore, exp: float
) -> None:
    """A validly signed token whose exp is 1e300 or 20 digits is revoked (exit 0), not
    "Redis is unavailable: ResponseError" (exit 3): its entry's TTL is bounded by keys.MAX_TTL."""
    now = time.time()
    claims = {"sub": "bob", "typ": "access", "iat": now - 60, "exp": exp, "jti": "huge-exp-1"}
    genuine = jwt.encode(claims, TEST_SECRET, algorithm="HS256")
    assert_exit(run_cli(env, "revoke", "token", genuine), 0)
    assert sync.is_token_revoked("huge-exp-1")


# --- revoke family ------------------------------------------------------------------------------


def test_revoke_family_by_refresh_token_kills_the_session(
    env: dict[str, str], settings: RevokerSettings, sync: SyncRedisTokenRevocationStore
) -> None:
    """Given a refresh token, the session's family is revoked: its access token checks revoked."""
    pair = start_session_sync("carol", tenant_id="acme", store=sync)
    other = start_session_sync("carol", tenant_id="acme", store=sync)
    result = run_cli(env, "revoke", "family", pair.refresh_token, "--reason", "logout", "--json")
    assert_exit(result, 0)
    body = json.loads(result.stdout)
    assert body["family_id"] == pair.family_id
    assert body["tenant_id"] == "acme"
    assert body["session_known"] is True

    checked = run_cli(env, "check", pair.access_token)
    assert_exit(checked, 1)
    assert "rule: family" in checked.stdout
    assert "logout" in checked.stdout
    assert_exit(run_cli(env, "check", other.access_token), 0)


def test_revoke_family_by_id_warns_when_the_tenant_is_wrong(
    env: dict[str, str], settings: RevokerSettings, sync: SyncRedisTokenRevocationStore
) -> None:
    """A family id under the wrong tenant is recorded with a warning; the right tenant works."""
    pair = start_session_sync("dave", tenant_id="acme", store=sync)
    wrong = run_cli(env, "revoke", "family", pair.family_id, "--tenant", "globex")
    assert_exit(wrong, 0)
    assert "warning: no session record" in wrong.stderr
    assert_exit(run_cli(env, "check", pair.access_token), 0)

    right = run_cli(env, "revoke", "family", pair.family_id, "--tenant", "acme")
    assert_exit(right, 0)
    assert "warning" not in right.stderr
    status = sync.is_revoked(decode_token(pair.refresh_token, "refresh", settings=settings))
    assert status.rule == "family"
    assert_exit(run_cli(env, "check", pair.access_token), 1)


def test_revoke_family_refuses_a_token_of_another_tenant(
    env: dict[str, str], sync: SyncRedisTokenRevocationStore
) -> None:
    """--tenant contradicting the token's tenant is a usage error, and nothing is revoked."""
    pair = start_session_sync("erin", tenant_id="acme", store=sync)
    result = run_cli(env, "revoke", "family", pair.refresh_token, "--tenant", "globex")
    assert_exit(result, 2)
    assert "tenant" in result.stderr
    assert_exit(run_cli(env, "check", pair.access_token), 0)


# --- stats, health, unreachable Redis ----------------------------------------------------------


def test_stats_counts_what_the_cli_revoked(env: dict[str, str]) -> None:
    """`stats --json` reflects revocations made through the CLI."""
    for i in range(3):
        assert_exit(run_cli(env, "revoke", "token", f"stats-{i}"), 0)
    body = json.loads(run_cli(env, "stats", "--json").stdout)
    assert body["revoked_tokens"] == 3
    assert body["audit_entries"] == 3


def test_health_reports_redis_and_broker(env: dict[str, str]) -> None:
    """Health exits 0 with both reachable, and 3 naming the broker when only it is down."""
    result = run_cli(env, "health", "--json")
    assert_exit(result, 0)
    body = json.loads(result.stdout)
    assert body["healthy"]
    assert body["redis"]["healthy"]
    assert body["broker"]["healthy"]

    down = dict(env, REVOKER_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    result = run_cli(down, "health")
    assert_exit(result, 3)
    assert "redis:  ok" in result.stdout
    assert "broker: UNAVAILABLE" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["health"],
        ["stats"],
        ["check", "TOKEN"],
        ["revoke", "token", "some-jti"],
        ["revoke", "family", "some-family", "--tenant", "acme"],
        ["revoke", "tenant", "acme", "--reason", "breach"],
        ["jobs", "list"],
        ["jobs", "show", "some-job"],
    ],
    ids=lambda args: "-".join(a for a in args if not a.startswith("-"))[:30],
)
def test_unreachable_redis_exits_3_without_traceback(
    settings: RevokerSettings, args: list[str]
) -> None:
    """With REVOKER_REDIS_URL on a closed port every command exits 3 with a clear message."""
    closed = f"redis://127.0.0.1:{free_port()}/0"
    env = cli_env(settings, REVOKER_REDIS_URL=closed, REVOKER_BROKER_URL=closed)
    token, _ = create_access_token("alice", tenant_id="acme", settings=settings)
    args = [token if a == "TOKEN" else a for a in args]
    started = time.monotonic()
    result = run_cli(env, *args)
    assert_exit(result, 3)
    assert "unavailable" in (result.stderr + result.stdout).lower()
    assert time.monotonic() - started < 20


def test_api_command_serves_the_admin_api(env: dict[str, str]) -> None:
    """`revoker api --port P` serves the admin API on loopback until terminated."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "revoker", "api", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline, "revoker api did not answer"
                time.sleep(0.1)
        assert response.status_code == 200
    finally:
        process.terminate()
        process.communicate(timeout=15)


# --- usage errors (in-process) ---------------------------------------------------------------

EMPTY_WINDOW = ["--issued-after", "2026-01-02", "--issued-before", "2026-01-01T00:00:00Z"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["revoke", "tenant", "acme", "--reason", "r", "--issued-after", "yesterday"], "ISO 8601"),
        (["revoke", "tenant", "acme", "--reason", "r", "--issued-before", "-5"], "after 1970"),
        (
            ["revoke", "tenant", "acme", "--reason", "r", *EMPTY_WINDOW],
            "later than",
        ),
        (["revoke", "tenant", "acme"], "--reason"),
        (["revoke", "user", "u1", "--reason", "r"], "--tenant"),
        (["revoke", "tenant", "x" * 300, "--reason", "r"], "longer than"),
        (["revoke", "user", "u1", "--tenant", "acme", "--reason", "r" * 501], "--reason: "),
        (["revoke", "tenant", "acme", "--reason", "  "], "--reason: must not be blank"),
        (["revoke", "token", "y" * 300], "longer than"),
        (["revoke", "family", "", "--tenant", "acme"], "must not be empty"),
        (["jobs", "list", "--status", "sleeping"], "sleeping"),
        (["jobs", "list", "--limit", "0"], "--limit"),
    ],
    ids=[
        "bad-time",
        "negative-time",
        "empty-window",
        "no-reason",
        "user-no-tenant",
        "long-tenant",
        "long-reason",
        "blank-reason",
        "long-jti",
        "empty-family",
        "bad-status",
        "bad-limit",
    ],
)
def test_usage_errors_exit_2(settings: RevokerSettings, args: list[str], message: str) -> None:
    """Bad options, times and ids exit 2 with a message saying what is wrong."""
    result = CliRunner().invoke(cli, args)
    assert_exit(result, 2)
    assert message in result.output


def test_iso_and_unix_times_are_the_same_instant() -> None:
    """--issued-after accepts ISO 8601 (naive = UTC, offsets honoured) and unix seconds."""
    parse = cli_module.UNIX_TIME.convert
    assert parse("2026-01-01T00:00:00Z", None, None) == 1767225600.0
    assert parse("2026-01-01T01:00:00+01:00", None, None) == 1767225600.0
    assert parse("2026-01-01 00:00:00", None, None) == 1767225600.0
    assert parse("1767225600.5", None, None) == 1767225600.5


# --- jobs: against a real worker ---------------------------------------------------------------


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalRedis]:
    """A throwaway Redis as the Celery broker and result backend."""
    server = LocalRedis().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def job_settings(broker: LocalRedis) -> Iterator[RevokerSettings]:
    """Settings shared by the module's worker and CLI calls: small chunks, private prefix."""
    with private_settings(
        broker_url=broker.url, result_backend=broker.url, chunk_size=40, visibility_timeout=30
    ) as s:
        yield s


@pytest.fixture(scope="module")
def worker(job_settings: RevokerSettings) -> Iterator[WorkerProcess]:
    """One real `celery -A revoker.worker worker` for the module."""
    process = start_worker(worker_env(job_settings), concurrency=2)
    yield process
    process.stop()


@pytest.fixture
def jenv(job_settings: RevokerSettings, worker: WorkerProcess) -> dict[str, str]:
    """Environment of CLI calls that talk to the worker's broker."""
    configure(job_settings)
    return cli_env(job_settings)


@pytest.fixture
def jstore(job_settings: RevokerSettings) -> Iterator[SyncRedisTokenRevocationStore]:
    """A sync store with the job settings."""
    store = SyncRedisTokenRevocationStore(settings=job_settings)
    yield store
    store.close()


def sessions(store: SyncRedisTokenRevocationStore, tenant: str, n: int, **kwargs: Any) -> list[Any]:
    """``n`` tracked sessions of ``tenant`` (users u0..u9)."""
    return [
        start_session_sync(f"u{i % 10}", tenant_id=tenant, store=store, **kwargs) for i in range(n)
    ]


def fresh(name: str) -> str:
    """A tenant id no other test uses."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


@pytest.mark.celery
def test_revoke_tenant_wait_revokes_every_session(
    jenv: dict[str, str], jstore: SyncRedisTokenRevocationStore
) -> None:
    """`revoke tenant --wait --json` returns a done job that revoked every family of the tenant."""
    tenant, bystander = fresh("acme"), fresh("globex")
    pairs = sessions(jstore, tenant, 300)
    spared = sessions(jstore, bystander, 5)
    result = run_cli(jenv, "revoke", "tenant", tenant, "--reason", "breach", "--wait", "--json")
    assert_exit(result, 0)
    job = json.loads(result.stdout)
    assert job["status"] == "done"
    assert job["kind"] == "tenant"
    assert job["tenant_id"] == tenant
    assert job["families_revoked"] == 300
    assert job["chunks_done"] == job["chunks_total"] > 1
    assert job["reason"] == "breach"
    assert "@" in job["actor"]
    assert f"job {job['id']} done" in result.stderr
    for pair in (pairs[0], pairs[-1]):
        checked = run_cli(jenv, "check", "--json", pair.refresh_token)
        # An unfiltered job is enforced by the tenant's watermark; it writes no session marks.
        assert json.loads(checked.stdout)["rule"] == "tenant"
    assert_exit(run_cli(jenv, "check", spared[0].access_token), 0)

    shown = run_cli(jenv, "jobs", "show", job["id"])
    assert_exit(shown, 0)
    assert "status:" in shown.stdout
    assert "done" in shown.stdout
    assert tenant in shown.stdout
    listed = json.loads(run_cli(jenv, "jobs", "list", "--status", "done", "--json").stdout)
    assert job["id"] in [j["id"] for j in listed]
    watched = run_cli(jenv, "jobs", "watch", job["id"])
    assert_exit(watched, 0)
    assert "families_revoked" not in watched.stderr
    assert "300 of 300" in watched.stderr


def idle_broker(job_settings: RevokerSettings, env: dict[str, str]) -> dict[str, str]:
    """``env`` with a broker database no worker consumes: jobs published there stay pending."""
    return dict(env, REVOKER_BROKER_URL=job_settings.effective_broker_url[:-1] + "5")


@pytest.mark.celery
def test_revoke_tenant_without_wait_is_enforced_before_any_worker_runs(
    job_settings: RevokerSettings, jenv: dict[str, str], jstore: SyncRedisTokenRevocationStore
) -> None:
    """Without --wait the job id is printed and, with the job still pending, tokens are rejected."""
    tenant = fresh("initech")
    pair = sessions(jstore, tenant, 1)[0]
    idle = idle_broker(job_settings, jenv)
    result = run_cli(idle, "revoke", "tenant", tenant, "--reason", "offboarding")
    assert_exit(result, 0)
    job_id = result.stdout.strip()
    assert "(pending)" in result.stderr
    assert "rejected from now on" in result.stderr
    checked = run_cli(idle, "check", pair.access_token)
    assert_exit(checked, 1)
    assert "rule: tenant" in checked.stdout
    shown = json.loads(run_cli(idle, "jobs", "show", job_id, "--json").stdout)
    assert shown["status"] == "pending"
    assert shown["watermark_at"] is not None


@pytest.mark.celery
def test_revoke_user_and_selective_dry_run(
    jenv: dict[str, str], jstore: SyncRedisTokenRevocationStore
) -> None:
    """A user revocation spares other users; a --client --dry-run counts and changes nothing."""
    tenant = fresh("hooli")
    web = sessions(jstore, tenant, 20, client_id="web")
    mobile = sessions(jstore, tenant, 10, client_id="mobile")
    dry = run_cli(
        jenv, "revoke", "tenant", tenant, "--reason", "audit", "--client", "mobile",
        "--dry-run", "--wait", "--json",
    )  # fmt: skip
    assert_exit(dry, 0)
    record = json.loads(dry.stdout)
    assert record["dry_run"] is True
    assert record["families_matched"] == 10
    assert_exit(run_cli(jenv, "check", mobile[0].access_token), 0)

    user = run_cli(
        jenv, "revoke", "user", "u3", "--tenant", tenant, "--reason", "left", "--wait", "--json"
    )
    assert_exit(user, 0)
    record = json.loads(user.stdout)
    u3 = [p for p in web + mobile if decode_token(p.access_token).sub == "u3"]
    assert record["kind"] == "user"
    assert record["families_revoked"] == len(u3) == 3
    assert_exit(run_cli(jenv, "check", u3[0].access_token), 1)
    assert_exit(run_cli(jenv, "check", web[0].access_token), 0)


@pytest.mark.celery
def test_duplicate_pending_job_and_wait_timeout(
    job_settings: RevokerSettings, jenv: dict[str, str]
) -> None:
    """With no worker on the queue a job stays pending: --timeout exits 7, a repeat exits 6."""
    idle = idle_broker(job_settings, jenv)
    tenant = fresh("pending")
    first = run_cli(idle, "revoke", "tenant", tenant, "--reason", "r", "--wait", "--timeout", "1")
    assert_exit(first, 7)
    job_id = first.stdout.strip()
    assert f"revoker jobs watch {job_id}" in first.stderr
    again = run_cli(idle, "revoke", "tenant", tenant, "--reason", "r")
    assert_exit(again, 6)
    assert again.stdout.strip() == job_id
    assert job_id in again.stderr


@pytest.mark.celery
def test_unknown_job_exits_4(jenv: dict[str, str]) -> None:
    """`jobs show` and `jobs watch` of an unknown id exit 4."""
    for command in ("show", "watch"):
        result = run_cli(jenv, "jobs", command, "no-such-job")
        assert_exit(result, 4)
        assert "no such job" in result.stderr


def test_failed_job_exits_5(settings: RevokerSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """--wait on a job that ends failed prints the error and exits 5."""
    from revoker import jobs

    record = jobs.JobRecord.model_validate(
        {
            "id": "j1", "kind": "tenant", "tenant_id": "acme", "user_id": None,
            "client_id": None, "issued_after": None, "issued_before": None, "dry_run": False,
            "reason": "r", "actor": "a", "status": "failed", "chunks_total": 2,
            "chunks_done": 1, "families_matched": 10, "families_revoked": 5,
            "watermark_at": None, "created_at": 1.0, "started_at": 2.0, "finished_at": 3.0,
            "error": "chunk 1 parked after 5 deliveries",
        }
    )  # fmt: skip
    monkeypatch.setattr(jobs, "enqueue", lambda *a, **k: "j1")
    monkeypatch.setattr(jobs, "get_job", lambda *a, **k: record)
    result = CliRunner().invoke(cli, ["revoke", "tenant", "acme", "--reason", "r", "--wait"])
    assert_exit(result, 5)
    assert "parked after 5 deliveries" in result.output
